//! Notification storage on sea-orm; the same code runs on SQLite and PostgreSQL.

pub mod entity;
pub mod migration;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait as _, DatabaseConnection, DbErr, EntityTrait as _,
    QueryFilter as _, QueryOrder as _, QuerySelect as _,
};
use uuid::Uuid;

use crate::domain::{Notification, NotificationError, NotificationRepository};
use entity::{Column, Entity};

/// [`NotificationRepository`] over a sea-orm connection.
#[derive(Debug, Clone)]
pub struct SeaOrmNotificationRepository {
    db: DatabaseConnection,
}

impl SeaOrmNotificationRepository {
    /// A repository over `db`, migrated with [`migration::Migrator`].
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }
}

fn unexpected(err: DbErr) -> NotificationError {
    NotificationError::Unexpected(anyhow::Error::new(err).context("notification storage failed"))
}

fn to_domain(row: entity::Model) -> Notification {
    Notification {
        id: row.id,
        user_id: row.user_id,
        kind: row.kind,
        title: row.title,
        body: row.body,
        create_time: row.create_time,
        read_time: row.read_time,
    }
}

impl NotificationRepository for SeaOrmNotificationRepository {
    async fn insert_once(
        &self,
        n: &Notification,
        idempotency_key: &str,
    ) -> Result<(Notification, bool), NotificationError> {
        let row = entity::ActiveModel {
            id: Set(n.id),
            user_id: Set(n.user_id.clone()),
            kind: Set(n.kind.clone()),
            title: Set(n.title.clone()),
            body: Set(n.body.clone()),
            idempotency_key: Set(idempotency_key.to_owned()),
            create_time: Set(n.create_time),
            read_time: Set(None),
            ack_time: Set(None),
        };
        // ON CONFLICT DO NOTHING makes concurrent duplicates safe on both databases.
        let inserted = Entity::insert(row)
            .on_conflict(
                OnConflict::column(Column::IdempotencyKey)
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(&self.db)
            .await
            .map_err(unexpected)?;
        let stored = Entity::find()
            .filter(Column::IdempotencyKey.eq(idempotency_key))
            .one(&self.db)
            .await
            .map_err(unexpected)?
            .ok_or_else(|| {
                NotificationError::Unexpected(anyhow::anyhow!("notification vanished after insert"))
            })?;
        Ok((to_domain(stored), inserted == 1))
    }

    async fn list(
        &self,
        user_id: &str,
        unread_only: bool,
        before: Option<Uuid>,
        limit: u64,
    ) -> Result<Vec<Notification>, NotificationError> {
        let mut query = Entity::find()
            .filter(Column::UserId.eq(user_id))
            .order_by_desc(Column::Id)
            .limit(limit);
        if unread_only {
            query = query.filter(Column::ReadTime.is_null());
        }
        if let Some(before) = before {
            query = query.filter(Column::Id.lt(before));
        }
        let rows = query.all(&self.db).await.map_err(unexpected)?;
        Ok(rows.into_iter().map(to_domain).collect())
    }

    async fn after(
        &self,
        user_id: &str,
        after: Option<Uuid>,
        unacked_only: bool,
        limit: u64,
    ) -> Result<Vec<Notification>, NotificationError> {
        let mut query = Entity::find()
            .filter(Column::UserId.eq(user_id))
            .order_by_asc(Column::Id)
            .limit(limit);
        if unacked_only {
            query = query.filter(Column::AckTime.is_null());
        }
        if let Some(after) = after {
            query = query.filter(Column::Id.gt(after));
        }
        let rows = query.all(&self.db).await.map_err(unexpected)?;
        Ok(rows.into_iter().map(to_domain).collect())
    }

    async fn acknowledge(
        &self,
        user_id: &str,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<(), NotificationError> {
        Entity::update_many()
            .col_expr(Column::AckTime, Expr::value(Some(now)))
            .filter(Column::Id.eq(id))
            .filter(Column::UserId.eq(user_id))
            .filter(Column::AckTime.is_null())
            .exec(&self.db)
            .await
            .map_err(unexpected)?;
        Ok(())
    }

    async fn mark_read(
        &self,
        user_id: &str,
        ids: &[Uuid],
        now: DateTime<Utc>,
    ) -> Result<u64, NotificationError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let result = Entity::update_many()
            .col_expr(Column::ReadTime, Expr::value(Some(now)))
            .filter(Column::Id.is_in(ids.iter().copied()))
            .filter(Column::UserId.eq(user_id))
            .filter(Column::ReadTime.is_null())
            .exec(&self.db)
            .await
            .map_err(unexpected)?;
        Ok(result.rows_affected)
    }
}
