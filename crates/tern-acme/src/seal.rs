//! The fleet key, and what it seals for etcd: a certificate with its private
//! key, under AES-256-GCM with a fresh random nonce each time, bound to its
//! hostname, so that a sealed value moved under another name's key opens to
//! nothing.

use std::path::Path;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use crate::error::AcmeError;

/// The first byte of a sealed value: its format, so that a later one can differ.
const FORMAT: u8 = 1;

/// The key the fleet's nodes share; never printed.
pub struct FleetKey(LessSafeKey);

impl std::fmt::Debug for FleetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FleetKey(..)")
    }
}

/// A fleet key that is not 64 hex digits.
#[derive(Debug, thiserror::Error)]
#[error("expected 64 hex digits (32 bytes), such as `openssl rand -hex 32` prints")]
pub struct NotAKey;

/// A sealed value that does not open: another key, another name, or damage.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot open the sealed certificate: not sealed with this fleet key for this name, or damaged"
)]
pub struct Unopened;

impl FleetKey {
    /// Reads a key file: 64 hex digits (`openssl rand -hex 32`), surrounding
    /// whitespace allowed.
    pub fn load(path: &Path) -> Result<FleetKey, AcmeError> {
        let text = std::fs::read_to_string(path).map_err(|e| AcmeError::FleetKey {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        FleetKey::from_hex(text.trim()).map_err(|e| AcmeError::FleetKey {
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }

    pub fn from_hex(hex: &str) -> Result<FleetKey, NotAKey> {
        let wrong = || NotAKey;
        if hex.len() != 64 || !hex.is_ascii() {
            return Err(wrong());
        }
        let bytes = (0..32)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| wrong())?;
        let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| wrong())?;
        Ok(FleetKey(LessSafeKey::new(key)))
    }

    /// `plain` sealed for `hostname`: the format byte, the nonce, then the
    /// ciphertext and its tag.
    pub fn seal(&self, hostname: &str, plain: &[u8]) -> Result<Vec<u8>, AcmeError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| AcmeError::local(hostname, "no randomness for the sealing nonce"))?;
        let mut sealed = Vec::with_capacity(1 + NONCE_LEN + plain.len() + AES_256_GCM.tag_len());
        sealed.push(FORMAT);
        sealed.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(hostname.as_bytes()),
                &mut body,
            )
            .map_err(|_| AcmeError::local(hostname, "sealing the certificate failed"))?;
        sealed.extend_from_slice(&body);
        Ok(sealed)
    }

    pub fn open(&self, hostname: &str, sealed: &[u8]) -> Result<Vec<u8>, Unopened> {
        let (&format, rest) = sealed.split_first().ok_or(Unopened)?;
        if format != FORMAT || rest.len() < NONCE_LEN {
            return Err(Unopened);
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| Unopened)?;
        let mut body = body.to_vec();
        let plain = self
            .0
            .open_in_place(nonce, Aad::from(hostname.as_bytes()), &mut body)
            .map_err(|_| Unopened)?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn opens_only_with_the_same_key_for_the_same_name() {
        let key = FleetKey::from_hex(KEY).unwrap();
        let sealed = key.seal("a.test", b"-----BEGIN PRIVATE KEY-----").unwrap();
        assert!(
            !sealed.windows(5).any(|w| w == b"BEGIN"),
            "not in the clear"
        );
        assert_ne!(
            sealed,
            key.seal("a.test", b"-----BEGIN PRIVATE KEY-----").unwrap(),
            "a fresh nonce each time"
        );
        assert_eq!(
            key.open("a.test", &sealed).unwrap(),
            b"-----BEGIN PRIVATE KEY-----"
        );
        assert!(key.open("b.test", &sealed).is_err(), "bound to its name");
        let other = FleetKey::from_hex(&KEY.replace('0', "1")).unwrap();
        assert!(other.open("a.test", &sealed).is_err());
        let mut damaged = sealed.clone();
        *damaged.last_mut().unwrap() ^= 1;
        assert!(key.open("a.test", &damaged).is_err());
        assert!(key.open("a.test", &sealed[..10]).is_err());
        assert!(key.open("a.test", &[]).is_err());
    }

    #[test]
    fn a_key_is_64_hex_digits() {
        assert!(FleetKey::from_hex(&KEY[..62]).is_err());
        assert!(FleetKey::from_hex(&KEY.replace('0', "g")).is_err());
        assert!(FleetKey::from_hex(&format!("{}é", &KEY[..62])).is_err());
        assert!(FleetKey::from_hex(&KEY.to_uppercase()).is_ok());
    }
}
