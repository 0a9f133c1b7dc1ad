//! A transactional outbox of gRPC calls to peers.
//!
//! A service that must tell a peer about a change writes the call — peer name, method
//! path, encoded request — into `outbox_messages` in the same database transaction as the
//! change ([`enqueue`]). After the commit the [`Dispatcher`] delivers it through the
//! platform's peer channels, retrying with exponential backoff while the peer is down, and
//! marks it delivered. Delivery is at least once; the receiving method must be idempotent
//! by the message id, which the caller puts into the request (for example as its
//! `idempotency_key`), so the effect happens exactly once.
//!
//! A message its peer rejects for good (a status that retrying cannot change, e.g.
//! INVALID_ARGUMENT or PERMISSION_DENIED) is marked failed and kept: the dispatcher logs
//! it at ERROR (row id, peer, method, status) and logs the number of failed messages at
//! WARN when it starts and after each new failure. [`failed_count`] reads that number
//! (for a check; [`watch`] exports it and the backlog as metrics), and [`retry_failed`] — or clearing `failed_time` by hand,
//! see `docs/operating/outbox.md` — puts failed messages back in the queue. Delivered messages are
//! deleted after `outbox.retention_ms`; failed ones are never deleted automatically.
//!
//! Traces: [`enqueue`] keeps the W3C trace context of the current span with the row
//! (`trace_context`), and each delivery runs in an `outbox delivery` span that is a
//! *child* of it — not a link — so a sign-in and the notification it causes are one
//! trace: the enqueuing server span → `outbox delivery` → the peer call's client span →
//! the peer's server span. The delivery span starts when the dispatcher picks the row up,
//! after the enqueuing span ended; a retried message gets one delivery span per attempt,
//! all under the same parent.

pub mod entity;
mod events;
mod gauges;
pub mod migration;

pub use events::EventOutbox;
pub use gauges::{oldest_pending_time, watch};

use std::collections::HashMap;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use http::uri::PathAndQuery;
use rand::Rng as _;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait as _, ConnectionTrait, DatabaseConnection, DbErr,
    EntityTrait as _, QueryFilter as _, QueryOrder as _, QuerySelect as _,
};
use serde::Deserialize;
use serde_with::serde_as;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};
use tracing::Instrument as _;
use uuid::Uuid;

use crate::config::{ConfigError, NonZeroMilliSeconds, require_positive};
use crate::context;
use crate::peer::{PeerChannel, PeerError, Peers};
use crate::telemetry::TraceContext;
use entity::{Column, Entity};

/// Settings of the outbox dispatcher.
#[serde_as]
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboxConfig {
    /// `poll_interval_ms`: how often the table is checked when nothing wakes the dispatcher, ms.
    /// Default 1000.
    #[serde(rename = "poll_interval_ms")]
    #[serde_as(as = "NonZeroMilliSeconds")]
    pub poll_interval: Duration,
    /// `initial_backoff_ms`: delay before the first retry, ms; it doubles per attempt. Default 200.
    #[serde(rename = "initial_backoff_ms")]
    #[serde_as(as = "NonZeroMilliSeconds")]
    pub initial_backoff: Duration,
    /// `max_backoff_ms`: longest delay between retries, ms. Default 30000.
    #[serde(rename = "max_backoff_ms")]
    #[serde_as(as = "NonZeroMilliSeconds")]
    pub max_backoff: Duration,
    /// Most messages read per pass. Default 100.
    pub batch_size: u64,
    /// `retention_ms`: how long delivered messages are kept before they are deleted, ms. Default
    /// 604800000 (7 days). Failed messages are kept until retried or deleted by hand.
    #[serde(rename = "retention_ms")]
    #[serde_as(as = "NonZeroMilliSeconds")]
    pub retention: Duration,
    /// `claim_lease_ms`: how long a dispatcher owns a message it picked up, ms. Every
    /// replica of a service runs a dispatcher over the same table; one claims a due
    /// message (an atomic update that moves its `next_attempt_time` this far ahead, and
    /// succeeds for one of them only) before delivering it, so the others skip it. A
    /// dispatcher killed mid-delivery leaves the message to be claimed again once the
    /// lease is over (delivery stays at least once). Longer than a delivery can take
    /// (the peer's `timeout_ms`); default 30000.
    #[serde(rename = "claim_lease_ms")]
    #[serde_as(as = "NonZeroMilliSeconds")]
    pub claim_lease: Duration,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(1),
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            batch_size: 100,
            retention: Duration::from_secs(7 * 24 * 3600),
            claim_lease: Duration::from_secs(30),
        }
    }
}

