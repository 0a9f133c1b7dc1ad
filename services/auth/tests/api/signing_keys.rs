//! ListSigningKeys: the JWKS equivalent, OKP/Ed25519/EdDSA keys (RFC 8037), among them
//! the key that signs.

use std::collections::HashSet;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::helpers::{ADA, spawn_app};

#[tokio::test]
async fn list_signing_keys_publishes_ed25519_keys_including_the_one_that_signs() {
    let mut app = spawn_app().await;
    let keys = app.signing_keys().await;
    assert!(!keys.is_empty(), "no key is published");
    let now = chrono::Utc::now().timestamp();
    for key in &keys {
        assert_eq!(key.kty, "OKP", "{key:?}");
        assert_eq!(key.crv, "Ed25519", "{key:?}");
        assert_eq!(key.alg, "EdDSA", "{key:?}");
        let x = URL_SAFE_NO_PAD.decode(&key.x).expect("x is base64url");
        assert_eq!(x.len(), 32, "an Ed25519 public key is 32 bytes");
        assert!(key.activate_time.is_some(), "{key:?}");
    }
    let kids: HashSet<_> = keys.iter().map(|k| k.kid.as_str()).collect();
    assert_eq!(kids.len(), keys.len(), "kids are unique");

    let tokens = app.sign_in(ADA).await;
    let (header, _) = app.verify(&tokens.access_token).await;
    let kid = header.kid.expect("a kid");
    let signing = keys
        .iter()
        .find(|k| k.kid == kid)
        .expect("the signing key is published");
    let activated = signing.activate_time.expect("activate_time").seconds;
    assert!(activated <= now, "the signing key is already active");

    // The set is stable between calls: verifiers can cache it.
    let again: HashSet<_> = app
        .signing_keys()
        .await
        .into_iter()
        .map(|k| k.kid)
        .collect();
    assert_eq!(again, kids.iter().map(|k| (*k).to_owned()).collect());
    app.stop().await;
}
