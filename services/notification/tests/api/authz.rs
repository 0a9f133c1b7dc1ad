//! Who may call what: end users call NotificationService (on their own notifications),
//! services call NotificationInternalService; tokens verify against the identity peer's
//! keys.

use pb::notification_internal_service_client::NotificationInternalServiceClient;
use pb::notification_service_client::NotificationServiceClient;
use tonic::Code;
use trellis_platform::service::Launch;
use trellis_platform::testing::{FakeAuth, TestIssuer, TestServer, test_config};
use trellis_proto::notification_v1 as pb;

use crate::helpers::{TestApp, code, new_user_id, send_request, spawn_app, with_token};

/// Calls every NotificationService method with `token` (none when `None`); the codes,
/// in proto order.
async fn call_every_user_method(app: &mut TestApp, token: Option<&str>) -> [Result<(), Code>; 4] {
    fn request<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
        match token {
            Some(token) => with_token(message, token),
            None => tonic::Request::new(message),
        }
    }
    let client = &mut app.notifications;
    [
        code(
            client
                .list_notifications(request(pb::ListNotificationsRequest::default(), token))
                .await,
        ),
        code(
            client
                .mark_read(request(
                    pb::MarkReadRequest {
                        ids: vec![uuid::Uuid::now_v7().to_string()],
                    },
                    token,
                ))
                .await,
        ),
        code(
            client
                .subscribe(request(pb::SubscribeRequest::default(), token))
                .await,
        ),
        code(
            client
                .connect(request(
                    tokio_stream::iter(Vec::<pb::ConnectRequest>::new()),
                    token,
                ))
                .await,
        ),
    ]
}

#[tokio::test]
async fn user_methods_need_a_valid_token() {
    let mut app = spawn_app().await;
    let unauthenticated = [Err(Code::Unauthenticated); 4];
    assert_eq!(
        call_every_user_method(&mut app, None).await,
        unauthenticated
    );
    assert_eq!(
        call_every_user_method(&mut app, Some("not.a.jwt")).await,
        unauthenticated
    );
    let stranger = TestIssuer::new().user_token(&new_user_id(), &[]);
    assert_eq!(
        call_every_user_method(&mut app, Some(&stranger)).await,
        unauthenticated,
        "a token signed by a key the service does not know"
    );
    let valid = app.user_token(&new_user_id());
    assert_eq!(
        call_every_user_method(&mut app, Some(&valid)).await,
        [Ok(()); 4]
    );
}

#[tokio::test]
async fn a_service_token_cannot_use_end_user_methods() {
    let mut app = spawn_app().await;
    let token = app.service_token();
    assert_eq!(
        call_every_user_method(&mut app, Some(&token)).await,
        [Err(Code::PermissionDenied); 4],
        "these methods act on the caller's own notifications"
    );
}

#[tokio::test]
async fn send_notification_without_a_token_is_unauthenticated() {
    let mut app = spawn_app().await;
    let ada = new_user_id();
    let anonymous = app
        .internal
        .send_notification(send_request(&ada, "Hi"))
        .await;
    assert_eq!(code(anonymous), Err(Code::Unauthenticated));
    let stranger = TestIssuer::new().service_token("user", "notification");
    let foreign = app
        .internal
        .send_notification(with_token(send_request(&ada, "Hi"), &stranger))
        .await;
    assert_eq!(code(foreign), Err(Code::Unauthenticated));
    assert!(app.list_all(&ada, false).await.is_empty());
}

#[tokio::test]
async fn only_user_and_auth_may_send_notifications() {
    let mut app = spawn_app().await;
    let ada = new_user_id();
    for (service, expected) in [
        ("notification", Err(Code::PermissionDenied)),
        ("billing", Err(Code::PermissionDenied)),
        ("user", Ok(())),
        ("auth", Ok(())),
    ] {
        let token = app.issuer.service_token(service, "notification");
        let result = app
            .internal
            .send_notification(with_token(send_request(&ada, service), &token))
            .await;
        assert_eq!(code(result), expected, "{service}");
    }
    let titles: Vec<_> = app
        .list_all(&ada, false)
        .await
        .into_iter()
        .map(|n| n.title)
        .collect();
    assert_eq!(
        titles.len(),
        2,
        "only user's and auth's are stored: {titles:?}"
    );
}

#[tokio::test]
async fn send_notification_with_an_end_user_token_is_permission_denied() {
    let mut app = spawn_app().await;
    let ada = new_user_id();
    for roles in [&[][..], &["admin"][..]] {
        let token = app.issuer.user_token(&ada, roles);
        let result = app
            .internal
            .send_notification(with_token(send_request(&ada, "Hi"), &token))
            .await;
        assert_eq!(code(result), Err(Code::PermissionDenied), "roles {roles:?}");
    }
    assert!(app.list_all(&ada, false).await.is_empty());
}

#[tokio::test]
async fn tokens_verify_against_keys_fetched_from_the_identity_peer() {
    let auth = FakeAuth::start(TestIssuer::new()).await;
    let mut config = test_config::<notification_service::Service>();
    config
        .peers
        .get_mut("auth")
        .expect("an auth peer")
        .addresses = auth.uri();
    // No static key source: the service fetches auth's published keys over gRPC.
    let server = TestServer::start(Launch::new(config)).await;
    let mut internal = NotificationInternalServiceClient::new(server.channel.clone());
    let mut notifications = NotificationServiceClient::new(server.channel.clone());

    let ada = new_user_id();
    let sent = internal
        .send_notification(with_token(
            send_request(&ada, "Hi"),
            &auth.issuer.service_token("user", "notification"),
        ))
        .await
        .expect("a service token signed by the identity peer's key is accepted")
        .into_inner()
        .notification
        .expect("the notification");
    let listed = notifications
        .list_notifications(with_token(
            pb::ListNotificationsRequest::default(),
            &auth.issuer.user_token(&ada, &[]),
        ))
        .await
        .expect("a user token signed by the identity peer's key is accepted")
        .into_inner()
        .notifications;
    assert_eq!(listed, [sent]);

    let stranger = TestIssuer::new().user_token(&ada, &[]);
    let refused = notifications
        .list_notifications(with_token(
            pb::ListNotificationsRequest::default(),
            &stranger,
        ))
        .await;
    assert_eq!(
        code(refused),
        Err(Code::Unauthenticated),
        "a token signed by another key is refused"
    );
    server.stop().await;
}