impl OutboxConfig {
    /// Checks the values.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming `outbox.batch_size` when it is 0 (a duration of 0
    /// fails loading already).
    pub fn validate(&self) -> Result<(), ConfigError> {
        require_positive("outbox.batch_size", self.batch_size)
    }

    /// The delay before retry number `attempt` (1-based), with ±20 % jitter.
    fn backoff(&self, attempt: i32) -> Duration {
        let exponent = u32::try_from(attempt.saturating_sub(1))
            .unwrap_or(0)
            .min(20);
        let base = self
            .initial_backoff
            .saturating_mul(1 << exponent)
            .min(self.max_backoff);
        base.mul_f64(rand::rng().random_range(0.8..1.2))
    }
}

/// One call to make: `method` on `peer` with the encoded `payload`.
#[derive(Debug, Clone)]
pub struct OutboxEntry {
    /// The message id; put it into the request so the peer can deduplicate.
    pub id: Uuid,
    /// The peer's name, as in the service's `peers` config.
    pub peer: String,
    /// The full method path, e.g. `/trellis.notification.v1.NotificationInternalService/SendNotification`.
    pub method: String,
    /// The protobuf-encoded request.
    pub payload: Vec<u8>,
}

impl OutboxEntry {
    /// An entry calling `method` on `peer` with `request`.
    pub fn new<M: prost::Message>(id: Uuid, peer: &str, method: &str, request: &M) -> Self {
        Self {
            id,
            peer: peer.to_owned(),
            method: method.to_owned(),
            payload: request.encode_to_vec(),
        }
    }
}

/// Writes `entry` through `conn` — pass the transaction that makes the change it reports.
/// The current request id, if any, is stored and forwarded on delivery.
///
/// # Errors
/// The database error.
pub async fn enqueue<C: ConnectionTrait>(conn: &C, entry: OutboxEntry) -> Result<(), DbErr> {
    let now = Utc::now();
    let model = entity::ActiveModel {
        id: Set(entry.id),
        peer: Set(entry.peer),
        method: Set(entry.method),
        payload: Set(entry.payload),
        request_id: Set(context::current_request_id()),
        trace_context: Set(TraceContext::current().encode()),
        create_time: Set(now),
        attempts: Set(0),
        next_attempt_time: Set(now),
        delivered_time: Set(None),
        failed_time: Set(None),
        last_error: Set(None),
    };
    Entity::insert(model).exec_without_returning(conn).await?;
    Ok(())
}

/// How many messages are still to deliver (neither delivered nor failed), due or not.
///
/// # Errors
/// The database error.
pub async fn pending_count<C: ConnectionTrait>(conn: &C) -> Result<u64, DbErr> {
    use sea_orm::PaginatorTrait as _;
    Entity::find()
        .filter(Column::DeliveredTime.is_null())
        .filter(Column::FailedTime.is_null())
        .count(conn)
        .await
}

/// How many messages their peers rejected for good (`failed_time` set).
///
/// # Errors
/// The database error.
pub async fn failed_count<C: ConnectionTrait>(conn: &C) -> Result<u64, DbErr> {
    use sea_orm::PaginatorTrait as _;
    Entity::find()
        .filter(Column::FailedTime.is_not_null())
        .count(conn)
        .await
}

/// The messages their peers rejected for good, oldest first, at most `limit`.
///
/// # Errors
/// The database error.
pub async fn failed_messages<C: ConnectionTrait>(
    conn: &C,
    limit: u64,
) -> Result<Vec<entity::Model>, DbErr> {
    Entity::find()
        .filter(Column::FailedTime.is_not_null())
        .order_by_asc(Column::FailedTime)
        .limit(limit)
        .all(conn)
        .await
}

/// Puts failed messages back in the queue, due now with their attempts reset: the ones
/// in `ids`, or every failed message when `ids` is `None`. Returns how many. Retry only
/// after fixing what the peer rejected (its `last_error` says what), or it fails again.
///
/// # Errors
/// The database error.
pub async fn retry_failed<C: ConnectionTrait>(
    conn: &C,
    ids: Option<&[Uuid]>,
) -> Result<u64, DbErr> {
    let mut update = Entity::update_many()
        .col_expr(
            Column::FailedTime,
            Expr::value(Option::<chrono::DateTime<Utc>>::None),
        )
        .col_expr(Column::Attempts, Expr::value(0))
        .col_expr(Column::NextAttemptTime, Expr::value(Utc::now()))
        .filter(Column::FailedTime.is_not_null());
    if let Some(ids) = ids {
        update = update.filter(Column::Id.is_in(ids.iter().copied()));
    }
    Ok(update.exec(conn).await?.rows_affected)
}

