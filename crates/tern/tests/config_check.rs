//! `tern check FILE` and `tern run --config FILE` on valid and invalid files, as an
//! operator runs them: exit status, `FILE:LINE:COL: message` diagnostics on stderr,
//! and no listener bound when the configuration is refused.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Writes `src` to `NAME` in `dir` and returns its path.
fn write(dir: &Path, name: &str, src: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, src).unwrap();
    path
}

/// Runs `tern ARGS...` to completion, bounded: a check must not hang.
fn tern(args: &[&std::ffi::OsStr]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tern");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "tern {args:?} did not finish within 20 s; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn check(path: &Path) -> Output {
    tern(&["check".as_ref(), path.as_os_str()])
}

/// `tern check` on a bad file: exits non-zero, and stderr has `FILE:LINE:COL: ...`
/// for the expected position, with a message containing every `words`.
fn assert_check_error(src: &str, line: usize, col: usize, words: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "tern.toml", src);
    let out = check(&path);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !out.status.success(),
        "a bad config must fail the check; stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        !stdout.contains("ok"),
        "a failed check must not print ok: {stdout}"
    );
    let prefix = format!("{}:{line}:{col}: ", path.display());
    let diag = stderr
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no diagnostic at {prefix:?} in stderr:\n{stderr}"));
    for w in words {
        assert!(diag.contains(w), "diagnostic {diag:?} should mention {w:?}");
    }
}

const HEAD: &str = "[node]\nid = \"n\"\nregion = \"ams\"\nbind = \"127.0.0.1\"\n";

#[test]
fn valid_config_prints_ok_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let src = format!(
        r#"{HEAD}
[admin]
listen = "127.0.0.1:{admin}"

[[app]]
name = "web"
hostnames = ["web.test"]

[[app.service]]
internal_port = 7000
ports = [{{ port = {http}, handlers = ["http"] }}, {{ port = {raw}, handlers = [] }}]

[[machine]]
id = "m1"
app = "web"
region = "ams"
ip = "127.0.0.11"
"#,
        admin = free_port(),
        http = free_port(),
        raw = free_port(),
    );
    let path = write(dir.path(), "tern.toml", &src);
    let out = check(&path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let line = stdout.lines().next().unwrap_or_default();
    assert!(
        line.starts_with(&format!("{}: ok", path.display())),
        "{stdout}"
    );
    assert!(line.contains("1 apps"), "{line}");
    assert!(line.contains("1 machines"), "{line}");
    assert!(line.contains("2 public ports"), "{line}");
}

#[test]
fn syntax_error_is_located() {
    // Line 2, column 6 is the second `=`.
    assert_check_error("[node]\nid = = \"n\"\n", 2, 6, &["expected"]);
    // An unterminated string on line 3.
    assert_check_error("[node]\nid = \"n\"\nregion = \"ams\n", 3, 14, &["string"]);
}

#[test]
fn unknown_key_is_located_and_named() {
    assert_check_error(
        "[node]\nid = \"n\"\nregion = \"ams\"\nname = \"x\"\n",
        4,
        1,
        &["unknown field `name`", "`region`"],
    );
    // A misspelled key in [limits].
    assert_check_error(
        &format!("{HEAD}[limits]\nidle_timeot = \"5s\"\n"),
        6,
        1,
        &["unknown field `idle_timeot`", "`idle_timeout`"],
    );
}

#[test]
fn bad_handler_stack_is_located() {
    let app = format!("{HEAD}[[app]]\nname = \"demo\"\n[[app.service]]\ninternal_port = 8080\n");
    // Line 9 holds `ports`; column 34 is the handlers array.
    assert_check_error(
        &format!("{app}ports = [{{ port = 80, handlers = [\"http\", \"proxy_proto\"] }}]\n"),
        9,
        34,
        &["not a supported stack", "proxy_proto"],
    );
    // An unknown handler is pointed at itself (column 43).
    assert_check_error(
        &format!("{app}ports = [{{ port = 80, handlers = [\"http\", \"h2\"] }}]\n"),
        9,
        43,
        &["unknown handler \"h2\""],
    );
}

#[test]
fn raw_tcp_port_shared_by_two_apps_is_refused() {
    let src = r#"[node]
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
"#;
    assert_check_error(src, 13, 19, &["raw TCP port 5432", "app \"a\"", "8:19"]);
}

