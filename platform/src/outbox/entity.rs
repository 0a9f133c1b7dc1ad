//! The `outbox_messages` table.

use sea_orm::entity::prelude::*;

/// A row of `outbox_messages`: one call to deliver.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "outbox_messages")]
pub struct Model {
    /// The message id (UUIDv7), also the idempotency key the peer sees.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The peer's configured name.
    pub peer: String,
    /// The gRPC method path.
    pub method: String,
    /// The encoded request.
    pub payload: Vec<u8>,
    /// The request id of the request that enqueued it.
    pub request_id: Option<String>,
    /// When it was enqueued.
    pub create_time: DateTimeUtc,
    /// Delivery attempts so far.
    pub attempts: i32,
    /// Not to be tried before this.
    pub next_attempt_time: DateTimeUtc,
    /// When it was delivered; `None` while pending.
    pub delivered_time: Option<DateTimeUtc>,
    /// When the peer rejected it for good.
    pub failed_time: Option<DateTimeUtc>,
    /// The last failure, for operators.
    pub last_error: Option<String>,
    /// The trace context of the span that enqueued it (a JSON object of W3C propagation
    /// fields, see [`crate::telemetry::TraceContext::encode`]); `None` with tracing off.
    pub trace_context: Option<String>,
}

/// `outbox_messages` has no relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
