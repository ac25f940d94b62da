#![forbid(unsafe_code)]
//! `tern-bench`: the helpers `bench/run` drives.
//!
//! - `certs`: a CA and an ECDSA P-256 leaf certificate, shared by every proxy.
//! - `backend`: the small, fast HTTP server every target proxies to (and, with
//!   `--tls-listen`, the "direct" target of the HTTPS scenarios).
//! - `storm`: the close_notify storm client (scenario 6), and the same requests made
//!   the ordinary way, for comparison.
//! - `idle`: opens many TLS keep-alive connections, makes one request on each, then
//!   holds them open (scenario 5).
//! - `polls`: one future polled N times, watched or not (bench/instructions).

mod backend;
mod certs;
mod client;
mod idle;
mod polls;
mod storm;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "tern-bench", about = "Benchmark helpers for bench/run")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write ca.pem, site.crt and site.key (ECDSA P-256) into a directory.
    Certs(certs::CertsArgs),
    /// Serve a small fixed body over HTTP/1.1 (and optionally HTTPS, h2 + HTTP/1.1).
    Backend(backend::BackendArgs),
    /// The close_notify storm client, or the same requests made the ordinary way.
    Storm(storm::StormArgs),
    /// Open TLS keep-alive connections, make one request on each, then hold them.
    Idle(idle::IdleArgs),
    /// Poll one future N times, each poll moving a byte (bench/instructions).
    Polls(polls::PollsArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Certs(args) => certs::run(&args),
        Command::Backend(args) => backend::run(&args),
        Command::Storm(args) => storm::run(&args),
        Command::Idle(args) => idle::run(&args),
        Command::Polls(args) => polls::run(&args),
    }
}
