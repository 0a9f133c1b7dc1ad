//! What a client cannot make a stream cost: acknowledgements beyond what a Connect stream
//! pushed end it (RESOURCE_EXHAUSTED) and touch no storage, and no stream outlives the
//! access token it was opened with (UNAUTHENTICATED at the token's expiry).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use trellis_platform::auth::{Claims, DEFAULT_AUDIENCE, DEFAULT_ISSUER, PrincipalKind};
use trellis_platform::testing::metrics::{sample, scrape};
use trellis_proto::notification_v1 as pb;

use crate::helpers::{new_user_id, spawn_app, spawn_app_with, with_token};

/// Messages a Connect stream may send beyond what it was pushed (the service's
/// `ACK_ALLOWANCE`).
const ALLOWANCE: usize = notification_service::grpc::ACK_ALLOWANCE as usize;

#[tokio::test]
async fn a_flood_of_acks_for_notifications_never_pushed_ends_the_stream_resource_exhausted() {
    let mut app = spawn_app().await;
    let ada = new_user_id();
    let pushed = app.send(&ada, "The only one").await;
    // Someone else's notification: this stream never pushes it, so acking it is ignored.
    let graces = app.send(&new_user_id(), "Grace's").await;

    let (acks, outgoing) = mpsc::channel(ALLOWANCE + 8);
    let mut stream = app
        .notifications
        .connect(with_token(
            ReceiverStream::new(outgoing),
            &app.user_token(&ada),
        ))
        .await
        .expect("the stream opens")
        .into_inner();
    let first = stream.message().await.expect("healthy").expect("open");
    assert_eq!(first.notification.as_ref(), Some(&pushed));

    // One push allows 1 + ALLOWANCE messages; the next one is one too many.
    acks.send(pb::ConnectRequest {
        ack_id: pushed.id.clone(),
    })
    .await
    .expect("open");
    for _ in 0..ALLOWANCE {
        acks.send(pb::ConnectRequest {
            ack_id: graces.id.clone(),
        })
        .await
        .expect("open");
    }
    acks.send(pb::ConnectRequest {
        ack_id: uuid::Uuid::now_v7().to_string(),
    })
    .await
    .expect("open");
    let status = stream
        .message()
        .await
        .expect_err("the stream is ended, not left to grow");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    let metrics = scrape(app.metrics_addr).await;
    assert_eq!(
        sample(&metrics, "trellis_notification_ignored_acks_total"),
        Some(ALLOWANCE as f64),
        "every ack of Grace's id was ignored, none stored"
    );
    // Ada's own ack was stored: the next Connect does not push it again.
    let (_acks, outgoing) = mpsc::channel(1);
    let mut again = app
        .notifications
        .connect(with_token(
            ReceiverStream::new(outgoing),
            &app.user_token(&ada),
        ))
        .await
        .expect("the stream opens")
        .into_inner();
    let live = app.send(&ada, "Live").await;
    let next = again.message().await.expect("healthy").expect("open");
    assert_eq!(
        next.notification,
        Some(live),
        "the acknowledged one is not replayed"
    );
}

#[tokio::test]
async fn an_open_subscription_ends_unauthenticated_when_its_token_expires() {
    // No clock-skew leeway, so the token is refused the moment its `exp` passes.
    let app = spawn_app_with(|config| config.auth.leeway_secs = 0).await;
    let ada = new_user_id();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let now = i64::try_from(now).expect("in range");
    let short_lived = app.issuer.sign(&Claims {
        iss: DEFAULT_ISSUER.to_owned(),
        aud: DEFAULT_AUDIENCE.to_owned(),
        sub: ada.clone(),
        iat: now,
        nbf: now,
        exp: now + 2,
        jti: uuid::Uuid::now_v7().to_string(),
        kind: PrincipalKind::User,
        roles: Vec::new(),
        cnf: None,
    });
    let mut stream = app
        .notifications
        .clone()
        .subscribe(with_token(pb::SubscribeRequest::default(), &short_lived))
        .await
        .expect("the token is still valid")
        .into_inner();
    // Nothing is sent: the stream waits, and the token's expiry ends it. (The bound is
    // generous: the test fails on a stream that never ends, not on a slow machine.)
    let status = tokio::time::timeout(Duration::from_secs(60), stream.message())
        .await
        .expect("the stream ends")
        .expect_err("with a status");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(
        status.message(),
        trellis_platform::auth::TOKEN_EXPIRED_MESSAGE
    );
    assert!(
        SystemTime::now() >= UNIX_EPOCH + Duration::from_secs(u64::try_from(now + 2).unwrap()),
        "not before the token expired"
    );

    // A token with its usual life keeps its stream open and fed.
    let mut lasting = app
        .notifications
        .clone()
        .subscribe(with_token(
            pb::SubscribeRequest::default(),
            &app.user_token(&ada),
        ))
        .await
        .expect("opens")
        .into_inner();
    let mut app = app;
    let live = app.send(&ada, "Still here").await;
    let next = lasting.message().await.expect("healthy").expect("open");
    assert_eq!(next.notification, Some(live));
}
