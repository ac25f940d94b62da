//! Request heads out, response heads in: the encoding and parsing of message heads,
//! and how a response's body is framed (RFC 9112 §6.3).

use std::mem::MaybeUninit;

use bytes::{BufMut, BytesMut};
use http::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Response, StatusCode, Version};

use crate::Error;

/// The most header fields a response head may have, as in hyper and nginx.
pub const MAX_HEADERS: usize = 100;
/// The most bytes a response head may take, status line included.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Writes an HTTP/1.1 request head. The headers are written as they are: the
/// caller has already removed hop-by-hop fields and added Host.
pub fn encode_request(
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    extra: &[(&HeaderName, &HeaderValue)],
    out: &mut BytesMut,
) -> Result<(), Error> {
    // A target comes from a parsed URI, so it holds no whitespace or CR/LF; the
    // check keeps a request line from ever being split whatever the caller passes.
    if target.is_empty() || target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(Error::BadTarget);
    }
    out.reserve(64 + target.len() + (headers.len() + extra.len()) * 32);
    out.put_slice(method.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(target.as_bytes());
    out.put_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers.iter().chain(extra.iter().copied()) {
        put_field(out, name, value);
    }
    // A request with payload semantics but no body says so, as hyper and nginx
    // do: some servers wait for a body or answer 411 otherwise.
    let payload_method = matches!(*method, Method::POST | Method::PUT | Method::PATCH);
    if payload_method && !headers.contains_key(CONTENT_LENGTH) {
        out.put_slice(b"content-length: 0\r\n");
    }
    out.put_slice(b"\r\n");
    Ok(())
}

/// Writes one `name: value` line of a head (or of chunked trailers).
pub(crate) fn put_field(out: &mut BytesMut, name: &HeaderName, value: &HeaderValue) {
    out.put_slice(name.as_str().as_bytes());
    out.put_slice(b": ");
    out.put_slice(value.as_bytes());
    out.put_slice(b"\r\n");
}

/// How a response's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Exactly this many bytes (zero for HEAD, 204 and 304 answers).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Everything until the machine closes the connection.
    UntilClose,
}

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub response: Response<()>,
    pub framing: Framing,
    /// The connection may carry another request once this body is read.
    pub keep_alive: bool,
}

/// Parses a response head from the front of `buf`. `Ok(None)`: more bytes are
/// needed. On success the head's bytes are split off `buf`, and header values share
/// them rather than copying.
pub fn parse_response(
    buf: &mut BytesMut,
    head_request: bool,
) -> Result<Option<ResponseHead>, Error> {
    match parse_response_within::<FEW_HEADERS>(buf, head_request) {
        Err(Error::TooManyHeaders) => parse_response_within::<MAX_HEADERS>(buf, head_request),
        parsed => parsed,
    }
}

/// Room for the fields of nearly every head. Parsing tries this first: the
/// offsets kept for each field are zeroed before parsing, and zeroing room for
/// 100 fields twice per request (both heads) cost cache misses on the stack.
pub(crate) const FEW_HEADERS: usize = 24;

/// `parse_response` with room for `N` fields (`TooManyHeaders` past them).
fn parse_response_within<const N: usize>(
    buf: &mut BytesMut,
    head_request: bool,
) -> Result<Option<ResponseHead>, Error> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; N];
    // Offsets into `buf`, taken while httparse borrows it, so that the values can
    // be cut out of the frozen head afterwards.
    let mut spans: [Span; N] = [(0, 0, 0, 0); N];
    let (len, code, minor, count) = {
        let mut parsed = httparse::Response::new(&mut []);
        let status = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            buf,
            &mut slots,
        ) {
            Ok(s) => s,
            Err(httparse::Error::TooManyHeaders) => return Err(Error::TooManyHeaders),
            Err(e) => return Err(Error::BadHead(e)),
        };
        let len = match status {
            httparse::Status::Complete(len) => len,
            httparse::Status::Partial if buf.len() >= MAX_HEAD_BYTES => {
                return Err(Error::HeadTooLarge)
            }
            httparse::Status::Partial => return Ok(None),
        };
        if len > MAX_HEAD_BYTES {
            return Err(Error::HeadTooLarge);
        }
        record_spans(buf, parsed.headers, &mut spans);
        (
            len,
            parsed.code.unwrap_or(0),
            parsed.version.unwrap_or(1),
            parsed.headers.len(),
        )
    };
    let head = buf.split_to(len).freeze();

    let status = StatusCode::from_u16(code).map_err(|_| Error::BadStatus(code))?;
    // Room for the two fields a proxy adds to a response (Via, a request id), so
    // that adding them does not regrow and rehash the map. No more: a map of a few
    // fields that holds over 1 KiB of entries takes the allocator's slower path.
    let mut headers = crate::header_maps::take(count + 2);
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut has_te = false;
    let mut close = minor == 0;
    for &(n0, n1, v0, v1) in &spans[..count] {
        let name = HeaderName::from_bytes(&head[n0 as usize..n1 as usize])
            .map_err(|_| Error::BadHeaderName)?;
        let value = HeaderValue::from_maybe_shared(head.slice(v0 as usize..v1 as usize))
            .map_err(|_| Error::BadHeaderValue)?;
        if name == CONTENT_LENGTH {
            let n = parse_length(value.as_bytes())?;
            if length.is_some_and(|l| l != n) {
                return Err(Error::BadContentLength);
            }
            length = Some(n);
        } else if name == TRANSFER_ENCODING {
            has_te = true;
            // Only the last coding says whether the body is chunked, and only if
            // it is text: one that is not names no coding Tern knows, so the body
            // runs to the close, as hyper reads it.
            chunked = value.to_str().is_ok()
                && last_token(value.as_bytes()).eq_ignore_ascii_case(b"chunked");
        } else if name == CONNECTION {
            close |= tokens(value.as_bytes()).any(|t| t.eq_ignore_ascii_case(b"close"));
        }
        headers.append(name, value);
    }

    let framing = if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::Length(0)
    } else if has_te && minor == 0 {
        return Err(Error::Http10TransferEncoding);
    } else if has_te {
        // With both, Transfer-Encoding wins and the connection cannot be trusted
        // for another request (RFC 9112 §6.3 item 3).
        if length.is_some() {
            close = true;
        }
        if chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    *response.headers_mut() = headers;
    Ok(Some(ResponseHead {
        response,
        keep_alive: !close && framing != Framing::UntilClose,
        framing,
    }))
}

