//! The fields an edge sets on a backhaul request, and only a backhaul peer may:
//! every client-sent `Tern-*` field is removed at the edge, and a node reads these
//! only from a peer that the fleet CA vouched for.

use http::HeaderName;

/// The machine the request is for, by id.
pub static MACHINE: HeaderName = HeaderName::from_static("tern-backhaul-machine");
/// The service, by the machine's internal port.
pub static PORT: HeaderName = HeaderName::from_static("tern-backhaul-port");
/// The client's address and port (for a PROXY protocol header).
pub static CLIENT: HeaderName = HeaderName::from_static("tern-backhaul-client");
/// The address and port the client connected to, at the edge.
pub static LOCAL: HeaderName = HeaderName::from_static("tern-backhaul-local");
/// A CONNECT for raw TCP: the PROXY protocol header (`v1`, `v2`) the machine
/// gets, with `CLIENT` and `LOCAL` as its addresses.
pub static PROXY_PROTO: HeaderName = HeaderName::from_static("tern-backhaul-proxy-proto");
/// A CONNECT for an HTTP upgrade: the protocol asked for (`Upgrade`), since HTTP/2
/// forbids the field itself.
pub static UPGRADE: HeaderName = HeaderName::from_static("tern-backhaul-upgrade");
/// A CONNECT for an HTTP upgrade: the original request's method and target.
pub static METHOD: HeaderName = HeaderName::from_static("tern-backhaul-method");
pub static TARGET: HeaderName = HeaderName::from_static("tern-backhaul-target");
/// In the answer to an upgrade's CONNECT: the machine's status (101 when it
/// switched), since the CONNECT itself must succeed for bytes to flow.
pub static STATUS: HeaderName = HeaderName::from_static("tern-backhaul-status");

/// On a node's own error answer to a peer: the request reached no machine, so
/// the edge may send it to another. Set only by Tern, removed from machines'
/// answers.
pub static REFUSED: HeaderName = HeaderName::from_static("tern-backhaul-refused");

/// Whether a field is one of these (removed before a request reaches a machine).
pub fn is_backhaul_field(name: &HeaderName) -> bool {
    name.as_str().starts_with("tern-backhaul-")
}
