//! User storage on sea-orm: the `users` table's entity, its migrations, and the
//! [`UserRepository`](crate::domain::UserRepository) implementation. The same code runs
//! on SQLite and PostgreSQL.

pub mod entity;
pub mod migration;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait as _, DatabaseConnection, DbErr, EntityTrait as _,
    QueryFilter as _, QueryOrder as _, QuerySelect as _, SqlErr, TransactionTrait as _,
};
use trellis_platform::outbox::{self, OutboxEntry, OutboxWaker};
use trellis_proto::notification_v1::SendNotificationRequest;
use uuid::Uuid;

use crate::domain::{
    DisplayName, Email, PasswordHash, User, UserChanges, UserError, UserRepository,
    UserWithCredentials,
};
use entity::{Column, Entity};

/// The peer that receives notifications, as named in the `peers` config.
pub const NOTIFICATION_PEER: &str = "notification";

/// [`UserRepository`] over a sea-orm connection.
#[derive(Debug, Clone)]
pub struct SeaOrmUserRepository {
    db: DatabaseConnection,
    waker: OutboxWaker,
}

impl SeaOrmUserRepository {
    /// A repository over `db`, which must be migrated with [`migration::Migrator`];
    /// `waker` is told when a committed sign-up enqueued its welcome notification.
    pub fn new(db: DatabaseConnection, waker: OutboxWaker) -> Self {
        Self { db, waker }
    }
}

/// The welcome notification, as an outbox call to the notification service; its id is
/// the idempotency key, so redelivery cannot duplicate it.
fn welcome(user: &User) -> OutboxEntry {
    let id = Uuid::now_v7();
    let request = SendNotificationRequest {
        user_id: user.id.to_string(),
        kind: "welcome".to_owned(),
        title: format!("Welcome, {}!", user.display_name.as_str()),
        body: "Your Trellis account is ready.".to_owned(),
        idempotency_key: id.to_string(),
    };
    OutboxEntry::new(
        id,
        NOTIFICATION_PEER,
        trellis_proto::paths::SEND_NOTIFICATION,
        &request,
    )
}

fn to_domain(model: entity::Model) -> User {
    User {
        id: model.id,
        email: Email::from_stored(model.email),
        display_name: DisplayName::from_stored(model.display_name),
        create_time: model.create_time,
        update_time: model.update_time,
    }
}

/// A unique-index violation on `users.email` means the address is taken.
fn map_write_error(err: DbErr) -> UserError {
    if matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) {
        UserError::EmailTaken
    } else {
        unexpected(err)
    }
}

fn unexpected(err: DbErr) -> UserError {
    UserError::Unexpected(anyhow::Error::new(err).context("user storage failed"))
}

impl UserRepository for SeaOrmUserRepository {
    async fn insert(&self, user: &User, password_hash: &PasswordHash) -> Result<(), UserError> {
        let model = entity::ActiveModel {
            id: Set(user.id),
            email: Set(user.email.as_str().to_owned()),
            display_name: Set(user.display_name.as_str().to_owned()),
            password_hash: Set(password_hash.as_phc().to_owned()),
            create_time: Set(user.create_time),
            update_time: Set(user.update_time),
        };
        // The user and their welcome notification commit together or not at all.
        let txn = self.db.begin().await.map_err(unexpected)?;
        Entity::insert(model)
            .exec_without_returning(&txn)
            .await
            .map_err(map_write_error)?;
        outbox::enqueue(&txn, welcome(user))
            .await
            .map_err(unexpected)?;
        txn.commit().await.map_err(map_write_error)?;
        self.waker.wake();
        Ok(())
    }

    async fn get(&self, id: Uuid) -> Result<Option<User>, UserError> {
        let model = Entity::find_by_id(id)
            .one(&self.db)
            .await
            .map_err(unexpected)?;
        Ok(model.map(to_domain))
    }

    async fn get_credentials(
        &self,
        email: &Email,
    ) -> Result<Option<UserWithCredentials>, UserError> {
        let model = Entity::find()
            .filter(Column::Email.eq(email.as_str()))
            .one(&self.db)
            .await
            .map_err(unexpected)?;
        Ok(model.map(|model| UserWithCredentials {
            password_hash: PasswordHash::from_stored(model.password_hash.clone()),
            user: to_domain(model),
        }))
    }

    async fn list(&self, after: Option<Uuid>, limit: u64) -> Result<Vec<User>, UserError> {
        let mut query = Entity::find().order_by_asc(Column::Id).limit(limit);
        if let Some(after) = after {
            query = query.filter(Column::Id.gt(after));
        }
        let models = query.all(&self.db).await.map_err(unexpected)?;
        Ok(models.into_iter().map(to_domain).collect())
    }

    async fn update(
        &self,
        id: Uuid,
        changes: &UserChanges,
        update_time: DateTime<Utc>,
    ) -> Result<Option<User>, UserError> {
        let mut update = Entity::update_many()
            .col_expr(Column::UpdateTime, Expr::value(update_time))
            .filter(Column::Id.eq(id));
        if let Some(email) = &changes.email {
            update = update.col_expr(Column::Email, Expr::value(email.as_str()));
        }
        if let Some(display_name) = &changes.display_name {
            update = update.col_expr(Column::DisplayName, Expr::value(display_name.as_str()));
        }
        let result = update.exec(&self.db).await.map_err(map_write_error)?;
        if result.rows_affected == 0 {
            return Ok(None);
        }
        self.get(id).await
    }

    async fn delete(&self, id: Uuid) -> Result<bool, UserError> {
        let result = Entity::delete_by_id(id)
            .exec(&self.db)
            .await
            .map_err(unexpected)?;
        Ok(result.rows_affected > 0)
    }
}
