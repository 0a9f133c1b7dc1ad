//! Running one scenario against a running system: connections and concurrent calls per
//! connection, an open loop at a constant rate or a closed loop, a warm-up, then a
//! measured window whose every response is timed into an HDR histogram and counted by
//! gRPC status, with the server processes' CPU time and memory read around it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use hdrhistogram::Histogram;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use trellis_proto::auth_v1::auth_service_client::AuthServiceClient;
use trellis_proto::auth_v1::{IssueServiceTokenRequest, LoginRequest};
use trellis_proto::notification_v1::notification_internal_service_client::NotificationInternalServiceClient;
use trellis_proto::notification_v1::notification_service_client::NotificationServiceClient;
use trellis_proto::notification_v1::{
    ListNotificationsRequest, SendNotificationRequest, SubscribeRequest,
};
use trellis_proto::user_v1::user_service_client::UserServiceClient;
use trellis_proto::user_v1::{CreateUserRequest, GetUserRequest};

use crate::procstat;
use crate::schedule::Schedule;

/// Highest latency the histograms hold, µs (larger values are recorded as this).
const MAX_LATENCY_US: u64 = 60_000_000;

/// The password of every account the bench makes (the user service wants 12+ bytes).
const PASSWORD: &str = "bench password 0123456789";

/// The `kind` of the notifications the `subscribe` scenario sends; others (welcomes,
/// sign-in notices) arriving on the same streams are ignored.
const BENCH_KIND: &str = "bench";

/// Subscriber streams per HTTP/2 connection: below the services' default
/// `http2_max_concurrent_streams` (200), so no stream waits for a slot.
const SUBSCRIBERS_PER_CONNECTION: usize = 100;

/// The error "code" of an open loop's request that was due in the window but found no
/// free caller before the window ended (the server fell behind the rate).
pub const UNSENT: &str = "UNSENT";

/// How long subscribers keep listening after the last send of the window.
const DELIVERY_GRACE: Duration = Duration::from_secs(2);

/// The addresses of the system's services (`http://host:port`); a scenario needs only
/// some of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Targets {
    /// The user service.
    pub user: Option<String>,
    /// The auth service.
    pub auth: Option<String>,
    /// The notification service.
    pub notification: Option<String>,
    /// Where the `health` scenario calls; the user service when unset.
    pub health: Option<String>,
}

impl Targets {
    /// Parses `user=http://…,auth=http://…,notification=http://…[,health=http://…]`.
    ///
    /// # Errors
    /// An entry that is not `name=uri` or names another service.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut targets = Self::default();
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (name, uri) = entry
                .split_once('=')
                .ok_or_else(|| format!("target `{entry}` is not NAME=URI"))?;
            let slot = match name.trim() {
                "user" => &mut targets.user,
                "auth" => &mut targets.auth,
                "notification" => &mut targets.notification,
                "health" => &mut targets.health,
                other => {
                    return Err(format!(
                        "unknown target `{other}` (user, auth, notification or health)"
                    ));
                }
            };
            *slot = Some(uri.trim().to_owned());
        }
        Ok(targets)
    }

    fn health_target(&self) -> Option<&String> {
        self.health.as_ref().or(self.user.as_ref())
    }
}

/// What a run measures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scenario {
    /// `grpc.health.v1.Health/Check` of `service` (`""`: the whole server). A response
    /// other than SERVING counts as an error `NOT_SERVING`.
    Health {
        /// The service name asked about.
        service: String,
    },
    /// `UserService/GetUser` of the bench's own account, with its access token.
    GetUser,
    /// `NotificationService/ListNotifications` (page size 10) with the account's token.
    ListNotifications,
    /// `UserService/CreateUser` with a new address each call (sign-up).
    CreateUser,
    /// `AuthService/Login` of the bench's account.
    Login,
    /// 80 % GetUser, 15 % ListNotifications, 5 % CreateUser, interleaved.
    Mixed,
    /// Live `Subscribe` streams receiving notifications sent through the internal
    /// `SendNotification`; see [`SubscribeOptions`].
    Subscribe(SubscribeOptions),
}

/// The `subscribe` scenario's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// Live `Subscribe` streams.
    pub subscribers: usize,
    /// Streams per account (the notification service allows 8 per user by default).
    pub subscribers_per_user: usize,
    /// Notifications sent per second, round robin over the accounts.
    pub notifications_per_second: u32,
}

