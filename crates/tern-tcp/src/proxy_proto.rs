//! PROXY protocol v1 (text) and v2 (binary) headers, as HAProxy specifies them, so a
//! machine behind Tern learns the client's real address.

use std::net::SocketAddr;

use tern_catalog::model::ProxyProto as ProxyProtoVersion;

const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The header announcing a TCP connection from `src` to `dst`.
///
/// Mixed address families (an IPv4 client reaching an IPv6 listener) are mapped to
/// IPv6, since the protocol needs one family for both ends.
pub fn proxy_header(version: ProxyProtoVersion, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (src, dst) = same_family(src, dst);
    match version {
        ProxyProtoVersion::V1 => v1(src, dst),
        ProxyProtoVersion::V2 => v2(src, dst),
    }
}

fn same_family(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    match (src, dst) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) | (SocketAddr::V6(_), SocketAddr::V6(_)) => {
            (src, dst)
        }
        _ => (to_v6(src), to_v6(dst)),
    }
}

fn to_v6(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V4(v4) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
        v6 => v6,
    }
}

fn v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}

fn v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 36);
    out.extend_from_slice(&V2_SIGNATURE);
    // Version 2, command PROXY.
    out.push(0x21);
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            // AF_INET, STREAM.
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
        }
        (s, d) => {
            // AF_INET6, STREAM; `same_family` made both IPv6.
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            for a in [s, d] {
                let ip = match a {
                    SocketAddr::V6(v6) => *v6.ip(),
                    SocketAddr::V4(v4) => v4.ip().to_ipv6_mapped(),
                };
                out.extend_from_slice(&ip.octets());
            }
        }
    }
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_ipv4_is_the_text_line() {
        let h = proxy_header(
            ProxyProtoVersion::V1,
            "192.0.2.1:51000".parse().unwrap(),
            "198.51.100.2:443".parse().unwrap(),
        );
        assert_eq!(h, b"PROXY TCP4 192.0.2.1 198.51.100.2 51000 443\r\n");
    }

    #[test]
    fn v2_ipv4_parses_back_with_ppp() {
        let src: SocketAddr = "192.0.2.1:51000".parse().unwrap();
        let dst: SocketAddr = "198.51.100.2:443".parse().unwrap();
        let h = proxy_header(ProxyProtoVersion::V2, src, dst);
        let parsed = ppp::v2::Header::try_from(h.as_slice()).unwrap();
        assert_eq!(parsed.command, ppp::v2::Command::Proxy);
        match parsed.addresses {
            ppp::v2::Addresses::IPv4(a) => {
                assert_eq!(SocketAddr::from((a.source_address, a.source_port)), src);
                assert_eq!(
                    SocketAddr::from((a.destination_address, a.destination_port)),
                    dst
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn mixed_families_become_ipv6() {
        let h = proxy_header(
            ProxyProtoVersion::V1,
            "192.0.2.1:1".parse().unwrap(),
            "[2001:db8::1]:443".parse().unwrap(),
        );
        assert_eq!(h, b"PROXY TCP6 ::ffff:192.0.2.1 2001:db8::1 1 443\r\n");
        let h2 = proxy_header(
            ProxyProtoVersion::V2,
            "192.0.2.1:1".parse().unwrap(),
            "[2001:db8::1]:443".parse().unwrap(),
        );
        assert!(matches!(
            ppp::v2::Header::try_from(h2.as_slice()).unwrap().addresses,
            ppp::v2::Addresses::IPv6(_)
        ));
    }
}
