//! The set-up a scenario needs before its window: the bench's accounts signed up and
//! logged in, the `subscribe` scenario's recipients and service token, and its
//! subscriber streams opened.

use anyhow::Context as _;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::metadata::{Ascii, MetadataValue};
use trellis_proto::auth_v1::auth_service_client::AuthServiceClient;
use trellis_proto::auth_v1::{IssueServiceTokenRequest, LoginRequest};
use trellis_proto::notification_v1::SubscribeRequest;
use trellis_proto::notification_v1::notification_service_client::NotificationServiceClient;
use trellis_proto::user_v1::CreateUserRequest;
use trellis_proto::user_v1::user_service_client::UserServiceClient;

use super::measurement::{Tally, Window, receive_deliveries};
use super::scenario::{Scenario, authorized};
use super::{SystemUnderTest, Targets, connect, require};

/// The password of every account the bench makes (the user service wants 12+ bytes).
pub(super) const PASSWORD: &str = "bench password 0123456789";

/// Subscriber streams per HTTP/2 connection: below the services' default
/// `http2_max_concurrent_streams` (200), so no stream waits for a slot.
const SUBSCRIBERS_PER_CONNECTION: usize = 100;

/// An account of the bench's, logged in.
#[derive(Debug, Clone)]
pub(super) struct Account {
    pub(super) user_id: String,
    pub(super) email: String,
    pub(super) bearer: MetadataValue<Ascii>,
}

/// What the calls need, made before the window.
#[derive(Debug, Default)]
pub(super) struct Fixture {
    /// Makes this run's sign-up addresses unique.
    pub(super) nonce: String,
    pub(super) account: Option<Account>,
    /// The `subscribe` scenario's recipients, with their number of open streams.
    pub(super) recipients: Vec<(Account, u64)>,
    pub(super) service_bearer: Option<MetadataValue<Ascii>>,
    /// Intended send times in the `subscribe` bodies are µs after this.
    pub(super) origin: Option<Instant>,
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

pub(super) async fn setup(scenario: &Scenario, sut: &SystemUnderTest) -> anyhow::Result<Fixture> {
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
                // The sends go to notification, which refuses a token for another.
                audience: "notification".to_owned(),
            })
            .await
            .context("getting a service token for SendNotification")?
            .into_inner()
            .access_token;
        fixture.service_bearer = Some(bearer(&token)?);
    }
    Ok(fixture)
}

/// Opens the `subscribe` scenario's streams, each read by a task that times the bench's
/// notifications sent in `window` until `stopped` turns true. Returns how many opened.
pub(super) async fn open_subscribers(
    fixture: &Fixture,
    sut: &SystemUnderTest,
    scenario: &Scenario,
    window: Window,
    stopped: &tokio::sync::watch::Receiver<bool>,
    receivers: &mut JoinSet<Tally>,
) -> anyhow::Result<u64> {
    let streams_at = sut
        .targets
        .subscribe
        .as_ref()
        .or(sut.targets.notification.as_ref());
    let uri = require(streams_at, "notification (or subscribe)", scenario)?;
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
            let stream = client
                .subscribe(authorized(
                    SubscribeRequest::default(),
                    Some(&account.bearer),
                ))
                .await
                .context("opening a Subscribe stream")?
                .into_inner();
            receivers.spawn(receive_deliveries(stream, origin, window, stopped.clone()));
            opened += 1;
        }
    }
    Ok(opened)
}
