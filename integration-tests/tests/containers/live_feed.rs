//! The live feed across two notification replicas on one PostgreSQL database (in-process
//! replicas, one PostgreSQL container): subscribers on both, sends through the second
//! (then, once it is stopped, the first), the listeners' backends killed with `pg_terminate_backend` mid-run and one replica stopped
//! mid-run (its subscribers resume on the other with `after`). The history goes through
//! the set checker ([`integration_tests::feed_check`]): nothing lost, nothing unexpected,
//! no duplicates, real-time order. The replicas poll only once a minute and the test
//! pauses before the first fault, so every delivery within [`MAX_LAG`] of
//! its send came through `LISTEN`/`NOTIFY` and the catch-up after a reconnection.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use integration_tests::docker;
use integration_tests::feed_check::{FeedRecord, SendRecord, check};
use pb::notification_internal_service_client::NotificationInternalServiceClient;
use pb::notification_service_client::NotificationServiceClient;
use sea_orm::{ConnectionTrait as _, Database};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use trellis_platform::data::DatabaseConfig;
use trellis_platform::service::Launch;
use trellis_platform::testing::metrics::{sample, scrape};
use trellis_platform::testing::{TestIssuer, TestServer, local_listener, test_config, with_token};
use trellis_proto::notification_v1 as pb;

use crate::postgres::postgres;

const USERS: usize = 4;
const SENDS_PER_USER: usize = 30;
/// How long the feeds get to drain after the last send.
const DRAIN: Duration = Duration::from_secs(5);
/// The longest a delivery may take after its send was acknowledged: far longer than a
/// LISTEN round trip (milliseconds), far shorter than the replicas' minute-long poll and
/// than [`QUIET`].
const MAX_LAG: Duration = Duration::from_secs(2);
/// A pause before the first fault, with nothing sent: a notification the first replica
/// heard of only at its next wake-up for another reason (not through NOTIFY) would wait
/// this long.
const QUIET: Duration = Duration::from_secs(4);

async fn replica(issuer: &TestIssuer, url: &str) -> TestServer {
    let mut config = test_config::<notification_service::Service>();
    config.database = DatabaseConfig::with_url(url);
    config.service.feed.poll_interval_ms = 60_000;
    let launch = Launch::new(config)
        .key_source(Arc::new(issuer.key_source()))
        .metrics_listener(local_listener());
    TestServer::start(launch).await
}

