//! Change watchers: how an instance learns that *another* instance (a replica, or another
//! process on the same SQLite file) committed a notification, so its commit follower
//! ([`crate::domain::live`]) reads it at once instead of at its next poll.
//!
//! - **PostgreSQL**: the inserting transaction calls `pg_notify('trellis_notifications',
//!   '<sequence>')` ([`announce`]); PostgreSQL delivers it at commit, in commit order, to
//!   every session that ran `LISTEN trellis_notifications` — one connection per instance
//!   ([`sqlx::postgres::PgListener`] over sea-orm's pool). The payload is a wake-up, not
//!   the data: the follower reads the rows. When the listening connection drops (a
//!   restart, a failover, `pg_terminate_backend`), notifications sent meanwhile are gone,
//!   so once it is back the follower is woken to catch up from storage. `LISTEN` needs a
//!   session of its own: it does not work through a transaction-pooling PgBouncer (point
//!   the service at PostgreSQL directly or at a session-pooling pool), and where it cannot
//!   work the follower's poll still delivers, `feed.poll_interval_ms` late at worst.
//! - **SQLite file**: a connection of its own asks `PRAGMA data_version` every
//!   `feed.sqlite_check_interval_ms`; its value changes when any *other* connection — in
//!   this process or another — committed (<https://www.sqlite.org/pragma.html#pragma_data_version>).
//!   An in-memory database has no other process: nothing to watch.
//!
//! [`sqlx::postgres::PgListener`]: sea_orm::sqlx::postgres::PgListener

use std::time::Duration;

use sea_orm::sqlx::postgres::PgListener;
use sea_orm::sqlx::{self, ConnectOptions as _};
use sea_orm::{ConnectionTrait as _, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr};
use tokio_util::sync::CancellationToken;
use trellis_platform::metrics::prometheus::IntCounter;

use crate::domain::live::{FeedSettings, LiveFeed, back_off, backoff};

/// The PostgreSQL notification channel of committed notifications.
pub const CHANNEL: &str = "trellis_notifications";

/// Announces, inside the inserting transaction `txn`, that notification `sequence`
/// commits with it: `pg_notify` on PostgreSQL (delivered to listeners at commit, never
/// for a rolled-back transaction); nothing on SQLite, whose watcher sees the commit.
///
/// # Errors
/// The database's error.
pub async fn announce(txn: &DatabaseTransaction, sequence: i64) -> Result<(), DbErr> {
    if txn.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    let statement = sea_orm::Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT pg_notify($1, $2)",
        [CHANNEL.into(), sequence.to_string().into()],
    );
    txn.execute_raw(statement).await.map(drop)
}

/// Runs the watcher that fits `db` until `stop`, waking `live` on every commit it learns
/// of and counting in `reconnects` each time its connection was lost and made again
/// (`trellis_notification_feed_reconnects_total`). `sqlite_file` is the path of a
/// file-backed SQLite database (`None` for an in-memory one, which has nothing to watch).
pub async fn run(
    db: DatabaseConnection,
    sqlite_file: Option<String>,
    live: LiveFeed,
    settings: FeedSettings,
    reconnects: IntCounter,
    stop: CancellationToken,
) {
    match db.get_database_backend() {
        DbBackend::Postgres => listen(&db, &live, &reconnects, &stop).await,
        DbBackend::Sqlite if sqlite_file.is_some() => {
            let every = settings.sqlite_check_interval();
            watch_data_version(&db, &live, every, &reconnects, &stop).await;
        }
        _ => {}
    }
}

/// The longest wait between a watcher's attempts to connect.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);

/// Connects with `connect` until it succeeds (`Some`) or `stop` fires (`None`), backing
/// off between failures, which are logged with `what`; returns the connection and how
/// many attempts failed first.
async fn connect_until_stopped<T, E, F>(
    mut connect: impl FnMut() -> F,
    what: &str,
    stop: &CancellationToken,
) -> Option<(T, u32)>
where
    E: std::fmt::Display,
    F: std::future::Future<Output = Result<T, E>>,
{
    let mut failures = 0u32;
    let mut delays = backoff(MAX_RECONNECT_DELAY);
    loop {
        let outcome = tokio::select! {
            () = stop.cancelled() => return None,
            outcome = connect() => outcome,
        };
        match outcome {
            Ok(connection) => return Some((connection, failures)),
            Err(err) => {
                failures = failures.saturating_add(1);
                tracing::warn!(error = %err, "live feed cannot {what}; retrying");
                if !back_off(&mut delays, stop).await {
                    return None;
                }
            }
        }
    }
}

async fn listen(
    db: &DatabaseConnection,
    live: &LiveFeed,
    reconnects: &IntCounter,
    stop: &CancellationToken,
) {
    let pool = db.get_postgres_connection_pool();
    let mut lost = false;
    loop {
        let connect = || async {
            let mut listener = PgListener::connect_with(pool).await?;
            listener.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let what = "LISTEN for commits (the poll still delivers)";
        let Some((mut listener, failures)) = connect_until_stopped(connect, what, stop).await
        else {
            return;
        };
        if lost {
            reconnects.inc();
        }
        if lost || failures > 0 {
            tracing::info!("live feed listens for commits again; catching up from storage");
        }
        // Whatever committed while nobody listened (at start: before this listener).
        live.wake();
        loop {
            let next = tokio::select! {
                () = stop.cancelled() => return,
                next = listener.try_recv() => next,
            };
            match next {
                Ok(Some(_)) => live.wake(),
                Ok(None) => {
                    tracing::warn!("live feed's LISTEN connection was lost; reconnecting");
                    break;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "live feed's LISTEN connection failed; reconnecting");
                    break;
                }
            }
        }
        // Reconnect after a short pause (then back off while it keeps failing).
        lost = true;
        if !back_off(&mut backoff(MAX_RECONNECT_DELAY), stop).await {
            return;
        }
    }
}

async fn watch_data_version(
    db: &DatabaseConnection,
    live: &LiveFeed,
    every: Duration,
    reconnects: &IntCounter,
    stop: &CancellationToken,
) {
    // Same file, journal mode and busy timeout as the pool, on a connection of its own:
    // `data_version` only moves for commits made by *other* connections.
    let options = db.get_sqlite_connection_pool().connect_options();
    let mut lost = false;
    loop {
        let what = "open a connection to watch the database";
        let Some((mut connection, _)) =
            connect_until_stopped(|| options.connect(), what, stop).await
        else {
            return;
        };
        if lost {
            reconnects.inc();
        }
        let mut seen: Option<i64> = None;
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let version = sqlx::query_scalar::<_, i64>("PRAGMA data_version")
                .fetch_one(&mut connection)
                .await;
            match version {
                Ok(version) => {
                    if seen.is_some_and(|seen| seen != version) {
                        live.wake();
                    }
                    seen = Some(version);
                }
                Err(err) => {
                    tracing::warn!(error = %err, "live feed cannot read data_version; reopening its connection");
                    live.wake();
                    lost = true;
                    break;
                }
            }
        }
    }
}
