//! RFC 8725 (JWT best current practices) against a real service: each forged or
//! invalid access token is UNAUTHENTICATED with the same message.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use integration_tests::{System, with_token};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use sea_orm::EntityTrait as _;
use tonic::Code;
use trellis_platform::auth::{Claims, PrincipalKind};
use trellis_proto::user_v1 as user;

use integration_tests::client::{sign_up_and_log_in, users};

/// The auth service's current signing key, read from its database.
async fn signing_key(system: &System) -> (String, Vec<u8>, Vec<u8>) {
    let db = sea_orm::Database::connect(system.database_url("auth"))
        .await
        .expect("auth database");
    let keys = auth_service::storage::entity::signing_key::Entity::find()
        .all(&db)
        .await
        .expect("keys");
    let key = keys
        .into_iter()
        .max_by_key(|k| k.activate_time)
        .expect("a key");
    (key.kid, key.private_key, key.public_key)
}

fn claims(sub: &str) -> Claims {
    let now = chrono::Utc::now().timestamp();
    Claims {
        iss: "trellis-auth".into(),
        aud: "trellis".into(),
        sub: sub.to_owned(),
        iat: now,
        nbf: now,
        exp: now + 300,
        jti: uuid::Uuid::new_v4().to_string(),
        kind: PrincipalKind::User,
        roles: vec![],
        cnf: None,
    }
}

fn sign(kid: &str, private: &[u8], claims: &Claims) -> String {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(private)).expect("signs")
}

fn b64(value: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).expect("json"))
}

#[tokio::test]
async fn forged_and_invalid_tokens_are_unauthenticated() {
    let system = System::start().await;
    let ada = sign_up_and_log_in(&system, "ada@example.com").await;
    let grace = sign_up_and_log_in(&system, "grace@example.com").await;
    let (kid, private, public) = signing_key(&system).await;
    let me = ada.user.id.clone();

    // Control: a token we sign correctly is accepted, so the cases below fail for
    // their one defect only.
    let control = sign(&kid, &private, &claims(&me));
    let accepted = users(&system)
        .get_user(with_token(
            user::GetUserRequest { id: me.clone() },
            &control,
        ))
        .await;
    assert!(accepted.is_ok(), "control token rejected: {accepted:?}");

    let payload = serde_json::to_value(claims(&me)).expect("claims");
    let mut cases: Vec<(&str, String)> = Vec::new();
    cases.push((
        "alg none",
        format!(
            "{}.{}.",
            b64(&serde_json::json!({"alg": "none", "typ": "JWT", "kid": kid})),
            b64(&payload)
        ),
    ));
    let mut hs256 = Header::new(Algorithm::HS256);
    hs256.kid = Some(kid.clone());
    cases.push((
        "HS256 keyed with the public key",
        jsonwebtoken::encode(&hs256, &claims(&me), &EncodingKey::from_secret(&public))
            .expect("signs"),
    ));
    cases.push((
        "HS256 keyed with the public key's base64url",
        jsonwebtoken::encode(
            &hs256,
            &claims(&me),
            &EncodingKey::from_secret(URL_SAFE_NO_PAD.encode(&public).as_bytes()),
        )
        .expect("signs"),
    ));
    // Tampered payload: grace's real token with ada as its subject.
    let mut parts: Vec<String> = grace.access().split('.').map(str::to_owned).collect();
    let mut tampered: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).expect("b64")).expect("json");
    tampered["sub"] = serde_json::Value::String(me.clone());
    parts[1] = b64(&tampered);
    cases.push(("tampered payload", parts.join(".")));
    cases.push((
        "wrong aud",
        sign(
            &kid,
            &private,
            &Claims {
                aud: "someone-else".into(),
                ..claims(&me)
            },
        ),
    ));
    cases.push((
        "wrong iss",
        sign(
            &kid,
            &private,
            &Claims {
                iss: "evil-auth".into(),
                ..claims(&me)
            },
        ),
    ));
    let now = chrono::Utc::now().timestamp();
    cases.push((
        "expired",
        sign(
            &kid,
            &private,
            &Claims {
                iat: now - 600,
                nbf: now - 600,
                exp: now - 120,
                ..claims(&me)
            },
        ),
    ));
    cases.push((
        "nbf in the future",
        sign(
            &kid,
            &private,
            &Claims {
                nbf: now + 600,
                exp: now + 900,
                ..claims(&me)
            },
        ),
    ));
    cases.push(("unknown kid", sign("no-such-kid", &private, &claims(&me))));
    cases.push(("not a JWT", "definitely-not-a-jwt".to_owned()));

    let mut messages = Vec::new();
    for (case, token) in &cases {
        let status = users(&system)
            .get_user(with_token(user::GetUserRequest { id: me.clone() }, token))
            .await
            .expect_err(case);
        assert_eq!(status.code(), Code::Unauthenticated, "{case}");
        messages.push(status.message().to_owned());
    }
    assert!(
        messages.iter().all(|m| *m == messages[0]),
        "one generic message: {messages:?}"
    );
    system.stop().await;
}
