//! AIP-158 pagination: page-size rules and opaque, tamper-evident page tokens.
//!
//! A token is `base64url(payload || HMAC-SHA256(key, scope || payload))`, where the payload
//! is the JSON of a service-chosen cursor and `scope` names the list it belongs to (for
//! example `trellis.user.v1.UserService/ListUsers`), so a token cannot be altered, forged
//! or replayed against another list.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit as _, Mac as _};
use rand::RngCore as _;
use secrecy::{ExposeSecret as _, SecretString};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::Sha256;

const MAC_LEN: usize = 32;

/// Why a page token or size was rejected. Map both to INVALID_ARGUMENT.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PageError {
    /// The token was not issued by this service for this list, or was altered.
    #[error("page token is invalid or was altered")]
    InvalidToken,
    /// `page_size` was negative (AIP-158).
    #[error("page size must not be negative")]
    NegativePageSize,
}

/// Applies AIP-158's page-size rules: 0 means `default`, above `max` is coerced to `max`,
/// negative is an error.
///
/// # Errors
/// [`PageError::NegativePageSize`] when `requested < 0`.
pub fn page_size(requested: i32, default: u32, max: u32) -> Result<u32, PageError> {
    match u32::try_from(requested) {
        Err(_) => Err(PageError::NegativePageSize),
        Ok(0) => Ok(default.min(max)),
        Ok(size) => Ok(size.min(max)),
    }
}

/// Signs and verifies page tokens with one HMAC-SHA256 key.
#[derive(Clone)]
pub struct PageTokenCodec {
    key: Vec<u8>,
}

impl std::fmt::Debug for PageTokenCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PageTokenCodec { key: [redacted] }")
    }
}

impl PageTokenCodec {
    /// A codec keyed by a configured secret. Every replica must share it for tokens to
    /// work across replicas and restarts.
    pub fn new(secret: &SecretString) -> Self {
        Self {
            key: secret.expose_secret().as_bytes().to_vec(),
        }
    }

    /// A codec with a random 256-bit key: tokens stay valid for this process only.
    pub fn random() -> Self {
        let mut key = vec![0_u8; 32];
        rand::rng().fill_bytes(&mut key);
        Self { key }
    }

    /// Encodes `cursor` as a token valid for `scope` only.
    pub fn encode<T: Serialize>(&self, scope: &str, cursor: &T) -> String {
        // A cursor is plain data (ids, timestamps): serialising it cannot fail.
        let mut bytes = serde_json::to_vec(cursor).unwrap_or_default();
        let tag = self.mac(scope, &bytes);
        bytes.extend_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Decodes a token made by [`Self::encode`] with the same key and `scope`.
    ///
    /// # Errors
    /// [`PageError::InvalidToken`] when the token is malformed, altered, or was issued for
    /// another scope or with another key.
    pub fn decode<T: DeserializeOwned>(&self, scope: &str, token: &str) -> Result<T, PageError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| PageError::InvalidToken)?;
        if bytes.len() <= MAC_LEN {
            return Err(PageError::InvalidToken);
        }
        let (payload, tag) = bytes.split_at(bytes.len() - MAC_LEN);
        let mut mac = self.hmac(scope);
        mac.update(payload);
        mac.verify_slice(tag).map_err(|_| PageError::InvalidToken)?;
        serde_json::from_slice(payload).map_err(|_| PageError::InvalidToken)
    }

    fn hmac(&self, scope: &str) -> Hmac<Sha256> {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256>>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        // Length-prefix the scope so (scope, payload) pairs cannot collide.
        mac.update(&(scope.len() as u64).to_be_bytes());
        mac.update(scope.as_bytes());
        mac
    }

    fn mac(&self, scope: &str, payload: &[u8]) -> Vec<u8> {
        let mut mac = self.hmac(scope);
        mac.update(payload);
        mac.finalize().into_bytes().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_size_follows_aip_158() {
        assert_eq!(page_size(0, 50, 1000), Ok(50));
        assert_eq!(page_size(7, 50, 1000), Ok(7));
        assert_eq!(page_size(5000, 50, 1000), Ok(1000));
        assert_eq!(page_size(-1, 50, 1000), Err(PageError::NegativePageSize));
    }

    #[test]
    fn token_round_trips_within_its_scope() {
        let codec = PageTokenCodec::random();
        let token = codec.encode("list", &("abc", 42));
        assert_eq!(
            codec.decode::<(String, u32)>("list", &token),
            Ok(("abc".into(), 42))
        );
    }

    #[test]
    fn altered_foreign_or_rescoped_tokens_are_rejected() {
        let codec = PageTokenCodec::random();
        let token = codec.encode("list", &"cursor");
        let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap_or_default();
        bytes[0] ^= 1;
        let altered = URL_SAFE_NO_PAD.encode(&bytes);
        assert_eq!(
            codec.decode::<String>("list", &altered),
            Err(PageError::InvalidToken)
        );
        assert_eq!(
            codec.decode::<String>("other", &token),
            Err(PageError::InvalidToken)
        );
        assert_eq!(
            PageTokenCodec::random().decode::<String>("list", &token),
            Err(PageError::InvalidToken)
        );
        assert_eq!(
            codec.decode::<String>("list", "not base64!"),
            Err(PageError::InvalidToken)
        );
        assert_eq!(
            codec.decode::<String>("list", ""),
            Err(PageError::InvalidToken)
        );
    }
}
