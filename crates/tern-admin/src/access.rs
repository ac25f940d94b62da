//! Who may read the admin listener: anyone when it is on loopback, otherwise only
//! a request that carries the access token, compared in constant time.

use std::net::SocketAddr;

use http::{header, Request};
use ring::rand::{SecureRandom, SystemRandom};
use subtle::ConstantTimeEq;

use crate::query::query_value;

/// The admin listener's access rule.
#[derive(Debug, Clone, Default)]
pub enum Access {
    /// On loopback: whoever can connect is on this host.
    #[default]
    Open,
    /// Elsewhere: the page, `/dashboard.json`, `/catalog`, `/reload`, the machine
    /// actions and every `/debug/` endpoint need this token. `/healthz` and
    /// `/metrics` stay open, for load balancers and scrapers.
    Token(String),
}

impl Access {
    /// The rule for a listener on `listen`: the configured token if any; else
    /// none on loopback; else a fresh random one (128 bits, in hex).
    pub fn for_listener(listen: SocketAddr, configured: Option<&str>) -> Result<Access, NoRandom> {
        Ok(match configured {
            Some(t) => Access::Token(t.to_owned()),
            None if listen.ip().is_loopback() => Access::Open,
            None => Access::Token(random_token()?),
        })
    }

    /// Whether `path` may be served without the token.
    fn is_open_path(path: &str) -> bool {
        matches!(path, "/healthz" | "/metrics")
    }

    /// Whether `req` may be served: the token in `Authorization: Bearer TOKEN`, or
    /// in the query as `token=TOKEN` (for the page's first load in a browser).
    pub fn allows<B>(&self, req: &Request<B>) -> bool {
        let Access::Token(token) = self else {
            return true;
        };
        if Self::is_open_path(req.uri().path()) {
            return true;
        }
        let bearer = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        [bearer, query_value(req, "token")]
            .into_iter()
            .flatten()
            .any(|given| bool::from(given.as_bytes().ct_eq(token.as_bytes())))
    }
}

/// The operating system gave no random numbers for a token.
#[derive(Debug, thiserror::Error)]
#[error("the operating system gave no random numbers for the admin listener's token")]
pub struct NoRandom;

fn random_token() -> Result<String, NoRandom> {
    let mut bytes = [0u8; 16];
    SystemRandom::new().fill(&mut bytes).map_err(|_| NoRandom)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, auth: Option<&str>) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        if let Some(a) = auth {
            b = b.header(header::AUTHORIZATION, a);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn the_rule_follows_the_listener_and_the_config() {
        let lo: SocketAddr = "127.0.0.1:9090".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:9090".parse().unwrap();
        assert!(matches!(
            Access::for_listener(lo, None).unwrap(),
            Access::Open
        ));
        let configured = Access::for_listener(lo, Some("configured-token-1")).unwrap();
        assert!(matches!(configured, Access::Token(t) if t == "configured-token-1"));
        let Access::Token(made) = Access::for_listener(any, None).unwrap() else {
            panic!("off loopback, a token is made");
        };
        assert_eq!(made.len(), 32);
        let Access::Token(again) = Access::for_listener(any, None).unwrap() else {
            panic!("off loopback, a token is made");
        };
        assert_ne!(made, again, "each start makes its own");
    }

    #[test]
    fn open_access_lets_everything_through() {
        assert!(Access::Open.allows(&req("/debug/connections", None)));
    }

    #[test]
    fn a_token_is_needed_everywhere_but_health_and_metrics() {
        let a = Access::Token("s3cret-token".into());
        assert!(a.allows(&req("/healthz", None)));
        assert!(a.allows(&req("/metrics", None)));
        for path in [
            "/",
            "/dashboard.json",
            "/catalog",
            "/debug/connections",
            "/reload",
        ] {
            assert!(!a.allows(&req(path, None)), "{path}");
            assert!(!a.allows(&req(path, Some("Bearer wrong"))), "{path}");
            assert!(
                !a.allows(&req(&format!("{path}?token=s3cret"), None)),
                "{path}"
            );
            assert!(!a.allows(&req(path, Some("s3cret-token"))), "{path}");
            assert!(a.allows(&req(path, Some("Bearer s3cret-token"))), "{path}");
            assert!(
                a.allows(&req(&format!("{path}?x=1&token=s3cret-token"), None)),
                "{path}"
            );
        }
    }
}
