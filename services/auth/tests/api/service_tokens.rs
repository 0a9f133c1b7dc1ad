//! IssueServiceToken: OAuth 2.0 client credentials (RFC 6749 §4.4).

use tonic::Code;
use trellis_platform::auth::PrincipalKind;

use trellis_platform::testing::{TestCa, tls_channel};
use trellis_proto::auth_v1 as pb;
use trellis_proto::auth_v1::auth_service_client::AuthServiceClient;

use crate::helpers::{
    CLIENT_ID, CLIENT_SECRET, USER_CLIENT_ID, USER_CLIENT_SECRET, spawn_app, spawn_tls_app,
};

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

    let principal = app.principal_of(&response.access_token, "auth").await;
    assert_eq!(principal.service_name(), Some(CLIENT_ID));
    assert_eq!(principal.user_id(), None);
    app.stop().await;
}

#[tokio::test]
async fn a_token_names_the_audience_asked_for_and_no_other_service_accepts_it() {
    let mut app = spawn_app().await;
    let response = app
        .issue_service_token_for(CLIENT_ID, CLIENT_SECRET, "notification")
        .await
        .expect("a token for notification");
    let (_, claims) = app.verify(&response.access_token).await;
    assert_eq!(claims.aud, "notification");
    assert_eq!(claims.cnf, None, "no certificate to bind to over plaintext");
    // auth's own verifier (the platform's, for service `auth`) refuses it: a service
    // that received it cannot replay it here.
    let refused = app
        .platform_verifier("auth")
        .verify(&response.access_token)
        .await
        .expect_err("a token for notification is not for auth");
    assert_eq!(refused.reason(), "wrong_audience");

    for (audience, field) in [("", "audience"), ("Not A Service", "audience")] {
        let status = app
            .issue_service_token_for(CLIENT_ID, CLIENT_SECRET, audience)
            .await
            .expect_err("no valid audience");
        assert_eq!(status.code(), Code::InvalidArgument, "{audience:?}");
        assert!(status.message().contains(field) || !status.details().is_empty());
    }
    app.stop().await;
}

#[tokio::test]
async fn under_mutual_tls_a_token_goes_only_to_the_clients_certificate_and_is_bound_to_it() {
    let ca = TestCa::new();
    let mut app = spawn_tls_app(&ca).await;
    let response = app
        .issue_service_token_for(CLIENT_ID, CLIENT_SECRET, "user")
        .await
        .expect("the client's own certificate gets a token");
    let (_, claims) = app.verify(&response.access_token).await;
    assert_eq!(
        claims.cnf.map(|cnf| cnf.x5t_s256),
        Some(ca.files(CLIENT_ID).thumbprint()),
        "bound to the certificate it was asked over (RFC 8705)"
    );

    // Asking as `user` over the notification service's certificate.
    let borrowed = app
        .issue_service_token_for(USER_CLIENT_ID, USER_CLIENT_SECRET, "auth")
        .await
        .expect_err("the certificate names another client");
    assert_eq!(borrowed.code(), Code::PermissionDenied);
    // Server-only TLS: no certificate to bind to.
    let mut anonymous =
        AuthServiceClient::new(tls_channel(app.addr, &ca.dir().join("ca.pem"), None));
    let unbound = anonymous
        .issue_service_token(pb::IssueServiceTokenRequest {
            client_id: CLIENT_ID.to_owned(),
            client_secret: CLIENT_SECRET.to_owned(),
            audience: "user".to_owned(),
        })
        .await
        .expect_err("no client certificate");
    assert_eq!(unbound.code(), Code::Unauthenticated);
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
