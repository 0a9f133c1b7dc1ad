//! The test harness: [`spawn_app`] starts the user service with the platform's testkit
//! and returns typed clients.

use pb::user_internal_service_client::UserInternalServiceClient;
use pb::user_service_client::UserServiceClient;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use trellis_platform::service::Launch;
use trellis_platform::testing::{TestIssuer, TestServer, test_config};
use trellis_proto::user_v1 as pb;
use user_service::config::SignUpRate;

pub(crate) use trellis_platform::testing::{
    TEST_PASSWORD as PASSWORD, violated_fields, with_token,
};

/// A running service and clients for it.
pub(crate) struct TestApp {
    pub(crate) users: UserServiceClient<Channel>,
    pub(crate) internal: UserInternalServiceClient<Channel>,
    pub(crate) health: HealthClient<Channel>,
    pub(crate) channel: Channel,
    /// Signs tokens the service accepts.
    pub(crate) issuer: TestIssuer,
    server: TestServer,
}

/// Starts the user service on 127.0.0.1:0 with a fresh in-memory database (peers at the
/// discard port: welcome deliveries stay pending) and waits until it reports SERVING.
/// Every call comes from 127.0.0.1, so the sign-up limit and the rate limits are off here.
pub(crate) async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// As [`spawn_app`], with `configure` applied to the config last.
pub(crate) async fn spawn_app_with(configure: impl FnOnce(&mut user_service::Config)) -> TestApp {
    let issuer = TestIssuer::new();
    let mut config = test_config::<user_service::Service>();
    config.service.sign_up_rate = SignUpRate::OFF;
    // So are the rate limits (the platform's suite tests them; forwarded.rs turns the
    // sign-up limit back on).
    config.rate_limits = trellis_platform::rate_limit::RateLimitsConfig::off();
    configure(&mut config);
    let launch = Launch::new(config).key_source(std::sync::Arc::new(issuer.key_source()));
    let server = TestServer::start(launch).await;
    let channel = server.channel.clone();
    TestApp {
        users: UserServiceClient::new(channel.clone()),
        internal: UserInternalServiceClient::new(channel.clone()),
        health: HealthClient::new(channel.clone()),
        channel,
        issuer,
        server,
    }
}

/// Creates a user with a valid password through `users`, asserting success.
pub(crate) async fn sign_up(
    users: &mut UserServiceClient<Channel>,
    email: &str,
    display_name: &str,
) -> pb::User {
    users
        .create_user(pb::CreateUserRequest {
            email: email.to_owned(),
            display_name: display_name.to_owned(),
            password: PASSWORD.to_owned(),
        })
        .await
        .expect("user is created")
        .into_inner()
        .user
        .expect("response carries the user")
}

/// The roles of the user `id`, read with GetUser as `token`, asserting success.
pub(crate) async fn roles_of(
    users: &mut UserServiceClient<Channel>,
    id: &str,
    token: &str,
) -> Vec<String> {
    users
        .get_user(with_token(pb::GetUserRequest { id: id.to_owned() }, token))
        .await
        .expect("the user is read")
        .into_inner()
        .user
        .expect("response carries the user")
        .roles
}

impl TestApp {
    /// Creates a user with a valid password, asserting success.
    pub(crate) async fn create_user(&mut self, email: &str, display_name: &str) -> pb::User {
        sign_up(&mut self.users, email, display_name).await
    }

    /// GrantRole of `role` to the user `id` as `token`; the user after the change.
    pub(crate) async fn grant_role(
        &mut self,
        id: &str,
        role: &str,
        token: &str,
    ) -> Result<pb::User, tonic::Status> {
        let request = pb::GrantRoleRequest {
            id: id.to_owned(),
            role: role.to_owned(),
        };
        let response = self.users.grant_role(with_token(request, token)).await?;
        Ok(response
            .into_inner()
            .user
            .expect("response carries the user"))
    }

    /// RevokeRole of `role` from the user `id` as `token`; the user after the change.
    pub(crate) async fn revoke_role(
        &mut self,
        id: &str,
        role: &str,
        token: &str,
    ) -> Result<pb::User, tonic::Status> {
        let request = pb::RevokeRoleRequest {
            id: id.to_owned(),
            role: role.to_owned(),
        };
        let response = self.users.revoke_role(with_token(request, token)).await?;
        Ok(response
            .into_inner()
            .user
            .expect("response carries the user"))
    }

    /// Signals shutdown and returns the server task's result.
    pub(crate) async fn stop(&mut self) -> JoinHandle<Result<(), trellis_platform::app::AppError>> {
        self.server.stopped()
    }

    /// A token for `user`.
    pub(crate) fn token_for(&self, user: &pb::User) -> String {
        self.issuer.user_token(&user.id, &[])
    }

    /// A token with the admin role.
    pub(crate) fn admin_token(&self) -> String {
        self.issuer
            .user_token(&uuid::Uuid::now_v7().to_string(), &["admin"])
    }

    /// A service token.
    pub(crate) fn service_token(&self) -> String {
        self.issuer.service_token("auth", "user")
    }

    /// The address the service listens on.
    pub(crate) fn addr(&self) -> std::net::SocketAddr {
        self.server.addr
    }
}
