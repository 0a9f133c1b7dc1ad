//! The `overload` scenario: what a service does with three times the load it can serve.
//!
//! Three phases against `GetUser`, each a run of its own (its own account, warm-up and
//! window):
//!
//! 1. **capacity**: a closed loop on the configured connections × streams; its OK calls a
//!    second are the capacity `C`;
//! 2. **unloaded**: an open loop at `C / 2`; the p99 of its OK calls is the latency a
//!    caller sees when the service is not overloaded;
//! 3. **overload**: an open loop at `3 × C` for the window, on enough streams that the
//!    load generator never waits for a free one, while a prober on a connection of its
//!    own asks `grpc.health.v1.Health/Check(service="liveness")` every
//!    [`PROBE_INTERVAL`].
//!
//! A service that sheds load (an adaptive concurrency limit answering RESOURCE_EXHAUSTED
//! at once) keeps its goodput — OK calls a second in phase 3 — near `C`, keeps the
//! admitted calls' p99 near phase 2's, and answers every probe. One that queues instead
//! serves the same calls later and later until deadlines expire. The row's figures are
//! phase 3's; its `errors` exclude RESOURCE_EXHAUSTED, which is the push-back this
//! scenario expects, counted in [`OverloadFigures::shed`] and
//! [`OverloadFigures::limited`] instead, and calls no caller was free to send, counted in
//! [`OverloadFigures::unsent`]: the load generator shares the machine's CPUs, and when
//! they are busy every one of its callers can be waiting for an answer while more calls
//! fall due (by Little's law, 256 callers at 80 ms each send at most 3,200 calls a
//! second). They are no answer of the service's; a server that queues ties the callers
//! up too, and the goodput and p99 figures show that.

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::measurement::{LIMITED, UNSENT};
use super::{Load, Measurement, Scenario, SystemUnderTest, connect, require};

/// Offered load of phase 3, as a multiple of the capacity.
pub const OVERLOAD_FACTOR: f64 = 3.0;

/// Load of phase 2, as a fraction of the capacity.
const UNLOADED_FACTOR: f64 = 0.5;

/// How often the prober asks for health during phase 3.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(20);

/// A probe unanswered this long counts as failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Streams per connection in phase 3 at least: at `3 × C` the calls in flight are the
/// admitted ones plus those being refused, and a caller must always be free to send on
/// time (an open loop that waits for callers measures the generator, not the service).
const OVERLOAD_STREAMS: usize = 128;

/// What the `overload` scenario found (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OverloadFigures {
    /// Phase 1: OK calls a second of a closed loop.
    pub capacity_rps: f64,
    /// Phase 2: p99 of OK calls at half the capacity, ms.
    pub unloaded_p99_ms: f64,
    /// Phase 3: calls a second offered (three times the capacity).
    pub offered_rps: f64,
    /// Phase 3: OK calls a second.
    pub goodput_rps: f64,
    /// `goodput_rps / capacity_rps`.
    pub goodput_ratio: f64,
    /// Phase 3: p99 of OK calls, ms.
    pub admitted_p99_ms: f64,
    /// `admitted_p99_ms / unloaded_p99_ms`.
    pub p99_ratio: f64,
    /// Phase 3: calls refused RESOURCE_EXHAUSTED by load shedding (no quota named).
    pub shed: u64,
    /// Phase 3: calls refused RESOURCE_EXHAUSTED by a rate limit (a `QuotaFailure`).
    pub limited: u64,
    /// Phase 3: calls due in the window that no caller was free to send (see the module
    /// docs).
    pub unsent: u64,
    /// Health probes sent in phase 3.
    pub probes: u64,
    /// Probes not answered SERVING within [`PROBE_TIMEOUT`].
    pub probe_failures: u64,
    /// Slowest probe answer, ms.
    pub probe_max_ms: f64,
}

/// What one phase 3 prober saw.
#[derive(Debug, Default)]
struct Probes {
    sent: u64,
    failed: u64,
    slowest: Duration,
}

