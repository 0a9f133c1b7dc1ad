//! Token verification: no lock held across a key fetch, and arbitrary input is only
//! ever rejected.

use std::future::Future as _;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proptest::prelude::*;
use tokio::sync::Notify;
use trellis_platform::auth::{AuthConfig, KeySource, PublicKey, TokenVerifier};
use trellis_platform::testing::TestIssuer;

/// Publishes `key` on the first fetch; every later fetch signals `started` and hangs.
struct HangsAfterFirst {
    key: PublicKey,
    fetches: AtomicUsize,
    started: Arc<Notify>,
}

impl KeySource for HangsAfterFirst {
    fn fetch(
        &self,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<PublicKey>, tonic::Status>> + Send + '_>> {
        let first = self.fetches.fetch_add(1, Ordering::SeqCst) == 0;
        Box::pin(async move {
            if first {
                return Ok(vec![self.key.clone()]);
            }
            self.started.notify_one();
            std::future::pending().await
        })
    }
}

#[tokio::test]
async fn a_hanging_key_fetch_does_not_block_a_cached_kid() {
    let issuer = TestIssuer::new();
    let started = Arc::new(Notify::new());
    let config = AuthConfig {
        // 0: any unknown kid may start a fetch at once.
        min_refresh_interval: std::time::Duration::ZERO,
        ..AuthConfig::default()
    };
    let verifier = TokenVerifier::new(
        &config,
        "user",
        HangsAfterFirst {
            key: issuer.public_key(),
            fetches: AtomicUsize::new(0),
            started: Arc::clone(&started),
        },
    );
    let token = issuer.user_token("ada", &[]);
    assert!(verifier.verify(&token).await.is_ok(), "first fetch");

    // A token with an unknown kid starts a fetch that hangs.
    let stranger = TestIssuer::new().user_token("eve", &[]);
    let fetching = verifier.clone();
    let hung = tokio::spawn(async move { fetching.verify(&stranger).await.is_ok() });
    started.notified().await;

    // The cached kid verifies at once: on its first poll, with nothing to wait for.
    let mut cached = pin!(verifier.verify(&token));
    let polled = cached
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()));
    assert!(
        matches!(polled, Poll::Ready(Ok(_))),
        "verification waited for the key fetch"
    );
    hung.abort();
}

/// Three dot-separated base64url segments of arbitrary bytes: shaped like a JWT.
fn jwt_shaped() -> impl Strategy<Value = String> {
    let segment = || proptest::collection::vec(any::<u8>(), 0..96);
    (segment(), segment(), segment()).prop_map(|(h, c, s)| {
        [h, c, s]
            .iter()
            .map(|part| URL_SAFE_NO_PAD.encode(part))
            .collect::<Vec<_>>()
            .join(".")
    })
}

/// A JWT-shaped string whose header is arbitrary JSON with a known `kid`.
fn with_known_kid(kid: String) -> impl Strategy<Value = String> {
    (".*", proptest::collection::vec(any::<u8>(), 0..96)).prop_map(move |(alg, claims)| {
        let header = serde_json::json!({ "alg": alg, "kid": kid }).to_string();
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims),
            URL_SAFE_NO_PAD.encode(b"signature")
        )
    })
}

/// The issuer whose key the property test's verifier knows.
static ISSUER: std::sync::LazyLock<TestIssuer> = std::sync::LazyLock::new(TestIssuer::new);

proptest! {
    #[test]
    fn arbitrary_tokens_are_rejected_without_panicking(
        raw in ".*",
        shaped in jwt_shaped(),
        known in with_known_kid(ISSUER.public_key().kid),
    ) {
        let verifier = TokenVerifier::new(&AuthConfig::default(), "user", ISSUER.key_source());
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        for token in [raw, shaped, known] {
            prop_assert!(runtime.block_on(verifier.verify(&token)).is_err(), "{token}");
        }
    }
}

/// Publishes whatever keys the test puts in it (clones share them).
#[derive(Clone, Default)]
struct Published(Arc<parking_lot::Mutex<Vec<PublicKey>>>);

impl KeySource for Published {
    fn fetch(
        &self,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<PublicKey>, tonic::Status>> + Send + '_>> {
        let keys = self.0.lock().clone();
        Box::pin(async move { Ok(keys) })
    }
}

fn unix_now() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(now.as_secs()).unwrap()
}

#[tokio::test]
async fn a_verified_token_is_remembered_and_forgotten_when_its_key_is_withdrawn() {
    let (old, new) = (TestIssuer::new(), TestIssuer::new());
    let published = Published::default();
    published.0.lock().push(old.public_key());
    let config = AuthConfig {
        min_refresh_interval: std::time::Duration::ZERO,
        ..AuthConfig::default()
    };
    let verifier = TokenVerifier::new(&config, "user", published.clone());
    let token = old.user_token("ada", &["admin"]);
    let first = verifier.verify(&token).await.unwrap();
    assert!(verifier.remembers(&token));
    assert_eq!(verifier.verify(&token).await.unwrap(), first);
    assert!(!verifier.remembers(&new.user_token("ada", &["admin"])));

    // The old key is withdrawn; a token with the new kid makes the verifier refetch.
    *published.0.lock() = vec![new.public_key()];
    verifier
        .verify(&new.user_token("bob", &[]))
        .await
        .expect("the new key is fetched");
    assert!(!verifier.remembers(&token));
    let err = verifier.verify(&token).await.unwrap_err();
    assert_eq!(err.reason(), "unknown_key", "{err}");
}

#[tokio::test]
async fn a_remembered_token_is_refused_once_it_expires() {
    let issuer = TestIssuer::new();
    let config = AuthConfig {
        leeway_secs: 0,
        ..AuthConfig::default()
    };
    let verifier = TokenVerifier::new(&config, "user", issuer.key_source());
    let now = unix_now();
    let token = issuer.sign(&trellis_platform::auth::Claims {
        iss: "trellis-auth".into(),
        aud: "trellis".into(),
        sub: "ada".into(),
        iat: now,
        nbf: now,
        exp: now + 1,
        jti: "one".into(),
        kind: trellis_platform::auth::PrincipalKind::User,
        roles: vec![],
        cnf: None,
    });
    verifier.verify(&token).await.unwrap();
    assert!(verifier.remembers(&token));
    // Past `exp` (whole seconds, as JWT counts them); the bound turns a hang into a failure.
    tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while unix_now() <= now + 1 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap();
    let err = verifier.verify(&token).await.unwrap_err();
    assert_eq!(err.reason(), "expired", "{err}");
}

#[tokio::test]
async fn a_cache_of_zero_remembers_nothing() {
    let issuer = TestIssuer::new();
    let config = AuthConfig {
        verified_token_cache: 0,
        ..AuthConfig::default()
    };
    let verifier = TokenVerifier::new(&config, "user", issuer.key_source());
    let token = issuer.user_token("ada", &[]);
    verifier.verify(&token).await.unwrap();
    assert!(!verifier.remembers(&token));
}
