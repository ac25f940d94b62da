//! The build profiles stay what docs/operations.md says they are: `release` leaves
//! the crates off the request path unoptimised, and `dist`, which inherits
//! `release`'s per-package settings, optimises every one of them again.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read_toml(name: &str) -> toml::Table {
    let text = std::fs::read_to_string(workspace().join(name)).unwrap();
    text.parse().unwrap()
}

/// The packages a profile sets `opt-level` for, with the level.
fn opt_levels(manifest: &toml::Table, profile: &str) -> Vec<(String, i64)> {
    let packages = manifest["profile"][profile]
        .get("package")
        .and_then(|p| p.as_table())
        .cloned()
        .unwrap_or_default();
    packages
        .iter()
        .filter_map(|(name, settings)| {
            let level = settings.get("opt-level")?.as_integer()?;
            Some((name.clone(), level))
        })
        .collect()
}

#[test]
fn dist_optimises_every_crate_release_does_not() {
    let manifest = read_toml("Cargo.toml");
    let release = opt_levels(&manifest, "release");
    assert!(
        release.len() >= 10,
        "release leaves too few crates unoptimised: {release:?}"
    );
    let dist: BTreeSet<(String, i64)> = opt_levels(&manifest, "dist").into_iter().collect();
    for (name, level) in &release {
        assert_eq!(*level, 0, "release sets {name} to opt-level {level}");
        assert!(
            dist.contains(&(name.clone(), 3)),
            "dist inherits release's opt-level 0 for {name}: add [profile.dist.package.{name}] opt-level = 3"
        );
    }
    assert_eq!(
        dist.len(),
        release.len(),
        "dist names crates release does not"
    );
}

#[test]
fn every_crate_a_profile_names_is_built() {
    let lock = read_toml("Cargo.lock");
    let built: BTreeSet<&str> = lock["package"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p.get("name")?.as_str())
        .collect();
    let manifest = read_toml("Cargo.toml");
    for (name, _) in opt_levels(&manifest, "release") {
        assert!(
            built.contains(name.as_str()),
            "[profile.release.package.{name}] names a crate Cargo.lock does not hold"
        );
    }
}
