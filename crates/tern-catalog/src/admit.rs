//! Admission: take a unit of load on the best machine with room, waiting in the
//! service's bounded queue while every machine is at its hard limit.

use std::time::Duration;

use tern_balance::{LoadGuard, QueueError};

use crate::snapshot::{AppEntry, Pick, ServiceEntry, Snapshot};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AdmitError {
    #[error("app {app} has no started, healthy machine")]
    NoHealthyMachine { app: String },
    #[error("every machine of {app} is at its hard limit and {waiting} requests already wait")]
    QueueFull { app: String, waiting: usize },
    #[error("every machine of {app} stayed at its hard limit for {waited:?}")]
    QueueTimeout { app: String, waited: Duration },
}

impl Snapshot {
    /// Admits one connection or request to a machine of `service` not in `tried`.
    pub async fn admit(
        &self,
        app: &AppEntry,
        service: &ServiceEntry,
        tried: &[String],
        queue_timeout: Duration,
    ) -> Result<(Pick, LoadGuard), AdmitError> {
        let untried = &|p: &Pick| !tried.contains(&p.machine.config.id);
        if !self.eligible(app, service).iter().any(untried) {
            return Err(AdmitError::NoHealthyMachine {
                app: app.name.clone(),
            });
        }
        let attempt = || async move {
            self.ranked(app, service)
                .into_iter()
                .filter(untried)
                .find_map(|p| {
                    let guard = p.slot.load.try_acquire(p.slot.limits.hard)?;
                    Some((p, guard))
                })
        };
        service
            .queue
            .wait_for(queue_timeout, attempt)
            .await
            .map_err(|e| match e {
                QueueError::Full(waiting) => AdmitError::QueueFull {
                    app: app.name.clone(),
                    waiting,
                },
                QueueError::TimedOut(waited) => AdmitError::QueueTimeout {
                    app: app.name.clone(),
                    waited,
                },
            })
    }
}
