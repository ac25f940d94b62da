//! The latency test bed: three network namespaces, one node in each, joined by
//! point-to-point links that delay every packet, so each node's kernel sees a
//! real round trip. Each node must measure the delays on its backhaul links, and
//! route by them. Needs root (CI has it).
//!
//! The links are TUN devices whose packets this test carries from one namespace
//! to the other after the link's delay, rather than veth pairs under `tc netem`:
//! this machine's kernel is built without netem (CONFIG_NET_SCH_NETEM is not
//! set, and it loads no modules). The effect on TCP is the same: a fixed delay
//! each way, on every packet.

mod common;
mod fleet;

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet::*;
use tokio_tun::Tun;

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("ip (iproute2): {e}"));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Node `i`'s own address, on its namespace's loopback.
fn node_addr(i: usize) -> String {
    format!("10.77.0.{}", i + 1)
}

/// The namespaces and their delayed links; removed on drop.
struct Bed {
    names: Vec<String>,
    /// One-way delay of each link, in microseconds, by (a, b).
    delays: Vec<((usize, usize), Arc<AtomicU64>)>,
    /// Carries the links' packets; its own threads, so that nothing the test
    /// does in between delays a packet more than its link says.
    carrier: tokio::runtime::Runtime,
}

impl Bed {
    /// `n` namespaces, and a link for each `(a, b, rtt_ms)`.
    fn build(n: usize, links: &[(usize, usize, u64)]) -> Bed {
        let names: Vec<String> = (0..n)
            .map(|i| format!("tern{}n{i}", std::process::id()))
            .collect();
        let carrier = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let mut bed = Bed {
            names,
            delays: Vec::new(),
            carrier,
        };
        for (i, ns) in bed.names.iter().enumerate() {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/32", node_addr(i)),
                "dev",
                "lo",
            ]);
        }
        for &(a, b, rtt) in links {
            let delay = Arc::new(AtomicU64::new(rtt * 1000 / 2));
            bed.link(a, b, Arc::clone(&delay));
            bed.delays.push(((a, b), delay));
        }
        bed
    }

    /// A TUN device in each of the two namespaces, and a task each way that
    /// carries packets from one to the other after the delay.
    fn link(&self, a: usize, b: usize, delay: Arc<AtomicU64>) {
        let name = |x: usize, y: usize| format!("t{}x{x}to{y}", std::process::id() % 10000);
        let (ta, tb) = (name(a, b), name(b, a));
        let _rt = self.carrier.enter();
        let make = |n: &str| {
            Tun::builder()
                .name(n)
                .build()
                .unwrap_or_else(|e| panic!("a TUN device ({n}): {e}"))
                .pop()
                .unwrap()
        };
        let (tun_a, tun_b) = (Arc::new(make(&ta)), Arc::new(make(&tb)));
        for (dev, me, other) in [(&ta, a, b), (&tb, b, a)] {
            let ns = &self.names[me];
            ip(&["link", "set", dev, "netns", ns]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&[
                "-n",
                ns,
                "route",
                "add",
                &format!("{}/32", node_addr(other)),
                "dev",
                dev,
                "src",
                &node_addr(me),
            ]);
        }
        self.carrier.spawn(carry(
            Arc::clone(&tun_a),
            Arc::clone(&tun_b),
            Arc::clone(&delay),
        ));
        self.carrier.spawn(carry(tun_b, tun_a, delay));
    }

    /// Sets the round trip of the link between `a` and `b`.
    fn set_rtt(&self, a: usize, b: usize, rtt_ms: u64) {
        for ((x, y), d) in &self.delays {
            if (*x, *y) == (a, b) || (*x, *y) == (b, a) {
                d.store(rtt_ms * 1000 / 2, Ordering::Relaxed);
            }
        }
    }
}

