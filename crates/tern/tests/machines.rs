//! The machine lifecycle with real processes: machines with `driver = "process"`
//! are `tern demo-machine` children of the Tern under test (or a program that
//! never listens), started on demand, suspended, crashed and orphaned for real.

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::*;

/// A config with app `web` (`web.test`) and one process machine `m1` on `ip`.
fn config(ports: Ports, ip: IpAddr, machine: &str, lifecycle: &str) -> String {
    format!(
        r#"{head}
[lifecycle]
start_timeout = "10s"
stop_timeout = "2s"
{lifecycle}
{app}
[[machine]]
id = "m1"
app = "web"
region = "ams"
ip = "{ip}"
driver = "process"
{machine}
"#,
        head = config_head(ports, ""),
        app = web_app(ports.http, ""),
    )
}

fn demo_machine(state: &str) -> String {
    format!(
        "state = \"{state}\"\ncommand = [\"{}\", \"demo-machine\"]",
        env!("CARGO_BIN_EXE_tern")
    )
}

fn header<'a>(resp: &'a str, name: &str) -> Option<&'a str> {
    let head = resp.split("\r\n\r\n").next()?;
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn get(tern: &Tern) -> String {
    http_get_raw(("127.0.0.1", tern.ports.http), "/", "web.test")
        .unwrap_or_else(|e| format!("io error: {e}"))
}

fn pid_of(resp: &str) -> u32 {
    header(resp, "x-machine-pid")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no machine pid in {resp}"))
}

/// The machine's state as /catalog shows it.
fn state(tern: &Tern) -> String {
    let text = tern.admin_get("/catalog");
    let json = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
    v["apps"][0]["machines"][0]["state"]
        .as_str()
        .unwrap_or("?")
        .to_owned()
}

/// A process's state letter from /proc (R, S, T for stopped, Z for zombie);
/// `None` once it is gone.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

fn gone(pid: u32) -> bool {
    matches!(proc_state(pid), None | Some('Z'))
}

