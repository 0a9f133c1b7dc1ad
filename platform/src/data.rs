//! Database access through sea-orm: one code path for SQLite (the embedded default) and
//! PostgreSQL (production), with the service's migrations run at start-up.

use std::time::Duration;

use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbErr};
use sea_orm_migration::MigratorTrait;
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use serde_with::serde_as;

use crate::config::{ConfigError, NonZeroMilliSeconds, require_positive};

/// The `database` section of a service's configuration.
#[serde_as]
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// A sea-orm URL: `sqlite://.data/user.db?mode=rwc` (file, created if missing),
    /// `sqlite::memory:`, or `postgres://user:password@host:5432/db`. Secret: it may hold
    /// a password, so it is never printed.
    pub url: SecretString,
    /// Most open connections in the pool. Default 10. In-memory SQLite always uses one.
    pub max_connections: u32,
    /// `connect_timeout_ms`: how long to wait for a connection, in ms. Default 5000.
    #[serde(rename = "connect_timeout_ms")]
    #[serde_as(as = "NonZeroMilliSeconds")]
    pub connect_timeout: Duration,
    /// SQLite files only: when a commit reaches the disk (SQLite's `PRAGMA synchronous`).
    /// Default `normal`.
    pub sqlite_synchronous: SqliteSync,
}

/// SQLite's `synchronous` setting for a file in WAL mode
/// (<https://www.sqlite.org/pragma.html#pragma_synchronous>).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSync {
    /// The WAL is synced at checkpoints, not at every commit: a commit survives the
    /// process crashing, and may be lost with the last moments before a power loss or
    /// an OS crash; the database is never corrupted. SQLite's advice for WAL mode, and
    /// the default: with `full` every commit waits for an fsync, which caps a service's
    /// writes at the disk's sync rate (about 100 a second on the bench's disk, where
    /// `SendNotification` then queued for seconds).
    #[default]
    Normal,
    /// Every commit is synced before it returns: durable across power loss.
    Full,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: SecretString::from("sqlite::memory:"),
            max_connections: 10,
            connect_timeout: Duration::from_secs(5),
            sqlite_synchronous: SqliteSync::default(),
        }
    }
}

impl DatabaseConfig {
    /// A config for `url` with the other values at their defaults.
    pub fn with_url(url: impl Into<String>) -> Self {
        Self {
            url: SecretString::from(url.into()),
            ..Self::default()
        }
    }

    /// Checks the values.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming `database.url` or `database.max_connections`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let url = self.url.expose_secret();
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err(ConfigError::invalid(
                "database.url",
                "must start with sqlite:, postgres:// or postgresql://",
            ));
        }
        require_positive("database.max_connections", u64::from(self.max_connections))
    }

    fn is_memory(&self) -> bool {
        let url = self.url.expose_secret();
        url.starts_with("sqlite:") && (url.contains(":memory:") || url.contains("mode=memory"))
    }

    /// The file of a file-backed SQLite URL (`sqlite://.data/user.db?mode=rwc` →
    /// `.data/user.db`); `None` for PostgreSQL and in-memory SQLite.
    pub fn sqlite_file(&self) -> Option<&str> {
        let rest = self.url.expose_secret().strip_prefix("sqlite:")?;
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        let path = rest.split('?').next().unwrap_or(rest);
        (!path.is_empty() && !self.is_memory()).then_some(path)
    }
}

