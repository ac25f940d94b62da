//! The `tern` binary: the command line, and nothing but wiring.
#![forbid(unsafe_code)]

mod catalog_cmd;
mod demo;
mod demo_fleet;
mod demo_machine;
mod fleet_certs;
mod limits;
mod logging;
mod machine_admin;
mod machine_cmd;
mod per_core;
mod reload;
mod serve;
mod upgrade;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The allocator and why: `tern_alloc`.
#[global_allocator]
static ALLOCATOR: tern_alloc::Allocator = tern_alloc::Allocator;

#[derive(Parser)]
#[command(
    name = "tern",
    version,
    about = "An edge proxy for fleets of app machines in many regions"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve traffic as the configuration says, until SIGTERM or SIGINT (SIGHUP
    /// reloads the configuration).
    Run {
        /// The TOML configuration file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Take over from the Tern running on `[node] upgrade_socket`: serve on
        /// its listening sockets, then let it drain and exit.
        #[arg(short, long)]
        upgrade: bool,
    },
    /// Validate a configuration file and its certificates; print every error found.
    Check {
        #[arg(value_name = "FILE")]
        config: PathBuf,
    },
    /// Run a self-contained demo: three machines of the app demo.localhost behind Tern
    /// (or, with --fleet, three nodes on etcd joined by the backhaul).
    Demo(demo::DemoArgs),
    /// The demo's machine as a process of its own, for a machine with
    /// `driver = "process"` (Tern sets the TERN_* variables it reads).
    DemoMachine(demo_machine::DemoMachineArgs),
    /// Start, stop or suspend one of a running node's machines (through its
    /// admin port).
    Machine(machine_cmd::MachineArgs),
    /// Certificates for the backhaul between nodes.
    #[command(subcommand)]
    Fleet(fleet_certs::FleetCommand),
    /// The fleet's catalog in etcd: push definitions, print what it holds.
    #[command(subcommand)]
    Catalog(catalog_cmd::CatalogCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config, upgrade } => load(&config).and_then(|c| {
            logging::init(&c.log)?;
            serve::run(
                c,
                serve::Start {
                    file: Some(config),
                    upgrade,
                },
                None,
            )
        }),
        Command::Check { config } => check(&config),
        Command::Demo(args) => demo::run(args),
        Command::DemoMachine(args) => demo_machine::run(args),
        Command::Machine(args) => machine_cmd::run(args),
        Command::Fleet(cmd) => fleet_certs::run(cmd),
        Command::Catalog(cmd) => catalog_cmd::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tern: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: &std::path::Path) -> anyhow::Result<tern_config::Config> {
    let config =
        tern_config::load(path).map_err(|e| anyhow::anyhow!("invalid configuration\n{e}"))?;
    serve::check_certificates(&config)?;
    Ok(config)
}

fn check(path: &std::path::Path) -> anyhow::Result<()> {
    let config = load(path)?;
    let fleet = tern_catalog::Fleet::from_config(&config);
    let ports = tern_listen::plan(&tern_catalog::Catalog::snapshot(&fleet)).len();
    println!(
        "{}: ok ({} apps, {} machines, {} public ports)",
        path.display(),
        config.apps.len(),
        config.machines.len(),
        ports
    );
    Ok(())
}
