//! IssueServiceToken: OAuth 2.0 client credentials (RFC 6749 §4.4).

use tonic::Code;
use trellis_platform::auth::PrincipalKind;

use crate::helpers::{CLIENT_ID, CLIENT_SECRET, spawn_app};

#[tokio::test]
async fn the_right_client_secret_gets_a_five_minute_token_for_service_client_id() {
    let mut app = spawn_app().await;
    let response = app
        .issue_service_token(CLIENT_ID, CLIENT_SECRET)
        .await
        .expect("the right secret is accepted");
    assert_eq!(response.expires_in, 300);
    let (_, claims) = app.verify(&response.access_token).await;
    assert_eq!(claims.sub, format!("service:{CLIENT_ID}"));
    assert_eq!(claims.kind, PrincipalKind::Service);
    assert!(claims.roles.is_empty(), "{:?}", claims.roles);
    assert_eq!(claims.exp - claims.iat, 300);

    let principal = app.principal_of(&response.access_token).await;
    assert_eq!(principal.service_name(), Some(CLIENT_ID));
    assert_eq!(principal.user_id(), None);
    app.stop().await;
}

#[tokio::test]
async fn a_wrong_secret_or_an_unknown_client_is_unauthenticated_with_one_message() {
    let mut app = spawn_app().await;
    let mut answers = Vec::new();
    let prefix = &CLIENT_SECRET[..CLIENT_SECRET.len() - 1];
    for (client_id, secret) in [
        (CLIENT_ID, "the wrong secret entirely"),
        (CLIENT_ID, prefix),
        (CLIENT_ID, ""),
        ("user", CLIENT_SECRET),
        ("", ""),
    ] {
        let status = app
            .issue_service_token(client_id, secret)
            .await
            .expect_err("wrong client credentials are refused");
        answers.push((status.code(), status.message().to_owned()));
    }
    assert_eq!(answers[0].0, Code::Unauthenticated);
    assert_eq!(answers[0].1, "invalid client credentials");
    assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
    app.stop().await;
}