impl Scenario {
    /// The scenario names the command line takes.
    pub const NAMES: [&'static str; 7] = [
        "health",
        "get-user",
        "list-notifications",
        "create-user",
        "login",
        "mixed",
        "subscribe",
    ];

    /// The scenario called `name` (one of [`Self::NAMES`]); `subscribe` takes `options`.
    ///
    /// # Errors
    /// An unknown name.
    pub fn from_name(name: &str, options: SubscribeOptions) -> Result<Self, String> {
        Ok(match name {
            "health" => Self::Health {
                service: String::new(),
            },
            "get-user" => Self::GetUser,
            "list-notifications" => Self::ListNotifications,
            "create-user" => Self::CreateUser,
            "login" => Self::Login,
            "mixed" => Self::Mixed,
            "subscribe" => Self::Subscribe(options),
            other => {
                return Err(format!(
                    "unknown scenario `{other}` (one of {})",
                    Self::NAMES.join(", ")
                ));
            }
        })
    }

    /// The name reports use.
    #[must_use]
    pub fn name(&self) -> String {
        match self {
            Self::Health { service } if service.is_empty() => "health".to_owned(),
            Self::Health { service } => format!("health({service})"),
            Self::GetUser => "get-user".to_owned(),
            Self::ListNotifications => "list-notifications".to_owned(),
            Self::CreateUser => "create-user".to_owned(),
            Self::Login => "login".to_owned(),
            Self::Mixed => "mixed".to_owned(),
            Self::Subscribe(_) => "subscribe".to_owned(),
        }
    }

    /// The call made as request `index` of the run.
    fn op(&self, index: u64) -> Op {
        match self {
            Self::Health { .. } => Op::Health,
            Self::GetUser => Op::GetUser,
            Self::ListNotifications => Op::ListNotifications,
            Self::CreateUser => Op::CreateUser,
            Self::Login => Op::Login,
            Self::Mixed => match index % 20 {
                0..16 => Op::GetUser,
                16..19 => Op::ListNotifications,
                _ => Op::CreateUser,
            },
            Self::Subscribe(_) => Op::SendNotification,
        }
    }

    fn needs_account(&self) -> bool {
        matches!(
            self,
            Self::GetUser | Self::ListNotifications | Self::Login | Self::Mixed
        )
    }
}

/// The shape of the load.
#[derive(Debug, Clone, PartialEq)]
pub struct Load {
    /// HTTP/2 connections (one tonic `Channel` each) per service called.
    pub connections: usize,
    /// Calls in flight at once on each connection.
    pub streams: usize,
    /// Open loop at this many requests per second (latency from each request's intended
    /// send time); `None`: a closed loop, each caller sending when its last call ended.
    pub rate: Option<f64>,
    /// The measured window.
    pub duration: Duration,
    /// Load before the window, not measured.
    pub warmup: Duration,
    /// A call unanswered this long counts as `DEADLINE_EXCEEDED`.
    pub timeout: Duration,
}

/// The system a scenario runs against.
#[derive(Debug, Clone, Default)]
pub struct SystemUnderTest {
    /// Where its services answer.
    pub targets: Targets,
    /// `(name, pid)` of the processes whose CPU time and memory are read around the
    /// window (none: no server figures).
    pub processes: Vec<(String, u32)>,
    /// `(client id, client secret)` a service may exchange for a service token at
    /// `AuthService/IssueServiceToken` (the `subscribe` scenario's internal sends).
    pub service_client: Option<(String, String)>,
}

/// What the server processes used during the window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerUsage {
    /// CPU time of all watched processes together.
    pub cpu: Duration,
    /// Resident memory of each watched process at the end of the window, KiB, by name.
    pub rss_kib: BTreeMap<String, u64>,
}

/// Notifications received on the `subscribe` scenario's streams.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// From each notification's intended send time to its receipt, µs.
    pub latency: Histogram<u64>,
    /// Deliveries received of notifications sent in the window.
    pub received: u64,
    /// Deliveries owed: each notification sent in the window, once per open stream of
    /// its recipient.
    pub expected: u64,
    /// Live streams at the start of the window.
    pub subscribers: u64,
}

