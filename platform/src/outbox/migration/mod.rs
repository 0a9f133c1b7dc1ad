//! The outbox's migrations; add [`CreateOutbox`] and then [`AddOutboxTraceContext`] to
//! the migrator of a service that uses the outbox, each after the migrations the service
//! already had when it was published (a migrator's order is its history).

mod m20261121_000100_create_outbox_messages;
mod m20261122_000100_add_outbox_trace_context;

pub use m20261121_000100_create_outbox_messages::CreateOutbox;
pub use m20261122_000100_add_outbox_trace_context::AddOutboxTraceContext;

#[cfg(test)]
mod tests {
    use sea_orm_migration::MigrationName as _;

    #[test]
    fn the_migrations_keep_the_names_databases_recorded() {
        assert_eq!(
            super::CreateOutbox.name(),
            "m20261121_000100_create_outbox_messages"
        );
        assert_eq!(
            super::AddOutboxTraceContext.name(),
            "m20261122_000100_add_outbox_trace_context"
        );
    }
}
