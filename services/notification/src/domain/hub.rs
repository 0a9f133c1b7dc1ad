//! Live fan-out: every open stream of a user receives each new notification.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::broadcast;

use super::Notification;

/// Notifications buffered per user for slow streams; a stream further behind replays
/// from storage instead.
const BUFFER: usize = 256;

/// Per-user broadcast channels.
#[derive(Debug, Clone, Default)]
pub struct Hub {
    channels: Arc<Mutex<HashMap<String, broadcast::Sender<Notification>>>>,
}

impl Hub {
    /// A receiver of `user_id`'s new notifications. Subscribe *before* replaying from
    /// storage, so nothing stored in between is missed.
    pub fn subscribe(&self, user_id: &str) -> broadcast::Receiver<Notification> {
        self.channels
            .lock()
            .entry(user_id.to_owned())
            .or_insert_with(|| broadcast::channel(BUFFER).0)
            .subscribe()
    }

    /// Sends `notification` to its user's open streams, if any.
    pub fn publish(&self, notification: &Notification) {
        let mut channels = self.channels.lock();
        if let Some(sender) = channels.get(&notification.user_id)
            && sender.send(notification.clone()).is_err()
        {
            // Nobody listens any more: drop the channel.
            channels.remove(&notification.user_id);
        }
    }
}