/// The raw result of one run (or several merged).
#[derive(Debug, Clone)]
pub struct Measurement {
    /// The scenario's name.
    pub scenario: String,
    /// Latency of every call in the window, OK or not, µs.
    pub latency: Histogram<u64>,
    /// Calls answered OK.
    pub ok: u64,
    /// Failed calls by gRPC code (`NOT_FOUND`, …, and `NOT_SERVING` for a health answer).
    pub errors: BTreeMap<String, u64>,
    /// Length of the measured window(s).
    pub window: Duration,
    /// Server CPU and memory, when processes were watched.
    pub server: Option<ServerUsage>,
    /// The `subscribe` scenario's deliveries.
    pub delivery: Option<Delivery>,
}

impl Measurement {
    fn empty(scenario: String) -> Self {
        Self {
            scenario,
            latency: new_histogram(),
            ok: 0,
            errors: BTreeMap::new(),
            window: Duration::ZERO,
            server: None,
            delivery: None,
        }
    }

    /// Calls due in the window, OK or not (with an open loop's [`UNSENT`] ones).
    #[must_use]
    pub fn requests(&self) -> u64 {
        self.ok + self.error_count()
    }

    /// Calls actually made in the window: [`Self::requests`] but the [`UNSENT`] ones.
    #[must_use]
    pub fn sent(&self) -> u64 {
        self.requests() - self.errors.get(UNSENT).copied().unwrap_or(0)
    }

    /// Failed calls in the window.
    #[must_use]
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Adds `other` (the same scenario, another round) to this one.
    pub fn merge(&mut self, other: &Self) {
        merge_histogram(&mut self.latency, &other.latency);
        self.ok += other.ok;
        for (code, n) in &other.errors {
            *self.errors.entry(code.clone()).or_default() += n;
        }
        self.window += other.window;
        if let Some(theirs) = &other.server {
            let ours = self.server.get_or_insert_with(ServerUsage::default);
            ours.cpu += theirs.cpu;
            for (name, kib) in &theirs.rss_kib {
                let slot = ours.rss_kib.entry(name.clone()).or_default();
                *slot = (*slot).max(*kib);
            }
        }
        if let Some(theirs) = &other.delivery {
            match &mut self.delivery {
                Some(ours) => {
                    merge_histogram(&mut ours.latency, &theirs.latency);
                    ours.received += theirs.received;
                    ours.expected += theirs.expected;
                    ours.subscribers = ours.subscribers.max(theirs.subscribers);
                }
                None => self.delivery = Some(theirs.clone()),
            }
        }
    }
}

/// A histogram of 1 µs to 60 s at 3 significant digits.
#[must_use]
pub fn new_histogram() -> Histogram<u64> {
    // Bounds and precision are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

fn merge_histogram(into: &mut Histogram<u64>, from: &Histogram<u64>) {
    // Both come from `new_histogram`, so addition cannot overflow their range.
    let _ = into.add(from);
}

fn record(histogram: &mut Histogram<u64>, latency: Duration) {
    let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    histogram.saturating_record(us.clamp(1, MAX_LATENCY_US));
}

/// gRPC's canonical name of `code` (`NOT_FOUND`), as the spec and grpcurl spell it.
#[must_use]
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

// === setup ===

/// An account of the bench's, logged in.
#[derive(Debug, Clone)]
struct Account {
    user_id: String,
    email: String,
    bearer: MetadataValue<Ascii>,
}

/// What the calls need, made before the window.
#[derive(Debug, Default)]
struct Fixture {
    /// Makes this run's sign-up addresses unique.
    nonce: String,
    account: Option<Account>,
    /// The `subscribe` scenario's recipients, with their number of open streams.
    recipients: Vec<(Account, u64)>,
    service_bearer: Option<MetadataValue<Ascii>>,
    /// Intended send times in the `subscribe` bodies are µs after this.
    origin: Option<Instant>,
}

async fn connect(uri: &str) -> anyhow::Result<Channel> {
    Endpoint::from_shared(uri.to_owned())
        .with_context(|| format!("`{uri}` is not a URI"))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("connecting to {uri}"))
}

fn require<'a>(
    target: Option<&'a String>,
    name: &str,
    scenario: &Scenario,
) -> anyhow::Result<&'a str> {
    target
        .map(String::as_str)
        .with_context(|| format!("scenario {} needs the {name} target", scenario.name()))
}

fn bearer(token: &str) -> anyhow::Result<MetadataValue<Ascii>> {
    format!("Bearer {token}")
        .parse()
        .context("the token is not valid in a header")
}

