//! `tern demo --fleet` as the README runs it: etcd and three nodes come up, a
//! request is served by the edge's own machine, and after the catalog push the
//! demo prints, by another region's over the backhaul.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::browser::*;
use common::*;

#[test]
fn the_fleet_demo_serves_locally_then_across_regions() {
    let dir = tempfile::tempdir().unwrap();
    let [http, https, admin, machine, etcd, backhaul] = demo_ports();
    let ports = |p: u16| p.to_string();
    let mut demo = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["demo", "--fleet", "--dir"])
        .arg(dir.path())
        .args(["--http-port", &ports(http), "--https-port", &ports(https)])
        .args([
            "--admin-port",
            &ports(admin),
            "--machine-port",
            &ports(machine),
        ])
        .args([
            "--etcd-port",
            &ports(etcd),
            "--backhaul-port",
            &ports(backhaul),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let printed = demo_welcome(&mut demo);
    let edge = ("127.0.0.1", http);
    let resp = http_get_raw(edge, "/", "demo.localhost").unwrap();
    assert!(
        resp.contains("Hello from machine m-ams-1 in region ams"),
        "{resp}"
    );

    // The push line it printed, run as printed.
    let push = printed
        .lines()
        .map(str::trim)
        .find(|l| l.contains("catalog push") && l.contains("stopped"))
        .expect("a push line");
    let mut words = push.split_whitespace();
    let status = Command::new(words.next().unwrap())
        .args(words)
        .status()
        .unwrap();
    assert!(status.success());
    let crossed = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        let resp = http_get_raw(edge, "/", "demo.localhost").unwrap_or_default();
        resp.contains("Hello from machine m-ord-1") || resp.contains("Hello from machine m-sin-1")
    });
    assert!(crossed, "the request never crossed to another region");
    let resp = http_get_raw(edge, "/", "demo.localhost").unwrap();
    assert!(resp.contains("edge region: ams"), "{resp}");

    // ams-1's dashboard, in a real browser: the fleet by region with the RTTs
    // ams-1 measures, the catalog from etcd, and the machine the push stopped.
    let url = format!("http://127.0.0.1:{admin}/");
    assert!(
        printed.contains(&format!("ams-1 {url}")),
        "the demo prints the dashboards first:\n{printed}"
    );
    // Every node measures both of its peers, and ams-1 has what ord-1 and sin-1
    // published of theirs: the whole matrix.
    wait_until(
        "ams-1 holds every node's RTTs to both of its peers",
        Duration::from_secs(30),
        || {
            let c = http_get_raw(("127.0.0.1", admin), "/catalog", "admin").unwrap_or_default();
            let Some(json) = c.split_once("\r\n\r\n").map(|(_, b)| b) else {
                return false;
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
                return false;
            };
            let peers = v["peers"].as_array().cloned().unwrap_or_default();
            peers.len() == 2
                && peers.iter().all(|p| {
                    p["rtt_ms"].is_number()
                        && p["measured_ms"].as_object().is_some_and(|m| m.len() == 2)
                })
        },
    );
    let dom = dump_dom(&url, 3000);
    assert_eq!(page_failures(&dom), Vec::<String>::new(), "{dom}");
    for region in ["ams", "ord", "sin"] {
        assert!(
            dom.contains(&format!(r#"data-region="{region}""#)),
            "{region}:\n{dom}"
        );
    }
    for peer in ["ord-1", "sin-1"] {
        let at = dom
            .find(&format!(r#"data-node="{peer}""#))
            .unwrap_or_else(|| panic!("{peer}:\n{dom}"));
        let node = &dom[at..at + dom[at..].find("</span></span>").unwrap()];
        assert!(
            node.contains(">up<") && node.contains(" ms"),
            "{peer} up, with its RTT: {node}"
        );
    }
    let nodes = ["ams-1", "ord-1", "sin-1"];
    for from in nodes {
        for to in nodes.iter().filter(|&&to| to != from) {
            let cell = format!(r#"data-from="{from}" data-to="{to}">"#);
            let at = dom
                .find(&cell)
                .unwrap_or_else(|| panic!("no RTT cell {from} to {to}:\n{dom}"));
            let text = &dom[at + cell.len()..];
            let text = &text[..text.find('<').unwrap()];
            assert!(text.parse::<f64>().is_ok(), "{from} to {to}: {text:?}");
        }
    }
    assert!(
        element_text(&dom, "fleet-note").contains("Catalog from etcd"),
        "{dom}"
    );
    assert!(machine_row(&dom, "m-ams-1", "stopped"), "{dom}");
    assert!(machine_row(&dom, "m-ord-1", "started"), "{dom}");
    screenshot(&url, "dashboard-fleet.png");

    // Ctrl-C stops everything it started.
    interrupt_demo(&mut demo, Duration::from_secs(20));
    let gone = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        let lo = [127, 0, 0, 1].into();
        !listening(lo, admin) && !listening(lo, etcd)
    });
    assert!(gone, "a node or etcd outlived the demo");
}

/// Ports for the demo. It derives more from two of them (the other nodes' admin
/// ports are `admin + 1` and `+ 2`, etcd's peer port is `etcd + 1`), and the
/// kernel hands out free ports close together: those must be free too, and
/// apart from the rest.
fn demo_ports() -> [u16; 6] {
    for _ in 0..100 {
        let p = [(); 6].map(|()| free_port());
        let [_, _, admin, _, etcd, _] = p;
        let derived = [admin, admin.saturating_add(1), etcd].map(|p| p.saturating_add(1));
        let mut all: Vec<u16> = p.iter().chain(&derived).copied().collect();
        all.sort_unstable();
        all.dedup();
        let free = derived
            .iter()
            .all(|&port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
        if all.len() == p.len() + derived.len() && free {
            return p;
        }
    }
    panic!("no set of demo ports apart from each other in 100 tries");
}