/// Moves packets that `from`'s namespace sends to `to`'s, each after the delay
/// in force when it was sent, in order.
async fn carry(from: Arc<Tun>, to: Arc<Tun>, delay: Arc<AtomicU64>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    tokio::spawn(async move {
        while let Some((due, packet)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.send(&packet).await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; 65536];
    while let Ok(n) = from.recv(&mut buf).await {
        let due =
            tokio::time::Instant::now() + Duration::from_micros(delay.load(Ordering::Relaxed));
        if tx.send((due, buf[..n].to_vec())).is_err() {
            return;
        }
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        for ns in &self.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A machine in a namespace: a static HTTP server whose page names it.
struct Machine(std::process::Child);

impl Machine {
    fn start(node: &Node, id: &str, ip: std::net::IpAddr, dir: &std::path::Path) -> Machine {
        let root = dir.join(id);
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("index.html"), id).unwrap();
        let child = node
            .command("python3")
            .args([
                "-m",
                "http.server",
                "7000",
                "--bind",
                &ip.to_string(),
                "--directory",
            ])
            .arg(&root)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 (CPython is on every machine of this kind)");
        let machine = Machine(child);
        // Python takes a while to start on a loaded machine: requests must not
        // race it. The wait runs where the machine is, in the node's namespace.
        let waited = node
            .command("python3")
            .args([
                "-c",
                "import socket, sys, time\n\
                 for _ in range(400):\n    \
                 try:\n        socket.create_connection((sys.argv[1], 7000), 0.2).close(); sys.exit(0)\n    \
                 except OSError:\n        time.sleep(0.05)\n\
                 sys.exit(1)",
                &ip.to_string(),
            ])
            .status()
            .unwrap();
        assert!(waited.success(), "machine {id} never listened on {ip}:7000");
        machine
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A GET sent from inside node `n`'s namespace to its public port; the body.
fn get_from(node: &Node, port: u16) -> String {
    let url = format!("http://{}:{port}/", node.ip);
    let out = node
        .command("curl")
        .args(["-sS", "--max-time", "10", "-H", "Host: web.test", &url])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn rtt_ms(node: &Node, peer: &str) -> Option<f64> {
    node.catalog()["peers"]
        .as_array()?
        .iter()
        .find(|p| p["id"] == peer)?["rtt_ms"]
        .as_f64()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

#[test]
fn nodes_measure_the_delays_between_them_and_route_by_them() {
    if !is_root() {
        eprintln!("skipped: the latency test bed makes network namespaces, which needs root");
        return;
    }
    // ams–ord 20 ms, ams–sin 40 ms, ord–sin 60 ms.
    let bed = Bed::build(3, &[(0, 1, 20), (0, 2, 40), (1, 2, 60)]);
    let mut f = TestFleet::new(&[("ams-1", "ams"), ("ord-1", "ord"), ("sin-1", "sin")]);
    for (i, n) in f.nodes.iter_mut().enumerate() {
        n.ip = node_addr(i).parse().unwrap();
        n.netns = Some(bed.names[i].clone());
    }
    let mut body = f.web_app(r#"{ type = "requests", soft_limit = 20, hard_limit = 25 }"#);
    body.push_str(&f.machine("m-ord", "web", "ord-1", 1));
    body.push_str(&f.machine("m-sin", "web", "sin-1", 2));
    f.write_catalog(&body);
    // The seeds say the opposite of the truth: measurement must win.
    let catalog = f.dir.path().join("catalog.toml");
    let text = std::fs::read_to_string(&catalog).unwrap().replace(
        "rtt = { ord = \"90ms\", sin = \"160ms\" }",
        "rtt = { ord = \"300ms\", sin = \"10ms\" }",
    );
    std::fs::write(&catalog, text).unwrap();
    f.write_configs(&Source::File, "");
    let _m_ord = Machine::start(&f.nodes[1], "m-ord", f.machine_ip(1), f.dir.path());
    let _m_sin = Machine::start(&f.nodes[2], "m-sin", f.machine_ip(2), f.dir.path());
    f.start_all();

    // Each node measures each link within a tolerance (the smoothed PING RTT
    // settles on the injected delay, plus a little of its own).
    let expect = [
        ("ams-1", "ord-1", 20.0),
        ("ams-1", "sin-1", 40.0),
        ("ord-1", "sin-1", 60.0),
        ("sin-1", "ams-1", 40.0),
    ];
    let deadline = Instant::now() + Duration::from_secs(20);
    for (from, to, want) in expect {
        loop {
            let got = rtt_ms(f.node(from), to);
            if got.is_some_and(|g| (g - want).abs() <= want * 0.2 + 3.0) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{from} -> {to}: measured {got:?} ms, injected {want} ms"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    // ams-1 has no machine: the nearer peer's takes its traffic.
    let ams = f.node("ams-1");
    for _ in 0..5 {
        assert_eq!(get_from(ams, f.http), "m-ord", "{}", f.logs());
    }
    // ord moves away (100 ms): sin (40 ms) is nearer now, and takes it.
    bed.set_rtt(0, 1, 100);
    let deadline = Instant::now() + Duration::from_secs(20);
    while rtt_ms(ams, "ord-1").is_none_or(|r| r < 60.0) {
        assert!(Instant::now() < deadline, "{}", ams.catalog());
        std::thread::sleep(Duration::from_millis(100));
    }
    for _ in 0..5 {
        assert_eq!(get_from(ams, f.http), "m-sin", "{}", ams.catalog());
    }
}
