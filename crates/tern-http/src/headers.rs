//! Header rules: hop-by-hop headers end at Tern, client-sent `Tern-*` headers are
//! dropped so they cannot be spoofed, and the forwarding headers are added.

use std::net::SocketAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, UPGRADE};

/// Headers that describe one hop and never pass through a proxy (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// Removes hop-by-hop headers and any header named in `Connection`. `Upgrade` is
/// kept (with `Connection: upgrade`) when `keep_upgrade`, since the upgrade is
/// negotiated end to end.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        if keep_upgrade && name == UPGRADE {
            continue;
        }
        headers.remove(&name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(UPGRADE);
    }
}

/// Drops every header whose name starts with `tern-`: only Tern sets those.
pub(crate) fn strip_tern_headers(headers: &mut HeaderMap) {
    let spoofed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().starts_with("tern-"))
        .cloned()
        .collect();
    for name in spoofed {
        headers.remove(&name);
    }
}

/// What Tern tells the machine about the client and itself.
pub(crate) struct Forwarded<'a> {
    pub client: SocketAddr,
    pub tls: bool,
    pub port: u16,
    pub region: &'a str,
    pub request_id: &'a str,
    pub version: http::Version,
}

pub(crate) fn add_forwarding(headers: &mut HeaderMap, f: &Forwarded<'_>) {
    let ip = f.client.ip().to_canonical().to_string();
    let xff = match headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
    {
        prior if prior.is_empty() => ip.clone(),
        prior => format!("{}, {ip}", prior.join(", ")),
    };
    headers.remove("x-forwarded-for");
    insert(headers, "x-forwarded-for", &xff);
    insert(
        headers,
        "x-forwarded-proto",
        if f.tls { "https" } else { "http" },
    );
    insert(headers, "x-forwarded-port", &f.port.to_string());
    let via = format!("{} tern", via_version(f.version));
    match headers.get(http::header::VIA).and_then(|v| v.to_str().ok()) {
        Some(prior) => {
            let joined = format!("{prior}, {via}");
            insert(headers, "via", &joined);
        }
        None => insert(headers, "via", &via),
    }
    insert(headers, "tern-client-ip", &ip);
    insert(headers, "tern-region", f.region);
    insert(headers, "tern-request-id", f.request_id);
}

pub(crate) fn via_version(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// Sets a header from text Tern built; values that cannot be a header are skipped
/// rather than sent corrupted.
fn insert(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

/// A fresh request id: 128 random bits as hex.
pub(crate) fn request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("accept", "*/*"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("accept"));
    }

    #[test]
    fn upgrade_survives_when_asked() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn tern_headers_from_clients_are_dropped() {
        let mut h = map(&[
            ("tern-client-ip", "6.6.6.6"),
            ("Tern-Region", "evil"),
            ("x-ok", "1"),
        ]);
        strip_tern_headers(&mut h);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn forwarding_headers_append_and_set() {
        let mut h = map(&[("x-forwarded-for", "10.0.0.1"), ("via", "1.1 cdn")]);
        add_forwarding(
            &mut h,
            &Forwarded {
                client: "[::ffff:192.0.2.7]:5555".parse().unwrap(),
                tls: true,
                port: 443,
                region: "ams",
                request_id: "abc",
                version: http::Version::HTTP_2,
            },
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-port"], "443");
        assert_eq!(h["via"], "1.1 cdn, 2 tern");
        assert_eq!(h["tern-client-ip"], "192.0.2.7");
        assert_eq!(h["tern-region"], "ams");
        assert_eq!(h["tern-request-id"], "abc");
    }
}