/// Deletes delivered messages older than `retention`; returns how many.
///
/// # Errors
/// The database error.
pub async fn prune_delivered<C: ConnectionTrait>(
    conn: &C,
    retention: Duration,
) -> Result<u64, DbErr> {
    let cutoff =
        Utc::now() - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    let deleted = Entity::delete_many()
        .filter(Column::DeliveredTime.lt(cutoff))
        .exec(conn)
        .await?;
    Ok(deleted.rows_affected)
}

/// Wakes the dispatcher when a transaction that enqueued messages has committed.
#[derive(Debug, Clone, Default)]
pub struct OutboxWaker(Arc<Notify>);

impl OutboxWaker {
    /// Asks the dispatcher to look for new messages now.
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

/// Delivers outbox messages until stopped.
#[derive(Debug)]
pub struct Dispatcher {
    db: DatabaseConnection,
    peers: Peers,
    /// One channel per peer, made on first use: a channel is a connection, and making
    /// one per message would reconnect for every delivery.
    channels: parking_lot::Mutex<HashMap<String, PeerChannel>>,
    config: OutboxConfig,
    waker: OutboxWaker,
    /// The claimed message being delivered, if any: given back when stopping abandons it.
    in_flight: parking_lot::Mutex<Option<Uuid>>,
}

enum Outcome {
    Delivered,
    Retry(String),
    Failed(String),
}

impl Dispatcher {
    /// A dispatcher over `db` (migrated with [`migration::CreateOutbox`]) calling `peers`,
    /// woken early by `waker`.
    pub fn new(
        db: DatabaseConnection,
        peers: Peers,
        config: OutboxConfig,
        waker: OutboxWaker,
    ) -> Self {
        Self {
            db,
            peers,
            channels: parking_lot::Mutex::default(),
            config,
            waker,
            in_flight: parking_lot::Mutex::default(),
        }
    }

