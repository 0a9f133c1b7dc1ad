//! NotificationService.Subscribe: replay, live delivery, resuming, shutdown, and the
//! metrics of open streams.

use std::time::Duration;

use tonic::Code;
use trellis_platform::testing::assert_eventually;
use trellis_platform::testing::metrics::{sample, scrape};
use trellis_proto::notification_v1 as pb;

use crate::helpers::{
    new_user_id, next_subscribed, spawn_app, spawn_app_with, violated_fields, with_token,
};

/// Far below the drain bound of the shutdown test, far above any healthy stop.
const HANG_GUARD: Duration = Duration::from_secs(30);

#[tokio::test]
async fn subscribe_replays_stored_notifications_oldest_first_then_streams_new_ones() {
    let mut app = spawn_app().await;
    let ada = new_user_id();
    let first = app.send(&ada, "First").await;
    let second = app.send(&ada, "Second").await;

    let mut stream = app.subscribe(&ada, "").await;
    assert_eq!(next_subscribed(&mut stream).await, first);
    assert_eq!(next_subscribed(&mut stream).await, second);

    // Sent after the replay was read, so it can only arrive live.
    let live = app.send(&ada, "Live").await;
    assert_eq!(next_subscribed(&mut stream).await, live);
    let another = app.send(&ada, "Another").await;
    assert_eq!(next_subscribed(&mut stream).await, another);
}

#[tokio::test]
async fn every_open_stream_of_a_user_gets_each_new_notification_and_no_one_elses() {
    let mut app = spawn_app().await;
    let ada = new_user_id();
    let grace = new_user_id();
    let mut phone = app.subscribe(&ada, "").await;
    let mut laptop = app.subscribe(&ada, "").await;
    let mut graces = app.subscribe(&grace, "").await;

    // Grace's first: were it pushed to Ada's streams, it would arrive before Ada's.
    let for_grace = app.send(&grace, "For Grace").await;
    let for_ada = app.send(&ada, "For Ada").await;
    assert_eq!(next_subscribed(&mut phone).await, for_ada);
    assert_eq!(next_subscribed(&mut laptop).await, for_ada);
    assert_eq!(next_subscribed(&mut graces).await, for_grace);
}

#[tokio::test]
async fn open_streams_are_live_subscribers_and_a_dropped_one_counts_as_canceled_with_its_messages()
{
    let mut app = spawn_app().await;
    let ada = new_user_id();
    app.send(&ada, "First").await;
    let mut phone = app.subscribe(&ada, "").await;
    let mut laptop = app.subscribe(&ada, "").await;
    next_subscribed(&mut phone).await;
    next_subscribed(&mut laptop).await;
    let metrics = scrape(app.metrics_addr).await;
    assert_eq!(
        sample(&metrics, "trellis_notification_live_subscribers"),
        Some(2.0),
        "{metrics}"
    );

    let subscribe = r#"{grpc_method="Subscribe",grpc_service="trellis.notification.v1.NotificationService",grpc_type="server_stream"}"#;
    let canceled = r#"{grpc_code="Canceled",grpc_method="Subscribe",grpc_service="trellis.notification.v1.NotificationService",grpc_type="server_stream"}"#;
    assert_eq!(
        sample(&metrics, &format!("grpc_server_started_total{subscribe}")),
        Some(2.0)
    );
    assert_eq!(
        sample(&metrics, &format!("grpc_server_handled_total{canceled}")),
        Some(0.0),
        "open streams are not handled yet"
    );

    // The client goes away: the streams end, counted when they do.
    drop(phone);
    drop(laptop);
    let addr = app.metrics_addr;
    assert_eventually(|| async move {
        let metrics = scrape(addr).await;
        sample(&metrics, "trellis_notification_live_subscribers") == Some(0.0)
            && sample(&metrics, &format!("grpc_server_handled_total{canceled}")) == Some(2.0)
    })
    .await;
    let metrics = scrape(addr).await;
    // Each stream replayed the one stored notification: one message each.
    assert_eq!(
        sample(&metrics, &format!("grpc_server_msg_sent_total{subscribe}")),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &metrics,
            &format!("grpc_server_msg_received_total{subscribe}")
        ),
        Some(2.0)
    );
}

