//! Who may call what: bearer tokens (RFC 8725 checks live in the platform and the
//! cross-service suite), self-or-admin rules, and the internal service's service identity.

use tonic::Code;
use trellis_platform::auth::Claims;
use trellis_platform::testing::code;
use trellis_proto::user_v1 as pb;

use crate::helpers::{PASSWORD, spawn_app, with_token};

#[tokio::test]
async fn user_methods_need_a_valid_token() {
    let mut app = spawn_app().await;
    let ada = app.create_user("ada@example.com", "Ada").await;
    let get = || pb::GetUserRequest { id: ada.id.clone() };
    let none = app.users.get_user(get()).await;
    assert_eq!(code(none), Err(Code::Unauthenticated));
    let garbage = app.users.get_user(with_token(get(), "not.a.jwt")).await;
    assert_eq!(code(garbage), Err(Code::Unauthenticated));

    // A token signed by a key the service does not know.
    let stranger = trellis_platform::testing::TestIssuer::new();
    let foreign = app
        .users
        .get_user(with_token(get(), &stranger.user_token(&ada.id, &[])))
        .await;
    assert_eq!(code(foreign), Err(Code::Unauthenticated));

    // Expired long ago (beyond any leeway).
    let now = chrono::Utc::now().timestamp();
    let expired = app.issuer.sign(&Claims {
        iss: "trellis-auth".into(),
        aud: "trellis".into(),
        sub: ada.id.clone(),
        iat: now - 3600,
        nbf: now - 3600,
        exp: now - 600,
        jti: "j".into(),
        kind: trellis_platform::auth::PrincipalKind::User,
        roles: vec![],
        cnf: None,
    });
    let result = app.users.get_user(with_token(get(), &expired)).await;
    assert_eq!(code(result), Err(Code::Unauthenticated));
}

#[tokio::test]
async fn a_user_reads_and_updates_only_themselves_and_an_admin_reads_all() {
    let mut app = spawn_app().await;
    let ada = app.create_user("ada@example.com", "Ada").await;
    let grace = app.create_user("grace@example.com", "Grace").await;
    let ada_token = app.token_for(&ada);

    let own = app
        .users
        .get_user(with_token(
            pb::GetUserRequest { id: ada.id.clone() },
            &ada_token,
        ))
        .await;
    assert_eq!(code(own), Ok(()));
    let other = app
        .users
        .get_user(with_token(
            pb::GetUserRequest {
                id: grace.id.clone(),
            },
            &ada_token,
        ))
        .await;
    assert_eq!(code(other), Err(Code::PermissionDenied));
    let update_other = app
        .users
        .update_user(with_token(
            pb::UpdateUserRequest {
                user: Some(pb::User {
                    id: grace.id.clone(),
                    display_name: "Hacked".into(),
                    ..Default::default()
                }),
                update_mask: None,
            },
            &ada_token,
        ))
        .await;
    assert_eq!(code(update_other), Err(Code::PermissionDenied));
    let delete_other = app
        .users
        .delete_user(with_token(
            pb::DeleteUserRequest {
                id: grace.id.clone(),
            },
            &ada_token,
        ))
        .await;
    assert_eq!(code(delete_other), Err(Code::PermissionDenied));
    let list = app
        .users
        .list_users(with_token(pb::ListUsersRequest::default(), &ada_token))
        .await;
    assert_eq!(code(list), Err(Code::PermissionDenied));

    let admin = app.admin_token();
    let read = app
        .users
        .get_user(with_token(
            pb::GetUserRequest {
                id: grace.id.clone(),
            },
            &admin,
        ))
        .await;
    assert_eq!(
        read.map(|r| r.into_inner().user).ok().flatten(),
        Some(grace.clone())
    );
    let listed = app
        .users
        .list_users(with_token(pb::ListUsersRequest::default(), &admin))
        .await;
    assert_eq!(listed.map(|r| r.into_inner().users.len()).ok(), Some(2));
    // An admin may read everyone but update only themselves.
    let admin_update = app
        .users
        .update_user(with_token(
            pb::UpdateUserRequest {
                user: Some(pb::User {
                    id: grace.id,
                    display_name: "Hacked".into(),
                    ..Default::default()
                }),
                update_mask: None,
            },
            &admin,
        ))
        .await;
    assert_eq!(code(admin_update), Err(Code::PermissionDenied));
}

#[tokio::test]
async fn the_internal_service_needs_a_service_identity() {
    let mut app = spawn_app().await;
    let ada = app.create_user("ada@example.com", "Ada").await;
    let request = || pb::VerifyCredentialsRequest {
        email: ada.email.clone(),
        password: PASSWORD.into(),
    };
    let anonymous = app.internal.verify_credentials(request()).await;
    assert_eq!(code(anonymous), Err(Code::Unauthenticated));
    let end_user = app
        .internal
        .verify_credentials(with_token(request(), &app.token_for(&ada)))
        .await;
    assert_eq!(code(end_user), Err(Code::PermissionDenied));
    let service = app
        .internal
        .verify_credentials(with_token(request(), &app.service_token()))
        .await;
    assert_eq!(code(service), Ok(()));
}

#[tokio::test]
async fn only_auth_may_verify_credentials_or_look_users_up() {
    let mut app = spawn_app().await;
    let ada = app.create_user("ada@example.com", "Ada").await;
    for service in ["notification", "user", "other"] {
        let token = app.issuer.service_token(service, "user");
        let verify = app
            .internal
            .verify_credentials(with_token(
                pb::VerifyCredentialsRequest {
                    email: ada.email.clone(),
                    password: PASSWORD.into(),
                },
                &token,
            ))
            .await;
        assert_eq!(code(verify), Err(Code::PermissionDenied), "{service}");
        let lookup = app
            .internal
            .lookup_user(with_token(
                pb::LookupUserRequest { id: ada.id.clone() },
                &token,
            ))
            .await;
        assert_eq!(code(lookup), Err(Code::PermissionDenied), "{service}");
    }
}

#[tokio::test]
async fn a_service_token_cannot_use_end_user_methods() {
    let mut app = spawn_app().await;
    let ada = app.create_user("ada@example.com", "Ada").await;
    let result = app
        .users
        .get_user(with_token(
            pb::GetUserRequest { id: ada.id },
            &app.service_token(),
        ))
        .await;
    assert_eq!(code(result), Err(Code::PermissionDenied));
}
