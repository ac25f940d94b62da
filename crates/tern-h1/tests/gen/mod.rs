//! Generators of HTTP/1.1 messages for the property tests: well-formed pieces
//! and the odd ones parsers disagree on, put together, then mutated byte by byte.
#![allow(dead_code)]

use proptest::prelude::*;

fn pick(items: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(items).prop_map(|s| s.as_bytes().to_vec())
}

/// Any bytes, or one of the listed ones.
fn pick_or_any(items: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => pick(items),
        1 => prop::collection::vec(any::<u8>(), 0..12),
    ]
}

const METHODS: &[&str] = &[
    "GET", "GET", "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE",
    "get", "G@T", "", "GETT", "M-SEARCH",
];
const TARGETS: &[&str] = &[
    "/",
    "/",
    "/a/b?c=d&e",
    "*",
    "http://h.test/x",
    "http://h.test",
    "h.test:80",
    "/%zz",
    "/a%20b",
    "/\u{7f}",
    "//x",
    "/é",
    "?q",
    "/a#frag",
    "/ab\"c",
    "/{x}",
];
const VERSIONS: &[&str] = &[
    "HTTP/1.1",
    "HTTP/1.1",
    "HTTP/1.1",
    "HTTP/1.0",
    "HTTP/2.0",
    "HTTP/1.2",
    "http/1.1",
    "HTTP/1.10",
    "HTTP/1",
    "HTTP/0.9",
];
const NAMES: &[&str] = &[
    "Host",
    "Host",
    "Content-Length",
    "Transfer-Encoding",
    "Connection",
    "Expect",
    "Upgrade",
    "TE",
    "X-Forwarded-For",
    "Keep-Alive",
    "x-a",
    "Content-Type",
    "Bad Name",
    "",
    "X\u{1}",
    "Accept",
    "content-length",
    "CONNECTION",
    "X-Ü",
];
const VALUES: &[&str] = &[
    "h.test",
    "0",
    "5",
    "0, 0",
    "00",
    "+0",
    "-0",
    "0 ",
    "1a",
    "chunked",
    "gzip, chunked",
    "chunked, gzip",
    "close",
    "keep-alive",
    "Keep-Alive, close",
    "close, keep-alive",
    "upgrade",
    "Upgrade, close",
    "100-continue",
    "trailers",
    "a\tb",
    " padded ",
    "\u{1}",
    "é",
    "",
    "x y z",
    "websocket",
    "timeout=5",
];
const SEPARATORS: &[&str] = &[": ", ": ", ":", " : ", ":\t", "::", " "];
const LINE_ENDS: &[&str] = &["\r\n", "\r\n", "\r\n", "\r\n", "\n", "\r"];

fn field() -> impl Strategy<Value = Vec<u8>> {
    (
        pick_or_any(NAMES),
        pick(SEPARATORS),
        pick_or_any(VALUES),
        prop::bool::weighted(0.03),
    )
        .prop_map(|(name, sep, value, fold)| {
            let mut f = [name, sep, value].concat();
            if fold {
                // obs-fold: a value continued on the next line.
                f.extend_from_slice(b"\r\n more");
            }
            f
        })
}

const CLEAN_METHODS: &[&str] = &["GET", "GET", "HEAD", "DELETE", "OPTIONS", "POST"];
const CLEAN_TARGETS: &[&str] = &["/", "/a/b?c=d&e", "*", "http://h.test/x", "/a%20b", "//x"];
const CLEAN_FIELDS: &[&str] = &[
    "Host: h.test",
    "Host: h.test",
    "Accept: */*",
    "Connection: close",
    "Connection: keep-alive",
    "Connection: Keep-Alive, close",
    "Content-Length: 0",
    "Content-Length: 0",
    "TE: trailers",
    "X-Forwarded-For: 10.0.0.1",
    "Cookie: a=b; c=d",
    "x-a:b",
    "X-Empty:",
    "Upgrade: websocket",
    "Expect: 100-continue",
    "Transfer-Encoding: chunked",
    "Content-Length: 5",
];

/// A well-formed request head, with the fields that decide who answers it.
fn clean_request_head() -> impl Strategy<Value = Vec<u8>> {
    (
        pick(CLEAN_METHODS),
        pick(CLEAN_TARGETS),
        pick(&["HTTP/1.1", "HTTP/1.1", "HTTP/1.0"]),
        prop::collection::vec(pick(CLEAN_FIELDS), 0..5),
    )
        .prop_map(|(method, target, version, fields)| {
            let mut head = [method, b" ".to_vec(), target, b" ".to_vec(), version].concat();
            head.extend_from_slice(b"\r\n");
            for f in fields {
                head.extend_from_slice(&f);
                head.extend_from_slice(b"\r\n");
            }
            head.extend_from_slice(b"\r\n");
            head
        })
}

/// A request head, as a client might send it, or nearly.
pub fn request_head() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![clean_request_head(), noisy_request_head()]
}

fn noisy_request_head() -> impl Strategy<Value = Vec<u8>> {
    (
        pick_or_any(METHODS),
        pick(&[" ", " ", " ", "  ", "\t"]),
        pick_or_any(TARGETS),
        pick(VERSIONS),
        prop::collection::vec(field(), 0..8),
        pick(LINE_ENDS),
    )
        .prop_map(|(method, sp, target, version, fields, eol)| {
            let mut head = [method, sp.clone(), target, sp, version, eol.clone()].concat();
            for f in fields {
                head.extend_from_slice(&f);
                head.extend_from_slice(&eol);
            }
            head.extend_from_slice(&eol);
            head
        })
}

