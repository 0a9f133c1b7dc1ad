//! The outbox's backlog as Prometheus gauges, read from the table at each scrape:
//! `trellis_outbox_pending_messages`, `trellis_outbox_oldest_pending_age_seconds` and
//! `trellis_outbox_failed_messages`.

use chrono::{DateTime, Utc};
use prometheus::{Gauge, IntGauge};
use sea_orm::{
    ColumnTrait as _, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait as _,
    QueryFilter as _, QuerySelect as _,
};

use super::entity::{Column, Entity};
use crate::metrics::{Metrics, MetricsError};

/// When the oldest message still to deliver (neither delivered nor failed) was enqueued;
/// `None` when there is none.
///
/// # Errors
/// The database error.
pub async fn oldest_pending_time<C: ConnectionTrait>(
    conn: &C,
) -> Result<Option<DateTime<Utc>>, DbErr> {
    Entity::find()
        .select_only()
        .column_as(Column::CreateTime.min(), "oldest")
        .filter(Column::DeliveredTime.is_null())
        .filter(Column::FailedTime.is_null())
        .into_tuple::<Option<DateTime<Utc>>>()
        .one(conn)
        .await
        .map(Option::flatten)
}

/// Registers the outbox gauges in `metrics`, refreshed from `db` before each scrape (a
/// failed read keeps the last values and is logged at WARN).
///
/// # Errors
/// [`MetricsError::Register`] when `metrics` already has them.
pub fn watch(metrics: &Metrics, db: &DatabaseConnection) -> Result<(), MetricsError> {
    let pending = metrics.register(IntGauge::new(
        "trellis_outbox_pending_messages",
        "Outbox messages still to deliver (neither delivered nor failed), due or not.",
    )?)?;
    let oldest_age = metrics.register(Gauge::new(
        "trellis_outbox_oldest_pending_age_seconds",
        "Age of the oldest outbox message still to deliver; 0 when there is none.",
    )?)?;
    let failed = metrics.register(IntGauge::new(
        "trellis_outbox_failed_messages",
        "Outbox messages their peers rejected for good, kept until retried.",
    )?)?;
    let db = db.clone();
    metrics.on_scrape("outbox", move || {
        let (db, pending, oldest_age, failed) = (
            db.clone(),
            pending.clone(),
            oldest_age.clone(),
            failed.clone(),
        );
        async move {
            let pending_now = super::pending_count(&db).await?;
            let oldest = oldest_pending_time(&db).await?;
            let failed_now = super::failed_count(&db).await?;
            pending.set(i64::try_from(pending_now).unwrap_or(i64::MAX));
            failed.set(i64::try_from(failed_now).unwrap_or(i64::MAX));
            oldest_age.set(oldest.map_or(0.0, |time| {
                (Utc::now() - time).num_milliseconds().max(0) as f64 / 1e3
            }));
            Ok(())
        }
    });
    Ok(())
}
