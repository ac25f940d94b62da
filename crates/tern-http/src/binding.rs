//! For services that count `connections`: the machine a client connection is bound
//! to. The first request picks it and takes one load unit, which is held until the
//! client connection closes; later requests on the connection go to the same machine.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tern_balance::LoadGuard;
use tern_catalog::Pick;

/// One unit of load, shared by every request that rides on it.
pub(crate) type Unit = Arc<LoadGuard>;

type ByService = HashMap<(String, u16), (Pick, Unit)>;

/// A client connection's bindings, keyed by app and internal port.
#[derive(Debug, Default, Clone)]
pub struct ConnBindings(Arc<Mutex<ByService>>);

impl ConnBindings {
    pub(crate) fn get(&self, app: &str, port: u16) -> Option<(Pick, Unit)> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(app.to_owned(), port))
            .cloned()
    }

    pub(crate) fn bind(&self, app: &str, port: u16, pick: Pick, unit: Unit) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((app.to_owned(), port), (pick, unit));
    }

    pub(crate) fn unbind(&self, app: &str, port: u16) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(app.to_owned(), port));
    }
}
