//! `tern demo`: a self-signed certificate for *.localhost, three small machines of
//! the app `demo` (two in ams, one in ord) and one of the app `sleepy`, which
//! autostops when idle, and Tern in front of them. The machines are child
//! processes of Tern: the tern binary itself, as `tern demo-machine`.

use std::convert::Infallible;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Plain HTTP port.
    #[arg(long, default_value_t = 8080)]
    pub http_port: u16,
    /// HTTPS port.
    #[arg(long, default_value_t = 8443)]
    pub https_port: u16,
    /// Admin port (metrics, /catalog); with --fleet, the first node's (the
    /// others take the next ones).
    #[arg(long, default_value_t = 9090)]
    pub admin_port: u16,
    /// Port the demo machines listen on, each at its own loopback address.
    #[arg(long, default_value_t = 3000)]
    pub machine_port: u16,
    /// How long the `sleepy` app's machine may idle before it is stopped.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub idle_timeout: std::time::Duration,
    /// Where the certificate and the generated config are written.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Run a fleet instead: a real etcd and three nodes (ams, ord, sin) joined by
    /// the backhaul, each with a machine.
    #[arg(long)]
    pub fleet: bool,
    /// With --fleet: etcd's client port (its peer port is the next one).
    #[arg(long, default_value_t = 2379)]
    pub etcd_port: u16,
    /// With --fleet: the port of every node's backhaul, each on its own address.
    #[arg(long, default_value_t = 4431)]
    pub backhaul_port: u16,
}

const MACHINES: [(&str, &str, [u8; 4]); 3] = [
    ("m-demo-1", "ams", [127, 0, 0, 11]),
    ("m-demo-2", "ams", [127, 0, 0, 12]),
    ("m-demo-3", "ord", [127, 0, 0, 13]),
];

/// The `sleepy` app's one machine, which autostops.
const SLEEPY: (&str, &str, [u8; 4]) = ("m-sleepy-1", "ams", [127, 0, 0, 14]);

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("tern-demo"));
    if args.fleet {
        let dir = dir.join("fleet");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let log = tern_config::Log {
            format: tern_config::LogFormat::Text,
            level: "info".into(),
        };
        crate::logging::init(&log)?;
        return crate::demo_fleet::run(&args, &dir);
    }
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).with_context(|| format!("creating {}", certs.display()))?;
    tern_tls::generate_self_signed(
        &certs,
        "localhost",
        &[
            "localhost".into(),
            "*.localhost".into(),
            "demo.localhost".into(),
        ],
    )?;
    let config_path = dir.join("tern.toml");
    let tern =
        std::env::current_exe().context("finding the tern binary for the demo's machines")?;
    std::fs::write(&config_path, config_text(&args, &tern))
        .with_context(|| format!("writing {}", config_path.display()))?;
    let config = tern_config::load(&config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    crate::logging::init(&config.log)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.node.workers)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let serving = tokio::spawn(crate::serve::serve(
            config,
            crate::serve::Start {
                file: Some(config_path.clone()),
                upgrade: false,
            },
            Some(ready_tx),
            crate::serve::shutdown_signal(),
        ));
        if ready_rx.await.is_ok() {
            print_welcome(&args, &config_path);
        }
        serving.await.context("the proxy task failed")?
    })
}

fn config_text(a: &DemoArgs, tern: &std::path::Path) -> String {
    let command = format!("[{:?}, \"demo-machine\"]", tern.display().to_string());
    let mut machines = String::new();
    let all = MACHINES
        .iter()
        .map(|m| (*m, "demo", "started"))
        .chain([(SLEEPY, "sleepy", "stopped")]);
    for ((id, region, ip), app, state) in all {
        let ip = Ipv4Addr::from(ip);
        machines.push_str(&format!(
            "\n[[machine]]\nid = \"{id}\"\napp = \"{app}\"\nregion = \"{region}\"\nip = \"{ip}\"\nstate = \"{state}\"\ndriver = \"process\"\ncommand = {command}\n"
        ));
    }
    format!(
        r#"# Written by `tern demo`; run it yourself with `tern run --config THIS_FILE`.
[node]
id = "demo-node"
region = "ams"
workers = 2
bind = "127.0.0.1"

[admin]
listen = "127.0.0.1:{admin}"

[tls]
certs_dir = "certs"
unknown_sni = "localhost"

[limits]
drain_timeout = "5s"

[lifecycle]
autostop_interval = "1s"
idle_timeout = "{idle}"

[[region]]
code = "ams"
rtt = {{ ord = "90ms" }}

{app}{sleepy}{machines}"#,
        admin = a.admin_port,
        app = app_text(a),
        idle = humantime::format_duration(a.idle_timeout),
        sleepy = sleepy_text(a),
    )
}

/// The app `sleepy`: one machine, stopped until a request comes, and stopped
/// again after `--idle-timeout` without one.
fn sleepy_text(a: &DemoArgs) -> String {
    format!(
        r#"
[[app]]
name = "sleepy"
hostnames = ["sleepy.localhost"]

[[app.service]]
internal_port = {mport}
auto_stop_machines = "stop"
ports = [
  {{ port = {https}, handlers = ["tls", "http"] }},
  {{ port = {http}, handlers = ["http"] }},
]
"#,
        mport = a.machine_port,
        https = a.https_port,
        http = a.http_port,
    )
}

