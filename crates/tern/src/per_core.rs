//! The per-core scheduler's workers: one thread per worker, each running a
//! current-thread runtime on which the public ports' accept loops, and the
//! connections they accept, run (`[node] scheduler = "per-core"`).

use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

pub struct Workers {
    handles: Arc<[Handle]>,
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts `count` workers; each runs until [`Workers::stop`].
    pub fn start(count: usize) -> anyhow::Result<Workers> {
        let mut handles = Vec::with_capacity(count);
        let mut stops = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        for i in 0..count {
            let (handle, stop, thread) = start_one(i)?;
            handles.push(handle);
            stops.push(stop);
            threads.push(thread);
        }
        Ok(Workers {
            handles: handles.into(),
            stops,
            threads,
        })
    }

    pub fn handles(&self) -> Arc<[Handle]> {
        Arc::clone(&self.handles)
    }

    /// Stops every worker (what they still run is cancelled) and waits for
    /// their threads.
    pub async fn stop(self) {
        for stop in self.stops {
            let _ = stop.send(());
        }
        let threads = self.threads;
        let joined = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        });
        let _ = joined.await;
    }
}

/// Worker `i`: its runtime's handle, what stops it, and its thread. The runtime
/// is built and dropped on its own thread, never in the caller's async
/// context, where dropping one panics.
fn start_one(i: usize) -> anyhow::Result<(Handle, oneshot::Sender<()>, JoinHandle<()>)> {
    let (stop, stopped) = oneshot::channel::<()>();
    let (handle_tx, handle_rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(format!("tern-worker-{i}"))
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let runtime = match runtime {
                Ok(r) => r,
                Err(e) => {
                    let _ = handle_tx.send(Err(e));
                    return;
                }
            };
            let _ = handle_tx.send(Ok(runtime.handle().clone()));
            runtime.block_on(async {
                let _ = stopped.await;
            });
        })
        .context("starting a worker thread")?;
    let handle = handle_rx
        .recv()
        .context("a worker thread ended at once")?
        .context("starting a worker's runtime")?;
    Ok((handle, stop, thread))
}
