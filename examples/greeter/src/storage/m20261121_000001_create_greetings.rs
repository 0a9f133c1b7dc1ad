//! Creates `greetings`. sea-orm names a migration after its file, so each lives in a
//! file named `mYYYYMMDD_NNNNNN_what.rs`.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{string, string_len, timestamp_with_time_zone, uuid};

#[derive(DeriveIden)]
enum Greetings {
    Table,
    Id,
    Name,
    Message,
    CreateTime,
}

trellis_platform::migration! {
    /// The migration.
    pub(super) struct Migration;

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Greetings::Table)
                    .if_not_exists()
                    .col(uuid(Greetings::Id).primary_key())
                    .col(string_len(Greetings::Name, 100))
                    .col(string(Greetings::Message))
                    .col(timestamp_with_time_zone(Greetings::CreateTime))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Greetings::Table).to_owned())
            .await
    }
}
