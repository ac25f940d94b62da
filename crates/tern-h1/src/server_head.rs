//! Request heads in, response heads out: the server side's parsing and encoding,
//! and the test of whether a request is one this server answers itself.

use std::mem::MaybeUninit;

use bytes::{BufMut, BytesMut};
use http::header::{
    HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, DATE, EXPECT, TE, TRANSFER_ENCODING,
    UPGRADE,
};
use http::response::Parts;
use http::{Method, Request, StatusCode, Uri, Version};

use crate::date;
use crate::head::{parse_length, put_field, record_spans, tokens, Span, FEW_HEADERS};

/// The most fields a request head may have for this server to parse it; a
/// longer head goes to the general server, with its own limit.
const MAX_SLOTS: usize = 100;

/// A request this server answers: a complete head, no body, no upgrade.
#[derive(Debug)]
pub struct RequestHead {
    pub request: Request<()>,
    /// The client lets the connection carry another request after this one.
    pub keep_alive: bool,
    /// The client accepts trailers in a chunked response (`TE: trailers`).
    pub trailers: bool,
}

/// What the front of the read buffer holds.
// Not boxed: one per request, moved once into the request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Parsed {
    Request(RequestHead),
    /// The head is not complete yet, and still within `max_bytes`.
    Partial,
    /// Something the general server must answer: a request with a body, an
    /// upgrade, `Expect`, CONNECT, a malformed head or one past the limits.
    /// Nothing has been taken from the buffer.
    Other,
}

/// Parses the request head at the front of `buf`. On `Request` the head's bytes
/// are split off `buf`, and header values share them rather than copying.
pub fn parse_request(buf: &mut BytesMut, max_bytes: usize, max_headers: usize) -> Parsed {
    // Room for a few fields first (see `head::FEW_HEADERS`), all of them if need be.
    match parse_request_within::<FEW_HEADERS>(buf, max_bytes, max_headers) {
        Some(parsed) => parsed,
        None => {
            parse_request_within::<MAX_SLOTS>(buf, max_bytes, max_headers).unwrap_or(Parsed::Other)
        }
    }
}

