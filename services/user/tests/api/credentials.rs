//! UserInternalService.VerifyCredentials.

use tonic::Code;
use trellis_proto::user_v1 as pb;

use trellis_platform::testing::code;

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
async fn a_mismatch_is_an_answer_with_no_user_and_indistinguishable() {
    let mut app = spawn_app().await;
    app.create_user("ada@example.com", "Ada").await;
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
        // OK with `user` unset: a status would be a fault of the call, which the auth
        // service must not count as a wrong password.
        let answer = app
            .internal
            .verify_credentials(with_token(request, &token))
            .await
            .unwrap_or_else(|status| panic!("{email}: a mismatch is not a status: {status:?}"))
            .into_inner();
        assert_eq!(
            answer,
            pb::VerifyCredentialsResponse { user: None },
            "{email}"
        );
    }
}

#[tokio::test]
async fn a_fault_of_the_call_stays_a_status() {
    let mut app = spawn_app().await;
    app.create_user("ada@example.com", "Ada").await;
    let request = pb::VerifyCredentialsRequest {
        email: "ada@example.com".into(),
        password: PASSWORD.into(),
    };
    let unauthenticated = app
        .internal
        .verify_credentials(with_token(request, "not a token"))
        .await;
    assert_eq!(code(unauthenticated), Err(Code::Unauthenticated));
}
