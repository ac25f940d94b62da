//! The dashboard in a real browser: headless Chromium loads the admin page of a
//! running `tern demo` (and of a `tern run` with a token and 1000 machines), and
//! the rendered DOM is checked: machines with their states, a load bar that
//! moves under load, a spin provoked through the test hooks, and no script error.
//! Screenshots go to target/test-artifacts/.

mod common;

use std::time::Duration;

use common::browser::*;
use common::*;

#[test]
fn the_demo_dashboard_shows_machines_load_and_spins_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let [http, https, admin, machine] = [(); 4].map(|()| free_port());
    let mut demo = spawn_demo(
        dir.path(),
        [http, https, admin, machine],
        &[],
        &[("TERN_TEST_HOOKS", "1")],
    );
    let printed = demo_welcome(&mut demo);
    let url = format!("http://127.0.0.1:{admin}/");
    assert_eq!(
        printed.trim_start().lines().next(),
        Some(format!("Dashboard: {url}").as_str()),
        "the demo prints the dashboard's address first:\n{printed}"
    );

    // The demo's machines answer, then look.
    wait_until("the demo answers", Duration::from_secs(30), || {
        http_get_raw(("127.0.0.1", http), "/", "demo.localhost")
            .is_ok_and(|r| r.contains("Hello from machine m-demo-"))
    });
    let dom = dump_dom(&url, 3000);
    assert_eq!(page_failures(&dom), Vec::<String>::new(), "{dom}");
    assert!(
        updates(&dom) >= 2,
        "the page updated itself: {}",
        updates(&dom)
    );
    for id in ["m-demo-1", "m-demo-2", "m-demo-3"] {
        assert!(machine_row(&dom, id, "started"), "{id} started:\n{dom}");
    }
    assert!(machine_row(&dom, "m-sleepy-1", "stopped"), "{dom}");
    assert!(
        dom.contains(r#"data-node="demo-node""#),
        "the fleet shows this node"
    );
    assert!(!dom.contains(r#"<tr class="spin""#), "no spin yet");
    assert!(
        element_text(&dom, "conn-note").contains("live connection"),
        "the connections table is filled: {}",
        element_text(&dom, "conn-note")
    );
    assert_eq!(load_in_bars(&dom), 0, "no load yet");

    // Load: slow requests held open on the demo's machines.
    let slow: Vec<_> = (0..6)
        .map(|_| {
            std::thread::spawn(move || {
                // Held open for as long as the machine takes.
                let edge = ("127.0.0.1", http);
                http_get_raw_within(
                    edge,
                    "/sleep/20000",
                    "demo.localhost",
                    Duration::from_secs(60),
                )
            })
        })
        .collect();
    wait_until(
        "the slow requests are in flight",
        Duration::from_secs(10),
        || {
            let c = http_get_raw(("127.0.0.1", admin), "/catalog", "admin").unwrap_or_default();
            c.match_indices("\"load\": ")
                .filter_map(|(i, m)| {
                    c[i + m.len()..]
                        .split([',', '\n'])
                        .next()?
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
                .sum::<u64>()
                >= 6
        },
    );
    let loaded = dump_dom(&url, 2000);
    assert_eq!(page_failures(&loaded), Vec::<String>::new());
    assert_eq!(
        load_in_bars(&loaded),
        6,
        "the bars show the 6 requests in flight"
    );

    // A spin, through the test hook: the connection is cut, and the page lists it.
    let _ = http_get_raw(("127.0.0.1", http), "/__tern_test/spin", "demo.localhost");
    wait_until("the spin is recorded", Duration::from_secs(10), || {
        http_get_raw(("127.0.0.1", admin), "/dashboard.json", "admin")
            .unwrap_or_default()
            .contains("\"recent_spins\":[{")
    });
    let spun = dump_dom(&url, 2000);
    assert_eq!(page_failures(&spun), Vec::<String>::new());
    assert!(
        spun.contains(r#"<tr class="spin""#),
        "the spin is listed:\n{spun}"
    );
    assert!(spun.contains("polls without progress"), "with its cause");
    assert!(spun.contains("<td>close</td>"), "and the action taken");

    screenshot(&url, "dashboard-demo.png");
    for s in slow {
        let _ = s.join();
    }
    interrupt_demo(&mut demo, Duration::from_secs(30));
}

#[test]
fn a_token_guards_the_page_and_a_thousand_machines_render() {
    let ports = Ports::new();
    let token = "dashboard-test-token-0123";
    let mut config =
        config_head(ports, "").replace("[admin]\n", &format!("[admin]\ntoken = \"{token}\"\n"));
    config.push_str(&plain_app("big", ports.http, ""));
    for i in 0..1000 {
        let ip = format!("127.1.{}.{}", i / 250, i % 250 + 1);
        config.push_str(&machine(
            &format!("m-{i:04}"),
            "big",
            "ams",
            ip.parse().unwrap(),
        ));
    }
    let tern = Tern::start(&config, ports);
    let admin = ("127.0.0.1", ports.admin);

    // Without the token: the page, its data and the debug endpoints are refused;
    // health and metrics stay open.
    for path in ["/", "/dashboard.json", "/catalog", "/debug/connections"] {
        let resp = http_get_raw(admin, path, "admin").unwrap();
        assert!(resp.starts_with("HTTP/1.1 401"), "{path}: {resp}");
    }
    for path in ["/healthz", "/metrics"] {
        let resp = http_get_raw(admin, path, "admin").unwrap();
        assert!(resp.starts_with("HTTP/1.1 200"), "{path}: {resp}");
    }
    // `tern machine` passes the token on: given with --token, or read from the
    // --config file's [admin] token. Past the token check, the action itself is
    // refused (409: an external machine is not this node's to stop).
    let machine_cmd = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(["machine", "stop", "m-0000"])
            .args(extra)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let addr = format!("127.0.0.1:{}", ports.admin);
    let config_path = tern.dir.path().join("tern.toml");
    let config_path = config_path.to_str().unwrap();
    let refused = machine_cmd(&["--admin", &addr]);
    assert!(
        refused.contains("access token") && refused.contains("401"),
        "{refused}"
    );
    for given in [
        machine_cmd(&["--admin", &addr, "--token", token]),
        machine_cmd(&["--config", config_path]),
    ] {
        assert!(
            given.contains("(409 Conflict)") && !given.contains("access token"),
            "{given}"
        );
    }

    let wrong = dump_dom(
        &format!(
            "http://127.0.0.1:{}/?token=wrong-token-wrong-token",
            ports.admin
        ),
        1000,
    );
    assert!(
        !wrong.contains("data-updates"),
        "a wrong token gets no page"
    );

    // With it, in the browser: the page passes it on to every fetch.
    let url = format!("http://127.0.0.1:{}/?token={token}", ports.admin);
    let dom = dump_dom(&url, 3000);
    assert_eq!(page_failures(&dom), Vec::<String>::new());
    assert!(
        updates(&dom) >= 2,
        "the page updated itself: {}",
        updates(&dom)
    );
    let rows = dom.matches(r#"class="machine" data-id="m-"#).count();
    assert_eq!(rows, 1000, "every machine is listed");
    assert!(machine_row(&dom, "m-0999", "started"));
    screenshot(&url, "dashboard-1000-machines.png");
    drop(tern);
}
