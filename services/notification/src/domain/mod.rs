//! The notification domain: what a notification is, the rules of sending, listing
//! (pages), reading and acknowledging them, replaying them to a stream, and live fan-out
//! to a user's open streams ([`hub`], fed by the commit follower in [`live`]). Storage is
//! reached through [`NotificationRepository`].

pub mod hub;
pub mod live;

use std::future::Future;

use chrono::{DateTime, Utc};
use trellis_platform::data::now;
use trellis_platform::pagination;
use trellis_platform::validation::{FieldViolation, text_field};
use uuid::Uuid;

use hub::{StreamLimitReached, Subscription};
use live::{FeedSettings, LiveFeed};
use tokio_util::sync::CancellationToken;

/// A stored notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// UUIDv7, made before the notification is stored: id order is the order in which
    /// sends *began*, not the order in which they committed.
    pub id: Uuid,
    /// Position in commit order, assigned by storage inside the inserting transaction:
    /// every notification committed later has a larger one, so "everything after
    /// sequence N" never skips a notification that committed late. 0 until stored.
    pub sequence: i64,
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

/// ListNotifications page size when the request says 0 (AIP-158).
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// Largest ListNotifications page; larger requests are coerced to it (AIP-158).
pub const MAX_PAGE_SIZE: u32 = 500;
/// Most notifications read from storage per replay batch.
pub const REPLAY_BATCH: u64 = 100;
/// Most ids one MarkRead may name. Larger requests are refused before any id is parsed
/// or any storage is touched: one update binds every id, and databases cap bind
/// parameters (SQLite 32,766, PostgreSQL 65,535), so an unbounded list would fail deep
/// in storage instead of telling the client (OWASP API4:2023).
pub const MAX_MARK_READ_IDS: usize = 1000;

/// A ListNotifications page size that follows AIP-158's rules: at least 1, at most
/// [`MAX_PAGE_SIZE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageSize(u32);

impl PageSize {
    /// Applies [`pagination::page_size`]: 0 means [`DEFAULT_PAGE_SIZE`], above
    /// [`MAX_PAGE_SIZE`] is coerced to it.
    ///
    /// # Errors
    /// [`NotificationError::Invalid`] naming `page_size` when `requested` is negative.
    pub fn parse(requested: i32) -> Result<Self, NotificationError> {
        pagination::page_size(requested, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
            .map(Self)
            .map_err(|err| {
                NotificationError::Invalid(vec![FieldViolation::new("page_size", err.to_string())])
            })
    }

    /// The size, in notifications.
    pub fn get(self) -> u32 {
        self.0
    }
}

/// One page of a user's notifications, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationPage {
    /// The notifications of this page.
    pub notifications: Vec<Notification>,
    /// The id to continue before, when more notifications follow.
    pub next_before: Option<Uuid>,
}

/// Which stored notifications a stream replays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayFilter {
    /// Every notification (Subscribe).
    All,
    /// Only those not yet acknowledged (Connect).
    Unacknowledged,
}

/// One batch of a replay, in commit order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayBatch {
    /// At most [`REPLAY_BATCH`] notifications.
    pub notifications: Vec<Notification>,
    /// The sequence to continue after when the batch was full (more may follow); `None`
    /// when the replay is complete.
    pub next_after: Option<i64>,
}

