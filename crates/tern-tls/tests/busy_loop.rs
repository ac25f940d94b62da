//! The scenario of the February 2025 busy loop (close_notify and the start of another
//! record in one read, TCP kept open) against the workspace's rustls: the server
//! reaches EOF after a few polls, pollwatch finds no spin and the TLS stuck check
//! stays quiet. `tests/rustls-busy-loop` runs the same file against rustls 0.23.5,
//! where the same server task spins.

use std::time::Duration;

use pollwatch::SpinAction;

/// What `scenario` expects beside it: tern-tls's TLS stuck check.
mod stuck {
    pub use tern_tls::TlsStuckCheck;
}

#[path = "../../../tests/rustls-busy-loop/src/scenario.rs"]
mod scenario;

use scenario::{run, run_with, Options, Tail, PAYLOAD};

fn assert_clean_eof(what: &str, out: &scenario::Outcome) {
    eprintln!(
        "workspace rustls, {what}: EOF after {} polls in {:?}",
        out.polls, out.elapsed
    );
    assert!(out.finished, "{what}: {out:?}");
    assert!(out.reached_eof, "{what}: {out:?}");
    assert_eq!(out.received, PAYLOAD, "{what}: {out:?}");
    assert!(out.spun.is_none(), "{what}: {out:?}");
    assert_eq!(out.spins, 0, "{what}: {out:?}");
    assert_eq!(out.self_wakes, 0, "{what}: {out:?}");
    assert!(out.polls < 50, "{what}: {out:?}");
    assert!(out.poll_rate() > 0.0, "{what}: {out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_reaches_eof_after_a_few_polls() {
    // Log would let a spin go on for the whole wait: EOF must come on its own.
    let out = run(SpinAction::Log, Duration::from_secs(5)).await;
    assert_clean_eof("partial header", &out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_cut_by_the_first_read_does_not_hold_eof_back() {
    let out = run_with(Options {
        tail: Tail::CutRecord,
        ..Options::new(SpinAction::Log, Duration::from_secs(5))
    })
    .await;
    assert_clean_eof("cut record", &out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stuck_check_never_fires() {
    for tail in [Tail::PartialHeader, Tail::CutRecord] {
        let out = run_with(Options {
            tail,
            stuck_check: true,
            // Close: a stuck report would end the task with Err(Spun).
            ..Options::new(SpinAction::Close, Duration::from_secs(5))
        })
        .await;
        assert_clean_eof(&format!("stuck check, {tail:?}"), &out);
        assert!(out.error.is_none(), "{out:?}");
    }
}
