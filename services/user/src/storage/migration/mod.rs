//! Schema migrations of the user service, applied at start-up.

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
    #[test]
    fn migrations_keep_the_names_databases_recorded() {
        assert_eq!(
            trellis_platform::data::migration_names::<super::Migrator>(),
            [
                "m20261121_000001_create_users",
                "m20261121_000100_create_outbox_messages",
            ]
        );
    }
}
