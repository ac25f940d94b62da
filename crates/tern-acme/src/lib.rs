//! Certificates by ACME (RFC 8555): an account per directory, kept on disk; an
//! order per hostname, proved by TLS-ALPN-01 (RFC 8737) or HTTP-01 through the
//! answers in [`tern_challenges::Challenges`]; the issued certificate written
//! into the certificate directory that SNI serves from; and renewal at two
//! thirds of its lifetime (or earlier, when the CA's renewal information asks),
//! with a bound on orders per hostname per hour. On an
//! etcd catalog the fleet shares it all: one node orders a name under a lock,
//! every node answers its validations, and the certificate, sealed with the
//! fleet key, is installed on every node.
#![forbid(unsafe_code)]

mod account;
mod alpn_cert;
mod ari;
mod claimed;
mod error;
mod files;
mod fleet;
mod follow;
mod limiter;
mod manager;
mod order;
mod seal;

pub use error::AcmeError;
pub use fleet::FleetShare;
pub use manager::{spawn, Answering, Status};
pub use seal::FleetKey;
