//! The outbox dispatcher: stopping mid-delivery, rejected messages kept visible and
//! retryable, delivered messages pruned; the backlog as metrics; replicas' dispatchers
//! sharing one table.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait as _, DatabaseConnection, EntityTrait as _, QueryFilter as _};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use trellis_platform::data::DatabaseConfig;
use trellis_platform::metrics::Metrics;
use trellis_platform::outbox::entity::{Column, Entity};
use trellis_platform::outbox::{
    Dispatcher, OutboxConfig, OutboxEntry, OutboxWaker, enqueue, failed_count, failed_messages,
    oldest_pending_time, pending_count, prune_delivered, retry_failed,
};
use trellis_platform::peer::{PeerConfig, Peers};
use trellis_platform::testing::assert_eventually;
use trellis_platform::testing::metrics::sample;
use trellis_proto::notification_v1 as pb;

use crate::support::{Answer, Migrator, Notifications, load, serve_notifications};

async fn database() -> DatabaseConnection {
    trellis_platform::data::connect::<Migrator>(&DatabaseConfig::with_url("sqlite::memory:"))
        .await
        .unwrap()
}

async fn enqueue_one(db: &DatabaseConnection) -> uuid::Uuid {
    let id = uuid::Uuid::now_v7();
    enqueue(
        db,
        OutboxEntry::new(
            id,
            "notification",
            trellis_proto::paths::SEND_NOTIFICATION,
            &crate::support::send_request(),
        ),
    )
    .await
    .unwrap();
    id
}

/// Peers with `notification` at `addr`, with a call deadline of an hour.
fn peers(addr: std::net::SocketAddr) -> Peers {
    let mut peer = PeerConfig::with_address(format!("http://{addr}"));
    peer.timeout = Duration::from_millis(3_600_000);
    Peers::new(HashMap::from([("notification".to_owned(), peer)]))
}

/// A migrated SQLite file in `dir`, opened by a pool of its own as a replica would.
async fn shared_file(dir: &tempfile::TempDir) -> DatabaseConnection {
    let url = format!("sqlite://{}/outbox.db?mode=rwc", dir.path().display());
    trellis_platform::data::connect::<Migrator>(&DatabaseConfig::with_url(&url))
        .await
        .unwrap()
}

/// Enqueues `count` messages whose idempotency key is their id; returns the keys.
async fn enqueue_keyed(db: &DatabaseConnection, count: usize) -> Vec<String> {
    let mut keys = Vec::new();
    for _ in 0..count {
        let id = uuid::Uuid::now_v7();
        let request = pb::SendNotificationRequest {
            idempotency_key: id.to_string(),
            ..Default::default()
        };
        let entry = OutboxEntry::new(
            id,
            "notification",
            trellis_proto::paths::SEND_NOTIFICATION,
            &request,
        );
        enqueue(db, entry).await.unwrap();
        keys.push(id.to_string());
    }
    keys.sort();
    keys
}

/// A peer that records the keys it is sent, answering OK after `delay`.
async fn recording_peer(
    delay: Duration,
) -> (std::net::SocketAddr, Arc<parking_lot::Mutex<Vec<String>>>) {
    let keys = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let addr = serve_notifications(Notifications(Answer::Record {
        keys: Arc::clone(&keys),
        delay,
    }))
    .await;
    (addr, keys)
}

#[tokio::test]
async fn two_dispatchers_on_one_table_deliver_each_message_once() {
    let dir = tempfile::tempdir().unwrap();
    let (first_db, second_db) = (shared_file(&dir).await, shared_file(&dir).await);
    let expected = enqueue_keyed(&first_db, 60).await;
    // A slow peer, so both dispatchers read the same due rows while the other delivers.
    let (addr, delivered) = recording_peer(Duration::from_millis(5)).await;
    let stop = CancellationToken::new();
    let mut running = Vec::new();
    for db in [first_db.clone(), second_db] {
        let dispatcher = Dispatcher::new(
            db,
            peers(addr),
            OutboxConfig::default(),
            OutboxWaker::default(),
        );
        running.push(tokio::spawn(dispatcher.run(stop.clone())));
    }
    assert_eventually(|| async { pending(&first_db).await == 0 }).await;
    stop.cancel();
    for dispatcher in running {
        dispatcher.await.unwrap();
    }
    let mut delivered = delivered.lock().clone();
    delivered.sort();
    assert_eq!(delivered, expected, "each message delivered exactly once");
}

