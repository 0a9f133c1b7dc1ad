//! The `users` table.

use sea_orm::entity::prelude::*;

/// A row of `users`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "users")]
pub struct Model {
    /// UUIDv7, so id order is creation order.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// Email as entered (trimmed).
    pub email: String,
    /// `email` lower-cased whole (`domain::validation::canonical_email`); unique index
    /// `users_email_canonical_key`, so addresses are unique regardless of case.
    #[sea_orm(unique)]
    pub email_canonical: String,
    /// Display name.
    pub display_name: String,
    /// argon2id PHC string.
    pub password_hash: String,
    /// Creation instant (UTC, microseconds).
    pub create_time: DateTimeUtc,
    /// Last change instant (UTC, microseconds).
    pub update_time: DateTimeUtc,
}

/// A user has many `user_roles` (the schema's foreign key; deleting the user deletes
/// them). Navigated to read a user and their roles in one query (a `LEFT JOIN`).
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// The user's roles.
    #[sea_orm(has_many = "super::user_role::Entity")]
    Roles,
}

impl Related<super::user_role::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Roles.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
