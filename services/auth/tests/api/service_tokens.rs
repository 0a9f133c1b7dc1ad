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

#[test]
fn the_published_compose_secret_stops_auth_outside_local_development() {
    let run = |local_development: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_auth-service"))
            .env_clear()
            .env(
                "TRELLIS_AUTH__SERVICE_CLIENTS__USER",
                trellis_platform::service::KNOWN_DEFAULT_SECRETS[0],
            )
            .env("TRELLIS_AUTH__LOCAL_DEVELOPMENT", local_development)
            // Where a start that got past the config would fail at once.
            .env(
                "TRELLIS_AUTH__DATABASE__URL",
                "postgres://trellis@127.0.0.1:9/nothing-listens-here",
            )
            .output()
            .expect("the binary runs")
    };
    let refused = run("false");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("`service_clients.user`"), "{stderr}");
    assert!(
        stderr.contains("TRELLIS_AUTH__SERVICE_CLIENTS__USER"),
        "{stderr}"
    );
    // On a developer's machine the secret passes the config check (and the start fails
    // later, at the database, with another code).
    assert_ne!(run("true").status.code(), Some(78));
}
