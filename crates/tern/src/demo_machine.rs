//! `tern demo-machine`: the demo's machine as a process of its own, for Tern's
//! process driver to run. It listens where the `TERN_*` variables say, answers
//! as the demo's machines do (with its pid and how long it has been up), and
//! exits on SIGTERM, as a machine process must.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;

use crate::demo::{serve_machine, Who};

#[derive(clap::Args, Debug)]
pub struct DemoMachineArgs {
    /// Wait this long before listening: a machine that is slow to come up.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    listen_after: Duration,
}

pub fn run(args: DemoMachineArgs) -> anyhow::Result<()> {
    let began = Instant::now();
    let var = |name: &str| {
        std::env::var(name).with_context(|| {
            format!("{name} is not set; `tern demo-machine` is run by Tern's process driver, which sets the TERN_* variables")
        })
    };
    let id = var("TERN_MACHINE_ID")?;
    let region = var("TERN_REGION").unwrap_or_default();
    let ip: IpAddr = var("TERN_BIND_ADDR")?
        .parse()
        .context("TERN_BIND_ADDR is not an IP address")?;
    let port: u16 = var("TERN_PORT")?
        .parse()
        .context("TERN_PORT is not a port number")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        tokio::time::sleep(args.listen_after).await;
        let addr = SocketAddr::new(ip, port);
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("machine {id} cannot listen on {addr}"))?;
        println!(
            "machine {id} listening on {addr} after {:.1} ms",
            began.elapsed().as_secs_f64() * 1e3
        );
        let who = Arc::new(Who {
            id,
            region,
            process: Some((std::process::id(), began)),
        });
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            () = serve_machine(listener, who) => {}
            _ = term.recv() => println!("SIGTERM: exiting"),
        }
        Ok(())
    })
}
