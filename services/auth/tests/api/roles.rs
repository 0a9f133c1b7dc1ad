//! The admin role: given at login to emails in `admin_emails`, carried through refresh.

use trellis_platform::auth::ADMIN_ROLE;

use crate::helpers::{ADA, ADMIN, spawn_app, spawn_app_with};

#[tokio::test]
async fn an_email_in_admin_emails_gets_the_admin_role_and_keeps_it_across_refresh() {
    let mut app = spawn_app().await;
    let tokens = app.sign_in(ADMIN).await;
    let (_, claims) = app.verify(&tokens.access_token).await;
    assert_eq!(claims.sub, app.users.account(ADMIN).id);
    assert_eq!(claims.roles, [ADMIN_ROLE]);
    assert!(app.principal_of(&tokens.access_token).await.is_admin());

    let refreshed = app
        .refresh(&tokens.refresh_token)
        .await
        .expect("the admin's token rotates");
    let (_, claims) = app.verify(&refreshed.access_token).await;
    assert_eq!(claims.roles, [ADMIN_ROLE]);

    // Everyone else signs in with no role.
    let tokens = app.sign_in(ADA).await;
    let (_, claims) = app.verify(&tokens.access_token).await;
    assert!(claims.roles.is_empty(), "{:?}", claims.roles);
    app.stop().await;
}

#[tokio::test]
async fn admin_emails_is_a_comma_separated_list_matched_regardless_of_case_and_spaces() {
    let mut app = spawn_app_with(|config| {
        config.service.admin_emails = "ops@example.com , Admin@Example.com ,".to_owned();
    })
    .await;
    let tokens = app.sign_in(ADMIN).await;
    let (_, claims) = app.verify(&tokens.access_token).await;
    assert_eq!(claims.roles, [ADMIN_ROLE]);
    app.stop().await;
}

#[tokio::test]
async fn with_no_admin_emails_nobody_is_an_admin() {
    let mut app = spawn_app_with(|config| config.service.admin_emails.clear()).await;
    let tokens = app.sign_in(ADMIN).await;
    let (_, claims) = app.verify(&tokens.access_token).await;
    assert!(claims.roles.is_empty(), "{:?}", claims.roles);
    app.stop().await;
}
