//! A CA and a leaf certificate for the benchmark host name.

use std::path::PathBuf;

use anyhow::Context;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

#[derive(clap::Args, Debug)]
pub struct CertsArgs {
    /// Directory to write ca.pem, site.crt, site.key and site.pem (cert + key) into.
    #[arg(long)]
    dir: PathBuf,
    /// Names the leaf certificate is valid for.
    #[arg(long = "name", default_value = "localhost")]
    names: Vec<String>,
}

pub fn run(args: &CertsArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    // KeyPair::generate() makes an ECDSA P-256 key.
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "tern bench CA");
    let ca = ca_params.self_signed(&ca_key)?;
    let leaf_key = KeyPair::generate()?;
    let mut leaf_params = CertificateParams::new(args.names.clone())?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, args.names[0].clone());
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let leaf = leaf_params.signed_by(&leaf_key, &issuer)?;
    let write = |name: &str, text: String| -> anyhow::Result<()> {
        let path = args.dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    };
    write("ca.pem", ca.pem())?;
    write("site.crt", leaf.pem())?;
    write("site.key", leaf_key.serialize_pem())?;
    write(
        "site.pem",
        format!("{}{}", leaf.pem(), leaf_key.serialize_pem()),
    )?;
    Ok(())
}
