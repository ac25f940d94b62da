//! Reading a value out of a request's query string.

use http::Request;

/// The raw value of `key` in `req`'s query string (`?a=1&key=value`), if any.
pub(crate) fn query_value<'r, B>(req: &'r Request<B>, key: &str) -> Option<&'r str> {
    req.uri()
        .query()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// The value of `key` as a number, if it is one.
pub(crate) fn query_u64<B>(req: &Request<B>, key: &str) -> Option<u64> {
    query_value(req, key)?.parse().ok()
}
