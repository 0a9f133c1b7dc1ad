//! Roles: an access token carries the roles the user service answers with — at login
//! and again at every refresh — and never any derived from the user's address.

use trellis_platform::auth::ADMIN_ROLE;

use crate::helpers::{ADA, ADMIN, spawn_app};

#[tokio::test]
async fn roles_come_from_the_user_service_never_from_the_address() {
    let mut app = spawn_app().await;
    let tokens = app.sign_in(ADMIN).await;
    let (_, claims) = app.verify(&tokens.access_token).await;
    assert_eq!(claims.sub, app.users.account(ADMIN).id);
    assert_eq!(claims.roles, [ADMIN_ROLE]);
    assert!(
        app.principal_of(&tokens.access_token, "user")
            .await
            .is_admin()
    );

    // A case variant of the admin's address is another account, with no role: the
    // address it chose gives it nothing (issue 8, item 1).
    app.users.add_account("ADMIN@example.com", &[]);
    let tokens = app.sign_in("ADMIN@example.com").await;
    let (_, claims) = app.verify(&tokens.access_token).await;
    assert!(claims.roles.is_empty(), "{:?}", claims.roles);

    // An admin by any other address is one.
    app.users.add_account("ops@example.net", &[ADMIN_ROLE]);
    let tokens = app.sign_in("ops@example.net").await;
    let (_, claims) = app.verify(&tokens.access_token).await;
    assert_eq!(claims.roles, [ADMIN_ROLE]);

    let tokens = app.sign_in(ADA).await;
    let (_, claims) = app.verify(&tokens.access_token).await;
    assert!(claims.roles.is_empty(), "{:?}", claims.roles);
    app.stop().await;
}

#[tokio::test]
async fn a_refresh_carries_the_users_current_roles_not_the_ones_at_sign_in() {
    let mut app = spawn_app().await;
    let admin = app.sign_in(ADMIN).await;
    let ada = app.sign_in(ADA).await;

    // Unchanged roles carry over.
    let admin = app.refresh(&admin.refresh_token).await.expect("rotates");
    let (_, claims) = app.verify(&admin.access_token).await;
    assert_eq!(claims.roles, [ADMIN_ROLE]);

    // The admin is demoted and Ada promoted: their next refresh says so.
    app.users.set_roles(ADMIN, &[]);
    app.users.set_roles(ADA, &[ADMIN_ROLE]);
    let admin = app.refresh(&admin.refresh_token).await.expect("rotates");
    let (_, claims) = app.verify(&admin.access_token).await;
    assert!(claims.roles.is_empty(), "still {:?}", claims.roles);
    assert!(
        !app.principal_of(&admin.access_token, "user")
            .await
            .is_admin()
    );
    let ada = app.refresh(&ada.refresh_token).await.expect("rotates");
    let (_, claims) = app.verify(&ada.access_token).await;
    assert_eq!(claims.roles, [ADMIN_ROLE]);

    // And the successor of the demoted admin's token stays demoted.
    let admin = app.refresh(&admin.refresh_token).await.expect("rotates");
    let (_, claims) = app.verify(&admin.access_token).await;
    assert!(claims.roles.is_empty(), "{:?}", claims.roles);
    app.stop().await;
}
