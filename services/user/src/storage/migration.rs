//! Schema migrations of the user service, applied at start-up.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{string, string_len, text, timestamp_with_time_zone, uuid};
use trellis_platform::outbox::migration::CreateOutbox;

/// Every migration, in order.
#[derive(Debug)]
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(CreateUsers), Box::new(CreateOutbox)]
    }
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    Email,
    DisplayName,
    PasswordHash,
    CreateTime,
    UpdateTime,
}

/// Creates `users` with a unique index on `email`.
#[derive(Debug)]
struct CreateUsers;

// Named explicitly: derived names come from the file name, and every migration file
// here is called migration.rs.
impl MigrationName for CreateUsers {
    fn name(&self) -> &str {
        "m20261121_000001_create_users"
    }
}

// The trait is declared with an elided lifetime under async_trait; naming it breaks the match.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for CreateUsers {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Users::Table)
                    .if_not_exists()
                    .col(uuid(Users::Id).primary_key())
                    .col(string_len(Users::Email, 254))
                    .col(string(Users::DisplayName))
                    .col(text(Users::PasswordHash))
                    .col(timestamp_with_time_zone(Users::CreateTime))
                    .col(timestamp_with_time_zone(Users::UpdateTime))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("users_email_key")
                    .table(Users::Table)
                    .col(Users::Email)
                    .unique()
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Users::Table).to_owned())
            .await
    }
}
