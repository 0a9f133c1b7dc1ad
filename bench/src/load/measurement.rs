//! What a run measures and how: each caller's loop over the window, the subscribers'
//! receipt of notifications, the HDR histograms and error counts they keep, their merge
//! into one [`Measurement`] (and of rounds into one), and the server processes' usage
//! read around the window.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use hdrhistogram::Histogram;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};
use tonic::Streaming;
use trellis_proto::notification_v1::SubscribeResponse;

use super::Load;
use super::fixture::Fixture;
use super::scenario::{BENCH_KIND, Clients, Scenario, call};
use crate::procstat;
use crate::schedule::Schedule;

/// Highest latency the histograms hold, µs (larger values are recorded as this).
const MAX_LATENCY_US: u64 = 60_000_000;

/// The error "code" of an open loop's request that was due in the window but found no
/// free caller before the window ended (the server fell behind the rate).
pub const UNSENT: &str = "UNSENT";

/// The error "code" of a call refused RESOURCE_EXHAUSTED by a rate limit (the status
/// carries a `google.rpc.QuotaFailure`); RESOURCE_EXHAUSTED without one is load shed.
pub const LIMITED: &str = "RESOURCE_EXHAUSTED (rate limit)";

/// What the server processes used during the window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerUsage {
    /// CPU time of all watched processes together.
    pub cpu: Duration,
    /// Resident memory of each watched process at the end of the window, KiB, by name.
    pub rss_kib: BTreeMap<String, u64>,
}

impl ServerUsage {
    /// The usage of `processes` between samples `before` and `after` of them.
    pub(super) fn between(
        processes: &[(String, u32)],
        before: &[procstat::ProcessSample],
        after: &[procstat::ProcessSample],
    ) -> Self {
        Self {
            cpu: before
                .iter()
                .zip(after)
                .map(|(b, a)| a.cpu.saturating_sub(b.cpu))
                .sum(),
            rss_kib: processes
                .iter()
                .zip(after)
                .map(|((name, _), a)| (name.clone(), a.rss_kib))
                .collect(),
        }
    }
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
    /// Of `received`, notifications a stream had received before.
    pub duplicated: u64,
}

/// The raw result of one run (or several merged).
#[derive(Debug, Clone)]
pub struct Measurement {
    /// The scenario's name.
    pub scenario: String,
    /// Latency of every call in the window, OK or not, µs.
    pub latency: Histogram<u64>,
    /// Latency of the calls answered OK, µs.
    pub ok_latency: Histogram<u64>,
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
    /// The `overload` scenario's figures.
    pub overload: Option<super::OverloadFigures>,
}

