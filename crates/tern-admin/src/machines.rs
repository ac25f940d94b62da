//! `POST /machines/ID/start`, `/stop` and `/suspend`, and each machine's
//! lifecycle in `/catalog`: what the admin port asks of the node's lifecycle
//! manager, which the binary plugs in.

use std::future::Future;
use std::pin::Pin;

use http::StatusCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineAction {
    Start,
    Stop,
    Suspend,
}

impl MachineAction {
    pub fn parse(word: &str) -> Option<MachineAction> {
        match word {
            "start" => Some(MachineAction::Start),
            "stop" => Some(MachineAction::Stop),
            "suspend" => Some(MachineAction::Suspend),
            _ => None,
        }
    }
}

/// Why an action was not done, with the HTTP status that says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionError {
    pub status: StatusCode,
    pub message: String,
}

pub type ActionFuture<'a> = Pin<Box<dyn Future<Output = Result<String, ActionError>> + Send + 'a>>;

/// The node's lifecycle manager, as the admin port sees it.
pub trait MachineAdmin: Send + Sync + 'static {
    /// Does `action` to machine `id` and waits for it; the state it ended in.
    fn act<'a>(&'a self, id: &'a str, action: MachineAction) -> ActionFuture<'a>;
    /// What the lifecycle manager knows of one of this node's machines (its last
    /// transition, start and stop counts), for `/catalog`; `None` for machines
    /// it does not run.
    fn lifecycle(&self, id: &str) -> Option<serde_json::Value>;
}

/// The machine and the action of a `/machines/ID/ACTION` path.
pub(crate) fn parse_path(path: &str) -> Option<(&str, Option<MachineAction>)> {
    let rest = path.strip_prefix("/machines/")?;
    let (id, action) = rest.split_once('/')?;
    if id.is_empty() {
        return None;
    }
    Some((id, MachineAction::parse(action)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_a_machine_and_an_action() {
        assert_eq!(
            parse_path("/machines/m1/start"),
            Some(("m1", Some(MachineAction::Start)))
        );
        assert_eq!(parse_path("/machines/m1/reboot"), Some(("m1", None)));
        assert_eq!(parse_path("/machines//stop"), None);
        assert_eq!(parse_path("/machines/m1"), None);
        assert_eq!(parse_path("/catalog"), None);
    }
}
