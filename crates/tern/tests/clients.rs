//! Real clients against a real `tern run`: a Rust TLS client with SNI, a WebSocket
//! client through an HTTP upgrade, and an h2c machine behind `h2_backend`.

mod common;

use std::time::Duration;

use common::ws::ws_machine;
use common::*;
use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread")]
async fn rust_tls_client_with_sni_gets_the_right_app() {
    let ips = Ips::new();
    let _b = Backend::start("m1", ips.get(1), 7000).await;
    let ports = Ports::new();
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path(), &["web.test", "*.web.test"]);
    let tern = Tern::start_in(dir, &web_tls_config(ports, &ips, "", "", ""), ports);

    let connector = tls_connector(&certs.ca_pem, &[b"http/1.1"]);
    let tcp = TcpStream::connect(("127.0.0.1", ports.https))
        .await
        .unwrap();
    let mut tls = connector
        .connect(ServerName::try_from("shop.web.test").unwrap(), tcp)
        .await
        .expect("TLS handshake with SNI shop.web.test");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    tls.write_all(b"GET /tls HTTP/1.1\r\nHost: shop.web.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_string(&mut out))
        .await
        .unwrap()
        .ok();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("machine=m1"), "{out}");
    assert!(out.contains("x-forwarded-proto: https"), "{out}");

    // The same client again resumes its session (a TLS 1.3 ticket); the metrics
    // tell full handshakes from resumed ones.
    let tcp = TcpStream::connect(("127.0.0.1", ports.https))
        .await
        .unwrap();
    let mut again = connector
        .connect(ServerName::try_from("shop.web.test").unwrap(), tcp)
        .await
        .unwrap();
    again
        .write_all(b"GET / HTTP/1.1\r\nHost: shop.web.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), again.read_to_string(&mut out)).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let metrics = tern.admin_get("/metrics");
    assert!(
        metrics.contains("tern_tls_handshakes_total{kind=\"full\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tern_tls_handshakes_total{kind=\"resumed\"} 1"),
        "{metrics}"
    );

    // A name no certificate covers is refused at the handshake (unknown_sni = reject).
    let tcp = TcpStream::connect(("127.0.0.1", ports.https))
        .await
        .unwrap();
    let refused = connector
        .connect(ServerName::try_from("other.example").unwrap(), tcp)
        .await;
    assert!(refused.is_err(), "unknown SNI was accepted");
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_passes_through_both_ways() {
    let ips = Ips::new();
    let machine_task = ws_machine(ips.get(1)).await;
    let ports = Ports::new();
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path(), &["web.test"]);
    let _tern = Tern::start_in(dir, &web_tls_config(ports, &ips, "", "", ""), ports);

    let tcp = TcpStream::connect(("127.0.0.1", ports.http)).await.unwrap();
    let url = format!("ws://web.test:{}/chat", ports.http);
    let (mut ws, resp) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(url, tcp),
    )
    .await
    .unwrap()
    .expect("WebSocket handshake through Tern");
    assert_eq!(resp.status(), 101);
    for i in 0..20 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(got, Message::text(format!("HELLO {i}")));
    }
    let big = vec![7u8; 256 * 1024];
    ws.send(Message::binary(big.clone())).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got.into_data().as_ref(), big.as_slice());
    ws.close(None).await.unwrap();
    machine_task.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn h2_backend_speaks_h2c_to_the_machine() {
    let ips = Ips::new();
    let _b = Backend::start("m1", ips.get(1), 7000).await;
    let ports = Ports::new();
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path(), &["web.test"]);
    let _tern = Tern::start_in(
        dir,
        &web_tls_config(ports, &ips, "", "h2_backend = true", ""),
        ports,
    );
    let outs = tokio::task::spawn_blocking(move || {
        (0..5)
            .map(|i| {
                http_get_raw(("127.0.0.1", ports.http), &format!("/h2c/{i}"), "web.test").unwrap()
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    for (i, o) in outs.iter().enumerate() {
        assert!(o.starts_with("HTTP/1.1 200"), "{o}");
        assert!(o.contains("version=HTTP/2.0"), "{o}");
        assert!(o.contains(&format!("uri=http://web.test/h2c/{i}")), "{o}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn keep_alive_reuses_one_upstream_connection() {
    let ips = Ips::new();
    let b = Backend::start("m1", ips.get(1), 7000).await;
    let ports = Ports::new();
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path(), &["web.test"]);
    let tern = Tern::start_in(dir, &web_tls_config(ports, &ips, "", "", ""), ports);
    // Many sequential requests on one client connection.
    let mut s = TcpStream::connect(("127.0.0.1", ports.http)).await.unwrap();
    for _ in 0..10 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    }
    // All ten went over one pooled upstream connection.
    assert_eq!(b.conns.load(std::sync::atomic::Ordering::Relaxed), 1);
    drop(tern);
}

/// A tunnel is a connection like any other: a drain waits for it (up to
/// `drain_timeout`), and it keeps working meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn a_drain_waits_for_an_open_websocket() {
    let ips = Ips::new();
    let machine_task = ws_machine(ips.get(1)).await;
    let ports = Ports::new();
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path(), &["web.test"]);
    let mut tern = Tern::start_in(dir, &web_tls_config(ports, &ips, "", "", ""), ports);
    let tcp = TcpStream::connect(("127.0.0.1", ports.http)).await.unwrap();
    let url = format!("ws://web.test:{}/chat", ports.http);
    let (mut ws, _) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
    ws.send(Message::text("before")).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap();
    assert_eq!(got.unwrap().unwrap(), Message::text("BEFORE"));

    let _ = std::process::Command::new("kill")
        .args(["-TERM", &tern.child.id().to_string()])
        .status();
    tokio::time::sleep(Duration::from_millis(500)).await;
    ws.send(Message::text("draining")).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap();
    assert_eq!(
        got.unwrap().unwrap(),
        Message::text("DRAINING"),
        "{}",
        tern.log_text()
    );
    assert!(
        tern.child.try_wait().unwrap().is_none(),
        "exited with a tunnel open"
    );
    ws.close(None).await.unwrap();
    drop(ws);
    let exited = tern.terminate(Duration::from_secs(10));
    assert!(exited.is_some(), "no exit once the tunnel closed");
    machine_task.abort();
}
