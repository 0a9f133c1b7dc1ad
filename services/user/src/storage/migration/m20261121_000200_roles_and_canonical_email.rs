//! Roles stored with the user, and email addresses unique regardless of case.
//!
//! - `user_roles (user_id, role)`: one row per role a user holds, primary key on both
//!   columns (a grant is idempotent), `user_id` a foreign key to `users.id` with
//!   `ON DELETE CASCADE`. A table rather than a column on `users`: a grant or revoke is
//!   one insert or delete, with no read-modify-write race between two admins.
//! - `users.email_canonical`: the whole address lower-cased
//!   ([`canonical_email`]), backfilled here from `email` in Rust (not SQL `LOWER`, which
//!   differs between SQLite and PostgreSQL outside ASCII), with the unique index
//!   `users_email_canonical_key` in place of `users_email_key`. `email` keeps the address
//!   as entered.
//!
//! Existing rows whose addresses differ only by case cannot both keep their address: the
//! migration then fails, naming them, and the service does not start until an operator
//! deletes or renames one of each pair (no account is merged or disabled silently).
//!
//! Only the schema builder and sea-query statements are used, so the same migration runs
//! on SQLite and PostgreSQL.

use std::collections::BTreeMap;

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{string_len, uuid};
use uuid::Uuid;

use crate::domain::validation::canonical_email;

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    Email,
    EmailCanonical,
}

#[derive(DeriveIden)]
enum UserRoles {
    Table,
    UserId,
    Role,
}

const OLD_EMAIL_INDEX: &str = "users_email_key";
const CANONICAL_EMAIL_INDEX: &str = "users_email_canonical_key";

trellis_platform::migration! {
    /// The migration.
    pub(super) struct Migration;

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(UserRoles::Table)
                    .if_not_exists()
                    .col(uuid(UserRoles::UserId))
                    .col(string_len(UserRoles::Role, 32))
                    .primary_key(Index::create().col(UserRoles::UserId).col(UserRoles::Role))
                    .foreign_key(
                        ForeignKey::create()
                            .name("user_roles_user_id_fkey")
                            .from(UserRoles::Table, UserRoles::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        // NOT NULL needs a default for the rows already there; the backfill below
        // replaces it in every row before the unique index is made.
        manager
            .alter_table(
                Table::alter()
                    .table(Users::Table)
                    .add_column(
                        ColumnDef::new(Users::EmailCanonical)
                            .text()
                            .not_null()
                            .default(""),
                    )
                    .to_owned(),
            )
            .await?;
        backfill_canonical_emails(manager).await?;
        manager.drop_index(drop_index(OLD_EMAIL_INDEX)).await?;
        manager
            .create_index(unique_index(CANONICAL_EMAIL_INDEX, Users::EmailCanonical))
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_index(drop_index(CANONICAL_EMAIL_INDEX)).await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Users::Table)
                    .drop_column(Users::EmailCanonical)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(unique_index(OLD_EMAIL_INDEX, Users::Email))
            .await?;
        manager
            .drop_table(Table::drop().table(UserRoles::Table).to_owned())
            .await
    }
}

/// A unique index of `users` on `column`.
fn unique_index(name: &str, column: Users) -> IndexCreateStatement {
    Index::create()
        .name(name)
        .table(Users::Table)
        .col(column)
        .unique()
        .to_owned()
}

fn drop_index(name: &str) -> IndexDropStatement {
    Index::drop().name(name).table(Users::Table).to_owned()
}

/// Sets `email_canonical` of every row, or fails naming the addresses that differ only
/// by case.
async fn backfill_canonical_emails(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    let db = manager.get_connection();
    let select = Query::select()
        .columns([Users::Id, Users::Email])
        .from(Users::Table)
        .to_owned();
    let rows = db.query_all(&select).await?;
    let mut by_canonical: BTreeMap<String, Vec<(Uuid, String)>> = BTreeMap::new();
    for row in rows {
        let id: Uuid = row.try_get("", "id")?;
        let email: String = row.try_get("", "email")?;
        by_canonical
            .entry(canonical_email(&email))
            .or_default()
            .push((id, email));
    }
    let clashes: Vec<String> = by_canonical
        .values()
        .filter(|accounts| accounts.len() > 1)
        .map(|accounts| {
            let emails: Vec<&str> = accounts.iter().map(|(_, e)| e.as_str()).collect();
            emails.join(" = ")
        })
        .collect();
    if !clashes.is_empty() {
        return Err(DbErr::Migration(format!(
            "email addresses must be unique regardless of case, but {} group(s) of accounts \
             differ only by case: {}; delete or change the address of all but one account \
             of each group, then start the service again",
            clashes.len(),
            clashes.join("; ")
        )));
    }
    for (canonical, accounts) in by_canonical {
        for (id, _) in accounts {
            let update = Query::update()
                .table(Users::Table)
                .value(Users::EmailCanonical, canonical.clone())
                .and_where(Expr::col(Users::Id).eq(id))
                .to_owned();
            db.execute(&update).await?;
        }
    }
    Ok(())
}
