//! rustls 0.23.5 + tokio-rustls 0.26.0: a close_notify followed by a partial record in
//! the same read makes the server task spin; pollwatch shows it and cuts it.

use std::time::Duration;

use pollwatch::SpinAction;
use rustls_busy_loop::scenario::{run, run_with, Options, Tail};
use rustls_busy_loop::stuck::STUCK_REASON;

/// The spinning tests measure time and poll rates: run them one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_task_spins_and_never_reaches_eof() {
    let _serial = SERIAL.lock().await;
    let out = run(SpinAction::Log, Duration::from_millis(300)).await;
    eprintln!(
        "rustls 0.23.5, Log, 300 ms: {} polls ({:.0}/s), {} self-wakes, {} spins",
        out.polls,
        out.poll_rate(),
        out.self_wakes,
        out.spins
    );
    assert!(!out.finished, "{out:?}");
    assert!(!out.reached_eof, "{out:?}");
    assert!(out.spun.is_none(), "Log never cuts: {out:?}");
    assert!(out.polls >= 10_000, "{out:?}");
    // Every poll but the first (the one that read the socket) woke itself; pollwatch
    // tells self-wakes apart from its first INSPECT_AFTER polls without progress on.
    assert!(
        out.self_wakes + pollwatch::INSPECT_AFTER + 2 >= out.polls,
        "{out:?}"
    );
    assert!(out.spins >= 10, "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pollwatch_cuts_it_within_100ms_of_the_write() {
    let _serial = SERIAL.lock().await;
    for tail in [Tail::PartialHeader, Tail::CutRecord] {
        let out = run_with(Options {
            tail,
            ..Options::new(SpinAction::Close, Duration::from_secs(5))
        })
        .await;
        eprintln!(
            "rustls 0.23.5, Close, {tail:?}: cut after {:?}, {} polls",
            out.elapsed, out.polls
        );
        assert!(out.finished, "{tail:?}: {out:?}");
        assert!(!out.reached_eof, "{tail:?}: {out:?}");
        let spun = out
            .spun
            .as_ref()
            .unwrap_or_else(|| panic!("{tail:?}: not cut: {out:?}"));
        assert!(spun.polls >= 1000, "{tail:?}: {spun:?}");
        assert!(spun.stuck.is_none(), "{tail:?}: {spun:?}");
        assert!(
            out.elapsed < Duration::from_millis(100),
            "{tail:?}: {out:?}"
        );
        assert_eq!(out.spins, 1, "{tail:?}: {out:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tls_stuck_check_flags_the_first_spurious_pending() {
    let _serial = SERIAL.lock().await;
    for tail in [Tail::PartialHeader, Tail::CutRecord] {
        let out = run_with(Options {
            tail,
            stuck_check: true,
            ..Options::new(SpinAction::Close, Duration::from_secs(5))
        })
        .await;
        eprintln!(
            "rustls 0.23.5, stuck check, {tail:?}: cut after {:?}, {} polls",
            out.elapsed, out.polls
        );
        assert!(!out.reached_eof, "{tail:?}: {out:?}");
        let spun = out
            .spun
            .as_ref()
            .unwrap_or_else(|| panic!("{tail:?}: not cut: {out:?}"));
        assert_eq!(
            spun.stuck.as_deref(),
            Some(STUCK_REASON),
            "{tail:?}: {spun:?}"
        );
        // The poll that read the client's write is the one that got stuck.
        assert_eq!(out.polls, 1, "{tail:?}: {out:?}");
        assert_eq!(out.spins, 1, "{tail:?}: {out:?}");
    }
}
