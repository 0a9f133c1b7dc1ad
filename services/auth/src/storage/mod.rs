//! Auth storage on sea-orm: signing keys, refresh-token families and the outbox of
//! sign-in events (their wire form is the `peers` module's). The same code runs on SQLite and PostgreSQL.

pub mod entity;
pub mod migration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait as _, DatabaseConnection, DbErr, EntityTrait as _,
    QueryFilter as _, QuerySelect as _, TransactionTrait as _,
};
use trellis_platform::outbox::EventOutbox;
use uuid::Uuid;

use crate::domain::keys::{KeyPlan, KeyRecord};
use crate::domain::{AuthError, AuthRepository, RefreshRecord, Rotation, SignInEvent};
use entity::{refresh_token, signing_key};

/// [`AuthRepository`] and key storage over a sea-orm connection.
#[derive(Debug, Clone)]
pub struct SeaOrmAuthRepository {
    db: DatabaseConnection,
    outbox: EventOutbox<SignInEvent>,
}

impl SeaOrmAuthRepository {
    /// A repository over `db` (migrated with [`migration::Migrator`]); `outbox` turns
    /// the domain's [`SignInEvent`]s into outbox calls (the service's `peers` module makes
    /// it) and is woken after each commit that enqueued one.
    pub fn new(db: DatabaseConnection, outbox: EventOutbox<SignInEvent>) -> Self {
        Self { db, outbox }
    }

    /// Every stored signing key.
    ///
    /// # Errors
    /// The database error.
    pub async fn load_keys(&self) -> Result<Vec<KeyRecord>, DbErr> {
        let rows = signing_key::Entity::find().all(&self.db).await?;
        Ok(rows
            .into_iter()
            .map(|row| KeyRecord {
                kid: row.kid,
                private_pkcs8: row.private_key,
                public_key: row.public_key,
                create_time: row.create_time,
                activate_time: row.activate_time,
            })
            .collect())
    }

    /// Creates and deletes keys as planned.
    ///
    /// # Errors
    /// The database error.
    pub async fn apply_key_plan(&self, plan: KeyPlan) -> Result<(), DbErr> {
        for key in plan.create {
            tracing::info!(kid = %key.kid, activate_time = %key.activate_time, "new signing key published");
            let row = signing_key::ActiveModel {
                kid: Set(key.kid),
                private_key: Set(key.private_pkcs8),
                public_key: Set(key.public_key),
                create_time: Set(key.create_time),
                activate_time: Set(key.activate_time),
            };
            signing_key::Entity::insert(row)
                .exec_without_returning(&self.db)
                .await?;
        }
        for kid in plan.retire {
            tracing::info!(%kid, "signing key retired");
            signing_key::Entity::delete_by_id(kid)
                .exec(&self.db)
                .await?;
        }
        Ok(())
    }
}

fn unexpected(err: DbErr) -> AuthError {
    AuthError::Unexpected(anyhow::Error::new(err).context("auth storage failed"))
}

fn encode_hash(hash: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(hash)
}

impl AuthRepository for SeaOrmAuthRepository {
    async fn start_family(
        &self,
        token: &RefreshRecord,
        event: &SignInEvent,
    ) -> Result<(), AuthError> {
        let txn = self.db.begin().await.map_err(unexpected)?;
        refresh_token::Entity::insert(refresh_token::ActiveModel {
            id: Set(token.id),
            family_id: Set(token.family_id),
            user_id: Set(token.user_id.clone()),
            roles: Set(token.roles.join(",")),
            token_hash: Set(encode_hash(&token.token_hash)),
            create_time: Set(token.create_time),
            expire_time: Set(token.expire_time),
            used_time: Set(None),
            revoked_time: Set(None),
        })
        .exec_without_returning(&txn)
        .await
        .map_err(unexpected)?;
        self.outbox.enqueue(&txn, event).await.map_err(unexpected)?;
        txn.commit().await.map_err(unexpected)?;
        self.outbox.wake();
        Ok(())
    }

