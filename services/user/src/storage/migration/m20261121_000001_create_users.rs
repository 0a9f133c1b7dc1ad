//! Creates `users` with a unique index on `email`. sea-orm names a migration after its file, so each lives in a
//! file named `mYYYYMMDD_NNNNNN_what.rs`.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{string, string_len, text, timestamp_with_time_zone, uuid};

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

trellis_platform::migration! {
    /// The migration.
    pub(super) struct Migration;

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
