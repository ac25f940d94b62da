//! `[node] scheduler = "per-core"`: each worker has its own socket on every
//! public port, and the kernel spreads connections over them, so that every
//! worker serves some.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// CPU time of each thread of `pid` named `tern-worker-N`, in nanoseconds
/// (/proc/PID/task/TID/schedstat), by name.
fn worker_cpu_ns(pid: u32) -> std::collections::BTreeMap<String, u64> {
    let mut cpu = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return cpu;
    };
    for task in tasks.flatten() {
        let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let name = name.trim();
        if !name.starts_with("tern-worker-") {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        let ns = stat.split_whitespace().next().and_then(|n| n.parse().ok());
        cpu.insert(name.to_owned(), ns.unwrap_or(0));
    }
    cpu
}

#[tokio::test(flavor = "multi_thread")]
async fn per_core_workers_each_listen_and_each_serve_connections() {
    let ips = Ips::new();
    let _m1 = Backend::start("m1", ips.get(1), 7000).await;
    let ports = Ports::new();
    let mut config =
        config_head(ports, "").replace("workers = 2", "workers = 2\nscheduler = \"per-core\"");
    config.push_str(&web_app(ports.http, ""));
    config.push_str(&machine("m1", "web", "ams", ips.get(1)));
    let tern = Tern::start(&config, ports);
    let base_config = config;
    let pid = tern.child.id();

    let sockets = ports_listened_by(pid);
    let on_http = sockets.iter().filter(|p| **p == ports.http).count();
    assert_eq!(on_http, 2, "one socket per worker on the port: {sockets:?}");
    let before = worker_cpu_ns(pid);
    assert_eq!(before.len(), 2, "two worker threads: {before:?}");

    // 32 connections, 50 requests each: the kernel hashes each connection to
    // one of the two sockets, so both workers get some (all on one: 2^-31).
    let mut clients = Vec::new();
    for _ in 0..32 {
        let port = ports.http;
        clients.push(tokio::spawn(async move {
            let mut c = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            for _ in 0..50 {
                c.write_all(b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n")
                    .await
                    .unwrap();
                let (head, _) = read_response(&mut c).await;
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            }
        }));
    }
    for c in clients {
        tokio::time::timeout(Duration::from_secs(60), c)
            .await
            .expect("the load finishes")
            .unwrap();
    }
    let after = worker_cpu_ns(pid);
    let used: Vec<u64> = after
        .iter()
        .map(|(name, ns)| ns.saturating_sub(before.get(name).copied().unwrap_or(0)))
        .collect();
    let total: u64 = used.iter().sum();
    assert!(total > 0, "the workers' CPU time cannot be read: {after:?}");
    assert!(
        used.iter().all(|ns| *ns * 10 >= total),
        "each worker should carry at least a tenth of the load: {used:?} ns"
    );

    // A port that a reload adds gets a socket per worker too, and serves.
    let added = free_port();
    let mut config = base_config;
    config.push_str(&plain_app("more", added, ""));
    config.push_str(&machine("m2", "more", "ams", ips.get(1)));
    std::fs::write(tern.dir.path().join("tern.toml"), config).unwrap();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let opened = eventually(Duration::from_secs(20), || {
        ports_listened_by(pid)
            .iter()
            .filter(|p| **p == added)
            .count()
            == 2
    })
    .await;
    assert!(
        opened,
        "two sockets on the added port: {:?}\n{}",
        ports_listened_by(pid),
        tern.log_text()
    );
    let resp = http_get_raw(("127.0.0.1", added), "/", "more.test").unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
}
