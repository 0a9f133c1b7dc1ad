//! Greeting storage on sea-orm: the entity, the migrations and the repository; the same
//! code runs on SQLite and PostgreSQL.

mod m20261121_000001_create_greetings;

use sea_orm::entity::prelude::*;
use sea_orm::{ActiveValue::Set, QueryOrder as _, QuerySelect as _};
use sea_orm_migration::{MigrationTrait, MigratorTrait};

use crate::domain::{GreeterError, Greeting, GreetingRepository};

/// The `greetings` table.
pub mod entity {
    use sea_orm::entity::prelude::*;

    /// One stored greeting.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "greetings")]
    pub struct Model {
        /// UUIDv7.
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        /// Whom it greets.
        pub name: String,
        /// What it says.
        pub message: String,
        /// When it was made.
        pub create_time: ChronoDateTimeUtc,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Every migration, in order.
#[derive(Debug)]
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(m20261121_000001_create_greetings::Migration)]
    }
}

/// [`GreetingRepository`] over a sea-orm connection migrated with [`Migrator`].
#[derive(Debug, Clone)]
pub struct SeaOrmGreetings {
    db: DatabaseConnection,
}

impl SeaOrmGreetings {
    /// A repository over `db`.
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }
}

fn storage(err: DbErr) -> GreeterError {
    GreeterError::Storage(Box::new(err))
}

impl GreetingRepository for SeaOrmGreetings {
    async fn insert(&self, greeting: &Greeting) -> Result<(), GreeterError> {
        let row = entity::ActiveModel {
            id: Set(greeting.id),
            name: Set(greeting.name.clone()),
            message: Set(greeting.message.clone()),
            create_time: Set(greeting.create_time),
        };
        entity::Entity::insert(row)
            .exec_without_returning(&self.db)
            .await
            .map_err(storage)?;
        Ok(())
    }

    async fn after(
        &self,
        name: Option<&str>,
        after: Option<Uuid>,
        limit: u64,
    ) -> Result<Vec<Greeting>, GreeterError> {
        let mut query = entity::Entity::find()
            .order_by_asc(entity::Column::Id)
            .limit(limit);
        if let Some(name) = name {
            query = query.filter(entity::Column::Name.eq(name));
        }
        if let Some(after) = after {
            query = query.filter(entity::Column::Id.gt(after));
        }
        let rows = query.all(&self.db).await.map_err(storage)?;
        Ok(rows
            .into_iter()
            .map(|row| Greeting {
                id: row.id,
                name: row.name,
                message: row.message,
                create_time: row.create_time,
            })
            .collect())
    }
}
