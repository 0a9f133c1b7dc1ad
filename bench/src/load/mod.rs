//! Running one scenario against a running system: connections and concurrent calls per
//! connection, an open loop at a constant rate or a closed loop, a warm-up, then a
//! measured window whose every response is timed into an HDR histogram and counted by
//! gRPC status, with the server processes' CPU time and memory read around it.
//!
//! `scenario.rs` holds what each scenario sends, `overload.rs` the three-phase `overload`
//! scenario, `fixture.rs` the set-up it needs before
//! the window (accounts, tokens, subscriber streams), `measurement.rs` the callers' loops
//! and what they count; [`run`] here puts them together.

mod fixture;
mod measurement;
mod overload;
mod scenario;

use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};
use tonic::transport::{Channel, Endpoint};

pub use measurement::{
    Delivery, LIMITED, Measurement, ServerUsage, UNSENT, code_name, new_histogram,
};
pub use overload::{OVERLOAD_FACTOR, OverloadFigures, PROBE_INTERVAL};
pub use scenario::{Scenario, SubscribeOptions};

use measurement::Window;

use crate::schedule::Schedule;

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
    /// Where the `subscribe` scenario opens its streams; the notification service (where
    /// it sends) when unset. Another replica of it measures delivery across replicas.
    pub subscribe: Option<String>,
}

impl Targets {
    /// Parses `user=http://…,auth=http://…,notification=http://…[,health=http://…]
    /// [,subscribe=http://…]`.
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
                "subscribe" => &mut targets.subscribe,
                other => {
                    return Err(format!(
                        "unknown target `{other}` (user, auth, notification, health or subscribe)"
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
    if let Scenario::Overload = scenario {
        return overload::run(sut, load).await;
    }
    let rate = match scenario {
        Scenario::Subscribe(options) => Some(f64::from(options.notifications_per_second)),
        _ => load.rate,
    };
    let mut fixture = fixture::setup(scenario, sut).await?;
    let mut connections = Vec::with_capacity(load.connections);
    for _ in 0..load.connections {
        connections.push(scenario::connect_clients(scenario, &sut.targets).await?);
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
            fixture::open_subscribers(&fixture, sut, scenario, window, &stopped, &mut receivers)
                .await?;
    }
    let schedule = rate
        .map(|r| Schedule::new(origin, r))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let callers = measurement::spawn_callers(
        &connections,
        load,
        fixture,
        scenario.clone(),
        schedule,
        window,
    );
    sleep_until(window.start).await;
    let before = measurement::sample_all(&sut.processes)?;
    sleep_until(window.end).await;
    let after = measurement::sample_all(&sut.processes)?;

    let mut measurement = Measurement::empty(scenario.name());
    measurement.window = load.duration;
    let expected = measurement.add_callers(callers).await?;
    if let Some(schedule) = &schedule {
        measurement.count_unsent(schedule, window);
    }
    if !sut.processes.is_empty() {
        measurement.server = Some(ServerUsage::between(&sut.processes, &before, &after));
    }
    if subscribers > 0 {
        tokio::time::sleep(DELIVERY_GRACE).await;
        let _ = stop.send(true);
        measurement
            .add_deliveries(receivers, expected, subscribers)
            .await?;
    }
    Ok(measurement)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_name_each_service_and_where_streams_open() -> Result<(), String> {
        let targets = Targets::parse(
            "user=http://u:1, auth=http://a:2,notification=http://n:3,subscribe=http://n2:3",
        )?;
        assert_eq!(targets.notification.as_deref(), Some("http://n:3"));
        assert_eq!(targets.subscribe.as_deref(), Some("http://n2:3"));
        assert_eq!(
            targets.health_target().map(String::as_str),
            Some("http://u:1")
        );
        let unknown = Targets::parse("billing=http://b:4")
            .err()
            .unwrap_or_default();
        assert!(unknown.contains("subscribe"), "{unknown}");
        Ok(())
    }
}
