//! Schema migrations of the notification service, applied at start-up.

mod m20261121_000001_create_notifications;
mod m20261121_000002_scope_idempotency_keys;
mod m20261121_000003_commit_sequence;

use sea_orm_migration::{MigrationTrait, MigratorTrait};

/// Every migration, in order.
#[derive(Debug)]
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261121_000001_create_notifications::Migration),
            Box::new(m20261121_000002_scope_idempotency_keys::Migration),
            Box::new(m20261121_000003_commit_sequence::Migration),
        ]
    }
}

#[cfg(test)]
mod tests {
    use sea_orm_migration::MigratorTrait as _;

    #[test]
    fn migrations_keep_the_names_databases_recorded() {
        let names: Vec<_> = super::Migrator::migrations()
            .iter()
            .map(|m| m.name().to_owned())
            .collect();
        assert_eq!(
            names,
            [
                "m20261121_000001_create_notifications",
                "m20261121_000002_scope_idempotency_keys",
                "m20261121_000003_commit_sequence",
            ]
        );
    }
}