/// Signs up `email` and logs in.
async fn make_account(
    targets: &Targets,
    scenario: &Scenario,
    email: String,
) -> anyhow::Result<Account> {
    let mut user =
        UserServiceClient::new(connect(require(targets.user.as_ref(), "user", scenario)?).await?);
    let mut auth =
        AuthServiceClient::new(connect(require(targets.auth.as_ref(), "auth", scenario)?).await?);
    user.create_user(CreateUserRequest {
        email: email.clone(),
        display_name: "Bench".to_owned(),
        password: PASSWORD.to_owned(),
    })
    .await
    .with_context(|| format!("signing up {email} (is the sign-up rate limit off?)"))?;
    let login = auth
        .login(LoginRequest {
            email: email.clone(),
            password: PASSWORD.to_owned(),
        })
        .await
        .with_context(|| format!("logging in {email}"))?
        .into_inner();
    let token = login
        .tokens
        .context("login answered without tokens")?
        .access_token;
    Ok(Account {
        user_id: login.user_id,
        email,
        bearer: bearer(&token)?,
    })
}

fn nonce() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}{:x}", std::process::id(), nanos)
}

async fn setup(scenario: &Scenario, sut: &SystemUnderTest) -> anyhow::Result<Fixture> {
    let nonce = nonce();
    let mut fixture = Fixture {
        nonce: nonce.clone(),
        ..Fixture::default()
    };
    if scenario.needs_account() {
        let email = format!("bench-{nonce}-account@example.com");
        fixture.account = Some(make_account(&sut.targets, scenario, email).await?);
    }
    if let Scenario::Subscribe(options) = scenario {
        let (client_id, client_secret) = sut.service_client.clone().context(
            "the subscribe scenario needs a service client id and secret (--client-secret)",
        )?;
        let per_user = options.subscribers_per_user.max(1);
        let users = options.subscribers.div_ceil(per_user);
        for u in 0..users {
            let email = format!("bench-{nonce}-subscriber-{u}@example.com");
            let account = make_account(&sut.targets, scenario, email).await?;
            let streams = per_user.min(options.subscribers - u * per_user);
            fixture.recipients.push((account, streams as u64));
        }
        let mut auth = AuthServiceClient::new(
            connect(require(sut.targets.auth.as_ref(), "auth", scenario)?).await?,
        );
        let token = auth
            .issue_service_token(IssueServiceTokenRequest {
                client_id,
                client_secret,
            })
            .await
            .context("getting a service token for SendNotification")?
            .into_inner()
            .access_token;
        fixture.service_bearer = Some(bearer(&token)?);
    }
    Ok(fixture)
}

// === calls ===

/// One kind of call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Health,
    GetUser,
    ListNotifications,
    CreateUser,
    Login,
    SendNotification,
}

/// One connection's clients (those the scenario needs).
#[derive(Debug, Clone, Default)]
struct Clients {
    health: Option<HealthClient<Channel>>,
    user: Option<UserServiceClient<Channel>>,
    auth: Option<AuthServiceClient<Channel>>,
    notification: Option<NotificationServiceClient<Channel>>,
    notification_internal: Option<NotificationInternalServiceClient<Channel>>,
}

async fn connect_clients(scenario: &Scenario, targets: &Targets) -> anyhow::Result<Clients> {
    let mut clients = Clients::default();
    let ops: &[Op] = match scenario {
        Scenario::Health { .. } => &[Op::Health],
        Scenario::GetUser => &[Op::GetUser],
        Scenario::ListNotifications => &[Op::ListNotifications],
        Scenario::CreateUser => &[Op::CreateUser],
        Scenario::Login => &[Op::Login],
        Scenario::Mixed => &[Op::GetUser, Op::ListNotifications],
        Scenario::Subscribe(_) => &[Op::SendNotification],
    };
    for op in ops {
        match op {
            Op::Health => {
                let uri = require(targets.health_target(), "user (or health)", scenario)?;
                clients.health = Some(HealthClient::new(connect(uri).await?));
            }
            Op::GetUser | Op::CreateUser => {
                let uri = require(targets.user.as_ref(), "user", scenario)?;
                clients.user = Some(UserServiceClient::new(connect(uri).await?));
            }
            Op::Login => {
                let uri = require(targets.auth.as_ref(), "auth", scenario)?;
                clients.auth = Some(AuthServiceClient::new(connect(uri).await?));
            }
            Op::ListNotifications | Op::SendNotification => {
                let uri = require(targets.notification.as_ref(), "notification", scenario)?;
                let channel = connect(uri).await?;
                clients.notification = Some(NotificationServiceClient::new(channel.clone()));
                clients.notification_internal =
                    Some(NotificationInternalServiceClient::new(channel));
            }
        }
    }
    Ok(clients)
}

