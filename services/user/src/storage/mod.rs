//! User storage on sea-orm: the `users` and `user_roles` tables' entities, their
//! migrations, and the [`UserRepository`](crate::domain::UserRepository) implementation.
//! The same code runs on SQLite and PostgreSQL.

pub mod entity;
pub mod migration;
pub mod user_role;

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait as _, ConnectionTrait, DatabaseConnection, DbErr,
    EntityTrait as _, QueryFilter as _, QueryOrder as _, QuerySelect as _, SqlErr,
    TransactionTrait as _, TryInsertResult,
};
use trellis_platform::outbox::EventOutbox;
use uuid::Uuid;

use crate::domain::{
    AccountEvent, DisplayName, Email, PasswordHash, Role, RoleChange, User, UserChanges, UserError,
    UserRepository, UserWithCredentials,
};
use entity::{Column, Entity};

/// [`UserRepository`] over a sea-orm connection.
#[derive(Debug, Clone)]
pub struct SeaOrmUserRepository {
    db: DatabaseConnection,
    outbox: EventOutbox<AccountEvent>,
}

impl SeaOrmUserRepository {
    /// A repository over `db`, which must be migrated with [`migration::Migrator`];
    /// `outbox` turns the domain's [`AccountEvent`]s into outbox calls (the service's
    /// `peers` module makes it) and is woken after each commit that enqueued one.
    pub fn new(db: DatabaseConnection, outbox: EventOutbox<AccountEvent>) -> Self {
        Self { db, outbox }
    }

    /// Enqueues `events` through `txn`, the transaction making the change they report.
    async fn enqueue(
        &self,
        txn: &impl ConnectionTrait,
        events: &[AccountEvent],
    ) -> Result<(), UserError> {
        for event in events {
            self.outbox.enqueue(txn, event).await.map_err(unexpected)?;
        }
        Ok(())
    }
}

fn to_domain(model: entity::Model, roles: BTreeSet<Role>) -> User {
    User {
        id: model.id,
        email: Email::from_stored(model.email),
        display_name: DisplayName::from_stored(model.display_name),
        roles,
        create_time: model.create_time,
        update_time: model.update_time,
    }
}

