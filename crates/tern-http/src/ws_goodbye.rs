//! A WebSocket tunnel to a machine that may go away: bytes are copied both ways
//! as for any tunnel, and when the machine is being stopped or suspended, the
//! client gets a Close frame (1001, going away) between two of the machine's
//! frames, rather than a reset when the machine's process ends.

use std::io;
use std::time::Duration;

use http::HeaderValue;
use tern_catalog::Pick;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use crate::ws_frames::{FrameBoundaries, GOING_AWAY};

/// How long the machine has to reach the end of the frame it is sending, and the
/// client to answer the Close, before Tern closes the tunnel anyway.
const GRACE: Duration = Duration::from_secs(2);

/// What a tunnel to `pick` watches to say goodbye to its client: the machine's
/// `leaving`, for a WebSocket (`upgrade`) to a machine this node runs and so may
/// stop or suspend. Other tunnels are copied as bytes, with no frames tracked.
pub(crate) fn goodbye_watch(
    pick: &Pick,
    upgrade: Option<&HeaderValue>,
) -> Option<watch::Receiver<u64>> {
    let websocket = upgrade.is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let runs_it = pick.machine.is_local() && !pick.machine.def.driver.is_external();
    (websocket && runs_it).then(|| pick.machine.live.leaving())
}

/// Copies both ways until both directions end, or until `leaving` changes:
/// then the client gets the Close frame at the machine's next frame boundary,
/// and its answer has `GRACE` to arrive.
pub(crate) async fn splice_websocket<C, M>(
    client: C,
    machine: M,
    mut leaving: watch::Receiver<u64>,
) -> io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
    M: AsyncRead + AsyncWrite + Unpin,
{
    leaving.borrow_and_update();
    let (mut client_r, mut client_w) = tokio::io::split(client);
    let (mut machine_r, mut machine_w) = tokio::io::split(machine);
    let up = async {
        let copied = tokio::io::copy(&mut client_r, &mut machine_w).await;
        let _ = machine_w.shutdown().await;
        copied.map(drop)
    };
    let down = relay_down(&mut machine_r, &mut client_w, &mut leaving);
    tokio::pin!(up);
    tokio::pin!(down);
    let mut up_done = false;
    loop {
        tokio::select! {
            copied = &mut up, if !up_done => {
                up_done = true;
                copied?;
            }
            said = &mut down => {
                let goodbye = said?;
                if !up_done {
                    if goodbye {
                        let _ = tokio::time::timeout(GRACE, &mut up).await;
                    } else {
                        up.await?;
                    }
                }
                return Ok(());
            }
        }
    }
}

/// The machine's bytes to the client, frame boundaries tracked. Returns whether
/// the client was sent the Close frame.
async fn relay_down<R, W>(
    from: &mut R,
    to: &mut W,
    leaving: &mut watch::Receiver<u64>,
) -> io::Result<bool>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut frames = FrameBoundaries::default();
    let mut buf = vec![0u8; 16 * 1024];
    let mut deadline: Option<tokio::time::Instant> = None;
    let mut watching = true;
    loop {
        let n = tokio::select! {
            read = from.read(&mut buf) => read?,
            changed = leaving.changed(), if watching && deadline.is_none() => {
                if changed.is_err() {
                    // Nobody can ask any more: an ordinary tunnel from here on.
                    watching = false;
                    continue;
                }
                if frames.at_boundary() {
                    return goodbye(to).await;
                }
                deadline = Some(tokio::time::Instant::now() + GRACE);
                continue;
            }
            () = sleep_until(deadline) => {
                // The machine never finished its frame: close without a word.
                let _ = to.shutdown().await;
                return Ok(false);
            }
        };
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(false);
        }
        let chunk = &buf[..n];
        if deadline.is_some() {
            if let Some(end) = frames.advance(chunk) {
                to.write_all(&chunk[..end]).await?;
                return goodbye(to).await;
            }
        } else {
            let mut rest = chunk;
            while let Some(end) = frames.advance(rest) {
                rest = &rest[end..];
            }
        }
        to.write_all(chunk).await?;
    }
}

async fn goodbye<W: AsyncWrite + Unpin>(to: &mut W) -> io::Result<bool> {
    to.write_all(&GOING_AWAY).await?;
    to.flush().await?;
    let _ = to.shutdown().await;
    Ok(true)
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
