//! One probe at a time, against hand-rolled backends on 127.0.0.1.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tern_health::{Probe, ProbeError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const TIMEOUT: Duration = Duration::from_millis(300);

/// Answers every connection with `response` after reading the request head.
async fn answering(response: &'static str) -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(response.as_bytes()).await;
            });
        }
    });
    addr
}

async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    listener.local_addr().unwrap()
}

fn http(addr: SocketAddr, method: &str) -> Probe {
    Probe::Http {
        addr,
        timeout: TIMEOUT,
        method: method.into(),
        path: "/healthz".into(),
        host: "demo.localhost".into(),
    }
}

#[tokio::test]
async fn redirect_passes_and_404_fails() {
    let ok = answering("HTTP/1.1 302 Found\r\nLocation: /\r\nContent-Length: 0\r\n\r\n").await;
    http(ok, "GET").run().await.unwrap();
    let bad = answering("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n").await;
    let err = http(bad, "HEAD").run().await.unwrap_err();
    assert!(matches!(err, ProbeError::BadStatus(404)), "{err}");
}

#[tokio::test]
async fn refused_is_typed() {
    let addr = closed_port().await;
    let tcp = Probe::Tcp {
        addr,
        timeout: TIMEOUT,
    };
    assert!(matches!(tcp.run().await, Err(ProbeError::ConnectRefused)));
    assert!(matches!(
        http(addr, "GET").run().await,
        Err(ProbeError::ConnectRefused)
    ));
}

#[tokio::test]
async fn silent_backend_times_out() {
    // Accepted by the kernel backlog, never answered.
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let started = tokio::time::Instant::now();
    let err = http(addr, "GET").run().await.unwrap_err();
    assert!(matches!(err, ProbeError::ResponseTimeout(_)), "{err}");
    assert!(started.elapsed() < TIMEOUT * 3);
    drop(listener);
}

#[tokio::test]
async fn garbage_and_early_close_are_errors() {
    let garbage = answering("not http at all\r\n\r\n").await;
    assert!(http(garbage, "GET").run().await.is_err());
    let closes = answering("").await;
    assert!(http(closes, "GET").run().await.is_err());
}

#[tokio::test]
async fn invalid_method_is_reported() {
    let addr = closed_port().await;
    let err = http(addr, "GE T").run().await.unwrap_err();
    assert!(matches!(err, ProbeError::InvalidRequest(_)), "{err}");
}
