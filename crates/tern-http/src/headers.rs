//! Header rules: hop-by-hop headers end at Tern, client-sent `Tern-*` headers are
//! dropped so they cannot be spoofed, and the forwarding headers are added.

use std::net::SocketAddr;

use http::header::{
    Entry, HeaderMap, HeaderName, HeaderValue, CONNECTION, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION,
    TE, TRAILER, TRANSFER_ENCODING, UPGRADE, VIA,
};

// Built once: a name from a string is parsed on every use, and these are used on
// every request (the profile in bench/PROFILE.md found a quarter of Tern's
// user-space instructions in header-name parsing and formatting).
// Statics rather than consts where a field refers to them (see `forwarding_fields`).
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
static TERN_CLIENT_IP: HeaderName = HeaderName::from_static("tern-client-ip");
static TERN_REGION: HeaderName = HeaderName::from_static("tern-region");
pub(crate) static TERN_REQUEST_ID: HeaderName = HeaderName::from_static("tern-request-id");
/// On a response whose request waited for its machine to start.
pub(crate) static TERN_MACHINE_START: HeaderName = HeaderName::from_static("tern-machine-start");
static HTTPS: HeaderValue = HeaderValue::from_static("https");
static HTTP: HeaderValue = HeaderValue::from_static("http");

/// Headers that describe one hop and never pass through a proxy (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
    TE,
    TRAILER,
    TRANSFER_ENCODING,
];

/// Fields `Connection` can never remove: the message cannot do without them
/// (HTTP/1.1 requires Host; Content-Length frames the body).
const KEPT: [HeaderName; 2] = [http::header::HOST, http::header::CONTENT_LENGTH];

/// What one pass over a message's header names found. Most messages carry none
/// of these, and a pass over a few names costs less than a map lookup per name.
#[derive(Debug, Default, Clone, Copy)]
struct Found {
    hop_by_hop: bool,
    tern: bool,
    forwarding: bool,
}

fn scan(headers: &HeaderMap) -> Found {
    let mut found = Found::default();
    // Matched as text: a standard name's text is a table lookup, and a match on it
    // costs less than comparing the name with each constant in turn.
    for name in headers.keys() {
        match name.as_str() {
            "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade" => {
                found.hop_by_hop = true;
            }
            "x-forwarded-for" | "via" => found.forwarding = true,
            n if n.starts_with("tern-") => found.tern = true,
            _ => {}
        }
    }
    found
}

/// Readies a client's request headers to be forwarded: hop-by-hop headers out
/// (see [`strip_hop_by_hop`]) and spoofed `Tern-*` headers out. Returns whether the
/// client sent `X-Forwarded-For` or `Via`, which Tern's entries must extend
/// rather than stand alone.
pub(crate) fn scrub_request(headers: &mut HeaderMap, keep_upgrade: bool) -> bool {
    let found = scan(headers);
    if found.hop_by_hop || keep_upgrade {
        remove_hop_by_hop(headers, keep_upgrade);
    }
    if found.tern {
        strip_tern_headers(headers);
    }
    found.forwarding
}

/// Removes hop-by-hop headers and any header named in `Connection`. `Upgrade` is
/// kept (with `Connection: upgrade`) when `keep_upgrade`, since the upgrade is
/// negotiated end to end.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    if keep_upgrade || scan(headers).hop_by_hop {
        remove_hop_by_hop(headers, keep_upgrade);
    }
}

fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        if (keep_upgrade && name == UPGRADE) || KEPT.contains(&name) {
            continue;
        }
        headers.remove(&name);
    }
    let present: Vec<HeaderName> = headers
        .keys()
        .filter(|n| HOP_BY_HOP.contains(n) || (!keep_upgrade && *n == UPGRADE))
        .cloned()
        .collect();
    for name in present {
        headers.remove(&name);
    }
    if keep_upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Drops every header whose name starts with `tern-`: only Tern sets those.
fn strip_tern_headers(headers: &mut HeaderMap) {
    let spoofed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().starts_with("tern-"))
        .cloned()
        .collect();
    for name in spoofed {
        headers.remove(&name);
    }
}

/// The forwarding values that are the same for every request on a connection,
/// made once when it is accepted.
#[derive(Debug, Clone)]
pub(crate) struct ConnValues {
    /// The client's address; an IPv4-mapped IPv6 address is shown as IPv4.
    client_ip: HeaderValue,
    port: HeaderValue,
}

impl ConnValues {
    pub(crate) fn new(peer: SocketAddr, port: u16) -> Self {
        ConnValues {
            client_ip: HeaderValue::try_from(peer.ip().to_canonical().to_string())
                .unwrap_or(HeaderValue::from_static("unknown")),
            port: HeaderValue::from(port),
        }
    }
}

