//! Creates `outbox_messages` and the index the dispatcher scans. sea-orm names a
//! migration after its file, so each lives in a file named `mYYYYMMDD_NNNNNN_what.rs`.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{
    binary, integer, string, string_null, text_null, timestamp_with_time_zone,
    timestamp_with_time_zone_null, uuid,
};

#[derive(DeriveIden)]
enum OutboxMessages {
    Table,
    Id,
    Peer,
    Method,
    Payload,
    RequestId,
    CreateTime,
    Attempts,
    NextAttemptTime,
    DeliveredTime,
    FailedTime,
    LastError,
}

crate::migration! {
    /// Creates `outbox_messages` and the index the dispatcher scans.
    pub struct CreateOutbox;

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(OutboxMessages::Table)
                    .if_not_exists()
                    .col(uuid(OutboxMessages::Id).primary_key())
                    .col(string(OutboxMessages::Peer))
                    .col(string(OutboxMessages::Method))
                    .col(binary(OutboxMessages::Payload))
                    .col(string_null(OutboxMessages::RequestId))
                    .col(timestamp_with_time_zone(OutboxMessages::CreateTime))
                    .col(integer(OutboxMessages::Attempts))
                    .col(timestamp_with_time_zone(OutboxMessages::NextAttemptTime))
                    .col(timestamp_with_time_zone_null(OutboxMessages::DeliveredTime))
                    .col(timestamp_with_time_zone_null(OutboxMessages::FailedTime))
                    .col(text_null(OutboxMessages::LastError))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("outbox_messages_pending")
                    .table(OutboxMessages::Table)
                    .col(OutboxMessages::DeliveredTime)
                    .col(OutboxMessages::NextAttemptTime)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(OutboxMessages::Table).to_owned())
            .await
    }
}
