//! One future polled `--count` times, each poll moving one byte through a probe's
//! I/O wrapper (progress, so never a spin) and waking its own task: the unit that
//! `bench/instructions` counts to price one poll under the spin watchdog, against
//! the same polls unwatched.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

#[derive(clap::Args, Debug)]
pub struct PollsArgs {
    /// Polls to make.
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    /// Without the watchdog (the baseline to subtract).
    #[arg(long)]
    unwatched: bool,
}

/// Reads one byte per poll from `io`, then asks to be polled again, `left` times.
struct Polls<R> {
    io: R,
    left: u64,
}

impl<R: AsyncRead + Unpin> Future for Polls<R> {
    type Output = u64;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u64> {
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        let _ = Pin::new(&mut self.io).poll_read(cx, &mut buf);
        if self.left == 0 {
            return Poll::Ready(u64::from(byte[0]));
        }
        self.left -= 1;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

pub fn run(args: &PollsArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let out = runtime.block_on(async {
        if args.unwatched {
            let polls = Polls {
                io: tokio::io::repeat(1),
                left: args.count,
            };
            return tokio::spawn(polls).await.unwrap_or(0);
        }
        let dog = pollwatch::Watchdog::new(pollwatch::SpinConfig::default());
        let probe = dog.register();
        let polls = Polls {
            io: probe.io(tokio::io::repeat(1)),
            left: args.count,
        };
        tokio::spawn(probe.watch(polls))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(0)
    });
    println!("{} polls, last byte {out}", args.count);
    Ok(())
}