/// Runs the three phases against `sut` (see the module docs) and returns phase 3's
/// measurement with [`Measurement::overload`] filled in.
///
/// # Errors
/// A phase's set-up fails, the health target cannot be reached, or phase 1 completes no
/// call (there is no capacity to scale from).
pub(super) async fn run(sut: &SystemUnderTest, load: &Load) -> anyhow::Result<Measurement> {
    let get_user = Scenario::GetUser;
    eprintln!("bench:     overload 1/3: capacity (closed loop)");
    let capacity_run = Box::pin(super::run(&get_user, sut, &closed(load))).await?;
    let capacity = per_second(capacity_run.ok, capacity_run.window);
    if capacity <= 0.0 {
        anyhow::bail!("no GetUser call succeeded in the capacity phase: {capacity_run:?}");
    }
    eprintln!(
        "bench:     overload 2/3: unloaded p99 at {:.0}/s (capacity {capacity:.0}/s, {} shed)",
        capacity * UNLOADED_FACTOR,
        shed_in(&capacity_run),
    );
    let unloaded = Box::pin(super::run(
        &get_user,
        sut,
        &open(load, capacity * UNLOADED_FACTOR, load.streams),
    ))
    .await?;
    let offered = capacity * OVERLOAD_FACTOR;
    eprintln!(
        "bench:     overload 3/3: {offered:.0}/s offered, health probed throughout \
         (unloaded p99 {:.2} ms, {} shed)",
        p99_ms(&unloaded.ok_latency),
        shed_in(&unloaded),
    );
    let health_uri = require(sut.targets.health_target(), "user (or health)", &get_user)?;
    let prober = HealthClient::new(connect(health_uri).await?);
    let total = load.warmup + load.duration;
    let overload = open(load, offered, load.streams.max(OVERLOAD_STREAMS));
    let (overloaded, probes) = tokio::join!(
        Box::pin(super::run(&get_user, sut, &overload)),
        probe(prober, total),
    );
    let mut overloaded = overloaded?;
    overloaded.scenario = Scenario::Overload.name();
    let limited = overloaded.errors.remove(LIMITED).unwrap_or(0);
    let shed = overloaded.errors.remove("RESOURCE_EXHAUSTED").unwrap_or(0);
    let unsent = overloaded.errors.remove(UNSENT).unwrap_or(0);
    let goodput = per_second(overloaded.ok, overloaded.window);
    let unloaded_p99 = p99_ms(&unloaded.ok_latency);
    let admitted_p99 = p99_ms(&overloaded.ok_latency);
    overloaded.overload = Some(OverloadFigures {
        capacity_rps: capacity,
        unloaded_p99_ms: unloaded_p99,
        offered_rps: offered,
        goodput_rps: goodput,
        goodput_ratio: goodput / capacity,
        admitted_p99_ms: admitted_p99,
        p99_ratio: if unloaded_p99 > 0.0 {
            admitted_p99 / unloaded_p99
        } else {
            0.0
        },
        shed,
        limited,
        unsent,
        probes: probes.sent,
        probe_failures: probes.failed,
        probe_max_ms: probes.slowest.as_secs_f64() * 1e3,
    });
    Ok(overloaded)
}

/// Calls of `run` answered RESOURCE_EXHAUSTED, whatever refused them.
fn shed_in(run: &Measurement) -> u64 {
    ["RESOURCE_EXHAUSTED", LIMITED]
        .iter()
        .filter_map(|code| run.errors.get(*code))
        .sum()
}

fn closed(load: &Load) -> Load {
    Load {
        rate: None,
        ..load.clone()
    }
}

fn open(load: &Load, rate: f64, streams: usize) -> Load {
    Load {
        rate: Some(rate),
        streams,
        ..load.clone()
    }
}

#[allow(clippy::cast_precision_loss)] // counts far below 2^53
fn per_second(n: u64, window: Duration) -> f64 {
    let seconds = window.as_secs_f64();
    if seconds > 0.0 {
        n as f64 / seconds
    } else {
        0.0
    }
}

fn p99_ms(histogram: &hdrhistogram::Histogram<u64>) -> f64 {
    if histogram.is_empty() {
        return 0.0;
    }
    Duration::from_micros(histogram.value_at_quantile(0.99)).as_secs_f64() * 1e3
}

/// Asks for `liveness` every [`PROBE_INTERVAL`] for `total`, one probe at a time.
async fn probe(mut client: HealthClient<tonic::transport::Channel>, total: Duration) -> Probes {
    let mut probes = Probes::default();
    let end = Instant::now() + total;
    let mut next = Instant::now();
    while next < end {
        tokio::time::sleep_until(next).await;
        next += PROBE_INTERVAL;
        let started = Instant::now();
        let request = HealthCheckRequest {
            service: "liveness".to_owned(),
        };
        let answer = tokio::time::timeout(PROBE_TIMEOUT, client.check(request)).await;
        let took = started.elapsed();
        probes.sent += 1;
        probes.slowest = probes.slowest.max(took);
        let serving = matches!(
            answer,
            Ok(Ok(ref response)) if response.get_ref().status() == ServingStatus::Serving
        );
        if !serving {
            probes.failed += 1;
        }
    }
    probes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_per_second_of_the_window() {
        assert!((per_second(300, Duration::from_secs(3)) - 100.0).abs() < 1e-9);
        assert!(per_second(5, Duration::ZERO).abs() < 1e-9);
    }

    #[test]
    fn the_overload_phase_always_has_more_streams_than_configured_if_few() {
        let load = Load {
            connections: 2,
            streams: 8,
            rate: None,
            duration: Duration::from_secs(3),
            warmup: Duration::from_secs(1),
            timeout: Duration::from_secs(10),
        };
        let phase = open(&load, 900.0, load.streams.max(OVERLOAD_STREAMS));
        assert_eq!(phase.streams, OVERLOAD_STREAMS);
        assert_eq!(phase.rate, Some(900.0));
        assert_eq!(closed(&load).rate, None);
    }
}
