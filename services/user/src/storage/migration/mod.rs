//! Schema migrations of the user service, applied at start-up.

mod m20261121_000001_create_users;
mod m20261121_000200_roles_and_canonical_email;

use sea_orm_migration::{MigrationTrait, MigratorTrait};
use trellis_platform::outbox::migration::{AddOutboxTraceContext, CreateOutbox};

/// Every migration, in order.
#[derive(Debug)]
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261121_000001_create_users::Migration),
            Box::new(CreateOutbox),
            Box::new(m20261121_000200_roles_and_canonical_email::Migration),
            Box::new(AddOutboxTraceContext),
        ]
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::sea_query::{Alias, Query};
    use sea_orm::{
        ConnectOptions, ConnectionTrait as _, Database, DatabaseConnection, EntityTrait as _,
    };
    use sea_orm_migration::MigratorTrait as _;

    use super::Migrator;
    use crate::storage::entity;

    /// A database migrated up to (and including) the outbox, before roles and canonical
    /// addresses, holding users with `emails`.
    async fn before_canonical_emails(
        emails: &[&str],
    ) -> Result<DatabaseConnection, sea_orm::DbErr> {
        let mut options = ConnectOptions::new("sqlite::memory:");
        options.max_connections(1).min_connections(1);
        let db = Database::connect(options).await?;
        Migrator::up(&db, Some(2)).await?;
        for email in emails {
            let now = chrono::Utc::now();
            let insert = Query::insert()
                .into_table(Alias::new("users"))
                .columns(
                    [
                        "id",
                        "email",
                        "display_name",
                        "password_hash",
                        "create_time",
                        "update_time",
                    ]
                    .map(Alias::new),
                )
                .values_panic([
                    uuid::Uuid::now_v7().into(),
                    (*email).into(),
                    "Someone".into(),
                    "$argon2id$stub".into(),
                    now.into(),
                    now.into(),
                ])
                .to_owned();
            db.execute(&insert).await?;
        }
        Ok(db)
    }

    #[tokio::test]
    async fn existing_addresses_are_kept_and_backfilled_lower_cased() -> Result<(), sea_orm::DbErr>
    {
        let db = before_canonical_emails(&["Ada@Example.com", "grace@example.com"]).await?;
        Migrator::up(&db, None).await?;
        let mut rows: Vec<(String, String)> = entity::Entity::find()
            .all(&db)
            .await?
            .into_iter()
            .map(|m| (m.email, m.email_canonical))
            .collect();
        rows.sort();
        assert_eq!(
            rows,
            [
                ("Ada@Example.com".to_owned(), "ada@example.com".to_owned()),
                (
                    "grace@example.com".to_owned(),
                    "grace@example.com".to_owned()
                ),
            ]
        );
        // And it can be undone.
        Migrator::down(&db, Some(1)).await?;
        Ok(())
    }

    #[tokio::test]
    async fn accounts_differing_only_by_case_stop_the_migration_by_name()
    -> Result<(), sea_orm::DbErr> {
        let db = before_canonical_emails(&["admin@example.com", "ADMIN@example.com"]).await?;
        let err = Migrator::up(&db, None)
            .await
            .map(drop)
            .map_err(|e| e.to_string());
        let message = err.err().unwrap_or_default();
        for email in ["admin@example.com", "ADMIN@example.com"] {
            assert!(message.contains(email), "{message}");
        }
        Ok(())
    }
    #[test]
    fn migrations_keep_the_names_databases_recorded() {
        assert_eq!(
            trellis_platform::data::migration_names::<super::Migrator>(),
            [
                "m20261121_000001_create_users",
                "m20261121_000100_create_outbox_messages",
                "m20261121_000200_roles_and_canonical_email",
                "m20261122_000100_add_outbox_trace_context",
            ]
        );
    }
}