/// `parse_request` with room for `N` fields; `None` when the head has more and
/// the limit allows more.
fn parse_request_within<const N: usize>(
    buf: &mut BytesMut,
    max_bytes: usize,
    max_headers: usize,
) -> Option<Parsed> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; N];
    let room = max_headers.min(MAX_SLOTS).min(N);
    let slots = &mut slots[..room];
    let mut spans: [Span; N] = [(0, 0, 0, 0); N];
    let (len, method, target, minor, count) = {
        let mut parsed = httparse::Request::new(&mut []);
        let status = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
            &mut parsed,
            buf,
            slots,
        ) {
            Ok(s) => s,
            Err(httparse::Error::TooManyHeaders) if room < max_headers.min(MAX_SLOTS) => {
                return None
            }
            Err(_) => return Some(Parsed::Other),
        };
        let len = match status {
            httparse::Status::Complete(len) if len <= max_bytes => len,
            httparse::Status::Partial if buf.len() < max_bytes => return Some(Parsed::Partial),
            _ => return Some(Parsed::Other),
        };
        record_spans(buf, parsed.headers, &mut spans);
        let (Some(method), Some(path), Some(minor)) = (parsed.method, parsed.path, parsed.version)
        else {
            return Some(Parsed::Other);
        };
        let method = match method {
            "GET" => Method::GET,
            "HEAD" => Method::HEAD,
            other => match Method::from_bytes(other.as_bytes()) {
                Ok(m) if m != Method::CONNECT => m,
                _ => return Some(Parsed::Other),
            },
        };
        let target = (path.as_ptr() as usize - buf.as_ptr() as usize) as u32;
        (
            len,
            method,
            (target, target + path.len() as u32),
            minor,
            parsed.headers.len(),
        )
    };

    // Every check is made before the head is split off, so that `Other` leaves
    // the buffer as it was for the general server.
    let head = &buf[..len];
    let mut close = false;
    let mut asked_keep_alive = false;
    let mut trailers = false;
    for &(n0, n1, v0, v1) in &spans[..count] {
        let name = &head[n0 as usize..n1 as usize];
        let value = &head[v0 as usize..v1 as usize];
        if name.eq_ignore_ascii_case(CONTENT_LENGTH.as_str().as_bytes()) {
            if value != b"0" {
                return Some(Parsed::Other);
            }
        } else if name.eq_ignore_ascii_case(TRANSFER_ENCODING.as_str().as_bytes())
            || name.eq_ignore_ascii_case(UPGRADE.as_str().as_bytes())
            || name.eq_ignore_ascii_case(EXPECT.as_str().as_bytes())
        {
            return Some(Parsed::Other);
        } else if name.eq_ignore_ascii_case(CONNECTION.as_str().as_bytes()) {
            // Read as tokens only when it is plain ASCII, as hyper reads it; a
            // value with other bytes is hyper's to judge.
            if !value.is_ascii() {
                return Some(Parsed::Other);
            }
            for token in tokens(value) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    asked_keep_alive = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    return Some(Parsed::Other);
                }
            }
        } else if name.eq_ignore_ascii_case(TE.as_str().as_bytes()) {
            if !value.is_ascii() {
                return Some(Parsed::Other);
            }
            trailers |= tokens(value).any(|t| t.eq_ignore_ascii_case(b"trailers"));
        }
    }
    // HTTP/1.1 stays open unless told to close; HTTP/1.0 closes unless asked not
    // to. `close` wins over `keep-alive` whatever their order.
    let keep_alive = !close && (minor == 1 || asked_keep_alive);

    let frozen = buf.split_to(len).freeze();
    let Ok(uri) = Uri::from_maybe_shared(frozen.slice(target.0 as usize..target.1 as usize)) else {
        return Some(other_after_split(buf, frozen));
    };
    let mut headers = crate::header_maps::take(count);
    for &(n0, n1, v0, v1) in &spans[..count] {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&frozen[n0 as usize..n1 as usize]),
            HeaderValue::from_maybe_shared(frozen.slice(v0 as usize..v1 as usize)),
        ) else {
            return Some(other_after_split(buf, frozen));
        };
        // Every Content-Length here is "0": the duplicates become one, as hyper
        // makes them (RFC 9110, 8.6).
        if name == CONTENT_LENGTH && headers.contains_key(CONTENT_LENGTH) {
            continue;
        }
        headers.append(name, value);
    }
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    *request.headers_mut() = headers;
    Some(Parsed::Request(RequestHead {
        request,
        keep_alive,
        trailers,
    }))
}

/// Puts a head that failed a late check back in front of the buffer: rare
/// (a target or field that httparse accepts and `http` does not), so the copy
/// does not matter.
fn other_after_split(buf: &mut BytesMut, head: bytes::Bytes) -> Parsed {
    let mut joined = BytesMut::with_capacity(head.len() + buf.len());
    joined.extend_from_slice(&head);
    joined.extend_from_slice(buf);
    *buf = joined;
    Parsed::Other
}

/// How a response's body is delimited on the way out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutFraming {
    /// No body is written: a HEAD request, 1xx, 204 or 304.
    None,
    Length(u64),
    Chunked,
    /// HTTP/1.0 without a known length: the body ends when the connection does.
    UntilClose,
}

/// What the encoder decided, for the writer of the body.
#[derive(Debug, Clone, Copy)]
pub struct ResponseFrame {
    pub framing: OutFraming,
    pub keep_alive: bool,
}

