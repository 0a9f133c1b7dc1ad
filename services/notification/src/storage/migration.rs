//! Schema migrations of the notification service, applied at start-up.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{
    string, string_len, text, timestamp_with_time_zone, timestamp_with_time_zone_null, uuid,
};

/// Every migration, in order.
#[derive(Debug)]
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(CreateNotifications)]
    }
}

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

/// Creates `notifications`.
#[derive(Debug)]
struct CreateNotifications;

// Named explicitly: derived names come from the file name, and every migration file
// here is called migration.rs.
impl MigrationName for CreateNotifications {
    fn name(&self) -> &str {
        "m20261121_000001_create_notifications"
    }
}

// The trait is declared with an elided lifetime under async_trait; naming it breaks the match.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for CreateNotifications {
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