    async fn current_user(
        &self,
        hash: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Option<String>, AuthError> {
        let row = refresh_token::Entity::find()
            .filter(refresh_token::Column::TokenHash.eq(encode_hash(hash)))
            .filter(refresh_token::Column::UsedTime.is_null())
            .filter(refresh_token::Column::RevokedTime.is_null())
            .filter(refresh_token::Column::ExpireTime.gt(now))
            .one(&self.db)
            .await
            .map_err(unexpected)?;
        Ok(row.map(|row| row.user_id))
    }

    async fn rotate(
        &self,
        hash: &[u8],
        next_hash: &[u8],
        roles: &[String],
        now: DateTime<Utc>,
    ) -> Result<Rotation, AuthError> {
        let hash = encode_hash(hash);
        let txn = self.db.begin().await.map_err(unexpected)?;
        // The conditional write comes first, so of two concurrent exchanges exactly one
        // changes the row; the other sees it used and treats it as a replay.
        let claimed = refresh_token::Entity::update_many()
            .col_expr(refresh_token::Column::UsedTime, Expr::value(Some(now)))
            .filter(refresh_token::Column::TokenHash.eq(hash.as_str()))
            .filter(refresh_token::Column::UsedTime.is_null())
            .filter(refresh_token::Column::RevokedTime.is_null())
            .filter(refresh_token::Column::ExpireTime.gt(now))
            .exec(&txn)
            .await
            .map_err(unexpected)?
            .rows_affected
            == 1;
        let Some(row) = refresh_token::Entity::find()
            .filter(refresh_token::Column::TokenHash.eq(hash.as_str()))
            .one(&txn)
            .await
            .map_err(unexpected)?
        else {
            return Ok(Rotation::Invalid);
        };
        if claimed {
            refresh_token::Entity::insert(refresh_token::ActiveModel {
                id: Set(Uuid::now_v7()),
                family_id: Set(row.family_id),
                user_id: Set(row.user_id.clone()),
                roles: Set(roles.join(",")),
                token_hash: Set(encode_hash(next_hash)),
                create_time: Set(now),
                expire_time: Set(row.expire_time),
                used_time: Set(None),
                revoked_time: Set(None),
            })
            .exec_without_returning(&txn)
            .await
            .map_err(unexpected)?;
            txn.commit().await.map_err(unexpected)?;
            return Ok(Rotation::Rotated {
                user_id: row.user_id,
                expire_time: row.expire_time,
            });
        }
        if row.revoked_time.is_some() || row.expire_time <= now {
            return Ok(Rotation::Invalid);
        }
        revoke(&txn, row.family_id, now).await?;
        txn.commit().await.map_err(unexpected)?;
        Ok(Rotation::Replayed)
    }

    async fn revoke_family(&self, hash: &[u8], now: DateTime<Utc>) -> Result<(), AuthError> {
        let row = refresh_token::Entity::find()
            .filter(refresh_token::Column::TokenHash.eq(encode_hash(hash)))
            .one(&self.db)
            .await
            .map_err(unexpected)?;
        if let Some(row) = row {
            revoke(&self.db, row.family_id, now).await?;
        }
        Ok(())
    }

    async fn revoke_user(&self, user_id: &str, now: DateTime<Utc>) -> Result<u64, AuthError> {
        let txn = self.db.begin().await.map_err(unexpected)?;
        let active = refresh_token::Entity::find()
            .select_only()
            .column(refresh_token::Column::FamilyId)
            .distinct()
            .filter(refresh_token::Column::UserId.eq(user_id))
            .filter(refresh_token::Column::RevokedTime.is_null())
            .filter(refresh_token::Column::ExpireTime.gt(now))
            .into_tuple::<Uuid>()
            .all(&txn)
            .await
            .map_err(unexpected)?;
        refresh_token::Entity::update_many()
            .col_expr(refresh_token::Column::RevokedTime, Expr::value(Some(now)))
            .filter(refresh_token::Column::UserId.eq(user_id))
            .filter(refresh_token::Column::RevokedTime.is_null())
            .exec(&txn)
            .await
            .map_err(unexpected)?;
        txn.commit().await.map_err(unexpected)?;
        Ok(u64::try_from(active.len()).unwrap_or(u64::MAX))
    }
}

async fn revoke<C: sea_orm::ConnectionTrait>(
    conn: &C,
    family_id: Uuid,
    now: DateTime<Utc>,
) -> Result<(), AuthError> {
    refresh_token::Entity::update_many()
        .col_expr(refresh_token::Column::RevokedTime, Expr::value(Some(now)))
        .filter(refresh_token::Column::FamilyId.eq(family_id))
        .filter(refresh_token::Column::RevokedTime.is_null())
        .exec(conn)
        .await
        .map_err(unexpected)?;
    Ok(())
}
