//! Where the fleet lives in etcd, under one prefix, and what each key holds:
//!
//! | key | value | written by |
//! |---|---|---|
//! | `PREFIX/apps/NAME` | an app's definition (JSON) | `tern catalog push` |
//! | `PREFIX/machines/ID` | a machine's definition | `tern catalog push` |
//! | `PREFIX/regions` | the operator's RTT seeds | `tern catalog push` |
//! | `PREFIX/nodes/ID` | a node's id, region and backhaul address | the node, under its lease |
//! | `PREFIX/status/ID` | a machine's live status | its node, under its lease |
//! | `PREFIX/rtts/ID` | the round trips node ID measured to its peers | that node, under its lease |
//! | `PREFIX/acme/certs/HOST` | an ACME certificate and its key, sealed with the fleet key | the node that ordered it |
//! | `PREFIX/acme/locks/HOST` | the node ordering HOST (or that failed to, until its retry) | that node, under an order's lease |
//! | `PREFIX/acme/http-01/TOKEN` | an HTTP-01 key authorization | the ordering node, under the order's lease |
//! | `PREFIX/acme/tls-alpn-01/HOST` | a TLS-ALPN-01 digest, hex | the ordering node, under the order's lease |
//! | `PREFIX/acme/acks/KIND:NAME:NODE` | nothing: NODE holds that answer | NODE, under the order's lease |

use tern_catalog::model::{AppDef, MachineDef, MachineStatus, MeasuredRtts, NodeDef, RegionSeeds};
use tern_catalog::Change;

/// The key layout under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

/// What a key names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    App(String),
    Machine(String),
    Regions,
    Node(String),
    Status(String),
    Rtts(String),
}

/// What a key under `PREFIX/acme/` names: ACME's state shared by the fleet,
/// which the catalog itself ignores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcmeKey {
    Certificate(String),
    Lock(String),
    Http01(String),
    TlsAlpn01(String),
}

#[derive(Debug, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct DecodeError {
    pub key: String,
    pub reason: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.trim_end_matches('/').to_owned(),
        }
    }

    /// Everything Tern keeps: a prefix ending in `/`, so that `/tern` never
    /// matches `/ternary`.
    pub fn all(&self) -> String {
        format!("{}/", self.prefix)
    }

    /// The keys of one kind (`apps/`, `machines/`...).
    pub fn kind(&self, kind: &str) -> String {
        format!("{}/{kind}/", self.prefix)
    }

    pub fn key(&self, key: &Key) -> String {
        let p = &self.prefix;
        match key {
            Key::App(n) => format!("{p}/apps/{n}"),
            Key::Machine(id) => format!("{p}/machines/{id}"),
            Key::Regions => format!("{p}/regions"),
            Key::Node(id) => format!("{p}/nodes/{id}"),
            Key::Status(id) => format!("{p}/status/{id}"),
            Key::Rtts(id) => format!("{p}/rtts/{id}"),
        }
    }

    /// Everything ACME shares.
    pub fn acme_all(&self) -> String {
        format!("{}/acme/", self.prefix)
    }

    /// Where nodes say they hold a shared challenge answer (under its lease).
    pub fn acme_acks(&self) -> String {
        format!("{}/acme/acks/", self.prefix)
    }

    /// Where nodes say they hold the answer at `answer`: one key per node below
    /// it, `acme/acks/KIND:NAME:NODE`.
    pub fn acme_ack_prefix(&self, answer: &AcmeKey) -> String {
        let name = match answer {
            AcmeKey::Http01(token) => format!("http-01:{token}"),
            AcmeKey::TlsAlpn01(host) => format!("tls-alpn-01:{host}"),
            AcmeKey::Certificate(host) | AcmeKey::Lock(host) => format!("other:{host}"),
        };
        format!("{}{name}:", self.acme_acks())
    }

    /// The key under which `node` says it holds the answer at `answer`.
    pub fn acme_ack(&self, answer: &AcmeKey, node: &str) -> String {
        format!("{}{node}", self.acme_ack_prefix(answer))
    }

    pub fn acme(&self, key: &AcmeKey) -> String {
        let p = &self.prefix;
        match key {
            AcmeKey::Certificate(h) => format!("{p}/acme/certs/{h}"),
            AcmeKey::Lock(h) => format!("{p}/acme/locks/{h}"),
            AcmeKey::Http01(t) => format!("{p}/acme/http-01/{t}"),
            AcmeKey::TlsAlpn01(h) => format!("{p}/acme/tls-alpn-01/{h}"),
        }
    }

    /// What an ACME key names; `None` for anything else.
    pub fn parse_acme(&self, key: &str) -> Option<AcmeKey> {
        let rest = key.strip_prefix(&self.acme_all())?;
        let (kind, name) = rest.split_once('/')?;
        if name.is_empty() || name.contains('/') {
            return None;
        }
        let name = name.to_owned();
        match kind {
            "certs" => Some(AcmeKey::Certificate(name)),
            "locks" => Some(AcmeKey::Lock(name)),
            "http-01" => Some(AcmeKey::Http01(name)),
            "tls-alpn-01" => Some(AcmeKey::TlsAlpn01(name)),
            _ => None,
        }
    }

    /// What `key` names; `None` for a key Tern does not know (left alone).
    pub fn parse(&self, key: &str) -> Option<Key> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix('/')?;
        if rest == "regions" {
            return Some(Key::Regions);
        }
        let (kind, name) = rest.split_once('/')?;
        if name.is_empty() || name.contains('/') {
            return None;
        }
        let name = name.to_owned();
        match kind {
            "apps" => Some(Key::App(name)),
            "machines" => Some(Key::Machine(name)),
            "nodes" => Some(Key::Node(name)),
            "status" => Some(Key::Status(name)),
            "rtts" => Some(Key::Rtts(name)),
            _ => None,
        }
    }
}

