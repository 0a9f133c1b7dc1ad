//! Schema migrations of the auth service, applied at start-up.

mod m20261121_000001_create_auth_tables;
mod m20261122_000001_index_refresh_tokens_user_id;

use sea_orm_migration::{MigrationTrait, MigratorTrait};
use trellis_platform::outbox::migration::{AddOutboxTraceContext, CreateOutbox};

/// Every migration, in order.
#[derive(Debug)]
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261121_000001_create_auth_tables::Migration),
            Box::new(CreateOutbox),
            Box::new(m20261122_000001_index_refresh_tokens_user_id::Migration),
            Box::new(AddOutboxTraceContext),
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
                "m20261121_000001_create_auth_tables",
                "m20261121_000100_create_outbox_messages",
                "m20261122_000001_index_refresh_tokens_user_id",
                "m20261122_000100_add_outbox_trace_context",
            ]
        );
    }
}