#[tokio::test]
async fn a_message_whose_dispatcher_dies_mid_delivery_is_delivered_after_the_lease() {
    let dir = tempfile::tempdir().unwrap();
    let (first_db, second_db) = (shared_file(&dir).await, shared_file(&dir).await);
    let expected = enqueue_keyed(&first_db, 1).await;
    let lease = OutboxConfig {
        claim_lease: Duration::from_millis(1500),
        ..OutboxConfig::default()
    };
    // The first dispatcher claims the message and hangs delivering it; then it is killed
    // (its task dropped: no shutdown path runs, as with SIGKILL).
    let started = Arc::new(Notify::new());
    let hanging = serve_notifications(Notifications(Answer::Hang {
        started: Arc::clone(&started),
    }))
    .await;
    let doomed = tokio::spawn(
        Dispatcher::new(
            first_db.clone(),
            peers(hanging),
            lease.clone(),
            OutboxWaker::default(),
        )
        .run(CancellationToken::new()),
    );
    started.notified().await;
    doomed.abort();
    // The second, started meanwhile, leaves the claimed message alone until the lease is
    // over, then delivers it.
    let (addr, delivered) = recording_peer(Duration::ZERO).await;
    let stop = CancellationToken::new();
    let survivor = tokio::spawn(
        Dispatcher::new(second_db, peers(addr), lease, OutboxWaker::default()).run(stop.clone()),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        delivered.lock().is_empty(),
        "delivered inside the first one's lease"
    );
    assert_eventually(|| async { pending(&first_db).await == 0 }).await;
    stop.cancel();
    survivor.await.unwrap();
    assert_eq!(
        *delivered.lock(),
        expected,
        "delivered at least once, here once"
    );
}

async fn pending(db: &DatabaseConnection) -> u64 {
    pending_count(db).await.unwrap()
}

#[tokio::test]
async fn stopping_does_not_wait_for_a_delivery_in_progress() {
    let started = Arc::new(Notify::new());
    let addr = serve_notifications(Notifications(Answer::Hang {
        started: Arc::clone(&started),
    }))
    .await;
    let db = database().await;
    enqueue_one(&db).await;
    let dispatcher = Dispatcher::new(
        db.clone(),
        peers(addr),
        OutboxConfig::default(),
        OutboxWaker::default(),
    );
    let stop = CancellationToken::new();
    let running = tokio::spawn(dispatcher.run(stop.clone()));
    started.notified().await;
    stop.cancel();
    // The delivery would hang for its hour-long deadline; the guard turns that into a
    // failure.
    let stopped = tokio::time::timeout(Duration::from_secs(30), running).await;
    assert!(stopped.is_ok(), "the dispatcher waited for its delivery");
    assert_eq!(pending(&db).await, 1, "the abandoned message stays pending");
    let row = Entity::find().one(&db).await.unwrap().unwrap();
    assert!(
        row.next_attempt_time <= chrono::Utc::now(),
        "its claim was given back, so it is due at once: {row:?}"
    );
}

