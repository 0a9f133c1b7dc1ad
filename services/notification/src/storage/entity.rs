//! The `notifications` table.

use sea_orm::entity::prelude::*;

/// A row of `notifications`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "notifications")]
pub struct Model {
    /// UUIDv7.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// Recipient.
    pub user_id: String,
    /// Kind.
    pub kind: String,
    /// Title.
    pub title: String,
    /// Body.
    pub body: String,
    /// The sending service's principal subject (`service:<name>`); `""` for rows stored
    /// before keys were scoped to their sender.
    pub sender: String,
    /// The sender's deduplication key; unique per sender.
    pub idempotency_key: String,
    /// Position in commit order (see [`crate::domain::Notification::sequence`]); unique.
    pub sequence: i64,
    /// Storage instant.
    pub create_time: DateTimeUtc,
    /// When the user marked it read.
    pub read_time: Option<DateTimeUtc>,
    /// When a Connect stream's client acknowledged it.
    pub ack_time: Option<DateTimeUtc>,
}

/// No relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