    /// Runs until `stop` is cancelled. Stopping does not wait for a pass in progress:
    /// the delivery under way is abandoned (its message stays pending and is delivered
    /// again after a restart — delivery is at least once) and no further one starts, so
    /// shutdown keeps its drain bound.
    pub async fn run(self, stop: CancellationToken) {
        let poll = self.config.poll_interval;
        self.report_failed().await;
        // Prune at start, then about as often as the retention (at most hourly).
        let prune_every = self.config.retention.min(Duration::from_secs(3600));
        let mut next_prune = tokio::time::Instant::now();
        loop {
            if tokio::time::Instant::now() >= next_prune {
                next_prune = tokio::time::Instant::now() + prune_every;
                match prune_delivered(&self.db, self.config.retention).await {
                    Ok(0) => {}
                    Ok(deleted) => tracing::info!(deleted, "pruned delivered outbox messages"),
                    Err(err) => tracing::warn!(error = %err, "cannot prune the outbox"),
                }
            }
            let pass = tokio::select! {
                () = stop.cancelled() => {
                    self.release_in_flight().await;
                    return;
                }
                pass = self.pass(&stop) => pass,
            };
            let full_batch = match pass {
                Ok(count) => count as u64 >= self.config.batch_size,
                Err(err) => {
                    tracing::warn!(error = %err, "outbox pass failed");
                    false
                }
            };
            if full_batch {
                continue;
            }
            tokio::select! {
                () = stop.cancelled() => {
                    self.release_in_flight().await;
                    return;
                }
                () = self.waker.0.notified() => {}
                () = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// Logs the number of failed messages at WARN when there are any.
    async fn report_failed(&self) {
        match failed_count(&self.db).await {
            Ok(0) => {}
            Ok(failed) => tracing::warn!(
                failed,
                "outbox holds messages their peers rejected for good; \
                 see last_error, fix the cause, then retry them (docs/operating/outbox.md)"
            ),
            Err(err) => tracing::warn!(error = %err, "cannot count failed outbox messages"),
        }
    }

    /// Delivers every due message once, until `stop`; returns how many were due.
    async fn pass(&self, stop: &CancellationToken) -> Result<usize, DbErr> {
        let due = Entity::find()
            .filter(Column::DeliveredTime.is_null())
            .filter(Column::FailedTime.is_null())
            .filter(Column::NextAttemptTime.lte(Utc::now()))
            .order_by_asc(Column::CreateTime)
            .order_by_asc(Column::Id)
            .limit(self.config.batch_size)
            .all(&self.db)
            .await?;
        let count = due.len();
        let mut any_failed = false;
        for message in due {
            let id = message.id;
            if !self.claim(id).await? {
                // Another replica's dispatcher took it since it was read.
                continue;
            }
            let attempts = message.attempts + 1;
            let (peer, method) = (message.peer.clone(), message.method.clone());
            // An abandoned delivery leaves its row as it was: due again next time.
            *self.in_flight.lock() = Some(id);
            let outcome = tokio::select! {
                // `run` gives the claim back.
                () = stop.cancelled() => return Ok(count),
                outcome = self.deliver(message) => outcome,
            };
            let update = Entity::update_many()
                .col_expr(Column::Attempts, Expr::value(attempts))
                .filter(Column::Id.eq(id));
            any_failed |= matches!(outcome, Outcome::Failed(_));
            let update = match outcome {
                Outcome::Delivered => {
                    tracing::debug!(outbox_id = %id, attempts, "outbox message delivered");
                    update.col_expr(Column::DeliveredTime, Expr::value(Some(Utc::now())))
                }
                Outcome::Retry(error) => {
                    let delay = self.config.backoff(attempts);
                    tracing::info!(outbox_id = %id, attempts, retry_in_ms = delay.as_millis() as u64, %error, "outbox delivery will be retried");
                    let next = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
                    update
                        .col_expr(Column::NextAttemptTime, Expr::value(next))
                        .col_expr(Column::LastError, Expr::value(Some(error)))
                }
                Outcome::Failed(error) => {
                    tracing::error!(outbox_id = %id, %peer, %method, attempts, status = %error, "outbox message rejected by its peer for good; kept as failed");
                    update
                        .col_expr(Column::FailedTime, Expr::value(Some(Utc::now())))
                        .col_expr(Column::LastError, Expr::value(Some(error)))
                }
            };
            update.exec(&self.db).await?;
            *self.in_flight.lock() = None;
        }
        if any_failed {
            self.report_failed().await;
        }
        Ok(count)
    }

    /// Claims message `id` for [`OutboxConfig::claim_lease`]: moves its next attempt past
    /// the lease if it is still due and undelivered. The update is atomic on both
    /// databases (a row lock on PostgreSQL, the single writer on SQLite), so of several
    /// dispatchers racing for a message exactly one sees `true`.
    async fn claim(&self, id: Uuid) -> Result<bool, DbErr> {
        let now = Utc::now();
        let lease_end = now
            + chrono::Duration::from_std(self.config.claim_lease).unwrap_or(chrono::Duration::MAX);
        let claimed = Entity::update_many()
            .col_expr(Column::NextAttemptTime, Expr::value(lease_end))
            .filter(Column::Id.eq(id))
            .filter(Column::DeliveredTime.is_null())
            .filter(Column::FailedTime.is_null())
            .filter(Column::NextAttemptTime.lte(now))
            .exec(&self.db)
            .await?;
        Ok(claimed.rows_affected == 1)
    }

    /// Makes the claimed message whose delivery was abandoned due again now, so the next
    /// start (or another replica) need not wait out the lease.
    async fn release_in_flight(&self) {
        let Some(id) = self.in_flight.lock().take() else {
            return;
        };
        if let Err(err) = self.release(id).await {
            tracing::warn!(outbox_id = %id, error = %err, "cannot give back an abandoned outbox message; it is due again after its lease");
        }
    }

    /// Makes claimed message `id` due again now.
    async fn release(&self, id: Uuid) -> Result<(), DbErr> {
        Entity::update_many()
            .col_expr(Column::NextAttemptTime, Expr::value(Utc::now()))
            .filter(Column::Id.eq(id))
            .filter(Column::DeliveredTime.is_null())
            .filter(Column::FailedTime.is_null())
            .exec(&self.db)
            .await
            .map(drop)
    }

    fn channel(&self, peer: &str) -> Result<PeerChannel, PeerError> {
        let mut channels = self.channels.lock();
        if let Some(channel) = channels.get(peer) {
            return Ok(channel.clone());
        }
        let channel = self.peers.channel(peer)?;
        channels.insert(peer.to_owned(), channel.clone());
        Ok(channel)
    }

    async fn deliver(&self, message: entity::Model) -> Outcome {
        let channel = match self.channel(&message.peer) {
            Ok(channel) => channel,
            Err(err) => return Outcome::Retry(err.to_string()),
        };
        let Ok(path) = PathAndQuery::from_str(&message.method) else {
            return Outcome::Failed(format!("invalid method path {:?}", message.method));
        };
        let request_id = message
            .request_id
            .clone()
            .unwrap_or_else(|| Uuid::new_v4().to_string());
        let span = delivery_span(&message);
        let call = async move {
            let mut grpc = tonic::client::Grpc::new(channel);
            grpc.ready()
                .await
                .map_err(|err| Status::unavailable(err.to_string()))?;
            grpc.unary(tonic::Request::new(message.payload), path, RawCodec)
                .await
        };
        match context::scope(request_id, call).instrument(span).await {
            Ok(_) => Outcome::Delivered,
            // Someone delivered it before us: the effect exists.
            Err(status) if status.code() == Code::AlreadyExists => Outcome::Delivered,
            Err(status) if is_retryable(status.code()) => {
                Outcome::Retry(format!("{:?}: {}", status.code(), status.message()))
            }
            Err(status) => Outcome::Failed(format!("{:?}: {}", status.code(), status.message())),
        }
    }
}

/// The span one delivery attempt of `message` runs in: a child of the trace context
/// stored with the message, so the delivery continues the trace that enqueued it.
fn delivery_span(message: &entity::Model) -> tracing::Span {
    let span = tracing::info_span!(
        "outbox delivery",
        outbox_id = %message.id,
        peer = %message.peer,
        attempt = message.attempts + 1,
    );
    if let Some(stored) = &message.trace_context {
        TraceContext::decode(stored).set_parent_of(&span);
    }
    span
}

/// Codes that may succeed later (the gRPC spec's transient failures, plus
/// UNAUTHENTICATED while credentials are not yet available).
fn is_retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Internal
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::Cancelled
            | Code::Unauthenticated
    )
}

/// A codec that sends already-encoded bytes and ignores the response message.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = ();
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = ();
    type Error = Status;

    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<()>, Status> {
        let remaining = bytes::Buf::remaining(src);
        bytes::Buf::advance(src, remaining);
        Ok(Some(()))
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
    use sea_orm_migration::{MigrationTrait, MigratorTrait};
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    struct Migrator;

    impl MigratorTrait for Migrator {
        fn migrations() -> Vec<Box<dyn MigrationTrait>> {
            vec![
                Box::new(migration::CreateOutbox),
                Box::new(migration::AddOutboxTraceContext),
            ]
        }
    }

    fn trace_id(span: &tracing::Span) -> String {
        span.context().span().span_context().trace_id().to_string()
    }

    /// Enqueued inside a span, read back as the dispatcher reads it: the delivery span is
    /// in the enqueuing span's trace. On this thread only (a current-thread runtime under
    /// a thread-local subscriber with an OpenTelemetry layer).
    #[test]
    fn a_delivery_continues_the_trace_that_enqueued_the_message() -> Result<(), DbErr> {
        crate::telemetry::propagation::enable_for_tests();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|err| DbErr::Custom(err.to_string()))?;
        tracing::subscriber::with_default(subscriber, || {
            runtime.block_on(async {
                // One connection: each in-memory SQLite connection is its own database.
                let mut options = sea_orm::ConnectOptions::new("sqlite::memory:");
                options.max_connections(1).min_connections(1);
                let db = sea_orm::Database::connect(options).await?;
                Migrator::up(&db, None).await?;
                let origin = tracing::info_span!("login");
                let entry = OutboxEntry {
                    id: Uuid::now_v7(),
                    peer: "notification".to_owned(),
                    method: "/p.S/M".to_owned(),
                    payload: Vec::new(),
                };
                enqueue(&db, entry).instrument(origin.clone()).await?;
                let row = Entity::find()
                    .one(&db)
                    .await?
                    .ok_or_else(|| DbErr::Custom("no row".to_owned()))?;
                let stored = row.trace_context.clone().unwrap_or_default();
                assert!(stored.contains(&trace_id(&origin)), "{stored}");
                let delivery = delivery_span(&row);
                assert_eq!(trace_id(&delivery), trace_id(&origin));

                // A row without a context (written before, or with tracing off) starts a
                // trace of its own.
                let bare = entity::Model {
                    trace_context: None,
                    ..row
                };
                assert_ne!(trace_id(&delivery_span(&bare)), trace_id(&origin));
                Ok(())
            })
        })
    }
}