/// The app `demo` on the demo's ports, as a catalog writes it.
pub(crate) fn app_text(a: &DemoArgs) -> String {
    format!(
        r#"
[[app]]
name = "demo"
hostnames = ["demo.localhost", "*.demo.localhost"]

[[app.service]]
internal_port = {mport}
concurrency = {{ type = "requests", soft_limit = 20, hard_limit = 25 }}
ports = [
  {{ port = {https}, handlers = ["tls", "http"] }},
  {{ port = {http}, handlers = ["http"] }},
]
http_checks = [{{ path = "/healthz", interval = "2s", timeout = "1s", grace_period = "1s" }}]
"#,
        mport = a.machine_port,
        https = a.https_port,
        http = a.http_port,
    )
}

fn print_welcome(a: &DemoArgs, config: &std::path::Path) {
    println!(
        "\nDashboard: http://127.0.0.1:{admin}/\n\n\
         Tern demo is up: app `demo` with machines m-demo-1, m-demo-2 (ams) and m-demo-3 (ord),\n\
         and app `sleepy`, whose machine m-sleepy-1 starts on demand and stops after {idle} idle.\n\
         Each machine is a process of its own (`tern demo-machine`), started by Tern.\n\
         Config: {}\n\nTry:\n  \
         curl http://demo.localhost:{http}/\n  \
         curl -k https://demo.localhost:{https}/\n  \
         curl -k --http2 -i https://demo.localhost:{https}/\n  \
         curl -i http://sleepy.localhost:{http}/        # wakes m-sleepy-1: see Tern-Machine-Start\n  \
         curl -i http://nothing.localhost:{http}/       # no app: a coded 404\n  \
         curl http://demo.localhost:{http}/sleep/3000   # a slow request: see its load on the dashboard\n  \
         curl http://127.0.0.1:{admin}/catalog\n  \
         curl http://127.0.0.1:{admin}/metrics\n  \
         tern machine suspend m-demo-3 --admin 127.0.0.1:{admin}\n\n\
         (If your resolver does not map *.localhost to 127.0.0.1, add --resolve demo.localhost:{http}:127.0.0.1.)\n\
         Press Ctrl-C to stop.",
        config.display(),
        idle = humantime::format_duration(a.idle_timeout),
        http = a.http_port,
        https = a.https_port,
        admin = a.admin_port,
    );
}

/// A demo machine: says who it is and echoes what Tern told it about the client.
pub(crate) async fn machine(listener: TcpListener, id: &str, region: &str) {
    let who: Arc<Who> = Arc::new(Who {
        id: id.to_owned(),
        region: region.to_owned(),
        process: None,
    });
    serve_machine(listener, who).await;
}

/// What a demo machine says of itself.
pub(crate) struct Who {
    pub id: String,
    pub region: String,
    /// For a machine that is a process of its own: its pid and when it began.
    pub process: Option<(u32, std::time::Instant)>,
}

pub(crate) async fn serve_machine(listener: TcpListener, who: Arc<Who>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let who = Arc::clone(&who);
        tokio::spawn(async move {
            let svc = service_fn(move |mut req: Request<Incoming>| {
                let who = Arc::clone(&who);
                async move {
                    if let Some(switching) = websocket_echo(&mut req) {
                        return Ok::<_, Infallible>(switching);
                    }
                    // `/sleep/MS`: a slow request (at most a minute), to see load.
                    let pause = req.uri().path().strip_prefix("/sleep/");
                    if let Some(ms) = pause.and_then(|ms| ms.parse::<u64>().ok()) {
                        tokio::time::sleep(std::time::Duration::from_millis(ms.min(60_000))).await;
                    }
                    Ok::<_, Infallible>(answer(&req, &who))
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// A WebSocket upgrade at `/ws`: the 101, with an echo of every message run on
/// the upgraded connection. `None` for any other request.
fn websocket_echo(req: &mut Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::Role;

    let upgrade = req.headers().get(http::header::UPGRADE)?;
    if req.uri().path() != "/ws" || !upgrade.as_bytes().eq_ignore_ascii_case(b"websocket") {
        return None;
    }
    let accept = derive_accept_key(req.headers().get("sec-websocket-key")?.as_bytes());
    let upgraded = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgraded.await else { return };
        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        let (mut tx, mut rx) = ws.split();
        while let Some(Ok(msg)) = rx.next().await {
            if (msg.is_text() || msg.is_binary()) && tx.send(msg).await.is_err() {
                break;
            }
        }
    });
    Response::builder()
        .status(http::StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::CONNECTION, "upgrade")
        .header(http::header::UPGRADE, "websocket")
        .header("sec-websocket-accept", accept)
        .body(Full::new(Bytes::new()))
        .ok()
}

fn answer(req: &Request<Incoming>, who: &Who) -> Response<Full<Bytes>> {
    if req.uri().path() == "/healthz" {
        return Response::new(Full::new(Bytes::from_static(b"ok\n")));
    }
    let h = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned()
    };
    let mut body = format!(
        "Hello from machine {} in region {}\n\
         client ip: {}\nforwarded proto: {}\nedge region: {}\nrequest id: {}\nvia: {}\n",
        who.id,
        who.region,
        h("tern-client-ip"),
        h("x-forwarded-proto"),
        h("tern-region"),
        h("tern-request-id"),
        h("via"),
    );
    if let Some((pid, began)) = who.process {
        body.push_str(&format!(
            "pid: {pid}\nup for: {:.1} s\n",
            began.elapsed().as_secs_f64()
        ));
    }
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    if let Ok(id) = http::HeaderValue::from_str(&who.id) {
        resp.headers_mut().insert("x-machine-id", id);
    }
    if let Some((pid, _)) = who.process {
        resp.headers_mut()
            .insert("x-machine-pid", http::HeaderValue::from(pid));
    }
    resp
}
