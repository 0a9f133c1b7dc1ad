//! Scopes idempotency keys to their sender: a `sender` column (the calling service's
//! principal subject) and uniqueness on `(sender, idempotency_key)` instead of the key
//! alone, so two services that happen to pick the same key get two notifications.
//!
//! Rows stored before have no known sender and keep `""`: a key from before the upgrade
//! is then not matched again, so a retry still in flight across the upgrade may store a
//! second copy — rather than another service's notification being returned for it.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::string_len;

#[derive(DeriveIden)]
enum Notifications {
    Table,
    Sender,
    IdempotencyKey,
}

/// The index the first migration made on the key alone.
const OLD_UNIQUE: &str = "notifications_idempotency_key_key";
/// Its successor, per sender.
const NEW_UNIQUE: &str = "notifications_sender_idempotency_key_key";

trellis_platform::migration! {
    /// The migration.
    pub(super) struct Migration;

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Notifications::Table)
                    .add_column(string_len(Notifications::Sender, 128).default(""))
                    .to_owned(),
            )
            .await?;
        manager
            .drop_index(
                Index::drop()
                    .name(OLD_UNIQUE)
                    .table(Notifications::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(NEW_UNIQUE)
                    .table(Notifications::Table)
                    .col(Notifications::Sender)
                    .col(Notifications::IdempotencyKey)
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name(NEW_UNIQUE)
                    .table(Notifications::Table)
                    .to_owned(),
            )
            .await?;
        // Fails, as it should, when two senders now share a key.
        manager
            .create_index(
                Index::create()
                    .name(OLD_UNIQUE)
                    .table(Notifications::Table)
                    .col(Notifications::IdempotencyKey)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Notifications::Table)
                    .drop_column(Notifications::Sender)
                    .to_owned(),
            )
            .await
    }
}