/// Everything that can go wrong in a notification operation.
#[derive(Debug, thiserror::Error)]
pub enum NotificationError {
    /// Input broke field rules.
    #[error("invalid input")]
    Invalid(Vec<FieldViolation>),
    /// The calling service used this idempotency key before for a notification with a
    /// different recipient, kind, title or body: a retry must repeat the request exactly,
    /// and a new notification needs a new key.
    #[error("idempotency key already used for a different notification")]
    KeyReused,
    /// A stream cap is reached.
    #[error(transparent)]
    TooManyStreams(#[from] StreamLimitReached),
    /// Anything the caller cannot act on.
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// Storage of notifications, implemented by the storage layer.
pub trait NotificationRepository: Send + Sync + 'static {
    /// Stores `notification` with the next sequence in commit order, unless `sender`
    /// stored `idempotency_key` before (keys are scoped to their sender); returns the
    /// stored notification (the earlier one for a known key) and whether it is new.
    fn insert_once(
        &self,
        notification: &Notification,
        sender: &str,
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
    /// Every user's notifications with a sequence above `after`, in sequence order, at
    /// most `limit`: what the commit follower reads.
    fn committed_after(
        &self,
        after: i64,
        limit: u64,
    ) -> impl Future<Output = Result<Vec<Notification>, NotificationError>> + Send;
    /// The largest sequence committed so far (0 when there is none).
    fn last_sequence(&self) -> impl Future<Output = Result<i64, NotificationError>> + Send;
    /// The user's notifications with a sequence above `after` (all when `None`), in
    /// sequence order, at most `limit`; only unacknowledged ones when `unacked_only`.
    fn after(
        &self,
        user_id: &str,
        after: Option<i64>,
        unacked_only: bool,
        limit: u64,
    ) -> impl Future<Output = Result<Vec<Notification>, NotificationError>> + Send;
    /// The sequence of the user's notification `id`; `None` when the user has none with
    /// that id.
    fn sequence_of(
        &self,
        user_id: &str,
        id: Uuid,
    ) -> impl Future<Output = Result<Option<i64>, NotificationError>> + Send;
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
    /// The calling service's principal subject (`service:<name>`): the scope of
    /// `idempotency_key`.
    pub sender: &'a str,
    /// Recipient.
    pub user_id: &'a str,
    /// Kind.
    pub kind: &'a str,
    /// Title.
    pub title: &'a str,
    /// Body.
    pub body: &'a str,
    /// Deduplication key, unique per sender.
    pub idempotency_key: &'a str,
}

impl NewNotification<'_> {
    /// Whether `stored` carries this request's recipient, kind, title and body: only then
    /// is a repeated idempotency key a retry.
    fn matches(&self, stored: &Notification) -> bool {
        stored.user_id == self.user_id
            && stored.kind == self.kind
            && stored.title == self.title
            && stored.body == self.body
    }
}

impl NewNotification<'_> {
    fn validate(&self) -> Vec<FieldViolation> {
        let mut violations = Vec::new();
        let mut check = |field: &'static str, value: &str, max: usize, allow_newlines: bool| {
            if let Err(violation) = text_field(field, value, max, allow_newlines) {
                violations.push(violation);
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
    live: LiveFeed,
}

impl<R: NotificationRepository> Notifications<R> {
    /// The operations over `repository`, fanning out through `live` (whose follower runs
    /// in [`Self::follow`]).
    pub fn new(repository: R, live: LiveFeed) -> Self {
        Self { repository, live }
    }

    /// The last sequence committed so far: where the live feed's follower starts, read
    /// before the service serves (so before any stream opens).
    ///
    /// # Errors
    /// [`NotificationError::Unexpected`] when storage fails.
    pub async fn last_committed(&self) -> Result<i64, NotificationError> {
        self.repository.last_sequence().await
    }

    /// Follows commits after sequence `from` and hands each new notification to its
    /// user's open streams, until `stop` (see [`live`]).
    pub async fn follow(&self, from: i64, settings: FeedSettings, stop: CancellationToken) {
        self.live
            .clone()
            .follow(&self.repository, from, settings, stop)
            .await;
    }

    /// The repository, for tests that look behind the operations.
    #[cfg(test)]
    pub(crate) fn repository(&self) -> &R {
        &self.repository
    }

    /// Opens a stream's place for `user_id`: it receives the sequences of their new
    /// notifications and counts against the stream caps until dropped. Subscribe
    /// *before* replaying, so nothing stored in between is missed.
    ///
    /// # Errors
    /// [`NotificationError::TooManyStreams`] when the user or the instance is at its cap.
    pub fn subscribe(&self, user_id: &str) -> Result<Subscription, NotificationError> {
        Ok(self.live.hub().subscribe(user_id)?)
    }

    /// The sequence of `user_id`'s notification `id`, where a stream resuming after it
    /// continues.
    ///
    /// # Errors
    /// [`NotificationError::Invalid`] naming `field` when the user has no notification
    /// `id`; [`NotificationError::Unexpected`] when storage fails.
    pub async fn resume_point(
        &self,
        user_id: &str,
        field: &str,
        id: Uuid,
    ) -> Result<i64, NotificationError> {
        self.repository
            .sequence_of(user_id, id)
            .await?
            .ok_or_else(|| {
                NotificationError::Invalid(vec![FieldViolation::new(
                    field,
                    "is not one of your notifications",
                )])
            })
    }

    /// One page of `user_id`'s notifications with an id below `before` (from the newest
    /// when `None`), newest first; only unread ones when `unread_only`.
    ///
    /// # Errors
    /// [`NotificationError::Unexpected`] when storage fails.
    pub async fn list(
        &self,
        user_id: &str,
        unread_only: bool,
        before: Option<Uuid>,
        page_size: PageSize,
    ) -> Result<NotificationPage, NotificationError> {
        let limit = u64::from(page_size.get());
        // One extra row tells whether another page follows without a second query.
        let mut notifications = self
            .repository
            .list(user_id, unread_only, before, limit + 1)
            .await?;
        let more = notifications.len() as u64 > limit;
        notifications.truncate(page_size.get() as usize);
        let next_before = if more {
            notifications.last().map(|n| n.id)
        } else {
            None
        };
        Ok(NotificationPage {
            notifications,
            next_before,
        })
    }

    /// Marks `user_id`'s notifications among `ids` read; ids of other users' or unknown
    /// notifications are ignored. Returns how many changed.
    ///
    /// # Errors
    /// [`NotificationError::Unexpected`] when storage fails. The contract caps `ids` at
    /// [`MAX_MARK_READ_IDS`] (`MarkReadRequest`'s rule, checked before the handler).
    pub async fn mark_read(&self, user_id: &str, ids: &[Uuid]) -> Result<u64, NotificationError> {
        self.repository.mark_read(user_id, ids, now()).await
    }

    /// Records that `user_id` received notification `id` (acknowledged over Connect), so
    /// it is not replayed to them again.
    ///
    /// # Errors
    /// [`NotificationError::Unexpected`] when storage fails.
    pub async fn acknowledge(&self, user_id: &str, id: Uuid) -> Result<(), NotificationError> {
        self.repository.acknowledge(user_id, id, now()).await
    }

    /// The next batch of `user_id`'s stored notifications with a sequence above `after`
    /// (from the first when `None`), in commit order. Continue with
    /// [`ReplayBatch::next_after`] until it is `None`.
    ///
    /// # Errors
    /// [`NotificationError::Unexpected`] when storage fails.
    pub async fn replay_batch(
        &self,
        user_id: &str,
        after: Option<i64>,
        filter: ReplayFilter,
    ) -> Result<ReplayBatch, NotificationError> {
        let unacked_only = filter == ReplayFilter::Unacknowledged;
        let notifications = self
            .repository
            .after(user_id, after, unacked_only, REPLAY_BATCH)
            .await?;
        let next_after = if notifications.len() as u64 == REPLAY_BATCH {
            notifications.last().map(|n| n.sequence)
        } else {
            None
        };
        Ok(ReplayBatch {
            notifications,
            next_after,
        })
    }

    /// Stores a notification (once per sender and idempotency key) and wakes the user's
    /// open streams for a new one. A repeated key with the same recipient, kind, title and
    /// body is a retry: it returns the stored notification, not created.
    ///
    /// # Errors
    /// [`NotificationError::Invalid`] for broken field rules;
    /// [`NotificationError::KeyReused`] when the sender's key was used for a different
    /// notification; [`NotificationError::Unexpected`] when storage fails.
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
            sequence: 0,
            user_id: new.user_id.to_owned(),
            kind: new.kind.to_owned(),
            title: new.title.to_owned(),
            body: new.body.to_owned(),
            create_time: now(),
            read_time: None,
        };
        let (stored, created) = self
            .repository
            .insert_once(&notification, new.sender, new.idempotency_key)
            .await?;
        if !created && !new.matches(&stored) {
            return Err(NotificationError::KeyReused);
        }
        if created {
            // After the commit: the follower reads it (with any other instance's commits
            // before it) and hands it to the user's streams.
            self.live.committed(&stored);
        }
        Ok((stored, created))
    }
}

