//! A static fleet: three `tern` processes reading one catalog file, each running
//! its own machines and reaching the others' over the mutual-TLS backhaul.

mod common;
mod fleet;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::echo::*;
use common::ws::ws_machine;
use common::*;
use fleet::*;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const CONCURRENCY: &str = r#"{ type = "requests", soft_limit = 20, hard_limit = 25 }"#;

/// ams-1 runs no machine of `web`; ord-1 runs m-ord.
async fn ams_without_machines() -> (TestFleet, Backend) {
    let mut f = TestFleet::new(&[("ams-1", "ams"), ("ord-1", "ord")]);
    let backend = Backend::start("m-ord", f.machine_ip(1), 7000).await;
    let mut body = f.web_app(CONCURRENCY);
    body.push_str(&f.machine("m-ord", "web", "ord-1", 1));
    f.write_catalog(&body);
    f.write_configs(&Source::File, "");
    f.start_all();
    (f, backend)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_crosses_to_the_node_that_runs_its_machine() {
    let (f, backend) = ams_without_machines().await;
    let ams = f.node("ams-1");

    let resp = ams.get(f.http, "/hello?x=1", "web.test");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}\n{}", f.logs());
    assert_eq!(machine_of(&resp), Some("m-ord"));
    // The client's facts, set by the edge, reach the machine as it set them.
    assert_eq!(field(&resp, "tern-region"), Some("ams"));
    assert!(field(&resp, "tern-client-ip").is_some(), "{resp}");
    assert_eq!(field(&resp, "x-forwarded-proto"), Some("http"));
    assert_eq!(field(&resp, "host"), Some("web.test"));
    assert!(resp.contains("uri=/hello?x=1"), "{resp}");
    // One request id end to end, and nothing of the backhaul's own.
    let ids: Vec<&str> = resp
        .lines()
        .filter_map(|l| l.strip_prefix("tern-request-id: "))
        .collect();
    let head_id = resp.lines().find_map(|l| {
        l.strip_prefix("tern-request-id: ")
            .or_else(|| l.strip_prefix("Tern-Request-Id: "))
    });
    assert!(
        !ids.is_empty() && ids.iter().all(|i| Some(*i) == head_id),
        "{resp}"
    );
    assert!(!resp.contains("tern-backhaul-"), "{resp}");
    assert_eq!(backend.hits.load(Ordering::Relaxed), 1);

    // A body both ways, HTTP/2 with TLS at the edge.
    let dir = f.dir.path();
    let big = dir.join("big.bin");
    std::fs::write(&big, vec![b'x'; 1 << 20]).unwrap();
    let url = format!("https://web.test:{}/upload", f.https);
    let resolve = format!("web.test:{}:{}", f.https, ams.ip);
    let data = format!("@{}", big.display());
    let (ok, out, err) = curl(&[
        "--http2",
        "--cacert",
        f.site.ca_path.to_str().unwrap(),
        "--resolve",
        &resolve,
        "--data-binary",
        &data,
        "-i",
        &url,
    ]);
    assert!(ok, "{err}\n{}", f.logs());
    assert!(out.starts_with("HTTP/2 200"), "{out}");
    assert!(out.contains("body-bytes=1048576"), "{out}");
    assert!(out.contains("x-forwarded-proto: https"), "{out}");
    assert_eq!(machine_of(&out), Some("m-ord"));

    // A large response streams back across.
    let resp = ams.get(f.http, "/big?bytes=3000000", "web.test");
    let body = resp.split_once("\r\n\r\n").map_or(0, |(_, b)| b.len());
    assert_eq!(body, 3_000_000, "{}", &resp[..resp.len().min(400)]);

    // The node that runs the machine serves it too, directly.
    let ord = f.node("ord-1");
    let resp = ord.get(f.http, "/", "web.test");
    assert_eq!(machine_of(&resp), Some("m-ord"), "{resp}");
    assert_eq!(field(&resp, "tern-region"), Some("ord"));

    // The edge measures its peer and shows it.
    let measured = eventually(Duration::from_secs(10), || {
        ams.catalog()["peers"][0]["rtt_ms"].as_f64().is_some()
    })
    .await;
    assert!(measured, "{}", ams.catalog());
    assert!(ams
        .admin_get("/metrics")
        .contains("tern_backhaul_rtt_seconds{peer=\"ord-1\"}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_and_raw_tcp_cross_the_backhaul() {
    let mut f = TestFleet::new(&[("ams-1", "ams"), ("ord-1", "ord")]);
    let ws = ws_machine(f.machine_ip(1)).await;
    let mut echo = EchoMachine::start(f.machine_ip(2), 7100, true).await;
    let mut body = f.web_app(CONCURRENCY);
    body.push_str(&f.machine("m-ws", "web", "ord-1", 1));
    body.push_str(&f.machine("m-db", "db", "ord-1", 2));
    f.write_catalog(&body);
    f.write_configs(&Source::File, "");
    f.start_all();
    let ams = f.node("ams-1");

    let tcp = TcpStream::connect((ams.ip, f.http)).await.unwrap();
    let url = format!("ws://web.test:{}/chat", f.http);
    let (mut client, resp) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(url, tcp),
    )
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("WebSocket handshake across the backhaul: {e}\n{}", f.logs()));
    assert_eq!(resp.status(), 101);
    for i in 0..10 {
        client.send(Message::text(format!("hi {i}"))).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), client.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(got, Message::text(format!("HI {i}")));
    }
    let big = vec![9u8; 300 * 1024];
    client.send(Message::binary(big.clone())).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), client.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got.into_data().as_ref(), big.as_slice());
    client.close(None).await.unwrap();

    // Raw TCP with a PROXY v2 header, which the machine's node writes with the
    // client's real address.
    let stream = TcpStream::connect((ams.ip, f.tcp)).await.unwrap();
    let client_addr = stream.local_addr().unwrap();
    let data = payload(200_000, 3);
    let back = send_and_collect(stream, data.clone()).await;
    expect_echo(&back, &data);
    let header = tokio::time::timeout(Duration::from_secs(5), echo.headers.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(header.version, "v2");
    assert_eq!(header.src, client_addr);
    assert_eq!(header.dst, std::net::SocketAddr::new(ams.ip, f.tcp));
    ws.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_node_takes_its_machines_out_and_traffic_moves_on() {
    let mut f = TestFleet::new(&[("ams-1", "ams"), ("ord-1", "ord"), ("sin-1", "sin")]);
    let ord = Backend::start("m-ord", f.machine_ip(1), 7000).await;
    let sin = Backend::start("m-sin", f.machine_ip(2), 7000).await;
    let mut body = f.web_app(CONCURRENCY);
    body.push_str(&f.machine("m-ord", "web", "ord-1", 1));
    body.push_str(&f.machine("m-sin", "web", "sin-1", 2));
    f.write_catalog(&body);
    f.write_configs(&Source::File, "");
    f.start_all();

    // On loopback both peers measure about the same: either machine serves.
    for _ in 0..5 {
        let resp = f.node("ams-1").get(f.http, "/", "web.test");
        assert!(
            matches!(machine_of(&resp), Some("m-ord" | "m-sin")),
            "{resp}"
        );
    }
    // A machine cannot pass for its node refusing a request: no replay, and the
    // backhaul's field stops at its node.
    let hits = |b: &Backend| b.hits.load(Ordering::Relaxed);
    let before = hits(&ord) + hits(&sin);
    let resp = f.node("ams-1").get(f.http, "/refuse", "web.test");
    assert!(resp.starts_with("HTTP/1.1 502"), "{resp}");
    assert_eq!(
        hits(&ord) + hits(&sin),
        before + 1,
        "the request was replayed"
    );
    assert!(!resp.contains("tern-backhaul-refused"), "{resp}");
    f.node_mut("ord-1").kill();
    // No request fails: one that finds ord-1 gone moves on to sin-1 before it
    // was sent anywhere.
    for i in 0..20 {
        let resp = f.node("ams-1").get(f.http, "/", "web.test");
        assert!(
            resp.starts_with("HTTP/1.1 200"),
            "request {i}: {resp}\n{}",
            f.logs()
        );
        assert_eq!(machine_of(&resp), Some("m-sin"), "{resp}");
    }
    // And ams-1 knows ord-1 is unreachable, so its machine is out of rotation.
    let ams = f.node("ams-1");
    let out = eventually(Duration::from_secs(10), || {
        let c = ams.catalog();
        let peers = c["peers"].as_array().cloned().unwrap_or_default();
        peers
            .iter()
            .any(|p| p["id"] == "ord-1" && p["reachable"] == false)
    })
    .await;
    assert!(out, "{}", ams.catalog());
    let machines = ams.catalog()["apps"][1]["machines"].clone();
    let m_ord = machines
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "m-ord")
        .cloned()
        .unwrap();
    assert_eq!(m_ord["routable"], false, "{machines}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_hard_limit_holds_for_traffic_from_every_edge() {
    let mut f = TestFleet::new(&[("ams-1", "ams"), ("ord-1", "ord"), ("sin-1", "sin")]);
    let backend = Backend::start("m-ord", f.machine_ip(1), 7000).await;
    let mut body = f.web_app(r#"{ type = "requests", soft_limit = 1, hard_limit = 2 }"#);
    body.push_str(&f.machine("m-ord", "web", "ord-1", 1));
    f.write_catalog(&body);
    f.write_configs(&Source::File, "queue_timeout = \"20s\"\nqueue_size = 50");
    f.start_all();

    // Four slow requests at once from each of the three edges.
    let mut tasks = Vec::new();
    for node in &f.nodes {
        for _ in 0..4 {
            let (ip, port) = (node.ip, f.http);
            tasks.push(tokio::task::spawn_blocking(move || {
                http_get_raw((ip, port), "/slow?ms=300", "web.test").unwrap_or_default()
            }));
        }
    }
    let mut ok = 0;
    for t in tasks {
        let resp = t.await.unwrap();
        if resp.starts_with("HTTP/1.1 200") {
            ok += 1;
        }
    }
    assert_eq!(ok, 12, "{}", f.logs());
    let max = backend.max_in_flight.load(Ordering::SeqCst);
    assert!(max <= 2, "the machine carried {max} requests at once");
    assert_eq!(max, 2, "the limit was reached");
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_fleets_nodes_get_past_the_backhaul() {
    let (f, _backend) = ams_without_machines().await;
    let ord = f.node("ord-1");
    let url = format!("https://{}/", ord.backhaul_addr());

    // A node certificate from another fleet's CA: the handshake fails.
    let other = f.dir.path().join("other");
    let other_arg = other.to_str().unwrap();
    tern(&["fleet", "ca", "--dir", other_arg]);
    tern(&["fleet", "cert", "ams-1", "--ca", other_arg]);
    let (ok, _, err) = curl(&[
        "--http2",
        "-k",
        "--cert",
        other.join("ams-1.crt").to_str().unwrap(),
        "--key",
        other.join("ams-1.key").to_str().unwrap(),
        "-H",
        "tern-backhaul-machine: m-ord",
        "-H",
        "tern-backhaul-port: 7000",
        &url,
    ]);
    assert!(!ok, "a foreign certificate got through");
    assert!(!err.is_empty());
    // No certificate at all: refused too.
    let (ok, _, _) = curl(&["--http2", "-k", &url]);
    assert!(!ok, "no certificate got through");
    let metrics = ord.admin_get("/metrics");
    assert!(
        metrics
            .contains("tern_backhaul_handshake_failures_total{reason=\"untrusted_certificate\"}"),
        "{metrics}"
    );

    // A certificate of this fleet for a node the catalog does not list: the TLS
    // handshake succeeds, the request is refused.
    let fleet_dir = f.dir.path().join("fleet");
    tern(&[
        "fleet",
        "cert",
        "stranger",
        "--ca",
        fleet_dir.to_str().unwrap(),
    ]);
    let (ok, out, err) = curl(&[
        "--http2",
        "-k",
        "-i",
        "--cert",
        fleet_dir.join("stranger.crt").to_str().unwrap(),
        "--key",
        fleet_dir.join("stranger.key").to_str().unwrap(),
        "-H",
        "tern-backhaul-machine: m-ord",
        "-H",
        "tern-backhaul-port: 7000",
        &url,
    ]);
    assert!(ok, "{err}");
    assert!(out.starts_with("HTTP/2 403"), "{out}");
    assert!(out.contains("tern-error: unknown_peer"), "{out}");

    // And a client on a public port cannot name a machine: its Tern-* fields go.
    let resp = http_get_raw(
        (f.node("ams-1").ip, f.http),
        "/",
        "web.test\r\ntern-backhaul-machine: nope\r\ntern-region: spoofed",
    )
    .unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(field(&resp, "tern-region"), Some("ams"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_dying_mid_response_cuts_only_its_own_streams() {
    let mut f = TestFleet::new(&[("ams-1", "ams"), ("ord-1", "ord"), ("sin-1", "sin")]);
    let _ord = Backend::start("m-ord", f.machine_ip(1), 7000).await;
    let _sin = Backend::start("m-sin", f.machine_ip(2), 7000).await;
    let mut body = f.web_app(CONCURRENCY);
    // A second app, on sin-1 only.
    body.push_str(&format!(
        "\n[[app]]\nname = \"api\"\nhostnames = [\"api.test\"]\n\n[[app.service]]\ninternal_port = 7000\nports = [{{ port = {}, handlers = [\"http\"] }}]\n",
        f.http
    ));
    body.push_str(&f.machine("m-ord", "web", "ord-1", 1));
    body.push_str(&f.machine("m-sin", "api", "sin-1", 2));
    f.write_catalog(&body);
    f.write_configs(&Source::File, "");
    f.start_all();
    let (ip, port) = (f.node("ams-1").ip, f.http);
    let get = move |path: &'static str, host: &'static str| {
        std::thread::spawn(move || http_get_raw((ip, port), path, host))
    };
    // Before its head: waits on the machine. Begun: a body arriving slowly. Other
    // peer: a request on sin-1.
    let waiting = get("/slow?ms=4000", "web.test");
    let begun = get("/drip?chunks=40&ms=100", "web.test");
    let elsewhere = get("/slow?ms=1500", "api.test");
    std::thread::sleep(Duration::from_millis(700));
    f.node_mut("ord-1").kill();

    let waiting = waiting.join().unwrap().unwrap_or_default();
    assert!(waiting.starts_with("HTTP/1.1 502"), "{waiting}");
    assert!(waiting.contains("tern-error: backhaul_reset"), "{waiting}");
    // The response had begun: its connection is cut short of its length.
    let begun = begun.join().unwrap().unwrap_or_default();
    assert!(
        begun.starts_with("HTTP/1.1 200"),
        "{}",
        &begun[..begun.len().min(300)]
    );
    let got = begun.split_once("\r\n\r\n").map_or(0, |(_, b)| b.len());
    assert!(got < 40 * 1024, "the whole body arrived ({got} bytes)");
    let elsewhere = elsewhere.join().unwrap().unwrap_or_default();
    assert!(
        elsewhere.starts_with("HTTP/1.1 200"),
        "{elsewhere}\n{}",
        f.logs()
    );
    assert_eq!(machine_of(&elsewhere), Some("m-sin"));
}

/// A client's request body that stalls or breaks on its way across the backhaul
/// is the client's fault, told as at the machine's own node: 408 and 400, not a
/// 502 blamed on the backhaul.
#[tokio::test(flavor = "multi_thread")]
async fn a_broken_request_body_across_the_backhaul_is_the_clients_fault() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut f = TestFleet::new(&[("ams-1", "ams"), ("ord-1", "ord")]);
    let _backend = Backend::start("m-ord", f.machine_ip(1), 7000).await;
    let mut body = f.web_app(CONCURRENCY);
    body.push_str(&f.machine("m-ord", "web", "ord-1", 1));
    f.write_catalog(&body);
    f.write_configs(&Source::File, "body_read_timeout = \"1s\"");
    f.start_all();
    f.wait_connected();
    let addr = std::net::SocketAddr::new(f.node("ams-1").ip, f.http);
    let cases: [(&[u8], &str, &str); 2] = [
        (
            b"POST /x HTTP/1.1\r\nHost: web.test\r\nContent-Length: 10\r\n\r\na",
            "HTTP/1.1 408",
            "request_body_timeout",
        ),
        (
            b"POST /x HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhello\r\n0\r\n\r\n",
            "HTTP/1.1 400",
            "bad_request_body",
        ),
    ];
    for (req, status, code) in cases {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(req).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), c.read_to_end(&mut out))
            .await
            .expect("the edge answers and closes")
            .unwrap();
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with(status), "{out}\n{}", f.logs());
        assert!(
            out.to_ascii_lowercase()
                .contains(&format!("tern-error: {code}")),
            "{out}"
        );
    }
}

/// A peer that dies with requests on their way: a bodyless request with an
/// idempotent method moves on to another machine (RFC 9110, 9.2.2), while a
/// POST, which its machine may have acted on, gets `backhaul_reset`.
#[tokio::test(flavor = "multi_thread")]
async fn a_peer_dying_with_requests_on_their_way_sends_the_idempotent_ones_on() {
    use std::io::{Read, Write};
    let mut f = TestFleet::new(&[("ams-1", "ams"), ("ord-1", "ord"), ("sin-1", "sin")]);
    let ord = Backend::start("m-ord", f.machine_ip(1), 7000).await;
    let sin = Backend::start("m-sin", f.machine_ip(2), 7000).await;
    let mut body = f.web_app(CONCURRENCY);
    body.push_str(&f.machine("m-ord", "web", "ord-1", 1));
    body.push_str(&f.machine("m-sin", "web", "sin-1", 2));
    f.write_catalog(&body);
    f.write_configs(&Source::File, "");
    f.start_all();
    f.wait_connected();
    let addr = std::net::SocketAddr::new(f.node("ams-1").ip, f.http);
    let send = move |method: &'static str| {
        std::thread::spawn(move || {
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let req = format!(
                "{method} /slow?ms=3000 HTTP/1.1\r\nHost: web.test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            c.write_all(req.as_bytes()).unwrap();
            let mut out = String::new();
            let _ = c.read_to_string(&mut out);
            out
        })
    };
    let hits = |b: &Backend| b.hits.load(Ordering::SeqCst);
    let gets: Vec<_> = (0..12).map(|_| send("GET")).collect();
    let posts: Vec<_> = (0..12).map(|_| send("POST")).collect();
    let all_in = eventually(Duration::from_secs(10), || hits(&ord) + hits(&sin) == 24).await;
    assert!(all_in, "ord {} sin {}", hits(&ord), hits(&sin));
    let (at_ord, at_sin) = (hits(&ord), hits(&sin));
    assert!(at_ord > 0, "every request went to m-sin; nothing to test");
    f.node_mut("ord-1").kill();

    for g in gets {
        let out = g.join().unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}\n{}", f.logs());
        assert_eq!(machine_of(&out), Some("m-sin"), "{out}");
    }
    let refused = posts
        .into_iter()
        .map(|p| p.join().unwrap())
        .filter(|out| {
            if out.starts_with("HTTP/1.1 200") {
                return false;
            }
            assert!(out.contains("tern-error: backhaul_reset"), "{out}");
            true
        })
        .count();
    // The GETs that were at m-ord were sent again to m-sin; the POSTs were not.
    let resent = hits(&sin) - at_sin;
    assert_eq!(
        refused,
        at_ord - resent,
        "at ord: {at_ord}, resent: {resent}"
    );
}
