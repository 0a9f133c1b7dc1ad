//! What each scenario sends: the scenarios the command line names, the calls each one
//! makes (request `index` of a run → one [`Op`]), the clients a connection needs for
//! them, and the requests themselves.

use tokio::time::Instant;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tonic::{Request, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt as _;
use trellis_proto::auth_v1::LoginRequest;
use trellis_proto::auth_v1::auth_service_client::AuthServiceClient;
use trellis_proto::notification_v1::notification_internal_service_client::NotificationInternalServiceClient;
use trellis_proto::notification_v1::notification_service_client::NotificationServiceClient;
use trellis_proto::notification_v1::{ListNotificationsRequest, SendNotificationRequest};
use trellis_proto::user_v1::user_service_client::UserServiceClient;
use trellis_proto::user_v1::{CreateUserRequest, GetUserRequest};

use super::fixture::{Fixture, PASSWORD};
use super::measurement::{LIMITED, code_name};
use super::{Targets, connect, require};

/// The `kind` of the notifications the `subscribe` scenario sends; others (welcomes,
/// sign-in notices) arriving on the same streams are ignored.
pub(super) const BENCH_KIND: &str = "bench";

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
    /// GetUser at three times its measured capacity, with health probed throughout
    /// (see [`super::overload`]).
    Overload,
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
    pub const NAMES: [&'static str; 8] = [
        "health",
        "get-user",
        "list-notifications",
        "create-user",
        "login",
        "mixed",
        "subscribe",
        "overload",
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
            "overload" => Self::Overload,
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
            Self::Overload => "overload".to_owned(),
        }
    }

    /// The call made as request `index` of the run.
    pub(super) fn op(&self, index: u64) -> Op {
        match self {
            Self::Health { .. } => Op::Health,
            Self::GetUser | Self::Overload => Op::GetUser,
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

    pub(super) fn needs_account(&self) -> bool {
        matches!(
            self,
            Self::GetUser | Self::ListNotifications | Self::Login | Self::Mixed | Self::Overload
        )
    }
}

/// One kind of call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    Health,
    GetUser,
    ListNotifications,
    CreateUser,
    Login,
    SendNotification,
}

/// One connection's clients (those the scenario needs).
#[derive(Debug, Clone, Default)]
pub(super) struct Clients {
    health: Option<HealthClient<Channel>>,
    user: Option<UserServiceClient<Channel>>,
    auth: Option<AuthServiceClient<Channel>>,
    notification: Option<NotificationServiceClient<Channel>>,
    notification_internal: Option<NotificationInternalServiceClient<Channel>>,
}

pub(super) async fn connect_clients(
    scenario: &Scenario,
    targets: &Targets,
) -> anyhow::Result<Clients> {
    let mut clients = Clients::default();
    let ops: &[Op] = match scenario {
        Scenario::Health { .. } => &[Op::Health],
        Scenario::GetUser | Scenario::Overload => &[Op::GetUser],
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

pub(super) fn authorized<T>(message: T, bearer: Option<&MetadataValue<Ascii>>) -> Request<T> {
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

/// The failure's code name; a RESOURCE_EXHAUSTED naming a quota (a rate limit's
/// `google.rpc.QuotaFailure`) is [`LIMITED`], told apart from load shedding.
fn failed(status: Status) -> &'static str {
    if status.code() == tonic::Code::ResourceExhausted
        && status.get_details_quota_failure().is_some()
    {
        return LIMITED;
    }
    code_name(status.code())
}

/// Makes call `op` (request `index` of the run, meant to be sent at `intended`);
/// `Err` carries the failure's code name. Returns the deliveries a sent notification
/// is owed (0 for every other call).
pub(super) async fn call(
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
