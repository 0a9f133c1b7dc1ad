//! The migration that creates `outbox_messages`; add [`CreateOutbox`] to the migrator of
//! a service that uses the outbox.

mod m20261121_000100_create_outbox_messages;

pub use m20261121_000100_create_outbox_messages::CreateOutbox;

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