/// How long an SQLite connection waits for another connection's lock (another replica
/// writing the same file) before failing with "database is locked": 5 s.
pub const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The current time, truncated to microseconds: what both SQLite and PostgreSQL store,
/// so a value read back equals the one written.
pub fn now() -> chrono::DateTime<chrono::Utc> {
    let now = chrono::Utc::now();
    chrono::DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

/// Why the database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The directory of an SQLite file could not be created.
    #[error("cannot create the directory of database file {path}")]
    CreateDir {
        /// The file's path.
        path: String,
        /// The I/O failure.
        #[source]
        source: std::io::Error,
    },
    /// Connecting failed (unreachable server, bad credentials, bad URL).
    #[error("cannot connect to the database")]
    Connect(#[source] DbErr),
    /// A migration failed.
    #[error("cannot migrate the database")]
    Migrate(#[source] DbErr),
}

/// Connects to `config.url` and applies every pending migration of `M`.
///
/// For a file-backed SQLite URL the file's directory is created first. In-memory SQLite
/// keeps exactly one connection open for the pool's lifetime, because every connection
/// would otherwise see its own empty database. A file is opened in WAL journal mode
/// (<https://www.sqlite.org/wal.html>: readers do not block the writer, nor it them) with
/// a busy timeout of [`SQLITE_BUSY_TIMEOUT`] and `database.sqlite_synchronous` (default
/// `normal`, see [`SqliteSync`]), so several processes — replicas of one
/// service under `cargo xtask up --scale` — can share it; the first to open it switches
/// the file to WAL, which then persists.
///
/// # Errors
/// [`DataError`] when the directory, the connection or a migration fails.
pub async fn connect<M: MigratorTrait>(
    config: &DatabaseConfig,
) -> Result<DatabaseConnection, DataError> {
    if let Some(path) = config.sqlite_file()
        && let Some(dir) = std::path::Path::new(path).parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(|source| DataError::CreateDir {
            path: path.to_owned(),
            source,
        })?;
    }
    let mut options = ConnectOptions::new(config.url.expose_secret().to_owned());
    options
        .connect_timeout(config.connect_timeout)
        .acquire_timeout(config.connect_timeout)
        .sqlx_logging(false);
    if config.is_memory() {
        options
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None::<Duration>)
            .max_lifetime(None::<Duration>);
    } else {
        options.max_connections(config.max_connections);
    }
    if config.sqlite_file().is_some() {
        let synchronous = match config.sqlite_synchronous {
            SqliteSync::Normal => SqliteSynchronous::Normal,
            SqliteSync::Full => SqliteSynchronous::Full,
        };
        options.map_sqlx_sqlite_opts(move |sqlite| {
            sqlite
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(synchronous)
                .busy_timeout(SQLITE_BUSY_TIMEOUT)
        });
    }
    let db = Database::connect(options)
        .await
        .map_err(DataError::Connect)?;
    M::up(&db, None).await.map_err(DataError::Migrate)?;
    Ok(db)
}

/// The names of `M`'s migrations, in order — what databases record in
/// `seaql_migrations`, so a test can pin them (a renamed migration would run again).
pub fn migration_names<M: MigratorTrait>() -> Vec<String> {
    M::migrations()
        .iter()
        .map(|migration| migration.name().to_owned())
        .collect()
}

