//! Headless Chromium for the dashboard's tests: the DOM a page renders, and
//! screenshots kept in target/test-artifacts/.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Debian's `chromium`; scripts/test installs it when missing.
pub fn chromium() -> PathBuf {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH")?
                .to_str()?
                .split(':')
                .map(|dir| Path::new(dir).join(name))
                .find(|p| p.is_file())
        })
        .expect("Chromium is needed for the dashboard tests (scripts/test installs Debian's `chromium`)")
}

/// Chromium's flags for a headless, sandbox-less (we may be root) run, with a
/// budget of virtual time: timers run ahead, network fetches are waited for.
pub fn browser(profile: &Path, budget_ms: u64) -> Command {
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        "--window-size=1400,1800",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .arg(format!("--virtual-time-budget={budget_ms}"))
    .stdin(Stdio::null());
    cmd
}

/// The page's DOM once its script has run for `budget_ms` of virtual time.
pub fn dump_dom(url: &str, budget_ms: u64) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = browser(profile.path(), budget_ms)
        .args(["--dump-dom", url])
        .stderr(Stdio::piped())
        .output()
        .expect("run chromium");
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && dom.contains("</html>"),
        "chromium failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    without_scripts(&dom)
}

/// The DOM without its `<script>` elements: the page's script holds the very
/// markup the checks look for.
pub fn without_scripts(dom: &str) -> String {
    let mut out = String::new();
    let mut rest = dom;
    while let Some(start) = rest.find("<script") {
        out.push_str(&rest[..start]);
        match rest[start..].find("</script>") {
            Some(end) => rest = &rest[start + end + "</script>".len()..],
            None => return out,
        }
    }
    out.push_str(rest);
    out
}

/// Everything the page failed at: uncaught errors (the script lists them), and
/// the fetches it caught and reported in its status lines.
pub fn page_failures(dom: &str) -> Vec<String> {
    let mut failures = Vec::new();
    let errors = script_errors(dom);
    if !errors.is_empty() {
        failures.push(format!("uncaught: {errors}"));
    }
    for (id, bad) in [("updated", "not updated"), ("conn-note", "unavailable")] {
        let text = element_text(dom, id);
        if text.contains(bad) {
            failures.push(format!("#{id}: {text}"));
        }
    }
    failures
}

/// The text inside the element with `id` (up to its first closing tag).
pub fn element_text(dom: &str, id: &str) -> String {
    let Some(at) = dom.find(&format!("id=\"{id}\"")) else {
        return String::new();
    };
    let open_end = at + dom[at..].find('>').unwrap() + 1;
    let close = open_end + dom[open_end..].find("</").unwrap();
    dom[open_end..close].to_owned()
}

pub fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A screenshot of the page, kept as a test artifact.
pub fn screenshot(url: &str, name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.canonicalize().unwrap().join(name);
    let _ = std::fs::remove_file(&path);
    let profile = tempfile::tempdir().unwrap();
    let out = browser(profile.path(), 4000)
        .arg(format!("--screenshot={}", path.display()))
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 10_000,
        "the screenshot {} is {size} bytes",
        path.display()
    );
    path
}

/// The page's own error list: the script puts every uncaught error there.
pub fn script_errors(dom: &str) -> &str {
    let start = dom
        .find(r#"<ul id="errors">"#)
        .expect("the page's error list")
        + 16;
    let end = start + dom[start..].find("</ul>").unwrap();
    &dom[start..end]
}

/// How many times the page has rendered fresh data (`data-updates` on body).
pub fn updates(dom: &str) -> u64 {
    let at = dom.find("data-updates=\"").expect("body's data-updates") + 14;
    dom[at..]
        .split('"')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap()
}

/// The `data-load` of every load bar in the DOM, summed.
pub fn load_in_bars(dom: &str) -> u64 {
    dom.match_indices("data-load=\"")
        .filter_map(|(i, m)| dom[i + m.len()..].split('"').next()?.parse::<u64>().ok())
        .sum()
}

pub fn machine_row(dom: &str, id: &str, state: &str) -> bool {
    dom.contains(&format!(
        r#"class="machine" data-id="{id}" data-state="{state}""#
    ))
}