fn authorized<T>(message: T, bearer: Option<&MetadataValue<Ascii>>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(bearer) = bearer {
        request
            .metadata_mut()
            .insert("authorization", bearer.clone());
    }
    request
}

/// The failure of a call the bench cannot make (a scenario without the client it needs).
const NO_CLIENT: &str = "FAILED_PRECONDITION";

fn failed(status: Status) -> &'static str {
    code_name(status.code())
}

/// Makes call `op` (request `index` of the run, meant to be sent at `intended`);
/// `Err` carries the failure's code name. Returns the deliveries a sent notification
/// is owed (0 for every other call).
async fn call(
    op: Op,
    clients: &mut Clients,
    fixture: &Fixture,
    scenario: &Scenario,
    index: u64,
    intended: Instant,
) -> Result<u64, &'static str> {
    let account = fixture.account.as_ref();
    let bearer = account.map(|a| &a.bearer);
    match op {
        Op::Health => {
            let Scenario::Health { service } = scenario else {
                return Err(NO_CLIENT);
            };
            let client = clients.health.as_mut().ok_or(NO_CLIENT)?;
            let request = HealthCheckRequest {
                service: service.clone(),
            };
            let answer = client.check(request).await.map_err(failed)?;
            if answer.get_ref().status() == ServingStatus::Serving {
                Ok(0)
            } else {
                Err("NOT_SERVING")
            }
        }
        Op::GetUser => {
            let client = clients.user.as_mut().ok_or(NO_CLIENT)?;
            let id = account.map(|a| a.user_id.clone()).unwrap_or_default();
            let request = authorized(GetUserRequest { id }, bearer);
            client.get_user(request).await.map_err(failed)?;
            Ok(0)
        }
        Op::ListNotifications => {
            let client = clients.notification.as_mut().ok_or(NO_CLIENT)?;
            let request = ListNotificationsRequest {
                page_size: 10,
                ..ListNotificationsRequest::default()
            };
            let request = authorized(request, bearer);
            client.list_notifications(request).await.map_err(failed)?;
            Ok(0)
        }
        Op::CreateUser => {
            let client = clients.user.as_mut().ok_or(NO_CLIENT)?;
            let request = CreateUserRequest {
                email: format!("bench-{}-{index}@example.com", fixture.nonce),
                display_name: "Bench".to_owned(),
                password: PASSWORD.to_owned(),
            };
            client.create_user(request).await.map_err(failed)?;
            Ok(0)
        }
        Op::Login => {
            let client = clients.auth.as_mut().ok_or(NO_CLIENT)?;
            let request = LoginRequest {
                email: account.map(|a| a.email.clone()).unwrap_or_default(),
                password: PASSWORD.to_owned(),
            };
            client.login(request).await.map_err(failed)?;
            Ok(0)
        }
        Op::SendNotification => {
            let client = clients.notification_internal.as_mut().ok_or(NO_CLIENT)?;
            let count = fixture.recipients.len().max(1) as u64;
            let (recipient, streams) = fixture
                .recipients
                .get(usize::try_from(index % count).unwrap_or(0))
                .ok_or(NO_CLIENT)?;
            let origin = fixture.origin.unwrap_or(intended);
            let request = SendNotificationRequest {
                user_id: recipient.user_id.clone(),
                kind: BENCH_KIND.to_owned(),
                title: "bench".to_owned(),
                body: (intended - origin).as_micros().to_string(),
                idempotency_key: format!("bench-{}-{index}", fixture.nonce),
            };
            let request = authorized(request, fixture.service_bearer.as_ref());
            client.send_notification(request).await.map_err(failed)?;
            Ok(*streams)
        }
    }
}

// === the run ===

/// One caller's counts.
#[derive(Debug)]
struct Tally {
    latency: Histogram<u64>,
    ok: u64,
    errors: BTreeMap<String, u64>,
    expected_deliveries: u64,
}

