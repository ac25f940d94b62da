//! Scenario 5: many idle TLS keep-alive connections.
//!
//! Opens `--count` TLS 1.3 connections (at most `--parallel` handshakes at a time),
//! makes one keep-alive GET on each, prints `ready ok=N failed=M`, then holds them
//! for `--hold-secs` (or until killed).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

#[derive(clap::Args, Debug)]
pub struct IdleArgs {
    /// Proxy address.
    #[arg(long)]
    connect: SocketAddr,
    /// TLS server name.
    #[arg(long, default_value = "localhost")]
    sni: String,
    /// CA certificate (PEM).
    #[arg(long)]
    ca: PathBuf,
    /// Connections to open.
    #[arg(long, default_value_t = 10_000)]
    count: usize,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 64)]
    parallel: usize,
    /// How long to hold the connections once they are all open.
    #[arg(long, default_value_t = 30)]
    hold_secs: u64,
}

const GET: &[u8] = b"GET /idle HTTP/1.1\r\nHost: localhost\r\n\r\n";

type Conn = tokio_rustls::client::TlsStream<TcpStream>;

async fn open(
    addr: SocketAddr,
    connector: tokio_rustls::TlsConnector,
    name: rustls_pki_types::ServerName<'static>,
) -> anyhow::Result<Conn> {
    let sock = TcpStream::connect(addr).await?;
    sock.set_nodelay(true)?;
    let mut tls = connector.connect(name, sock).await?;
    tls.write_all(GET).await?;
    tls.flush().await?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    while crate::storm::response_len(&buf).is_none() {
        let n = tls.read(&mut chunk).await?;
        if n == 0 {
            anyhow::bail!("closed before the response");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(tls)
}

pub fn run(args: &IdleArgs) -> anyhow::Result<()> {
    let cfg = crate::client::client_config(&args.ca, &[b"http/1.1"])?;
    let connector = tokio_rustls::TlsConnector::from(cfg);
    let name = rustls_pki_types::ServerName::try_from(args.sni.clone())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let limit = Arc::new(Semaphore::new(args.parallel.max(1)));
        let mut tasks = Vec::with_capacity(args.count);
        for _ in 0..args.count {
            let permit = Arc::clone(&limit).acquire_owned().await?;
            let (connector, name) = (connector.clone(), name.clone());
            let addr = args.connect;
            tasks.push(tokio::spawn(async move {
                let r = tokio::time::timeout(Duration::from_secs(10), open(addr, connector, name))
                    .await;
                drop(permit);
                match r {
                    Ok(Ok(c)) => Some(c),
                    _ => None,
                }
            }));
        }
        let mut held = Vec::with_capacity(args.count);
        let mut failed = 0usize;
        for t in tasks {
            match t.await {
                Ok(Some(c)) => held.push(c),
                _ => failed += 1,
            }
        }
        println!("ready ok={} failed={failed}", held.len());
        tokio::time::sleep(Duration::from_secs(args.hold_secs)).await;
        drop(held);
        anyhow::Ok(())
    })
}
