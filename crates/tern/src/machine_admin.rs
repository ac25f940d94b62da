//! The admin port's view of the lifecycle manager: `POST /machines/ID/ACTION`
//! with each error as an HTTP status, and each machine's lifecycle for /catalog.

use std::sync::Arc;

use http::StatusCode;
use tern_admin::{ActionError, ActionFuture, MachineAction, MachineAdmin};
use tern_machine::{ControlError, Machines, ManageError, StartError};

pub struct AdminMachines(pub Arc<Machines>);

impl MachineAdmin for AdminMachines {
    fn act<'a>(&'a self, id: &'a str, action: MachineAction) -> ActionFuture<'a> {
        Box::pin(async move {
            let done = match action {
                MachineAction::Start => self.0.start(id).await,
                MachineAction::Stop => self.0.stop(id).await,
                MachineAction::Suspend => self.0.suspend(id).await,
            };
            done.map(|state| state.as_str().to_owned())
                .map_err(|e| ActionError {
                    status: status_of(&e),
                    message: e.to_string(),
                })
        })
    }

    fn lifecycle(&self, id: &str) -> Option<serde_json::Value> {
        let c = self.0.controller(id)?;
        let status = c.status();
        let counts = c.counts();
        Some(serde_json::json!({
            "driver": "process",
            "since_last_transition_ms": status.since.elapsed().as_millis() as u64,
            "last_failure": status.failure.map(|f| f.to_string()),
            "cold_starts": counts.cold_starts,
            "resumes": counts.resumes,
            "failed_starts": counts.failed_starts,
            "stops": counts.stops,
            "suspends": counts.suspends,
            "exits": counts.exits,
        }))
    }
}

fn status_of(e: &ManageError) -> StatusCode {
    match e {
        ManageError::Unknown(_) => StatusCode::NOT_FOUND,
        ManageError::NotLocal { .. } | ManageError::External(_) => StatusCode::CONFLICT,
        ManageError::Start {
            error: StartError::Timeout(_),
            ..
        } => StatusCode::GATEWAY_TIMEOUT,
        ManageError::Start { .. } => StatusCode::SERVICE_UNAVAILABLE,
        ManageError::Control(ControlError::Busy { .. }) => StatusCode::CONFLICT,
        ManageError::Control(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}
