//! HTTP through a real `tern run`: curl over HTTP/1.1, h2c and HTTP/2 over TLS with
//! SNI, header rules, redirects, coded errors, body limits and connect failover.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn curl_http1_reaches_the_machine_with_forwarding_headers() {
    let s = web_setup("", "").await;
    // A GET's head is encoded by Tern's in-task client, a POST's with a body by
    // hyper's: both carry the same forwarding headers.
    for body in [None, Some("payload")] {
        let url = s.tern.http_url("web.test", "/hello?x=1");
        let resolve = format!("web.test:{}:127.0.0.1", s.tern.ports.http);
        let (ok, out, err) = tokio::task::spawn_blocking(move || {
            let mut args = vec!["-i", "--http1.1", "--resolve", &resolve, &url];
            if let Some(b) = body {
                args.extend(["--data", b]);
            }
            curl(&args)
        })
        .await
        .unwrap();
        assert!(ok, "{err}");
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(out.contains("machine=m1"), "{out}");
        assert!(out.contains("uri=/hello?x=1"), "{out}");
        assert!(out.contains("x-forwarded-for: 127.0.0.1\n"), "{out}");
        assert!(out.contains("x-forwarded-proto: http\n"), "{out}");
        assert!(
            out.contains(&format!("x-forwarded-port: {}", s.tern.ports.http)),
            "{out}"
        );
        assert!(out.contains("via: 1.1 tern"), "{out}");
        assert!(out.contains("tern-client-ip: 127.0.0.1"), "{out}");
        assert!(out.contains("tern-region: ams"), "{out}");
        // The request id the machine saw is the one the client gets back.
        let sent = out
            .lines()
            .find_map(|l| l.strip_prefix("tern-request-id: "))
            .expect("machine saw a request id");
        let returned = out
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("tern-request-id: ")
                    .map(str::to_owned)
            })
            .expect("response carries the request id");
        assert_eq!(sent.trim(), returned.trim());
        assert_eq!(sent.trim().len(), 32);
        assert_eq!(out.matches("x-forwarded-proto:").count(), 1, "{out}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_http2_over_tls_with_sni() {
    let s = web_setup("", "").await;
    let url = format!("https://api.web.test:{}/h2", s.tern.ports.https);
    let resolve = format!("api.web.test:{}:127.0.0.1", s.tern.ports.https);
    let ca = s.certs.ca_path.to_str().unwrap().to_owned();
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        curl(&[
            "-i",
            "--http2",
            "--cacert",
            &ca,
            "--resolve",
            &resolve,
            &url,
        ])
    })
    .await
    .unwrap();
    assert!(ok, "curl failed: {err}");
    assert!(out.starts_with("HTTP/2 200"), "{out}");
    assert!(out.contains("machine=m1"), "{out}");
    assert!(out.contains("x-forwarded-proto: https"), "{out}");
    assert!(out.contains("via: 2 tern"), "{out}");
    // Over HTTP/1.1 with the same TLS port, ALPN picks http/1.1.
    let url = format!("https://web.test:{}/h1", s.tern.ports.https);
    let resolve = format!("web.test:{}:127.0.0.1", s.tern.ports.https);
    let ca = s.certs.ca_path.to_str().unwrap().to_owned();
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        curl(&[
            "-i",
            "--http1.1",
            "--cacert",
            &ca,
            "--resolve",
            &resolve,
            &url,
        ])
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn h2c_with_prior_knowledge_on_the_plain_port() {
    let s = web_setup("", "").await;
    let url = s.tern.http_url("web.test", "/");
    let resolve = format!("web.test:{}:127.0.0.1", s.tern.ports.http);
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        curl(&["-i", "--http2-prior-knowledge", "--resolve", &resolve, &url])
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert!(out.starts_with("HTTP/2 200"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn spoofed_tern_headers_are_stripped_and_hop_by_hop_removed() {
    let s = web_setup("", "").await;
    let url = s.tern.http_url("web.test", "/");
    let resolve = format!("web.test:{}:127.0.0.1", s.tern.ports.http);
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        curl(&[
            "--http1.1",
            "--resolve",
            &resolve,
            "-H",
            "Tern-Client-IP: 6.6.6.6",
            "-H",
            "Tern-Region: evil",
            "-H",
            "Tern-Force-Instance-Id: nope",
            "-H",
            "Tern-Request-Id: forged",
            "-H",
            "X-Forwarded-For: 10.9.8.7",
            "-H",
            "Connection: keep-alive, X-Drop-Me",
            "-H",
            "X-Drop-Me: secret",
            "-H",
            "Keep-Alive: timeout=5",
            &url,
        ])
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert!(!out.contains("6.6.6.6"), "{out}");
    assert!(!out.contains("evil"), "{out}");
    assert!(!out.contains("tern-force-instance-id"), "{out}");
    assert!(!out.contains("forged"), "{out}");
    assert!(out.contains("tern-client-ip: 127.0.0.1"), "{out}");
    assert!(out.contains("tern-region: ams"), "{out}");
    assert!(
        out.contains("x-forwarded-for: 10.9.8.7, 127.0.0.1"),
        "{out}"
    );
    assert!(!out.contains("x-drop-me"), "{out}");
    assert!(!out.contains("keep-alive:"), "{out}");
}

/// An absolute-form target names the host, whatever Host says: the request is
/// routed by it and the machine sees it as Host. Two Host fields get a 400, on
/// both of Tern's HTTP/1.1 servers (a GET, and a POST with a body).
#[tokio::test(flavor = "multi_thread")]
async fn the_target_overrides_host_and_two_hosts_are_refused() {
    let s = web_setup("", "").await;
    let port = s.tern.ports.http;
    let (routed, twice_get, twice_post) = tokio::task::spawn_blocking(move || {
        (
            raw_exchange(
                port,
                b"GET http://web.test/abs HTTP/1.1\r\nHost: nobody.example\r\nConnection: close\r\n\r\n",
            ),
            raw_exchange(
                port,
                b"GET / HTTP/1.1\r\nHost: web.test\r\nHost: nobody.example\r\nConnection: close\r\n\r\n",
            ),
            raw_exchange(
                port,
                b"POST / HTTP/1.1\r\nHost: web.test\r\nHost: web.test\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
            ),
        )
    })
    .await
    .unwrap();
    assert!(routed.starts_with("HTTP/1.1 200"), "{routed}");
    assert!(routed.contains("\nhost: web.test\n"), "{routed}");
    assert!(!routed.contains("nobody.example"), "{routed}");
    for out in [twice_get, twice_post] {
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");
        assert!(
            out.to_ascii_lowercase().contains("tern-error: bad_request"),
            "{out}"
        );
        assert!(out.contains("more than one Host"), "{out}");
    }
}

/// Hop-by-hop removal never takes Host or Content-Length, whatever `Connection`
/// lists; duplicate Content-Lengths that agree are sent as one, and those that
/// disagree are refused. On both of Tern's HTTP/1.1 servers (a GET without a
/// body, a POST with one).
#[tokio::test(flavor = "multi_thread")]
async fn connection_cannot_remove_host_and_duplicate_lengths_are_merged_or_refused() {
    let s = web_setup("", "").await;
    let port = s.tern.ports.http;
    let asks: [&'static [u8]; 5] = [
        b"GET /h HTTP/1.1\r\nHost: web.test\r\nConnection: host, close\r\n\r\n",
        b"POST /h HTTP/1.1\r\nHost: web.test\r\nConnection: host, content-length, close\r\nContent-Length: 2\r\n\r\nhi",
        b"GET /d HTTP/1.1\r\nHost: web.test\r\nContent-Length: 0\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        b"POST /d HTTP/1.1\r\nHost: web.test\r\nContent-Length: 2\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
        b"GET /d HTTP/1.1\r\nHost: web.test\r\nContent-Length: 0\r\nContent-Length: 00\r\nConnection: close\r\n\r\n",
    ];
    let outs = tokio::task::spawn_blocking(move || asks.map(|a| raw_exchange(port, a)))
        .await
        .unwrap();
    for (i, out) in outs.iter().enumerate() {
        assert!(out.starts_with("HTTP/1.1 200"), "{i}: {out}");
        assert!(out.contains("\nhost: web.test\n"), "{i}: {out}");
        let lengths = out.matches("\ncontent-length: ").count();
        // The machine's echo lists what it got; its own response head has one.
        assert!(lengths <= 2, "{i}: {out}");
    }
    assert!(outs[1].contains("body-bytes=2"), "{}", outs[1]);
    assert!(outs[3].contains("body-bytes=2"), "{}", outs[3]);
    // The echo shows the request's fields after the body line; one length each.
    for i in [2, 3, 4] {
        let echoed = outs[i].split_once("uri=").map_or("", |(_, b)| b);
        assert_eq!(
            echoed.matches("\ncontent-length: ").count(),
            1,
            "{i}: {}",
            outs[i]
        );
    }
    let refused = tokio::task::spawn_blocking(move || {
        raw_exchange(
            port,
            b"POST /d HTTP/1.1\r\nHost: web.test\r\nContent-Length: 2\r\nContent-Length: 3\r\nConnection: close\r\n\r\nhi!",
        )
    })
    .await
    .unwrap();
    assert!(refused.starts_with("HTTP/1.1 400"), "{refused}");
    assert_eq!(s.backend.hits.load(std::sync::atomic::Ordering::Relaxed), 5);
}

/// A request body whose chunked framing is broken is the client's fault: 400,
/// with the code that says so, not a 502 blamed on the machine.
#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_chunked_request_body_is_the_clients_fault() {
    let s = web_setup("", "").await;
    let port = s.tern.ports.http;
    let bodies: [&'static [u8]; 4] = [
        b"zz\r\nhello\r\n0\r\n\r\n",
        b"-5\r\nhello\r\n0\r\n\r\n",
        b"ffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        b"2\r\nhello\r\n0\r\n\r\n",
    ];
    for body in bodies {
        let mut req = b"POST /x HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
        req.extend_from_slice(body);
        let out = tokio::task::spawn_blocking(move || raw_exchange(port, &req))
            .await
            .unwrap();
        assert!(
            out.starts_with("HTTP/1.1 400"),
            "{:?}: {out}",
            String::from_utf8_lossy(body)
        );
        assert!(
            out.to_ascii_lowercase()
                .contains("tern-error: bad_request_body"),
            "{out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_host_gets_a_coded_404() {
    let s = web_setup("", "").await;
    let port = s.tern.ports.http;
    let out = tokio::task::spawn_blocking(move || {
        http_get_raw(("127.0.0.1", port), "/", "nobody.example").unwrap()
    })
    .await
    .unwrap();
    assert!(out.starts_with("HTTP/1.1 404"), "{out}");
    assert!(
        out.to_ascii_lowercase()
            .contains("tern-error: no_app_for_host"),
        "{out}"
    );
    assert!(out.contains("tern error no_app_for_host:"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn declared_oversized_body_gets_413_and_chunked_one_is_cut() {
    let s = web_setup("max_request_body = 1000", "").await;
    let url = s.tern.http_url("web.test", "/upload");
    let resolve = format!("web.test:{}:127.0.0.1", s.tern.ports.http);
    let big = "x".repeat(5000);
    let small = "y".repeat(999);
    let (u, r, b, sm) = (url.clone(), resolve.clone(), big.clone(), small.clone());
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        curl(&["-i", "--http1.1", "--resolve", &r, "--data-binary", &b, &u])
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert!(
        out.to_ascii_lowercase()
            .contains("tern-error: request_body_too_large"),
        "{out}"
    );

    let (u, r) = (url.clone(), resolve.clone());
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        curl(&["-i", "--http1.1", "--resolve", &r, "--data-binary", &sm, &u])
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("body-bytes=999"), "{out}");

    // Chunked: no length is declared, so the limit cuts the stream.
    let (ok, out, _err) = tokio::task::spawn_blocking(move || {
        curl(&[
            "-i",
            "--http1.1",
            "--resolve",
            &resolve,
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            &big,
            &url,
        ])
    })
    .await
    .unwrap();
    assert!(ok);
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn force_https_answers_301() {
    let ips = Ips::new();
    let _backend = Backend::start("m1", ips.get(1), 7000).await;
    let ports = Ports::new();
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path(), &["web.test"]);
    let mut c = config_head(ports, "");
    c.push_str(&format!(
        r#"
[tls]
certs_dir = "certs"

[[app]]
name = "web"
hostnames = ["web.test"]

[[app.service]]
internal_port = 7000
ports = [
  {{ port = {https}, handlers = ["tls", "http"] }},
  {{ port = {http}, handlers = ["http"], force_https = true }},
]
"#,
        https = ports.https,
        http = ports.http
    ));
    c.push_str(&machine("m1", "web", "ams", ips.get(1)));
    let tern = Tern::start_in(dir, &c, ports);
    let out = tokio::task::spawn_blocking(move || {
        http_get_raw(("127.0.0.1", ports.http), "/a/b?c=d", "web.test").unwrap()
    })
    .await
    .unwrap();
    assert!(out.starts_with("HTTP/1.1 301"), "{out}");
    let expected = format!("location: https://web.test:{}/a/b?c=d", tern.ports.https);
    assert!(out.to_ascii_lowercase().contains(&expected), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_failure_moves_on_to_the_next_machine() {
    let ips = Ips::new();
    // m-dead has no process listening; m-live answers.
    let _live = Backend::start("m-live", ips.get(2), 7000).await;
    let ports = Ports::new();
    let mut c = config_head(ports, "connect_attempts = 2");
    c.push_str(&web_app(ports.http, ""));
    c.push_str(&machine("m-dead", "web", "ams", ips.get(1)));
    c.push_str(&machine("m-live", "web", "ams", ips.get(2)));
    let _tern = Tern::start(&c, ports);
    let out = tokio::task::spawn_blocking(move || {
        (0..20)
            .map(|_| http_get_raw(("127.0.0.1", ports.http), "/", "web.test").unwrap())
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    for o in &out {
        assert!(o.starts_with("HTTP/1.1 200"), "{o}");
        assert!(o.contains("machine=m-live"), "{o}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_only_machine_gives_upstream_connect_failed() {
    let ips = Ips::new();
    let ports = Ports::new();
    let mut c = config_head(ports, "");
    c.push_str(&web_app(ports.http, ""));
    c.push_str(&machine("m-dead", "web", "ams", ips.get(1)));
    let _tern = Tern::start(&c, ports);
    let out = tokio::task::spawn_blocking(move || {
        http_get_raw(("127.0.0.1", ports.http), "/", "web.test").unwrap()
    })
    .await
    .unwrap();
    assert!(out.starts_with("HTTP/1.1 502"), "{out}");
    assert!(
        out.to_ascii_lowercase()
            .contains("tern-error: upstream_connect_failed"),
        "{out}"
    );
}

/// A client that asks for a large body and never reads it is dropped once the
/// response has made no progress for `send_timeout`, on both HTTP/1.1 servers (a
/// GET is answered in the task, a POST by hyper), and counted.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_is_dropped_at_the_send_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = web_setup("", "send_timeout = \"1s\"\nidle_timeout = \"60s\"").await;
    let total: u64 = 256 << 20;
    let timeouts = |tern: &Tern| -> u64 {
        tern.admin_get("/metrics")
            .lines()
            .find_map(|l| {
                l.strip_prefix("tern_client_timeouts_total{kind=\"send\"} ")?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    };
    for (n, req) in [
        format!("GET /big?bytes={total} HTTP/1.1\r\nHost: web.test\r\n\r\n"),
        format!(
            "POST /big?bytes={total} HTTP/1.1\r\nHost: web.test\r\nContent-Length: 2\r\n\r\nhi"
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut c = socket
            .connect(([127, 0, 0, 1], s.tern.ports.http).into())
            .await
            .unwrap();
        c.write_all(req.as_bytes()).await.unwrap();
        let tern = &s.tern;
        // What a failure reports is what an intermittent one needs to be
        // understood: the connections, the runtime watchdog, every thread's stack.
        let dropped = eventually(Duration::from_secs(10), || timeouts(tern) > n as u64).await;
        assert!(
            dropped,
            "{req}: not dropped within 10 s of the client's last read\n{}\n{}\n{}\n{}\nlog:\n{}",
            tern.admin_get("/debug/connections"),
            tern.admin_get("/metrics")
                .lines()
                .filter(|l| ["timeouts", "machine_load", "parked"]
                    .iter()
                    .any(|m| l.contains(m)))
                .collect::<Vec<_>>()
                .join("\n"),
            tern.admin_get("/dashboard.json"),
            tern.stacks(),
            tern.log_text()
        );
        let mut got = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        let read_all = async {
            while let Ok(k) = c.read(&mut buf).await {
                if k == 0 {
                    break;
                }
                got += k as u64;
            }
        };
        tokio::time::timeout(Duration::from_secs(20), read_all)
            .await
            .expect("the connection ends");
        assert!(got < total, "{req}: the whole body arrived ({got} bytes)");
    }
}

/// A request body that stops moving ends its request with 408 at
/// `body_read_timeout`, while one that moves slowly but steadily, for longer than
/// that in all, goes through: the timeout is on progress, not on the whole body.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_request_body_gets_408_and_a_slow_one_goes_through() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = web_setup("", "body_read_timeout = \"1s\"").await;
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], s.tern.ports.http).into();

    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"POST /x HTTP/1.1\r\nHost: web.test\r\nContent-Length: 6\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        slow.write_all(b"a").await.unwrap();
    }
    let (head, body) = read_response(&mut slow).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.contains("body-bytes=6"), "{body}");

    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(b"POST /x HTTP/1.1\r\nHost: web.test\r\nContent-Length: 10\r\n\r\na")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stalled.read_to_end(&mut out))
        .await
        .expect("Tern answers and closes a stalled body's connection")
        .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(
        out.to_ascii_lowercase()
            .contains("tern-error: request_body_timeout"),
        "{out}"
    );
    assert!(started.elapsed() >= Duration::from_millis(900), "{out}");
}

/// A streaming RPC's body is not held back by the buffer phase: its client
/// sends a message and waits for the answer before it sends the next, which a
/// buffer waiting to fill would never let happen.
#[tokio::test(flavor = "multi_thread")]
async fn a_streaming_rpc_exchanges_messages_on_an_open_body() {
    use http_body_util::BodyExt;
    let s = web_setup("", "").await;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", s.tern.ports.http))
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let (messages, rx) = tokio::sync::mpsc::unbounded_channel::<bytes::Bytes>();
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        let data = rx.recv().await?;
        Some((
            Ok::<_, std::convert::Infallible>(http_body::Frame::data(data)),
            rx,
        ))
    });
    let req = http::Request::post("http://web.test/stream-echo")
        .header("content-type", "application/grpc")
        .body(http_body_util::StreamBody::new(Box::pin(frames)))
        .unwrap();
    let exchange = async move {
        messages.send(bytes::Bytes::from_static(b"ping")).unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut sent = b"ping".to_vec();
        let mut echoed = Vec::new();
        for next in [&b"again"[..], b"and again", b""] {
            // The whole of what was sent comes back before anything more is sent.
            while echoed.len() < sent.len() {
                let data = body.frame().await.unwrap().unwrap().into_data().unwrap();
                echoed.extend_from_slice(&data);
            }
            assert_eq!(echoed, sent);
            if !next.is_empty() {
                messages.send(bytes::Bytes::from_static(next)).unwrap();
                sent.extend_from_slice(next);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .expect("each message is answered before the next is sent");
}

/// An HTTP/2 stream whose client gives it no flow-control window is cut at
/// `send_timeout`, which frees the machine's connection and load unit, while
/// the client's connection goes on serving its other streams.
#[tokio::test(flavor = "multi_thread")]
async fn an_http2_stream_the_client_never_reads_is_cut_at_the_send_timeout() {
    let s = web_setup("", "send_timeout = \"1s\"\nidle_timeout = \"60s\"").await;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", s.tern.ports.http))
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(0)
            .handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let get = |path: &str, method: http::Method| {
        http::Request::builder()
            .method(method)
            .uri(format!("http://web.test{path}"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    let metric = |tern: &Tern, name: &str| -> f64 {
        tern.admin_get("/metrics")
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let load = "tern_machine_load{app=\"web\",machine=\"m1\",port=\"7000\"} ";
    let cut = "tern_client_timeouts_total{kind=\"stream_send\"} ";

    let resp = sender
        .send_request(get("/big?bytes=10000000", http::Method::GET))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(metric(&s.tern, load), 1.0, "the stream holds its unit");
    let tern = &s.tern;
    assert!(
        eventually(Duration::from_secs(10), || metric(tern, cut) >= 1.0).await,
        "the stalled stream was not cut"
    );
    assert!(
        eventually(Duration::from_secs(5), || metric(tern, load) == 0.0).await,
        "the machine's unit was not released"
    );
    // The connection itself goes on: a response that needs no window arrives.
    let head = sender
        .send_request(get("/", http::Method::HEAD))
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    drop(resp);
}
