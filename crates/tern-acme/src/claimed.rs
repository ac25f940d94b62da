//! The hostnames that the catalog's apps ask ACME for: what the task orders
//! and renews, and the only certificates the fleet's are installed for.

use std::collections::BTreeSet;
use std::sync::Arc;

use tern_catalog::Catalog;

pub(crate) fn claimed_names(catalog: &Arc<dyn Catalog>) -> BTreeSet<String> {
    let snapshot = catalog.snapshot();
    snapshot
        .apps
        .values()
        .flat_map(|app| app.acme_hostnames.iter().cloned())
        .collect()
}