#[tokio::test]
async fn a_repeated_idempotency_key_is_not_streamed_again() {
    let mut app = spawn_app().await;
    let ada = new_user_id();
    let mut stream = app.subscribe(&ada, "").await;
    let request = crate::helpers::send_request(&ada, "Once");
    let once = app.send_as_service(request.clone()).await;
    assert!(once.created);
    let retried = app.send_as_service(request).await;
    assert!(!retried.created);
    let next = app.send(&ada, "Next").await;
    assert_eq!(Some(next_subscribed(&mut stream).await), once.notification);
    assert_eq!(
        next_subscribed(&mut stream).await,
        next,
        "the retry is not pushed again"
    );
}

#[tokio::test]
async fn subscribe_after_an_id_resumes_with_the_notifications_after_it() {
    let mut app = spawn_app().await;
    let ada = new_user_id();
    let first = app.send(&ada, "First").await;
    let second = app.send(&ada, "Second").await;
    let third = app.send(&ada, "Third").await;

    let mut stream = app.subscribe(&ada, &first.id).await;
    assert_eq!(next_subscribed(&mut stream).await, second);
    assert_eq!(next_subscribed(&mut stream).await, third);
    let live = app.send(&ada, "Live").await;
    assert_eq!(next_subscribed(&mut stream).await, live);

    // After the newest: nothing to replay, new ones still arrive.
    let mut caught_up = app.subscribe(&ada, &live.id).await;
    let newest = app.send(&ada, "Newest").await;
    assert_eq!(next_subscribed(&mut caught_up).await, newest);
}

#[tokio::test]
async fn a_malformed_after_is_invalid_argument_naming_it() {
    let mut app = spawn_app().await;
    let token = app.user_token(&new_user_id());
    let status = app
        .notifications
        .subscribe(with_token(
            pb::SubscribeRequest {
                after: "not-a-uuid".into(),
            },
            &token,
        ))
        .await
        .expect_err("a malformed id is refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["after"]);
}

#[tokio::test]
async fn an_after_that_is_not_one_of_the_callers_notifications_is_invalid_argument() {
    let mut app = spawn_app().await;
    let ada = new_user_id();
    let graces = app.send(&new_user_id(), "For Grace").await;
    let token = app.user_token(&ada);
    for after in [graces.id, uuid::Uuid::now_v7().to_string()] {
        let status = app
            .notifications
            .subscribe(with_token(pb::SubscribeRequest { after }, &token))
            .await
            .expect_err("an unknown resume point is refused");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(violated_fields(&status), ["after"]);
    }
}

#[tokio::test]
async fn shutdown_ends_an_open_stream_with_unavailable_well_within_the_drain_bound() {
    // A drain bound far beyond the hang guard below: the server can only stop in time if
    // the service ends its open stream itself when shutdown begins, rather than leaving
    // it for the platform to cut at the bound.
    let mut app =
        spawn_app_with(|config| config.server.drain_timeout = Duration::from_millis(600_000)).await;
    let ada = new_user_id();
    let received = app.send(&ada, "Before shutdown").await;
    let mut stream = app.subscribe(&ada, "").await;
    assert_eq!(next_subscribed(&mut stream).await, received);

    let server = app.stop();

    // The guard only turns a hang (a stream left for the drain bound to cut) into a
    // failure; it asserts no speed.
    let (end, result) = tokio::time::timeout(HANG_GUARD, async {
        let end = stream.message().await.map(drop).map_err(|s| s.code());
        (end, server.await)
    })
    .await
    .expect("the stream ends and the server stops without waiting for the drain bound");
    assert_eq!(end, Err(Code::Unavailable), "clients are told to reconnect");
    assert!(matches!(result, Ok(Ok(()))), "{result:?}");
}
