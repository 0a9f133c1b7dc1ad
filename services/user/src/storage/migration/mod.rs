//! Schema migrations of the user service, applied at start-up.

// sea-orm declares `MigrationTrait` under async_trait with `&SchemaManager`; spelling it
// `SchemaManager<'_>` in an impl no longer matches the trait, so the idiom lint yields here.
#![allow(elided_lifetimes_in_paths)]

mod m20261121_000001_create_users;

use sea_orm_migration::{MigrationTrait, MigratorTrait};
use trellis_platform::outbox::migration::CreateOutbox;

/// Every migration, in order.
#[derive(Debug)]
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261121_000001_create_users::Migration),
            Box::new(CreateOutbox),
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
                "m20261121_000001_create_users",
                "m20261121_000100_create_outbox_messages",
            ]
        );
    }
}
