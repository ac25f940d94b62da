//! The parsers' surface for fuzzing and differential tests (the `fuzzing`
//! feature; never in a release build): each entry takes raw bytes from the
//! network, runs one parser over them as the server or client would, checks the
//! parser's own invariants, and says what it made of them in plain types that a
//! test can compare with another implementation's reading.

use bytes::BytesMut;

use crate::chunked::{Decoded, Decoder};
use crate::head::{self, Framing};
use crate::server_head::{self, Parsed};

/// A header field as parsed: its name lower-cased, its value as sent.
pub type Field = (String, Vec<u8>);

/// What the server side made of the bytes at the front of its read buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestVerdict {
    /// A bodyless request this server answers itself; its head was `consumed`
    /// bytes long.
    Answered {
        consumed: usize,
        method: String,
        target: String,
        http10: bool,
        fields: Vec<Field>,
        keep_alive: bool,
    },
    /// The head is not complete yet.
    Partial,
    /// Handed, untouched, to the general server (hyper).
    HandedOver,
}

/// Parses a request head as the in-task server does, with its limits.
///
/// Checks: a hand-over leaves the buffer exactly as it was; an answered head was
/// taken whole from the front of the buffer.
pub fn request_head(data: &[u8], max_bytes: usize, max_headers: usize) -> RequestVerdict {
    let mut buf = BytesMut::from(data);
    match server_head::parse_request(&mut buf, max_bytes, max_headers) {
        Parsed::Other => {
            assert_eq!(&buf[..], data, "a hand-over changed the buffer");
            RequestVerdict::HandedOver
        }
        Parsed::Partial => {
            assert_eq!(&buf[..], data, "a partial head changed the buffer");
            RequestVerdict::Partial
        }
        Parsed::Request(head) => {
            let consumed = data.len() - buf.len();
            assert_eq!(&data[consumed..], &buf[..], "the head was not taken whole");
            assert!(consumed <= max_bytes, "a head past the limit was taken");
            let req = head.request;
            RequestVerdict::Answered {
                consumed,
                method: req.method().as_str().to_owned(),
                target: req.uri().to_string(),
                http10: req.version() == http::Version::HTTP_10,
                fields: fields(req.headers()),
                keep_alive: head.keep_alive,
            }
        }
    }
}

/// What the client side made of a machine's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseVerdict {
    /// A whole response: its head, its body decoded, and how many bytes of the
    /// input it took; `keep_alive` when another response may follow.
    Complete {
        status: u16,
        fields: Vec<Field>,
        body: Vec<u8>,
        consumed: usize,
        keep_alive: bool,
    },
    /// The head and a body that runs until the connection closes: everything
    /// after the head is the body.
    UntilClose {
        status: u16,
        fields: Vec<Field>,
        body: Vec<u8>,
    },
    /// The input ended before the response did.
    Incomplete,
    /// Refused as malformed.
    Malformed(String),
}

/// Reads one response (to a HEAD request when `head_request`) as the in-task
/// client does: its head, then its body as the head frames it.
pub fn response(data: &[u8], head_request: bool) -> ResponseVerdict {
    let mut buf = BytesMut::from(data);
    let head = match head::parse_response(&mut buf, head_request) {
        Ok(Some(head)) => head,
        Ok(None) => return ResponseVerdict::Incomplete,
        Err(e) => return ResponseVerdict::Malformed(e.to_string()),
    };
    let status = head.response.status().as_u16();
    let fields = fields(head.response.headers());
    let mut body = Vec::new();
    match head.framing {
        Framing::Length(n) => {
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            if buf.len() < n {
                return ResponseVerdict::Incomplete;
            }
            body.extend_from_slice(&buf.split_to(n));
        }
        Framing::Chunked => {
            let mut decoder = Decoder::default();
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Decoded::Data(d)) => body.extend_from_slice(&d),
                    Ok(Decoded::End) => break,
                    Ok(Decoded::NeedMore) => return ResponseVerdict::Incomplete,
                    Err(e) => return ResponseVerdict::Malformed(e.to_string()),
                }
            }
        }
        Framing::UntilClose => {
            body.extend_from_slice(&buf);
            return ResponseVerdict::UntilClose {
                status,
                fields,
                body,
            };
        }
    }
    // As the client does (body.rs, `finish`): bytes after the body's end mean
    // the machine broke the framing, and the connection is not trusted again.
    ResponseVerdict::Complete {
        status,
        fields,
        body,
        consumed: data.len() - buf.len(),
        keep_alive: head.keep_alive && buf.is_empty(),
    }
}

/// What the chunked decoder made of a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkedVerdict {
    /// The body ended after `consumed` bytes, with this data.
    End {
        data: Vec<u8>,
        consumed: usize,
    },
    /// The input ended first, after this much data.
    NeedMore {
        data: Vec<u8>,
    },
    Malformed(String),
}

/// Decodes a chunked body, fed in pieces of `step` bytes (at least one): the
/// decoder must reach the same verdict however its input is cut.
pub fn chunked(data: &[u8], step: usize) -> ChunkedVerdict {
    let step = step.max(1);
    let mut decoder = Decoder::default();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut fed = 0;
    loop {
        match decoder.decode(&mut buf) {
            Ok(Decoded::Data(d)) => {
                assert!(!d.is_empty(), "an empty data run");
                out.extend_from_slice(&d);
            }
            Ok(Decoded::End) => {
                return ChunkedVerdict::End {
                    data: out,
                    consumed: fed - buf.len(),
                }
            }
            Ok(Decoded::NeedMore) => {
                if fed == data.len() {
                    return ChunkedVerdict::NeedMore { data: out };
                }
                let end = (fed + step).min(data.len());
                buf.extend_from_slice(&data[fed..end]);
                fed = end;
            }
            Err(e) => return ChunkedVerdict::Malformed(e.to_string()),
        }
    }
}

fn fields(map: &http::HeaderMap) -> Vec<Field> {
    map.iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect()
}
