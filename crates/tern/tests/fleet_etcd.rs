//! A fleet on etcd: a real etcd, three `tern` processes that register under
//! leases, watch the catalog and publish their machines' live state, and
//! `tern catalog push` and `get` as an operator runs them.

mod common;
mod fleet;

use std::time::{Duration, Instant};

use common::*;
use fleet::*;

const CONCURRENCY: &str = r#"{ type = "requests", soft_limit = 1, hard_limit = 20 }"#;

/// The catalog for etcd: the test's apps, and `machines`.
fn catalog(f: &TestFleet, machines: &str) -> String {
    let mut text = String::from(REGION_SEEDS);
    text.push_str(&f.web_app(CONCURRENCY));
    text.push_str(machines);
    text
}

fn push(f: &TestFleet, etcd: &Etcd, text: &str) -> String {
    let path = f.dir.path().join("push.toml");
    std::fs::write(&path, text).unwrap();
    tern(&[
        "catalog",
        "push",
        path.to_str().unwrap(),
        "--etcd",
        &etcd.url(),
        "--prefix",
        "/tern-test",
    ])
}

/// The machine `id` in a node's `/catalog`.
fn machine_view(node: &Node, id: &str) -> serde_json::Value {
    let c = node.catalog();
    c["apps"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|a| a["machines"].as_array().cloned().unwrap_or_default())
        .find(|m| m["id"] == id)
        .unwrap_or(serde_json::Value::Null)
}

async fn routable(node: &Node, id: &str, want: bool, within: Duration) -> bool {
    eventually(within, || machine_view(node, id)["routable"] == want).await
}

/// ams-1 (no machines), ord-1 (m-ord), sin-1 (m-sin), on one etcd.
async fn etcd_fleet() -> (TestFleet, Etcd, Backend, Backend) {
    let mut f = TestFleet::new(&[("ams-1", "ams"), ("ord-1", "ord"), ("sin-1", "sin")]);
    let etcd = Etcd::start(f.dir.path());
    let ord = Backend::start("m-ord", f.machine_ip(1), 7000).await;
    let sin = Backend::start("m-sin", f.machine_ip(2), 7000).await;
    let machines = format!(
        "{}{}",
        f.machine("m-ord", "web", "ord-1", 1),
        f.machine("m-sin", "web", "sin-1", 2)
    );
    push(&f, &etcd, &catalog(&f, &machines));
    f.write_configs(&Source::Etcd(etcd.url()), "");
    f.start_all();
    (f, etcd, ord, sin)
}

#[tokio::test(flavor = "multi_thread")]
async fn push_validates_and_get_shows_definitions_nodes_and_live_state() {
    let (f, etcd, _ord, _sin) = etcd_fleet().await;
    // A bad catalog is refused with its line and column, and nothing is written.
    let bad = f.dir.path().join("bad.toml");
    std::fs::write(&bad, "[[app]]\nname = \"x\"\n\n[[machine]]\nid = \"m\"\napp = \"x\"\nregion = \"ams\"\nip = \"127.0.0.9\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tern"))
        .args([
            "catalog",
            "push",
            bad.to_str().unwrap(),
            "--etcd",
            &etcd.url(),
            "--prefix",
            "/tern-test",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml:5:6: machine \"m\" names no node"),
        "{err}"
    );

    let got = tern(&[
        "catalog",
        "get",
        "--etcd",
        &etcd.url(),
        "--prefix",
        "/tern-test",
    ]);
    let v: serde_json::Value = serde_json::from_str(&got).unwrap();
    assert!(v["apps"]["web"].is_object(), "{got}");
    assert_eq!(v["machines"]["m-ord"]["node"], "ord-1");
    assert!(v["apps"].get("x").is_none(), "the bad push wrote nothing");
    for n in ["ams-1", "ord-1", "sin-1"] {
        assert_eq!(v["nodes"][n]["id"], n, "{got}");
    }
    assert_eq!(v["status"]["m-ord"]["state"], "started", "{got}");
    assert_eq!(v["status"]["m-ord"]["node"], "ord-1");

    // Pushing the same again changes nothing; dropping a machine deletes it.
    let again = push(
        &f,
        &etcd,
        &catalog(&f, &f.machine("m-ord", "web", "ord-1", 1)),
    );
    assert!(again.contains("1 deleted"), "{again}");
    let ams = f.node("ams-1");
    let gone = eventually(Duration::from_secs(10), || {
        machine_view(ams, "m-sin").is_null()
    })
    .await;
    assert!(gone, "{}", ams.catalog());
    // The node reports its session.
    assert!(ams
        .admin_get("/healthz")
        .contains("catalog: etcd, in step at revision"));
}

