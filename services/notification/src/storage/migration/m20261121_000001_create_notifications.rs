//! Creates `notifications`. sea-orm names a migration after its file, so each lives in a
//! file named `mYYYYMMDD_NNNNNN_what.rs`.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{
    string, string_len, text, timestamp_with_time_zone, timestamp_with_time_zone_null, uuid,
};

#[derive(DeriveIden)]
enum Notifications {
    Table,
    Id,
    UserId,
    Kind,
    Title,
    Body,
    IdempotencyKey,
    CreateTime,
    ReadTime,
    AckTime,
}

trellis_platform::migration! {
    /// The migration.
    pub(super) struct Migration;

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Notifications::Table)
                    .if_not_exists()
                    .col(uuid(Notifications::Id).primary_key())
                    .col(string_len(Notifications::UserId, 64))
                    .col(string_len(Notifications::Kind, 64))
                    .col(string(Notifications::Title))
                    .col(text(Notifications::Body))
                    .col(string_len(Notifications::IdempotencyKey, 128))
                    .col(timestamp_with_time_zone(Notifications::CreateTime))
                    .col(timestamp_with_time_zone_null(Notifications::ReadTime))
                    .col(timestamp_with_time_zone_null(Notifications::AckTime))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("notifications_idempotency_key_key")
                    .table(Notifications::Table)
                    .col(Notifications::IdempotencyKey)
                    .unique()
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("notifications_user_id_id")
                    .table(Notifications::Table)
                    .col(Notifications::UserId)
                    .col(Notifications::Id)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Notifications::Table).to_owned())
            .await
    }
}
