//! Roles: GrantRole/RevokeRole (admin only, idempotent), roles on every read of a user,
//! and the internal LookupUser.

use tonic::{Code, Status};
use trellis_platform::testing::code;
use trellis_proto::user_v1 as pb;

use crate::helpers::{PASSWORD, roles_of, spawn_app, violated_fields, with_token};

/// The roles of the user a call returned, or the call's code.
fn roles(result: Result<pb::User, Status>) -> Result<Vec<String>, Code> {
    result.map(|u| u.roles).map_err(|s| s.code())
}

#[tokio::test]
async fn an_admin_grants_and_revokes_the_admin_role_idempotently() {
    let mut app = spawn_app().await;
    let ada = app.create_user("ada@example.com", "Ada").await;
    let admin = app.admin_token();
    for _ in 0..2 {
        let user = app.grant_role(&ada.id, "admin", &admin).await;
        assert_eq!(roles(user), Ok(vec!["admin".to_owned()]));
    }
    // Every read of the user shows the role, credentials checks included (that is where
    // the auth service reads it from).
    let token = app.token_for(&ada);
    assert_eq!(roles_of(&mut app.users, &ada.id, &token).await, ["admin"]);
    let verified = app
        .internal
        .verify_credentials(with_token(
            pb::VerifyCredentialsRequest {
                email: "ada@example.com".into(),
                password: PASSWORD.into(),
            },
            &app.service_token(),
        ))
        .await
        .expect("verify")
        .into_inner()
        .user
        .expect("credentials match");
    assert_eq!(verified.roles, ["admin"]);
    let listed = app
        .users
        .list_users(with_token(pb::ListUsersRequest::default(), &admin))
        .await
        .expect("list")
        .into_inner()
        .users;
    assert_eq!(
        listed.iter().map(|u| u.roles.clone()).collect::<Vec<_>>(),
        [["admin"]]
    );

    for _ in 0..2 {
        let user = app.revoke_role(&ada.id, "admin", &admin).await;
        assert_eq!(roles(user), Ok(Vec::new()));
    }
}

#[tokio::test]
async fn role_changes_need_the_admin_role() {
    let mut app = spawn_app().await;
    let ada = app.create_user("ada@example.com", "Ada").await;
    // Not even for oneself: a user cannot make themselves an admin.
    let token = app.token_for(&ada);
    let granted = app.grant_role(&ada.id, "admin", &token).await;
    assert_eq!(code(granted), Err(Code::PermissionDenied));
    let revoked = app.revoke_role(&ada.id, "admin", &token).await;
    assert_eq!(code(revoked), Err(Code::PermissionDenied));
    let service = app.service_token();
    let granted = app.grant_role(&ada.id, "admin", &service).await;
    assert_eq!(code(granted), Err(Code::PermissionDenied));
    let anonymous = app.grant_role(&ada.id, "admin", "").await;
    assert_eq!(code(anonymous), Err(Code::Unauthenticated));
}

#[tokio::test]
async fn role_change_errors_have_their_codes() {
    let mut app = spawn_app().await;
    let ada = app.create_user("ada@example.com", "Ada").await;
    let admin = app.admin_token();

    for role in ["root", "Admin", ""] {
        let status = app
            .grant_role(&ada.id, role, &admin)
            .await
            .expect_err("an unknown role is refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{role:?}");
        assert_eq!(violated_fields(&status), ["role"]);
    }
    let status = app
        .revoke_role("42", "root", &admin)
        .await
        .expect_err("both fields are bad");
    assert_eq!(violated_fields(&status), ["id", "role"]);

    let ghost = uuid::Uuid::now_v7().to_string();
    let granted = app.grant_role(&ghost, "admin", &admin).await;
    assert_eq!(code(granted), Err(Code::NotFound));
    let revoked = app.revoke_role(&ghost, "admin", &admin).await;
    assert_eq!(code(revoked), Err(Code::NotFound));
}

#[tokio::test]
async fn an_admin_cannot_revoke_their_own_admin_role() {
    let mut app = spawn_app().await;
    let ada = app.create_user("ada@example.com", "Ada").await;
    let grace = app.create_user("grace@example.com", "Grace").await;
    let admin = app.admin_token();
    for user in [&ada, &grace] {
        app.grant_role(&user.id, "admin", &admin)
            .await
            .expect("granted");
    }
    let ada_token = app.issuer.user_token(&ada.id, &["admin"]);
    let own = app.revoke_role(&ada.id, "admin", &ada_token).await;
    assert_eq!(code(own), Err(Code::FailedPrecondition));
    // Another admin can.
    let grace_token = app.issuer.user_token(&grace.id, &["admin"]);
    let user = app.revoke_role(&ada.id, "admin", &grace_token).await;
    assert_eq!(roles(user), Ok(Vec::new()));
}

#[tokio::test]
async fn lookup_user_returns_current_roles_and_not_found_once_deleted() {
    let mut app = spawn_app().await;
    let ada = app.create_user("ada@example.com", "Ada").await;
    let service = app.service_token();
    let lookup = |id: &str| with_token(pb::LookupUserRequest { id: id.to_owned() }, &service);
    let mut internal = app.internal.clone();
    let mut looked_up = async |id: &str| {
        let response = internal.lookup_user(lookup(id)).await;
        response.map(|r| r.into_inner().user.expect("user"))
    };
    assert_eq!(roles(looked_up(&ada.id).await), Ok(Vec::new()));

    let admin = app.admin_token();
    app.grant_role(&ada.id, "admin", &admin)
        .await
        .expect("granted");
    assert_eq!(
        roles(looked_up(&ada.id).await),
        Ok(vec!["admin".to_owned()])
    );

    app.users
        .delete_user(with_token(
            pb::DeleteUserRequest { id: ada.id.clone() },
            &admin,
        ))
        .await
        .expect("deleted");
    assert_eq!(roles(looked_up(&ada.id).await), Err(Code::NotFound));
    let malformed = looked_up("42").await.expect_err("malformed id");
    assert_eq!(violated_fields(&malformed), ["id"]);

    // An end user, even an admin, may not call it.
    let denied = app
        .internal
        .lookup_user(with_token(
            pb::LookupUserRequest { id: ada.id.clone() },
            &admin,
        ))
        .await;
    assert_eq!(code(denied), Err(Code::PermissionDenied));
}
