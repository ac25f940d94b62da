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
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting a worker's runtime")?;
            handles.push(runtime.handle().clone());
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("tern-worker-{i}"))
                .spawn(move || {
                    runtime.block_on(async {
                        let _ = stopped.await;
                    });
                    // Dropping the runtime here, off any async context, cancels
                    // whatever it still runs.
                })
                .context("starting a worker thread")?;
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