#[test]
fn soft_limit_above_hard_limit_is_refused() {
    let src = format!(
        "{HEAD}[[app]]\nname = \"demo\"\n[[app.service]]\ninternal_port = 8080\nconcurrency = {{ type = \"requests\", soft_limit = 30, hard_limit = 25 }}\n"
    );
    assert_check_error(&src, 9, 49, &["soft_limit (30)", "hard_limit (25)"]);
}

#[test]
fn machine_of_unknown_app_is_refused() {
    let src = r#"[node]
id = "n"
region = "ams"
[[app]]
name = "demo"
[[machine]]
id = "m-1"
app = "dmeo"
region = "ams"
ip = "127.0.0.11"
"#;
    assert_check_error(
        src,
        8,
        7,
        &["\"m-1\"", "\"dmeo\"", "not defined", "\"demo\""],
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let src = r#"[node]
id = "n"
region = "ams"
[[app]]
name = "demo"
[[app.service]]
internal_port = 8080
concurrency = { soft_limit = 9, hard_limit = 3 }
[[machine]]
id = "m-1"
app = "nope"
region = "ams"
ip = "127.0.0.11"
"#;
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "tern.toml", src);
    let out = check(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let p = path.display().to_string();
    assert!(
        stderr.contains(&format!("{p}:8:")) && stderr.contains("soft_limit (9)"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{p}:11:7: ")) && stderr.contains("\"nope\""),
        "{stderr}"
    );
}

#[test]
fn missing_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.toml");
    let out = check(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains(&path.display().to_string()), "{stderr}");
}

/// Starts `tern run --config PATH`, waits (bounded) for it to exit, and meanwhile
/// watches whether it ever listened on `admin` or any of `public`.
fn run_expecting_refusal(path: &Path, admin: u16, public: &[u16]) -> (Output, bool) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["run", "--config"])
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tern");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut ever_listened = false;
    loop {
        ever_listened |= ports_listened_by(child.id())
            .iter()
            .any(|p| *p == admin || public.contains(p));
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "tern run on a refused config kept running; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    (child.wait_with_output().unwrap(), ever_listened)
}

#[test]
fn run_refuses_an_invalid_config_without_listening() {
    let ports = Ports::new();
    let src = format!(
        r#"{head}
[[app]]
name = "web"
hostnames = ["web.test"]

[[app.service]]
internal_port = 7000
concurrency = {{ soft_limit = 10, hard_limit = 5 }}
ports = [{{ port = {http}, handlers = ["http"] }}]
"#,
        head = config_head(ports, ""),
        http = ports.http
    );
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "tern.toml", &src);
    let (out, listened) = run_expecting_refusal(&path, ports.admin, &[ports.http]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(!listened, "a refused config must not bind any port");
    assert!(
        stderr.contains(&format!("{}:", path.display())) && stderr.contains("soft_limit (10)"),
        "{stderr}"
    );
}

#[test]
fn run_refuses_a_port_already_in_use_without_serving_admin() {
    let ports = Ports::new();
    // Another process holds the public port.
    let holder = std::net::TcpListener::bind(("127.0.0.1", ports.http)).unwrap();
    assert!(
        ports_listened_by(std::process::id()).contains(&ports.http),
        "the /proc reading must see a listener, or it proves nothing"
    );
    let src = format!(
        r#"{head}
[[app]]
name = "web"
hostnames = ["web.test"]

[[app.service]]
internal_port = 7000
ports = [{{ port = {http}, handlers = ["http"] }}]
"#,
        head = config_head(ports, ""),
        http = ports.http
    );
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "tern.toml", &src);
    let (out, admin_listened) = run_expecting_refusal(&path, ports.admin, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(!admin_listened, "the admin port must not be served");
    assert!(stderr.contains(&ports.http.to_string()), "{stderr}");
    drop(holder);
}

#[test]
fn tls_port_without_certs_dir_is_refused() {
    let ports = Ports::new();
    let src = format!(
        r#"{head}
[[app]]
name = "web"
hostnames = ["web.test"]

[[app.service]]
internal_port = 7000
ports = [{{ port = {https}, handlers = ["tls", "http"] }}, {{ port = {raw}, handlers = ["tls"] }}]
"#,
        head = config_head(ports, ""),
        https = ports.https,
        raw = ports.http,
    );
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "tern.toml", &src);

    let out = check(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "check must refuse: {stderr}");
    assert!(stderr.contains("certs_dir"), "{stderr}");

    let (out, listened) = run_expecting_refusal(&path, ports.admin, &[ports.https, ports.http]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "run must refuse: {stderr}");
    assert!(stderr.contains("certs_dir"), "{stderr}");
    assert!(!listened, "a refused config must not bind any port");
}
