//! A fleet of real `tern` processes on one host: a fleet CA and node certificates
//! made by `tern fleet`, each node on its own loopback address (its public ports,
//! its backhaul), and a catalog that every node reads from one file, or that etcd
//! holds.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// RTTs between the test regions, as a static catalog's seeds.
pub const REGION_SEEDS: &str = r#"
[[region]]
code = "ams"
rtt = { ord = "90ms", sin = "160ms" }

[[region]]
code = "ord"
rtt = { sin = "200ms" }
"#;

/// Where the catalog comes from.
pub enum Source {
    /// One file every node reads.
    File,
    /// etcd at these client URLs.
    Etcd(String),
}

/// One node: a `tern run` process, stopped and started at will.
pub struct Node {
    pub id: String,
    pub region: String,
    pub ip: IpAddr,
    pub admin: u16,
    pub backhaul: u16,
    pub config: PathBuf,
    pub log: PathBuf,
    /// The network namespace it runs in, if not the test's own.
    pub netns: Option<String>,
    child: Option<Child>,
    starts: usize,
}

impl Node {
    pub fn backhaul_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.backhaul)
    }

    /// Starts it and waits for its admin port.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "node {} is running", self.id);
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = self
            .command(env!("CARGO_BIN_EXE_tern"))
            .args(["run", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start tern");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "node {} exited early with {status}:\n{}",
                    self.id,
                    self.log_text()
                );
            }
            if self.admin_get("/healthz").starts_with("HTTP/1.1 200") {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "node {} did not become ready:\n{}",
            self.id,
            self.log_text()
        );
    }

    /// Kills it with SIGKILL: no drain, no goodbye to its peers or to etcd.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// A command run where the node runs (in its namespace, if it has one).
    pub fn command(&self, program: &str) -> Command {
        match &self.netns {
            None => Command::new(program),
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
        }
    }

    pub fn admin_get(&self, path: &str) -> String {
        if self.netns.is_none() {
            return http_get_raw(("127.0.0.1", self.admin), path, "admin").unwrap_or_default();
        }
        let url = format!("http://127.0.0.1:{}{path}", self.admin);
        let out = self
            .command("curl")
            .args(["-sS", "-i", "--max-time", "5", &url])
            .output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// The admin port's `/catalog`, parsed.
    pub fn catalog(&self) -> serde_json::Value {
        let raw = self.admin_get("/catalog");
        let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A GET to this node's public HTTP port; the whole response.
    pub fn get(&self, port: u16, path: &str, host: &str) -> String {
        http_get_raw((self.ip, port), path, host).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The fleet and everything its nodes share.
pub struct TestFleet {
    pub dir: tempfile::TempDir,
    pub ips: Ips,
    /// Public ports, the same number on every node (each binds its own address).
    pub http: u16,
    pub https: u16,
    pub tcp: u16,
    pub nodes: Vec<Node>,
    pub site: Certs,
}

/// Runs `tern` with `args` to completion; panics with its output if it fails.
pub fn tern(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(args)
        .output()
        .expect("run tern");
    assert!(
        out.status.success(),
        "tern {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl TestFleet {
    /// Nodes `(id, region)` on addresses 1, 2, ... of a fresh loopback block, with
    /// a fleet CA and a certificate per node made by `tern fleet`.
    pub fn new(nodes: &[(&str, &str)]) -> TestFleet {
        let dir = tempfile::tempdir().unwrap();
        let ips = Ips::new();
        let fleet_dir = dir.path().join("fleet");
        let fleet_arg = fleet_dir.to_str().unwrap();
        tern(&["fleet", "ca", "--dir", fleet_arg]);
        let site = make_certs(dir.path(), &["web.test", "*.web.test"]);
        let nodes = nodes
            .iter()
            .enumerate()
            .map(|(i, (id, region))| {
                tern(&["fleet", "cert", id, "--ca", fleet_arg]);
                Node {
                    id: (*id).to_owned(),
                    region: (*region).to_owned(),
                    ip: ips.get(1 + i as u8),
                    admin: free_port(),
                    backhaul: free_port(),
                    config: dir.path().join(format!("{id}.toml")),
                    log: dir.path().join(format!("{id}.log")),
                    netns: None,
                    child: None,
                    starts: 0,
                }
            })
            .collect();
        TestFleet {
            ips,
            http: free_port(),
            https: free_port(),
            tcp: free_port(),
            nodes,
            site,
            dir,
        }
    }

    /// The address of machine number `n` (its own loopback address).
    pub fn machine_ip(&self, n: u8) -> IpAddr {
        self.ips.get(10 + n)
    }

    pub fn node(&self, id: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .expect("a node of the fleet")
    }

    pub fn node_mut(&mut self, id: &str) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .expect("a node of the fleet")
    }

    /// The app `web` (`web.test`): HTTP, HTTPS and, with `proxy_proto`, a raw
    /// TCP port; `concurrency` is the service's table.
    pub fn web_app(&self, concurrency: &str) -> String {
        format!(
            r#"
[[app]]
name = "web"
hostnames = ["web.test", "*.web.test"]

[[app.service]]
internal_port = 7000
concurrency = {concurrency}
ports = [
  {{ port = {https}, handlers = ["tls", "http"] }},
  {{ port = {http}, handlers = ["http"] }},
]

[[app]]
name = "db"
hostnames = ["db.test"]

[[app.service]]
internal_port = 7100
ports = [{{ port = {tcp}, handlers = ["proxy_proto"], proxy_proto_options = {{ version = "v2" }} }}]
"#,
            https = self.https,
            http = self.http,
            tcp = self.tcp,
        )
    }

    /// A `[[machine]]` entry: machine `id` of `app` on node `node`, at address `n`.
    pub fn machine(&self, id: &str, app: &str, node: &str, n: u8) -> String {
        let region = &self.node(node).region;
        let ip = self.machine_ip(n);
        format!(
            "\n[[machine]]\nid = \"{id}\"\napp = \"{app}\"\nregion = \"{region}\"\nnode = \"{node}\"\nip = \"{ip}\"\n"
        )
    }

    /// Writes the catalog file every node of a static fleet reads: its nodes, the
    /// region seeds, and `body` (apps and machines).
    pub fn write_catalog(&self, body: &str) -> PathBuf {
        let mut text = String::new();
        for n in &self.nodes {
            text.push_str(&format!(
                "[[node]]\nid = \"{}\"\nregion = \"{}\"\nbackhaul = \"{}\"\n\n",
                n.id,
                n.region,
                n.backhaul_addr()
            ));
        }
        text.push_str(REGION_SEEDS);
        text.push_str(body);
        let path = self.dir.path().join("catalog.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Writes every node's configuration, its catalog from `source`.
    pub fn write_configs(&self, source: &Source, extra_limits: &str) {
        for n in &self.nodes {
            self.write_config(n, source, extra_limits);
        }
    }

    /// Writes one node's configuration.
    pub fn write_config(&self, n: &Node, source: &Source, extra_limits: &str) {
        let dir = self.dir.path();
        let catalog = match source {
            Source::File => format!("[catalog]\nfile = \"{}\"\n", dir.join("catalog.toml").display()),
            Source::Etcd(url) => format!(
                "[catalog]\nsource = \"etcd\"\nendpoints = [\"{url}\"]\nprefix = \"/tern-test\"\nlease_ttl = \"2s\"\n"
            ),
        };
        {
            let config = format!(
                r#"[node]
id = "{id}"
region = "{region}"
workers = 2
bind = "{ip}"

[admin]
listen = "127.0.0.1:{admin}"

[log]
level = "info"

[tls]
certs_dir = "{certs}"

[limits]
drain_timeout = "2s"
connect_timeout = "2s"
{extra_limits}

[backhaul]
listen = "{backhaul}"
ca = "{fleet}/ca.crt"
cert = "{fleet}/{id}.crt"
key = "{fleet}/{id}.key"
ping_interval = "200ms"

{catalog}"#,
                id = n.id,
                region = n.region,
                ip = n.ip,
                admin = n.admin,
                certs = self.site.dir.display(),
                backhaul = n.backhaul_addr(),
                fleet = dir.join("fleet").display(),
            );
            std::fs::write(&n.config, config).unwrap();
        }
    }

    /// Starts every node, and waits until each has its backhaul up to every other.
    pub fn start_all(&mut self) {
        for n in &mut self.nodes {
            n.start();
        }
        self.wait_connected();
    }

    /// Waits (bounded) until every running node sees every other running node
    /// reachable.
    pub fn wait_connected(&self) {
        let running: Vec<&Node> = self.nodes.iter().filter(|n| n.running()).collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        for n in &running {
            loop {
                let catalog = n.catalog();
                let peers = catalog["peers"].as_array().cloned().unwrap_or_default();
                let up = running.iter().filter(|o| o.id != n.id).all(|o| {
                    peers.iter().any(|p| {
                        p["id"] == o.id.as_str() && p["reachable"] == true && p["rtt_ms"].is_f64()
                    })
                });
                if up {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {} never reached its peers: {catalog}\n{}",
                    n.id,
                    self.logs()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Every node's log, for a failure message.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- {}\n{}", n.id, n.log_text()))
            .collect()
    }
}

/// The value of `name` in a response's head (case-insensitive), or the body's
/// `name: value` line the test machine echoes.
pub fn field<'a>(resp: &'a str, name: &str) -> Option<&'a str> {
    resp.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Which machine answered (`x-machine-id`).
pub fn machine_of(resp: &str) -> Option<&str> {
    field(resp, "x-machine-id")
}

pub fn path_of(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A real etcd on free loopback ports with its own data directory: killed on drop.
pub struct Etcd {
    pub client_port: u16,
    peer_port: u16,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Etcd {
    /// Starts etcd from the PATH (`.ci/run` installs Debian's etcd-server).
    pub fn start(dir: &Path) -> Etcd {
        let mut etcd = Etcd {
            client_port: free_port(),
            peer_port: free_port(),
            data: dir.join("etcd-data"),
            log: dir.join("etcd.log"),
            child: None,
        };
        etcd.run();
        etcd
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// (Re)starts it on the same ports and data: what it held is still there.
    pub fn run(&mut self) {
        assert!(self.child.is_none());
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new("etcd")
            .args(["--name", "t"])
            .arg("--data-dir")
            .arg(&self.data)
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
            .args(["--initial-cluster", &format!("t={peer}")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd on the PATH (Debian: apt-get install etcd-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let health = http_get_raw(("127.0.0.1", self.client_port), "/health", "etcd")
                .unwrap_or_default();
            if health.contains("\"health\":\"true\"") {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "etcd did not become healthy:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs etcdctl against it; its output.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.url()))
            .args(args)
            .output()
            .expect("etcdctl on the PATH (Debian: apt-get install etcd-client)");
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP relay the test can cut: a node reaches etcd through it, and loses etcd
/// (alone) when it is cut.
pub struct Relay {
    pub port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(to: u16) -> Relay {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c2, conns2) = (cut.clone(), conns.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if c2.load(Ordering::SeqCst) {
                    continue;
                }
                let relayed = tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                conns2.lock().unwrap().push(relayed);
            }
        });
        Relay {
            port,
            cut,
            conns,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Drops every relayed connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    pub fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}
