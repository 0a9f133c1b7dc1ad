//! The load a fault runs under, and the log of every operation: an open loop of
//! sign-ups, logins, GetUser and SendNotification at a fixed rate, each operation
//! recorded with its outcome — ok, failed, or indeterminate (a write whose fate the
//! client cannot know: the deadline passed or the connection broke after it was sent) —
//! and live `Subscribe` streams that resume with `after` whenever they end, recording
//! every notification they receive.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::Mutex;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};
use trellis_platform::peer::{PeerChannel, PeerConfig, Peers};
use trellis_proto::auth_v1::auth_service_client::AuthServiceClient;
use trellis_proto::auth_v1::{IssueServiceTokenRequest, LoginRequest};
use trellis_proto::notification_v1::notification_internal_service_client::NotificationInternalServiceClient;
use trellis_proto::notification_v1::notification_service_client::NotificationServiceClient;
use trellis_proto::notification_v1::{SendNotificationRequest, SubscribeRequest};
use trellis_proto::user_v1::user_service_client::UserServiceClient;
use trellis_proto::user_v1::{CreateUserRequest, GetUserRequest};

/// The password of every account a run makes.
pub const PASSWORD: &str = "chaos password 0123456789";
/// The `kind` of the notifications a run sends.
pub const KIND: &str = "chaos";
/// Accounts that receive the run's notifications, each with one live stream.
pub const RECIPIENTS: usize = 4;
/// Deadline of one attempt.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// Attempts of an operation that is safe to retry (GetUser, and SendNotification with
/// its idempotency key); a login is retried only when it was refused unsent
/// (UNAVAILABLE), a sign-up never.
pub const ATTEMPTS: usize = 3;

/// What an operation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// `UserService/CreateUser` (a write, not retried).
    SignUp,
    /// `AuthService/Login` of a recipient (auth calls user's `VerifyCredentials`).
    Login,
    /// `UserService/GetUser` of a recipient.
    GetUser,
    /// `NotificationInternalService/SendNotification` to a recipient (a write with an
    /// idempotency key, retried).
    Notify,
}

impl Kind {
    /// Whether a failed operation could have been retried safely (see [`ATTEMPTS`]).
    #[must_use]
    pub fn retriable(self) -> bool {
        !matches!(self, Self::SignUp)
    }

    /// Whether it writes.
    #[must_use]
    pub fn writes(self) -> bool {
        matches!(self, Self::SignUp | Self::Notify)
    }
}

/// An operation's outcome.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Acknowledged; for a write, the id it made.
    Ok(String),
    /// Refused: nothing was done.
    Failed(String),
    /// A write whose fate is unknown.
    Indeterminate(String),
}

/// One logged operation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Op {
    /// What it did.
    pub kind: Kind,
    /// The recipient (index) or, for a sign-up, the email.
    pub key: String,
    /// Its idempotency key (notifications) — also the notification's body.
    pub token: String,
    /// When it was due, from the run's start.
    pub at: Duration,
    /// How long it took, retries included.
    pub took: Duration,
    /// What came of it.
    pub outcome: Outcome,
}

/// A notification of the run's that a live stream received.
#[derive(Debug, Clone)]
pub struct Received {
    /// Its id.
    pub id: String,
    /// Its body: the idempotency key of the send.
    pub body: String,
    /// Its create time, (seconds, nanos).
    pub created: (i64, i32),
}

/// A recipient: an account, its token, and what its stream received.
#[derive(Debug)]
pub struct Recipient {
    /// Its user id.
    pub user_id: String,
    /// `Bearer …`.
    pub bearer: MetadataValue<Ascii>,
    /// The run's notifications its stream received, in order.
    pub received: Mutex<Vec<Received>>,
    /// Times its stream was opened.
    pub opened: std::sync::atomic::AtomicU64,
}

/// The clients of a run.
#[derive(Debug, Clone)]
pub struct Clients {
    /// Every user replica, through the platform's peer channel (as another Trellis
    /// service calls user: peak-EWMA balancing, health, ejection, retries of idempotent
    /// calls).
    pub user: UserServiceClient<PeerChannel>,
    /// Auth.
    pub auth: AuthServiceClient<Channel>,
    /// Notification, for its users.
    pub notification: NotificationServiceClient<Channel>,
    /// Notification, for services.
    pub internal: NotificationInternalServiceClient<Channel>,
    /// A service token for SendNotification.
    pub service_bearer: MetadataValue<Ascii>,
}

/// A channel to `uri` that connects on first use (and again after its peer restarts).
pub fn lazy(uri: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(uri.to_owned())
        .with_context(|| format!("`{uri}` is not a URI"))?
        .connect_timeout(Duration::from_secs(1))
        .connect_lazy())
}

