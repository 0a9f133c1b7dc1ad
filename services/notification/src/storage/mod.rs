//! Notification storage on sea-orm; the same code runs on SQLite and PostgreSQL.

pub mod entity;
pub mod migration;
pub mod watch;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait as _, OnConflict, Query};
use sea_orm::{
    ActiveValue::Set, ColumnTrait as _, ConnectionTrait as _, DatabaseConnection,
    DatabaseTransaction, DbErr, DeriveIden, EntityTrait as _, QueryFilter as _, QueryOrder as _,
    QuerySelect as _, TransactionTrait as _,
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

/// The one-row counter whose value is the last sequence handed out.
#[derive(DeriveIden)]
enum NotificationSequence {
    Table,
    Id,
    Value,
}

/// Takes the next sequence inside `txn`. The update locks the counter's row until `txn`
/// ends, so a concurrent insert waits for this one to commit (or roll back, which returns
/// the value) and then gets a larger sequence: sequence order is commit order.
async fn next_sequence(txn: &DatabaseTransaction) -> Result<i64, NotificationError> {
    let increment = Query::update()
        .table(NotificationSequence::Table)
        .value(
            NotificationSequence::Value,
            Expr::col(NotificationSequence::Value).add(1),
        )
        .and_where(Expr::col(NotificationSequence::Id).eq(1))
        .returning_col(NotificationSequence::Value)
        .to_owned();
    let row = txn
        .query_one(&increment)
        .await
        .map_err(unexpected)?
        .ok_or_else(|| {
            NotificationError::Unexpected(anyhow::anyhow!("the sequence counter row is missing"))
        })?;
    row.try_get::<i64>("", "value").map_err(unexpected)
}

fn unexpected(err: DbErr) -> NotificationError {
    NotificationError::Unexpected(anyhow::Error::new(err).context("notification storage failed"))
}

fn to_domain(row: entity::Model) -> Notification {
    Notification {
        id: row.id,
        sequence: row.sequence,
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
        sender: &str,
        idempotency_key: &str,
    ) -> Result<(Notification, bool), NotificationError> {
        let txn = self.db.begin().await.map_err(unexpected)?;
        let sequence = next_sequence(&txn).await?;
        let row = entity::ActiveModel {
            id: Set(n.id),
            user_id: Set(n.user_id.clone()),
            kind: Set(n.kind.clone()),
            title: Set(n.title.clone()),
            body: Set(n.body.clone()),
            sender: Set(sender.to_owned()),
            idempotency_key: Set(idempotency_key.to_owned()),
            sequence: Set(sequence),
            create_time: Set(n.create_time),
            read_time: Set(None),
            ack_time: Set(None),
        };
        // ON CONFLICT DO NOTHING makes concurrent duplicates safe on both databases.
        let inserted = Entity::insert(row)
            .on_conflict(
                OnConflict::columns([Column::Sender, Column::IdempotencyKey])
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(&txn)
            .await
            .map_err(unexpected)?;
        if inserted == 1 {
            watch::announce(&txn, sequence).await.map_err(unexpected)?;
            txn.commit().await.map_err(unexpected)?;
            // What was written is what is stored: no need to read it back.
            return Ok((
                Notification {
                    sequence,
                    read_time: None,
                    ..n.clone()
                },
                true,
            ));
        }
        // A known key: give the sequence back, so sequences have no gaps, and answer with
        // the notification stored under it.
        txn.rollback().await.map_err(unexpected)?;
        let stored = Entity::find()
            .filter(Column::Sender.eq(sender))
            .filter(Column::IdempotencyKey.eq(idempotency_key))
            .one(&self.db)
            .await
            .map_err(unexpected)?
            .ok_or_else(|| {
                NotificationError::Unexpected(anyhow::anyhow!("notification vanished after insert"))
            })?;
        Ok((to_domain(stored), false))
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

    async fn committed_after(
        &self,
        after: i64,
        limit: u64,
    ) -> Result<Vec<Notification>, NotificationError> {
        // The unique index on `sequence` serves it.
        let rows = Entity::find()
            .filter(Column::Sequence.gt(after))
            .order_by_asc(Column::Sequence)
            .limit(limit)
            .all(&self.db)
            .await
            .map_err(unexpected)?;
        Ok(rows.into_iter().map(to_domain).collect())
    }

    async fn last_sequence(&self) -> Result<i64, NotificationError> {
        let last: Option<Option<i64>> = Entity::find()
            .select_only()
            .column_as(Column::Sequence.max(), "last")
            .into_tuple()
            .one(&self.db)
            .await
            .map_err(unexpected)?;
        Ok(last.flatten().unwrap_or(0))
    }

    async fn after(
        &self,
        user_id: &str,
        after: Option<i64>,
        unacked_only: bool,
        limit: u64,
    ) -> Result<Vec<Notification>, NotificationError> {
        let mut query = Entity::find()
            .filter(Column::UserId.eq(user_id))
            .order_by_asc(Column::Sequence)
            .limit(limit);
        if unacked_only {
            query = query.filter(Column::AckTime.is_null());
        }
        if let Some(after) = after {
            query = query.filter(Column::Sequence.gt(after));
        }
        let rows = query.all(&self.db).await.map_err(unexpected)?;
        Ok(rows.into_iter().map(to_domain).collect())
    }

    async fn sequence_of(&self, user_id: &str, id: Uuid) -> Result<Option<i64>, NotificationError> {
        let row = Entity::find_by_id(id)
            .filter(Column::UserId.eq(user_id))
            .one(&self.db)
            .await
            .map_err(unexpected)?;
        Ok(row.map(|row| row.sequence))
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

#[cfg(test)]
mod tests {
    use trellis_platform::data::{DatabaseConfig, connect};

    use super::*;
    use crate::domain::{Notifications, ReplayFilter, live::LiveFeed};

    async fn repository() -> Result<SeaOrmNotificationRepository, anyhow::Error> {
        let db =
            connect::<migration::Migrator>(&DatabaseConfig::with_url("sqlite::memory:")).await?;
        Ok(SeaOrmNotificationRepository::new(db))
    }

    /// Inserts a notification to `ada` titled `title` with `id`, as `sender` with `key`.
    async fn insert(
        repository: &SeaOrmNotificationRepository,
        id: Uuid,
        title: &str,
        sender: &str,
        key: &str,
    ) -> Result<(Notification, bool), NotificationError> {
        let notification = Notification {
            id,
            sequence: 0,
            user_id: "ada".to_owned(),
            kind: "welcome".to_owned(),
            title: title.to_owned(),
            body: "Hello".to_owned(),
            create_time: trellis_platform::data::now(),
            read_time: None,
        };
        repository.insert_once(&notification, sender, key).await
    }

    /// Two sends race: the one whose id was made first commits second. A subscriber that
    /// received the first-committed one and resumes after it must still get the other.
    #[tokio::test]
    async fn resuming_never_skips_a_notification_committed_later_with_a_smaller_id()
    -> Result<(), anyhow::Error> {
        let repository = repository().await?;
        let smaller = Uuid::now_v7();
        let larger = Uuid::now_v7();
        assert!(smaller < larger);
        let (committed_first, _) =
            insert(&repository, larger, "Committed first", "service:user", "a").await?;
        let (committed_second, _) = insert(
            &repository,
            smaller,
            "Committed second",
            "service:user",
            "b",
        )
        .await?;
        assert!(committed_first.sequence < committed_second.sequence);

        let notifications = Notifications::new(repository, LiveFeed::default());
        let resume = notifications
            .resume_point("ada", "after", committed_first.id)
            .await?;
        let batch = notifications
            .replay_batch("ada", Some(resume), ReplayFilter::All)
            .await?;
        let titles: Vec<_> = batch
            .notifications
            .iter()
            .map(|n| n.title.as_str())
            .collect();
        assert_eq!(titles, ["Committed second"]);
        Ok(())
    }

    #[tokio::test]
    async fn keys_are_unique_per_sender_and_a_known_key_takes_no_sequence()
    -> Result<(), anyhow::Error> {
        let repository = repository().await?;
        let (users, created) = insert(
            &repository,
            Uuid::now_v7(),
            "From user",
            "service:user",
            "k",
        )
        .await?;
        assert!(created);
        let (auths, created) = insert(
            &repository,
            Uuid::now_v7(),
            "From auth",
            "service:auth",
            "k",
        )
        .await?;
        assert!(created, "another sender's key is its own");
        let (again, created) =
            insert(&repository, Uuid::now_v7(), "Retry", "service:user", "k").await?;
        assert!(!created);
        assert_eq!(again, users);
        let (next, _) = insert(&repository, Uuid::now_v7(), "Next", "service:user", "n").await?;
        assert_eq!(
            [users.sequence, auths.sequence, next.sequence],
            [1, 2, 3],
            "sequences follow commits without gaps"
        );
        Ok(())
    }
}
