//! `tern machine start|stop|suspend ID`: asks a running Tern's admin port to act
//! on one of its machines, and waits for the answer.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

#[derive(clap::Args, Debug)]
pub struct MachineArgs {
    /// start, stop or suspend.
    #[arg(value_parser = ["start", "stop", "suspend"])]
    action: String,
    /// The machine's id.
    id: String,
    /// The node's admin address.
    #[arg(long, value_name = "ADDR", conflicts_with = "config")]
    admin: Option<SocketAddr>,
    /// The node's configuration, whose [admin] listen (and token) is used.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The admin listener's access token (docs/dashboard.md), when it asks for one.
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
    /// How long to wait for the answer (a stop waits for the machine's requests
    /// and its stop timeout).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2m")]
    timeout: Duration,
}

pub fn run(args: MachineArgs) -> anyhow::Result<()> {
    let (admin, configured_token) = match (&args.admin, &args.config) {
        (Some(a), _) => (*a, None),
        (None, Some(path)) => {
            let admin = tern_config::load(path)
                .map_err(|e| anyhow::anyhow!("invalid configuration\n{e}"))?
                .admin;
            (admin.listen, admin.token)
        }
        (None, None) => ("127.0.0.1:9090".parse()?, None),
    };
    let token = args.token.clone().or(configured_token);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (status, body) = runtime.block_on(async {
        tokio::time::timeout(
            args.timeout,
            post(admin, token.as_deref(), &args.id, &args.action),
        )
        .await
        .with_context(|| format!("no answer from {admin} within {:?}", args.timeout))?
    })?;
    if status.is_success() {
        print!("{body}");
        Ok(())
    } else {
        anyhow::bail!("{} ({status})", body.trim_end())
    }
}

async fn post(
    admin: SocketAddr,
    token: Option<&str>,
    id: &str,
    action: &str,
) -> anyhow::Result<(http::StatusCode, String)> {
    let stream = tokio::net::TcpStream::connect(admin)
        .await
        .with_context(|| format!("connecting to Tern's admin port at {admin}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut req = http::Request::post(format!("/machines/{id}/{action}"))
        .header(http::header::HOST, admin.to_string());
    if let Some(token) = token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let req = req.body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