impl Tally {
    fn new() -> Self {
        Self {
            latency: new_histogram(),
            ok: 0,
            errors: BTreeMap::new(),
            expected_deliveries: 0,
        }
    }
}

/// When the window opens and closes.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

impl Window {
    fn contains(&self, t: Instant) -> bool {
        t >= self.start && t < self.end
    }
}

/// One caller: sends until the window ends, one call at a time.
struct Caller {
    clients: Clients,
    fixture: Arc<Fixture>,
    scenario: Arc<Scenario>,
    schedule: Option<Schedule>,
    next: Arc<AtomicU64>,
    window: Window,
    timeout: Duration,
}

impl Caller {
    async fn run(mut self) -> Tally {
        let mut tally = Tally::new();
        loop {
            let index = self.next.fetch_add(1, Ordering::Relaxed);
            let intended = match &self.schedule {
                Some(schedule) => {
                    let at = schedule.intended(index);
                    // Past the window's end nothing more is sent, even a request due
                    // in it that waited for a free caller: it counts as UNSENT.
                    if at >= self.window.end || Instant::now() >= self.window.end {
                        break;
                    }
                    sleep_until(at).await;
                    at
                }
                None => {
                    let now = Instant::now();
                    if now >= self.window.end {
                        break;
                    }
                    now
                }
            };
            let op = self.scenario.op(index);
            let outcome = tokio::time::timeout(
                self.timeout,
                call(
                    op,
                    &mut self.clients,
                    &self.fixture,
                    &self.scenario,
                    index,
                    intended,
                ),
            )
            .await
            .unwrap_or(Err("DEADLINE_EXCEEDED"));
            if !self.window.contains(intended) {
                continue;
            }
            record(&mut tally.latency, intended.elapsed());
            match outcome {
                Ok(owed) => {
                    tally.ok += 1;
                    tally.expected_deliveries += owed;
                }
                Err(code) => *tally.errors.entry(code.to_owned()).or_default() += 1,
            }
        }
        tally
    }
}

fn sample_all(processes: &[(String, u32)]) -> anyhow::Result<Vec<procstat::ProcessSample>> {
    processes
        .iter()
        .map(|(name, pid)| procstat::sample(*pid).with_context(|| format!("reading {name}")))
        .collect()
}

/// Runs `scenario` against `sut` with `load`: sets up what it needs (accounts, tokens,
/// subscriber streams) first, then warms up, then measures for `load.duration`.
///
/// # Errors
/// A bad load shape, a target the scenario needs but `sut` lacks, a failed set-up call
/// (sign-up, login, service token), or a watched process that cannot be read. Failed
/// calls in the window are not errors: they are counted by code.
pub async fn run(
    scenario: &Scenario,
    sut: &SystemUnderTest,
    load: &Load,
) -> anyhow::Result<Measurement> {
    if load.connections == 0 || load.streams == 0 {
        bail!("connections and streams must be at least 1");
    }
    if load.duration.is_zero() {
        bail!("the duration must be longer than zero");
    }
    let rate = match scenario {
        Scenario::Subscribe(options) => Some(f64::from(options.notifications_per_second)),
        _ => load.rate,
    };
    let mut fixture = setup(scenario, sut).await?;
    let mut connections = Vec::with_capacity(load.connections);
    for _ in 0..load.connections {
        connections.push(connect_clients(scenario, &sut.targets).await?);
    }
    let mut receivers = JoinSet::new();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let origin = Instant::now();
    fixture.origin = Some(origin);
    let window = Window {
        start: origin + load.warmup,
        end: origin + load.warmup + load.duration,
    };
    let mut subscribers = 0;
    if let Scenario::Subscribe(_) = scenario {
        subscribers =
            open_subscribers(&fixture, sut, scenario, window, &stopped, &mut receivers).await?;
    }
    let schedule = rate
        .map(|r| Schedule::new(origin, r))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let fixture = Arc::new(fixture);
    let scenario = Arc::new(scenario.clone());
    let next = Arc::new(AtomicU64::new(0));
    let mut callers = JoinSet::new();
    for clients in &connections {
        for _ in 0..load.streams {
            let caller = Caller {
                clients: clients.clone(),
                fixture: Arc::clone(&fixture),
                scenario: Arc::clone(&scenario),
                schedule,
                next: Arc::clone(&next),
                window,
                timeout: load.timeout,
            };
            callers.spawn(caller.run());
        }
    }
    sleep_until(window.start).await;
    let before = sample_all(&sut.processes)?;
    sleep_until(window.end).await;
    let after = sample_all(&sut.processes)?;

    let mut measurement = Measurement::empty(scenario.name());
    measurement.window = load.duration;
    let mut expected = 0;
    while let Some(tally) = callers.join_next().await {
        let tally = tally.context("a caller task failed")?;
        merge_histogram(&mut measurement.latency, &tally.latency);
        measurement.ok += tally.ok;
        for (code, n) in tally.errors {
            *measurement.errors.entry(code).or_default() += n;
        }
        expected += tally.expected_deliveries;
    }
    if let Some(schedule) = &schedule {
        let due = schedule.count_between(window.start, window.end);
        let unsent = due.saturating_sub(measurement.requests());
        if unsent > 0 {
            measurement.errors.insert(UNSENT.to_owned(), unsent);
        }
    }
    if !sut.processes.is_empty() {
        measurement.server = Some(ServerUsage {
            cpu: before
                .iter()
                .zip(&after)
                .map(|(b, a)| a.cpu.saturating_sub(b.cpu))
                .sum(),
            rss_kib: sut
                .processes
                .iter()
                .zip(&after)
                .map(|((name, _), a)| (name.clone(), a.rss_kib))
                .collect(),
        });
    }
    if subscribers > 0 {
        tokio::time::sleep(DELIVERY_GRACE).await;
        let _ = stop.send(true);
        let mut delivery = Delivery {
            latency: new_histogram(),
            received: 0,
            expected,
            subscribers,
        };
        while let Some(tally) = receivers.join_next().await {
            let tally = tally.context("a subscriber task failed")?;
            merge_histogram(&mut delivery.latency, &tally.latency);
            delivery.received += tally.ok;
            for (code, n) in tally.errors {
                *measurement
                    .errors
                    .entry(format!("stream {code}"))
                    .or_default() += n;
            }
        }
        measurement.delivery = Some(delivery);
    }
    Ok(measurement)
}

