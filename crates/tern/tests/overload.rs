//! The overload manager through a real `tern run`: past its connection or memory
//! budget, a bounded flood of new connections is shed at accept and new requests
//! get 503 `overloaded`, while the work already admitted goes on, and Tern
//! admits new work again once it is back under budget.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n";

/// The value of a metric line that starts with `prefix`, 0 when absent.
fn metric(tern: &Tern, prefix: &str) -> f64 {
    tern.admin_get("/metrics")
        .lines()
        .find_map(|l| l.strip_prefix(prefix)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A keep-alive connection that has had one request answered 200.
async fn served_connection(port: u16) -> TcpStream {
    let mut c = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    c.write_all(GET).await.unwrap();
    let (head, _) = read_response(&mut c).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    c
}

/// Whether a new connection is closed by Tern without a byte of answer.
async fn shed_at_accept(port: u16) -> bool {
    let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)).await else {
        return true;
    };
    // The write may already meet the reset; the read says what Tern did.
    let _ = c.write_all(GET).await;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) => false,
        Err(_) => panic!("a connection past the budget neither answered nor closed"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn past_the_connection_budget_new_connections_are_shed_and_open_ones_go_on() {
    let s = web_setup("", "[overload]\nmax_connections = 8").await;
    let port = s.tern.ports.http;
    let mut open = Vec::new();
    for _ in 0..8 {
        open.push(served_connection(port).await);
    }
    // A bounded flood of new connections: every one is shed.
    for n in 0..100 {
        assert!(
            shed_at_accept(port).await,
            "connection {n} past the budget was served"
        );
    }
    let shed = metric(
        &s.tern,
        "tern_overload_shed_total{resource=\"connections\",what=\"connection\"} ",
    );
    assert!(shed >= 100.0, "shed {shed}");
    // The admitted connections are served as before.
    for c in &mut open {
        c.write_all(GET).await.unwrap();
        let (head, _) = read_response(c).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
    // One closes: there is room for one more.
    drop(open.pop());
    let tern = &s.tern;
    let admitted = async {
        for _ in 0..200 {
            if let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)).await {
                if c.write_all(GET).await.is_ok() {
                    let mut buf = [0u8; 12];
                    if c.read_exact(&mut buf).await.is_ok() {
                        return Some((c, buf));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    };
    let (_c, first) = admitted
        .await
        .expect("a connection admitted once one closed");
    assert_eq!(&first, b"HTTP/1.1 200", "{}", tern.log_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn past_the_memory_budget_new_work_gets_503_overloaded_until_memory_falls() {
    // Each flood request holds a buffered body of 1 MiB less a byte, waiting
    // for its last byte before a machine is chosen.
    let s = web_setup(
        "",
        "request_buffer = \"1MiB\"\n[overload]\nmax_memory = \"96MiB\"",
    )
    .await;
    let port = s.tern.ports.http;
    let tern = &s.tern;
    let pressure = "tern_overload_active{resource=\"memory\"} ";
    assert_eq!(metric(tern, pressure), 0.0, "under budget at the start");
    let mut keep = served_connection(port).await;

    let body = vec![b'x'; (1 << 20) - 1];
    let mut flood = Vec::new();
    for _ in 0..200 {
        if metric(tern, pressure) == 1.0 {
            break;
        }
        let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)).await else {
            break;
        };
        let head = format!(
            "POST /upload HTTP/1.1\r\nHost: web.test\r\nContent-Length: {}\r\n\r\n",
            1 << 20
        );
        if c.write_all(head.as_bytes()).await.is_err() || c.write_all(&body).await.is_err() {
            break;
        }
        flood.push(c);
    }
    assert!(
        eventually(Duration::from_secs(10), || metric(tern, pressure) == 1.0).await,
        "{} buffered bodies did not spend the memory budget (resident {})",
        flood.len(),
        metric(tern, "tern_resident_memory_bytes ")
    );

    // An admitted connection's next request is shed, and told to close.
    keep.write_all(GET).await.unwrap();
    let (head, body) = read_response(&mut keep).await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(head.contains("tern-error: overloaded"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    assert!(body.contains("memory budget"), "{body}");
    // New connections are shed at accept.
    assert!(
        shed_at_accept(port).await,
        "a new connection was served under memory pressure"
    );
    assert!(
        metric(
            tern,
            "tern_overload_shed_total{resource=\"memory\",what=\"request\"} "
        ) >= 1.0
    );

    // The flood goes away; its buffers are freed and Tern admits work again.
    drop(flood);
    assert!(
        eventually(Duration::from_secs(30), || metric(tern, pressure) == 0.0).await,
        "memory stayed over nine tenths of the budget (resident {})",
        metric(tern, "tern_resident_memory_bytes ")
    );
    served_connection(port).await;
}
