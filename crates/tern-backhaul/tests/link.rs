//! Two nodes in one process over real sockets and real mutual TLS: a peer served
//! by an HTTP/2 server behind `BackhaulAcceptor`, dialled through `Backhaul`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tern_backhaul::{identity, Backhaul, BackhaulAcceptor, FleetTls, Settings, Tunnel};
use tern_catalog::model::NodeDef;
use tern_catalog::{NodeEntry, NodeLive};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn fleet(dir: &Path, ids: &[&str]) -> Vec<FleetTls> {
    identity::generate_ca(dir).unwrap();
    ids.iter()
        .map(|id| {
            let (cert, key) = identity::generate_node(dir, id, dir).unwrap();
            FleetTls::load(&dir.join(identity::CA_CERT), &cert, &key).unwrap()
        })
        .collect()
}

/// A peer that answers each stream: CONNECT streams are echoed, `/echo` sends
/// the request body back, anything else says which node answered it.
async fn serve_peer(tls: FleetTls) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = BackhaulAcceptor::new(tls.server, Duration::from_secs(5));
    let (seen_tx, seen) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let seen_tx = seen_tx.clone();
            tokio::spawn(async move {
                let Ok((tls, peer)) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = seen_tx.send(peer);
                let mut conn = h2::server::handshake(tls).await.unwrap();
                while let Some(Ok((req, respond))) = conn.accept().await {
                    tokio::spawn(answer(req, respond));
                }
            });
        }
    });
    (addr, seen)
}

async fn answer(req: Request<h2::RecvStream>, mut respond: h2::server::SendResponse<Bytes>) {
    let (parts, mut body) = req.into_parts();
    let mut got = Vec::new();
    let echo = parts.method == Method::CONNECT || parts.uri.path() == "/echo";
    if parts.method == Method::CONNECT {
        let mut send = respond.send_response(Response::new(()), false).unwrap();
        while let Some(Ok(chunk)) = body.data().await {
            let _ = body.flow_control().release_capacity(chunk.len());
            send.send_data(chunk, false).unwrap();
        }
        send.send_data(Bytes::new(), true).unwrap();
        return;
    }
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
        got.extend_from_slice(&chunk);
    }
    let text = if echo { got } else { b"peer".to_vec() };
    let mut send = respond.send_response(Response::new(()), false).unwrap();
    send.send_data(Bytes::from(text), true).unwrap();
}

fn node(id: &str, addr: SocketAddr) -> NodeEntry {
    NodeEntry {
        def: NodeDef {
            id: id.into(),
            region: "ord".into(),
            backhaul: Some(addr),
        },
        live: Arc::new(NodeLive::default()),
    }
}

fn backhaul(tls: FleetTls) -> Arc<Backhaul> {
    Backhaul::new(Settings::new(
        tls,
        Duration::from_secs(5),
        Duration::from_millis(50),
        None,
    ))
}

#[tokio::test]
async fn requests_and_tunnels_cross_one_shared_connection() {
    let dir = tempfile::tempdir().unwrap();
    let mut tls = fleet(dir.path(), &["ams-1", "ord-1"]);
    let (addr, mut seen) = serve_peer(tls.pop().unwrap()).await;
    let client = backhaul(tls.pop().unwrap());
    let peer = node("ord-1", addr);

    // A body both ways, bigger than one window's worth of frames.
    let big = vec![7u8; 3 << 20];
    let req = Request::post("https://web.test/echo")
        .body(Full::new(Bytes::from(big.clone())))
        .unwrap();
    let resp = client.ready(&peer).await.unwrap().send(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), big.len());
    assert!(body.iter().all(|b| *b == 7));

    for _ in 0..10 {
        let req = Request::get("https://web.test/")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = client.ready(&peer).await.unwrap().send(req).await.unwrap();
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "peer");
    }

    let connect = Request::connect("127.0.0.1:7000").body(()).unwrap();
    let Tunnel::Open(_, mut stream) = client
        .ready(&peer)
        .await
        .unwrap()
        .tunnel(connect)
        .await
        .unwrap()
    else {
        panic!("the tunnel was refused");
    };
    stream.write_all(b"hello over the backhaul").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut back = Vec::new();
    stream.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"hello over the backhaul");

    // All of it over one connection, from the node the certificate names.
    assert_eq!(seen.recv().await.unwrap(), "ams-1");
    assert!(seen.try_recv().is_err(), "one connection for everything");
}

#[tokio::test]
async fn the_link_measures_its_round_trip_and_marks_a_dead_peer() {
    let dir = tempfile::tempdir().unwrap();
    let mut tls = fleet(dir.path(), &["ams-1", "ord-1"]);
    let (addr, _seen) = serve_peer(tls.pop().unwrap()).await;
    let client = backhaul(tls.pop().unwrap());
    let mut snap_node = node("ord-1", addr);
    let live = Arc::clone(&snap_node.live);
    // Keeping the link up is the pool's job once it has seen the node.
    let req = Request::get("https://web.test/")
        .body(Full::new(Bytes::new()))
        .unwrap();
    client
        .ready(&snap_node)
        .await
        .unwrap()
        .send(req)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while live.rtt().is_none() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rtt = live.rtt().expect("a PING came back");
    assert!(rtt < Duration::from_millis(500), "{rtt:?} on loopback");
    assert!(live.reachable());

    // A node whose backhaul nobody listens on is marked unreachable.
    let gone = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    snap_node = node("sin-1", gone);
    let dead = Arc::clone(&snap_node.live);
    let err = client.ready(&snap_node).await.unwrap_err();
    assert!(err.not_sent(), "{err}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while dead.reachable() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!dead.reachable());
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let ours = tempfile::tempdir().unwrap();
    let theirs = tempfile::tempdir().unwrap();
    let mut tls = fleet(ours.path(), &["ord-1"]);
    let mut foreign = fleet(theirs.path(), &["ams-1"]);
    let (addr, mut seen) = serve_peer(tls.pop().unwrap()).await;
    let client = backhaul(foreign.pop().unwrap());
    let err = client.ready(&node("ord-1", addr)).await.unwrap_err();
    assert!(err.not_sent(), "{err}");
    assert!(err.to_string().contains("TLS"), "{err}");
    assert!(seen.try_recv().is_err(), "no stream was accepted");
}

/// A peer that completes the handshakes and then answers nothing, not even PINGs:
/// a host that vanished without closing its sockets.
async fn frozen_peer(tls: FleetTls) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = BackhaulAcceptor::new(tls.server, Duration::from_secs(5));
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let Ok((tls, _)) = acceptor.accept(tcp).await else {
                continue;
            };
            // The handshake's own frames are answered, then the connection is
            // held without ever being polled again.
            let conn = h2::server::handshake(tls).await.unwrap();
            held.push(conn);
        }
    });
    addr
}

#[tokio::test]
async fn a_peer_that_stops_answering_fails_its_streams_at_the_ping_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let mut tls = fleet(dir.path(), &["ams-1", "ord-1"]);
    let addr = frozen_peer(tls.pop().unwrap()).await;
    let client = backhaul(tls.pop().unwrap());
    let peer = node("ord-1", addr);
    let req = Request::get("https://web.test/")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let started = std::time::Instant::now();
    let sent = tokio::time::timeout(
        Duration::from_secs(10),
        client.ready(&peer).await.unwrap().send(req),
    )
    .await
    .expect("the stream failed before TCP's own timeout");
    assert!(sent.is_err(), "a frozen peer answered");
    // ping_timeout is max(3 x 50 ms, 1 s).
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(!peer.live.reachable());
}
