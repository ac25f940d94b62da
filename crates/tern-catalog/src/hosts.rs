//! Hostname lookup: exact names first, then the most specific `*.suffix` wildcard.

use std::borrow::Cow;

/// A persistent map: a clone shares its structure, and a change copies only the
/// path to what changed, so one app's hostnames change without copying the rest.
type Map<T> = imbl::GenericHashMap<
    String,
    T,
    foldhash::fast::RandomState,
    imbl::shared_ptr::DefaultSharedPtr,
>;

/// Maps hostnames (exact or `*.suffix`) to a value, usually an app.
#[derive(Debug, Clone)]
pub struct HostIndex<T: Clone> {
    exact: Map<T>,
    /// Keyed by the suffix without `*.`; a wildcard matches one or more labels.
    wildcard: Map<T>,
}

impl<T: Clone> Default for HostIndex<T> {
    fn default() -> Self {
        HostIndex {
            exact: Map::with_hasher(foldhash::fast::RandomState::default()),
            wildcard: Map::with_hasher(foldhash::fast::RandomState::default()),
        }
    }
}

impl<T: Clone> HostIndex<T> {
    pub fn insert(&mut self, pattern: &str, value: T) {
        let pattern = pattern.to_ascii_lowercase();
        match pattern.strip_prefix("*.") {
            Some(suffix) => self.wildcard.insert(suffix.to_owned(), value),
            None => self.exact.insert(pattern, value),
        };
    }

    /// Removes `pattern` if `owned` says its value is the one to remove: a
    /// hostname that has moved to another app meanwhile stays with it.
    pub fn remove_if(&mut self, pattern: &str, owned: impl Fn(&T) -> bool) {
        let pattern = pattern.to_ascii_lowercase();
        let (map, key) = match pattern.strip_prefix("*.") {
            Some(suffix) => (&mut self.wildcard, suffix.to_owned()),
            None => (&mut self.exact, pattern),
        };
        if map.get(&key).is_some_and(owned) {
            map.remove(&key);
        }
    }

    /// Looks up a host as sent by a client: any `:port` and trailing dot are ignored.
    pub fn lookup(&self, host: &str) -> Option<&T> {
        let host = strip_port(host).trim_end_matches('.');
        // Clients nearly always send lowercase: copy only when there is case to fold.
        let host: Cow<'_, str> = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            host.to_ascii_lowercase().into()
        } else {
            host.into()
        };
        if let Some(v) = self.exact.get(host.as_ref()) {
            return Some(v);
        }
        let mut rest = host.as_ref();
        while let Some((_, suffix)) = rest.split_once('.') {
            if let Some(v) = self.wildcard.get(suffix) {
                return Some(v);
            }
            rest = suffix;
        }
        None
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // IPv6 literal: "[::1]:443".
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_then_most_specific_wildcard() {
        let mut idx = HostIndex::default();
        idx.insert("demo.localhost", "exact");
        idx.insert("*.demo.localhost", "wild");
        idx.insert("*.localhost", "outer");
        assert_eq!(idx.lookup("demo.localhost"), Some(&"exact"));
        assert_eq!(idx.lookup("DEMO.localhost:8080"), Some(&"exact"));
        assert_eq!(idx.lookup("a.demo.localhost"), Some(&"wild"));
        assert_eq!(idx.lookup("a.b.demo.localhost."), Some(&"wild"));
        assert_eq!(idx.lookup("other.localhost"), Some(&"outer"));
        assert_eq!(idx.lookup("localhost"), None);
        assert_eq!(idx.lookup("example.com"), None);
        assert_eq!(idx.lookup("[::1]:80"), None);
        assert_eq!(idx.lookup("A.Demo.LOCALHOST"), Some(&"wild"));
        assert_eq!(idx.lookup("Other.Localhost."), Some(&"outer"));
    }
}
