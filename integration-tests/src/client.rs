//! Typed helpers over the generated clients.

// Helpers panic on purpose: a failed expectation is the test failing.
#![allow(clippy::expect_used)]

use crate::{Trellis, with_token};
use trellis_proto::auth_v1 as auth;
use trellis_proto::notification_v1 as notification;
use trellis_proto::user_v1 as user;

/// The password every test user has.
pub const PASSWORD: &str = "correct horse battery";

/// A signed-up, signed-in user.
pub struct Session {
    /// The user.
    pub user: user::User,
    /// Their tokens.
    pub tokens: auth::TokenPair,
}

impl Session {
    /// The access token.
    pub fn access(&self) -> &str {
        &self.tokens.access_token
    }
}

/// A user-service client.
pub fn users(
    system: &impl Trellis,
) -> user::user_service_client::UserServiceClient<tonic::transport::Channel> {
    user::user_service_client::UserServiceClient::new(system.user_channel())
}

/// An auth-service client.
pub fn auth(
    system: &impl Trellis,
) -> auth::auth_service_client::AuthServiceClient<tonic::transport::Channel> {
    auth::auth_service_client::AuthServiceClient::new(system.auth_channel())
}

/// A notification-service client.
pub fn notifications(
    system: &impl Trellis,
) -> notification::notification_service_client::NotificationServiceClient<tonic::transport::Channel>
{
    notification::notification_service_client::NotificationServiceClient::new(
        system.notification_channel(),
    )
}

/// Signs a user up with [`PASSWORD`].
pub async fn sign_up(system: &impl Trellis, email: &str) -> user::User {
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

/// Logs a user in.
pub async fn log_in(system: &impl Trellis, email: &str) -> auth::TokenPair {
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

/// Signs a user up and in.
pub async fn sign_up_and_log_in(system: &impl Trellis, email: &str) -> Session {
    let user = sign_up(system, email).await;
    let tokens = log_in(system, email).await;
    Session { user, tokens }
}

/// The kinds of every notification of the session's user, oldest first.
pub async fn notification_kinds(system: &impl Trellis, session: &Session) -> Vec<String> {
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