/// The roles of each of `ids` (users without roles are absent), in one query.
async fn roles_of(
    db: &impl ConnectionTrait,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, BTreeSet<Role>>, UserError> {
    let mut roles: HashMap<Uuid, BTreeSet<Role>> = HashMap::new();
    if ids.is_empty() {
        return Ok(roles);
    }
    let rows = user_role::Entity::find()
        .filter(user_role::Column::UserId.is_in(ids.iter().copied()))
        .all(db)
        .await
        .map_err(unexpected)?;
    for row in rows {
        if let Some(role) = Role::from_stored(&row.role) {
            roles.entry(row.user_id).or_default().insert(role);
        }
    }
    Ok(roles)
}

/// `models` as domain users, with their roles.
async fn with_roles(
    db: &impl ConnectionTrait,
    models: Vec<entity::Model>,
) -> Result<Vec<User>, UserError> {
    let ids: Vec<Uuid> = models.iter().map(|m| m.id).collect();
    let mut roles = roles_of(db, &ids).await?;
    Ok(models
        .into_iter()
        .map(|model| {
            let held = roles.remove(&model.id).unwrap_or_default();
            to_domain(model, held)
        })
        .collect())
}

/// `model` as a domain user, with their roles.
async fn one_with_roles(
    db: &impl ConnectionTrait,
    model: Option<entity::Model>,
) -> Result<Option<User>, UserError> {
    let models = model.into_iter().collect();
    Ok(with_roles(db, models).await?.pop())
}

/// A unique-index violation on `users.email_canonical` means the address is taken.
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
    async fn insert(
        &self,
        user: &User,
        password_hash: &PasswordHash,
        events: &[AccountEvent],
    ) -> Result<(), UserError> {
        let model = entity::ActiveModel {
            id: Set(user.id),
            email: Set(user.email.as_str().to_owned()),
            email_canonical: Set(user.email.canonical().to_owned()),
            display_name: Set(user.display_name.as_str().to_owned()),
            password_hash: Set(password_hash.as_phc().to_owned()),
            create_time: Set(user.create_time),
            update_time: Set(user.update_time),
        };
        // The user and their events commit together or not at all.
        let txn = self.db.begin().await.map_err(unexpected)?;
        Entity::insert(model)
            .exec_without_returning(&txn)
            .await
            .map_err(map_write_error)?;
        let roles: Vec<user_role::ActiveModel> = user
            .roles
            .iter()
            .map(|role| user_role::ActiveModel {
                user_id: Set(user.id),
                role: Set(role.as_str().to_owned()),
            })
            .collect();
        if !roles.is_empty() {
            user_role::Entity::insert_many(roles)
                .exec_without_returning(&txn)
                .await
                .map_err(unexpected)?;
        }
        self.enqueue(&txn, events).await?;
        txn.commit().await.map_err(map_write_error)?;
        self.outbox.wake();
        Ok(())
    }

    async fn get(&self, id: Uuid) -> Result<Option<User>, UserError> {
        // One query (users LEFT JOIN user_roles), not two: GetUser's whole storage cost.
        let rows = Entity::find_by_id(id)
            .find_with_related(user_role::Entity)
            .all(&self.db)
            .await
            .map_err(unexpected)?;
        Ok(rows.into_iter().next().map(|(model, roles)| {
            let roles = roles
                .iter()
                .filter_map(|row| Role::from_stored(&row.role))
                .collect();
            to_domain(model, roles)
        }))
    }

    async fn find_by_email(&self, email: &Email) -> Result<Option<User>, UserError> {
        let model = Entity::find()
            .filter(Column::EmailCanonical.eq(email.canonical()))
            .one(&self.db)
            .await
            .map_err(unexpected)?;
        one_with_roles(&self.db, model).await
    }

    async fn get_credentials(
        &self,
        email: &Email,
    ) -> Result<Option<UserWithCredentials>, UserError> {
        let model = Entity::find()
            .filter(Column::EmailCanonical.eq(email.canonical()))
            .one(&self.db)
            .await
            .map_err(unexpected)?;
        let Some(model) = model else {
            return Ok(None);
        };
        let password_hash = PasswordHash::from_stored(model.password_hash.clone());
        let user = one_with_roles(&self.db, Some(model)).await?;
        Ok(user.map(|user| UserWithCredentials {
            user,
            password_hash,
        }))
    }

    async fn list(&self, after: Option<Uuid>, limit: u64) -> Result<Vec<User>, UserError> {
        let mut query = Entity::find().order_by_asc(Column::Id).limit(limit);
        if let Some(after) = after {
            query = query.filter(Column::Id.gt(after));
        }
        let models = query.all(&self.db).await.map_err(unexpected)?;
        with_roles(&self.db, models).await
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
            update = update
                .col_expr(Column::Email, Expr::value(email.as_str()))
                .col_expr(Column::EmailCanonical, Expr::value(email.canonical()));
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

    async fn delete(&self, id: Uuid, events: &[AccountEvent]) -> Result<bool, UserError> {
        // The user goes, and their events (the revocation of their tokens) are enqueued,
        // together or not at all. Roles go by the foreign key's cascade, and explicitly in case a SQLite
        // connection has foreign keys off.
        let txn = self.db.begin().await.map_err(unexpected)?;
        user_role::Entity::delete_many()
            .filter(user_role::Column::UserId.eq(id))
            .exec(&txn)
            .await
            .map_err(unexpected)?;
        let result = Entity::delete_by_id(id)
            .exec(&txn)
            .await
            .map_err(unexpected)?;
        if result.rows_affected == 0 {
            txn.rollback().await.map_err(unexpected)?;
            return Ok(false);
        }
        self.enqueue(&txn, events).await?;
        txn.commit().await.map_err(unexpected)?;
        self.outbox.wake();
        Ok(true)
    }

    async fn change_role(
        &self,
        id: Uuid,
        role: Role,
        change: RoleChange,
        update_time: DateTime<Utc>,
    ) -> Result<Option<User>, UserError> {
        // The write comes first: on SQLite a transaction that reads before it writes
        // cannot take the write lock once another connection has written meanwhile
        // (SQLITE_BUSY at once, whatever the busy timeout), as when the service's outbox
        // and the `admin` command share a database file.
        let txn = self.db.begin().await.map_err(unexpected)?;
        let changed = match change {
            RoleChange::Grant => {
                let row = user_role::ActiveModel {
                    user_id: Set(id),
                    role: Set(role.as_str().to_owned()),
                };
                let inserted = user_role::Entity::insert(row)
                    .on_conflict_do_nothing()
                    .exec_without_returning(&txn)
                    .await;
                match inserted {
                    Ok(TryInsertResult::Inserted(rows)) => rows > 0,
                    Ok(TryInsertResult::Conflicted | TryInsertResult::Empty) => false,
                    // No such user (the foreign key).
                    Err(err)
                        if matches!(
                            err.sql_err(),
                            Some(SqlErr::ForeignKeyConstraintViolation(_))
                        ) =>
                    {
                        return Ok(None);
                    }
                    Err(err) => return Err(unexpected(err)),
                }
            }
            RoleChange::Revoke => {
                user_role::Entity::delete_many()
                    .filter(user_role::Column::UserId.eq(id))
                    .filter(user_role::Column::Role.eq(role.as_str()))
                    .exec(&txn)
                    .await
                    .map_err(unexpected)?
                    .rows_affected
                    > 0
            }
        };
        if changed {
            Entity::update_many()
                .col_expr(Column::UpdateTime, Expr::value(update_time))
                .filter(Column::Id.eq(id))
                .exec(&txn)
                .await
                .map_err(unexpected)?;
        }
        let Some(model) = Entity::find_by_id(id).one(&txn).await.map_err(unexpected)? else {
            // Nothing to keep (a role row without its user, were foreign keys off).
            txn.rollback().await.map_err(unexpected)?;
            return Ok(None);
        };
        let user = one_with_roles(&txn, Some(model)).await?;
        txn.commit().await.map_err(unexpected)?;
        Ok(user)
    }
}