/// Writes a response head for a request of `version`. The framing comes from the
/// response's `Content-Length` if it has one, else from `body_length` (the body's
/// exact size, if known); a `Transfer-Encoding` the response carries is replaced
/// by the server's own choice. `keep_alive` is what the request and the server
/// allow; a `Connection: close` in the response, or a body that can only end
/// with the connection, turns it off.
pub fn encode_response(
    parts: &Parts,
    version: Version,
    head_request: bool,
    body_length: Option<u64>,
    keep_alive: bool,
    out: &mut BytesMut,
) -> ResponseFrame {
    let status = parts.status;
    out.reserve(128 + parts.headers.len() * 48);
    if version == Version::HTTP_10 {
        out.put_slice(b"HTTP/1.0 ");
    } else {
        out.put_slice(b"HTTP/1.1 ");
    }
    if status == StatusCode::OK {
        out.put_slice(b"200 OK\r\n");
    } else {
        out.put_slice(status.as_str().as_bytes());
        out.put_u8(b' ');
        out.put_slice(
            status
                .canonical_reason()
                .unwrap_or("<unknown status code>")
                .as_bytes(),
        );
        out.put_slice(b"\r\n");
    }

    let mut keep_alive = keep_alive;
    let mut length: Option<u64> = None;
    let mut has_date = false;
    let mut has_connection = false;
    for (name, value) in &parts.headers {
        if *name == TRANSFER_ENCODING {
            continue;
        }
        if *name == CONTENT_LENGTH {
            match parse_length(value.as_bytes()).ok() {
                Some(n) if length.is_none() => length = Some(n),
                // A second or unreadable length: the body's own size decides.
                _ => continue,
            }
        } else if *name == DATE {
            has_date = true;
        } else if *name == CONNECTION {
            has_connection = true;
            keep_alive &= !tokens(value.as_bytes()).any(|t| t.eq_ignore_ascii_case(b"close"));
        }
        put_field(out, name, value);
    }

    let bodiless_status = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if bodiless_status {
        OutFraming::None
    } else if head_request {
        // The length a GET would have, as a HEAD answer should say.
        if length.is_none() {
            if let Some(n) = body_length.filter(|&n| n > 0) {
                put_length(out, n);
            }
        }
        OutFraming::None
    } else if let Some(n) = length {
        OutFraming::Length(n)
    } else if let Some(n) = body_length {
        put_length(out, n);
        OutFraming::Length(n)
    } else if version == Version::HTTP_11 {
        out.put_slice(b"transfer-encoding: chunked\r\n");
        OutFraming::Chunked
    } else {
        keep_alive = false;
        OutFraming::UntilClose
    };
    if !has_date {
        out.put_slice(b"date: ");
        date::put_now(out);
        out.put_slice(b"\r\n");
    }
    if !has_connection {
        if !keep_alive {
            out.put_slice(b"connection: close\r\n");
        } else if version == Version::HTTP_10 {
            out.put_slice(b"connection: keep-alive\r\n");
        }
    }
    out.put_slice(b"\r\n");
    ResponseFrame {
        framing,
        keep_alive,
    }
}

fn put_length(out: &mut BytesMut, n: u64) {
    out.put_slice(b"content-length: ");
    put_number(out, n, 10);
}

/// The size line of a chunk of `len` bytes.
pub fn put_chunk_size(out: &mut BytesMut, len: usize) {
    put_number(out, len as u64, 16);
}

