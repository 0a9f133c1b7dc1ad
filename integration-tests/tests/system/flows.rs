//! Sign-up → login → GetUser, and the internal methods' service identity.

use integration_tests::{ADMIN_EMAIL, System, Trellis as _, with_token};
use tonic::Code;
use trellis_proto::notification_v1 as notification;
use trellis_proto::user_v1 as user;

use integration_tests::client::{PASSWORD, sign_up, sign_up_and_log_in, users};

#[tokio::test]
async fn sign_up_log_in_and_read_only_yourself() {
    let system = System::start().await;
    let ada = sign_up_and_log_in(&system, "ada@example.com").await;
    let grace = sign_up_and_log_in(&system, "grace@example.com").await;
    assert_eq!(ada.tokens.token_type, "Bearer");
    assert!(ada.tokens.expires_in > 0 && ada.tokens.expires_in <= 900);

    let own = users(&system)
        .get_user(with_token(
            user::GetUserRequest {
                id: ada.user.id.clone(),
            },
            ada.access(),
        ))
        .await
        .expect("reading yourself succeeds")
        .into_inner()
        .user;
    assert_eq!(own, Some(ada.user.clone()));

    let other = users(&system)
        .get_user(with_token(
            user::GetUserRequest {
                id: grace.user.id.clone(),
            },
            ada.access(),
        ))
        .await
        .expect_err("reading someone else is denied");
    assert_eq!(other.code(), Code::PermissionDenied);

    // An admin (granted by an operator) may read everyone.
    let admin = system.sign_up_admin(ADMIN_EMAIL).await;
    let read = users(&system)
        .get_user(with_token(
            user::GetUserRequest {
                id: grace.user.id.clone(),
            },
            admin.access(),
        ))
        .await;
    assert_eq!(
        read.map(|r| r.into_inner().user).ok().flatten(),
        Some(grace.user)
    );
    system.stop().await;
}

#[tokio::test]
async fn wrong_password_and_unknown_email_look_the_same_and_failures_are_throttled() {
    use trellis_proto::auth_v1::LoginRequest;
    let system = System::start().await;
    sign_up(&system, "ada@example.com").await;
    sign_up(&system, "grace@example.com").await;
    let mut auth = integration_tests::client::auth(&system);
    let wrong = auth
        .login(LoginRequest {
            email: "ada@example.com".into(),
            password: "not the password".into(),
        })
        .await
        .expect_err("wrong password");
    let unknown = auth
        .login(LoginRequest {
            email: "nobody@example.com".into(),
            password: PASSWORD.into(),
        })
        .await
        .expect_err("unknown email");
    assert_eq!(
        (wrong.code(), wrong.message()),
        (Code::Unauthenticated, unknown.message())
    );
    assert_eq!(unknown.code(), Code::Unauthenticated);

    // Keep failing for ada until the account's budget runs out.
    let mut throttled = false;
    for _ in 0..integration_tests::ACCOUNT_FAILURE_BUDGET {
        let status = auth
            .login(LoginRequest {
                email: "ada@example.com".into(),
                password: "not the password".into(),
            })
            .await
            .expect_err("wrong password");
        if status.code() == Code::ResourceExhausted {
            throttled = true;
            break;
        }
    }
    assert!(throttled, "failures were never throttled");
    // Throttled means the right password is refused too, for now...
    let right = auth
        .login(LoginRequest {
            email: "ada@example.com".into(),
            password: PASSWORD.into(),
        })
        .await;
    assert_eq!(
        right.map(drop).map_err(|s| s.code()),
        Err(Code::ResourceExhausted)
    );
    // ...but only for that account.
    let other = auth
        .login(LoginRequest {
            email: "grace@example.com".into(),
            password: PASSWORD.into(),
        })
        .await;
    assert!(other.is_ok(), "{other:?}");
    system.stop().await;
}

#[tokio::test]
async fn internal_methods_need_a_service_identity() {
    let system = System::start().await;
    let ada = sign_up_and_log_in(&system, "ada@example.com").await;

    let verify = || user::VerifyCredentialsRequest {
        email: "ada@example.com".into(),
        password: PASSWORD.into(),
    };
    let mut internal =
        user::user_internal_service_client::UserInternalServiceClient::new(system.user_channel());
    let anonymous = internal
        .verify_credentials(verify())
        .await
        .expect_err("no identity");
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    let end_user = internal
        .verify_credentials(with_token(verify(), ada.access()))
        .await
        .expect_err("end-user token");
    assert_eq!(end_user.code(), Code::PermissionDenied);

    let send = || notification::SendNotificationRequest {
        user_id: ada.user.id.clone(),
        kind: "spoof".into(),
        title: "t".into(),
        body: "b".into(),
        idempotency_key: "k".into(),
    };
    let mut internal =
        notification::notification_internal_service_client::NotificationInternalServiceClient::new(
            system.notification_channel(),
        );
    let anonymous = internal
        .send_notification(send())
        .await
        .expect_err("no identity");
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    let end_user = internal
        .send_notification(with_token(send(), ada.access()))
        .await
        .expect_err("end-user token");
    assert_eq!(end_user.code(), Code::PermissionDenied);

    // A service token is obtained with the client secret only.
    let mut auth = integration_tests::client::auth(&system);
    let wrong_secret = auth
        .issue_service_token(trellis_proto::auth_v1::IssueServiceTokenRequest {
            client_id: "user".into(),
            client_secret: "guess".into(),
            audience: "notification".into(),
        })
        .await
        .expect_err("wrong secret");
    assert_eq!(wrong_secret.code(), Code::Unauthenticated);
    system.stop().await;
}
