//! Orders notifications by commit: a one-row counter, `notification_sequence`, that every
//! inserting transaction increments (`UPDATE … SET value = value + 1 RETURNING value`),
//! and a `sequence` column (unique) that stores the value. The counter's row lock is held
//! until the transaction ends, so committers take turns and sequence order is commit
//! order — unlike the UUIDv7 id, made before the transaction began. Replays and resumes
//! read by sequence (index on `user_id, sequence`).
//!
//! Rows stored before are numbered in id order, the order they were served in, and the
//! counter starts after the last of them.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{big_integer, integer};

#[derive(DeriveIden)]
enum Notifications {
    Table,
    UserId,
    Sequence,
}

#[derive(DeriveIden)]
enum NotificationSequence {
    Table,
    Id,
    Value,
}

const UNIQUE: &str = "notifications_sequence_key";
const BY_USER: &str = "notifications_user_id_sequence";

trellis_platform::migration! {
    /// The migration.
    pub(super) struct Migration;

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(NotificationSequence::Table)
                    .col(integer(NotificationSequence::Id).primary_key())
                    .col(big_integer(NotificationSequence::Value))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Notifications::Table)
                    .add_column(big_integer(Notifications::Sequence).default(0))
                    .to_owned(),
            )
            .await?;
        // `UPDATE … FROM` and window functions: PostgreSQL, and SQLite since 3.33.
        let db = manager.get_connection();
        db.execute_unprepared(
            r#"UPDATE notifications SET "sequence" = numbered.position
               FROM (SELECT id, ROW_NUMBER() OVER (ORDER BY id) AS position FROM notifications)
                 AS numbered
               WHERE notifications.id = numbered.id"#,
        )
        .await?;
        db.execute_unprepared(
            r#"INSERT INTO notification_sequence (id, value)
               SELECT 1, COALESCE(MAX("sequence"), 0) FROM notifications"#,
        )
        .await?;
        manager
            .create_index(
                Index::create()
                    .name(UNIQUE)
                    .table(Notifications::Table)
                    .col(Notifications::Sequence)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(BY_USER)
                    .table(Notifications::Table)
                    .col(Notifications::UserId)
                    .col(Notifications::Sequence)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for index in [BY_USER, UNIQUE] {
            manager
                .drop_index(
                    Index::drop()
                        .name(index)
                        .table(Notifications::Table)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .alter_table(
                Table::alter()
                    .table(Notifications::Table)
                    .drop_column(Notifications::Sequence)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(
                Table::drop()
                    .table(NotificationSequence::Table)
                    .to_owned(),
            )
            .await
    }
}
