//! AIP-158 pagination: page-size rules and opaque, tamper-evident page tokens.
//!
//! A token is `base64url(payload || HMAC-SHA256(key, scope || caller || payload))`, where
//! the payload is the JSON of a service-chosen cursor and the token's expiry time,
//! `scope` names the list it belongs to (for example
//! `trellis.user.v1.UserService/ListUsers`) and `caller` is whom it was issued to (the
//! principal's subject). So a token cannot be altered, forged, replayed against another
//! list, used by another caller, or used after [`PAGE_TOKEN_TTL`].

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit as _, Mac as _};
use rand::RngCore as _;
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::Sha256;

const MAC_LEN: usize = 32;

/// How long a page token stays valid after it was issued: 1 hour. Long enough to page
/// through any list at a reading pace; short enough that a leaked token soon stops
/// working. A client with an expired token starts again from the first page.
pub const PAGE_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

/// What a token carries: the cursor and when the token expires (s since the Unix epoch).
#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    #[serde(rename = "c")]
    cursor: T,
    #[serde(rename = "e")]
    expires: i64,
}

/// Why a page token or size was rejected. Map both to INVALID_ARGUMENT.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PageError {
    /// The token was not issued by this service for this list and caller, or was altered.
    #[error("page token is invalid or was altered")]
    InvalidToken,
    /// The token is older than [`PAGE_TOKEN_TTL`].
    #[error("page token has expired; start again from the first page")]
    ExpiredToken,
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

    /// Encodes `cursor` as a token valid for `scope` and `caller` (the principal's
    /// subject; `""` for an anonymous list) for [`PAGE_TOKEN_TTL`].
    pub fn encode<T: Serialize>(&self, scope: &str, caller: &str, cursor: &T) -> String {
        self.encode_at(scope, caller, cursor, now_secs())
    }

    /// Decodes a token made by [`Self::encode`] with the same key, `scope` and `caller`.
    ///
    /// # Errors
    /// [`PageError::InvalidToken`] when the token is malformed, altered, or was issued for
    /// another scope, another caller or with another key; [`PageError::ExpiredToken`]
    /// when it is older than [`PAGE_TOKEN_TTL`].
    pub fn decode<T: DeserializeOwned>(
        &self,
        scope: &str,
        caller: &str,
        token: &str,
    ) -> Result<T, PageError> {
        self.decode_at(scope, caller, token, now_secs())
    }

    fn encode_at<T: Serialize>(&self, scope: &str, caller: &str, cursor: &T, now: i64) -> String {
        let envelope = Envelope {
            cursor,
            expires: now.saturating_add(PAGE_TOKEN_TTL.as_secs() as i64),
        };
        // A cursor is plain data (ids, timestamps): serialising it cannot fail.
        let mut bytes = serde_json::to_vec(&envelope).unwrap_or_default();
        let tag = self.mac(scope, caller, &bytes);
        bytes.extend_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn decode_at<T: DeserializeOwned>(
        &self,
        scope: &str,
        caller: &str,
        token: &str,
        now: i64,
    ) -> Result<T, PageError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| PageError::InvalidToken)?;
        if bytes.len() <= MAC_LEN {
            return Err(PageError::InvalidToken);
        }
        let (payload, tag) = bytes.split_at(bytes.len() - MAC_LEN);
        let mut mac = self.hmac(scope, caller);
        mac.update(payload);
        mac.verify_slice(tag).map_err(|_| PageError::InvalidToken)?;
        let envelope: Envelope<T> =
            serde_json::from_slice(payload).map_err(|_| PageError::InvalidToken)?;
        if now >= envelope.expires {
            return Err(PageError::ExpiredToken);
        }
        Ok(envelope.cursor)
    }

    fn hmac(&self, scope: &str, caller: &str) -> Hmac<Sha256> {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256>>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        // Length-prefix scope and caller so (scope, caller, payload) triples cannot
        // collide.
        for part in [scope, caller] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        mac
    }

    fn mac(&self, scope: &str, caller: &str, payload: &[u8]) -> Vec<u8> {
        let mut mac = self.hmac(scope, caller);
        mac.update(payload);
        mac.finalize().into_bytes().to_vec()
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
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
    fn token_round_trips_within_its_scope_and_caller() {
        let codec = PageTokenCodec::random();
        let token = codec.encode("list", "alice", &("abc", 42));
        assert_eq!(
            codec.decode::<(String, u32)>("list", "alice", &token),
            Ok(("abc".into(), 42))
        );
    }

    #[test]
    fn altered_foreign_or_rescoped_tokens_are_rejected() {
        let codec = PageTokenCodec::random();
        let token = codec.encode("list", "alice", &"cursor");
        let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap_or_default();
        bytes[0] ^= 1;
        let altered = URL_SAFE_NO_PAD.encode(&bytes);
        for (scope, caller, token) in [
            ("list", "alice", altered.as_str()),
            ("other", "alice", &token),
            ("list", "bob", &token),
            ("list", "alice", "not base64!"),
            ("list", "alice", ""),
        ] {
            assert_eq!(
                codec.decode::<String>(scope, caller, token),
                Err(PageError::InvalidToken),
                "{scope} {caller} {token}"
            );
        }
        assert_eq!(
            PageTokenCodec::random().decode::<String>("list", "alice", &token),
            Err(PageError::InvalidToken)
        );
    }

    #[test]
    fn a_token_expires_after_its_ttl() {
        let codec = PageTokenCodec::random();
        let issued = 1_800_000_000;
        let token = codec.encode_at("list", "alice", &7_u32, issued);
        let ttl = PAGE_TOKEN_TTL.as_secs() as i64;
        assert_eq!(
            codec.decode_at::<u32>("list", "alice", &token, issued + ttl - 1),
            Ok(7)
        );
        assert_eq!(
            codec.decode_at::<u32>("list", "alice", &token, issued + ttl),
            Err(PageError::ExpiredToken)
        );
    }

    proptest::proptest! {
        #[test]
        fn decoding_any_string_gives_a_cursor_or_a_page_error(token in ".*", bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let codec = PageTokenCodec::random();
            let outcome = codec.decode::<(String, u32)>("list", "alice", &token);
            proptest::prop_assert!(outcome.is_err());
            // Well-formed base64 of arbitrary bytes, too: still only a PageError.
            let outcome = codec.decode::<(String, u32)>("list", "alice", &URL_SAFE_NO_PAD.encode(&bytes));
            proptest::prop_assert_eq!(outcome, Err(PageError::InvalidToken));
        }
    }
}