/// Declares one sea-orm migration: a unit struct named after its file (sea-orm's
/// `mYYYYMMDD_NNNNNN_what.rs` convention, through `DeriveMigrationName`) and its
/// `MigrationTrait` impl. The caller depends on `sea-orm-migration` and writes the two
/// methods as it would in the impl:
///
/// ```ignore
/// trellis_platform::migration! {
///     pub(super) struct Migration;
///
///     async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> { /* … */ }
///
///     async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> { /* … */ }
/// }
/// ```
#[macro_export]
macro_rules! migration {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident;

        async fn up(&self, $up_manager:ident: &SchemaManager) -> Result<(), DbErr> $up:block

        async fn down(&self, $down_manager:ident: &SchemaManager) -> Result<(), DbErr> $down:block
    ) => {
        $(#[$meta])*
        #[derive(Debug, sea_orm_migration::prelude::DeriveMigrationName)]
        $vis struct $name;

        // sea-orm declares `MigrationTrait` under async_trait with `&SchemaManager`; spelt
        // `SchemaManager<'_>` in an impl it no longer matches the trait, so the idiom lint
        // yields here, once for every migration.
        #[allow(elided_lifetimes_in_paths)]
        #[sea_orm_migration::async_trait::async_trait]
        impl sea_orm_migration::MigrationTrait for $name {
            async fn up(
                &self,
                $up_manager: &sea_orm_migration::SchemaManager,
            ) -> Result<(), sea_orm_migration::DbErr> $up

            async fn down(
                &self,
                $down_manager: &sea_orm_migration::SchemaManager,
            ) -> Result<(), sea_orm_migration::DbErr> $down
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_file_is_found_in_file_urls_only() {
        assert_eq!(
            DatabaseConfig::with_url("sqlite://.data/user.db?mode=rwc").sqlite_file(),
            Some(".data/user.db")
        );
        assert_eq!(
            DatabaseConfig::with_url("sqlite::memory:").sqlite_file(),
            None
        );
        assert_eq!(
            DatabaseConfig::with_url("postgres://u:p@h/db").sqlite_file(),
            None
        );
    }

    /// A migrator with no migrations: the tests make their own table.
    struct NoMigrations;

    impl MigratorTrait for NoMigrations {
        fn migrations() -> Vec<Box<dyn sea_orm_migration::MigrationTrait>> {
            Vec::new()
        }
    }

    #[tokio::test]
    async fn two_connections_to_one_sqlite_file_write_while_the_other_reads()
    -> Result<(), Box<dyn std::error::Error>> {
        use sea_orm::{ConnectionTrait as _, TransactionTrait as _};
        let dir = tempfile::tempdir()?;
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("shared.db").display()
        );
        // Two pools on one file, as two replicas of a service have.
        let first = connect::<NoMigrations>(&DatabaseConfig::with_url(&url)).await?;
        let second = connect::<NoMigrations>(&DatabaseConfig::with_url(&url)).await?;
        first
            .execute_unprepared("CREATE TABLE t (who TEXT NOT NULL)")
            .await?;
        first
            .execute_unprepared("INSERT INTO t VALUES ('first')")
            .await?;

        // The first holds a read transaction open; in SQLite's default rollback-journal
        // mode the second's commit would wait for it, then fail "database is locked".
        let reading = first.begin().await?;
        reading.execute_unprepared("SELECT count(*) FROM t").await?;
        second
            .execute_unprepared("INSERT INTO t VALUES ('second')")
            .await?;
        reading.commit().await?;
        first
            .execute_unprepared("INSERT INTO t VALUES ('first again')")
            .await?;

        let count = |db: DatabaseConnection| async move {
            let row = db
                .query_one_raw(sea_orm::Statement::from_string(
                    db.get_database_backend(),
                    "SELECT count(*) AS n, (SELECT journal_mode FROM pragma_journal_mode) AS mode FROM t",
                ))
                .await?
                .ok_or("no row")?;
            Ok::<_, Box<dyn std::error::Error>>((
                row.try_get::<i64>("", "n")?,
                row.try_get::<String>("", "mode")?,
            ))
        };
        assert_eq!(count(second).await?, (3, "wal".to_owned()));
        assert_eq!(count(first).await?, (3, "wal".to_owned()));
        Ok(())
    }

    /// `PRAGMA synchronous` of a connection of `db`: 1 is NORMAL, 2 FULL.
    async fn synchronous(db: &DatabaseConnection) -> Result<i32, Box<dyn std::error::Error>> {
        use sea_orm::ConnectionTrait as _;
        let row = db
            .query_one_raw(sea_orm::Statement::from_string(
                db.get_database_backend(),
                "SELECT synchronous AS s FROM pragma_synchronous",
            ))
            .await?
            .ok_or("no row")?;
        Ok(row.try_get::<i32>("", "s")?)
    }

    #[tokio::test]
    async fn a_sqlite_file_syncs_at_checkpoints_unless_full_is_asked_for()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let url = |name: &str| format!("sqlite://{}?mode=rwc", dir.path().join(name).display());
        let normal = connect::<NoMigrations>(&DatabaseConfig::with_url(url("n.db"))).await?;
        assert_eq!(synchronous(&normal).await?, 1);
        let full = DatabaseConfig {
            sqlite_synchronous: SqliteSync::Full,
            ..DatabaseConfig::with_url(url("f.db"))
        };
        assert_eq!(
            synchronous(&connect::<NoMigrations>(&full).await?).await?,
            2
        );
        Ok(())
    }

    #[test]
    fn unknown_schemes_are_rejected_naming_the_key() {
        let err = DatabaseConfig::with_url("mysql://h/db").validate();
        assert!(matches!(err, Err(ConfigError::Invalid { ref key, .. }) if key == "database.url"));
    }
}