/// Reads `user`'s feed starting on replica `first` of `channels`, moving to the next
/// replica with `after` set to the last id received whenever a stream ends, until `stop`.
async fn follow(
    user: String,
    name: String,
    token: String,
    channels: [Channel; 2],
    first: usize,
    stop: CancellationToken,
    opened: Arc<tokio::sync::Notify>,
) -> FeedRecord {
    let mut record = FeedRecord {
        user,
        name,
        opened: Instant::now(),
        closed: Instant::now(),
        delivered: Vec::new(),
    };
    let mut replica = first;
    let mut announced = false;
    loop {
        let after = record
            .delivered
            .last()
            .map(|(id, _)| id.clone())
            .unwrap_or_default();
        let mut client = NotificationServiceClient::new(channels[replica].clone());
        let opening = client.subscribe(with_token(pb::SubscribeRequest { after }, &token));
        let stream = tokio::select! {
            () = stop.cancelled() => break,
            stream = opening => stream,
        };
        if let Ok(response) = stream {
            let mut stream = response.into_inner();
            if !announced {
                record.opened = Instant::now();
                opened.notify_one();
                announced = true;
            }
            loop {
                let message = tokio::select! {
                    () = stop.cancelled() => {
                        record.closed = Instant::now();
                        return record;
                    }
                    message = stream.message() => message,
                };
                match message {
                    Ok(Some(message)) => {
                        let id = message.notification.map(|n| n.id).unwrap_or_default();
                        record.delivered.push((id, Instant::now()));
                    }
                    // Ended (the replica is stopping): resume on the other one.
                    _ => break,
                }
            }
        }
        replica = (replica + 1) % channels.len();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    record.closed = Instant::now();
    record
}

#[tokio::test]
async fn two_replicas_on_postgres_deliver_every_notification_once_in_order_live() {
    if !docker::require(&["postgres"]) {
        return;
    }
    let (_postgres, databases) = postgres().await;
    let issuer = TestIssuer::new();
    let one = replica(&issuer, &databases.notification).await;
    let mut other = replica(&issuer, &databases.notification).await;
    let channels = [one.channel.clone(), other.channel.clone()];

    // Two subscribers per user, one starting on each replica.
    let stop = CancellationToken::new();
    let users: Vec<String> = (0..USERS)
        .map(|_| uuid::Uuid::now_v7().to_string())
        .collect();
    let mut feeds = Vec::new();
    for user in &users {
        for first in 0..2 {
            let opened = Arc::new(tokio::sync::Notify::new());
            feeds.push(tokio::spawn(follow(
                user.clone(),
                format!("{user}@replica-{first}"),
                issuer.user_token(user, &[]),
                channels.clone(),
                first,
                stop.clone(),
                Arc::clone(&opened),
            )));
            opened.notified().await;
        }
    }

    // One sender per user, through the second replica until it stops.
    let other_up = Arc::new(AtomicBool::new(true));
    let sends = Arc::new(Mutex::new(Vec::new()));
    let service_token = issuer.service_token("user", "notification");
    let progress = Arc::new(tokio::sync::Barrier::new(USERS + 1));
    let mut senders = Vec::new();
    for user in users.clone() {
        let (channels, other_up, sends, token, progress) = (
            channels.clone(),
            Arc::clone(&other_up),
            Arc::clone(&sends),
            service_token.clone(),
            Arc::clone(&progress),
        );
        senders.push(tokio::spawn(async move {
            for i in 0..SENDS_PER_USER {
                // Faults happen at the thirds: wait for the test to inject them.
                if i == SENDS_PER_USER / 3 || i == 2 * SENDS_PER_USER / 3 {
                    progress.wait().await;
                    progress.wait().await;
                }
                // Through the second replica while it runs: the first one's feeds then
                // learn of every notification only through LISTEN/NOTIFY.
                let target = usize::from(other_up.load(Ordering::SeqCst));
                let mut client = NotificationInternalServiceClient::new(channels[target].clone());
                let request = pb::SendNotificationRequest {
                    user_id: user.clone(),
                    kind: "test".to_owned(),
                    title: format!("{i}"),
                    body: format!("Notification {i} of the test"),
                    idempotency_key: uuid::Uuid::new_v4().to_string(),
                };
                let invoked = Instant::now();
                let answer = client.send_notification(with_token(request, &token)).await;
                let acknowledged = match answer {
                    Ok(r) => r.into_inner().notification.map(|n| (n.id, Instant::now())),
                    Err(status) => {
                        eprintln!("send {i} to {user} failed: {status:?}");
                        None
                    }
                };
                sends.lock().await.push(SendRecord {
                    user: user.clone(),
                    invoked,
                    acknowledged,
                });
            }
        }));
    }

    // First third: a quiet pause, then kill every LISTEN backend; the replicas reconnect
    // and catch up.
    progress.wait().await;
    tokio::time::sleep(QUIET).await;
    let admin = Database::connect(databases.notification.as_str())
        .await
        .expect("the test reaches PostgreSQL");
    let killed = admin
        .query_all_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE query ILIKE 'LISTEN%' AND pid <> pg_backend_pid()",
        ))
        .await
        .expect("pg_terminate_backend runs");
    assert_eq!(killed.len(), 2, "one LISTEN connection per replica");
    progress.wait().await;

    // Second third: stop one replica; its subscribers resume on the other.
    progress.wait().await;
    other_up.store(false, Ordering::SeqCst);
    other
        .stopped()
        .await
        .expect("joined")
        .expect("a clean stop");
    progress.wait().await;

    for sender in senders {
        sender.await.expect("the sender finishes");
    }
    let expected = USERS * SENDS_PER_USER;
    let sends = sends.lock().await.clone();
    assert_eq!(
        sends.iter().filter(|s| s.acknowledged.is_some()).count(),
        expected,
        "every send to a running replica is acknowledged"
    );
    // Let the feeds drain, then stop them and check the history.
    tokio::time::sleep(DRAIN).await;
    stop.cancel();
    let mut records = Vec::new();
    for feed in feeds {
        records.push(feed.await.expect("the feed finishes"));
    }
    let verdict = check(&sends, &records);
    assert!(
        verdict.anomalies.is_empty(),
        "{} anomalies: {:#?}",
        verdict.anomalies.len(),
        verdict.anomalies
    );
    assert_eq!(
        verdict.deliveries,
        expected * 2,
        "each to both of its user's feeds"
    );
    // The surviving replica's metrics: it reconnected its listener once and has read
    // every notification.
    let metrics = scrape(one.metrics_addr.expect("a metrics endpoint")).await;
    assert_eq!(
        sample(&metrics, "trellis_notification_feed_reconnects_total"),
        Some(1.0),
        "{metrics}"
    );
    #[allow(clippy::cast_precision_loss)]
    let all = expected as f64;
    assert_eq!(
        sample(&metrics, "trellis_notification_feed_sequence"),
        Some(all),
        "{metrics}"
    );
    let lag = verdict.max_lag.expect("deliveries were timed");
    assert!(
        lag < MAX_LAG,
        "delivered live, not at a poll or a later commit: {lag:?}"
    );
    one.stop().await;
}
