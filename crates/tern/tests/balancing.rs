//! Balancing through a real `tern run`: hard limits with the wait queue, the
//! nearest region first, soft limits spreading load, and health checks taking a
//! machine out of rotation and back.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;

fn one_app(ports: Ports, limits: &str, concurrency: &str, checks: &str, machines: &str) -> String {
    let mut c = config_head(ports, limits);
    c.push_str(&format!(
        r#"
[[region]]
code = "ams"
rtt = {{ ord = "90ms" }}

[[app]]
name = "web"
hostnames = ["web.test"]

[[app.service]]
internal_port = 7000
concurrency = {concurrency}
ports = [{{ port = {http}, handlers = ["http"] }}]
{checks}
{machines}"#,
        http = ports.http
    ));
    c
}

fn get(port: u16, path: &str) -> String {
    http_get_raw(("127.0.0.1", port), path, "web.test").unwrap_or_else(|e| format!("io error: {e}"))
}

fn machine_of(resp: &str) -> Option<&str> {
    resp.lines().find_map(|l| l.strip_prefix("machine="))
}

#[tokio::test(flavor = "multi_thread")]
async fn at_the_hard_limit_a_request_waits_then_gets_503() {
    let ips = Ips::new();
    let backend = Backend::start("m1", ips.get(1), 7000).await;
    let ports = Ports::new();
    let c = one_app(
        ports,
        "queue_timeout = \"700ms\"\nqueue_size = 10",
        r#"{ type = "requests", soft_limit = 1, hard_limit = 2 }"#,
        "",
        &machine("m1", "web", "ams", ips.get(1)),
    );
    let _tern = Tern::start(&c, ports);

    // Hold hard_limit (2) requests open at the machine.
    let held: Vec<_> = (0..2)
        .map(|_| std::thread::spawn(move || get(ports.http, "/slow?ms=2500")))
        .collect();
    assert!(
        eventually(Duration::from_secs(5), || backend
            .hits
            .load(Ordering::Relaxed)
            == 2)
        .await,
        "the two slow requests never reached the machine"
    );

    // The next one waits in the queue for queue_timeout, then gets a coded 503.
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || get(ports.http, "/"))
        .await
        .unwrap();
    let waited = started.elapsed();
    assert!(out.starts_with("HTTP/1.1 503"), "{out}");
    assert!(
        out.to_ascii_lowercase()
            .contains("tern-error: queue_timeout"),
        "{out}"
    );
    assert!(
        waited >= Duration::from_millis(600),
        "answered after {waited:?}, did not wait"
    );
    assert_eq!(
        backend.hits.load(Ordering::Relaxed),
        2,
        "the queued request reached the machine"
    );

    for h in held {
        let r = h.join().unwrap();
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queued_request_goes_through_when_a_unit_frees_up() {
    let ips = Ips::new();
    let backend = Backend::start("m1", ips.get(1), 7000).await;
    let ports = Ports::new();
    let c = one_app(
        ports,
        "queue_timeout = \"5s\"",
        r#"{ type = "requests", soft_limit = 1, hard_limit = 1 }"#,
        "",
        &machine("m1", "web", "ams", ips.get(1)),
    );
    let _tern = Tern::start(&c, ports);
    let held = std::thread::spawn(move || get(ports.http, "/slow?ms=800"));
    assert!(
        eventually(Duration::from_secs(5), || backend
            .hits
            .load(Ordering::Relaxed)
            == 1)
        .await
    );
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || get(ports.http, "/after"))
        .await
        .unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("uri=/after"), "{out}");
    // It had to wait for the slow one to finish.
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    assert!(held.join().unwrap().starts_with("HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_nearest_region_takes_traffic_until_it_is_full() {
    let ips = Ips::new();
    let _ams = Backend::start("m-ams", ips.get(1), 7000).await;
    let _ord = Backend::start("m-ord", ips.get(2), 7000).await;
    let ports = Ports::new();
    let machines =
        machine("m-ams", "web", "ams", ips.get(1)) + &machine("m-ord", "web", "ord", ips.get(2));
    let c = one_app(
        ports,
        "",
        r#"{ type = "requests", soft_limit = 1, hard_limit = 1 }"#,
        "",
        &machines,
    );
    let _tern = Tern::start(&c, ports);
    // Sequential requests: the ams machine is never full, so ord never sees one.
    let outs = tokio::task::spawn_blocking(move || {
        (0..20).map(|_| get(ports.http, "/")).collect::<Vec<_>>()
    })
    .await
    .unwrap();
    for o in &outs {
        assert_eq!(machine_of(o), Some("m-ams"), "{o}");
    }
    // With ams at its hard limit, the next request crosses to ord.
    let held = std::thread::spawn(move || get(ports.http, "/slow?ms=1500"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let o = tokio::task::spawn_blocking(move || get(ports.http, "/"))
        .await
        .unwrap();
    assert_eq!(machine_of(&o), Some("m-ord"), "{o}");
    assert_eq!(machine_of(&held.join().unwrap()), Some("m-ams"));
}

#[tokio::test(flavor = "multi_thread")]
async fn equal_machines_share_the_traffic() {
    let ips = Ips::new();
    let a = Backend::start("m-a", ips.get(1), 7000).await;
    let b = Backend::start("m-b", ips.get(2), 7000).await;
    let ports = Ports::new();
    let machines =
        machine("m-a", "web", "ams", ips.get(1)) + &machine("m-b", "web", "ams", ips.get(2));
    let c = one_app(
        ports,
        "",
        r#"{ type = "requests", soft_limit = 10, hard_limit = 20 }"#,
        "",
        &machines,
    );
    let _tern = Tern::start(&c, ports);
    tokio::task::spawn_blocking(move || {
        for _ in 0..60 {
            assert!(get(ports.http, "/").starts_with("HTTP/1.1 200"));
        }
    })
    .await
    .unwrap();
    let (ha, hb) = (
        a.hits.load(Ordering::Relaxed),
        b.hits.load(Ordering::Relaxed),
    );
    assert_eq!(ha + hb, 60);
    assert!(ha >= 10 && hb >= 10, "a={ha} b={hb}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_health_check_takes_the_machine_out_and_it_comes_back() {
    let ips = Ips::new();
    let sick = Backend::start("m-sick", ips.get(1), 7000).await;
    let _well = Backend::start("m-well", ips.get(2), 7000).await;
    let ports = Ports::new();
    let machines =
        machine("m-sick", "web", "ams", ips.get(1)) + &machine("m-well", "web", "ams", ips.get(2));
    let checks = r#"http_checks = [{ path = "/healthz", interval = "100ms", timeout = "100ms", grace_period = "0s" }]"#;
    let c = one_app(
        ports,
        "",
        r#"{ type = "requests", soft_limit = 10, hard_limit = 20 }"#,
        checks,
        &machines,
    );
    let tern = Tern::start(&c, ports);

    let healthy_of = |tern: &Tern, id: &str| {
        let cat: serde_json::Value =
            serde_json::from_str(&body_of(&tern.admin_get("/catalog"))).unwrap();
        cat["apps"][0]["machines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .map(|m| m["services"][0]["healthy"].as_bool().unwrap())
            .unwrap()
    };
    assert!(
        eventually(Duration::from_secs(3), || sick
            .health_hits
            .load(Ordering::Relaxed)
            > 0)
        .await
    );
    assert!(healthy_of(&tern, "m-sick"));

    sick.healthy.store(false, Ordering::Relaxed);
    assert!(
        eventually(Duration::from_secs(5), || !healthy_of(&tern, "m-sick")).await,
        "the failing machine stayed in rotation"
    );
    let before = sick.hits.load(Ordering::Relaxed);
    let outs = tokio::task::spawn_blocking(move || {
        (0..20).map(|_| get(ports.http, "/")).collect::<Vec<_>>()
    })
    .await
    .unwrap();
    for o in &outs {
        assert_eq!(machine_of(o), Some("m-well"), "{o}");
    }
    assert_eq!(sick.hits.load(Ordering::Relaxed), before);
    let metrics = tern.admin_get("/metrics");
    assert!(
        metrics.contains(
            r#"tern_health_transitions_total{app="web",machine="m-sick",to="unhealthy"} 1"#
        ),
        "{metrics}"
    );

    sick.healthy.store(true, Ordering::Relaxed);
    assert!(
        eventually(Duration::from_secs(5), || healthy_of(&tern, "m-sick")).await,
        "the recovered machine never came back"
    );
    let outs = tokio::task::spawn_blocking(move || {
        (0..40).map(|_| get(ports.http, "/")).collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert!(
        outs.iter().any(|o| machine_of(o) == Some("m-sick")),
        "no traffic after recovery"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_healthy_machine_is_a_coded_503() {
    let ips = Ips::new();
    let sick = Backend::start("m1", ips.get(1), 7000).await;
    sick.healthy.store(false, Ordering::Relaxed);
    let ports = Ports::new();
    let checks = r#"http_checks = [{ path = "/healthz", interval = "100ms", timeout = "100ms", grace_period = "0s" }]"#;
    let c = one_app(
        ports,
        "",
        r#"{ type = "requests", soft_limit = 10, hard_limit = 20 }"#,
        checks,
        &machine("m1", "web", "ams", ips.get(1)),
    );
    let _tern = Tern::start(&c, ports);
    let mut last = String::new();
    let ok = eventually(Duration::from_secs(5), || {
        last = get(ports.http, "/");
        last.starts_with("HTTP/1.1 503")
    })
    .await;
    assert!(ok, "{last}");
    assert!(
        last.to_ascii_lowercase()
            .contains("tern-error: no_healthy_machine"),
        "{last}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stopped_machines_take_no_traffic() {
    let ips = Ips::new();
    let stopped = Backend::start("m-stopped", ips.get(1), 7000).await;
    let _started = Backend::start("m-started", ips.get(2), 7000).await;
    let ports = Ports::new();
    let machines = machine("m-stopped", "web", "ams", ips.get(1))
        .replace("\"started\"", "\"stopped\"")
        + &machine("m-started", "web", "ams", ips.get(2));
    let c = one_app(
        ports,
        "",
        r#"{ type = "requests", soft_limit = 10, hard_limit = 20 }"#,
        "",
        &machines,
    );
    let _tern = Tern::start(&c, ports);
    tokio::task::spawn_blocking(move || {
        for _ in 0..20 {
            assert_eq!(machine_of(&get(ports.http, "/")), Some("m-started"));
        }
    })
    .await
    .unwrap();
    assert_eq!(stopped.hits.load(Ordering::Relaxed), 0);
}

fn body_of(resp: &str) -> String {
    resp.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_concurrency_counts_client_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ips = Ips::new();
    let _b = Backend::start("m1", ips.get(1), 7000).await;
    let ports = Ports::new();
    let c = one_app(
        ports,
        "queue_timeout = \"500ms\"",
        r#"{ type = "connections", soft_limit = 1, hard_limit = 1 }"#,
        "",
        &machine("m1", "web", "ams", ips.get(1)),
    );
    let _tern = Tern::start(&c, ports);

    // Client A: one request, then the keep-alive connection stays open and idle.
    let mut a = tokio::net::TcpStream::connect(("127.0.0.1", ports.http))
        .await
        .unwrap();
    let mut buf = vec![0u8; 16 * 1024];
    for _ in 0..3 {
        a.write_all(b"GET /a HTTP/1.1\r\nHost: web.test\r\n\r\n")
            .await
            .unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), a.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    }

    // Client B: the machine's only unit is A's connection, so B waits and gets 503.
    let out = tokio::task::spawn_blocking(move || get(ports.http, "/b"))
        .await
        .unwrap();
    assert!(out.starts_with("HTTP/1.1 503"), "{out}");
    assert!(
        out.to_ascii_lowercase()
            .contains("tern-error: queue_timeout"),
        "{out}"
    );

    // Once A leaves, B gets through.
    drop(a);
    let mut last = String::new();
    let ok = eventually(Duration::from_secs(5), || {
        last = get(ports.http, "/b");
        last.starts_with("HTTP/1.1 200")
    })
    .await;
    assert!(ok, "{last}");
}

/// One request whose body is still arriving, over HTTP/2: the response, once the
/// body is finished through `finish`.
struct SlowStream {
    finish: tokio::sync::mpsc::UnboundedSender<bytes::Bytes>,
    response: tokio::task::JoinHandle<(u16, String)>,
}

/// An HTTP/2 client connection (h2c, prior knowledge) to Tern's plain port.
async fn h2c<B>(port: u16) -> hyper::client::conn::http2::SendRequest<B>
where
    B: http_body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    sender
}

/// Opens `n` streams on one h2c connection, each with a 100-byte body of which
/// only the first byte is sent (odd streams) or nothing at all (even ones).
async fn slow_h2_streams(port: u16, n: usize) -> Vec<SlowStream> {
    use http_body_util::BodyExt;
    let sender = h2c(port).await;
    let mut streams = Vec::new();
    for i in 0..n {
        let (finish, rx) = tokio::sync::mpsc::unbounded_channel::<bytes::Bytes>();
        if i % 2 == 1 {
            finish.send(bytes::Bytes::from_static(b"a")).unwrap();
        }
        let frames = futures_util::stream::unfold(rx, |mut rx| async move {
            let data = rx.recv().await?;
            Some((
                Ok::<_, std::convert::Infallible>(http_body::Frame::data(data)),
                rx,
            ))
        });
        let req = http::Request::post(format!("http://web.test:{port}/upload"))
            .header("content-length", "100")
            .body(http_body_util::StreamBody::new(Box::pin(frames)))
            .unwrap();
        let mut sender = sender.clone();
        let response = tokio::spawn(async move {
            let resp = sender.send_request(req).await.unwrap();
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        });
        streams.push(SlowStream { finish, response });
    }
    streams
}

/// A client that sends its request bodies slowly holds none of a machine's
/// capacity while it does: twenty HTTP/1.1 requests and twenty HTTP/2 streams
/// (half of them HEADERS announcing a body that has not come at all), each with
/// its body still arriving, leave a machine whose hard limit is 2 free
/// for everyone else. Each goes through once its body is complete.
#[tokio::test(flavor = "multi_thread")]
async fn slow_request_bodies_hold_no_machine_capacity() {
    use tokio::io::AsyncWriteExt;
    let ips = Ips::new();
    let backend = Backend::start("m1", ips.get(1), 7000).await;
    let ports = Ports::new();
    let c = one_app(
        ports,
        "queue_timeout = \"2s\"",
        r#"{ type = "requests", soft_limit = 1, hard_limit = 2 }"#,
        "",
        &machine("m1", "web", "ams", ips.get(1)),
    );
    let tern = Tern::start(&c, ports);

    let mut h1 = Vec::new();
    for _ in 0..20 {
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", ports.http))
            .await
            .unwrap();
        c.write_all(b"POST /upload HTTP/1.1\r\nHost: web.test\r\nContent-Length: 100\r\n\r\na")
            .await
            .unwrap();
        h1.push(c);
    }
    let h2 = slow_h2_streams(ports.http, 20).await;
    // Every one of them has been taken in, and its body is being read.
    let buffering = |tern: &Tern| {
        tern.admin_get("/metrics")
            .lines()
            .find_map(|l| l.strip_prefix("tern_request_bodies_buffering "))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    let all_in = eventually(Duration::from_secs(10), || {
        buffering(&tern) == Some(40.0) || backend.hits.load(Ordering::Relaxed) > 0
    })
    .await;
    assert!(all_in, "buffering: {:?}", buffering(&tern));

    for i in 0..5 {
        let started = Instant::now();
        let out = tokio::task::spawn_blocking(move || get(ports.http, "/"))
            .await
            .unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "GET {i}: {out}");
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "GET {i} waited {:?} for a slot",
            started.elapsed()
        );
    }
    assert_eq!(
        backend.hits.load(Ordering::Relaxed),
        5,
        "a slow body reached the machine"
    );

    let rest = vec![b'a'; 99];
    for c in &mut h1 {
        c.write_all(&rest).await.unwrap();
    }
    for (i, s) in h2.iter().enumerate() {
        // Odd streams sent one byte, even ones none.
        let left = if i % 2 == 1 { 99 } else { 100 };
        s.finish.send(bytes::Bytes::from(vec![b'a'; left])).unwrap();
    }
    for mut c in h1 {
        let (head, body) = tokio::time::timeout(Duration::from_secs(20), read_response(&mut c))
            .await
            .expect("a finished body is answered");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(body.contains("body-bytes=100"), "{body}");
    }
    for s in h2 {
        drop(s.finish);
        let (status, body) = tokio::time::timeout(Duration::from_secs(20), s.response)
            .await
            .expect("a finished stream is answered")
            .unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("body-bytes=100"), "{body}");
    }
}

/// Under `connections`, HTTP/2 streams count against the hard limit: five
/// client connections with twenty streams each never have more than the hard
/// limit's worth of requests at the machine at once, and all of them are served.
#[tokio::test(flavor = "multi_thread")]
async fn http2_streams_count_against_a_connections_hard_limit() {
    use http_body_util::BodyExt;
    let ips = Ips::new();
    let backend = Backend::start("m1", ips.get(1), 7000).await;
    let ports = Ports::new();
    let c = one_app(
        ports,
        "queue_timeout = \"30s\"\nqueue_size = 200",
        r#"{ type = "connections", soft_limit = 5, hard_limit = 10 }"#,
        "",
        &machine("m1", "web", "ams", ips.get(1)),
    );
    let _tern = Tern::start(&c, ports);

    let mut streams = Vec::new();
    for _ in 0..5 {
        let sender = h2c::<http_body_util::Empty<bytes::Bytes>>(ports.http).await;
        for _ in 0..20 {
            let mut sender = sender.clone();
            streams.push(tokio::spawn(async move {
                let req = http::Request::get("http://web.test/slow?ms=200")
                    .body(http_body_util::Empty::new())
                    .unwrap();
                let resp = sender.send_request(req).await.unwrap();
                let status = resp.status().as_u16();
                let _ = resp.into_body().collect().await;
                status
            }));
        }
    }
    for s in streams {
        let status = tokio::time::timeout(Duration::from_secs(60), s)
            .await
            .expect("every stream is served")
            .unwrap();
        assert_eq!(status, 200);
    }
    let most = backend.max_in_flight.load(Ordering::SeqCst);
    assert!(
        most <= 10,
        "{most} requests at the machine at once; its hard limit is 10"
    );
    assert_eq!(backend.hits.load(Ordering::Relaxed), 100);
}