/// The run's clients: `users` balanced, a service token from `service_client`.
///
/// # Errors
/// A URI is malformed or the service token is refused.
pub async fn clients(
    users: &[String],
    auth: &str,
    notification: &str,
    service_client: &(String, String),
) -> anyhow::Result<Clients> {
    let peers = Peers::new(HashMap::from([(
        "user".to_owned(),
        PeerConfig {
            connect_timeout: Duration::from_secs(1),
            ..PeerConfig::with_address(users.join(","))
        },
    )]));
    let mut auth = AuthServiceClient::new(lazy(auth)?);
    let token = auth
        .issue_service_token(IssueServiceTokenRequest {
            client_id: service_client.0.clone(),
            client_secret: service_client.1.clone(),
            audience: "notification".to_owned(),
        })
        .await
        .context("getting a service token for SendNotification")?
        .into_inner()
        .access_token;
    Ok(Clients {
        user: UserServiceClient::new(
            peers
                .anonymous_channel("user")
                .context("a channel to the user replicas")?,
        ),
        auth,
        notification: NotificationServiceClient::new(lazy(notification)?),
        internal: NotificationInternalServiceClient::new(lazy(notification)?),
        service_bearer: bearer(&token)?,
    })
}

fn bearer(token: &str) -> anyhow::Result<MetadataValue<Ascii>> {
    format!("Bearer {token}")
        .parse()
        .context("the token is not valid in a header")
}

/// `message` with `bearer` as its authorization and the attempt deadline.
pub fn authorized<T>(message: T, bearer: &MetadataValue<Ascii>) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", bearer.clone());
    request.set_timeout(ATTEMPT_TIMEOUT);
    request
}

fn timed<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(ATTEMPT_TIMEOUT);
    request
}

/// Logs in `email`; its user id and bearer.
///
/// # Errors
/// The login is refused.
pub async fn login(
    clients: &Clients,
    email: &str,
) -> Result<(String, MetadataValue<Ascii>), Status> {
    let response = with_retries(
        || {
            let mut auth = clients.auth.clone();
            async move {
                auth.login(timed(LoginRequest {
                    email: email.to_owned(),
                    password: PASSWORD.to_owned(),
                }))
                .await
            }
        },
        |status| status.code() == Code::Unavailable,
    )
    .await?
    .into_inner();
    let token = response
        .tokens
        .map(|t| t.access_token)
        .ok_or_else(|| Status::internal("a login without tokens"))?;
    let bearer = bearer(&token).map_err(|e| Status::internal(e.to_string()))?;
    Ok((response.user_id, bearer))
}

/// Signs up and logs in the run's recipients.
///
/// # Errors
/// A sign-up or login fails (the system is not faulted yet).
pub async fn recipients(clients: &Clients, nonce: &str) -> anyhow::Result<Vec<Arc<Recipient>>> {
    let mut all = Vec::new();
    for i in 0..RECIPIENTS {
        let email = format!("chaos-{nonce}-recipient-{i}@example.com");
        clients
            .user
            .clone()
            .create_user(timed(CreateUserRequest {
                email: email.clone(),
                display_name: "Chaos".to_owned(),
                password: PASSWORD.to_owned(),
            }))
            .await
            .with_context(|| format!("signing up {email}"))?;
        let (user_id, bearer) = login(clients, &email)
            .await
            .with_context(|| format!("logging in {email}"))?;
        all.push(Arc::new(Recipient {
            user_id,
            bearer,
            received: Mutex::new(Vec::new()),
            opened: std::sync::atomic::AtomicU64::new(0),
        }));
    }
    Ok(all)
}