/// The catalog change a key's new value (or its deletion, `None`) makes.
pub fn change(key: &Key, value: Option<&[u8]>) -> Result<Change, DecodeError> {
    fn decode<T: serde::de::DeserializeOwned>(
        key: &Key,
        v: Option<&[u8]>,
    ) -> Result<Option<T>, DecodeError> {
        v.map(|v| {
            serde_json::from_slice(v).map_err(|e| DecodeError {
                key: format!("{key:?}"),
                reason: e.to_string(),
            })
        })
        .transpose()
    }
    let named = |what: &str, name: &str, inner: &str| -> Result<(), DecodeError> {
        if name == inner {
            Ok(())
        } else {
            Err(DecodeError {
                key: format!("{key:?}"),
                reason: format!("holds {what} {inner:?}, not {name:?}"),
            })
        }
    };
    Ok(match key {
        Key::App(n) => {
            let def: Option<AppDef> = decode(key, value)?;
            if let Some(d) = &def {
                named("app", n, &d.name)?;
            }
            Change::App(n.clone(), def)
        }
        Key::Machine(id) => {
            let def: Option<MachineDef> = decode(key, value)?;
            if let Some(d) = &def {
                named("machine", id, &d.id)?;
            }
            Change::Machine(id.clone(), def)
        }
        Key::Regions => Change::Regions(decode::<RegionSeeds>(key, value)?.unwrap_or_default()),
        Key::Node(id) => {
            let def: Option<NodeDef> = decode(key, value)?;
            if let Some(d) = &def {
                named("node", id, &d.id)?;
            }
            Change::Node(id.clone(), def)
        }
        Key::Status(id) => Change::Status(id.clone(), decode::<MachineStatus>(key, value)?),
        Key::Rtts(id) => Change::Rtts(id.clone(), decode::<MeasuredRtts>(key, value)?),
    })
}

/// A value as etcd stores it.
pub fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // The catalog's types serialise without fail: plain data, string keys.
    serde_json::to_vec(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_strangers_are_left_alone() {
        let k = Keys::new("/tern/");
        for key in [
            Key::App("web".into()),
            Key::Machine("m1".into()),
            Key::Regions,
            Key::Node("ams-1".into()),
            Key::Status("m1".into()),
            Key::Rtts("ams-1".into()),
        ] {
            assert_eq!(k.parse(&k.key(&key)), Some(key));
        }
        assert_eq!(k.all(), "/tern/");
        assert_eq!(k.parse("/ternary/apps/web"), None);
        assert_eq!(k.parse("/tern/apps/"), None);
        assert_eq!(k.parse("/tern/apps/a/b"), None);
        assert_eq!(k.parse("/tern/other/x"), None);
        for key in [
            AcmeKey::Certificate("a.test".into()),
            AcmeKey::Lock("a.test".into()),
            AcmeKey::Http01("tok".into()),
            AcmeKey::TlsAlpn01("a.test".into()),
        ] {
            let text = k.acme(&key);
            assert_eq!(k.parse_acme(&text), Some(key));
            assert_eq!(k.parse(&text), None, "the catalog leaves ACME's keys alone");
        }
        assert_eq!(
            k.acme_ack(&AcmeKey::Http01("tok".into()), "ams-1"),
            "/tern/acme/acks/http-01:tok:ams-1"
        );
        assert_eq!(
            k.acme_ack_prefix(&AcmeKey::TlsAlpn01("a.test".into())),
            "/tern/acme/acks/tls-alpn-01:a.test:"
        );
        assert_eq!(k.parse_acme("/tern/acme/certs/"), None);
        assert_eq!(k.parse_acme("/tern/acme/other/x"), None);
    }

    #[test]
    fn a_value_must_name_what_its_key_names() {
        let node = NodeDef {
            id: "ams-1".into(),
            region: "ams".into(),
            backhaul: None,
        };
        let v = encode(&node);
        assert!(change(&Key::Node("ams-1".into()), Some(&v)).is_ok());
        assert!(change(&Key::Node("ord-1".into()), Some(&v)).is_err());
        assert!(change(&Key::Node("ams-1".into()), Some(b"{not json")).is_err());
        assert_eq!(
            change(&Key::Node("x".into()), None).unwrap(),
            Change::Node("x".into(), None)
        );
    }
}