/// What Tern tells the machine about the client and itself.
pub(crate) struct Forwarded<'a> {
    pub conn: &'a ConnValues,
    pub tls: bool,
    /// This node's region; `None` when it cannot be a header value.
    pub region: Option<&'a HeaderValue>,
    pub request_id: &'a HeaderValue,
    pub version: http::Version,
}

impl Forwarded<'_> {
    fn proto(&self) -> &'static HeaderValue {
        if self.tls {
            &HTTPS
        } else {
            &HTTP
        }
    }
}

pub(crate) fn add_forwarding(headers: &mut HeaderMap, f: &Forwarded<'_>) {
    // Room for all of them (and a Host made from an HTTP/2 authority) at once: a
    // client's map is sized to what it sent, and growing it one insert at a time
    // rehashes it more than once.
    headers.reserve(8);
    append_to_list(headers, &X_FORWARDED_FOR, &f.conn.client_ip);
    headers.insert(X_FORWARDED_PROTO.clone(), f.proto().clone());
    headers.insert(X_FORWARDED_PORT.clone(), f.conn.port.clone());
    append_to_list(headers, &VIA_NAME, via_value(f.version));
    headers.insert(TERN_CLIENT_IP.clone(), f.conn.client_ip.clone());
    if let Some(region) = f.region {
        headers.insert(TERN_REGION.clone(), region.clone());
    }
    headers.insert(TERN_REQUEST_ID.clone(), f.request_id.clone());
}

/// The fields [`add_forwarding`] inserts, as name/value pairs for a head that
/// Tern encodes itself: none of them is hashed into the request's map. Only for
/// a request without an `X-Forwarded-For` or `Via` of its own, which
/// `add_forwarding` extends instead.
pub(crate) fn forwarding_fields<'a>(f: &Forwarded<'a>) -> Fields<'a> {
    let mut fields = Fields {
        pairs: [(&X_FORWARDED_FOR, &f.conn.client_ip); 7],
        len: 1,
    };
    let mut push = |name: &'static HeaderName, value: &'a HeaderValue| {
        fields.pairs[fields.len] = (name, value);
        fields.len += 1;
    };
    push(&X_FORWARDED_PROTO, f.proto());
    push(&X_FORWARDED_PORT, &f.conn.port);
    push(&VIA_NAME, via_value(f.version));
    push(&TERN_CLIENT_IP, &f.conn.client_ip);
    if let Some(region) = f.region {
        push(&TERN_REGION, region);
    }
    push(&TERN_REQUEST_ID, f.request_id);
    fields
}

/// Up to seven header fields, kept on the stack.
pub(crate) struct Fields<'a> {
    pairs: [(&'a HeaderName, &'a HeaderValue); 7],
    len: usize,
}

impl<'a> Fields<'a> {
    pub(crate) fn as_slice(&self) -> &[(&'a HeaderName, &'a HeaderValue)] {
        &self.pairs[..self.len]
    }
}

/// Sets a comma-separated list header (`X-Forwarded-For`, `Via`) to every prior
/// value, in order, followed by `ours`.
fn append_to_list(headers: &mut HeaderMap, name: &HeaderName, ours: &HeaderValue) {
    match headers.entry(name) {
        Entry::Vacant(v) => {
            v.insert(ours.clone());
        }
        Entry::Occupied(mut o) => {
            let mut joined = Vec::new();
            for v in o.iter() {
                joined.extend_from_slice(v.as_bytes());
                joined.extend_from_slice(b", ");
            }
            joined.extend_from_slice(ours.as_bytes());
            let value = HeaderValue::from_bytes(&joined).unwrap_or_else(|_| ours.clone());
            o.insert(value);
        }
    }
}

static VIA_NAME: HeaderName = VIA;
static VIA_09: HeaderValue = HeaderValue::from_static("0.9 tern");
static VIA_10: HeaderValue = HeaderValue::from_static("1.0 tern");
static VIA_11: HeaderValue = HeaderValue::from_static("1.1 tern");
static VIA_2: HeaderValue = HeaderValue::from_static("2 tern");
static VIA_3: HeaderValue = HeaderValue::from_static("3 tern");

/// `Via`'s entry for Tern on a message of this version (RFC 9110 §7.6.3).
pub(crate) fn via_value(v: http::Version) -> &'static HeaderValue {
    match v {
        http::Version::HTTP_09 => &VIA_09,
        http::Version::HTTP_10 => &VIA_10,
        http::Version::HTTP_2 => &VIA_2,
        http::Version::HTTP_3 => &VIA_3,
        _ => &VIA_11,
    }
}

const REQUEST_ID_LEN: usize = 32;

thread_local! {
    /// Request ids are cut from a shared block of 128, so that an id costs no
    /// allocation of its own (it cost two: the text and, at its first clone, the
    /// shared handle). A block is freed when the last id cut from it is dropped.
    static REQUEST_ID_BLOCK: std::cell::RefCell<bytes::BytesMut> =
        std::cell::RefCell::new(bytes::BytesMut::new());
}

