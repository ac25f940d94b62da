//! Raw TCP proxying: the PROXY protocol header toward the machine, then bytes both
//! ways with each direction's end-of-stream passed on as a half-close.
#![forbid(unsafe_code)]

mod duplex;
mod proxy_proto;

pub use duplex::{splice, Transferred};
pub use proxy_proto::proxy_header;
