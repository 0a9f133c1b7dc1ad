//! Live fan-out: every open stream of a user is handed each new notification of theirs
//! from memory, within caps on how many streams may be open, per user and in all. The
//! instance's commit follower ([`super::live`]) reads each committed notification once and
//! publishes it here; a delivery carries the trace context of the call that stored it
//! (`SendNotification`, when it was this instance's), so the stream's delivery joins that
//! trace.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Deserialize;
use tokio::sync::broadcast;
use trellis_platform::telemetry::TraceContext;

use super::Notification;

/// Notifications buffered per user for slow streams; a stream further behind is told it
/// lagged and catches up from storage. Each is an `Arc` shared by all the user's streams.
pub const BUFFER: usize = 256;

/// Caps on open `Subscribe`/`Connect` streams (both kinds count alike). A stream opened
/// over a cap is refused; each open stream holds a task and buffers, so an unbounded
/// number is a way to exhaust the server (OWASP API4:2023, unrestricted resource consumption).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct StreamLimits {
    /// Most streams one user may have open at once. Default 8.
    pub max_per_user: usize,
    /// Most streams open at once on this instance, all users together. Default 10,000.
    pub max_total: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            max_per_user: 8,
            max_total: 10_000,
        }
    }
}

/// A stream refused because a cap of [`StreamLimits`] is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StreamLimitReached {
    /// The user already has `max_per_user` streams open.
    #[error("too many open streams for this user (at most {0}); close one before opening another")]
    PerUser(usize),
    /// The instance already has `max_total` streams open.
    #[error("too many open streams on this server (at most {0}); retry later")]
    Total(usize),
}

/// What an open stream is handed: a committed notification and the trace context of the
/// call that stored it (empty while tracing is off, or when another instance stored it).
#[derive(Debug)]
pub struct Delivery {
    /// The committed notification.
    pub notification: Notification,
    /// The trace context of the call that stored it.
    pub trace: TraceContext,
}

/// Per-user broadcast channels of committed notifications, with the count of open
/// streams. A user's entry exists exactly while they have a stream open.
#[derive(Debug, Clone, Default)]
pub struct Hub {
    inner: Arc<Mutex<Inner>>,
    limits: StreamLimits,
}

#[derive(Debug, Default)]
struct Inner {
    users: HashMap<String, Entry>,
    /// Open streams, all users together.
    total: usize,
}

#[derive(Debug)]
struct Entry {
    sender: broadcast::Sender<Arc<Delivery>>,
    /// Open streams of this user; the entry goes when it would reach 0.
    streams: usize,
}

impl Hub {
    /// A hub that admits streams within `limits`.
    pub fn new(limits: StreamLimits) -> Self {
        Self {
            inner: Arc::default(),
            limits,
        }
    }

    /// Opens a stream for `user_id`: a receiver of their new notifications, counted against the caps until it is dropped. Subscribe *before* replaying from
    /// storage, so nothing stored in between is missed.
    ///
    /// # Errors
    /// [`StreamLimitReached`] when the user or the instance is at its cap.
    pub fn subscribe(&self, user_id: &str) -> Result<Subscription, StreamLimitReached> {
        let mut inner = self.inner.lock();
        if inner.total >= self.limits.max_total {
            return Err(StreamLimitReached::Total(self.limits.max_total));
        }
        let entry = inner
            .users
            .entry(user_id.to_owned())
            .or_insert_with(|| Entry {
                sender: broadcast::channel(BUFFER).0,
                streams: 0,
            });
        if entry.streams >= self.limits.max_per_user {
            return Err(StreamLimitReached::PerUser(self.limits.max_per_user));
        }
        entry.streams += 1;
        let receiver = entry.sender.subscribe();
        inner.total += 1;
        Ok(Subscription {
            receiver,
            hub: Arc::clone(&self.inner),
            user_id: user_id.to_owned(),
        })
    }

    /// Whether `user_id` has a stream open on this instance.
    pub fn is_watched(&self, user_id: &str) -> bool {
        self.inner.lock().users.contains_key(user_id)
    }

    /// Hands `delivery` to its user's open streams, if any. Never waits: a stream whose
    /// buffer is full is told it lagged when it next reads.
    pub fn publish(&self, delivery: Delivery) {
        if let Some(entry) = self.inner.lock().users.get(&delivery.notification.user_id) {
            // An error means no receiver is left, which the entry's count rules out but
            // for a stream being dropped right now: nothing to deliver either way.
            drop(entry.sender.send(Arc::new(delivery)));
        }
    }

    /// Users with at least one open stream (the size of the per-user map).
    #[cfg(test)]
    pub fn users(&self) -> usize {
        self.inner.lock().users.len()
    }

    /// Open streams, all users together (the live subscribers).
    pub fn streams(&self) -> usize {
        self.inner.lock().total
    }
}

/// One open stream's place in the [`Hub`]: receives its user's new notifications; dropping it frees its place, and the user's entry with the last one.
#[derive(Debug)]
pub struct Subscription {
    receiver: broadcast::Receiver<Arc<Delivery>>,
    hub: Arc<Mutex<Inner>>,
    user_id: String,
}

impl Subscription {
    /// The user's next new notification, as [`broadcast::Receiver::recv`].
    ///
    /// # Errors
    /// [`broadcast::error::RecvError::Lagged`] when this stream fell more than [`BUFFER`]
    /// behind (catch up from storage).
    pub async fn recv(&mut self) -> Result<Arc<Delivery>, broadcast::error::RecvError> {
        self.receiver.recv().await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut inner = self.hub.lock();
        inner.total = inner.total.saturating_sub(1);
        if let Some(entry) = inner.users.get_mut(&self.user_id) {
            entry.streams = entry.streams.saturating_sub(1);
            if entry.streams == 0 {
                inner.users.remove(&self.user_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(max_per_user: usize, max_total: usize) -> Hub {
        Hub::new(StreamLimits {
            max_per_user,
            max_total,
        })
    }

    #[test]
    fn the_hub_forgets_a_user_when_their_last_stream_ends() -> Result<(), StreamLimitReached> {
        let hub = hub(8, 100);
        let phone = hub.subscribe("ada")?;
        let laptop = hub.subscribe("ada")?;
        let graces = hub.subscribe("grace")?;
        assert_eq!((hub.users(), hub.streams()), (2, 3));
        drop(phone);
        assert_eq!((hub.users(), hub.streams()), (2, 2), "Ada still has one");
        drop(laptop);
        drop(graces);
        assert_eq!(
            (hub.users(), hub.streams()),
            (0, 0),
            "no entry is left behind"
        );
        Ok(())
    }

    #[test]
    fn streams_over_a_cap_are_refused_and_an_ended_stream_frees_its_place()
    -> Result<(), StreamLimitReached> {
        let hub = hub(2, 3);
        let first = hub.subscribe("ada")?;
        let _second = hub.subscribe("ada")?;
        assert_eq!(
            hub.subscribe("ada").err(),
            Some(StreamLimitReached::PerUser(2))
        );
        let _graces = hub.subscribe("grace")?;
        assert_eq!(
            hub.subscribe("alan").err(),
            Some(StreamLimitReached::Total(3))
        );
        // A refused stream takes no place and leaves no entry.
        assert_eq!((hub.users(), hub.streams()), (2, 3));
        drop(first);
        let _again = hub.subscribe("ada")?;
        Ok(())
    }
}
