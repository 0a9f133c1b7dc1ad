//! The gRPC layer of the notification service: wire ⇄ domain, the streams, and the one
//! mapping from [`NotificationError`] to `Status`.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use trellis_platform::auth::Principal;
use trellis_platform::pagination::PageTokenCodec;
use trellis_platform::status::{FieldViolation, internal, invalid_argument, parse_id, parse_ids};
use trellis_proto::notification_v1 as pb;
use uuid::Uuid;

use crate::domain::{
    NewNotification, Notification, NotificationError, NotificationRepository, Notifications,
    PageSize, ReplayFilter, check_mark_read_count,
};

/// Messages buffered per open stream.
const STREAM_BUFFER: usize = 64;

/// Handlers of `NotificationService` and `NotificationInternalService`.
#[derive(Debug)]
pub struct NotificationHandlers<R> {
    notifications: Arc<Notifications<R>>,
    page_tokens: PageTokenCodec,
    shutdown: CancellationToken,
}

impl<R> Clone for NotificationHandlers<R> {
    fn clone(&self) -> Self {
        Self {
            notifications: Arc::clone(&self.notifications),
            page_tokens: self.page_tokens.clone(),
            shutdown: self.shutdown.clone(),
        }
    }
}

impl<R: NotificationRepository> NotificationHandlers<R> {
    /// Handlers over the domain; open streams end with UNAVAILABLE when `shutdown` fires.
    pub fn new(
        notifications: Notifications<R>,
        page_tokens: PageTokenCodec,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            notifications: Arc::new(notifications),
            page_tokens,
            shutdown,
        }
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
        let raw = &request.get_ref().ids;
        // Counted before parsing: a huge list is refused without building one violation
        // per element.
        check_mark_read_count(raw.len())?;
        let ids = parse_ids("ids", raw)?;
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
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let live = self.notifications.subscribe(&user_id);
        let feed = Feed {
            notifications: Arc::clone(&self.notifications),
            user_id,
            filter: ReplayFilter::All,
            tx,
            wrap: |n| pb::SubscribeResponse {
                notification: Some(to_proto(&n)),
            },
        };
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move { feed.run(after, live, None, shutdown).await });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type ConnectStream = NotificationStream<pb::ConnectResponse>;

    async fn connect(
        &self,
        request: Request<Streaming<pb::ConnectRequest>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let user_id = Principal::user_of(&request)?.to_owned();
        let acks = request.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let live = self.notifications.subscribe(&user_id);
        let feed = Feed {
            notifications: Arc::clone(&self.notifications),
            user_id,
            filter: ReplayFilter::Unacknowledged,
            tx,
            wrap: |n| pb::ConnectResponse {
                notification: Some(to_proto(&n)),
            },
        };
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move { feed.run(None, live, Some(acks), shutdown).await });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Feeds one open stream: replay from storage, then live notifications, until the
/// client goes away or the server shuts down.
struct Feed<R, T> {
    notifications: Arc<Notifications<R>>,
    user_id: String,
    /// What to replay from storage: Connect replays only unacknowledged notifications.
    filter: ReplayFilter,
    tx: mpsc::Sender<Result<T, Status>>,
    wrap: fn(Notification) -> T,
}

/// The stream ended (client gone or a send failed): stop feeding.
struct Closed;

impl<R: NotificationRepository, T: Send + 'static> Feed<R, T> {
    async fn run(
        self,
        after: Option<Uuid>,
        mut live: broadcast::Receiver<Notification>,
        mut acks: Option<Streaming<pb::ConnectRequest>>,
        shutdown: CancellationToken,
    ) {
        let mut sent = HashSet::new();
        if self.replay(after, &mut sent).await.is_err() {
            return;
        }
        loop {
            // Biased: acknowledgements already received are stored before the stream is
            // seen closed, so a client that acks and hangs up loses no ack.
            tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    let status = Status::unavailable("server shutting down; reconnect to resume");
                    drop(self.tx.send(Err(status)).await);
                    return;
                }
                ack = next_ack(&mut acks) => match ack {
                    Some(id) => {
                        if let Err(err) = self.notifications.acknowledge(&self.user_id, id).await {
                            drop(self.tx.send(Err(Status::from(err))).await);
                            return;
                        }
                    }
                    None => return,
                },
                message = live.recv() => match message {
                    Ok(notification) => {
                        if sent.insert(notification.id) && self.send(notification).await.is_err() {
                            return;
                        }
                    }
                    // Too far behind for the buffer: catch up from storage.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if self.replay(after, &mut sent).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                () = self.tx.closed() => return,
            }
        }
    }

    /// Sends every stored notification after `after` not yet sent on this stream.
    async fn replay(&self, after: Option<Uuid>, sent: &mut HashSet<Uuid>) -> Result<(), Closed> {
        let mut cursor = after;
        loop {
            let batch = match self
                .notifications
                .replay_batch(&self.user_id, cursor, self.filter)
                .await
            {
                Ok(batch) => batch,
                Err(err) => {
                    drop(self.tx.send(Err(Status::from(err))).await);
                    return Err(Closed);
                }
            };
            for notification in batch.notifications {
                if sent.insert(notification.id) {
                    self.send(notification).await?;
                }
            }
            match batch.next_after {
                Some(next) => cursor = Some(next),
                None => return Ok(()),
            }
        }
    }

    async fn send(&self, notification: Notification) -> Result<(), Closed> {
        self.tx
            .send(Ok((self.wrap)(notification)))
            .await
            .map_err(|_| Closed)
    }
}

/// The next acknowledged id; `None` when the client closed its side (or for Subscribe,
/// which has no acknowledgements: then it never completes). Malformed ids are skipped.
async fn next_ack(acks: &mut Option<Streaming<pb::ConnectRequest>>) -> Option<Uuid> {
    let Some(stream) = acks else {
        return std::future::pending().await;
    };
    loop {
        match stream.message().await {
            Ok(Some(request)) => match Uuid::parse_str(&request.ack_id) {
                Ok(id) => return Some(id),
                Err(_) => {
                    tracing::debug!(ack_id = %request.ack_id, "ignoring malformed acknowledgement")
                }
            },
            Ok(None) | Err(_) => return None,
        }
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
        let caller = Principal::of(&request)?
            .service_name()
            .unwrap_or("?")
            .to_owned();
        let request = request.into_inner();
        let (notification, created) = self
            .notifications
            .send(NewNotification {
                user_id: &request.user_id,
                kind: &request.kind,
                title: &request.title,
                body: &request.body,
                idempotency_key: &request.idempotency_key,
            })
            .await?;
        tracing::info!(notification_id = %notification.id, %caller, created, "notification sent");
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
