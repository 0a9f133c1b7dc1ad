//! The `user_roles` table: one row per role a user holds.

use sea_orm::entity::prelude::*;

/// A row of `user_roles`; the primary key `(user_id, role)` makes a grant idempotent.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "user_roles")]
pub struct Model {
    /// The user's id (`users.id`; deleting the user deletes their roles).
    #[sea_orm(primary_key, auto_increment = false)]
    pub user_id: Uuid,
    /// The role's name (`domain::Role::as_str`), e.g. `"admin"`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub role: String,
}

/// A role belongs to its user (the schema's foreign key, `ON DELETE CASCADE`; the
/// migrations, not this declaration, make the schema).
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// The user holding the role.
    #[sea_orm(
        belongs_to = "super::entity::Entity",
        from = "Column::UserId",
        to = "super::entity::Column::Id"
    )]
    User,
}

impl Related<super::entity::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::User.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
