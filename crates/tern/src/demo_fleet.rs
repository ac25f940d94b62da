//! `tern demo --fleet`: a real etcd, three Tern nodes (ams, ord, sin) as processes
//! of their own joined by the mutual-TLS backhaul, and a demo machine on each.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::net::TcpListener;

use crate::demo::{machine, DemoArgs};

/// A node of the demo and its one machine.
struct DemoNode {
    id: &'static str,
    region: &'static str,
    /// The node's own loopback address.
    ip: [u8; 4],
    machine: &'static str,
    machine_ip: [u8; 4],
}

const NODES: [DemoNode; 3] = [
    DemoNode {
        id: "ams-1",
        region: "ams",
        ip: [127, 0, 0, 1],
        machine: "m-ams-1",
        machine_ip: [127, 0, 0, 21],
    },
    DemoNode {
        id: "ord-1",
        region: "ord",
        ip: [127, 0, 0, 2],
        machine: "m-ord-1",
        machine_ip: [127, 0, 0, 22],
    },
    DemoNode {
        id: "sin-1",
        region: "sin",
        ip: [127, 0, 0, 3],
        machine: "m-sin-1",
        machine_ip: [127, 0, 0, 23],
    },
];

const PREFIX: &str = "/tern-demo";

/// The processes of the demo, stopped when it ends.
struct Children(Vec<(String, Child)>);

impl Drop for Children {
    fn drop(&mut self) {
        for (_, c) in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn run(args: &DemoArgs, dir: &Path) -> anyhow::Result<()> {
    let etcd_bin = which("etcd").ok_or_else(|| {
        anyhow::anyhow!(
            "`tern demo --fleet` runs a real etcd, and there is no `etcd` on the PATH.\n\
             Install it, then run this again:\n  Debian/Ubuntu: sudo apt-get install etcd-server\n  \
             Fedora: sudo dnf install etcd\n  macOS: brew install etcd\n\
             or put the etcd binary of a release from https://github.com/etcd-io/etcd/releases on the PATH."
        )
    })?;
    let tern_bin = std::env::current_exe().context("finding the tern binary")?;
    prepare_certificates(&tern_bin, dir)?;
    let mut children = Children(Vec::new());
    let etcd_url = format!("http://127.0.0.1:{}", args.etcd_port);
    children
        .0
        .push(("etcd".into(), start_etcd(&etcd_bin, dir, args.etcd_port)?));
    wait_for(&format!("etcd at {etcd_url}"), || {
        probe_http(
            SocketAddr::from(([127, 0, 0, 1], args.etcd_port)),
            "/health",
        )
        .is_some_and(|r| r.contains("\"health\":\"true\""))
    })?;

    let catalog = dir.join("catalog.toml");
    std::fs::write(&catalog, catalog_text(args, None))?;
    let stopped = dir.join("catalog-ams-stopped.toml");
    std::fs::write(&stopped, catalog_text(args, Some("m-ams-1")))?;
    push(&tern_bin, &catalog, &etcd_url)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        for n in &NODES {
            let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::from(n.machine_ip)), args.machine_port);
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("demo machine {} cannot listen on {addr}", n.machine))?;
            tokio::spawn(machine(listener, n.machine, n.region));
        }
        anyhow::Ok(())
    })?;
    for (i, n) in NODES.iter().enumerate() {
        let id = n.id;
        let config = dir.join(format!("{id}.toml"));
        std::fs::write(&config, node_config(args, dir, i, &etcd_url))?;
        let log = std::fs::File::create(dir.join(format!("{id}.log")))?;
        let child = Command::new(&tern_bin)
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting node {id}"))?;
        children.0.push((id.to_owned(), child));
    }
    for (i, n) in NODES.iter().enumerate() {
        let admin = SocketAddr::from(([127, 0, 0, 1], args.admin_port + i as u16));
        wait_for(&format!("node {}", n.id), || {
            probe_http(admin, "/healthz").is_some_and(|r| r.contains("in step"))
        })?;
    }
    print_welcome(args, dir, &catalog, &stopped, &etcd_url);
    runtime.block_on(async {
        tokio::select! {
            _ = crate::serve::shutdown_signal() => {}
            _ = watch_children(&mut children) => {}
        }
    });
    Ok(())
}

