//! NotificationInternalService.SendNotification: storing, idempotency, field rules.

use tonic::Code;
use trellis_proto::notification_v1 as pb;

use crate::helpers::{new_user_id, send_request, spawn_app, violated_fields, with_token};

/// Every field of a SendNotificationRequest, in proto order.
const FIELDS: [&str; 5] = ["user_id", "kind", "title", "body", "idempotency_key"];

#[tokio::test]
async fn a_service_token_stores_a_notification_for_its_user() {
    let mut app = spawn_app().await;
    let ada = new_user_id();
    let request = send_request(&ada, "Welcome, Ada");
    let response = app.send_as_service(request.clone()).await;
    assert!(
        response.created,
        "a new idempotency key stores a new notification"
    );
    let sent = response.notification.expect("the notification");
    assert!(
        uuid::Uuid::parse_str(&sent.id).is_ok_and(|id| id.get_version_num() == 7),
        "ids are UUIDv7: {}",
        sent.id
    );
    assert_eq!(sent.user_id, ada);
    assert_eq!(sent.kind, request.kind);
    assert_eq!(sent.title, request.title);
    assert_eq!(sent.body, request.body);
    assert!(sent.create_time.is_some());
    assert_eq!(sent.read_time, None, "unread until MarkRead");

    assert_eq!(app.list_all(&ada, false).await, [sent]);
}

#[tokio::test]
async fn the_same_request_again_returns_the_stored_notification_not_created() {
    let mut app = spawn_app().await;
    let ada = new_user_id();
    let first = send_request(&ada, "Welcome");
    let stored = app.send_as_service(first.clone()).await;
    assert!(stored.created);
    let replayed = app.send_as_service(first).await;
    assert!(!replayed.created, "the key had been seen before");
    assert_eq!(replayed.notification, stored.notification);
    assert_eq!(app.list_all(&ada, false).await.len(), 1, "stored once");
}

#[tokio::test]
async fn a_key_reused_for_a_different_notification_is_already_exists_and_stores_nothing() {
    let mut app = spawn_app().await;
    let ada = new_user_id();
    let grace = new_user_id();
    let first = send_request(&ada, "Welcome");
    app.send_as_service(first.clone()).await;

    let changed = [
        pb::SendNotificationRequest {
            user_id: grace.clone(),
            ..first.clone()
        },
        pb::SendNotificationRequest {
            kind: "notice".into(),
            ..first.clone()
        },
        pb::SendNotificationRequest {
            title: "Welcome (changed)".into(),
            ..first.clone()
        },
        pb::SendNotificationRequest {
            body: "another body".into(),
            ..first.clone()
        },
    ];
    for request in changed {
        let status = app.send_refused(request.clone()).await;
        assert_eq!(
            status.code(),
            Code::AlreadyExists,
            "{request:?}: {status:?}"
        );
        assert!(status.message().contains("idempotency key"), "{status:?}");
    }
    assert_eq!(app.list_all(&ada, false).await.len(), 1);
    assert!(app.list_all(&grace, false).await.is_empty());
}

#[tokio::test]
async fn idempotency_keys_are_scoped_to_the_calling_service() {
    let mut app = spawn_app().await;
    let ada = new_user_id();
    let request = send_request(&ada, "Same key, two senders");
    let from_user = app.send_as_service(request.clone()).await;
    let auth_token = app.issuer.service_token("auth", "notification");
    let from_auth = app
        .internal
        .send_notification(with_token(request, &auth_token))
        .await
        .expect("another service's key is its own")
        .into_inner();
    assert!(from_user.created && from_auth.created);
    assert_ne!(from_user.notification, from_auth.notification);
    assert_eq!(app.list_all(&ada, false).await.len(), 2);
}

#[tokio::test]
async fn fields_at_their_limits_are_accepted_counting_characters_not_bytes() {
    let mut app = spawn_app().await;
    let user_id = "ü".repeat(64);
    let response = app
        .send_as_service(pb::SendNotificationRequest {
            user_id: user_id.clone(),
            kind: "k".repeat(64),
            title: "é".repeat(200),
            // Newlines and tabs are allowed in a body.
            body: format!("line one\n\tline two{}", "ß".repeat(3982)),
            idempotency_key: "ñ".repeat(128),
        })
        .await;
    assert!(response.created);
    assert_eq!(app.list_all(&user_id, false).await.len(), 1);
}

#[tokio::test]
async fn empty_fields_are_invalid_argument_naming_each_field() {
    let mut app = spawn_app().await;
    let status = app
        .send_refused(pb::SendNotificationRequest::default())
        .await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), FIELDS);
}

#[tokio::test]
async fn too_long_fields_are_invalid_argument_naming_each_field() {
    let mut app = spawn_app().await;
    let status = app
        .send_refused(pb::SendNotificationRequest {
            user_id: "u".repeat(65),
            kind: "k".repeat(65),
            title: "t".repeat(201),
            body: "b".repeat(4001),
            idempotency_key: "i".repeat(129),
        })
        .await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), FIELDS);
}

#[tokio::test]
async fn control_characters_are_invalid_argument_naming_each_field() {
    let mut app = spawn_app().await;
    let status = app
        .send_refused(pb::SendNotificationRequest {
            user_id: "ada\u{0}".into(),
            kind: "welcome\u{7}".into(),
            // A newline is a control character outside the body.
            title: "Hello\nthere".into(),
            body: "escape \u{1b}[31m".into(),
            idempotency_key: "key\r".into(),
        })
        .await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), FIELDS);
}

#[tokio::test]
async fn only_the_invalid_field_is_named_and_nothing_is_stored() {
    let mut app = spawn_app().await;
    let ada = new_user_id();
    let status = app
        .send_refused(pb::SendNotificationRequest {
            kind: String::new(),
            ..send_request(&ada, "Welcome")
        })
        .await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["kind"]);
    assert!(app.list_all(&ada, false).await.is_empty());
}
