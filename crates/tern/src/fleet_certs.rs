//! `tern fleet ca` and `tern fleet cert`: the fleet CA and the node certificates
//! the backhaul's mutual TLS needs.

use std::path::PathBuf;

use anyhow::Context;

#[derive(clap::Subcommand, Debug)]
pub enum FleetCommand {
    /// Create the fleet CA (ca.crt, and ca.key readable by its owner only).
    Ca {
        /// Where to write it.
        #[arg(long, default_value = "fleet")]
        dir: PathBuf,
    },
    /// Create a node's certificate (NODE.crt, NODE.key), signed by the fleet CA.
    Cert {
        /// The node's id, as its configuration's `node.id` says.
        node: String,
        /// The directory holding the fleet CA.
        #[arg(long, default_value = "fleet")]
        ca: PathBuf,
        /// Where to write the certificate and key (default: the CA's directory).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

pub fn run(cmd: FleetCommand) -> anyhow::Result<()> {
    match cmd {
        FleetCommand::Ca { dir } => {
            let cert = tern_backhaul::identity::generate_ca(&dir)
                .with_context(|| format!("creating the fleet CA in {}", dir.display()))?;
            println!(
                "fleet CA: {} (its key, {}, signs node certificates: keep it off the nodes)",
                cert.display(),
                dir.join(tern_backhaul::identity::CA_KEY).display()
            );
        }
        FleetCommand::Cert { node, ca, out } => {
            let out = out.unwrap_or_else(|| ca.clone());
            let (cert, key) = tern_backhaul::identity::generate_node(&ca, &node, &out)
                .with_context(|| format!("creating the certificate of node {node}"))?;
            println!(
                "node {node}: {} and {} (for [backhaul] cert and key)",
                cert.display(),
                key.display()
            );
        }
    }
    Ok(())
}
