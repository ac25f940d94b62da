//! One order for one hostname: its authorization answered by the configured
//! challenge (on this node, and through etcd on every node of a fleet), then
//! finalized with a fresh P-256 key, then the chain fetched.

use std::time::Duration;

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewOrder, Order, OrderStatus,
    RetryPolicy,
};
use tern_challenges::Challenges;
use tern_config::AcmeChallenge;

use crate::alpn_cert::tls_alpn01_cert;
use crate::error::AcmeError;
use crate::fleet::OrderLock;

/// An issued certificate: its chain and its private key, both PEM.
pub(crate) struct Issued {
    pub(crate) chain_pem: String,
    pub(crate) key_pem: String,
}

/// How long the server may take to validate, and then to issue. The first look
/// comes soon, since a nearby server answers in milliseconds; the server's
/// Retry-After, when it sends one, takes precedence.
fn patience() -> RetryPolicy {
    RetryPolicy::new()
        .initial_delay(Duration::from_millis(50))
        .backoff(2.0)
        .timeout(Duration::from_secs(90))
}

pub(crate) fn challenge_name(kind: AcmeChallenge) -> &'static str {
    match kind {
        AcmeChallenge::TlsAlpn01 => "tls-alpn-01",
        AcmeChallenge::Http01 => "http-01",
    }
}

/// Orders a certificate for `hostname`, answering through `answers` while the
/// order is open.
pub(crate) async fn order(
    account: &Account,
    hostname: &str,
    kind: AcmeChallenge,
    mut answers: Answers<'_>,
) -> Result<Issued, AcmeError> {
    let ids = [Identifier::Dns(hostname.to_owned())];
    let mut order = account
        .new_order(&NewOrder::new(&ids))
        .await
        .map_err(|e| AcmeError::server(hostname, "new order", e))?;
    answer(&mut order, hostname, kind, &mut answers).await?;
    let status = order
        .poll_ready(&patience())
        .await
        .map_err(|e| AcmeError::server(hostname, "validation", e))?;
    drop(answers);
    if status != OrderStatus::Ready {
        return Err(AcmeError::Invalid {
            hostname: hostname.to_owned(),
            problem: validation_problem(&mut order).await,
        });
    }
    let key_pem = order
        .finalize()
        .await
        .map_err(|e| AcmeError::server(hostname, "finalize", e))?;
    let chain_pem = order
        .poll_certificate(&patience())
        .await
        .map_err(|e| AcmeError::server(hostname, "certificate download", e))?;
    Ok(Issued { chain_pem, key_pem })
}

/// Sets the answer of each pending authorization and tells the server to validate.
async fn answer(
    order: &mut Order,
    hostname: &str,
    kind: AcmeChallenge,
    answers: &mut Answers<'_>,
) -> Result<(), AcmeError> {
    let wanted = match kind {
        AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        AcmeChallenge::Http01 => ChallengeType::Http01,
    };
    let mut authorizations = order.authorizations();
    while let Some(next) = authorizations.next().await {
        let mut authz = next.map_err(|e| AcmeError::server(hostname, "authorization", e))?;
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => {
                return Err(AcmeError::Invalid {
                    hostname: hostname.to_owned(),
                    problem: format!("authorization is {other:?}"),
                })
            }
        }
        let mut challenge = authz
            .challenge(wanted.clone())
            .ok_or(AcmeError::NoChallenge {
                hostname: hostname.to_owned(),
                challenge: challenge_name(kind),
            })?;
        let key_authorization = challenge.key_authorization();
        match kind {
            AcmeChallenge::Http01 => {
                answers
                    .http01(&challenge.token, key_authorization.as_str())
                    .await?
            }
            AcmeChallenge::TlsAlpn01 => {
                answers
                    .tls_alpn01(hostname, key_authorization.digest().as_ref())
                    .await?
            }
        }
        challenge
            .set_ready()
            .await
            .map_err(|e| AcmeError::server(hostname, "challenge", e))?;
    }
    Ok(())
}

/// The first problem document among the authorizations' challenges.
async fn validation_problem(order: &mut Order) -> String {
    let mut authorizations = order.authorizations();
    while let Some(Ok(authz)) = authorizations.next().await {
        if let Some(problem) = authz.challenges.iter().find_map(|c| c.error.as_ref()) {
            return problem.to_string();
        }
    }
    "the order became invalid, with no problem document".to_owned()
}

/// The answers an order set, taken back when it no longer needs them (also when
/// it fails or is dropped). In a fleet they are shared too, under the order's
/// lease, which takes them back from every node when the order ends.
pub(crate) struct Answers<'a> {
    challenges: &'a Challenges,
    fleet: Option<&'a OrderLock>,
    tokens: Vec<String>,
    hostname: Option<String>,
}

impl<'a> Answers<'a> {
    pub(crate) fn new(challenges: &'a Challenges, fleet: Option<&'a OrderLock>) -> Self {
        Answers {
            challenges,
            fleet,
            tokens: Vec::new(),
            hostname: None,
        }
    }

    async fn http01(&mut self, token: &str, key_authorization: &str) -> Result<(), AcmeError> {
        self.challenges.set_http01(token, key_authorization);
        self.tokens.push(token.to_owned());
        if let Some(lock) = self.fleet {
            lock.share_http01(token, key_authorization).await?;
        }
        Ok(())
    }

    async fn tls_alpn01(&mut self, hostname: &str, digest: &[u8]) -> Result<(), AcmeError> {
        let cert = tls_alpn01_cert(hostname, digest)?;
        self.challenges.set_tls_alpn01(hostname, cert);
        self.hostname = Some(hostname.to_owned());
        if let Some(lock) = self.fleet {
            lock.share_tls_alpn01(digest).await?;
        }
        Ok(())
    }
}

impl Drop for Answers<'_> {
    fn drop(&mut self) {
        for token in &self.tokens {
            self.challenges.remove_http01(token);
        }
        if let Some(h) = &self.hostname {
            self.challenges.remove_tls_alpn01(h);
        }
    }
}
