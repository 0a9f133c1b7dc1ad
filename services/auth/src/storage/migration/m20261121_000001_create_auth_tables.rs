//! Creates `signing_keys` and `refresh_tokens`. sea-orm names a migration after its file, so each lives in a
//! file named `mYYYYMMDD_NNNNNN_what.rs`.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{
    binary, string, string_len, timestamp_with_time_zone, timestamp_with_time_zone_null, uuid,
};

#[derive(DeriveIden)]
enum SigningKeys {
    Table,
    Kid,
    PrivateKey,
    PublicKey,
    CreateTime,
    ActivateTime,
}

#[derive(DeriveIden)]
enum RefreshTokens {
    Table,
    Id,
    FamilyId,
    UserId,
    Roles,
    TokenHash,
    CreateTime,
    ExpireTime,
    UsedTime,
    RevokedTime,
}

trellis_platform::migration! {
    /// The migration.
    pub(super) struct Migration;

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(SigningKeys::Table)
                    .if_not_exists()
                    .col(string_len(SigningKeys::Kid, 64).primary_key())
                    .col(binary(SigningKeys::PrivateKey))
                    .col(binary(SigningKeys::PublicKey))
                    .col(timestamp_with_time_zone(SigningKeys::CreateTime))
                    .col(timestamp_with_time_zone(SigningKeys::ActivateTime))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(RefreshTokens::Table)
                    .if_not_exists()
                    .col(uuid(RefreshTokens::Id).primary_key())
                    .col(uuid(RefreshTokens::FamilyId))
                    .col(string(RefreshTokens::UserId))
                    .col(string(RefreshTokens::Roles))
                    .col(string_len(RefreshTokens::TokenHash, 64))
                    .col(timestamp_with_time_zone(RefreshTokens::CreateTime))
                    .col(timestamp_with_time_zone(RefreshTokens::ExpireTime))
                    .col(timestamp_with_time_zone_null(RefreshTokens::UsedTime))
                    .col(timestamp_with_time_zone_null(RefreshTokens::RevokedTime))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("refresh_tokens_token_hash_key")
                    .table(RefreshTokens::Table)
                    .col(RefreshTokens::TokenHash)
                    .unique()
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("refresh_tokens_family_id")
                    .table(RefreshTokens::Table)
                    .col(RefreshTokens::FamilyId)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(RefreshTokens::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(SigningKeys::Table).to_owned())
            .await
    }
}