/// An in-memory [`NotificationRepository`] for unit tests of this layer and the one above.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::atomic::{AtomicU64, Ordering};

    use parking_lot::Mutex;

    use super::*;

    /// Notifications in memory, with the storage layer's ordering, filters and
    /// sender-scoped keys; counts the rows replays read.
    #[derive(Default)]
    pub(crate) struct InMemory {
        rows: Mutex<Vec<(Notification, String, String)>>,
        /// Rows returned by [`NotificationRepository::after`] so far.
        pub(crate) replayed_rows: AtomicU64,
        /// Rows returned by [`NotificationRepository::committed_after`] so far.
        pub(crate) followed_rows: AtomicU64,
    }

    impl InMemory {
        /// The rows `keep` keeps, in sequence order, at most `limit`, counted in `read`.
        fn in_sequence(
            &self,
            keep: impl Fn(&Notification) -> bool,
            limit: u64,
            read: &AtomicU64,
        ) -> Vec<Notification> {
            let mut rows: Vec<_> = self
                .rows
                .lock()
                .iter()
                .map(|(n, ..)| n)
                .filter(|n| keep(n))
                .cloned()
                .collect();
            rows.sort_by_key(|n| n.sequence);
            rows.truncate(limit as usize);
            read.fetch_add(rows.len() as u64, Ordering::Relaxed);
            rows
        }
    }

    impl NotificationRepository for InMemory {
        async fn insert_once(
            &self,
            notification: &Notification,
            sender: &str,
            idempotency_key: &str,
        ) -> Result<(Notification, bool), NotificationError> {
            let mut rows = self.rows.lock();
            if let Some((stored, ..)) = rows
                .iter()
                .find(|(_, s, k)| s == sender && k == idempotency_key)
            {
                return Ok((stored.clone(), false));
            }
            let stored = Notification {
                sequence: rows.len() as i64 + 1,
                ..notification.clone()
            };
            rows.push((
                stored.clone(),
                sender.to_owned(),
                idempotency_key.to_owned(),
            ));
            Ok((stored, true))
        }

        async fn list(
            &self,
            user_id: &str,
            unread_only: bool,
            before: Option<Uuid>,
            limit: u64,
        ) -> Result<Vec<Notification>, NotificationError> {
            let mut rows: Vec<_> = self
                .rows
                .lock()
                .iter()
                .map(|(n, ..)| n)
                .filter(|n| n.user_id == user_id && before.is_none_or(|b| n.id < b))
                .filter(|n| !unread_only || n.read_time.is_none())
                .cloned()
                .collect();
            rows.sort_by_key(|n| std::cmp::Reverse(n.id));
            rows.truncate(limit as usize);
            Ok(rows)
        }

        async fn committed_after(
            &self,
            after: i64,
            limit: u64,
        ) -> Result<Vec<Notification>, NotificationError> {
            Ok(self.in_sequence(|n| n.sequence > after, limit, &self.followed_rows))
        }

        async fn last_sequence(&self) -> Result<i64, NotificationError> {
            Ok(self.rows.lock().len() as i64)
        }

        async fn after(
            &self,
            user_id: &str,
            after: Option<i64>,
            _unacked_only: bool,
            limit: u64,
        ) -> Result<Vec<Notification>, NotificationError> {
            Ok(self.in_sequence(
                |n| n.user_id == user_id && after.is_none_or(|a| n.sequence > a),
                limit,
                &self.replayed_rows,
            ))
        }

        async fn sequence_of(
            &self,
            user_id: &str,
            id: Uuid,
        ) -> Result<Option<i64>, NotificationError> {
            Ok(self
                .rows
                .lock()
                .iter()
                .find(|(n, ..)| n.user_id == user_id && n.id == id)
                .map(|(n, ..)| n.sequence))
        }

        async fn acknowledge(
            &self,
            _user_id: &str,
            _id: Uuid,
            _now: DateTime<Utc>,
        ) -> Result<(), NotificationError> {
            Ok(())
        }

        async fn mark_read(
            &self,
            user_id: &str,
            ids: &[Uuid],
            now: DateTime<Utc>,
        ) -> Result<u64, NotificationError> {
            let mut changed = 0;
            for (n, ..) in self.rows.lock().iter_mut() {
                if n.user_id == user_id && ids.contains(&n.id) && n.read_time.is_none() {
                    n.read_time = Some(now);
                    changed += 1;
                }
            }
            Ok(changed)
        }
    }

    /// A request to `user_id` from the user service with key `key`.
    pub(crate) fn new_notification<'a>(user_id: &'a str, key: &'a str) -> NewNotification<'a> {
        NewNotification {
            sender: "service:user",
            user_id,
            kind: "welcome",
            title: "Hi",
            body: "Hello",
            idempotency_key: key,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{InMemory, new_notification};
    use super::*;

    /// `count` notifications of `ada`, sent oldest first.
    async fn sent(count: usize) -> Result<(Notifications<InMemory>, Vec<Uuid>), NotificationError> {
        let notifications = Notifications::new(InMemory::default(), LiveFeed::default());
        let mut ids = Vec::new();
        for i in 0..count {
            let key = format!("k{i}");
            ids.push(
                notifications
                    .send(new_notification("ada", &key))
                    .await?
                    .0
                    .id,
            );
        }
        Ok((notifications, ids))
    }

    #[test]
    fn page_size_follows_aip_158_and_rejects_negative_sizes_naming_the_field() {
        assert_eq!(
            PageSize::parse(0).map(PageSize::get).ok(),
            Some(DEFAULT_PAGE_SIZE)
        );
        assert_eq!(PageSize::parse(7).map(PageSize::get).ok(), Some(7));
        assert_eq!(
            PageSize::parse(i32::MAX).map(PageSize::get).ok(),
            Some(MAX_PAGE_SIZE)
        );
        let fields = match PageSize::parse(-1) {
            Err(NotificationError::Invalid(violations)) => violations,
            other => panic!("expected a violation, got {other:?}"),
        };
        assert_eq!(
            fields,
            [FieldViolation::new(
                "page_size",
                "page size must not be negative"
            )]
        );
    }

    #[tokio::test]
    async fn pages_are_newest_first_and_only_a_page_with_more_after_it_has_a_cursor()
    -> Result<(), NotificationError> {
        let (notifications, ids) = sent(4).await?;
        let size = PageSize::parse(2)?;

        let first = notifications.list("ada", false, None, size).await?;
        let first_ids: Vec<_> = first.notifications.iter().map(|n| n.id).collect();
        assert_eq!(first_ids, [ids[3], ids[2]]);
        assert_eq!(first.next_before, Some(ids[2]));

        // Exactly a page left: no cursor to an empty page.
        let last = notifications
            .list("ada", false, first.next_before, size)
            .await?;
        let last_ids: Vec<_> = last.notifications.iter().map(|n| n.id).collect();
        assert_eq!(last_ids, [ids[1], ids[0]]);
        assert_eq!(last.next_before, None);
        Ok(())
    }

    #[tokio::test]
    async fn mark_read_changes_only_the_users_unread_notifications() -> Result<(), NotificationError>
    {
        let (notifications, ids) = sent(3).await?;
        assert_eq!(notifications.mark_read("grace", &ids).await?, 0);
        assert_eq!(notifications.mark_read("ada", &ids[..2]).await?, 2);
        assert_eq!(notifications.mark_read("ada", &ids).await?, 1);
        let unread = notifications
            .list("ada", true, None, PageSize::parse(0)?)
            .await?;
        assert!(unread.notifications.is_empty());
        Ok(())
    }

    #[tokio::test]
    async fn replay_continues_while_batches_are_full_and_ends_on_a_short_one()
    -> Result<(), NotificationError> {
        let batch = usize::try_from(REPLAY_BATCH).unwrap_or(usize::MAX);
        let (notifications, ids) = sent(batch + 3).await?;

        let first = notifications
            .replay_batch("ada", None, ReplayFilter::All)
            .await?;
        assert_eq!(first.notifications.len(), batch);
        assert_eq!(first.notifications.first().map(|n| n.id), Some(ids[0]));
        assert_eq!(
            first.next_after,
            first.notifications.last().map(|n| n.sequence)
        );

        let rest = notifications
            .replay_batch("ada", first.next_after, ReplayFilter::All)
            .await?;
        let rest_ids: Vec<_> = rest.notifications.iter().map(|n| n.id).collect();
        assert_eq!(rest_ids, ids[batch..]);
        assert_eq!(rest.next_after, None);
        Ok(())
    }

    #[test]
    fn fields_are_validated_with_their_names() {
        let new = NewNotification {
            sender: "service:user",
            user_id: "",
            kind: "welcome",
            title: "Hi\u{0}",
            body: "line one\nline two",
            idempotency_key: "k",
        };
        let fields: Vec<_> = new.validate().into_iter().map(|v| v.field).collect();
        assert_eq!(fields, ["user_id", "title"]);
    }

    #[tokio::test]
    async fn a_key_is_scoped_to_its_sender_and_reusing_it_for_another_payload_is_refused()
    -> Result<(), NotificationError> {
        let notifications = Notifications::new(InMemory::default(), LiveFeed::default());
        let (first, created) = notifications.send(new_notification("ada", "k")).await?;
        assert!(created);

        // The same request again is a retry.
        let (again, created) = notifications.send(new_notification("ada", "k")).await?;
        assert!(!created);
        assert_eq!(again, first);

        // Another sender's key is its own.
        let (auths, created) = notifications
            .send(NewNotification {
                sender: "service:auth",
                ..new_notification("ada", "k")
            })
            .await?;
        assert!(created);
        assert_ne!(auths.id, first.id);

        // The same sender and key with any other field changed is refused.
        let changes = [
            NewNotification {
                user_id: "grace",
                ..new_notification("ada", "k")
            },
            NewNotification {
                kind: "notice",
                ..new_notification("ada", "k")
            },
            NewNotification {
                title: "Other",
                ..new_notification("ada", "k")
            },
            NewNotification {
                body: "Other",
                ..new_notification("ada", "k")
            },
        ];
        for changed in changes {
            let result = notifications.send(changed.clone()).await;
            assert!(
                matches!(result, Err(NotificationError::KeyReused)),
                "{changed:?}: {result:?}"
            );
        }
        Ok(())
    }
}