/// Tern with `m1` declared started, once Tern has started it: Tern, its
/// configuration, and the machine's pid (from a request it served).
async fn with_a_started_machine() -> (Tern, String, u32) {
    let ports = Ports::new();
    let ip = Ips::new().get(1);
    let text = config(ports, ip, &demo_machine("started"), "");
    let tern = Tern::start(&text, ports);
    let up = eventually(Duration::from_secs(10), || state(&tern) == "started").await;
    assert!(
        up,
        "declared started, it is started at boot: {}",
        state(&tern)
    );
    let first = get(&tern);
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let pid = pid_of(&first);
    (tern, text, pid)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_machine_starts_on_the_first_request_and_serves_it() {
    let ports = Ports::new();
    let ip = Ips::new().get(1);
    let tern = Tern::start(&config(ports, ip, &demo_machine("stopped"), ""), ports);
    assert_eq!(state(&tern), "stopped");

    let resp = get(&tern);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let start = header(&resp, "tern-machine-start").unwrap_or_else(|| panic!("{resp}"));
    assert!(start.starts_with("cold; machine=m1; waited_ms="), "{start}");
    assert!(resp.contains("Hello from machine m1"), "{resp}");
    let pid = pid_of(&resp);
    assert_eq!(state(&tern), "started");

    // Started: the next request goes straight to it, to the same process.
    let again = get(&tern);
    assert!(again.starts_with("HTTP/1.1 200"), "{again}");
    assert_eq!(header(&again, "tern-machine-start"), None);
    assert_eq!(pid_of(&again), pid);
    let log = tern.log_text();
    assert!(
        log.contains("machine m1 listening on") && log.contains("machine_output"),
        "the machine's output is in Tern's log, tagged:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_requests_start_the_machine_once() {
    let ports = Ports::new();
    let ip = Ips::new().get(1);
    // A slow start, so that every request arrives while it is under way.
    let machine = format!(
        "state = \"stopped\"\ncommand = [\"{}\", \"demo-machine\", \"--listen-after\", \"300ms\"]",
        env!("CARGO_BIN_EXE_tern")
    );
    let tern = Tern::start(&config(ports, ip, &machine, ""), ports);
    let port = tern.ports.http;
    let requests: Vec<_> = (0..50)
        .map(|_| {
            std::thread::spawn(move || {
                http_get_raw(("127.0.0.1", port), "/", "web.test")
                    .unwrap_or_else(|e| format!("io error: {e}"))
            })
        })
        .collect();
    let answers: Vec<String> = requests.into_iter().map(|r| r.join().unwrap()).collect();
    let mut pids = std::collections::BTreeSet::new();
    let mut waited = 0;
    for resp in &answers {
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        pids.insert(pid_of(resp));
        waited += usize::from(header(resp, "tern-machine-start").is_some());
    }
    assert_eq!(pids.len(), 1, "one process served them all: {pids:?}");
    assert!(
        waited >= 1,
        "at least the first request waited for the start"
    );
    let metrics = tern.admin_get("/metrics");
    let starts: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("tern_machine_transitions_total{to=\"starting\"}"))
        .filter_map(|l| l.rsplit_once(" ")?.1.parse::<f64>().ok())
        .sum();
    assert_eq!(starts, 1.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_machine_that_never_listens_gives_the_coded_timeout_and_is_killed() {
    let ports = Ports::new();
    let ip = Ips::new().get(1);
    let machine = "state = \"stopped\"\ncommand = [\"sleep\", \"60\"]";
    let text = config(ports, ip, machine, "")
        .replace("start_timeout = \"10s\"", "start_timeout = \"700ms\"");
    let tern = Tern::start(&text, ports);
    let began = Instant::now();
    let resp = get(&tern);
    let took = began.elapsed();
    assert!(resp.starts_with("HTTP/1.1 504"), "{resp}");
    assert_eq!(
        header(&resp, "tern-error"),
        Some("machine_start_timeout"),
        "{resp}"
    );
    assert!(took >= Duration::from_millis(600), "waited {took:?}");
    // The start is given up: its process is killed, and the machine is stopped.
    let stopped = eventually(Duration::from_secs(10), || state(&tern) == "stopped").await;
    assert!(stopped, "state {}", state(&tern));
    let sleeping = std::process::Command::new("pgrep")
        .args(["-f", "^sleep 60$", "-P", &tern.child.id().to_string()])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&sleeping.stdout).trim().is_empty(),
        "the machine that never listened still runs"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_machine_that_exits_leaves_rotation_and_the_next_request_starts_it_again() {
    let (tern, _, pid) = with_a_started_machine().await;

    // A crash.
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
    let left = eventually(Duration::from_secs(10), || state(&tern) == "stopped").await;
    assert!(left, "state {}", state(&tern));
    assert!(tern.log_text().contains("machine ended on its own"));

    let next = get(&tern);
    assert!(next.starts_with("HTTP/1.1 200"), "{next}");
    assert_ne!(pid_of(&next), pid, "a new process");
    assert!(header(&next, "tern-machine-start").is_some_and(|h| h.starts_with("cold")));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_suspended_machine_keeps_its_process_and_resumes_on_the_next_request() {
    let (tern, text, pid) = with_a_started_machine().await;

    // Declared suspended, by a reload.
    std::fs::write(
        tern.dir.path().join("tern.toml"),
        text.replace("state = \"started\"", "state = \"suspended\""),
    )
    .unwrap();
    let reload = raw_exchange(
        tern.ports.admin,
        b"POST /reload HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert!(reload.starts_with("HTTP/1.1 200"), "{reload}");
    let suspended = eventually(Duration::from_secs(10), || {
        state(&tern) == "suspended" && proc_state(pid) == Some('T')
    })
    .await;
    assert!(
        suspended,
        "state {}, process {:?}",
        state(&tern),
        proc_state(pid)
    );

    let resp = get(&tern);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(pid_of(&resp), pid, "the same process, resumed");
    let start = header(&resp, "tern-machine-start").unwrap_or_else(|| panic!("{resp}"));
    assert!(start.starts_with("resume"), "{start}");
    assert_ne!(proc_state(pid), Some('T'));
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_of_tern_leaves_no_machine_behind() {
    let (mut tern, _, pid) = with_a_started_machine().await;
    assert!(!gone(pid));
    tern.child.kill().unwrap();
    let _ = tern.child.wait();
    let ended = eventually(Duration::from_secs(10), || gone(pid)).await;
    assert!(ended, "machine {pid} outlived Tern: {:?}", proc_state(pid));
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_of_tern_stops_its_machines_cleanly() {
    let (mut tern, _, pid) = with_a_started_machine().await;
    let status = tern.terminate(Duration::from_secs(20));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert!(gone(pid));
    let log = tern.log_text();
    assert!(
        log.contains("SIGTERM: exiting"),
        "the machine got SIGTERM:\n{log}"
    );
    assert!(log.contains("machine stopped"), "{log}");
}

/// App `web` with `n` process machines `m1`..`mN`, autostopped as `autostop` says.
fn autostop_config(ports: Ports, ips: &Ips, n: u8, autostop: &str) -> String {
    let mut machines = String::new();
    for i in 1..=n {
        machines.push_str(&format!(
            "[[machine]]\nid = \"m{i}\"\napp = \"web\"\nregion = \"ams\"\nip = \"{}\"\ndriver = \"process\"\n{}\n",
            ips.get(i),
            demo_machine("started")
        ));
    }
    format!(
        "{head}\n[lifecycle]\nautostop_interval = \"200ms\"\nidle_timeout = \"1s\"\nstop_timeout = \"2s\"\n{app}\n{machines}",
        head = config_head(ports, ""),
        app = web_app(ports.http, autostop),
    )
}

/// Each machine's state, by id, from /catalog.
fn states(tern: &Tern) -> std::collections::BTreeMap<String, String> {
    let text = tern.admin_get("/catalog");
    let json = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
    v["apps"][0]["machines"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .map(|m| {
                    (
                        m["id"].as_str().unwrap_or("?").to_owned(),
                        m["state"].as_str().unwrap_or("?").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn count(states: &std::collections::BTreeMap<String, String>, state: &str) -> usize {
    states.values().filter(|s| *s == state).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn autostop_brings_an_idle_region_down_to_min_machines_running_and_no_lower() {
    let ports = Ports::new();
    let ips = Ips::new();
    let text = autostop_config(
        ports,
        &ips,
        3,
        "auto_stop_machines = \"stop\"\nmin_machines_running = 1",
    );
    let tern = Tern::start(&text, ports);
    let all_up = eventually(Duration::from_secs(10), || {
        count(&states(&tern), "started") == 3
    })
    .await;
    assert!(all_up, "{:?}", states(&tern));
    let down = eventually(Duration::from_secs(20), || {
        let s = states(&tern);
        count(&s, "started") == 1 && count(&s, "stopped") == 2
    })
    .await;
    assert!(down, "{:?}", states(&tern));
    // Well past the idle timeout, the minimum stays.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = states(&tern);
    assert_eq!(count(&s, "started"), 1, "{s:?}");
    let resp = get(&tern);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(
        header(&resp, "tern-machine-start"),
        None,
        "served by the one left"
    );
    let log = tern.log_text();
    assert_eq!(log.matches("autostop").count(), 2, "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lone_idle_machine_is_suspended_after_its_idle_timeout_and_resumes_on_demand() {
    let ports = Ports::new();
    let ips = Ips::new();
    let text = autostop_config(ports, &ips, 1, "auto_stop_machines = \"suspend\"");
    let tern = Tern::start(&text, ports);
    let up = eventually(Duration::from_secs(10), || {
        count(&states(&tern), "started") == 1
    })
    .await;
    assert!(up, "{:?}", states(&tern));
    let pid = pid_of(&get(&tern));
    let began = Instant::now();
    let suspended = eventually(Duration::from_secs(20), || {
        count(&states(&tern), "suspended") == 1 && proc_state(pid) == Some('T')
    })
    .await;
    assert!(suspended, "{:?}", states(&tern));
    assert!(
        began.elapsed() >= Duration::from_millis(900),
        "suspended after {:?}, before its idle timeout",
        began.elapsed()
    );
    let resp = get(&tern);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(pid_of(&resp), pid);
    assert!(header(&resp, "tern-machine-start").is_some_and(|h| h.starts_with("resume")));
}

/// `tern machine ACTION ID --admin ...`: (success, stdout, stderr).
fn tern_machine(tern: &Tern, action: &str, id: &str) -> (bool, String, String) {
    machine_cli(tern.ports.admin, action, id)
}

fn machine_cli(admin: u16, action: &str, id: &str) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["machine", action, id, "--admin"])
        .arg(format!("127.0.0.1:{admin}"))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_starts_stops_and_suspends_machines_and_refuses_external_ones() {
    let ports = Ports::new();
    let ips = Ips::new();
    let text = format!(
        "{}[[machine]]\nid = \"ext\"\napp = \"web\"\nregion = \"ams\"\nip = \"{}\"\nstate = \"stopped\"\n",
        config(ports, ips.get(1), &demo_machine("stopped"), ""),
        ips.get(2)
    );
    let tern = Tern::start(&text, ports);

    let (ok, out, err) = tern_machine(&tern, "start", "m1");
    assert!(ok, "{out}{err}");
    assert_eq!(out, "machine m1 is started\n");
    let pid = pid_of(&get(&tern));

    let (ok, out, err) = tern_machine(&tern, "suspend", "m1");
    assert!(ok, "{out}{err}");
    assert_eq!(out, "machine m1 is suspended\n");
    assert_eq!(proc_state(pid), Some('T'));

    let (ok, out, err) = tern_machine(&tern, "stop", "m1");
    assert!(ok, "{out}{err}");
    assert_eq!(out, "machine m1 is stopped\n");
    let ended = eventually(Duration::from_secs(10), || gone(pid)).await;
    assert!(ended, "a stopped machine's process is gone");

    let (ok, _, err) = tern_machine(&tern, "start", "ext");
    assert!(!ok);
    assert!(
        err.contains("is run by someone else") && err.contains("409"),
        "{err}"
    );
    let (ok, _, err) = tern_machine(&tern, "stop", "nope");
    assert!(!ok);
    assert!(
        err.contains("no machine with id \"nope\"") && err.contains("404"),
        "{err}"
    );

    let catalog = tern.admin_get("/catalog");
    let json = catalog.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    let machines = v["apps"][0]["machines"].as_array().unwrap();
    let by_id = |id: &str| machines.iter().find(|m| m["id"] == id).unwrap();
    let m1 = by_id("m1");
    assert_eq!(m1["lifecycle"]["cold_starts"], 1, "{m1}");
    assert_eq!(m1["lifecycle"]["suspends"], 1, "{m1}");
    assert_eq!(m1["lifecycle"]["stops"], 1, "{m1}");
    assert!(by_id("ext").get("lifecycle").is_none());
    let metrics = tern.admin_get("/metrics");
    assert!(
        metrics.contains("tern_machine_state{machine=\"m1\",state=\"stopped\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("tern_machine_start_seconds"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_websocket_client_gets_a_close_frame_when_its_machine_is_stopped() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::Message;

    let (tern, _, _) = with_a_started_machine().await;
    let ports = tern.ports;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", ports.http))
        .await
        .unwrap();
    let url = format!("ws://web.test:{}/ws", ports.http);
    let (mut ws, _) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
    ws.send(Message::text("hello")).await.unwrap();
    let echo = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
    assert_eq!(echo.unwrap().unwrap().unwrap(), Message::text("hello"));

    let admin = ports.admin;
    let began = Instant::now();
    let stop = std::thread::spawn(move || machine_cli(admin, "stop", "m1"));
    let got = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("nothing came when the machine was stopped");
    match got {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected a Close frame (1001), got {other:?}"),
    }
    // The client's answer ends the tunnel, so the stop need not wait out the
    // drain timeout (5 s here).
    let _ = ws.close(None).await;
    drop(ws);
    let (ok, out, err) = stop.join().unwrap();
    assert!(ok, "{out}{err}");
    assert!(
        began.elapsed() < Duration::from_secs(4),
        "the stop took {:?}",
        began.elapsed()
    );
    assert_eq!(state(&tern), "stopped");
}

/// The machine's processes: children of Tern running `demo-machine`.
fn machine_processes(tern: &Tern) -> usize {
    let out = std::process::Command::new("pgrep")
        .args(["-f", "-P", &tern.child.id().to_string(), "demo-machine"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[tokio::test(flavor = "multi_thread")]
async fn starts_and_stops_that_race_end_in_one_consistent_state() {
    let ports = Ports::new();
    let ip = Ips::new().get(1);
    let tern = Tern::start(&config(ports, ip, &demo_machine("stopped"), ""), ports);
    let admin = ports.admin;
    for round in 0..4 {
        let asked: Vec<_> = (0..10)
            .map(|i| {
                let action = if (i + round) % 2 == 0 {
                    "start"
                } else {
                    "stop"
                };
                std::thread::spawn(move || (action, machine_cli(admin, action, "m1")))
            })
            .collect();
        for a in asked {
            let (action, (ok, out, err)) = a.join().unwrap();
            assert!(
                ok,
                "round {round}: {action}: {out}{err}\n{}",
                tern.log_text()
            );
        }
        let now = state(&tern);
        match now.as_str() {
            "started" => {
                assert_eq!(machine_processes(&tern), 1, "round {round}: started");
                let resp = get(&tern);
                assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
                assert_eq!(header(&resp, "tern-machine-start"), None);
            }
            "stopped" => {
                let none =
                    eventually(Duration::from_secs(10), || machine_processes(&tern) == 0).await;
                assert!(none, "round {round}: stopped, yet its process runs");
            }
            other => panic!("round {round}: every action answered, yet the machine is {other}"),
        }
    }
    let log = tern.log_text();
    assert!(!log.contains("failed to start"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_busy_app_gets_another_machine_started_while_its_requests_go_on() {
    let ports = Ports::new();
    let ips = Ips::new();
    let mut text = format!(
        "{head}\n[lifecycle]\nstop_timeout = \"2s\"\n{app}\n",
        head = config_head(ports, ""),
        app = web_app(
            ports.http,
            r#"concurrency = { type = "requests", soft_limit = 1, hard_limit = 25 }"#
        ),
    );
    for (i, state) in [(1u8, "started"), (2, "stopped")] {
        text.push_str(&format!(
            "[[machine]]\nid = \"m{i}\"\napp = \"web\"\nregion = \"ams\"\nip = \"{}\"\ndriver = \"process\"\n{}\n",
            ips.get(i),
            demo_machine(state)
        ));
    }
    let tern = Tern::start(&text, ports);
    let up = eventually(Duration::from_secs(10), || states(&tern)["m1"] == "started").await;
    assert!(up, "{:?}", states(&tern));
    assert_eq!(states(&tern)["m2"], "stopped");

    // One slow request puts m1 at its soft limit.
    let port = ports.http;
    let slow = std::thread::spawn(move || {
        http_get_raw(("127.0.0.1", port), "/sleep/2000", "web.test").unwrap_or_default()
    });
    let busy = eventually(Duration::from_secs(5), || {
        let catalog = tern.admin_get("/catalog");
        catalog.contains("\"band\": \"over_soft\"")
    })
    .await;
    assert!(busy, "{}", tern.admin_get("/catalog"));
    // The next request is served at once by m1, and m2 starts meanwhile.
    let resp = get(&tern);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(header(&resp, "x-machine-id"), Some("m1"));
    assert_eq!(header(&resp, "tern-machine-start"), None, "it did not wait");
    let started = eventually(Duration::from_secs(10), || states(&tern)["m2"] == "started").await;
    assert!(started, "{:?}", states(&tern));
    let slow = slow.join().unwrap();
    assert!(slow.starts_with("HTTP/1.1 200"), "{slow}");
}