impl Measurement {
    pub(super) fn empty(scenario: String) -> Self {
        Self {
            scenario,
            latency: new_histogram(),
            ok_latency: new_histogram(),
            ok: 0,
            errors: BTreeMap::new(),
            window: Duration::ZERO,
            server: None,
            delivery: None,
            overload: None,
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

    /// Adds the callers' tallies as they finish; returns the deliveries their sent
    /// notifications are owed.
    pub(super) async fn add_callers(&mut self, mut callers: JoinSet<Tally>) -> anyhow::Result<u64> {
        let mut expected = 0;
        while let Some(tally) = callers.join_next().await {
            let tally = tally.context("a caller task failed")?;
            merge_histogram(&mut self.latency, &tally.latency);
            merge_histogram(&mut self.ok_latency, &tally.ok_latency);
            self.ok += tally.ok;
            for (code, n) in tally.errors {
                *self.errors.entry(code).or_default() += n;
            }
            expected += tally.expected_deliveries;
        }
        Ok(expected)
    }

    /// Counts the calls `schedule` made due in `window` that no caller sent as
    /// [`UNSENT`].
    pub(super) fn count_unsent(&mut self, schedule: &Schedule, window: Window) {
        let due = schedule.count_between(window.start, window.end);
        let unsent = due.saturating_sub(self.requests());
        if unsent > 0 {
            self.errors.insert(UNSENT.to_owned(), unsent);
        }
    }

    /// Adds the subscribers' tallies as they finish (after they were told to stop): the
    /// deliveries, of `expected` owed to `subscribers` streams, and the streams' errors.
    pub(super) async fn add_deliveries(
        &mut self,
        mut receivers: JoinSet<Tally>,
        expected: u64,
        subscribers: u64,
    ) -> anyhow::Result<()> {
        let mut delivery = Delivery {
            latency: new_histogram(),
            received: 0,
            expected,
            subscribers,
            duplicated: 0,
        };
        while let Some(tally) = receivers.join_next().await {
            let tally = tally.context("a subscriber task failed")?;
            merge_histogram(&mut delivery.latency, &tally.latency);
            delivery.received += tally.ok;
            delivery.duplicated += tally.duplicates;
            for (code, n) in tally.errors {
                *self.errors.entry(format!("stream {code}")).or_default() += n;
            }
        }
        self.delivery = Some(delivery);
        Ok(())
    }

    /// Adds `other` (the same scenario, another round) to this one.
    pub fn merge(&mut self, other: &Self) {
        merge_histogram(&mut self.latency, &other.latency);
        merge_histogram(&mut self.ok_latency, &other.ok_latency);
        self.ok += other.ok;
        // Rounds of `overload` each find their own capacity: the report keeps the first.
        if self.overload.is_none() {
            self.overload.clone_from(&other.overload);
        }
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

/// gRPC's canonical name of a code (`NOT_FOUND`): the platform's.
pub use trellis_platform::metrics::grpc::code_name;

/// One caller's counts.
#[derive(Debug)]
pub(super) struct Tally {
    latency: Histogram<u64>,
    ok_latency: Histogram<u64>,
    ok: u64,
    errors: BTreeMap<String, u64>,
    expected_deliveries: u64,
    /// Subscriber streams: notifications received again on the same stream.
    duplicates: u64,
}

impl Tally {
    fn new() -> Self {
        Self {
            latency: new_histogram(),
            ok_latency: new_histogram(),
            ok: 0,
            errors: BTreeMap::new(),
            expected_deliveries: 0,
            duplicates: 0,
        }
    }
}

/// When the window opens and closes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Window {
    pub(super) start: Instant,
    pub(super) end: Instant,
}

impl Window {
    fn contains(&self, t: Instant) -> bool {
        t >= self.start && t < self.end
    }
}

/// Starts `load.streams` callers on each of `connections`, sharing one sequence of
/// request indexes (and `schedule`'s send times in an open loop).
pub(super) fn spawn_callers(
    connections: &[Clients],
    load: &Load,
    fixture: Fixture,
    scenario: Scenario,
    schedule: Option<Schedule>,
    window: Window,
) -> JoinSet<Tally> {
    let fixture = Arc::new(fixture);
    let scenario = Arc::new(scenario);
    let next = Arc::new(AtomicU64::new(0));
    let mut callers = JoinSet::new();
    for clients in connections {
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
    callers
}

/// How long a closed-loop caller waits after a RESOURCE_EXHAUSTED before its next call:
/// the `RetryInfo` delay the platform's load shedding advises (`SHED_RETRY_AFTER`).
pub(super) const PUSH_BACK_PAUSE: Duration = Duration::from_millis(100);

/// One caller: sends until the window ends, one call at a time; in a closed loop it
/// pauses for [`PUSH_BACK_PAUSE`] after a call refused RESOURCE_EXHAUSTED.
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
            let pushed_back = matches!(outcome, Err("RESOURCE_EXHAUSTED" | LIMITED));
            if pushed_back && self.schedule.is_none() {
                // A closed-loop caller honours push-back as a gRPC client that reads
                // `RetryInfo` does, instead of spinning on refusals.
                sleep_until(Instant::now() + PUSH_BACK_PAUSE).await;
            }
            if !self.window.contains(intended) {
                continue;
            }
            let took = intended.elapsed();
            record(&mut tally.latency, took);
            match outcome {
                Ok(owed) => {
                    record(&mut tally.ok_latency, took);
                    tally.ok += 1;
                    tally.expected_deliveries += owed;
                }
                Err(code) => *tally.errors.entry(code.to_owned()).or_default() += 1,
            }
        }
        tally
    }
}

/// Reads each watched process's CPU time and memory.
pub(super) fn sample_all(
    processes: &[(String, u32)],
) -> anyhow::Result<Vec<procstat::ProcessSample>> {
    processes
        .iter()
        .map(|(name, pid)| procstat::sample(*pid).with_context(|| format!("reading {name}")))
        .collect()
}

/// Reads one subscriber stream until `stopped` turns true or the stream ends, timing the
/// bench's notifications sent in `window` (their bodies hold their intended send times,
/// µs after `origin`).
pub(super) async fn receive_deliveries(
    mut stream: Streaming<SubscribeResponse>,
    origin: Instant,
    window: Window,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> Tally {
    let mut tally = Tally::new();
    let mut seen = std::collections::HashSet::new();
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
                    if !seen.insert(n.id) {
                        tally.duplicates += 1;
                    }
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
}
