//! A raw TCP machine that echoes, after an optional PROXY protocol header, and the
//! client side of talking to it.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ppp::PartialResult;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;

const T: Duration = Duration::from_secs(10);

/// What the echo machine learned from a PROXY header.
#[derive(Debug, Clone, Copy)]
pub struct Proxied {
    pub version: &'static str,
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

/// A raw TCP machine: optionally reads a PROXY header first (reporting it on the
/// channel), then echoes every byte; when the client's stream ends it writes
/// `EOF-SEEN <n>` (n = bytes echoed) and closes.
pub struct EchoMachine {
    pub conns: Arc<AtomicUsize>,
    pub headers: mpsc::UnboundedReceiver<Result<Proxied, String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EchoMachine {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EchoMachine {
    pub async fn start(ip: IpAddr, port: u16, expect_proxy_header: bool) -> EchoMachine {
        let listener = TcpListener::bind((ip, port))
            .await
            .expect("bind echo machine");
        let conns = Arc::new(AtomicUsize::new(0));
        let (tx, headers) = mpsc::unbounded_channel();
        let counter = Arc::clone(&conns);
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    continue;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _ = echo(s, expect_proxy_header, tx).await;
                });
            }
        });
        EchoMachine {
            conns,
            headers,
            task,
        }
    }
}

async fn echo(
    mut s: TcpStream,
    expect_proxy_header: bool,
    tx: mpsc::UnboundedSender<Result<Proxied, String>>,
) -> std::io::Result<()> {
    let mut pending = Vec::new();
    if expect_proxy_header {
        let mut buf = [0u8; 512];
        loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                let _ = tx.send(Err(format!("EOF inside the PROXY header: {pending:?}")));
                return Ok(());
            }
            pending.extend_from_slice(&buf[..n]);
            let parsed = ppp::HeaderResult::parse(&pending);
            if parsed.is_incomplete() {
                continue;
            }
            let (header, used) = match parsed {
                ppp::HeaderResult::V1(Ok(h)) => {
                    let used = h.header.len();
                    match h.addresses {
                        ppp::v1::Addresses::Tcp4(a) => (
                            Ok(Proxied {
                                version: "v1",
                                src: (a.source_address, a.source_port).into(),
                                dst: (a.destination_address, a.destination_port).into(),
                            }),
                            used,
                        ),
                        other => (Err(format!("v1 addresses {other:?}")), used),
                    }
                }
                ppp::HeaderResult::V2(Ok(h)) => {
                    let used = h.len();
                    match (h.command, h.addresses) {
                        (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv4(a)) => (
                            Ok(Proxied {
                                version: "v2",
                                src: (a.source_address, a.source_port).into(),
                                dst: (a.destination_address, a.destination_port).into(),
                            }),
                            used,
                        ),
                        other => (Err(format!("v2 command/addresses {other:?}")), used),
                    }
                }
                other => {
                    let _ = tx.send(Err(format!("bad PROXY header {other:?}")));
                    return Ok(());
                }
            };
            let _ = tx.send(header);
            pending.drain(..used);
            break;
        }
    }
    let mut total = pending.len();
    s.write_all(&pending).await?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        total += n;
        s.write_all(&buf[..n]).await?;
    }
    s.write_all(format!("EOF-SEEN {total}").as_bytes()).await?;
    s.shutdown().await?;
    Ok(())
}

/// Deterministic, non-repeating-looking test bytes.
pub fn payload(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

/// Writes `data` then half-closes, while reading everything back; returns what came
/// back. Bounded by `T`.
pub async fn send_and_collect<S>(stream: S, data: Vec<u8>) -> Vec<u8>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut r, mut w) = tokio::io::split(stream);
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.unwrap();
        w.flush().await.unwrap();
        w.shutdown().await.unwrap();
        w
    });
    let mut back = Vec::new();
    let read = timeout(T, r.read_to_end(&mut back)).await;
    let _w = timeout(T, writer).await.expect("writer finished").unwrap();
    match read {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => panic!("read failed after {} bytes: {e}", back.len()),
        Err(_) => panic!("no end of stream within {T:?} after {} bytes", back.len()),
    }
    back
}

pub fn expect_echo(back: &[u8], sent: &[u8]) {
    let trailer = format!("EOF-SEEN {}", sent.len());
    assert_eq!(
        back.len(),
        sent.len() + trailer.len(),
        "echoed length (sent {})",
        sent.len()
    );
    assert!(back[..sent.len()] == *sent, "echoed bytes differ from sent");
    assert_eq!(
        String::from_utf8_lossy(&back[sent.len()..]),
        trailer,
        "machine saw the client's end of stream"
    );
}
