//! Adds `outbox_messages.trace_context`: the W3C trace context (`traceparent`, and
//! `tracestate`/`baggage` when present, as a JSON object) of the span that enqueued the
//! message, so its delivery continues the same trace. Nullable: rows written before, or
//! with tracing off, have none.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::text_null;

#[derive(DeriveIden)]
enum OutboxMessages {
    Table,
    TraceContext,
}

crate::migration! {
    /// Adds `outbox_messages.trace_context` (nullable text).
    pub struct AddOutboxTraceContext;

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(OutboxMessages::Table)
                    .add_column(text_null(OutboxMessages::TraceContext))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(OutboxMessages::Table)
                    .drop_column(OutboxMessages::TraceContext)
                    .to_owned(),
            )
            .await
    }
}
