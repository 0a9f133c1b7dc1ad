//! Welcome and sign-in notifications through the outboxes, Subscribe and Connect.

use std::time::Duration;

use integration_tests::{System, with_token};
use trellis_proto::notification_v1 as pb;

use integration_tests::client::{log_in, notifications, sign_up_and_log_in};

/// Waits for the next message of a stream (10 s at most).
async fn next<T>(stream: &mut tonic::Streaming<T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a message within 10 s")
        .expect("stream is healthy")
        .expect("stream is open")
}

#[tokio::test]
async fn welcome_and_sign_in_arrive_on_subscribe_then_live() {
    let system = System::start().await;
    let ada = sign_up_and_log_in(&system, "ada@example.com").await;
    let mut stream = notifications(&system)
        .subscribe(with_token(pb::SubscribeRequest::default(), ada.access()))
        .await
        .expect("subscribe succeeds")
        .into_inner();
    // The welcome and the first sign-in, replayed or live. Their order depends on which
    // outbox (user's or auth's) delivered first.
    let first = next(&mut stream).await.notification.expect("notification");
    let second = next(&mut stream).await.notification.expect("notification");
    let mut kinds = [first.kind.as_str(), second.kind.as_str()];
    kinds.sort_unstable();
    assert_eq!(kinds, ["new_sign_in", "welcome"]);
    assert_eq!(first.user_id, ada.user.id);
    let second = if first.id > second.id { first } else { second };

    // A new sign-in while subscribed arrives live.
    log_in(&system, "ada@example.com").await;
    let live = next(&mut stream).await.notification.expect("notification");
    assert_eq!(live.kind, "new_sign_in");
    assert!(live.id > second.id);

    // Resuming after the last id received replays nothing old.
    let mut resumed = notifications(&system)
        .subscribe(with_token(
            pb::SubscribeRequest {
                after: live.id.clone(),
            },
            ada.access(),
        ))
        .await
        .expect("subscribe succeeds")
        .into_inner();
    log_in(&system, "ada@example.com").await;
    let after = next(&mut resumed).await.notification.expect("notification");
    assert!(after.id > live.id, "only notifications after the cursor");
    system.stop().await;
}

#[tokio::test]
async fn connect_pushes_and_redelivers_unacknowledged_notifications() {
    let system = System::start().await;
    let ada = sign_up_and_log_in(&system, "ada@example.com").await;
    let mut client = notifications(&system);

    let (acks, ack_rx) = tokio::sync::mpsc::channel::<pb::ConnectRequest>(8);
    let mut stream = client
        .connect(with_token(
            tokio_stream::wrappers::ReceiverStream::new(ack_rx),
            ada.access(),
        ))
        .await
        .expect("connect succeeds")
        .into_inner();
    let first = next(&mut stream).await.notification.expect("notification");
    let second = next(&mut stream).await.notification.expect("notification");
    let (welcome, sign_in) = if first.kind == "welcome" {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(
        (welcome.kind.as_str(), sign_in.kind.as_str()),
        ("welcome", "new_sign_in")
    );
    // Acknowledge only the welcome, then close our side and wait for the server to end
    // the stream: it has then stored the acknowledgement.
    acks.send(pb::ConnectRequest {
        ack_id: welcome.id.clone(),
    })
    .await
    .expect("ack sent");
    drop(acks);
    while let Ok(Some(_)) = stream.message().await {}

    // Reconnect: the unacknowledged sign-in comes again, the acknowledged welcome does
    // not — the next message after it is a new, live notification.
    let (_acks, ack_rx) = tokio::sync::mpsc::channel::<pb::ConnectRequest>(1);
    let mut stream = client
        .connect(with_token(
            tokio_stream::wrappers::ReceiverStream::new(ack_rx),
            ada.access(),
        ))
        .await
        .expect("reconnect succeeds")
        .into_inner();
    let again = next(&mut stream).await.notification.expect("notification");
    assert_eq!(
        again.id, sign_in.id,
        "the unacknowledged notification is redelivered"
    );
    log_in(&system, "ada@example.com").await;
    let live = next(&mut stream).await.notification.expect("notification");
    assert_eq!(live.kind, "new_sign_in");
    assert_ne!(
        live.id, welcome.id,
        "the acknowledged welcome is not redelivered"
    );
    assert!(live.id > sign_in.id);
    system.stop().await;
}

#[tokio::test]
async fn subscribe_ends_unavailable_on_shutdown_and_resumes_with_no_gap() {
    let mut system = System::start().await;
    let ada = sign_up_and_log_in(&system, "ada@example.com").await;
    let mut stream = notifications(&system)
        .subscribe(with_token(pb::SubscribeRequest::default(), ada.access()))
        .await
        .expect("subscribe succeeds")
        .into_inner();
    let mut last = String::new();
    for _ in 0..2 {
        last = next(&mut stream)
            .await
            .notification
            .expect("notification")
            .id;
    }
    system.stop_notification().await;
    let end = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the stream ends");
    assert_eq!(
        end.map(drop).map_err(|s| s.code()),
        Err(tonic::Code::Unavailable)
    );

    // While it is down, a sign-in is queued in auth's outbox; after the restart the
    // resumed stream gets exactly that one.
    log_in(&system, "ada@example.com").await;
    system.start_notification().await;
    let mut resumed = notifications(&system)
        .subscribe(with_token(
            pb::SubscribeRequest {
                after: last.clone(),
            },
            ada.access(),
        ))
        .await
        .expect("resubscribe succeeds")
        .into_inner();
    let missed = next(&mut resumed).await.notification.expect("notification");
    assert_eq!(missed.kind, "new_sign_in");
    assert!(missed.id > last);
    system.stop().await;
}
