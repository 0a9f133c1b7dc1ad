//! The notification domain: what a notification is, the rules of sending one, and live
//! fan-out to a user's open streams ([`hub`]). Storage is reached through
//! [`NotificationRepository`].

pub mod hub;

use std::future::Future;

use chrono::{DateTime, Utc};
use trellis_platform::validation::FieldViolation;
use uuid::Uuid;

use hub::Hub;

/// A stored notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// UUIDv7: id order is creation order.
    pub id: Uuid,
    /// The recipient's user id.
    pub user_id: String,
    /// What happened, e.g. `welcome`.
    pub kind: String,
    /// Short text.
    pub title: String,
    /// Longer text.
    pub body: String,
    /// When it was stored.
    pub create_time: DateTime<Utc>,
    /// When the user marked it read.
    pub read_time: Option<DateTime<Utc>>,
}

/// Everything that can go wrong in a notification operation.
#[derive(Debug, thiserror::Error)]
pub enum NotificationError {
    /// Input broke field rules.
    #[error("invalid input")]
    Invalid(Vec<FieldViolation>),
    /// Anything the caller cannot act on.
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// Storage of notifications, implemented by the storage layer.
pub trait NotificationRepository: Send + Sync + 'static {
    /// Stores `notification` unless `idempotency_key` was stored before; returns the
    /// stored notification and whether it is new.
    fn insert_once(
        &self,
        notification: &Notification,
        idempotency_key: &str,
    ) -> impl Future<Output = Result<(Notification, bool), NotificationError>> + Send;
    /// The user's notifications with an id below `before` (all when `None`), newest
    /// first, at most `limit`.
    fn list(
        &self,
        user_id: &str,
        unread_only: bool,
        before: Option<Uuid>,
        limit: u64,
    ) -> impl Future<Output = Result<Vec<Notification>, NotificationError>> + Send;
    /// The user's notifications with an id above `after`, oldest first, at most `limit`;
    /// only unacknowledged ones when `unacked_only`.
    fn after(
        &self,
        user_id: &str,
        after: Option<Uuid>,
        unacked_only: bool,
        limit: u64,
    ) -> impl Future<Output = Result<Vec<Notification>, NotificationError>> + Send;
    /// Marks the user's notification acknowledged (delivered over Connect).
    fn acknowledge(
        &self,
        user_id: &str,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), NotificationError>> + Send;
    /// Marks the user's notifications among `ids` read; returns how many changed.
    fn mark_read(
        &self,
        user_id: &str,
        ids: &[Uuid],
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<u64, NotificationError>> + Send;
}

/// Field limits, in characters.
const MAX_KIND: usize = 64;
const MAX_TITLE: usize = 200;
const MAX_BODY: usize = 4000;
const MAX_KEY: usize = 128;

/// A notification to send, unvalidated.
#[derive(Debug, Clone)]
pub struct NewNotification<'a> {
    /// Recipient.
    pub user_id: &'a str,
    /// Kind.
    pub kind: &'a str,
    /// Title.
    pub title: &'a str,
    /// Body.
    pub body: &'a str,
    /// Deduplication key.
    pub idempotency_key: &'a str,
}

impl NewNotification<'_> {
    fn validate(&self) -> Vec<FieldViolation> {
        let mut violations = Vec::new();
        let mut check = |field: &'static str, value: &str, max: usize, allow_newlines: bool| {
            let chars = value.chars().count();
            if chars == 0 || chars > max {
                violations.push(FieldViolation::new(
                    field,
                    format!("must be 1 to {max} characters"),
                ));
            } else if value
                .chars()
                .any(|c| c.is_control() && !(allow_newlines && (c == '\n' || c == '\t')))
            {
                violations.push(FieldViolation::new(
                    field,
                    "must not contain control characters",
                ));
            }
        };
        check("user_id", self.user_id, 64, false);
        check("kind", self.kind, MAX_KIND, false);
        check("title", self.title, MAX_TITLE, false);
        check("body", self.body, MAX_BODY, true);
        check("idempotency_key", self.idempotency_key, MAX_KEY, false);
        violations
    }
}

/// The notification operations.
#[derive(Debug)]
pub struct Notifications<R> {
    repository: R,
    hub: Hub,
}

impl<R: NotificationRepository> Notifications<R> {
    /// The operations over `repository`, fanning out through `hub`.
    pub fn new(repository: R, hub: Hub) -> Self {
        Self { repository, hub }
    }

    /// The repository.
    pub fn repository(&self) -> &R {
        &self.repository
    }

    /// The fan-out hub.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Stores a notification (once per idempotency key) and pushes a new one to the
    /// user's open streams.
    ///
    /// # Errors
    /// [`NotificationError::Invalid`] for broken field rules.
    pub async fn send(
        &self,
        new: NewNotification<'_>,
    ) -> Result<(Notification, bool), NotificationError> {
        let violations = new.validate();
        if !violations.is_empty() {
            return Err(NotificationError::Invalid(violations));
        }
        let notification = Notification {
            id: Uuid::now_v7(),
            user_id: new.user_id.to_owned(),
            kind: new.kind.to_owned(),
            title: new.title.to_owned(),
            body: new.body.to_owned(),
            create_time: trellis_platform::data::now(),
            read_time: None,
        };
        let (stored, created) = self
            .repository
            .insert_once(&notification, new.idempotency_key)
            .await?;
        if created {
            // Published after the commit: a stream that misses the broadcast finds the
            // row when it replays.
            self.hub.publish(&stored);
        }
        Ok((stored, created))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_validated_with_their_names() {
        let new = NewNotification {
            user_id: "",
            kind: "welcome",
            title: "Hi\u{0}",
            body: "line one\nline two",
            idempotency_key: "k",
        };
        let fields: Vec<_> = new.validate().into_iter().map(|v| v.field).collect();
        assert_eq!(fields, ["user_id", "title"]);
    }
}