/// A fresh request id: 128 random bits as 32 lowercase hex digits.
pub(crate) fn request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits = rand::random::<u128>();
    let mut text = [0u8; REQUEST_ID_LEN];
    for (i, digit) in text.iter_mut().enumerate() {
        let nibble = (bits >> (124 - 4 * i)) & 0xf;
        *digit = HEX[nibble as usize];
    }
    let shared = REQUEST_ID_BLOCK.with_borrow_mut(|block| {
        if block.capacity() < REQUEST_ID_LEN {
            *block = bytes::BytesMut::with_capacity(128 * REQUEST_ID_LEN);
        }
        block.extend_from_slice(&text);
        block.split().freeze()
    });
    let mut id =
        HeaderValue::from_maybe_shared(shared).expect("hex digits are a valid header value");
    // Unique per request, so an HPACK encoder gains nothing by indexing it, and
    // inserting one per response churns its dynamic table: "never indexed" skips
    // the insertion (it cost an HTTP/2 response ~10% of Tern's instructions).
    id.set_sensitive(true);
    id
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
    fn the_scan_knows_every_name_the_rules_remove_or_extend() {
        for name in HOP_BY_HOP.iter().chain([&UPGRADE]) {
            let mut h = HeaderMap::new();
            h.insert(name.clone(), HeaderValue::from_static("x"));
            assert!(scan(&h).hop_by_hop, "{name}");
        }
        for name in [&X_FORWARDED_FOR, &VIA_NAME] {
            let mut h = HeaderMap::new();
            h.insert(name.clone(), HeaderValue::from_static("x"));
            assert!(scan(&h).forwarding, "{name}");
        }
        let h = map(&[("tern-region", "x"), ("accept", "*/*"), ("host", "a")]);
        let found = scan(&h);
        assert!(found.tern && !found.hop_by_hop && !found.forwarding);
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
        assert!(!scrub_request(&mut h, false));
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn forwarding_headers_append_and_set() {
        let mut h = map(&[("x-forwarded-for", "10.0.0.1"), ("via", "1.1 cdn")]);
        let conn = ConnValues::new("[::ffff:192.0.2.7]:5555".parse().unwrap(), 443);
        let region = HeaderValue::from_static("ams");
        add_forwarding(
            &mut h,
            &Forwarded {
                conn: &conn,
                tls: true,
                region: Some(&region),
                request_id: &HeaderValue::from_static("abc"),
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

    #[test]
    fn every_prior_list_value_is_kept_in_order() {
        let mut h = map(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2, 10.0.0.3"),
            ("via", "1.0 edge"),
            ("via", "1.1 cdn"),
        ]);
        let conn = ConnValues::new("198.51.100.9:1234".parse().unwrap(), 80);
        add_forwarding(
            &mut h,
            &Forwarded {
                conn: &conn,
                tls: false,
                region: None,
                request_id: &request_id(),
                version: http::Version::HTTP_11,
            },
        );
        assert_eq!(
            h.get_all("x-forwarded-for").iter().collect::<Vec<_>>(),
            ["10.0.0.1, 10.0.0.2, 10.0.0.3, 198.51.100.9"]
        );
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-port"], "80");
        assert_eq!(
            h.get_all("via").iter().collect::<Vec<_>>(),
            ["1.0 edge, 1.1 cdn, 1.1 tern"]
        );
        assert!(!h.contains_key("tern-region"));
    }

    #[test]
    fn list_headers_absent_before_get_ours_alone() {
        let mut h = map(&[("accept", "*/*")]);
        let conn = ConnValues::new("[::ffff:198.51.100.9]:1234".parse().unwrap(), 443);
        add_forwarding(
            &mut h,
            &Forwarded {
                conn: &conn,
                tls: true,
                region: Some(&HeaderValue::from_static("ams")),
                request_id: &request_id(),
                version: http::Version::HTTP_2,
            },
        );
        assert_eq!(
            h.get_all("x-forwarded-for").iter().collect::<Vec<_>>(),
            ["198.51.100.9"]
        );
        assert_eq!(h.get_all("via").iter().collect::<Vec<_>>(), ["2 tern"]);
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["tern-region"], "ams");
        assert_eq!(h["accept"], "*/*");
    }

    #[test]
    fn request_ids_are_32_hex_digits_and_differ() {
        let a = request_id();
        let b = request_id();
        // Past the end of a block, into the next.
        let many: Vec<_> = (0..300).map(|_| request_id()).collect();
        assert!(many.iter().all(|id| id.len() == 32 && *id != a));
        assert_eq!(a.len(), 32);
        assert!(a
            .as_bytes()
            .iter()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
        assert!(a.is_sensitive(), "never indexed by HPACK");
    }
}