/// A Content-Length value: digits, or a list of identical digit strings.
pub(crate) fn parse_length(value: &[u8]) -> Result<u64, Error> {
    let mut found: Option<u64> = None;
    for part in value.split(|&b| b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return Err(Error::BadContentLength);
        }
        let n = part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if found.is_some_and(|f| f != n) {
            return Err(Error::BadContentLength);
        }
        found = Some(n);
    }
    found.ok_or(Error::BadContentLength)
}

/// Where a field's name and value lie in a head: start and end of each, as
/// offsets into the buffer httparse read, so that they can be cut out of the
/// frozen head once httparse's borrow of the buffer has ended.
pub(crate) type Span = (u32, u32, u32, u32);

/// Fills `spans` with the spans of `headers`, which borrow from `buf`.
pub(crate) fn record_spans(buf: &[u8], headers: &[httparse::Header<'_>], spans: &mut [Span]) {
    let base = buf.as_ptr() as usize;
    let offset = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
    for (span, h) in spans.iter_mut().zip(headers) {
        let name = offset(h.name.as_bytes());
        let value = offset(h.value);
        *span = (
            name,
            name + h.name.len() as u32,
            value,
            value + h.value.len() as u32,
        );
    }
}

/// The comma-separated tokens of a field value, trimmed.
pub(crate) fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii)
}

