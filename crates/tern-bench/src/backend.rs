//! The benchmark backend: a fixed small body, as cheaply as hyper allows, on one
//! thread.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// The response body: small, like a health check or a tiny API answer.
const BODY: &[u8] = b"hello from the tern bench backend\n";

#[derive(clap::Args, Debug)]
pub struct BackendArgs {
    /// Plain HTTP/1.1 address.
    #[arg(long, default_value = "127.0.0.1:18080")]
    listen: SocketAddr,
    /// Optional HTTPS address (h2 and HTTP/1.1 by ALPN): the "direct" target of the
    /// TLS scenarios.
    #[arg(long)]
    tls_listen: Option<SocketAddr>,
    /// Certificate chain (PEM) for --tls-listen.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Private key (PEM) for --tls-listen.
    #[arg(long)]
    key: Option<PathBuf>,
}

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // `/sleep/MS`: answer after MS milliseconds (requests held open, for the
    // memory a stream in flight costs).
    if let Some(ms) = req
        .uri()
        .path()
        .strip_prefix("/sleep/")
        .and_then(|ms| ms.parse::<u64>().ok())
    {
        tokio::time::sleep(std::time::Duration::from_millis(ms.min(600_000))).await;
    }
    // Read (and drop) any request body, so POSTs are answered after their body.
    let _ = req.into_body().collect().await;
    let mut resp = Response::new(Full::new(Bytes::from_static(BODY)));
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    Ok(resp)
}

pub fn run(args: &BackendArgs) -> anyhow::Result<()> {
    let tls = match (&args.tls_listen, &args.cert, &args.key) {
        (None, _, _) => None,
        (Some(addr), Some(cert), Some(key)) => {
            Some((*addr, crate::client::server_config(cert, key)?))
        }
        _ => anyhow::bail!("--tls-listen needs --cert and --key"),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let plain = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        if let Some((addr, config)) = tls {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr}"))?;
            tokio::spawn(serve_tls(listener, config));
        }
        println!("backend listening on {}", args.listen);
        loop {
            let (sock, _) = match plain.accept().await {
                Ok(s) => s,
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = sock.set_nodelay(true);
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(sock), service_fn(handle))
                    .await;
            });
        }
    })
}

async fn serve_tls(listener: TcpListener, config: Arc<rustls::ServerConfig>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    loop {
        let (sock, _) = match listener.accept().await {
            Ok(s) => s,
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = sock.set_nodelay(true);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(sock).await else {
                return;
            };
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service_fn(handle))
                .await;
        });
    }
}
