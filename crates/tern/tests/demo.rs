//! `tern demo` as the README runs it: its machines are processes that Tern
//! starts, `sleepy` wakes on a request and stops again when idle, and Ctrl-C
//! leaves no machine behind.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn header<'a>(resp: &'a str, name: &str) -> Option<&'a str> {
    let head = resp.split("\r\n\r\n").next()?;
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The demo's machine processes (its children running `demo-machine`).
fn machine_processes(demo: u32) -> Vec<String> {
    let out = Command::new("pgrep")
        .args(["-f", "-P", &demo.to_string(), "demo-machine"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_demo_runs_its_machines_as_processes_and_wakes_the_sleepy_one() {
    let dir = tempfile::tempdir().unwrap();
    let [http, https, admin, machine] = [(); 4].map(|()| free_port());
    let mut demo = spawn_demo(
        dir.path(),
        [http, https, admin, machine],
        &["--idle-timeout", "1s"],
        &[],
    );
    let printed = demo_welcome(&mut demo);
    assert!(
        printed.contains("curl -i http://sleepy.localhost:"),
        "the demo shows how to wake the sleepy machine:\n{printed}"
    );
    let edge = ("127.0.0.1", http);
    let resp = http_get_raw(edge, "/", "demo.localhost").unwrap();
    assert!(resp.contains("Hello from machine m-demo-"), "{resp}");
    assert!(resp.contains("pid: "), "a process of its own: {resp}");

    let woke = http_get_raw(edge, "/", "sleepy.localhost").unwrap();
    assert!(woke.contains("Hello from machine m-sleepy-1"), "{woke}");
    let start = header(&woke, "tern-machine-start").unwrap_or_else(|| panic!("{woke}"));
    assert!(start.starts_with("cold; machine=m-sleepy-1"), "{start}");
    assert_eq!(machine_processes(demo.id()).len(), 4);

    // Idle for a second, it is stopped; the next request wakes it again.
    let stopped = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        machine_processes(demo.id()).len() == 3
    });
    assert!(stopped, "m-sleepy-1 was not stopped when idle");
    let again = http_get_raw(edge, "/", "sleepy.localhost").unwrap();
    assert!(header(&again, "tern-machine-start").is_some(), "{again}");

    interrupt_demo(&mut demo, Duration::from_secs(30));
    let gone = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        ["127.0.0.11", "127.0.0.14"]
            .iter()
            .all(|ip| !listening(ip.parse().unwrap(), machine))
    });
    assert!(gone, "a demo machine outlived the demo");
}
