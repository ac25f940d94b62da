//! ACME Renewal Information (RFC 9773): when the CA wants a certificate
//! renewed. Asked of a directory that offers it, once per certificate until
//! the CA's Retry-After has passed; a directory that does not offer it is not
//! asked again, and its certificates renew at two thirds of their lifetime.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use instant_acme::{Account, CertificateIdentifier};
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::CertificateDer;

/// Bounds on how soon the CA's window is asked for again, whatever its
/// Retry-After says.
const MIN_ASK_EVERY: Duration = Duration::from_secs(60);
const MAX_ASK_EVERY: Duration = Duration::from_secs(24 * 3600);
/// After a failed request, the 2/3 rule holds until this much later.
const ASK_AFTER_FAILURE: Duration = Duration::from_secs(3600);

/// What the directory said, by hostname.
#[derive(Default)]
pub(crate) struct RenewalInfo {
    /// `Some(false)` once the directory turned out not to offer ARI.
    offered: Option<bool>,
    /// Not asked before this, after the account could not be had.
    paused_until: Option<Instant>,
    advice: HashMap<String, Advice>,
}

struct Advice {
    /// The certificate it is about (`AKI.serial`).
    certificate: String,
    /// The moment picked in the CA's window; `None` after a failed request.
    renew_at: Option<SystemTime>,
    ask_again: Instant,
}

impl RenewalInfo {
    /// Whether asking may help: the directory may offer it, and no failure
    /// to reach it is recent.
    pub(crate) fn worth_asking(&self) -> bool {
        self.offered != Some(false) && self.paused_until.is_none_or(|t| t <= Instant::now())
    }

    /// Asks nothing for a while (the account, which asking needs, could not be had).
    pub(crate) fn pause(&mut self) {
        self.paused_until = Some(Instant::now() + ASK_AFTER_FAILURE);
    }

    /// When the CA wants `leaf` (the certificate held for `hostname`)
    /// renewed, if its directory says.
    pub(crate) async fn renew_at(
        &mut self,
        account: &Account,
        hostname: &str,
        leaf: &CertificateDer<'_>,
    ) -> Option<SystemTime> {
        if self.offered == Some(false) {
            return None;
        }
        let id = CertificateIdentifier::try_from(leaf).ok()?;
        let key = id.to_string();
        let now = Instant::now();
        if let Some(a) = self.advice.get(hostname) {
            if a.certificate == key && a.ask_again > now {
                return a.renew_at;
            }
        }
        let (renew_at, ask_in) = match account.renewal_info(&id).await {
            Ok((info, retry_after)) => {
                self.offered = Some(true);
                let window = &info.suggested_window;
                let at = pick(
                    at_unix(window.start.unix_timestamp()),
                    at_unix(window.end.unix_timestamp()),
                    SystemTime::now(),
                    random(),
                );
                tracing::debug!(hostname, renew_at = ?at, explanation = ?info.explanation_url, "ACME: the CA's renewal window");
                (Some(at), retry_after.clamp(MIN_ASK_EVERY, MAX_ASK_EVERY))
            }
            Err(instant_acme::Error::Unsupported(_)) => {
                self.offered = Some(false);
                return None;
            }
            Err(e) => {
                tracing::debug!(hostname, error = %e, "ACME: no renewal information; renewing at two thirds of the lifetime");
                (None, ASK_AFTER_FAILURE)
            }
        };
        let advice = Advice {
            certificate: key,
            renew_at,
            ask_again: now + ask_in,
        };
        self.advice.insert(hostname.to_owned(), advice);
        renew_at
    }

    /// Forgets hostnames no longer wanted.
    pub(crate) fn retain(&mut self, wanted: impl Fn(&str) -> bool) {
        self.advice.retain(|h, _| wanted(h));
    }
}

/// A moment in the CA's window chosen by `random` (uniform over the window,
/// so that a fleet of clients does not come at once); now if the window has
/// begun (RFC 9773, 4.2).
fn pick(start: SystemTime, end: SystemTime, now: SystemTime, random: u64) -> SystemTime {
    if start <= now {
        return now;
    }
    let span = end.duration_since(start).unwrap_or_default();
    let share = (random >> 11) as f64 / (1u64 << 53) as f64;
    start + span.mul_f64(share)
}

fn at_unix(seconds: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
}

fn random() -> u64 {
    let mut bytes = [0u8; 8];
    // Without randomness the window's start is as good a choice as any.
    let _ = SystemRandom::new().fill(&mut bytes);
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn picks_within_the_window_or_now_once_it_has_begun() {
        let (start, end) = (t(1_000), t(2_000));
        assert_eq!(pick(start, end, t(500), 0), start);
        assert!(pick(start, end, t(500), u64::MAX) <= end);
        assert!(pick(start, end, t(500), u64::MAX) > t(1_999));
        let mid = pick(start, end, t(500), u64::MAX / 2);
        assert!(mid > t(1_400) && mid < t(1_600), "{mid:?}");
        assert_eq!(
            pick(start, end, t(1_500), 7),
            t(1_500),
            "the window has begun"
        );
        assert_eq!(
            pick(start, t(900), t(500), u64::MAX),
            start,
            "a backwards window"
        );
    }
}