const STATUSES: &[&str] = &[
    "200 OK",
    "200 OK",
    "200 OK",
    "204 No Content",
    "304 Not Modified",
    "100 Continue",
    "101 Switching Protocols",
    "404 Not Found",
    "500 x",
    "200",
    "999 X",
    "099 X",
    "20 X",
    "2000 X",
    "abc X",
];
const RESPONSE_NAMES: &[&str] = &[
    "Content-Length",
    "Content-Length",
    "Transfer-Encoding",
    "Transfer-Encoding",
    "Connection",
    "x-a",
    "Content-Type",
    "Bad Name",
    "",
    "Trailer",
    "Keep-Alive",
];

fn response_field() -> impl Strategy<Value = Vec<u8>> {
    (
        pick_or_any(RESPONSE_NAMES),
        pick(SEPARATORS),
        pick_or_any(VALUES),
    )
        .prop_map(|(name, sep, value)| [name, sep, value].concat())
}

/// A chunked body: chunks of sizes written in the odd ways servers write them.
pub fn chunked_body() -> impl Strategy<Value = Vec<u8>> {
    let chunk = (
        1usize..20,
        pick(&["", "", ";ext", ";a=b", " ", ";x=\"y\""]),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(len, ext, upper)| {
            let size = if upper {
                format!("{len:X}")
            } else {
                format!("{len:x}")
            };
            let mut c = [size.into_bytes(), ext, b"\r\n".to_vec()].concat();
            c.extend(std::iter::repeat_n(b'd', len));
            c.extend_from_slice(b"\r\n");
            c
        });
    (
        prop::collection::vec(chunk, 0..4),
        pick(&[
            "0\r\n\r\n",
            "0\r\n\r\n",
            "0\r\nx-t: 1\r\n\r\n",
            "000\r\n\r\n",
            "0;e\r\n\r\n",
        ]),
    )
        .prop_map(|(chunks, last)| [chunks.concat(), last].concat())
}

/// A well-formed response, framed by a length, by chunks, by the connection's
/// end, or with no body at all.
fn clean_response() -> impl Strategy<Value = Vec<u8>> {
    (
        pick(&["HTTP/1.1 ", "HTTP/1.1 ", "HTTP/1.0 "]),
        pick(&[
            "200 OK",
            "200 OK",
            "404 Not Found",
            "500 Oops",
            "204 No Content",
            "304 Not Modified",
            "301 Moved",
        ]),
        prop::collection::vec(
            pick(&[
                "x-a: 1",
                "Content-Type: text/plain",
                "Connection: close",
                "Connection: keep-alive",
                "Set-Cookie: a=b",
                "Vary: *",
            ]),
            0..3,
        ),
        0u8..4,
        prop::collection::vec(b'a'..=b'z', 0..10),
        chunked_body(),
    )
        .prop_map(|(version, status, fields, framing, body, chunks)| {
            let mut r = [version, status, b"\r\n".to_vec()].concat();
            for f in fields {
                r.extend_from_slice(&f);
                r.extend_from_slice(b"\r\n");
            }
            let body = match framing {
                0 => {
                    r.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
                    body
                }
                1 if !r.starts_with(b"HTTP/1.0") => {
                    r.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
                    chunks
                }
                2 => {
                    r.extend_from_slice(b"Content-Length: 0\r\n");
                    Vec::new()
                }
                _ => body,
            };
            r.extend_from_slice(b"\r\n");
            r.extend_from_slice(&body);
            r
        })
}

/// A response: head, then a body that may or may not match what the head
/// announces.
pub fn response() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![clean_response(), noisy_response()]
}

fn noisy_response() -> impl Strategy<Value = Vec<u8>> {
    (
        pick(&[
            "HTTP/1.1 ",
            "HTTP/1.1 ",
            "HTTP/1.1 ",
            "HTTP/1.0 ",
            "HTTP/2 ",
            "HTTP/1.1  ",
        ]),
        pick_or_any(STATUSES),
        prop::collection::vec(response_field(), 0..6),
        pick(LINE_ENDS),
        prop_oneof![chunked_body(), prop::collection::vec(b'b'..=b'c', 0..12),],
    )
        .prop_map(|(version, status, fields, eol, body)| {
            let mut r = [version, status, eol.clone()].concat();
            for f in fields {
                r.extend_from_slice(&f);
                r.extend_from_slice(&eol);
            }
            r.extend_from_slice(&eol);
            r.extend_from_slice(&body);
            r
        })
}

/// `base`, as it is half the time, else with up to three random edits: a byte
/// replaced, inserted or removed.
pub fn mutated(base: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let edit = (0u8..3, any::<prop::sample::Index>(), any::<u8>());
    let edits = prop_oneof![Just(Vec::new()), prop::collection::vec(edit, 1..4)];
    (base, edits).prop_map(|(mut bytes, edits)| {
        for (kind, at, byte) in edits {
            if bytes.is_empty() {
                bytes.push(byte);
                continue;
            }
            let i = at.index(bytes.len());
            match kind {
                0 => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                _ => {
                    bytes.remove(i);
                }
            }
        }
        bytes
    })
}

/// How many cases each property runs: `TERN_FUZZ_CASES`, else `default`.
pub fn cases(default: u32) -> u32 {
    std::env::var("TERN_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