/// Returns when a node or etcd exits on its own, saying which.
async fn watch_children(children: &mut Children) {
    loop {
        for (name, c) in &mut children.0 {
            if let Ok(Some(status)) = c.try_wait() {
                eprintln!("tern demo: {name} exited ({status}); stopping the demo");
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// The fleet CA and a certificate per node, made as an operator would.
fn prepare_certificates(tern: &Path, dir: &Path) -> anyhow::Result<()> {
    let fleet = dir.join("fleet");
    if fleet.exists() {
        std::fs::remove_dir_all(&fleet)?;
    }
    let fleet_arg = fleet.to_str().context("a UTF-8 path")?;
    run_tern(tern, &["fleet", "ca", "--dir", fleet_arg])?;
    for n in &NODES {
        run_tern(tern, &["fleet", "cert", n.id, "--ca", fleet_arg])?;
    }
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs)?;
    tern_tls::generate_self_signed(
        &certs,
        "localhost",
        &[
            "localhost".into(),
            "*.localhost".into(),
            "demo.localhost".into(),
        ],
    )?;
    Ok(())
}

fn run_tern(tern: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(tern).args(args).output()?;
    if !out.status.success() {
        bail!(
            "tern {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn push(tern: &Path, catalog: &Path, etcd: &str) -> anyhow::Result<()> {
    let file = catalog.to_str().context("a UTF-8 path")?;
    run_tern(
        tern,
        &["catalog", "push", file, "--etcd", etcd, "--prefix", PREFIX],
    )
}

fn start_etcd(etcd: &Path, dir: &Path, port: u16) -> anyhow::Result<Child> {
    let data = dir.join("etcd-data");
    if data.exists() {
        std::fs::remove_dir_all(&data)?;
    }
    let client = format!("http://127.0.0.1:{port}");
    let peer = format!("http://127.0.0.1:{}", port + 1);
    let log = std::fs::File::create(dir.join("etcd.log"))?;
    Command::new(etcd)
        .args(["--name", "demo", "--data-dir"])
        .arg(&data)
        .args([
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
        ])
        .args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .args(["--initial-cluster", &format!("demo={peer}")])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting etcd")
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{what} did not come up within 30 s (logs are in the demo directory)")
}

/// A GET with a short timeout; the whole response, if any.
fn probe_http(addr: SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// The fleet's definitions: one app, a machine on each node; `stopped` names a
/// machine declared stopped.
fn catalog_text(a: &DemoArgs, stopped: Option<&str>) -> String {
    let mut machines = String::new();
    for n in &NODES {
        let (node, region, id) = (n.id, n.region, n.machine);
        let state = if stopped == Some(id) {
            "stopped"
        } else {
            "started"
        };
        let ip = Ipv4Addr::from(n.machine_ip);
        machines.push_str(&format!(
            "\n[[machine]]\nid = \"{id}\"\napp = \"demo\"\nregion = \"{region}\"\nnode = \"{node}\"\nip = \"{ip}\"\nstate = \"{state}\"\n"
        ));
    }
    format!(
        r#"# Written by `tern demo --fleet`; push it with `tern catalog push`.
[[region]]
code = "ams"
rtt = {{ ord = "90ms", sin = "160ms" }}

[[region]]
code = "ord"
rtt = {{ sin = "200ms" }}
{app}{machines}"#,
        app = crate::demo::app_text(a),
    )
}

fn node_config(a: &DemoArgs, dir: &Path, i: usize, etcd: &str) -> String {
    let DemoNode { id, region, ip, .. } = NODES[i];
    let ip = Ipv4Addr::from(ip);
    let fleet = dir.join("fleet");
    format!(
        r#"# Written by `tern demo --fleet`.
[node]
id = "{id}"
region = "{region}"
workers = 1
bind = "{ip}"

[admin]
listen = "127.0.0.1:{admin}"

[tls]
certs_dir = "{certs}"
unknown_sni = "localhost"

[limits]
drain_timeout = "2s"

[backhaul]
listen = "{ip}:{backhaul}"
ca = "{fleet}/ca.crt"
cert = "{fleet}/{id}.crt"
key = "{fleet}/{id}.key"

[catalog]
source = "etcd"
endpoints = ["{etcd}"]
prefix = "{PREFIX}"
"#,
        admin = a.admin_port + i as u16,
        certs = dir.join("certs").display(),
        backhaul = a.backhaul_port,
        fleet = fleet.display(),
    )
}

fn print_welcome(a: &DemoArgs, dir: &Path, catalog: &Path, stopped: &Path, etcd: &str) {
    let http = a.http_port;
    println!(
        "\nDashboards: ams-1 http://127.0.0.1:{admin}/, ord-1 http://127.0.0.1:{admin2}/, sin-1 http://127.0.0.1:{admin3}/\n\n\
         Tern fleet demo is up: etcd at {etcd}, and three nodes joined by the mutual-TLS backhaul,\n\
         each running one machine of the app `demo`:\n  \
         ams-1 on 127.0.0.1 (machine m-ams-1), ord-1 on 127.0.0.2 (m-ord-1), sin-1 on 127.0.0.3 (m-sin-1).\n\
         Files and logs: {dir}\n\n\
         A request to the ams edge, served by its own machine:\n  \
         curl --resolve demo.localhost:{http}:127.0.0.1 http://demo.localhost:{http}/\n\n\
         Stop m-ams-1 (a catalog change, pushed to etcd; ams-1 adopts it and every node follows):\n  \
         {tern} catalog push {stopped} --etcd {etcd} --prefix {PREFIX}\n\
         and the same request now crosses the backhaul to the nearest region with a machine:\n  \
         curl --resolve demo.localhost:{http}:127.0.0.1 http://demo.localhost:{http}/\n\
         Start it again:\n  \
         {tern} catalog push {catalog} --etcd {etcd} --prefix {PREFIX}\n\n\
         See it: curl http://127.0.0.1:{admin}/catalog   (peers, their measured RTT, machines)\n        \
         {tern} catalog get --etcd {etcd} --prefix {PREFIX}\n\
         Press Ctrl-C to stop the demo (etcd and the nodes stop with it).",
        dir = dir.display(),
        stopped = stopped.display(),
        catalog = catalog.display(),
        admin = a.admin_port,
        admin2 = a.admin_port + 1,
        admin3 = a.admin_port + 2,
        tern = std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "tern".into()),
    );
}