/// `n` in `radix` (10 or 16, lowercase), then CRLF.
fn put_number(out: &mut BytesMut, mut n: u64, radix: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = DIGITS[(n % radix) as usize];
        n /= radix;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[i..]);
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Response;

    fn parse(raw: &str) -> Parsed {
        parse_request(&mut BytesMut::from(raw), 8192, 100)
    }

    fn request(raw: &str) -> RequestHead {
        match parse(raw) {
            Parsed::Request(h) => h,
            other => panic!("{raw:?}: {other:?}"),
        }
    }

    fn encode(
        resp: Response<()>,
        version: Version,
        head: bool,
        len: Option<u64>,
    ) -> (String, ResponseFrame) {
        let (parts, ()) = resp.into_parts();
        let mut out = BytesMut::new();
        let frame = encode_response(&parts, version, head, len, true, &mut out);
        (String::from_utf8(out.to_vec()).unwrap(), frame)
    }

    #[test]
    fn a_bodyless_request_is_parsed_and_split_off() {
        let mut buf = BytesMut::from(
            "GET /a?b=1 HTTP/1.1\r\nHost: web.test\r\nX-A: 1\r\nx-a: 2\r\n\r\nGET /next",
        );
        let Parsed::Request(h) = parse_request(&mut buf, 8192, 100) else {
            panic!("not parsed");
        };
        assert_eq!(&buf[..], b"GET /next");
        assert_eq!(h.request.method(), Method::GET);
        assert_eq!(h.request.uri(), "/a?b=1");
        assert_eq!(h.request.version(), Version::HTTP_11);
        assert_eq!(h.request.headers()["host"], "web.test");
        let a: Vec<_> = h.request.headers().get_all("x-a").iter().collect();
        assert_eq!(a, ["1", "2"]);
        assert!(h.keep_alive);
        assert!(!h.trailers);
    }

    #[test]
    fn repeated_zero_lengths_become_one() {
        let h = request("GET / HTTP/1.1\r\ncontent-length: 0\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(
            h.request.headers().get_all(CONTENT_LENGTH).iter().count(),
            1
        );
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection() {
        assert!(!request("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!request("GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n").keep_alive);
        assert!(!request("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(request("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        assert!(
            !request("GET / HTTP/1.0\r\nconnection: keep-alive\r\nconnection: close\r\n\r\n")
                .keep_alive
        );
        assert!(request("GET / HTTP/1.1\r\nTE: trailers\r\n\r\n").trailers);
        assert!(request("POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n").keep_alive);
        assert!(request("GET http://web.test/x HTTP/1.1\r\n\r\n")
            .request
            .uri()
            .authority()
            .is_some());
    }

    #[test]
    fn anything_else_is_left_whole_for_the_general_server() {
        for raw in [
            "POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello",
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            "GET / HTTP/1.1\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nupgrade: h2c\r\n\r\n",
            "GET / HTTP/1.1\r\nexpect: 100-continue\r\n\r\n",
            "CONNECT web.test:443 HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nbad name: x\r\n\r\n",
            "GET /a b HTTP/1.1\r\n\r\n",
            "GET / HTTP/2.0\r\n\r\n",
            "GET / HTTP/1.1\r\ncontent-length: 00\r\n\r\n",
            // hyper does not read a value with other bytes as tokens.
            "GET / HTTP/1.1\r\nconnection: \u{ff}keep-alive, close\r\n\r\n",
            "GET / HTTP/1.1\r\nte: \u{e9}trailers\r\n\r\n",
        ] {
            let mut buf = BytesMut::from(raw);
            assert!(
                matches!(parse_request(&mut buf, 8192, 100), Parsed::Other),
                "{raw:?}"
            );
            assert_eq!(&buf[..], raw.as_bytes(), "{raw:?} must stay whole");
        }
    }

    #[test]
    fn a_head_refused_after_parsing_is_put_back_whole() {
        // A target httparse takes and `http` does not (over 64 KiB), followed by
        // the start of another request.
        let raw = format!(
            "GET /{} HTTP/1.1\r\nhost: a\r\n\r\nGET /",
            "a".repeat(70_000)
        );
        let mut buf = BytesMut::from(raw.as_str());
        assert!(matches!(
            parse_request(&mut buf, 100_000, 100),
            Parsed::Other
        ));
        assert_eq!(&buf[..], raw.as_bytes());
    }

    #[test]
    fn a_head_with_more_fields_than_the_first_try_holds_is_parsed_again() {
        let mut raw = String::from("GET / HTTP/1.1\r\n");
        for i in 0..FEW_HEADERS + 6 {
            raw.push_str(&format!("x-{i}: {i}\r\n"));
        }
        raw.push_str("\r\n");
        let Parsed::Request(h) = parse_request(&mut BytesMut::from(raw.as_str()), 8192, 100) else {
            panic!("not parsed");
        };
        assert_eq!(h.request.headers().len(), FEW_HEADERS + 6);
        assert_eq!(h.request.headers()["x-29"], "29");
        // Within the first try's room but over the configured limit: refused.
        let few = FEW_HEADERS + 2;
        assert!(matches!(
            parse_request(&mut BytesMut::from(raw.as_str()), 8192, few),
            Parsed::Other
        ));
    }

    #[test]
    fn the_limits_hand_over_what_they_refuse() {
        let raw = "GET / HTTP/1.1\r\nx-a: 1\r\nx-b: 2\r\nx-c: 3\r\n\r\n";
        assert!(matches!(
            parse_request(&mut BytesMut::from(raw), 8192, 2),
            Parsed::Other
        ));
        assert!(matches!(
            parse_request(&mut BytesMut::from(raw), 20, 100),
            Parsed::Other
        ));
        assert!(matches!(
            parse_request(&mut BytesMut::from("GET / HTTP/1.1\r\nx: y"), 8192, 100),
            Parsed::Partial
        ));
        assert!(matches!(
            parse_request(&mut BytesMut::from("GET / HTTP/1.1\r\nx: y"), 10, 100),
            Parsed::Other
        ));
    }

    #[test]
    fn a_response_takes_its_length_from_the_header_or_the_body() {
        let resp = Response::builder()
            .header("content-length", "5")
            .header("date", "Sat, 28 Nov 2026 18:00:00 GMT")
            .body(())
            .unwrap();
        let (text, frame) = encode(resp, Version::HTTP_11, false, Some(5));
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ndate: Sat, 28 Nov 2026 18:00:00 GMT\r\n\r\n"
        );
        assert_eq!(frame.framing, OutFraming::Length(5));
        assert!(frame.keep_alive);

        let resp = Response::builder().status(404).body(()).unwrap();
        let (text, frame) = encode(resp, Version::HTTP_11, false, Some(12));
        assert!(
            text.starts_with("HTTP/1.1 404 Not Found\r\ncontent-length: 12\r\ndate: "),
            "{text}"
        );
        assert_eq!(frame.framing, OutFraming::Length(12));
    }

    #[test]
    fn an_unknown_length_is_chunked_or_ends_with_the_connection() {
        let resp = || {
            Response::builder()
                .header("transfer-encoding", "gzip")
                .body(())
                .unwrap()
        };
        let (text, frame) = encode(resp(), Version::HTTP_11, false, None);
        assert!(text.contains("transfer-encoding: chunked\r\n"));
        assert!(!text.contains("gzip"));
        assert_eq!(frame.framing, OutFraming::Chunked);
        let (text, frame) = encode(resp(), Version::HTTP_10, false, None);
        assert!(text.starts_with("HTTP/1.0 200 OK\r\n"));
        assert!(text.ends_with("connection: close\r\n\r\n"));
        assert_eq!(frame.framing, OutFraming::UntilClose);
        assert!(!frame.keep_alive);
    }

    #[test]
    fn bodiless_answers_write_no_body() {
        for status in [204, 304] {
            let resp = Response::builder().status(status).body(()).unwrap();
            let (text, frame) = encode(resp, Version::HTTP_11, false, None);
            assert!(!text.contains("chunked"), "{text}");
            assert_eq!(frame.framing, OutFraming::None);
        }
        let resp = Response::builder().body(()).unwrap();
        let (text, frame) = encode(resp, Version::HTTP_11, true, Some(7));
        assert!(text.contains("content-length: 7\r\n"), "{text}");
        assert_eq!(frame.framing, OutFraming::None);
    }

    #[test]
    fn connection_fields_are_said_when_they_differ_from_the_default() {
        let resp = || Response::builder().header("date", "x").body(()).unwrap();
        let (parts, ()) = resp().into_parts();
        let mut out = BytesMut::new();
        let frame = encode_response(&parts, Version::HTTP_11, false, Some(0), false, &mut out);
        assert!(!frame.keep_alive);
        assert!(out.ends_with(b"connection: close\r\n\r\n"));
        let (text, frame) = encode(resp(), Version::HTTP_10, false, Some(0));
        assert!(frame.keep_alive);
        assert!(text.ends_with("connection: keep-alive\r\n\r\n"), "{text}");
        let closing = Response::builder()
            .header("connection", "close")
            .header("date", "x")
            .body(())
            .unwrap();
        let (text, frame) = encode(closing, Version::HTTP_11, false, Some(0));
        assert!(!frame.keep_alive);
        assert_eq!(text.matches("connection").count(), 1, "{text}");
    }

    #[test]
    fn chunk_sizes_are_hex() {
        for (len, line) in [
            (0, "0\r\n"),
            (10, "a\r\n"),
            (4096, "1000\r\n"),
            (0x1f2e, "1f2e\r\n"),
        ] {
            let mut out = BytesMut::new();
            put_chunk_size(&mut out, len);
            assert_eq!(&out[..], line.as_bytes());
        }
    }
}
