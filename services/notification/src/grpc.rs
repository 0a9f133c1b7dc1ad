//! The gRPC layer of the notification service: wire ⇄ domain, the streams, and the one
//! mapping from [`NotificationError`] to `Status`.
//!
//! Connect's acknowledgements are bounded per stream, so a client that sends them
//! faster or more often than it receives notifications costs neither storage writes nor
//! memory beyond a fixed amount:
//!
//! - an acknowledgement is stored only for a notification *this stream* pushed and that
//!   is not yet acknowledged on it (the last [`MAX_UNACKED_PER_STREAM`] pushed are
//!   remembered; an older one is redelivered on the next Connect, as any unacknowledged
//!   notification is): at most one write per notification pushed;
//! - any other acknowledgement (a duplicate, another user's id, an id never pushed
//!   here) is ignored without touching storage and counted in
//!   `trellis_notification_ignored_acks_total`;
//! - a stream may send at most as many messages as it was pushed notifications plus
//!   [`ACK_ALLOWANCE`]; the next one ends it with RESOURCE_EXHAUSTED.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::{Instrument as _, Span};
use trellis_platform::auth::Principal;
use trellis_platform::metrics::prometheus::IntCounter;
use trellis_platform::pagination::PageTokenCodec;
use trellis_platform::status::{FieldViolation, internal, invalid_argument, parse_id, parse_ids};
use trellis_proto::notification_v1 as pb;
use uuid::Uuid;

use crate::domain::hub::Subscription;
use crate::domain::{
    NewNotification, Notification, NotificationError, NotificationRepository, Notifications,
    PageSize, ReplayFilter,
};

/// Messages buffered per open stream.
const STREAM_BUFFER: usize = 64;

/// Notifications a Connect stream remembers as pushed and not yet acknowledged on it;
/// pushing another forgets the oldest (an acknowledgement of it is then ignored, and it
/// is redelivered on the next Connect). 16 bytes each.
pub const MAX_UNACKED_PER_STREAM: usize = 256;

/// Messages a Connect stream may send beyond the number of notifications it was pushed
/// (duplicates, acknowledgements of a previous stream's notifications); one more ends the
/// stream with RESOURCE_EXHAUSTED.
pub const ACK_ALLOWANCE: u64 = 256;

/// Handlers of `NotificationService` and `NotificationInternalService`.
#[derive(Debug)]
pub struct NotificationHandlers<R> {
    notifications: Arc<Notifications<R>>,
    page_tokens: PageTokenCodec,
    shutdown: CancellationToken,
    ignored_acks: Option<IntCounter>,
}

impl<R> Clone for NotificationHandlers<R> {
    fn clone(&self) -> Self {
        Self {
            notifications: Arc::clone(&self.notifications),
            page_tokens: self.page_tokens.clone(),
            shutdown: self.shutdown.clone(),
            ignored_acks: self.ignored_acks.clone(),
        }
    }
}

impl<R: NotificationRepository> NotificationHandlers<R> {
    /// Handlers over the domain; open streams end with UNAVAILABLE when `shutdown` fires.
    pub fn new(
        notifications: Arc<Notifications<R>>,
        page_tokens: PageTokenCodec,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            notifications,
            page_tokens,
            shutdown,
            ignored_acks: None,
        }
    }

    /// Counts the Connect acknowledgements ignored (see the module docs) in `counter`
    /// (`trellis_notification_ignored_acks_total`).
    #[must_use]
    pub fn count_ignored_acks(mut self, counter: IntCounter) -> Self {
        self.ignored_acks = Some(counter);
        self
    }
}

/// The cursor inside a ListNotifications page token: the last id of the previous page.
#[derive(serde::Serialize, serde::Deserialize)]
struct ListCursor {
    before: Uuid,
}

type NotificationStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl<R: NotificationRepository> pb::notification_service_server::NotificationService
    for NotificationHandlers<R>
{
    async fn list_notifications(
        &self,
        request: Request<pb::ListNotificationsRequest>,
    ) -> Result<Response<pb::ListNotificationsResponse>, Status> {
        let user_id = Principal::user_of(&request)?.to_owned();
        let request = request.into_inner();
        let page_size = PageSize::parse(request.page_size)?;
        // The filter is part of the scope: a token is only good for the same filter.
        let scope = format!("ListNotifications?unread_only={}", request.unread_only);
        let before = if request.page_token.is_empty() {
            None
        } else {
            let cursor: ListCursor = self
                .page_tokens
                .decode(&scope, &user_id, &request.page_token)
                .map_err(|err| {
                    invalid_argument(&[FieldViolation::new("page_token", err.to_string())])
                })?;
            Some(cursor.before)
        };
        let page = self
            .notifications
            .list(&user_id, request.unread_only, before, page_size)
            .await?;
        let next_page_token = page
            .next_before
            .map(|before| {
                self.page_tokens
                    .encode(&scope, &user_id, &ListCursor { before })
            })
            .unwrap_or_default();
        Ok(Response::new(pb::ListNotificationsResponse {
            notifications: page.notifications.iter().map(to_proto).collect(),
            next_page_token,
        }))
    }

    async fn mark_read(
        &self,
        request: Request<pb::MarkReadRequest>,
    ) -> Result<Response<pb::MarkReadResponse>, Status> {
        let user_id = Principal::user_of(&request)?.to_owned();
        // At most 1000 UUIDs: the contract's rule, checked before the handler.
        let ids = parse_ids("ids", &request.get_ref().ids)?;
        let updated = self.notifications.mark_read(&user_id, &ids).await?;
        Ok(Response::new(pb::MarkReadResponse {
            updated_count: i32::try_from(updated).unwrap_or(i32::MAX),
        }))
    }

    type SubscribeStream = NotificationStream<pb::SubscribeResponse>;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let user_id = Principal::user_of(&request)?.to_owned();
        let after = match request.get_ref().after.as_str() {
            "" => None,
            raw => Some(parse_id("after", raw)?),
        };
        // The place is taken before the resume point is read, so nothing committed in
        // between is missed.
        let live = self.notifications.subscribe(&user_id)?;
        let last_sent = match after {
            Some(id) => Some(
                self.notifications
                    .resume_point(&user_id, "after", id)
                    .await?,
            ),
            None => None,
        };
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let feed = Feed {
            live,
            notifications: Arc::clone(&self.notifications),
            user_id,
            filter: ReplayFilter::All,
            last_sent,
            acks: AckWindow::default(),
            tx,
            wrap: |n| pb::SubscribeResponse {
                notification: Some(to_proto(n)),
            },
        };
        let shutdown = self.shutdown.clone();
        // In the RPC's span, so the stream's log lines carry its method and request id.
        tokio::spawn(feed.run(None, shutdown).instrument(Span::current()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type ConnectStream = NotificationStream<pb::ConnectResponse>;

    async fn connect(
        &self,
        request: Request<Streaming<pb::ConnectRequest>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let user_id = Principal::user_of(&request)?.to_owned();
        let acks = request.into_inner();
        let live = self.notifications.subscribe(&user_id)?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let feed = Feed {
            live,
            notifications: Arc::clone(&self.notifications),
            user_id,
            filter: ReplayFilter::Unacknowledged,
            last_sent: None,
            acks: AckWindow {
                ignored: self.ignored_acks.clone(),
                ..AckWindow::default()
            },
            tx,
            wrap: |n| pb::ConnectResponse {
                notification: Some(to_proto(n)),
            },
        };
        let shutdown = self.shutdown.clone();
        tokio::spawn(feed.run(Some(acks), shutdown).instrument(Span::current()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Feeds one open stream: replay from storage, then new notifications from memory (the
/// hub, fed by the instance's commit follower in commit order), until the client goes
/// away or the server shuts down. The stream's place in the hub is taken before the
/// replay, so a notification committed meanwhile is either replayed or handed over (and
/// then skipped by its sequence), never missed; a stream that falls more than the hub's
/// buffer behind reads what committed after the last notification *it* sent from storage,
/// so it is neither skipped nor sent twice.
struct Feed<R, T> {
    /// Declared first so the stream's place in the hub is freed before `tx` closes the
    /// response: a client that saw its stream end may open another at once.
    live: Subscription,
    notifications: Arc<Notifications<R>>,
    user_id: String,
    /// What to replay from storage: Connect replays only unacknowledged notifications.
    filter: ReplayFilter,
    /// The sequence of the last notification this stream sent (or resumed after).
    last_sent: Option<i64>,
    /// What Connect's acknowledgements may still name.
    acks: AckWindow,
    tx: mpsc::Sender<Result<T, Status>>,
    wrap: fn(&Notification) -> T,
}

/// The stream ended (client gone or a send failed): stop feeding.
struct Closed;

impl<R: NotificationRepository, T: Send + 'static> Feed<R, T> {
    async fn run(
        mut self,
        mut acks: Option<Streaming<pb::ConnectRequest>>,
        shutdown: CancellationToken,
    ) {
        let reason = self.feed(&mut acks, &shutdown).await;
        tracing::debug!(reason, "notification stream ended");
    }

    /// Feeds until the stream ends; returns why, for the log.
    async fn feed(
        &mut self,
        acks: &mut Option<Streaming<pb::ConnectRequest>>,
        shutdown: &CancellationToken,
    ) -> &'static str {
        if self.catch_up().await.is_err() {
            return "closed during replay";
        }
        loop {
            // Biased: acknowledgements already received are stored before the stream is
            // seen closed, so a client that acks and hangs up loses no ack.
            tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    let status = Status::unavailable("server shutting down; reconnect to resume");
                    drop(self.tx.send(Err(status)).await);
                    return "server shutting down";
                }
                ack = next_ack(acks) => match ack {
                    Ok(Some(id)) => match self.acks.receive(id) {
                        Ack::Store => {
                            if let Err(err) = self.notifications.acknowledge(&self.user_id, id).await {
                                drop(self.tx.send(Err(Status::from(err))).await);
                                return "acknowledgement failed";
                            }
                        }
                        Ack::Ignore => {}
                        Ack::TooMany => {
                            let status = Status::resource_exhausted(format!(
                                "more acknowledgements than notifications pushed on this \
                                 stream (at most {ACK_ALLOWANCE} more); reconnect"
                            ));
                            drop(self.tx.send(Err(status)).await);
                            return "too many acknowledgements";
                        }
                    },
                    Ok(None) => return "client closed its side",
                    Err(status) => {
                        drop(self.tx.send(Err(status)).await);
                        return "refused a request message";
                    }
                },
                message = self.live.recv() => match message {
                    // Already sent (found by a replay): nothing to do.
                    Ok(delivery) if self
                        .last_sent
                        .is_some_and(|last| delivery.notification.sequence <= last) => {}
                    // New: send it from memory, in a span that continues the trace of
                    // the call that stored it (a child of its SendNotification server
                    // span, when this instance stored it).
                    Ok(delivery) => {
                        let span = tracing::info_span!(
                            "notification delivery",
                            sequence = delivery.notification.sequence,
                        );
                        delivery.trace.set_parent_of(&span);
                        let sequence = delivery.notification.sequence;
                        let sent = self
                            .send(&delivery.notification)
                            .instrument(span)
                            .await;
                        if sent.is_err() {
                            return "client went away";
                        }
                        self.last_sent = Some(sequence);
                    }
                    // Too far behind for the buffer: read what committed after the last
                    // one sent, never from the start again; what is still buffered
                    // after that is skipped by its sequence.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if self.catch_up().await.is_err() {
                            return "closed during replay";
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return "hub closed",
                },
                () = self.tx.closed() => return "client went away",
            }
        }
    }

    /// Sends every stored notification committed after the last one sent, in commit
    /// order.
    async fn catch_up(&mut self) -> Result<(), Closed> {
        loop {
            let batch = match self
                .notifications
                .replay_batch(&self.user_id, self.last_sent, self.filter)
                .await
            {
                Ok(batch) => batch,
                Err(err) => {
                    drop(self.tx.send(Err(Status::from(err))).await);
                    return Err(Closed);
                }
            };
            for notification in batch.notifications {
                let sequence = notification.sequence;
                self.send(&notification).await?;
                self.last_sent = Some(sequence);
            }
            if batch.next_after.is_none() {
                return Ok(());
            }
        }
    }

    async fn send(&mut self, notification: &Notification) -> Result<(), Closed> {
        let id = notification.id;
        self.tx
            .send(Ok((self.wrap)(notification)))
            .await
            .map_err(|_| Closed)?;
        if self.filter == ReplayFilter::Unacknowledged {
            self.acks.pushed(id);
        }
        Ok(())
    }
}

/// A Connect stream's record of what its acknowledgements may name (see the module docs).
#[derive(Debug, Default)]
struct AckWindow {
    /// Pushed and not yet acknowledged on this stream, oldest first; at most
    /// [`MAX_UNACKED_PER_STREAM`].
    unacked: VecDeque<Uuid>,
    /// Notifications pushed on this stream.
    pushed: u64,
    /// Messages received on this stream.
    received: u64,
    /// `trellis_notification_ignored_acks_total`.
    ignored: Option<IntCounter>,
}

/// What to do with one acknowledgement.
#[derive(Debug, PartialEq, Eq)]
enum Ack {
    /// Store it: it names a notification this stream pushed, not yet acknowledged.
    Store,
    /// Drop it (counted): it names anything else.
    Ignore,
    /// End the stream: more messages than [`ACK_ALLOWANCE`] beyond the pushes.
    TooMany,
}

impl AckWindow {
    fn pushed(&mut self, id: Uuid) {
        self.pushed += 1;
        if self.unacked.len() == MAX_UNACKED_PER_STREAM {
            self.unacked.pop_front();
        }
        self.unacked.push_back(id);
    }

    fn receive(&mut self, id: Uuid) -> Ack {
        self.received += 1;
        if self.received > self.pushed.saturating_add(ACK_ALLOWANCE) {
            return Ack::TooMany;
        }
        if let Some(at) = self.unacked.iter().position(|unacked| *unacked == id) {
            self.unacked.remove(at);
            return Ack::Store;
        }
        if let Some(ignored) = &self.ignored {
            ignored.inc();
        }
        tracing::debug!(ack_id = %id, "ignored an acknowledgement of a notification this stream did not push");
        Ack::Ignore
    }
}

/// The next acknowledged id; `Ok(None)` when the client closed its side or went away (or,
/// for Subscribe, which has no acknowledgements, never).
///
/// # Errors
/// INVALID_ARGUMENT when `ack_id` is not a UUID (naming `ack_id`) or the message does not
/// decode as a `ConnectRequest` (tonic's codec reports that as INTERNAL, but it is the
/// client's mistake); any other status of the request stream as it came.
async fn next_ack(
    acks: &mut Option<Streaming<pb::ConnectRequest>>,
) -> Result<Option<Uuid>, Status> {
    let Some(stream) = acks else {
        return std::future::pending().await;
    };
    match stream.message().await {
        Ok(Some(request)) => parse_id("ack_id", &request.ack_id).map(Some),
        Ok(None) => Ok(None),
        Err(status) if status.code() == Code::Internal => Err(Status::invalid_argument(format!(
            "malformed ConnectRequest: {}",
            status.message()
        ))),
        // The client reset the stream: nobody is left to tell.
        Err(status) if status.code() == Code::Cancelled => Ok(None),
        Err(status) => Err(status),
    }
}

#[tonic::async_trait]
impl<R: NotificationRepository>
    pb::notification_internal_service_server::NotificationInternalService
    for NotificationHandlers<R>
{
    async fn send_notification(
        &self,
        request: Request<pb::SendNotificationRequest>,
    ) -> Result<Response<pb::SendNotificationResponse>, Status> {
        // The whole subject (`service:<name>`) scopes the idempotency key.
        let sender = Principal::of(&request)?.subject.clone();
        let request = request.into_inner();
        let (notification, created) = self
            .notifications
            .send(NewNotification {
                sender: &sender,
                user_id: &request.user_id,
                kind: &request.kind,
                title: &request.title,
                body: &request.body,
                idempotency_key: &request.idempotency_key,
            })
            .await?;
        tracing::info!(notification_id = %notification.id, %sender, created, "notification sent");
        Ok(Response::new(pb::SendNotificationResponse {
            notification: Some(to_proto(&notification)),
            created,
        }))
    }
}

/// The single mapping from notification errors to gRPC statuses.
impl From<NotificationError> for Status {
    fn from(err: NotificationError) -> Self {
        match err {
            NotificationError::Invalid(violations) => invalid_argument(&violations),
            NotificationError::KeyReused => Status::already_exists(err.to_string()),
            NotificationError::TooManyStreams(limit) => {
                Status::resource_exhausted(limit.to_string())
            }
            NotificationError::Unexpected(err) => internal(err.as_ref()),
        }
    }
}

/// The wire form of a notification.
pub fn to_proto(n: &Notification) -> pb::Notification {
    pb::Notification {
        id: n.id.to_string(),
        user_id: n.user_id.clone(),
        kind: n.kind.clone(),
        title: n.title.clone(),
        body: n.body.clone(),
        create_time: Some(SystemTime::from(n.create_time).into()),
        read_time: n.read_time.map(|t| SystemTime::from(t).into()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::domain::live::{FeedSettings, LiveFeed};
    use crate::domain::testing::{InMemory, new_notification};

    /// More notifications than the hub buffers per user, so a stream that reads none of
    /// them meanwhile lags.
    const PAST_THE_BUFFER: i64 = 300;

    #[test]
    fn only_acks_of_notifications_this_stream_pushed_are_stored_once() {
        let mut window = AckWindow::default();
        let (pushed, other) = (Uuid::now_v7(), Uuid::now_v7());
        window.pushed(pushed);
        assert_eq!(window.receive(other), Ack::Ignore, "never pushed here");
        assert_eq!(window.receive(pushed), Ack::Store);
        assert_eq!(window.receive(pushed), Ack::Ignore, "already acknowledged");
    }

    #[test]
    fn the_window_forgets_the_oldest_push_and_stays_bounded() {
        let mut window = AckWindow::default();
        let ids: Vec<Uuid> = (0..=MAX_UNACKED_PER_STREAM)
            .map(|_| Uuid::now_v7())
            .collect();
        for id in &ids {
            window.pushed(*id);
        }
        assert_eq!(window.unacked.len(), MAX_UNACKED_PER_STREAM);
        assert_eq!(
            window.receive(ids[0]),
            Ack::Ignore,
            "forgotten: redelivered later"
        );
        assert_eq!(window.receive(ids[MAX_UNACKED_PER_STREAM]), Ack::Store);
    }

    #[test]
    fn messages_beyond_the_pushes_and_the_allowance_end_the_stream() {
        let counter = IntCounter::new("ignored", "ignored").expect("valid");
        let mut window = AckWindow {
            ignored: Some(counter.clone()),
            ..AckWindow::default()
        };
        window.pushed(Uuid::now_v7());
        for _ in 0..=ACK_ALLOWANCE {
            assert_eq!(window.receive(Uuid::now_v7()), Ack::Ignore);
        }
        assert_eq!(counter.get(), ACK_ALLOWANCE + 1);
        assert_eq!(window.receive(Uuid::now_v7()), Ack::TooMany);
    }

    /// Notifications over an in-memory repository, with the commit follower running
    /// until `stop`.
    async fn followed(stop: &CancellationToken) -> Arc<Notifications<InMemory>> {
        let notifications = Arc::new(Notifications::new(InMemory::default(), LiveFeed::default()));
        let from = notifications.last_committed().await.expect("in memory");
        let follower = Arc::clone(&notifications);
        let stop = stop.clone();
        tokio::spawn(async move { follower.follow(from, FeedSettings::default(), stop).await });
        notifications
    }

    /// Opens a Subscribe-like stream of `user`'s notifications whose client holds at most
    /// `buffer` unread.
    fn open(
        notifications: &Arc<Notifications<InMemory>>,
        user: &str,
        buffer: usize,
        stop: &CancellationToken,
    ) -> Result<mpsc::Receiver<Result<Notification, Status>>, NotificationError> {
        let live = notifications.subscribe(user)?;
        let (tx, rx) = mpsc::channel(buffer);
        let feed = Feed {
            live,
            notifications: Arc::clone(notifications),
            user_id: user.to_owned(),
            filter: ReplayFilter::All,
            last_sent: None,
            acks: AckWindow::default(),
            tx,
            wrap: Notification::clone,
        };
        tokio::spawn(feed.run(None, stop.clone()));
        Ok(rx)
    }

    /// The next `count` notifications' titles on `rx`, failing on a closed stream or one
    /// silent for 5 s.
    async fn titles(
        rx: &mut mpsc::Receiver<Result<Notification, Status>>,
        count: usize,
    ) -> Vec<String> {
        let mut titles = Vec::new();
        for _ in 0..count {
            let next = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv()).await;
            let notification = next
                .expect("a notification within 5 s")
                .expect("stream open")
                .expect("healthy");
            titles.push(notification.title);
        }
        titles
    }

    /// Lets every spawned task run until it waits (the runtime is the test's one thread).
    async fn settle() {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    async fn send_titled(
        notifications: &Notifications<InMemory>,
        user: &str,
        title: &str,
    ) -> Result<Notification, NotificationError> {
        let key = format!("{user}-{title}");
        let new = NewNotification {
            title,
            ..new_notification(user, &key)
        };
        Ok(notifications.send(new).await?.0)
    }

    #[tokio::test]
    async fn every_stream_gets_its_users_notifications_in_order_from_one_read_each()
    -> Result<(), NotificationError> {
        let stop = CancellationToken::new();
        let notifications = followed(&stop).await;
        let users = ["ada", "grace", "alan"];
        let mut streams = Vec::new();
        for user in users {
            for _ in 0..4 {
                streams.push((user, open(&notifications, user, 1024, &stop)?));
            }
        }
        settle().await; // every stream has replayed (nothing) and waits
        // Interleaved across users, each user's in their own order.
        let per_user = 40;
        let mut expected = std::collections::HashMap::new();
        for i in 0..per_user {
            for user in users {
                let title = format!("{user} {i}");
                send_titled(&notifications, user, &title).await?;
                expected.entry(user).or_insert_with(Vec::new).push(title);
            }
            tokio::task::yield_now().await;
        }
        for (user, rx) in &mut streams {
            assert_eq!(titles(rx, per_user).await, expected[user], "{user}");
        }
        let repository = notifications.repository();
        assert_eq!(
            repository.followed_rows.load(Ordering::Relaxed),
            (per_user * users.len()) as u64,
            "each notification read once by the follower, not once per stream"
        );
        assert_eq!(
            repository.replayed_rows.load(Ordering::Relaxed),
            0,
            "no stream read storage: they opened before any notification"
        );
        stop.cancel();
        Ok(())
    }

    #[tokio::test]
    async fn a_slow_stream_delays_no_other_and_then_gets_everything_once_in_order()
    -> Result<(), NotificationError> {
        let stop = CancellationToken::new();
        let notifications = followed(&stop).await;
        // Its client reads nothing until the end and holds one message at most.
        let mut slow = open(&notifications, "ada", 1, &stop)?;
        let mut ada = open(&notifications, "ada", 1024, &stop)?;
        let mut grace = open(&notifications, "grace", 1024, &stop)?;
        settle().await;
        let count = 300; // past the hub's buffer of 256
        let mut sent = Vec::new();
        for i in 0..count {
            sent.push(
                send_titled(&notifications, "ada", &format!("{i}"))
                    .await?
                    .title,
            );
            send_titled(&notifications, "grace", &format!("{i}")).await?;
            // The follower and the other streams keep up; the slow one cannot.
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        // Everyone else is served while the slow stream's client reads nothing.
        assert_eq!(titles(&mut ada, count).await, sent);
        assert_eq!(titles(&mut grace, count).await, sent);
        // The slow one lagged past the buffer: it catches up from storage, without a gap
        // or a duplicate, and then is live again.
        assert_eq!(titles(&mut slow, count).await, sent);
        let last = send_titled(&notifications, "ada", "last").await?;
        assert_eq!(titles(&mut slow, 1).await, [last.title]);
        assert!(
            notifications
                .repository()
                .replayed_rows
                .load(Ordering::Relaxed)
                > 0,
            "the slow stream read storage to catch up"
        );
        stop.cancel();
        Ok(())
    }

    #[tokio::test]
    async fn a_stream_opened_late_replays_then_goes_live_without_a_duplicate()
    -> Result<(), NotificationError> {
        let stop = CancellationToken::new();
        let notifications = followed(&stop).await;
        let earlier = send_titled(&notifications, "ada", "earlier").await?;
        let mut stream = open(&notifications, "ada", 1024, &stop)?;
        let later = send_titled(&notifications, "ada", "later").await?;
        assert_eq!(titles(&mut stream, 2).await, [earlier.title, later.title]);
        // Nothing else follows (the later one was not sent twice).
        let quiet =
            tokio::time::timeout(std::time::Duration::from_millis(200), stream.recv()).await;
        assert!(quiet.is_err(), "unexpected message: {quiet:?}");
        stop.cancel();
        Ok(())
    }

    #[tokio::test]
    async fn a_lagging_stream_resumes_after_the_last_notification_it_sent_not_from_the_start()
    -> Result<(), NotificationError> {
        let shutdown = CancellationToken::new();
        let notifications = followed(&shutdown).await;
        let live = notifications.subscribe("ada")?;
        for i in 0..PAST_THE_BUFFER {
            notifications
                .send(new_notification("ada", &format!("k{i}")))
                .await?;
        }
        let (tx, mut rx) = mpsc::channel(1024);
        let feed = Feed {
            live,
            notifications: Arc::clone(&notifications),
            user_id: "ada".to_owned(),
            filter: ReplayFilter::All,
            last_sent: None,
            acks: AckWindow::default(),
            tx,
            wrap: Notification::clone,
        };
        tokio::spawn(feed.run(None, shutdown.clone()));

        let mut sequences = Vec::new();
        for _ in 0..PAST_THE_BUFFER {
            let sent = rx.recv().await.expect("open").expect("healthy");
            sequences.push(sent.sequence);
        }
        assert_eq!(sequences, (1..=PAST_THE_BUFFER).collect::<Vec<_>>());
        // Handled after the lag and the buffered wake-ups, in that order.
        let last = notifications.send(new_notification("ada", "last")).await?.0;
        let sent = rx.recv().await.expect("open").expect("healthy");
        assert_eq!(sent, last, "each exactly once, in commit order");

        // The first replay read the 300 and the new one came from memory: the lag read
        // nothing again (replaying from the start would have read 300 more).
        let read = notifications
            .repository()
            .replayed_rows
            .load(Ordering::Relaxed);
        assert_eq!(read, PAST_THE_BUFFER as u64);
        shutdown.cancel();
        Ok(())
    }
}