#[tokio::test(flavor = "multi_thread")]
async fn state_and_health_changes_reach_every_node() {
    let (f, etcd, ord, sin) = etcd_fleet().await;
    let ams = f.node("ams-1");
    for _ in 0..10 {
        let resp = ams.get(f.http, "/", "web.test");
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}\n{}", f.logs());
    }

    // Stopped by a push: its node adopts it and publishes it; everyone follows.
    let machines = format!(
        "{}{}",
        f.machine("m-ord", "web", "ord-1", 1),
        f.machine("m-sin", "web", "sin-1", 2)
            .replace("ip =", "state = \"stopped\"\nip =")
    );
    push(&f, &etcd, &catalog(&f, &machines));
    for n in &f.nodes {
        assert!(
            routable(n, "m-sin", false, Duration::from_secs(10)).await,
            "{}: {}",
            n.id,
            n.catalog()
        );
    }
    let before = sin.hits.load(std::sync::atomic::Ordering::Relaxed);
    for _ in 0..10 {
        let resp = ams.get(f.http, "/", "web.test");
        assert_eq!(machine_of(&resp), Some("m-ord"), "{resp}");
    }
    assert_eq!(sin.hits.load(std::sync::atomic::Ordering::Relaxed), before);

    // A failing health check, run by the machine's own node only, takes it out
    // everywhere.
    let checked = format!(
        "{}{}",
        f.machine("m-ord", "web", "ord-1", 1),
        f.machine("m-sin", "web", "sin-1", 2)
    );
    let with_check = catalog(&f, &checked).replace(
        "internal_port = 7000\n",
        "internal_port = 7000\nhttp_checks = [{ path = \"/healthz\", interval = \"200ms\", timeout = \"100ms\", grace_period = \"0s\" }]\n",
    );
    push(&f, &etcd, &with_check);
    for n in &f.nodes {
        assert!(
            routable(n, "m-sin", true, Duration::from_secs(10)).await,
            "{}: {}",
            n.id,
            n.catalog()
        );
    }
    ord.healthy
        .store(false, std::sync::atomic::Ordering::Relaxed);
    for n in &f.nodes {
        let out = eventually(Duration::from_secs(10), || {
            machine_view(n, "m-ord")["services"][0]["healthy"] == false
        })
        .await;
        assert!(out, "{}: {}", n.id, n.catalog());
    }
    // Only ord-1 checked it.
    assert!(ord.health_hits.load(std::sync::atomic::Ordering::Relaxed) > 0);
    let resp = ams.get(f.http, "/", "web.test");
    assert_eq!(machine_of(&resp), Some("m-sin"), "{resp}");

    // Load crossing the soft limit, from requests ams-1 never saw, shows at ams-1:
    // ord-1 spreads them over both machines, whose nodes publish their bands.
    ord.healthy
        .store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(routable(ams, "m-ord", true, Duration::from_secs(10)).await);
    let ord_node = (f.node("ord-1").ip, f.http);
    let held: Vec<_> = (0..3)
        .map(|_| std::thread::spawn(move || http_get_raw(ord_node, "/slow?ms=2500", "web.test")))
        .collect();
    let seen = eventually(Duration::from_secs(2), || {
        ["m-ord", "m-sin"].iter().any(|m| {
            let slot = &machine_view(ams, m)["services"][0];
            slot["band"] == "over_soft" && slot["load"].as_u64() > Some(0)
        })
    })
    .await;
    assert!(seen, "{}", ams.catalog());
    for h in held {
        let _ = h.join();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_nodes_lease_runs_out_and_its_machines_leave_every_rotation() {
    let (mut f, etcd, _ord, _sin) = etcd_fleet().await;
    f.node_mut("sin-1").kill();
    let killed = Instant::now();
    for id in ["ams-1", "ord-1"] {
        let n = f.node(id);
        assert!(
            routable(n, "m-sin", false, Duration::from_secs(10)).await,
            "{}",
            n.catalog()
        );
    }
    // The lease (2 s) ran out: its registration and its machine's status are gone.
    let deadline = killed + Duration::from_secs(10);
    loop {
        let got = etcd.ctl(&["get", "--prefix", "--keys-only", "/tern-test/"]);
        if !got.contains("/tern-test/nodes/sin-1") && !got.contains("/tern-test/status/m-sin") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sin-1's keys outlived its lease: {got}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        killed.elapsed() < Duration::from_secs(8),
        "{:?}",
        killed.elapsed()
    );
    let resp = f.node("ams-1").get(f.http, "/", "web.test");
    assert_eq!(machine_of(&resp), Some("m-ord"), "{resp}");

    // Back, it registers again and its machine returns to rotation.
    f.node_mut("sin-1").start();
    let ams = f.node("ams-1");
    assert!(
        routable(ams, "m-sin", true, Duration::from_secs(10)).await,
        "{}",
        ams.catalog()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn etcd_down_and_back_fails_no_request_and_loses_no_change() {
    let (f, mut etcd, _ord, _sin) = etcd_fleet().await;
    let ams = f.node("ams-1");
    let (ip, port) = (ams.ip, f.http);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let traffic = std::thread::spawn(move || {
        let mut failed = Vec::new();
        let mut sent = 0;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) && sent < 5000 {
            let resp = http_get_raw((ip, port), "/", "web.test").unwrap_or_default();
            if !resp.starts_with("HTTP/1.1 200") {
                failed.push(resp);
            }
            sent += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        (sent, failed)
    });

    std::thread::sleep(Duration::from_millis(300));
    etcd.kill();
    let said = eventually(Duration::from_secs(10), || {
        ams.admin_get("/healthz")
            .contains("catalog: etcd unreachable")
    })
    .await;
    assert!(said, "{}", ams.admin_get("/healthz"));
    assert!(ams.admin_get("/metrics").contains("tern_catalog_in_step 0"));
    std::thread::sleep(Duration::from_millis(1000));
    etcd.run();
    let back = eventually(Duration::from_secs(15), || {
        ams.admin_get("/healthz").contains("in step")
    })
    .await;
    assert!(back, "{}", ams.admin_get("/healthz"));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sent, failed) = traffic.join().unwrap();
    assert!(sent > 50, "{sent}");
    assert!(
        failed.is_empty(),
        "{} of {sent} failed: {:?}",
        failed.len(),
        failed.first()
    );

    // A change made after etcd came back reaches every node.
    let machines = f.machine("m-ord", "web", "ord-1", 1);
    push(&f, &etcd, &catalog(&f, &machines));
    for n in &f.nodes {
        let gone = eventually(Duration::from_secs(10), || {
            machine_view(n, "m-sin").is_null()
        })
        .await;
        assert!(gone, "{}: {}", n.id, n.catalog());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_missed_compacted_history_reads_the_fleet_again() {
    let mut f = TestFleet::new(&[("ams-1", "ams"), ("ord-1", "ord")]);
    let etcd = Etcd::start(f.dir.path());
    let relay = Relay::start(etcd.client_port).await;
    let _ord = Backend::start("m-ord", f.machine_ip(1), 7000).await;
    let _two = Backend::start("m-two", f.machine_ip(2), 7000).await;
    push(
        &f,
        &etcd,
        &catalog(&f, &f.machine("m-ord", "web", "ord-1", 1)),
    );
    // ams-1 reaches etcd through the relay, ord-1 directly.
    f.write_config(&f.nodes[0], &Source::Etcd(relay.url()), "");
    f.write_config(&f.nodes[1], &Source::Etcd(etcd.url()), "");
    f.start_all();
    let ams = f.node("ams-1");
    assert!(routable(ams, "m-ord", true, Duration::from_secs(10)).await);

    relay.cut();
    let lost = eventually(Duration::from_secs(10), || {
        ams.admin_get("/healthz").contains("unreachable")
    })
    .await;
    assert!(lost, "{}", ams.admin_get("/healthz"));
    // Meanwhile: a machine added, and the history compacted past where ams-1 was.
    let machines = format!(
        "{}{}",
        f.machine("m-ord", "web", "ord-1", 1),
        f.machine("m-two", "web", "ord-1", 2)
    );
    push(&f, &etcd, &catalog(&f, &machines));
    // One write more, so that compacting at the newest revision removes the
    // change ams-1 would resume from.
    etcd.ctl(&["put", "/elsewhere", "x"]);
    let status = etcd.ctl(&["endpoint", "status", "-w", "json"]);
    let rev = status
        .split("\"revision\":")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|r| r.parse::<i64>().ok())
        .expect("etcd's revision");
    etcd.ctl(&["compact", &rev.to_string()]);

    relay.restore();
    assert!(
        routable(ams, "m-two", true, Duration::from_secs(15)).await,
        "{}",
        ams.catalog()
    );
    let detail = ams.admin_get("/debug/catalog");
    assert!(
        detail.contains("\"resyncs\": 1"),
        "{detail}\n{}",
        ams.log_text()
    );
    let resp = ams.get(f.http, "/", "two.web.test");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ports_follow_the_catalog_even_when_a_port_changes_its_handlers() {
    let (f, etcd, _ord, _sin) = etcd_fleet().await;
    let ams = f.node("ams-1");
    let machines = format!(
        "{}{}",
        f.machine("m-ord", "web", "ord-1", 1),
        f.machine("m-sin", "web", "sin-1", 2)
    );
    // The plain HTTP port turns into a TLS one: closed, then opened again.
    let plain = format!("{{ port = {}, handlers = [\"http\"] }}", f.http);
    let tls = format!("{{ port = {}, handlers = [\"tls\", \"http\"] }}", f.http);
    let text = catalog(&f, &machines).replace(&plain, &tls);
    assert_ne!(text, catalog(&f, &machines));
    push(&f, &etcd, &text);
    let url = format!("https://web.test:{}/", f.http);
    let resolve = format!("web.test:{}:{}", f.http, ams.ip);
    let served = eventually(Duration::from_secs(10), || {
        let (ok, out, _) = curl(&[
            "--cacert",
            f.site.ca_path.to_str().unwrap(),
            "--resolve",
            &resolve,
            "-i",
            &url,
        ]);
        ok && out.starts_with("HTTP/")
    })
    .await;
    assert!(served, "{}", ams.log_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edge_sends_a_request_to_a_stopped_machines_node_which_starts_it() {
    let mut f = TestFleet::new(&[("ams-1", "ams"), ("ord-1", "ord")]);
    let etcd = Etcd::start(f.dir.path());
    // ord-1 runs m-ord as a process, stopped until a request needs it.
    let machine = format!(
        "{}driver = \"process\"\nstate = \"stopped\"\ncommand = [\"{}\", \"demo-machine\"]\n",
        f.machine("m-ord", "web", "ord-1", 1),
        env!("CARGO_BIN_EXE_tern")
    );
    push(&f, &etcd, &catalog(&f, &machine));
    f.write_configs(&Source::Etcd(etcd.url()), "");
    f.start_all();
    f.wait_connected();
    let ams = f.node("ams-1");
    // The state ord-1 publishes is what ams-1 sees.
    let seen = eventually(Duration::from_secs(10), || {
        machine_view(ams, "m-ord")["state"] == "stopped"
    })
    .await;
    assert!(seen, "{}", ams.catalog());

    // ams-1 cannot start it; it sends the request to ord-1, which does.
    let resp = ams.get(f.http, "/", "web.test");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}\n{}", f.logs());
    assert_eq!(machine_of(&resp), Some("m-ord"), "{resp}");
    let start = field(&resp, "tern-machine-start").unwrap_or_else(|| panic!("{resp}"));
    assert!(start.starts_with("cold; machine=m-ord"), "{start}");
    let started = eventually(Duration::from_secs(10), || {
        machine_view(ams, "m-ord")["state"] == "started"
    })
    .await;
    assert!(started, "{}", ams.catalog());
    assert!(
        !ams.log_text().contains("machine started"),
        "the edge started nothing itself"
    );
    assert!(f.node("ord-1").log_text().contains("machine started"));

    // Stopped by its node's operator, the next request through the edge wakes it.
    let stop = f
        .node("ord-1")
        .command(env!("CARGO_BIN_EXE_tern"))
        .args(["machine", "stop", "m-ord", "--admin"])
        .arg(format!("127.0.0.1:{}", f.node("ord-1").admin))
        .output()
        .unwrap();
    assert!(
        stop.status.success(),
        "{}",
        String::from_utf8_lossy(&stop.stderr)
    );
    let seen_stopped = eventually(Duration::from_secs(10), || {
        machine_view(ams, "m-ord")["state"] == "stopped"
    })
    .await;
    assert!(seen_stopped, "{}", ams.catalog());
    let again = ams.get(f.http, "/", "web.test");
    assert!(again.starts_with("HTTP/1.1 200"), "{again}\n{}", f.logs());
    assert!(field(&again, "tern-machine-start").is_some(), "{again}");
}
