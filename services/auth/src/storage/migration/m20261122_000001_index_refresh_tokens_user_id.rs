//! Indexes `refresh_tokens.user_id`, which `RevokeUserTokens` filters on.

use sea_orm_migration::prelude::*;

#[derive(DeriveIden)]
enum RefreshTokens {
    Table,
    UserId,
}

const INDEX: &str = "refresh_tokens_user_id";

trellis_platform::migration! {
    /// The migration.
    pub(super) struct Migration;

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name(INDEX)
                    .table(RefreshTokens::Table)
                    .col(RefreshTokens::UserId)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(Index::drop().name(INDEX).table(RefreshTokens::Table).to_owned())
            .await
    }
}