/// Keeps `recipient`'s stream open until `stop`: whenever it ends or cannot open, opens
/// it again after 200 ms with `after` set to the last notification received.
pub async fn subscribe(
    clients: Clients,
    recipient: Arc<Recipient>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut after = String::new();
    let mut client = clients.notification;
    while !*stop.borrow() {
        recipient
            .opened
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut request = Request::new(SubscribeRequest {
            after: after.clone(),
        });
        request
            .metadata_mut()
            .insert("authorization", recipient.bearer.clone());
        if let Ok(response) = client.subscribe(request).await {
            let mut stream = response.into_inner();
            loop {
                let message = tokio::select! {
                    message = stream.message() => message,
                    _ = stop.changed() => return,
                };
                let Ok(Some(message)) = message else { break };
                let Some(n) = message.notification else {
                    continue;
                };
                after.clone_from(&n.id);
                if n.kind == KIND {
                    let created = n.create_time.map_or((0, 0), |t| (t.seconds, t.nanos));
                    recipient.received.lock().await.push(Received {
                        id: n.id,
                        body: n.body,
                        created,
                    });
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Whether `status` says the server never processed the call: the connection was told
/// to go away (HTTP/2 GOAWAY) before the call's stream was taken on. gRPC clients retry
/// such calls transparently, whatever the method (gRFC A6); tonic does not, so the
/// load does.
fn unprocessed(status: &Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(error) = source {
        if let Some(h2) = error.downcast_ref::<h2::Error>() {
            return h2.is_go_away() && h2.is_remote();
        }
        source = error.source();
    }
    false
}

/// Calls `attempt` until it answers, at most [`ATTEMPTS`] times: again after an
/// unprocessed call (see [`unprocessed`]), and when `retry` says so of the status.
async fn with_retries<T, F, Fut>(
    mut attempt: F,
    retry: impl Fn(&Status) -> bool,
) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let mut result = attempt().await;
    for _ in 1..ATTEMPTS {
        match &result {
            Err(status) if unprocessed(status) || retry(status) => result = attempt().await,
            _ => break,
        }
    }
    result
}

/// Whether a write's failure with `code` leaves its fate unknown.
fn unknown_fate(code: Code) -> bool {
    matches!(
        code,
        Code::DeadlineExceeded
            | Code::Unavailable
            | Code::Cancelled
            | Code::Unknown
            | Code::Internal
    )
}

/// Runs operation `index` (due `at` after the run's start): its kind is `index % 4`.
pub async fn operate(
    clients: Clients,
    recipients: Arc<Vec<Arc<Recipient>>>,
    nonce: Arc<str>,
    index: usize,
    at: Duration,
) -> Op {
    let started = Instant::now();
    let recipient = &recipients[(index / 4) % recipients.len()];
    let (kind, key, token, result) = match index % 4 {
        0 => {
            let email = format!("chaos-{nonce}-{index}@example.com");
            // Not idempotent: sent again only when the server never took it on.
            let result = with_retries(
                || {
                    let mut user = clients.user.clone();
                    let request = timed(CreateUserRequest {
                        email: email.clone(),
                        display_name: "Chaos".to_owned(),
                        password: PASSWORD.to_owned(),
                    });
                    async move { user.create_user(request).await }
                },
                |_| false,
            )
            .await
            .map(|r| r.into_inner().user.map(|u| u.id).unwrap_or_default());
            (Kind::SignUp, email, String::new(), result)
        }
        1 => {
            let email = format!(
                "chaos-{nonce}-recipient-{}@example.com",
                (index / 4) % recipients.len()
            );
            let result = login(&clients, &email).await.map(|(id, _)| id);
            (Kind::Login, email, String::new(), result)
        }
        2 => {
            let result = with_retries(
                || {
                    let mut user = clients.user.clone();
                    let request = authorized(
                        GetUserRequest {
                            id: recipient.user_id.clone(),
                        },
                        &recipient.bearer,
                    );
                    async move { user.get_user(request).await }
                },
                |status| unknown_fate(status.code()),
            )
            .await
            .map(|r| r.into_inner().user.map(|u| u.id).unwrap_or_default());
            (
                Kind::GetUser,
                recipient.user_id.clone(),
                String::new(),
                result,
            )
        }
        _ => {
            let token = format!("{nonce}-{index}");
            let result = with_retries(
                || {
                    let mut internal = clients.internal.clone();
                    let request = authorized(
                        SendNotificationRequest {
                            user_id: recipient.user_id.clone(),
                            kind: KIND.to_owned(),
                            title: "chaos".to_owned(),
                            body: token.clone(),
                            idempotency_key: token.clone(),
                        },
                        &clients.service_bearer,
                    );
                    async move { internal.send_notification(request).await }
                },
                // The idempotency key makes a second send of a stored one a no-op.
                |status| unknown_fate(status.code()),
            )
            .await
            .map(|r| {
                r.into_inner()
                    .notification
                    .map(|n| n.id)
                    .unwrap_or_default()
            });
            (Kind::Notify, recipient.user_id.clone(), token, result)
        }
    };
    let outcome = match result {
        Ok(id) => Outcome::Ok(id),
        Err(status) if kind.writes() && unknown_fate(status.code()) => {
            Outcome::Indeterminate(format!("{:?}", status.code()))
        }
        Err(status) => Outcome::Failed(format!("{:?}", status.code())),
    };
    Op {
        kind,
        key,
        token,
        at,
        took: started.elapsed(),
        outcome,
    }
}

/// Sends operations at `rate` a second from `origin` until `end` after it, each in a
/// task of its own (an open loop: a slow answer delays no other operation), and returns
/// the log of all of them once the last has ended.
pub async fn open_loop(
    clients: Clients,
    recipients: Arc<Vec<Arc<Recipient>>>,
    nonce: Arc<str>,
    rate: f64,
    origin: Instant,
    end: Duration,
) -> Vec<Op> {
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.1));
    let mut ops = JoinSet::new();
    let mut index = 0_usize;
    loop {
        let at = interval.mul_f64(index as f64);
        if at >= end {
            break;
        }
        tokio::time::sleep_until(origin + at).await;
        ops.spawn(operate(
            clients.clone(),
            Arc::clone(&recipients),
            Arc::clone(&nonce),
            index,
            at,
        ));
        index += 1;
    }
    let mut log = Vec::with_capacity(index);
    while let Some(op) = ops.join_next().await {
        if let Ok(op) = op {
            log.push(op);
        }
    }
    log.sort_by_key(|op| op.at);
    log
}
