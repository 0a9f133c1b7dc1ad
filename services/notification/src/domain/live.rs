//! The commit follower: each instance reads every newly committed notification *once*, in
//! sequence order, and hands it to the open streams of its user through the [`Hub`] —
//! however many streams are open, storage is read once per batch of commits, not once per
//! stream.
//!
//! What wakes it (any of these; a spurious wake-up costs one indexed read):
//!
//! - a send on this instance, at once after its commit ([`LiveFeed::committed`]);
//! - another instance's commit, through the storage layer's change watcher
//!   (`crate::storage::watch`: PostgreSQL `LISTEN`, SQLite `PRAGMA data_version`), and
//!   the watcher's reconnection, so every local stream catches up once storage is back;
//! - a slow poll ([`FeedSettings::poll_interval_ms`]), the safety net for a lost wake-up.
//!
//! Sequences are handed out in commit order without gaps (see
//! [`super::Notification::sequence`]), so "every row with a sequence above the last one
//! read" never skips a notification that committed late; a read that fails is retried
//! from the same point, so nothing is lost while storage is away either.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde::Deserialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tower::retry::backoff::{
    Backoff as _, ExponentialBackoff, ExponentialBackoffMaker, MakeBackoff as _,
};
use tower::util::rng::HasherRng;
use trellis_platform::telemetry::TraceContext;

use super::hub::{Delivery, Hub};
use super::{Notification, NotificationError, NotificationRepository};

/// Most committed notifications read per query.
pub const FOLLOW_BATCH: u64 = 500;

/// Trace contexts of this instance's sends kept until the follower reads their rows; a
/// send past it is delivered without joining its trace (nothing else is lost).
const MAX_PENDING_TRACES: usize = 4096;

/// How the commit follower learns of commits (`feed.*`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct FeedSettings {
    /// How often storage is read when nothing woke the follower, ms: the bound on how
    /// late a notification whose wake-up was lost is delivered. Default 1000.
    pub poll_interval_ms: u64,
    /// How often an SQLite file is checked for commits by other processes (`PRAGMA
    /// data_version` on a connection of its own), ms. Default 50; at most 100.
    pub sqlite_check_interval_ms: u64,
}

impl Default for FeedSettings {
    fn default() -> Self {
        Self {
            poll_interval_ms: 1000,
            sqlite_check_interval_ms: 50,
        }
    }
}

impl FeedSettings {
    /// [`Self::poll_interval_ms`] as a duration.
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }

    /// [`Self::sqlite_check_interval_ms`] as a duration.
    pub fn sqlite_check_interval(&self) -> Duration {
        Duration::from_millis(self.sqlite_check_interval_ms)
    }
}

/// The instance's live feed: the [`Hub`] of open streams and the follower's wake-up.
/// Cheap to clone; every clone is the same feed.
#[derive(Debug, Clone, Default)]
pub struct LiveFeed {
    hub: Hub,
    wake: Arc<Notify>,
    /// Trace contexts of this instance's sends, by sequence, until the follower reads them.
    traces: Arc<Mutex<HashMap<i64, TraceContext>>>,
    /// The sequence of the last notification the follower read.
    position: Arc<AtomicI64>,
}

impl LiveFeed {
    /// A feed handing notifications to `hub`'s streams.
    pub fn new(hub: Hub) -> Self {
        Self {
            hub,
            wake: Arc::default(),
            traces: Arc::default(),
            position: Arc::default(),
        }
    }

    /// The sequence of the last notification the follower has read and handed over (0
    /// before its first read): `trellis_notification_feed_sequence`. A replica whose
    /// position stays behind the others' is not hearing of their commits.
    pub fn position(&self) -> i64 {
        self.position.load(Ordering::Relaxed)
    }

    /// The open streams.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Wakes the follower: something may have committed. A wake-up while it reads is
    /// kept, so the follower reads once more after.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Records that this instance committed `notification` (keeping the current span's
    /// trace context for its delivery) and wakes the follower.
    pub fn committed(&self, notification: &Notification) {
        let trace = TraceContext::current();
        if !trace.is_empty() && self.hub.is_watched(&notification.user_id) {
            let mut traces = self.traces.lock();
            if traces.len() < MAX_PENDING_TRACES {
                traces.insert(notification.sequence, trace);
            }
        }
        self.wake();
    }

    /// Hands one committed notification to its user's streams (if they have any).
    fn deliver(&self, notification: Notification) {
        let trace = self
            .traces
            .lock()
            .remove(&notification.sequence)
            .unwrap_or_default();
        self.hub.publish(Delivery {
            notification,
            trace,
        });
    }

    /// Follows commits until `stop`: reads every notification committed after sequence
    /// `from`, in sequence order, and delivers it; then waits for a wake-up or the poll.
    /// Read `from` ([`NotificationRepository::last_sequence`]) before any stream can open,
    /// so a notification committed after a stream replayed is never behind the follower's
    /// start. A read that fails is retried from the same point.
    pub async fn follow<R: NotificationRepository>(
        self,
        repository: &R,
        from: i64,
        settings: FeedSettings,
        stop: CancellationToken,
    ) {
        // A failed read is retried sooner than the poll, never later.
        let retries = backoff(settings.poll_interval().min(Duration::from_secs(5)));
        let mut retry = retries.clone();
        let mut last = from;
        self.position.store(from, Ordering::Relaxed);
        loop {
            let read = self.read_after(repository, &mut last).await;
            if let Err(err) = &read {
                tracing::warn!(error = %anyhow_chain(err), after = last, "live feed cannot read new notifications; retrying");
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(settings.poll_interval()), if read.is_ok() => {}
                () = retry.next_backoff(), if read.is_err() => {}
            }
            if read.is_ok() {
                retry = retries.clone();
            }
        }
    }

    /// Delivers every notification committed after `last`, advancing it.
    async fn read_after<R: NotificationRepository>(
        &self,
        repository: &R,
        last: &mut i64,
    ) -> Result<(), NotificationError> {
        loop {
            let batch = repository.committed_after(*last, FOLLOW_BATCH).await?;
            let full = batch.len() as u64 == FOLLOW_BATCH;
            for notification in batch {
                *last = notification.sequence;
                self.deliver(notification);
            }
            self.position.store(*last, Ordering::Relaxed);
            {
                let mut traces = self.traces.lock();
                if !traces.is_empty() {
                    // A send whose row was read before its trace was kept.
                    let upto = *last;
                    traces.retain(|sequence, _| *sequence > upto);
                }
            }
            if !full {
                return Ok(());
            }
        }
    }
}

/// Retry delays doubling from 100 ms up to `max` (at least 100 ms), with up to 20 %
/// jitter: tower's exponential backoff, as the platform's peer retries use it. Clone a
/// fresh one to start over.
pub(crate) fn backoff(max: Duration) -> ExponentialBackoff {
    const FIRST: Duration = Duration::from_millis(100);
    // The bounds are valid by construction (first ≤ max, max > 0, jitter in 0..=100).
    let mut maker = ExponentialBackoffMaker::new(FIRST, max.max(FIRST), 0.2, HasherRng::default())
        .unwrap_or_default();
    maker.make_backoff()
}

/// Waits `backoff`'s next delay unless `stop` fires first; `false` when it did.
pub(crate) async fn back_off(backoff: &mut ExponentialBackoff, stop: &CancellationToken) -> bool {
    tokio::select! {
        () = stop.cancelled() => false,
        () = backoff.next_backoff() => true,
    }
}

fn anyhow_chain(err: &NotificationError) -> String {
    match err {
        NotificationError::Unexpected(err) => format!("{err:#}"),
        other => other.to_string(),
    }
}
