//! The test harness: [`spawn_app`] starts the notification service with the platform's
//! testkit and returns typed clients, plus helpers that send and read notifications the
//! way other services and end users do.

use std::sync::Arc;

use pb::notification_internal_service_client::NotificationInternalServiceClient;
use pb::notification_service_client::NotificationServiceClient;
use tokio::task::JoinHandle;
use tonic::Status;
use tonic::transport::Channel;
use trellis_platform::app::AppError;
use trellis_platform::service::{Config, Launch};
use trellis_platform::testing::{TestIssuer, TestServer, local_listener, test_config};
use trellis_proto::notification_v1 as pb;

pub(crate) use trellis_platform::testing::{code, violated_fields, with_token};

/// The notification service's config as the testkit makes it.
pub(crate) type NotificationConfig = Config<notification_service::Service>;

/// A running service and clients for it.
pub(crate) struct TestApp {
    pub(crate) notifications: NotificationServiceClient<Channel>,
    pub(crate) internal: NotificationInternalServiceClient<Channel>,
    pub(crate) channel: Channel,
    /// Its metrics endpoint.
    pub(crate) metrics_addr: std::net::SocketAddr,
    /// Signs tokens the service accepts.
    pub(crate) issuer: TestIssuer,
    server: TestServer,
}

/// Starts the notification service on 127.0.0.1:0 with a fresh in-memory database and
/// the testkit's config, and waits until it reports SERVING.
pub(crate) async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// As [`spawn_app`], with `adjust` applied to the config first.
pub(crate) async fn spawn_app_with(adjust: impl FnOnce(&mut NotificationConfig)) -> TestApp {
    spawn_replica(TestIssuer::new(), adjust).await
}

/// As [`spawn_app_with`], trusting `issuer`'s tokens: replicas of one service share it.
pub(crate) async fn spawn_replica(
    issuer: TestIssuer,
    adjust: impl FnOnce(&mut NotificationConfig),
) -> TestApp {
    let mut config = test_config::<notification_service::Service>();
    adjust(&mut config);
    let launch = Launch::new(config)
        .key_source(Arc::new(issuer.key_source()))
        .metrics_listener(local_listener());
    let server = TestServer::start(launch).await;
    let channel = server.channel.clone();
    TestApp {
        notifications: NotificationServiceClient::new(channel.clone()),
        internal: NotificationInternalServiceClient::new(channel.clone()),
        channel,
        metrics_addr: server.metrics_addr.expect("a metrics endpoint"),
        issuer,
        server,
    }
}

/// A fresh end-user id (the service takes any subject; auth makes UUIDv7s).
pub(crate) fn new_user_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// A valid request for `user_id` with a fresh idempotency key.
pub(crate) fn send_request(user_id: &str, title: &str) -> pb::SendNotificationRequest {
    pb::SendNotificationRequest {
        user_id: user_id.to_owned(),
        kind: "welcome".to_owned(),
        title: title.to_owned(),
        body: format!("{title}, in more words"),
        idempotency_key: uuid::Uuid::new_v4().to_string(),
    }
}

impl TestApp {
    /// A token for the end user `user_id`.
    pub(crate) fn user_token(&self, user_id: &str) -> String {
        self.issuer.user_token(user_id, &[])
    }

    /// A service token (the user service's, which sends welcomes).
    pub(crate) fn service_token(&self) -> String {
        self.issuer.service_token("user", "notification")
    }

    /// Sends `request` as a service (the user service), asserting it is refused; returns
    /// the status.
    pub(crate) async fn send_refused(&mut self, request: pb::SendNotificationRequest) -> Status {
        let token = self.service_token();
        self.internal
            .send_notification(with_token(request, &token))
            .await
            .expect_err("the request is refused")
    }

    /// Sends `request` as a service, asserting success; returns the response.
    pub(crate) async fn send_as_service(
        &mut self,
        request: pb::SendNotificationRequest,
    ) -> pb::SendNotificationResponse {
        let token = self.service_token();
        self.internal
            .send_notification(with_token(request, &token))
            .await
            .expect("a valid notification from a service is stored")
            .into_inner()
    }

    /// Sends a new notification titled `title` to `user_id`; returns it as stored.
    pub(crate) async fn send(&mut self, user_id: &str, title: &str) -> pb::Notification {
        self.send_as_service(send_request(user_id, title))
            .await
            .notification
            .expect("the response carries the notification")
    }

    /// One ListNotifications page as `user_id`, asserting success.
    pub(crate) async fn list_page(
        &mut self,
        user_id: &str,
        request: pb::ListNotificationsRequest,
    ) -> pb::ListNotificationsResponse {
        let token = self.user_token(user_id);
        self.notifications
            .list_notifications(with_token(request, &token))
            .await
            .expect("the caller's notifications are listed")
            .into_inner()
    }

    /// Every notification of `user_id` (one page of the maximum size), newest first.
    pub(crate) async fn list_all(
        &mut self,
        user_id: &str,
        unread_only: bool,
    ) -> Vec<pb::Notification> {
        let page = self
            .list_page(
                user_id,
                pb::ListNotificationsRequest {
                    page_size: 500,
                    page_token: String::new(),
                    unread_only,
                },
            )
            .await;
        assert!(page.next_page_token.is_empty(), "fewer than 500 in tests");
        page.notifications
    }

    /// Opens Subscribe as `user_id` after `after`, asserting the stream opens.
    pub(crate) async fn subscribe(
        &mut self,
        user_id: &str,
        after: &str,
    ) -> tonic::Streaming<pb::SubscribeResponse> {
        let token = self.user_token(user_id);
        self.notifications
            .subscribe(with_token(
                pb::SubscribeRequest {
                    after: after.to_owned(),
                },
                &token,
            ))
            .await
            .expect("the stream opens")
            .into_inner()
    }

    /// Signals shutdown and returns the server task, to await its result.
    pub(crate) fn stop(&mut self) -> JoinHandle<Result<(), AppError>> {
        self.server.stopped()
    }
}

/// The next notification on a Subscribe stream, asserting there is one.
pub(crate) async fn next_subscribed(
    stream: &mut tonic::Streaming<pb::SubscribeResponse>,
) -> pb::Notification {
    stream
        .message()
        .await
        .expect("the stream is healthy")
        .expect("the stream is still open")
        .notification
        .expect("each message carries a notification")
}

/// The ids of `notifications`, in order.
pub(crate) fn ids(notifications: &[pb::Notification]) -> Vec<String> {
    notifications.iter().map(|n| n.id.clone()).collect()
}
