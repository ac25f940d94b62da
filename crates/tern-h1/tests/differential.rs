//! tern-h1 against hyper: the same bytes, generated and mutated, go to tern-h1's
//! parsers and to hyper's server or client over an in-memory connection, and the
//! two must agree. tern-h1 hands to hyper whatever it does not answer itself, so
//! the server side's rule is one-way: what tern-h1 answers, hyper would have
//! accepted, with the same method, target, version and fields, ending at the
//! same byte and leaving the connection open or closed alike. The client side
//! reads machines' answers by itself, so there both must accept and refuse the
//! same responses, with the same status, fields and body.

mod gen;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use proptest::prelude::*;
use tern_h1::fuzz::{self, Field, RequestVerdict, ResponseVerdict};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The request that follows the one under test, to see where hyper thinks the
/// first one ended and whether it keeps the connection open.
const NEXT: &[u8] = b"GET /__next HTTP/1.1\r\nhost: next\r\n\r\n";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases: gen::cases(cases),
        ..ProptestConfig::default()
    }
}

fn sorted(mut fields: Vec<Field>) -> Vec<Field> {
    fields.sort();
    fields
}

fn fields_of(map: &http::HeaderMap) -> Vec<Field> {
    sorted(
        map.iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect(),
    )
}

/// A request as hyper's server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    method: String,
    target: String,
    http10: bool,
    fields: Vec<Field>,
    body: Vec<u8>,
}

/// Feeds `input` to hyper's HTTP/1.1 server, then ends the client's side of the
/// connection; returns the requests it dispatched, in order.
async fn hyper_server_reads(input: Vec<u8>) -> Vec<Seen> {
    let (mut client, server) = tokio::io::duplex(1 << 16);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let record = Arc::clone(&record);
        async move {
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes().to_vec())
                .unwrap_or_default();
            record.lock().unwrap().push(Seen {
                method: parts.method.as_str().to_owned(),
                target: parts.uri.to_string(),
                http10: parts.version == http::Version::HTTP_10,
                fields: fields_of(&parts.headers),
                body,
            });
            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                b"ok",
            ))))
        }
    });
    // Half-close: the client's end of input must not cut the requests hyper has
    // read but not yet answered.
    let serving = tokio::spawn(
        hyper::server::conn::http1::Builder::new()
            .half_close(true)
            .serve_connection(hyper_util::rt::TokioIo::new(server), service),
    );
    let _ = client.write_all(&input).await;
    let _ = client.shutdown().await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut out)).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), serving).await;
    let seen = seen.lock().unwrap().clone();
    seen
}

/// The server side's rule for one input.
fn check_request(rt: &tokio::runtime::Runtime, data: &[u8]) -> Result<(), TestCaseError> {
    let RequestVerdict::Answered {
        consumed,
        method,
        target,
        http10,
        fields,
        keep_alive,
    } = fuzz::request_head(data, tern_h1::MAX_HEAD_BYTES, tern_h1::MAX_HEADERS)
    else {
        // Handed over or incomplete: hyper reads it itself.
        return Ok(());
    };
    let input = [&data[..consumed], NEXT].concat();
    let seen = rt.block_on(hyper_server_reads(input));
    let first = seen.first().ok_or_else(|| {
        TestCaseError::fail(format!(
            "tern-h1 answered what hyper refused: {:?}",
            String::from_utf8_lossy(&data[..consumed])
        ))
    })?;
    let ours = Seen {
        method,
        target,
        http10,
        fields: sorted(fields),
        body: Vec::new(),
    };
    prop_assert_eq!(first, &ours, "{:?}", String::from_utf8_lossy(data));
    // The head ends at the same byte: hyper found the next request right after
    // it, if it kept the connection for one.
    let next = seen.get(1).map(|s| s.target.as_str());
    if keep_alive {
        prop_assert_eq!(next, Some("/__next"), "{:?}", String::from_utf8_lossy(data));
    } else {
        prop_assert_eq!(next, None, "{:?}", String::from_utf8_lossy(data));
    }
    Ok(())
}

