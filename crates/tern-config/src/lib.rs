//! Tern's configuration: the TOML schema, its defaults, and validation whose errors
//! name the file, line and column.
#![forbid(unsafe_code)]

mod error;
mod model;
mod raw;
mod validate;
mod values;

use std::path::Path;

pub use error::{ConfigError, Diagnostic};
pub use model::*;

/// Parses and validates configuration text. `file` names the source in diagnostics
/// and is the base for relative paths such as `tls.certs_dir`.
///
/// Syntax and type errors stop at the first one; semantic errors are all reported.
pub fn parse(src: &str, file: &Path) -> Result<Config, ConfigError> {
    let raw: raw::RawConfig = toml::from_str(src).map_err(|e| {
        let locator = error::Locator::new(src, file);
        let span = e.span().unwrap_or(0..0);
        ConfigError::Invalid(vec![locator.diagnostic(&span, toml_message(e.message()))])
    })?;
    validate::validate(raw, src, file).map_err(ConfigError::Invalid)
}

/// Rewords serde's "expected" phrases in TOML terms, hiding Rust type names.
fn toml_message(message: &str) -> String {
    let mut out = message.trim_end().to_owned();
    const STRUCT: &str = "expected struct ";
    if let Some(at) = out.find(STRUCT) {
        let name_start = at + STRUCT.len();
        let name_len = out
            .get(name_start..)
            .and_then(|rest| rest.find(|c: char| !c.is_alphanumeric()))
            .unwrap_or(out.len() - name_start);
        out.replace_range(at..name_start + name_len, "expected a table");
    }
    out.replace("expected a sequence", "expected an array")
        .replace("expected a map", "expected a table")
        .replace("expected i64", "expected an integer")
}

/// Parses and validates a catalog file on its own: the fleet's regions, nodes,
/// apps and machines, with the same located errors as a configuration.
pub fn parse_catalog(src: &str, file: &Path, used: CatalogUse) -> Result<CatalogFile, ConfigError> {
    let raw: raw::RawCatalogFile = toml::from_str(src).map_err(|e| {
        let locator = error::Locator::new(src, file);
        let span = e.span().unwrap_or(0..0);
        ConfigError::Invalid(vec![locator.diagnostic(&span, toml_message(e.message()))])
    })?;
    validate::validate_catalog(raw, src, file, used).map_err(ConfigError::Invalid)
}

/// Reads and validates the catalog file at `path`.
pub fn load_catalog(path: &Path, used: CatalogUse) -> Result<CatalogFile, ConfigError> {
    let src = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_catalog(&src, path, used)
}

/// Reads and validates the configuration file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let src = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&src, path)
}

#[cfg(test)]
mod tests;
