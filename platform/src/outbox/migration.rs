//! The migration that creates `outbox_messages`; add it to a service's migrator.

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

/// Creates `outbox_messages` and the index the dispatcher scans.
#[derive(Debug)]
pub struct CreateOutbox;

// Named explicitly: derived names come from the file name, and every migration file
// here is called migration.rs.
impl MigrationName for CreateOutbox {
    fn name(&self) -> &str {
        "m20261121_000100_create_outbox_messages"
    }
}

// The trait is declared with an elided lifetime under async_trait; naming it breaks the match.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for CreateOutbox {
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