/// What hyper's client made of a response.
#[derive(Debug)]
enum HyperRead {
    Response {
        status: u16,
        fields: Vec<Field>,
        body: Vec<u8>,
        /// The same connection carried the next exchange.
        reused: bool,
    },
    /// The head, then a body that failed.
    BodyFailed {
        #[expect(dead_code, reason = "shown in failure messages")]
        status: u16,
    },
    Refused(#[expect(dead_code, reason = "shown in failure messages")] String),
}

/// Sends a GET (or HEAD) to a machine that answers with `input` and, if a second
/// request comes on the connection, with a short second response.
async fn hyper_client_reads(input: Vec<u8>, head_request: bool) -> HyperRead {
    let (client, mut machine) = tokio::io::duplex(1 << 16);
    let script = tokio::spawn(async move {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let mut heads = 0;
        loop {
            let Ok(n) = machine.read(&mut chunk).await else {
                return;
            };
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
            while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                buf.drain(..end + 4);
                heads += 1;
                let answer: &[u8] = if heads == 1 {
                    &input
                } else {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nnext"
                };
                if machine.write_all(answer).await.is_err() {
                    return;
                }
                if heads == 1 && !input_is_whole(&input, head_request) {
                    // An answer cut short: the machine closes.
                    let _ = machine.shutdown().await;
                    return;
                }
            }
        }
    });
    let (mut sender, conn) =
        match hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(client)).await {
            Ok(pair) => pair,
            Err(e) => return HyperRead::Refused(e.to_string()),
        };
    let driving = tokio::spawn(conn);
    let method = if head_request { "HEAD" } else { "GET" };
    let req = http::Request::builder()
        .method(method)
        .uri("/")
        .header("host", "m")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let read = async {
        let resp = match sender.send_request(req).await {
            Ok(r) => r,
            Err(e) => return HyperRead::Refused(e.to_string()),
        };
        let status = resp.status().as_u16();
        let fields = fields_of(resp.headers());
        let body = match resp.into_body().collect().await {
            Ok(b) => b.to_bytes().to_vec(),
            Err(_) => return HyperRead::BodyFailed { status },
        };
        let again = http::Request::get("/again")
            .header("host", "m")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let reused = match sender.ready().await {
            Ok(()) => match sender.send_request(again).await {
                Ok(r) => r
                    .into_body()
                    .collect()
                    .await
                    .is_ok_and(|b| b.to_bytes() == "next"),
                Err(_) => false,
            },
            Err(_) => false,
        };
        HyperRead::Response {
            status,
            fields,
            body,
            reused,
        }
    };
    let out = tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .unwrap_or(HyperRead::Refused("no answer within 5 s".into()));
    driving.abort();
    script.abort();
    out
}

/// Whether tern-h1 reads `input` as a whole response with room for another: the
/// scripted machine then keeps the connection open for a second request.
fn input_is_whole(input: &[u8], head_request: bool) -> bool {
    matches!(
        fuzz::response(input, head_request),
        ResponseVerdict::Complete {
            keep_alive: true,
            ..
        }
    )
}

/// The client side's rule for one input.
fn check_response(
    rt: &tokio::runtime::Runtime,
    data: &[u8],
    head_request: bool,
) -> Result<(), TestCaseError> {
    let ours = fuzz::response(data, head_request);
    // tern-h1 never reads a 1xx or a switch as the answer (the in-task client
    // is not used for upgrades; hyper skips 1xx): nothing to compare.
    if let ResponseVerdict::Complete { status, .. } | ResponseVerdict::UntilClose { status, .. } =
        &ours
    {
        if (100..200).contains(status) {
            return Ok(());
        }
    }
    let theirs = rt.block_on(hyper_client_reads(data.to_vec(), head_request));
    let shown = String::from_utf8_lossy(data);
    match (&ours, &theirs) {
        (
            ResponseVerdict::Complete {
                status,
                fields,
                body,
                keep_alive,
                ..
            },
            HyperRead::Response {
                status: s,
                fields: f,
                body: b,
                reused,
            },
        ) => {
            prop_assert_eq!(status, s, "{:?}", shown);
            prop_assert_eq!(&sorted(fields.clone()), f, "{:?}", shown);
            prop_assert_eq!(body, b, "{:?}", shown);
            // Where the response ends: when tern-h1 would reuse the connection,
            // hyper read the next response from the byte after it too.
            if *keep_alive {
                prop_assert!(*reused, "hyper did not reuse: {:?}", shown);
            }
        }
        (
            ResponseVerdict::UntilClose {
                status,
                fields,
                body,
            },
            HyperRead::Response {
                status: s,
                fields: f,
                body: b,
                ..
            },
        ) => {
            prop_assert_eq!(status, s, "{:?}", shown);
            prop_assert_eq!(&sorted(fields.clone()), f, "{:?}", shown);
            prop_assert_eq!(body, b, "{:?}", shown);
        }
        (ResponseVerdict::Incomplete, HyperRead::BodyFailed { .. } | HyperRead::Refused(_)) => {}
        (ResponseVerdict::Malformed(_), HyperRead::Refused(_) | HyperRead::BodyFailed { .. }) => {}
        // The one refusal of tern-h1's that hyper does not share: a Content-Length
        // that is not a number, or fields that disagree. RFC 9112 (6.3, item 5)
        // makes that framing an unrecoverable error; hyper reads on regardless.
        (ResponseVerdict::Malformed(reason), HyperRead::Response { .. })
            if reason.contains("Content-Length") => {}
        _ => {
            return Err(TestCaseError::fail(format!(
                "tern-h1: {ours:?}\nhyper: {theirs:?}\ninput: {shown:?}"
            )))
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(20_000))]

    #[test]
    fn what_tern_h1_answers_hyper_reads_alike(data in gen::mutated(gen::request_head())) {
        check_request(&runtime(), &data)?;
    }

    #[test]
    fn tern_h1_and_hyper_read_responses_alike(
        data in gen::mutated(gen::response()),
        head_request in prop::bool::weighted(0.2),
    ) {
        check_response(&runtime(), &data, head_request)?;
    }
}

/// The committed corpus, through both rules.
#[test]
fn the_fuzz_corpus_reads_alike() {
    let rt = runtime();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (target, check) in [("request_head", true), ("response", false)] {
        for entry in std::fs::read_dir(root.join(target)).unwrap() {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let verdict = if check {
                check_request(&rt, &data)
            } else {
                check_response(&rt, &data, false)
            };
            if let Err(e) = verdict {
                panic!("{}: {e}", path.display());
            }
        }
    }
}