#[tokio::test]
async fn a_rejected_message_is_kept_counted_and_can_be_retried() {
    let addr = serve_notifications(Notifications(Answer::Fail(
        tonic::Status::permission_denied("not you"),
    )))
    .await;
    let db = database().await;
    let id = enqueue_one(&db).await;
    let stop = CancellationToken::new();
    let running = tokio::spawn(
        Dispatcher::new(
            db.clone(),
            peers(addr),
            OutboxConfig::default(),
            OutboxWaker::default(),
        )
        .run(stop.clone()),
    );
    assert_eventually(|| async { failed_count(&db).await.unwrap() == 1 }).await;
    stop.cancel();
    running.await.unwrap();

    let row = Entity::find_by_id(id).one(&db).await.unwrap().unwrap();
    assert!(
        row.last_error
            .as_deref()
            .is_some_and(|e| e.contains("not you")),
        "{row:?}"
    );
    let listed: Vec<_> = failed_messages(&db, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(listed, [id], "`outbox failed` lists it");
    assert_eq!(retry_failed(&db, Some(&[id])).await.unwrap(), 1);
    assert_eq!(failed_count(&db).await.unwrap(), 0);
    assert_eq!(pending(&db).await, 1);
}

#[tokio::test]
async fn delivered_messages_are_pruned_after_the_retention() {
    let db = database().await;
    let (old, recent, waiting) = (
        enqueue_one(&db).await,
        enqueue_one(&db).await,
        enqueue_one(&db).await,
    );
    let now = chrono::Utc::now();
    for (id, delivered) in [
        (old, now - chrono::Duration::hours(2)),
        (recent, now - chrono::Duration::minutes(1)),
    ] {
        Entity::update_many()
            .col_expr(Column::DeliveredTime, Expr::value(Some(delivered)))
            .filter(Column::Id.eq(id))
            .exec(&db)
            .await
            .unwrap();
    }
    assert_eq!(
        prune_delivered(&db, Duration::from_secs(3 * 3600))
            .await
            .unwrap(),
        0
    );

    // The dispatcher prunes with its configured retention (its peer is unreachable: the
    // waiting message stays).
    let stop = CancellationToken::new();
    let config = OutboxConfig {
        retention: Duration::from_millis(3_600_000),
        ..OutboxConfig::default()
    };
    let unreachable = "127.0.0.1:9".parse().unwrap();
    let running = tokio::spawn(
        Dispatcher::new(
            db.clone(),
            peers(unreachable),
            config,
            OutboxWaker::default(),
        )
        .run(stop.clone()),
    );
    assert_eventually(|| async { Entity::find_by_id(old).one(&db).await.unwrap().is_none() }).await;
    stop.cancel();
    running.await.unwrap();
    for kept in [recent, waiting] {
        assert!(Entity::find_by_id(kept).one(&db).await.unwrap().is_some());
    }
}

async fn set_time(
    db: &DatabaseConnection,
    id: uuid::Uuid,
    column: Column,
    time: chrono::DateTime<chrono::Utc>,
) {
    Entity::update_many()
        .col_expr(column, Expr::value(Some(time)))
        .filter(Column::Id.eq(id))
        .exec(db)
        .await
        .unwrap();
}

#[tokio::test]
async fn the_backlog_gauges_read_pending_failed_and_the_oldest_pending_age_at_each_scrape() {
    let db = database().await;
    let metrics = Metrics::new().unwrap();
    trellis_platform::outbox::watch(&metrics, &db).unwrap();
    let scrape = async || {
        // Every refresh now: a scrape reuses the values of the last SCRAPE_REFRESH_INTERVAL.
        metrics
            .refresh(trellis_platform::metrics::SCRAPE_REFRESH_TIMEOUT)
            .await;
        let text = metrics.encode().unwrap();
        let value = |name: &str| sample(&text, name).unwrap_or_else(|| panic!("{name}\n{text}"));
        (
            value("trellis_outbox_pending_messages"),
            value("trellis_outbox_failed_messages"),
            value("trellis_outbox_oldest_pending_age_seconds"),
        )
    };
    assert_eq!(scrape().await, (0.0, 0.0, 0.0));
    assert_eq!(oldest_pending_time(&db).await.unwrap(), None);

    let (old, rejected, recent) = (
        enqueue_one(&db).await,
        enqueue_one(&db).await,
        enqueue_one(&db).await,
    );
    let now = chrono::Utc::now();
    set_time(
        &db,
        old,
        Column::CreateTime,
        now - chrono::Duration::minutes(10),
    )
    .await;
    set_time(
        &db,
        rejected,
        Column::CreateTime,
        now - chrono::Duration::hours(1),
    )
    .await;
    set_time(&db, rejected, Column::FailedTime, now).await;
    let (pending, failed, age) = scrape().await;
    assert_eq!((pending, failed), (2.0, 1.0));
    // The failed message is older, but no longer pending.
    assert!((600.0..660.0).contains(&age), "{age}");

    set_time(&db, old, Column::DeliveredTime, now).await;
    let (pending, _, age) = scrape().await;
    assert_eq!(pending, 1.0);
    assert!(age < 60.0, "{age}");
    set_time(&db, recent, Column::DeliveredTime, now).await;
    assert_eq!(scrape().await, (0.0, 1.0, 0.0));
}

#[test]
fn outbox_retention_loads_and_is_validated() {
    let config = load(&[("TRELLIS_PROBE__OUTBOX__RETENTION_MS", "86400000")]).unwrap();
    assert_eq!(config.outbox.retention, Duration::from_secs(86_400));
    let err = load(&[("TRELLIS_PROBE__OUTBOX__RETENTION_MS", "0")])
        .err()
        .map(|err| err.to_string())
        .unwrap_or_default();
    assert!(err.contains("outbox.retention_ms"), "{err}");
}
