//! Tests of parsing and validation as a whole, with exact diagnostic positions.
//! Each TOML snippet starts on line 1, so positions can be read off the source.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::*;

fn ok(src: &str) -> Config {
    match parse(src, Path::new("/etc/tern/tern.toml")) {
        Ok(c) => c,
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    }
}

fn errors(src: &str) -> Vec<String> {
    match parse(src, Path::new("t.toml")) {
        Ok(c) => panic!("expected an error, got {c:#?}"),
        Err(e) => e.diagnostics().iter().map(|d| d.to_string()).collect(),
    }
}

/// The single diagnostic of an invalid config.
fn error(src: &str) -> String {
    let errs = errors(src);
    assert_eq!(errs.len(), 1, "expected one error, got {errs:#?}");
    errs.into_iter().next().unwrap_or_default()
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const FULL: &str = r#"[node]
id = "ams-1"
region = "ams"
workers = 4
scheduler = "per-core"
yield_every_polls = 128
bind = "127.0.0.1"
upgrade_socket = "run/tern.sock"

[admin]
listen = "127.0.0.1:9191"

[tls]
certs_dir = "certs"
unknown_sni = "fallback"
handshake_timeout = "3s"
reload_interval = "500ms"

[limits]
header_read_timeout = "11s"
idle_timeout = "61s"
send_timeout = "62s"
body_read_timeout = "61s"
request_buffer = "32KiB"
max_header_bytes = "32KiB"
max_headers = 50
max_request_body = 1000
connect_timeout = "4s"
response_header_timeout = "59s"
max_connections_per_listener = 500
queue_size = 7
queue_timeout = "1s"
connect_attempts = 2
drain_timeout = "10s"

[log]
format = "json"
level = "tern=debug"

[[region]]
code = "ams"
rtt = { ord = "90ms", syd = "280ms" }

[[region]]
code = "ord"
rtt = { ams = "90ms" }

[[app]]
name = "demo"
hostnames = ["Demo.Localhost", "*.demo.localhost"]
max_request_body = "1MB"

[[app.service]]
internal_port = 8080
h2_backend = true
concurrency = { type = "requests", soft_limit = 5, hard_limit = 10 }
ports = [
  { port = 443, handlers = ["http", "tls"] },
  { port = 80, handlers = ["http"], force_https = true },
  { port = 5432, handlers = [] },
  { port = 6000, handlers = ["proxy_proto"], proxy_proto_options = { version = "v2" } },
  { port = 6001, handlers = ["tls", "proxy_proto"] },
  { port = 8443, handlers = ["tls"] },
]
tcp_checks = [{ interval = "15s", timeout = "2s", grace_period = "0s" }]
http_checks = [{ interval = "10s", timeout = "2s", grace_period = "5s", path = "/healthz", method = "HEAD" }]

[[app]]
name = "other"
hostnames = ["other.localhost"]

[[app.service]]
internal_port = 9000
ports = [{ port = 443, handlers = ["tls", "http"] }, { port = 8443, handlers = ["tls"] }]

[[machine]]
id = "m-ams-1"
app = "demo"
region = "ams"
ip = "127.0.0.11"

[[machine]]
id = "m-ord-1"
app = "other"
region = "ord"
ip = "::1"
state = "stopped"
"#;

#[test]
fn full_config_round_trips() {
    let c = ok(FULL);
    assert_eq!(
        c.node,
        Node {
            id: "ams-1".into(),
            region: "ams".into(),
            workers: 4,
            scheduler: Scheduler::PerCore,
            yield_every_polls: 128,
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            upgrade_socket: Some(PathBuf::from("/etc/tern/run/tern.sock")),
        }
    );
    assert_eq!(
        c.admin.listen,
        "127.0.0.1:9191".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(
        c.tls,
        Tls {
            certs_dir: Some(PathBuf::from("/etc/tern/certs")),
            unknown_sni: UnknownSni::DefaultCert("fallback".into()),
            handshake_timeout: secs(3),
            reload_interval: ms(500),
        }
    );
    assert_eq!(
        c.limits,
        Limits {
            header_read_timeout: secs(11),
            idle_timeout: secs(61),
            send_timeout: secs(62),
            body_read_timeout: secs(61),
            request_buffer: 32 * 1024,
            max_header_bytes: 32 * 1024,
            max_headers: 50,
            max_request_body: 1000,
            connect_timeout: secs(4),
            response_header_timeout: secs(59),
            max_connections_per_listener: 500,
            queue_size: 7,
            queue_timeout: secs(1),
            connect_attempts: 2,
            drain_timeout: secs(10),
        }
    );
    assert_eq!(
        c.log,
        Log {
            format: LogFormat::Json,
            level: "tern=debug".into()
        }
    );
    let rtt: BTreeMap<(String, String), Duration> = [
        (("ams".to_owned(), "ord".to_owned()), ms(90)),
        (("ams".to_owned(), "syd".to_owned()), ms(280)),
    ]
    .into_iter()
    .collect();
    assert_eq!(c.regions.rtt, rtt);
    assert_eq!(c.regions.rtt("syd", "ams"), Some(ms(280)));

    let tls_http = Handlers {
        tls: true,
        http: true,
        proxy_proto: None,
    };
    let tls_only = Handlers {
        tls: true,
        http: false,
        proxy_proto: None,
    };
    let port = |port, handlers, force_https| Port {
        port,
        handlers,
        force_https,
    };
    assert_eq!(
        c.apps,
        vec![
            App {
                name: "demo".into(),
                hostnames: vec!["demo.localhost".into(), "*.demo.localhost".into()],
                max_request_body: Some(1_000_000),
                acme_hostnames: Vec::new(),
                services: vec![Service {
                    internal_port: 8080,
                    h2_backend: true,
                    concurrency: Concurrency {
                        kind: ConcurrencyKind::Requests,
                        soft_limit: 5,
                        hard_limit: 10,
                    },
                    ports: vec![
                        port(443, tls_http, false),
                        port(
                            80,
                            Handlers {
                                tls: false,
                                http: true,
                                proxy_proto: None
                            },
                            true
                        ),
                        port(
                            5432,
                            Handlers {
                                tls: false,
                                http: false,
                                proxy_proto: None
                            },
                            false
                        ),
                        port(
                            6000,
                            Handlers {
                                tls: false,
                                http: false,
                                proxy_proto: Some(ProxyProtoVersion::V2)
                            },
                            false
                        ),
                        port(
                            6001,
                            Handlers {
                                tls: true,
                                http: false,
                                proxy_proto: Some(ProxyProtoVersion::V1)
                            },
                            false
                        ),
                        port(8443, tls_only, false),
                    ],
                    tcp_checks: vec![TcpCheck {
                        interval: secs(15),
                        timeout: secs(2),
                        grace_period: Duration::ZERO,
                    }],
                    http_checks: vec![HttpCheck {
                        interval: secs(10),
                        timeout: secs(2),
                        grace_period: secs(5),
                        path: "/healthz".into(),
                        method: "HEAD".into(),
                    }],
                    autostart: true,
                    autostop: AutoStop::Off,
                    min_machines_running: 0,
                }],
            },
            App {
                name: "other".into(),
                hostnames: vec!["other.localhost".into()],
                max_request_body: None,
                acme_hostnames: Vec::new(),
                services: vec![Service {
                    internal_port: 9000,
                    h2_backend: false,
                    concurrency: Concurrency {
                        kind: ConcurrencyKind::Connections,
                        soft_limit: 20,
                        hard_limit: 25,
                    },
                    ports: vec![port(443, tls_http, false), port(8443, tls_only, false)],
                    tcp_checks: vec![],
                    http_checks: vec![],
                    autostart: true,
                    autostop: AutoStop::Off,
                    min_machines_running: 0,
                }],
            },
        ]
    );
    assert_eq!(
        c.machines,
        vec![
            Machine {
                id: "m-ams-1".into(),
                app: "demo".into(),
                region: "ams".into(),
                node: Some("ams-1".into()),
                ip: "127.0.0.11".parse().unwrap(),
                state: MachineState::Started,
                driver: Driver::External,
            },
            Machine {
                id: "m-ord-1".into(),
                app: "other".into(),
                region: "ord".into(),
                node: Some("ams-1".into()),
                ip: "::1".parse().unwrap(),
                state: MachineState::Stopped,
                driver: Driver::External,
            },
        ]
    );
}

#[test]
fn minimal_config_gets_defaults() {
    let c = ok(r#"[node]
id = "n"
region = "ams"
[[app]]
name = "demo"
[[app.service]]
internal_port = 8080
[[machine]]
id = "m"
app = "demo"
region = "ams"
ip = "127.0.0.11"
"#);
    assert!(c.node.workers >= 1);
    assert_eq!(c.node.yield_every_polls, 64);
    assert_eq!(c.node.bind, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    assert_eq!(
        c.admin.listen,
        "127.0.0.1:9090".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(
        c.tls,
        Tls {
            certs_dir: None,
            unknown_sni: UnknownSni::Reject,
            handshake_timeout: secs(10),
            reload_interval: secs(2),
        }
    );
    assert_eq!(
        c.limits,
        Limits {
            header_read_timeout: secs(10),
            idle_timeout: secs(60),
            send_timeout: secs(60),
            body_read_timeout: secs(60),
            request_buffer: 16 * 1024,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_request_body: 64 * 1024 * 1024,
            connect_timeout: secs(5),
            response_header_timeout: secs(60),
            max_connections_per_listener: 10_000,
            queue_size: 100,
            queue_timeout: secs(5),
            connect_attempts: 3,
            drain_timeout: secs(30),
        }
    );
    assert_eq!(c.log.format, LogFormat::Text);
    assert_eq!(c.log.level, "info");
    assert!(c.regions.rtt.is_empty());
    let s = &c.apps[0].services[0];
    assert!(!s.h2_backend);
    assert_eq!(
        s.concurrency,
        Concurrency {
            kind: ConcurrencyKind::Connections,
            soft_limit: 20,
            hard_limit: 25
        }
    );
    assert!(s.ports.is_empty());
    assert_eq!(c.machines[0].state, MachineState::Started);
}

#[test]
fn check_defaults() {
    let c = ok(r#"[node]
id = "n"
region = "ams"
[[app]]
name = "demo"
[[app.service]]
internal_port = 8080
tcp_checks = [{}]
http_checks = [{}]
"#);
    let s = &c.apps[0].services[0];
    assert_eq!(
        s.tcp_checks,
        vec![TcpCheck {
            interval: secs(15),
            timeout: secs(2),
            grace_period: secs(1)
        }]
    );
    assert_eq!(
        s.http_checks,
        vec![HttpCheck {
            interval: secs(10),
            timeout: secs(2),
            grace_period: secs(5),
            path: "/".into(),
            method: "GET".into()
        }]
    );
}

#[test]
fn no_apps_is_valid() {
    let c = ok("[node]\nid = \"n\"\nregion = \"ams\"\n");
    assert!(c.apps.is_empty());
    assert!(c.machines.is_empty());
}

#[test]
fn syntax_error() {
    assert_eq!(
        error("[node]\nid = = \"n\"\n"),
        "t.toml:2:6: extra `=`, expected nothing"
    );
}

#[test]
fn yield_every_polls_takes_zero_for_never_and_refuses_negatives() {
    let never = ok("[node]\nid = \"n\"\nregion = \"ams\"\nyield_every_polls = 0\n");
    assert_eq!(never.node.yield_every_polls, 0);
    let e = error("[node]\nid = \"n\"\nregion = \"ams\"\nyield_every_polls = -1\n");
    assert!(
        e.starts_with(
            "t.toml:4:21: node.yield_every_polls must be between 0 and 4294967295, got -1"
        ),
        "{e}"
    );
}

#[test]
fn unknown_scheduler_is_located_and_named() {
    let e = error("[node]\nid = \"n\"\nregion = \"ams\"\nscheduler = \"fifo\"\n");
    assert!(
        e.starts_with("t.toml:4:13: unknown node.scheduler \"fifo\"")
            && e.contains("\"work-stealing\" or \"per-core\""),
        "{e}"
    );
    let default = ok("[node]\nid = \"n\"\nregion = \"ams\"\n");
    assert_eq!(default.node.scheduler, Scheduler::WorkStealing);
    let e = error("[node]\nid = \"n\"\nregion = \"ams\"\nworkers = 4\nscheduler = \"per-core\"\n[limits]\nmax_connections_per_listener = 2\n");
    assert!(
        e.starts_with("t.toml:5:13: node.scheduler \"per-core\" needs limits.max_connections_per_listener (2) to be at least node.workers (4)"),
        "{e}"
    );
}

#[test]
fn unknown_key() {
    assert_eq!(
        error("[node]\nid = \"n\"\nregion = \"ams\"\nname = \"x\"\n"),
        "t.toml:4:1: unknown field `name`, expected one of `id`, `region`, `workers`, `scheduler`, `yield_every_polls`, `bind`, `upgrade_socket`"
    );
    assert_eq!(
        error("[node]\nid = \"n\"\nregion = \"ams\"\n[nodes]\n"),
        "t.toml:4:2: unknown field `nodes`, expected one of `node`, `admin`, `tls`, `limits`, `overload`, `lifecycle`, `log`, `watchdog`, `backhaul`, `catalog`, `acme`, `region`, `app`, `machine`"
    );
}

#[test]
fn wrong_type() {
    assert_eq!(
        error("[node]\nid = \"n\"\nregion = \"ams\"\nworkers = \"4\"\n"),
        "t.toml:4:11: invalid type: string \"4\", expected an integer"
    );
    assert_eq!(
        error("[node]\nid = \"n\"\nregion = \"ams\"\n[limits]\nidle_timeout = 60\n"),
        "t.toml:5:16: invalid type: integer `60`, expected a duration string such as \"10s\" or \"250ms\""
    );
}

#[test]
fn wrong_type_names_toml_types() {
    assert_eq!(
        error("node = 5\n"),
        "t.toml:1:8: invalid type: integer `5`, expected a table"
    );
    assert_eq!(
        error(&format!("{APP_HEAD}ports = 80\n")),
        "t.toml:8:9: invalid type: integer `80`, expected an array"
    );
}

#[test]
fn missing_required_field() {
    assert_eq!(
        error("[node]\nregion = \"ams\"\n"),
        "t.toml:1:1: missing field `id`"
    );
    assert_eq!(
        error(
            r#"[node]
id = "n"
region = "ams"
[[app]]
name = "demo"
[[app.service]]
internal_port = 1
ports = [{ handlers = ["http"] }]
"#
        ),
        "t.toml:8:10: missing field `port`"
    );
}

const APP_HEAD: &str = "[node]\nid = \"n\"\nregion = \"ams\"\n[[app]]\nname = \"demo\"\n[[app.service]]\ninternal_port = 8080\n";

#[test]
fn bad_handler_stack() {
    // Lines 1-7 are APP_HEAD.
    assert_eq!(
        error(&format!(
            "{APP_HEAD}ports = [{{ port = 80, handlers = [\"http\", \"proxy_proto\"] }}]\n"
        )),
        "t.toml:8:34: handlers [\"http\", \"proxy_proto\"] are not a supported stack; allowed stacks are [] (raw TCP), [\"tls\"], [\"http\"], [\"tls\", \"http\"], [\"proxy_proto\"], [\"tls\", \"proxy_proto\"]"
    );
    assert_eq!(
        error(&format!(
            "{APP_HEAD}ports = [{{ port = 80, handlers = [\"http\", \"h2\"] }}]\n"
        )),
        "t.toml:8:43: unknown handler \"h2\"; allowed handlers are \"tls\", \"http\" and \"proxy_proto\""
    );
    assert_eq!(
        error(&format!(
            "{APP_HEAD}ports = [{{ port = 80, handlers = [\"http\", \"http\"] }}]\n"
        )),
        "t.toml:8:43: handler \"http\" is already listed at 8:35"
    );
    assert_eq!(
        error(&format!(
            "{APP_HEAD}ports = [{{ port = 80, handlers = [\"tls\"], proxy_proto_options = {{ version = \"v2\" }} }}]\n"
        )),
        "t.toml:8:65: proxy_proto_options is only allowed when handlers include \"proxy_proto\""
    );
}

#[test]
fn force_https_on_tls_port() {
    assert_eq!(
        error(&format!(
            "{APP_HEAD}ports = [{{ port = 443, handlers = [\"tls\", \"http\"], force_https = true }}]\n"
        )),
        "t.toml:8:66: force_https is only allowed on a port whose handlers are exactly [\"http\"], but this port's handlers are [\"tls\", \"http\"]"
    );
}

#[test]
fn soft_limit_above_hard_limit() {
    assert_eq!(
        error(&format!(
            "{APP_HEAD}concurrency = {{ type = \"requests\", soft_limit = 30, hard_limit = 25 }}\n"
        )),
        "t.toml:8:49: concurrency.soft_limit (30) must not exceed hard_limit (25)"
    );
}

#[test]
fn duplicate_hostname_across_apps() {
    assert_eq!(
        error(r#"[node]
id = "n"
region = "ams"
[[app]]
name = "a"
hostnames = ["x.example.com"]
[[app]]
name = "b"
hostnames = ["y.example.com", "X.Example.com"]
"#),
        "t.toml:9:31: hostname \"x.example.com\" is already used by app \"a\" at 6:14; each hostname routes to one app"
    );
}

#[test]
fn raw_tcp_port_shared_by_two_apps() {
    assert_eq!(
        error(r#"[node]
id = "n"
region = "ams"
[[app]]
name = "a"
[[app.service]]
internal_port = 5432
ports = [{ port = 5432, handlers = [] }]
[[app]]
name = "b"
[[app.service]]
internal_port = 5432
ports = [{ port = 5432, handlers = ["proxy_proto"] }]
"#),
        "t.toml:13:19: raw TCP port 5432 already belongs to app \"a\" at 8:19; a raw TCP port cannot be routed by name, so only one app may use it"
    );
}

#[test]
fn shared_port_must_agree_on_tls_and_http() {
    assert_eq!(
        error(r#"[node]
id = "n"
region = "ams"
[[app]]
name = "a"
[[app.service]]
internal_port = 1
ports = [{ port = 443, handlers = ["tls", "http"] }]
[[app]]
name = "b"
[[app.service]]
internal_port = 1
ports = [{ port = 443, handlers = ["tls"] }]
"#),
        "t.toml:13:19: port 443 is TLS (SNI-routed TCP) here but TLS+HTTP in app \"a\" at 8:19; apps sharing a port must agree on \"tls\" and \"http\" handlers"
    );
}

#[test]
fn port_reused_within_an_app() {
    assert_eq!(
        errors(&format!(
            "{APP_HEAD}ports = [{{ port = 80, handlers = [\"http\"] }}, {{ port = 80, handlers = [\"http\"] }}]\n[[app.service]]\ninternal_port = 8080\nports = [{{ port = 80, handlers = [\"http\"] }}]\n"
        )),
        vec![
            "t.toml:8:55: port 80 is already used by this service at 8:19; a port may appear once per app",
            "t.toml:10:17: internal_port 8080 is already used by another service of app \"demo\" at 7:17",
            "t.toml:11:19: port 80 is already used by another service of app \"demo\" at 8:19; a port may appear once per app",
        ]
    );
}

#[test]
fn port_out_of_range() {
    assert_eq!(
        error(&format!(
            "{APP_HEAD}ports = [{{ port = 70000, handlers = [] }}]\n"
        )),
        "t.toml:8:19: port 70000 is out of range; expected 1..=65535"
    );
}

#[test]
fn admin_port_clash() {
    assert_eq!(
        error(&format!("{APP_HEAD}ports = [{{ port = 9090, handlers = [\"http\"] }}]\n")),
        "t.toml:8:19: port 9090 on 0.0.0.0 clashes with admin.listen 127.0.0.1:9090 (the default); use another port or bind them to different addresses"
    );
    // Different, specific addresses do not clash.
    let src = format!(
        "{}\nbind = \"127.0.0.2\"\n{}ports = [{{ port = 9090, handlers = [\"http\"] }}]\n",
        "[node]\nid = \"n\"\nregion = \"ams\"",
        "[[app]]\nname = \"demo\"\n[[app.service]]\ninternal_port = 8080\n"
    );
    ok(&src);
}

#[test]
fn machine_names_unknown_app() {
    assert_eq!(
        error(r#"[node]
id = "n"
region = "ams"
[[app]]
name = "demo"
[[machine]]
id = "m-1"
app = "dmeo"
region = "ams"
ip = "127.0.0.11"
"#),
        "t.toml:8:7: machine \"m-1\" names app \"dmeo\", which is not defined; defined apps: \"demo\""
    );
}

#[test]
fn bad_duration() {
    assert_eq!(
        error("[node]\nid = \"n\"\nregion = \"ams\"\n[tls]\nhandshake_timeout = \"10 parsecs\"\n"),
        "t.toml:5:21: tls.handshake_timeout: invalid duration \"10 parsecs\": unknown time unit \"parsecs\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations); expected a number with a unit, like \"10s\", \"250ms\" or \"1m30s\""
    );
    assert_eq!(
        error("[node]\nid = \"n\"\nregion = \"ams\"\n[limits]\nidle_timeout = \"0s\"\n"),
        "t.toml:5:16: limits.idle_timeout must be greater than 0"
    );
}

#[test]
fn bad_size() {
    assert_eq!(
        error("[node]\nid = \"n\"\nregion = \"ams\"\n[limits]\nmax_request_body = \"64MiBs\"\n"),
        "t.toml:5:20: limits.max_request_body: invalid size \"64MiBs\": unknown unit \"MiBs\"; expected integer bytes or a string like \"64KiB\" (units: B, KB, MB, GB, KiB, MiB, GiB)"
    );
    assert_eq!(
        error("[node]\nid = \"n\"\nregion = \"ams\"\n[limits]\nmax_header_bytes = -1\n"),
        "t.toml:5:20: limits.max_header_bytes must not be negative"
    );
    assert_eq!(
        error("[node]\nid = \"n\"\nregion = \"ams\"\n[limits]\nrequest_buffer = \"2MiB\"\n"),
        "t.toml:5:18: limits.request_buffer must be at most 1048576 bytes (1MiB): it is held in memory for every request whose body is arriving"
    );
}

#[test]
fn check_timeout_above_interval() {
    assert_eq!(
        error(&format!(
            "{APP_HEAD}http_checks = [{{ interval = \"1s\", timeout = \"2s\", path = \"/\" }}]\n"
        )),
        "t.toml:8:45: http_checks.timeout (2s) must not exceed interval (1s)"
    );
}

#[test]
fn unknown_sni_needs_certs_dir() {
    assert_eq!(
        error("[node]\nid = \"n\"\nregion = \"ams\"\n[tls]\nunknown_sni = \"default\"\n"),
        "t.toml:5:15: tls.unknown_sni names certificate \"default\" but tls.certs_dir is not set; set certs_dir or use \"reject\""
    );
}

#[test]
fn conflicting_rtt() {
    assert_eq!(
        error(r#"[node]
id = "n"
region = "ams"
[[region]]
code = "ams"
rtt = { ord = "90ms" }
[[region]]
code = "ord"
rtt = { ams = "95ms" }
"#),
        "t.toml:9:15: conflicting rtt between \"ams\" and \"ord\": 95ms here but 90ms at 6:15; RTTs are symmetric, give one value"
    );
}

#[test]
fn several_errors_are_reported_together() {
    let src = r#"[node]
id = ""
region = "AMS"
[limits]
queue_timeout = "soon"
[[app]]
name = "demo"
hostnames = ["bad_name.com"]
[[app.service]]
internal_port = 8080
concurrency = { soft_limit = 0 }
ports = [{ port = 0, handlers = ["tcp"] }]
http_checks = [{ path = "healthz", method = "get" }]
[[machine]]
id = "m"
app = "nope"
region = "ams"
ip = "localhost"
state = "running"
"#;
    let err = parse(src, Path::new("t.toml")).unwrap_err();
    let positions: Vec<(usize, usize)> = err
        .diagnostics()
        .iter()
        .map(|d| (d.line, d.column))
        .collect();
    assert_eq!(
        positions,
        vec![
            (2, 6),
            (3, 10),
            (5, 17),
            (8, 14),
            (11, 30),
            (12, 19),
            (12, 34),
            (13, 25),
            (13, 45),
            (16, 7),
            (18, 6),
            (19, 9),
        ],
        "{err}"
    );
    // Display is one `FILE:LINE:COL: MESSAGE` line per diagnostic.
    let text = err.to_string();
    assert_eq!(text.lines().count(), positions.len());
    assert!(
        text.starts_with("t.toml:2:6: node.id must not be empty\n"),
        "{text}"
    );
    assert!(text.contains("t.toml:3:10: node.region \"AMS\" contains 'A'; only lowercase letters a-z, digits 0-9 and '-' are allowed"), "{text}");
    assert!(text.ends_with("t.toml:19:9: unknown machine state \"running\"; expected one of \"created\", \"started\", \"stopped\", \"suspended\" (the others are passing states that only Tern sets)"), "{text}");
}

#[test]
fn load_reports_unreadable_file() {
    let err = load(Path::new("/nonexistent/tern.toml")).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(err
        .to_string()
        .starts_with("/nonexistent/tern.toml: cannot read configuration: "));
    assert!(err.diagnostics().is_empty());
}

#[test]
fn columns_count_characters() {
    // "é" is two bytes but one column.
    assert_eq!(
        error("[node]\nid = \"n\"\nregion = \"ams\"\n[log]\nformat = \"é\" \n"),
        "t.toml:5:10: unknown log.format \"é\"; expected \"text\" or \"json\""
    );
    assert_eq!(
        error("[node]\nid = \"n\"\nregion = \"ams\"\n[log]\nlevel = \"é\"; format = 1\n"),
        "t.toml:5:12: unexpected key or value, expected newline, `#`"
    );
}

#[test]
fn watchdog_defaults_and_values() {
    let c = parse(
        "[node]\nid = \"n\"\nregion = \"ams\"\n",
        std::path::Path::new("t.toml"),
    )
    .unwrap();
    assert!(c.watchdog.enabled);
    assert_eq!(c.watchdog.spin_polls, 1000);
    assert_eq!(
        c.watchdog.spin_window,
        std::time::Duration::from_millis(100)
    );
    assert_eq!(c.watchdog.action, SpinAction::Close);
    assert_eq!(c.watchdog.runtime_action, RuntimeAction::Exit);

    let c = parse(
        "[node]\nid = \"n\"\nregion = \"ams\"\n[watchdog]\naction = \"backoff\"\nspin_polls = 50\nruntime_action = \"log\"\nenabled = false\n",
        std::path::Path::new("t.toml"),
    )
    .unwrap();
    assert!(!c.watchdog.enabled);
    assert_eq!(c.watchdog.spin_polls, 50);
    assert_eq!(c.watchdog.action, SpinAction::Backoff);
    assert_eq!(c.watchdog.runtime_action, RuntimeAction::Log);

    let e = parse(
        "[node]\nid = \"n\"\nregion = \"ams\"\n[watchdog]\naction = \"kill\"\n",
        std::path::Path::new("t.toml"),
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "t.toml:5:10: unknown watchdog.action \"kill\"; expected \"close\", \"backoff\" or \"log\""
    );
}

// ---- the fleet: catalog files, the backhaul, etcd

const FLEET: &str = r#"[[node]]
id = "ams-1"
region = "ams"
backhaul = "127.0.0.1:4431"

[[node]]
id = "ord-1"
region = "ord"
backhaul = "127.0.0.1:4432"

[[app]]
name = "web"
hostnames = ["web.test"]

[[app.service]]
internal_port = 7000
ports = [{ port = 8080, handlers = ["http"] }]

[[machine]]
id = "m1"
app = "web"
region = "ams"
node = "ams-1"
ip = "127.0.0.11"

[[machine]]
id = "m2"
app = "web"
region = "ord"
node = "ord-1"
ip = "127.0.0.12"
"#;

fn catalog_errors(src: &str, used: CatalogUse) -> Vec<String> {
    match parse_catalog(src, Path::new("c.toml"), used) {
        Ok(c) => panic!("expected an error, got {c:#?}"),
        Err(e) => e.diagnostics().iter().map(|d| d.to_string()).collect(),
    }
}

#[test]
fn a_catalog_file_lists_nodes_and_their_machines() {
    let c = parse_catalog(FLEET, Path::new("c.toml"), CatalogUse::File).unwrap();
    assert_eq!(c.nodes.len(), 2);
    assert_eq!(c.nodes[1].backhaul, "127.0.0.1:4432".parse().unwrap());
    assert_eq!(c.machines[1].node.as_deref(), Some("ord-1"));

    let unknown = FLEET.replace("node = \"ord-1\"", "node = \"syd-1\"");
    assert_eq!(
        catalog_errors(&unknown, CatalogUse::File),
        ["c.toml:30:8: machine \"m2\" names node \"syd-1\", which is not listed; listed nodes: \"ams-1\", \"ord-1\""]
    );
    let unnamed = FLEET.replace("node = \"ord-1\"\n", "");
    assert_eq!(
        catalog_errors(&unnamed, CatalogUse::File),
        ["c.toml:27:6: machine \"m2\" names no node; this catalog lists its nodes, so each machine says which one runs it (node = \"...\")"]
    );
}

#[test]
fn a_catalog_for_etcd_has_no_nodes_and_names_every_machines_node() {
    let errs = catalog_errors(FLEET, CatalogUse::Etcd);
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert!(errs[0].starts_with("c.toml:1:1: a catalog for etcd has no [[node]] entries"));
    let without_nodes = &FLEET[FLEET.find("[[app]]").unwrap()..];
    let c = parse_catalog(without_nodes, Path::new("c.toml"), CatalogUse::Etcd).unwrap();
    assert_eq!(c.machines.len(), 2);
    let unnamed = without_nodes.replace("node = \"ams-1\"\n", "");
    let errs = catalog_errors(&unnamed, CatalogUse::Etcd);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(
        errs[0].contains("machine \"m1\" names no node; in etcd"),
        "{errs:?}"
    );
}

/// A node's configuration naming the catalog file `FLEET` in a fresh directory.
fn fleet_node(head: &str) -> Result<Config, Vec<String>> {
    let dir = std::env::temp_dir().join(format!("tern-config-fleet-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("fleet.toml"), FLEET).unwrap();
    let path = dir.join(format!(
        "node-{:x}.toml",
        head.len() * 31 + head.bytes().map(usize::from).sum::<usize>()
    ));
    std::fs::write(&path, head).unwrap();
    load(&path).map_err(|e| e.diagnostics().iter().map(|d| d.message.clone()).collect())
}

#[test]
fn a_node_reads_the_fleet_from_its_catalog_file() {
    let backhaul = "[backhaul]\nlisten = \"127.0.0.1:4432\"\nca = \"ca.crt\"\ncert = \"n.crt\"\nkey = \"n.key\"\n[catalog]\nfile = \"fleet.toml\"\n";
    let c = fleet_node(&format!(
        "[node]\nid = \"ord-1\"\nregion = \"ord\"\n{backhaul}"
    ))
    .unwrap();
    assert_eq!(c.apps.len(), 1);
    assert_eq!(c.nodes.len(), 2);
    let b = c.backhaul.unwrap();
    assert_eq!(b.advertise, "127.0.0.1:4432".parse().unwrap());
    assert_eq!(b.ping_interval, secs(1));
    assert!(b.ca.ends_with("ca.crt") && b.ca.is_absolute());

    let stranger = fleet_node(&format!(
        "[node]\nid = \"syd-1\"\nregion = \"syd\"\n{backhaul}"
    ))
    .unwrap_err();
    assert_eq!(stranger.len(), 1, "{stranger:?}");
    assert!(
        stranger[0].starts_with("node.id \"syd-1\" is not among the catalog file's nodes"),
        "{stranger:?}"
    );

    let elsewhere = fleet_node(&format!(
        "[node]\nid = \"ams-1\"\nregion = \"ams\"\n{backhaul}"
    ))
    .unwrap_err();
    assert_eq!(
        elsewhere,
        ["this node's backhaul address is 127.0.0.1:4432 but the catalog file gives 127.0.0.1:4431 for node \"ams-1\"; peers dial the catalog's address"]
    );

    let alone =
        fleet_node("[node]\nid = \"ord-1\"\nregion = \"ord\"\n[catalog]\nfile = \"fleet.toml\"\n")
            .unwrap_err();
    assert_eq!(
        alone,
        ["machine \"m1\" runs on node \"ams-1\", which this node can reach only over the backhaul; add a [backhaul] section"]
    );

    let missing = fleet_node(
        "[node]\nid = \"ord-1\"\nregion = \"ord\"\n[catalog]\nfile = \"nowhere.toml\"\n",
    )
    .unwrap_err();
    assert_eq!(missing.len(), 1);
    assert!(
        missing[0].starts_with("cannot read catalog file"),
        "{missing:?}"
    );
}

#[test]
fn an_etcd_catalog_keeps_definitions_out_of_the_file() {
    let c = ok("[node]\nid = \"n\"\nregion = \"ams\"\n[catalog]\nsource = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]\nlease_ttl = \"3s\"\n");
    let CatalogSource::Etcd(e) = c.catalog else {
        panic!("etcd expected");
    };
    assert_eq!(e.prefix, "/tern");
    assert_eq!(e.lease_ttl, secs(3));
    assert_eq!(e.dial_timeout, secs(2));

    assert_eq!(
        error("[node]\nid = \"n\"\nregion = \"ams\"\n[catalog]\nsource = \"etcd\"\n[[app]]\nname = \"a\"\n"),
        "t.toml:7:8: catalog.source at 5:10 is \"etcd\": apps, machines and regions live in etcd (push them with `tern catalog push`), not in this file"
    );
    assert_eq!(
        error("[node]\nid = \"n\"\nregion = \"ams\"\n[catalog]\nsource = \"etcd\"\nprefix = \"tern/\"\n"),
        "t.toml:6:10: catalog.prefix \"tern/\" must start with '/', not end with one, and name something, e.g. \"/tern\""
    );
    assert_eq!(
        error("[node]\nid = \"n\"\nregion = \"ams\"\n[catalog]\nendpoints = [\"http://x:1\"]\n"),
        "t.toml:5:13: catalog.endpoints is only for catalog.source = \"etcd\""
    );
    assert_eq!(
        error("[node]\nid = \"n\"\nregion = \"ams\"\n[catalog]\nsource = \"consul\"\n"),
        "t.toml:5:10: unknown catalog.source \"consul\"; expected \"file\" or \"etcd\""
    );
}

#[test]
fn an_inline_machine_runs_on_this_node() {
    let c = ok("[node]\nid = \"n\"\nregion = \"ams\"\n[[app]]\nname = \"a\"\n[[machine]]\nid = \"m\"\napp = \"a\"\nregion = \"ams\"\nip = \"127.0.0.2\"\n");
    assert_eq!(c.machines[0].node.as_deref(), Some("n"));
    let err = error("[node]\nid = \"n\"\nregion = \"ams\"\n[[app]]\nname = \"a\"\n[[machine]]\nid = \"m\"\napp = \"a\"\nregion = \"ams\"\nnode = \"o\"\nip = \"127.0.0.2\"\n");
    assert!(err.starts_with("t.toml:10:8: machine \"m\" runs on node \"o\", but this file describes node \"n\" alone"), "{err}");
}

#[test]
fn overload_budgets() {
    let base = "[node]\nid = \"n\"\nregion = \"ams\"\n";
    assert_eq!(
        ok(base).overload,
        Overload::default(),
        "no budget unless set"
    );
    let c = ok(&format!(
        "{base}[overload]\nmax_connections = 20000\nmax_memory = \"512MiB\"\n"
    ));
    assert_eq!(
        c.overload,
        Overload {
            max_connections: Some(20000),
            max_memory: Some(512 << 20),
        }
    );
    assert_eq!(
        error(&format!("{base}[overload]\nmax_connections = 0\n")),
        "t.toml:5:19: overload.max_connections must be at least 1, got 0"
    );
    assert_eq!(
        error(&format!("{base}[overload]\nmax_memory = \"1MiB\"\n")),
        "t.toml:5:14: overload.max_memory must be at least 16777216 byte(s)"
    );
    assert!(
        error(&format!("{base}[overload]\nmax_requests = 5\n")).starts_with(
            "t.toml:5:1: unknown field `max_requests`, expected `max_connections` or `max_memory`"
        )
    );
}

const LIFECYCLE_APP: &str = r#"[node]
id = "n1"
region = "ams"
[[app]]
name = "web"
[[app.service]]
internal_port = 7000
"#;

#[test]
fn process_machines_and_their_lifecycle_settings() {
    let c = ok(&format!(
        r#"{LIFECYCLE_APP}auto_stop_machines = "suspend"
min_machines_running = 1
auto_start_machines = false
[lifecycle]
start_timeout = "3s"
idle_timeout = "1m"
[[machine]]
id = "m1"
app = "web"
region = "ams"
ip = "127.0.0.2"
driver = "process"
command = ["./server", "--port", "7000"]
dir = "/srv/web"
env = {{ GREETING = "hi" }}
"#
    ));
    let s = &c.apps[0].services[0];
    assert_eq!(s.autostop, AutoStop::Suspend);
    assert_eq!(s.min_machines_running, 1);
    assert!(!s.autostart);
    assert_eq!(c.lifecycle.start_timeout, secs(3));
    assert_eq!(c.lifecycle.idle_timeout, secs(60));
    assert_eq!(c.lifecycle.stop_timeout, secs(10), "the default");
    assert_eq!(
        c.machines[0].driver,
        Driver::Process(ProcessSpec {
            command: vec!["./server".into(), "--port".into(), "7000".into()],
            dir: Some("/srv/web".into()),
            env: BTreeMap::from([("GREETING".into(), "hi".into())]),
        })
    );
    let defaults = ok(LIFECYCLE_APP);
    assert!(defaults.apps[0].services[0].autostart);
    assert_eq!(defaults.apps[0].services[0].autostop, AutoStop::Off);
}

#[test]
fn process_machine_settings_that_cannot_work_are_refused() {
    let machine = |extra: &str| {
        format!(
            "{LIFECYCLE_APP}[[machine]]\nid = \"m1\"\napp = \"web\"\nregion = \"ams\"\nip = \"127.0.0.2\"\n{extra}\n"
        )
    };
    let e = error(&machine("driver = \"process\""));
    assert!(e.contains("has driver = \"process\" but no command"), "{e}");
    let e = error(&machine("command = [\"./server\"]"));
    assert!(
        e.contains("command is only for driver = \"process\""),
        "{e}"
    );
    let e = error(&machine("driver = \"vm\""));
    assert!(e.contains("unknown machine driver \"vm\""), "{e}");
    let e = error(&machine("state = \"starting\""));
    assert!(e.contains("passing states that only Tern sets"), "{e}");
    let e = error(&format!("{LIFECYCLE_APP}auto_stop_machines = \"yes\"\n"));
    assert!(e.contains("unknown auto_stop_machines \"yes\""), "{e}");
    let e = error(&format!(
        "{LIFECYCLE_APP}[lifecycle]\nstart_timeout = \"0s\"\n"
    ));
    assert!(e.contains("lifecycle.start_timeout"), "{e}");
}

const ACME_NODE: &str = "[node]\nid = \"n\"\nregion = \"ams\"\n[tls]\ncerts_dir = \"certs\"\n";

#[test]
fn acme_settings_parse_with_paths_beside_the_file() {
    let c = ok(&format!(
        "{ACME_NODE}[acme]\ndirectory = \"https://127.0.0.1:14000/dir\"\ncontact = [\"mailto:ops@example.com\"]\nca_root = \"pebble.pem\"\nchallenge = \"http-01\"\norders_per_hour = 2\n[[app]]\nname = \"a\"\nhostnames = [\"a.test\", \"b.test\", \"*.c.test\"]\n[app.certificates]\nacme = true\nhostnames = [\"B.test\"]\n"
    ));
    assert_eq!(
        c.acme,
        Some(Acme {
            directory: "https://127.0.0.1:14000/dir".into(),
            contact: vec!["mailto:ops@example.com".into()],
            ca_root: Some(PathBuf::from("/etc/tern/pebble.pem")),
            challenge: AcmeChallenge::Http01,
            state_dir: PathBuf::from("/etc/tern/acme"),
            orders_per_hour: 2,
            on_demand: None,
            fleet_key: None,
        })
    );
    assert_eq!(c.apps[0].acme_hostnames, vec!["b.test".to_string()]);
    let all = ok(&format!(
        "{ACME_NODE}[acme]\ndirectory = \"https://acme.example/dir\"\n[[app]]\nname = \"a\"\nhostnames = [\"a.test\", \"b.test\"]\n[app.certificates]\nacme = true\n"
    ));
    let acme = all.acme.expect("[acme] is set");
    assert_eq!(
        acme.challenge,
        AcmeChallenge::TlsAlpn01,
        "TLS-ALPN-01 is preferred"
    );
    assert_eq!(acme.orders_per_hour, 5);
    assert_eq!(acme.on_demand, None, "orders at start unless asked");
    assert_eq!(
        all.apps[0].acme_hostnames,
        vec!["a.test".to_string(), "b.test".to_string()]
    );
}

#[test]
fn acme_refuses_wildcards_strangers_and_a_missing_section() {
    let e = error(&format!(
        "{ACME_NODE}[acme]\ndirectory = \"https://acme.example/dir\"\n[[app]]\nname = \"a\"\nhostnames = [\"a.test\", \"*.b.test\"]\n[app.certificates]\nacme = true\n"
    ));
    assert!(
        e.starts_with("t.toml:10:24: hostname \"*.b.test\" cannot get an ACME certificate: a wildcard needs the DNS-01 challenge"),
        "{e}"
    );
    let e = error(&format!(
        "{ACME_NODE}[acme]\ndirectory = \"https://acme.example/dir\"\n[[app]]\nname = \"a\"\nhostnames = [\"a.test\"]\n[app.certificates]\nacme = true\nhostnames = [\"z.test\"]\n"
    ));
    assert!(
        e.starts_with(
            "t.toml:13:14: certificates.hostnames \"z.test\" is not one of the app's hostnames"
        ),
        "{e}"
    );
    let e = error(&format!(
        "{ACME_NODE}[[app]]\nname = \"a\"\nhostnames = [\"a.test\"]\n[app.certificates]\nacme = true\n"
    ));
    assert!(
        e.starts_with("t.toml:10:8: certificates.acme needs an [acme] section"),
        "{e}"
    );
}

#[test]
fn acme_section_is_checked() {
    let errs = errors("[node]\nid = \"n\"\nregion = \"ams\"\n[acme]\ndirectory = \"http://acme.example/dir\"\ncontact = [\"ops@example.com\"]\nchallenge = \"dns-01\"\n");
    assert_eq!(errs.len(), 4, "{errs:#?}");
    assert!(
        errs[0].starts_with("t.toml:4:1: [acme] needs tls.certs_dir"),
        "{errs:#?}"
    );
    assert!(
        errs[1].starts_with(
            "t.toml:5:13: acme.directory \"http://acme.example/dir\" must be an https:// URL"
        ),
        "{errs:#?}"
    );
    assert!(
        errs[2]
            .starts_with("t.toml:6:12: acme.contact \"ops@example.com\" must be a mailto: address"),
        "{errs:#?}"
    );
    assert!(errs[3].starts_with("t.toml:7:13: unknown acme.challenge \"dns-01\"; expected \"tls-alpn-01\" or \"http-01\""), "{errs:#?}");
}

#[test]
fn acme_on_an_etcd_catalog_needs_a_fleet_key_and_only_there() {
    let etcd = "[catalog]\nsource = \"etcd\"\n";
    let e = error(&format!(
        "{ACME_NODE}[acme]\ndirectory = \"https://acme.example/dir\"\n{etcd}"
    ));
    assert!(
        e.starts_with("t.toml:6:1: [acme] on an etcd catalog needs acme.fleet_key"),
        "{e}"
    );
    let c = ok(&format!(
        "{ACME_NODE}[acme]\ndirectory = \"https://acme.example/dir\"\nfleet_key = \"fleet.key\"\n{etcd}"
    ));
    let acme = c.acme.expect("[acme] is set");
    assert_eq!(acme.fleet_key, Some(PathBuf::from("/etc/tern/fleet.key")));
    let e = error(&format!(
        "{ACME_NODE}[acme]\ndirectory = \"https://acme.example/dir\"\nfleet_key = \"fleet.key\"\n"
    ));
    assert!(
        e.starts_with("t.toml:6:1: acme.fleet_key is set but the catalog is not in etcd"),
        "{e}"
    );
}

#[test]
fn on_demand_waits_ten_seconds_unless_told_and_its_wait_needs_it_on() {
    let c = ok(&format!(
        "{ACME_NODE}[acme]\ndirectory = \"https://acme.example/dir\"\non_demand = true\n"
    ));
    assert_eq!(c.acme.unwrap().on_demand, Some(Duration::from_secs(10)));
    let c = ok(&format!(
        "{ACME_NODE}[acme]\ndirectory = \"https://acme.example/dir\"\non_demand = true\non_demand_wait = \"3s\"\n"
    ));
    assert_eq!(c.acme.unwrap().on_demand, Some(Duration::from_secs(3)));
    let e = error(&format!(
        "{ACME_NODE}[acme]\ndirectory = \"https://acme.example/dir\"\non_demand_wait = \"3s\"\n"
    ));
    assert!(
        e.starts_with("t.toml:8:18: acme.on_demand_wait is set but acme.on_demand is not true"),
        "{e}"
    );
}

#[test]
fn admin_token_is_kept_or_refused_with_why() {
    let node = "[node]\nid = \"n\"\nregion = \"ams\"\n";
    let c = ok(&format!(
        "{node}[admin]\nlisten = \"0.0.0.0:9191\"\ntoken = \"a-long-enough-token\"\n"
    ));
    assert_eq!(c.admin.token.as_deref(), Some("a-long-enough-token"));
    assert_eq!(ok(node).admin.token, None);
    for bad in [
        "short",
        "has a space in it!!",
        "has&an&ampersand&in&it",
        "plus+is+a+space+in+a+query",
    ] {
        assert_eq!(
            error(&format!("{node}[admin]\ntoken = \"{bad}\"\n")),
            "t.toml:5:9: admin.token must be 16 to 256 characters among A-Z, a-z, 0-9, '-', '.', '_' and '~'",
            "{bad}"
        );
    }
}