/// Opens the `subscribe` scenario's streams, each read by a task that times the bench's
/// notifications sent in `window` until `stopped` turns true. Returns how many opened.
async fn open_subscribers(
    fixture: &Fixture,
    sut: &SystemUnderTest,
    scenario: &Scenario,
    window: Window,
    stopped: &tokio::sync::watch::Receiver<bool>,
    receivers: &mut JoinSet<Tally>,
) -> anyhow::Result<u64> {
    let uri = require(sut.targets.notification.as_ref(), "notification", scenario)?;
    let origin = fixture
        .origin
        .context("the origin is set before subscribing")?;
    let total: u64 = fixture.recipients.iter().map(|(_, n)| n).sum();
    let mut channels = Vec::new();
    for _ in 0..usize::try_from(total)?.div_ceil(SUBSCRIBERS_PER_CONNECTION) {
        channels.push(connect(uri).await?);
    }
    let mut opened = 0_u64;
    for (account, streams) in &fixture.recipients {
        for _ in 0..*streams {
            let channel = &channels[usize::try_from(opened)? / SUBSCRIBERS_PER_CONNECTION];
            let mut client = NotificationServiceClient::new(channel.clone());
            let mut stream = client
                .subscribe(authorized(
                    SubscribeRequest::default(),
                    Some(&account.bearer),
                ))
                .await
                .context("opening a Subscribe stream")?
                .into_inner();
            let mut stopped = stopped.clone();
            receivers.spawn(async move {
                let mut tally = Tally::new();
                loop {
                    let message = tokio::select! {
                        message = stream.message() => message,
                        _ = stopped.changed() => break,
                    };
                    match message {
                        Ok(Some(response)) => {
                            let Some(n) = response.notification else {
                                continue;
                            };
                            let Ok(us) = n.body.parse::<u64>() else {
                                continue;
                            };
                            let intended = origin + Duration::from_micros(us);
                            if n.kind == BENCH_KIND && window.contains(intended) {
                                record(&mut tally.latency, intended.elapsed());
                                tally.ok += 1;
                            }
                        }
                        Ok(None) => break,
                        Err(status) => {
                            *tally
                                .errors
                                .entry(code_name(status.code()).to_owned())
                                .or_default() += 1;
                            break;
                        }
                    }
                }
                tally
            });
            opened += 1;
        }
    }
    Ok(opened)
}
