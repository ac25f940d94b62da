//! `tern catalog push` and `tern catalog get`: the fleet's definitions in etcd.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tern_catalog::Definitions;
use tern_config::{CatalogSource, CatalogUse};

#[derive(clap::Subcommand, Debug)]
pub enum CatalogCommand {
    /// Validate a catalog file (apps, machines, regions) and make etcd hold
    /// exactly its definitions.
    Push {
        /// The catalog file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        etcd: EtcdArgs,
    },
    /// Print what etcd holds: definitions, registered nodes, live statuses (JSON).
    Get {
        #[command(flatten)]
        etcd: EtcdArgs,
    },
}

/// Which etcd: a node's configuration's `[catalog]`, or given here.
#[derive(clap::Args, Debug)]
pub struct EtcdArgs {
    /// A node configuration whose [catalog] names etcd.
    #[arg(long, value_name = "FILE", conflicts_with = "etcd")]
    config: Option<PathBuf>,
    /// etcd client URLs (comma-separated).
    #[arg(long, value_name = "URLS")]
    etcd: Option<String>,
    /// The key prefix (with --etcd).
    #[arg(long, default_value = "/tern")]
    prefix: String,
    /// How long to wait for etcd.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

impl EtcdArgs {
    fn resolve(&self) -> anyhow::Result<(Vec<String>, String)> {
        if let Some(url) = &self.etcd {
            let endpoints = url.split(',').map(str::trim).map(str::to_owned).collect();
            return Ok((endpoints, self.prefix.clone()));
        }
        let Some(path) = &self.config else {
            anyhow::bail!("say which etcd: --etcd URL, or --config with a node configuration whose [catalog] source is \"etcd\"");
        };
        let config =
            tern_config::load(path).map_err(|e| anyhow::anyhow!("invalid configuration\n{e}"))?;
        match config.catalog {
            CatalogSource::Etcd(e) => Ok((e.endpoints, e.prefix)),
            CatalogSource::File { .. } => anyhow::bail!(
                "{}: its [catalog] source is a file, not etcd",
                path.display()
            ),
        }
    }
}

pub fn run(cmd: CatalogCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match cmd {
        CatalogCommand::Push { file, etcd } => {
            let defs = read(&file)?;
            let (endpoints, prefix) = etcd.resolve()?;
            let summary = runtime
                .block_on(async {
                    let mut store =
                        tern_etcd::Store::connect(&endpoints, &prefix, etcd.timeout).await?;
                    store.push(&defs).await
                })
                .with_context(|| {
                    format!("writing the catalog to etcd at {}", endpoints.join(","))
                })?;
            println!(
                "{}: pushed to {} under {prefix}: {} apps, {} machines; {} keys written, {} unchanged, {} deleted",
                file.display(),
                endpoints.join(","),
                defs.apps.len(),
                defs.machines.len(),
                summary.written,
                summary.unchanged,
                summary.deleted
            );
        }
        CatalogCommand::Get { etcd } => {
            let (endpoints, prefix) = etcd.resolve()?;
            let dump = runtime
                .block_on(async {
                    let mut store =
                        tern_etcd::Store::connect(&endpoints, &prefix, etcd.timeout).await?;
                    store.dump().await
                })
                .with_context(|| {
                    format!("reading the catalog from etcd at {}", endpoints.join(","))
                })?;
            println!("{}", serde_json::to_string_pretty(&dump)?);
        }
    }
    Ok(())
}

/// A catalog file validated for etcd, with the same located errors as `tern check`.
fn read(path: &Path) -> anyhow::Result<Definitions> {
    let file = tern_config::load_catalog(path, CatalogUse::Etcd)
        .map_err(|e| anyhow::anyhow!("invalid catalog\n{e}"))?;
    Ok(Definitions::from_catalog_file(&file, ""))
}
