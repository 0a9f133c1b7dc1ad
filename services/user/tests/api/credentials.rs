//! UserInternalService.VerifyCredentials.

use tonic::Code;
use trellis_proto::user_v1 as pb;

use crate::helpers::{PASSWORD, spawn_app, with_token};

#[tokio::test]
async fn verify_credentials_returns_the_user_for_the_right_password() {
    let mut app = spawn_app().await;
    let ada = app.create_user("ada@example.com", "Ada").await;
    let verified = app
        .internal
        .verify_credentials(with_token(
            pb::VerifyCredentialsRequest {
                email: " ada@EXAMPLE.com".into(),
                password: PASSWORD.into(),
            },
            &app.service_token(),
        ))
        .await
        .expect("credentials are valid")
        .into_inner()
        .user;
    assert_eq!(verified, Some(ada));
}

#[tokio::test]
async fn unknown_email_and_wrong_password_are_indistinguishable() {
    let mut app = spawn_app().await;
    app.create_user("ada@example.com", "Ada").await;
    let mut answers = Vec::new();
    for (email, password) in [
        ("ada@example.com", "wrong password!"),
        ("nobody@example.com", PASSWORD),
        ("not an email", PASSWORD),
    ] {
        let token = app.service_token();
        let request = pb::VerifyCredentialsRequest {
            email: email.into(),
            password: password.into(),
        };
        let status = app
            .internal
            .verify_credentials(with_token(request, &token))
            .await
            .expect_err("credentials are rejected");
        answers.push((status.code(), status.message().to_owned()));
    }
    assert_eq!(answers[0].0, Code::Unauthenticated);
    assert_eq!(answers[0].1, "invalid email or password");
    assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
}
