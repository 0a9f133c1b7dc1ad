//! The migration that creates `outbox_messages`; add [`CreateOutbox`] to the migrator of
//! a service that uses the outbox.

// sea-orm declares `MigrationTrait` under async_trait with `&SchemaManager`; spelling it
// `SchemaManager<'_>` in an impl no longer matches the trait, so the idiom lint yields here.
#![allow(elided_lifetimes_in_paths)]

mod m20261121_000100_create_outbox_messages;

/// Creates `outbox_messages` and the index the dispatcher scans.
pub use m20261121_000100_create_outbox_messages::Migration as CreateOutbox;

#[cfg(test)]
mod tests {
    use sea_orm_migration::MigrationName as _;

    #[test]
    fn the_migration_keeps_the_name_databases_recorded() {
        assert_eq!(
            super::CreateOutbox.name(),
            "m20261121_000100_create_outbox_messages"
        );
    }
}
