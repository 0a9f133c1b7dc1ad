//! Typed helpers over the generated clients.

use integration_tests::{System, with_token};
use trellis_proto::auth_v1 as auth;
use trellis_proto::notification_v1 as notification;
use trellis_proto::user_v1 as user;

/// The password every test user has.
pub(crate) const PASSWORD: &str = "correct horse battery";

/// A signed-up, signed-in user.
pub(crate) struct Session {
    pub(crate) user: user::User,
    pub(crate) tokens: auth::TokenPair,
}

impl Session {
    pub(crate) fn access(&self) -> &str {
        &self.tokens.access_token
    }
}

pub(crate) fn users(
    system: &System,
) -> user::user_service_client::UserServiceClient<tonic::transport::Channel> {
    user::user_service_client::UserServiceClient::new(system.user_channel())
}

pub(crate) fn auth(
    system: &System,
) -> auth::auth_service_client::AuthServiceClient<tonic::transport::Channel> {
    auth::auth_service_client::AuthServiceClient::new(system.auth_channel())
}

pub(crate) fn notifications(
    system: &System,
) -> notification::notification_service_client::NotificationServiceClient<tonic::transport::Channel>
{
    notification::notification_service_client::NotificationServiceClient::new(
        system.notification_channel(),
    )
}

pub(crate) async fn sign_up(system: &System, email: &str) -> user::User {
    users(system)
        .create_user(user::CreateUserRequest {
            email: email.to_owned(),
            display_name: email.split('@').next().unwrap_or("someone").to_owned(),
            password: PASSWORD.to_owned(),
        })
        .await
        .expect("sign-up succeeds")
        .into_inner()
        .user
        .expect("user returned")
}

pub(crate) async fn log_in(system: &System, email: &str) -> auth::TokenPair {
    auth(system)
        .login(auth::LoginRequest {
            email: email.to_owned(),
            password: PASSWORD.to_owned(),
        })
        .await
        .expect("login succeeds")
        .into_inner()
        .tokens
        .expect("tokens returned")
}

pub(crate) async fn sign_up_and_log_in(system: &System, email: &str) -> Session {
    let user = sign_up(system, email).await;
    let tokens = log_in(system, email).await;
    Session { user, tokens }
}

/// The kinds of every notification of the session's user, oldest first.
pub(crate) async fn notification_kinds(system: &System, session: &Session) -> Vec<String> {
    let mut listed = notifications(system)
        .list_notifications(with_token(
            notification::ListNotificationsRequest {
                page_size: 500,
                ..Default::default()
            },
            session.access(),
        ))
        .await
        .expect("list succeeds")
        .into_inner()
        .notifications;
    listed.reverse();
    listed.into_iter().map(|n| n.kind).collect()
}