fn last_token(value: &[u8]) -> &[u8] {
    tokens(value).last().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn encode_to_bytes(method: &Method, target: &str, headers: &HeaderMap) -> Bytes {
        let mut out = BytesMut::new();
        encode_request(method, target, headers, &[], &mut out).unwrap();
        out.freeze()
    }

    fn parse(raw: &str, head_request: bool) -> Result<Option<ResponseHead>, Error> {
        parse_response(&mut BytesMut::from(raw), head_request)
    }

    fn framing(raw: &str) -> (Framing, bool) {
        let h = parse(raw, false).unwrap().unwrap();
        (h.framing, h.keep_alive)
    }

    #[test]
    fn an_http10_response_with_a_transfer_coding_is_refused() {
        let raw = "HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n";
        assert!(matches!(
            parse(raw, false),
            Err(Error::Http10TransferEncoding)
        ));
        // HTTP/1.1 reads it.
        assert_eq!(framing(&raw.replace("1.0", "1.1")).0, Framing::Chunked);
    }

    #[test]
    fn a_transfer_coding_that_is_not_text_is_not_chunked() {
        let raw = b"HTTP/1.1 200\r\nTransfer-Encoding:\x80gzip, chunked\r\n\r\n0\r\n\r\n";
        let h = parse_response(&mut BytesMut::from(&raw[..]), false)
            .unwrap()
            .unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::UntilClose, false));
    }

    #[test]
    fn a_request_head_is_written_with_its_headers_in_order() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("web.test"));
        h.append("x-a", HeaderValue::from_static("1"));
        h.append("x-a", HeaderValue::from_static("2"));
        let out = encode_to_bytes(&Method::GET, "/p?q=1", &h);
        assert_eq!(
            &out[..],
            b"GET /p?q=1 HTTP/1.1\r\nhost: web.test\r\nx-a: 1\r\nx-a: 2\r\n\r\n"
        );
    }

    #[test]
    fn extra_fields_follow_the_maps() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("web.test"));
        let via = HeaderName::from_static("via");
        let tern = HeaderValue::from_static("1.1 tern");
        let id = HeaderName::from_static("x-id");
        let seven = HeaderValue::from_static("7");
        let mut out = BytesMut::new();
        encode_request(
            &Method::GET,
            "/",
            &h,
            &[(&via, &tern), (&id, &seven)],
            &mut out,
        )
        .unwrap();
        assert_eq!(
            &out[..],
            b"GET / HTTP/1.1\r\nhost: web.test\r\nvia: 1.1 tern\r\nx-id: 7\r\n\r\n"
        );
    }

    #[test]
    fn a_bodyless_post_says_its_length_is_zero() {
        let out = encode_to_bytes(&Method::POST, "/", &HeaderMap::new());
        assert_eq!(&out[..], b"POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
    }

    #[test]
    fn a_target_that_would_split_the_request_line_is_refused() {
        let mut out = BytesMut::new();
        for bad in ["", "/a b", "/a\r\nx: y"] {
            assert!(matches!(
                encode_request(&Method::GET, bad, &HeaderMap::new(), &[], &mut out),
                Err(Error::BadTarget)
            ));
        }
    }

    #[test]
    fn a_partial_head_asks_for_more_and_a_complete_one_is_split_off() {
        assert!(parse("HTTP/1.1 200 OK\r\ncontent-len", false)
            .unwrap()
            .is_none());
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-y: z\r\n\r\nhi");
        let h = parse_response(&mut buf, false).unwrap().unwrap();
        assert_eq!(&buf[..], b"hi");
        assert_eq!(h.response.status(), 200);
        assert_eq!(h.response.headers()["x-y"], "z");
        assert_eq!(h.framing, Framing::Length(2));
        assert!(h.keep_alive);
        // Room for a proxy's Via and request id without regrowing.
        let headers = h.response.headers();
        assert!(headers.capacity() >= headers.len() + 2);
    }

    #[test]
    fn framing_follows_rfc_9112() {
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n"),
            (Framing::Chunked, true)
        );
        // Both: chunked wins, and the connection is not reused.
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n"),
            (Framing::Chunked, false)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n"),
            (Framing::UntilClose, false)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\n\r\n"),
            (Framing::UntilClose, false)
        );
        assert_eq!(
            framing("HTTP/1.1 204 No Content\r\ncontent-length: 9\r\n\r\n"),
            (Framing::Length(0), true)
        );
        assert_eq!(
            framing("HTTP/1.1 304 Not Modified\r\n\r\n"),
            (Framing::Length(0), true)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 7, 7\r\n\r\n"),
            (Framing::Length(7), true)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 7\r\nconnection: close\r\n\r\n"),
            (Framing::Length(7), false)
        );
        assert_eq!(
            framing("HTTP/1.0 200 OK\r\ncontent-length: 7\r\n\r\n"),
            (Framing::Length(7), false)
        );
        let head = parse("HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!(head.framing, Framing::Length(0));
    }

    #[test]
    fn bad_heads_are_errors() {
        for (raw, what) in [
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 1, 2\r\n\r\n",
                "two lengths",
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
                "two fields",
            ),
            ("HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n", "sign"),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
                "overflow",
            ),
            ("HTTP/1.1 200 OK\r\ncontent-length:\r\n\r\n", "empty"),
            ("HTTP/1.1 2000 OK\r\n\r\n", "status"),
            ("HTTP/1.1 099 OK\r\n\r\n", "status below 100"),
            ("SSH-2.0-OpenSSH\r\n\r\n", "not HTTP"),
            ("HTTP/1.1 200 OK\r\nbad name: x\r\n\r\n", "space in name"),
        ] {
            assert!(parse(raw, false).is_err(), "{what}: {raw:?}");
        }
    }

    #[test]
    fn a_head_with_more_fields_than_the_first_try_holds_is_parsed_again() {
        let mut raw = String::from("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n");
        for i in 0..FEW_HEADERS + 6 {
            raw.push_str(&format!("x-{i}: {i}\r\n"));
        }
        raw.push_str("\r\n");
        let h = parse(&raw, false).unwrap().unwrap();
        assert_eq!(h.response.headers().len(), FEW_HEADERS + 7);
        assert_eq!(h.framing, Framing::Length(0));
    }

    #[test]
    fn a_head_past_the_limits_is_refused() {
        let mut many = String::from("HTTP/1.1 200 OK\r\n");
        for i in 0..=MAX_HEADERS {
            many.push_str(&format!("x-{i}: v\r\n"));
        }
        many.push_str("\r\n");
        assert!(matches!(parse(&many, false), Err(Error::TooManyHeaders)));

        let endless = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_HEAD_BYTES));
        assert!(matches!(parse(&endless, false), Err(Error::HeadTooLarge)));
    }
}
