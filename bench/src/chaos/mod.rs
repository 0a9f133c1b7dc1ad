//! `trellis-chaos` (run by `cargo xtask chaos`): faults injected on purpose into the
//! running system under a steady open-loop load, and a checker that proves, for each,
//! that nothing acknowledged was lost or duplicated.
//!
//! Each fault runs on a fresh [`cluster::Cluster`] (user ×2, auth, notification): load
//! for a lead-in, the fault for its duration, the heal, load for a tail, then the
//! checks ([`check`]). The faults so far (the issue's numbering):
//!
//! | id | fault |
//! |---|---|
//! | F1 | one user replica SIGKILLed, started again after the duration |
//! | F2 | notification stopped (SIGTERM, drained) for the duration, then started again |
//! | F7 | one user replica paused (SIGSTOP) for the duration, then resumed (SIGCONT) |
//!
//! The checker's rules (Jepsen's set semantics): every acknowledged sign-up can log in
//! and its welcome notification arrived (no outbox row stuck); every acknowledged
//! notification is listed once (lost = acknowledged − observed = ∅, unexpected =
//! observed − attempted = ∅, none twice) and reached its recipient's live stream once,
//! in order; and no operation that could have been retried safely failed while a
//! replica of what it called was up (for F2 that leaves out SendNotification, whose one
//! replica is down).

pub mod check;
pub mod cluster;
pub mod workload;

use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::Serialize;
use tokio::time::Instant;

use cluster::Cluster;
use workload::{Kind, Outcome};

/// A fault the suite injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Fault {
    /// F1: one user replica killed.
    F1,
    /// F2: notification down, then back.
    F2,
    /// F7: one user replica paused, then resumed.
    F7,
}

impl Fault {
    /// Every fault, in order.
    pub const ALL: [Self; 3] = [Self::F1, Self::F2, Self::F7];

    /// The fault named `name` (`F1`, `f2`, …).
    ///
    /// # Errors
    /// No such fault (the message lists them).
    pub fn parse(name: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|fault| format!("{fault:?}").eq_ignore_ascii_case(name.trim()))
            .ok_or_else(|| format!("unknown fault `{name}` (F1, F2, F7)"))
    }

    /// One line saying what it does.
    #[must_use]
    pub fn describe(self) -> &'static str {
        match self {
            Self::F1 => "user-2 SIGKILLed, started again",
            Self::F2 => "notification stopped, started again",
            Self::F7 => "user-2 paused (SIGSTOP), resumed",
        }
    }

    /// How long the fault lasts unless told otherwise.
    #[must_use]
    pub fn default_duration(self) -> Duration {
        match self {
            Self::F1 => Duration::from_secs(10),
            Self::F2 => Duration::from_secs(30),
            Self::F7 => Duration::from_secs(20),
        }
    }

    /// The operations whose failures count as retriable failures under this fault: those
    /// that had a replica up to answer them.
    fn gated(self, kind: Kind) -> bool {
        match self {
            Self::F1 | Self::F7 => kind.retriable(),
            Self::F2 => kind.retriable() && kind != Kind::Notify,
        }
    }

    async fn inject(self, cluster: &mut Cluster) -> anyhow::Result<()> {
        match self {
            Self::F1 => cluster.signal("user-2", Signal::SIGKILL).await,
            Self::F2 => cluster.signal("notification", Signal::SIGTERM).await,
            Self::F7 => cluster.signal("user-2", Signal::SIGSTOP).await,
        }
    }

    async fn heal(self, cluster: &mut Cluster) -> anyhow::Result<()> {
        match self {
            Self::F1 => cluster.restart("user-2").await,
            Self::F2 => cluster.restart("notification").await,
            Self::F7 => cluster.signal("user-2", Signal::SIGCONT).await,
        }
    }
}

/// The shape of a run.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Operations a second.
    pub rate: f64,
    /// Load before the fault.
    pub lead_in: Duration,
    /// How long each fault lasts (`None`: its default).
    pub duration: Option<Duration>,
    /// Load after the heal.
    pub tail: Duration,
}

/// What one fault's run found.
#[derive(Debug, Clone, Serialize)]
pub struct FaultReport {
    /// The fault.
    pub fault: Fault,
    /// What it did.
    pub description: &'static str,
    /// How long it lasted, s.
    pub duration_s: f64,
    /// Operations logged.
    pub operations: usize,
    /// Operations refused.
    pub failed: usize,
    /// Writes of unknown fate.
    pub indeterminate: usize,
    /// Failed operations that were safe to retry and had a replica to answer them.
    pub retriable_failed: usize,
    /// Operations during the fault, and the share of them not OK.
    pub during: usize,
    /// Share of the operations during the fault that were not OK.
    pub error_rate_during: f64,
    /// p99 of the operations during the fault, ms.
    pub p99_during_ms: f64,
    /// From the heal to the end of the last operation not OK after it, s (0: none).
    pub recovery_s: f64,
    /// The checker's findings.
    pub check: check::Findings,
    /// Every rule the run broke; empty when it passed.
    pub violations: Vec<String>,
}

/// Runs `fault` on a fresh cluster from `bin_dir` under `options`.
///
/// # Errors
/// The cluster cannot start, the set-up fails before the fault, or a fault cannot be
/// injected or healed.
pub async fn run(
    bin_dir: &std::path::Path,
    fault: Fault,
    options: Options,
) -> anyhow::Result<FaultReport> {
    let mut cluster = Cluster::start(bin_dir).await?;
    let clients = workload::clients(
        &cluster.user_uris(),
        &cluster.uri("auth"),
        &cluster.uri("notification"),
        &cluster.service_client,
    )
    .await?;
    let nonce: Arc<str> = Arc::from(format!("{:x}", rand_nonce()));
    let recipients = Arc::new(workload::recipients(&clients, &nonce).await?);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let streams: Vec<_> = recipients
        .iter()
        .map(|r| {
            tokio::spawn(workload::subscribe(
                clients.clone(),
                Arc::clone(r),
                stopped.clone(),
            ))
        })
        .collect();

    let duration = options.duration.unwrap_or_else(|| fault.default_duration());
    let origin = Instant::now();
    let end = options.lead_in + duration + options.tail;
    let load = tokio::spawn(workload::open_loop(
        clients.clone(),
        Arc::clone(&recipients),
        Arc::clone(&nonce),
        options.rate,
        origin,
        end,
    ));
    tokio::time::sleep_until(origin + options.lead_in).await;
    eprintln!(
        "chaos: {fault:?}: {} for {} s",
        fault.describe(),
        duration.as_secs()
    );
    let injected = origin.elapsed();
    fault.inject(&mut cluster).await?;
    tokio::time::sleep_until(origin + injected + duration).await;
    fault.heal(&mut cluster).await?;
    let healed = origin.elapsed();
    eprintln!(
        "chaos: {fault:?}: healed after {:.1} s; load goes on",
        (healed - injected).as_secs_f64()
    );
    let log = load.await?;
    eprintln!("chaos: {fault:?}: {} operations; checking", log.len());
    let findings = check::check(&clients, &recipients, &log).await;
    let _ = stop.send(true);
    for stream in streams {
        let _ = stream.await;
    }
    cluster.stop().await;

    let not_ok = |op: &&workload::Op| !matches!(op.outcome, Outcome::Ok(_));
    let during: Vec<_> = log
        .iter()
        .filter(|op| op.at >= injected && op.at < healed)
        .collect();
    let mut took: Vec<Duration> = during.iter().map(|op| op.took).collect();
    took.sort_unstable();
    let p99 = took
        .get((took.len() * 99).div_ceil(100).saturating_sub(1))
        .copied()
        .unwrap_or_default();
    let recovery = log
        .iter()
        .filter(|op| op.at >= healed)
        .filter(not_ok)
        .map(|op| (op.at + op.took).saturating_sub(healed))
        .max()
        .unwrap_or_default();
    let retriable_failed = log
        .iter()
        .filter(|op| fault.gated(op.kind))
        .filter(not_ok)
        .count();
    #[allow(clippy::cast_precision_loss)] // counts far below 2^53
    let error_rate_during = if during.is_empty() {
        0.0
    } else {
        during.iter().copied().filter(not_ok).count() as f64 / during.len() as f64
    };
    let mut report = FaultReport {
        fault,
        description: fault.describe(),
        duration_s: duration.as_secs_f64(),
        operations: log.len(),
        failed: log
            .iter()
            .filter(|op| matches!(op.outcome, Outcome::Failed(_)))
            .count(),
        indeterminate: log
            .iter()
            .filter(|op| matches!(op.outcome, Outcome::Indeterminate(_)))
            .count(),
        retriable_failed,
        during: during.len(),
        error_rate_during,
        p99_during_ms: p99.as_secs_f64() * 1e3,
        recovery_s: recovery.as_secs_f64(),
        check: findings,
        violations: Vec::new(),
    };
    report.violations = violations(&report, &log);
    Ok(report)
}

/// The rules `report` breaks (see the module docs), each a sentence.
fn violations(report: &FaultReport, log: &[workload::Op]) -> Vec<String> {
    let c = &report.check;
    let mut broken = Vec::new();
    for (count, what) in [
        (c.sign_ups_lost, "acknowledged sign-ups cannot log in"),
        (
            c.welcomes_missing,
            "acknowledged sign-ups got no welcome (outbox stuck)",
        ),
        (c.lost, "acknowledged notifications are not listed"),
        (c.duplicated, "notifications are listed more than once"),
        (c.unexpected, "listed notifications were never sent"),
        (
            c.stream_lost,
            "acknowledged notifications never reached the live stream",
        ),
        (
            c.stream_duplicated,
            "notifications reached a live stream twice",
        ),
        (
            c.stream_out_of_order,
            "notifications reached a live stream out of order",
        ),
    ] {
        if count > 0 {
            broken.push(format!("{count} {what}"));
        }
    }
    if report.retriable_failed > 0 {
        let codes: std::collections::BTreeMap<String, usize> = log
            .iter()
            .filter(|op| report.fault.gated(op.kind))
            .filter_map(|op| match &op.outcome {
                Outcome::Failed(code) | Outcome::Indeterminate(code) => {
                    Some(format!("{:?} {code}", op.kind))
                }
                Outcome::Ok(_) => None,
            })
            .fold(std::collections::BTreeMap::new(), |mut m, k| {
                *m.entry(k).or_default() += 1;
                m
            });
        broken.push(format!(
            "{} operations safe to retry failed with a replica up: {codes:?}",
            report.retriable_failed
        ));
    }
    broken
}

fn rand_nonce() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
        ^ u128::from(std::process::id())
}

/// The table of `reports`, one row per fault.
#[must_use]
pub fn table(reports: &[FaultReport]) -> String {
    let mut out = format!(
        "{:<5} {:<38} {:>5} {:>6} {:>6} {:>6} {:>5} {:>5} {:>5} {:>8} {:>9} {:>9}  {}\n",
        "fault",
        "what",
        "s",
        "ops",
        "failed",
        "indet",
        "retry",
        "lost",
        "dup",
        "err% in",
        "p99 in ms",
        "recover s",
        "verdict"
    );
    for r in reports {
        let c = &r.check;
        out.push_str(&format!(
            "{:<5} {:<38} {:>5.0} {:>6} {:>6} {:>6} {:>5} {:>5} {:>5} {:>7.1}% {:>9.0} {:>9.1}  {}\n",
            format!("{:?}", r.fault),
            r.description,
            r.duration_s,
            r.operations,
            r.failed,
            r.indeterminate,
            r.retriable_failed,
            c.lost + c.stream_lost + c.sign_ups_lost + c.welcomes_missing,
            c.duplicated + c.stream_duplicated,
            r.error_rate_during * 100.0,
            r.p99_during_ms,
            r.recovery_s,
            if r.violations.is_empty() { "ok" } else { "FAILED" },
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use workload::Op;

    fn op(kind: Kind, outcome: Outcome) -> Op {
        Op {
            kind,
            key: String::new(),
            token: String::new(),
            at: Duration::ZERO,
            took: Duration::ZERO,
            outcome,
        }
    }

    fn report(fault: Fault, check: check::Findings, retriable_failed: usize) -> FaultReport {
        FaultReport {
            fault,
            description: fault.describe(),
            duration_s: 1.0,
            operations: 4,
            failed: 0,
            indeterminate: 0,
            retriable_failed,
            during: 0,
            error_rate_during: 0.0,
            p99_during_ms: 0.0,
            recovery_s: 0.0,
            check,
            violations: Vec::new(),
        }
    }

    #[test]
    fn faults_are_named_as_the_issue_numbers_them() {
        assert_eq!(Fault::parse("f7"), Ok(Fault::F7));
        assert_eq!(Fault::parse(" F1 "), Ok(Fault::F1));
        assert!(Fault::parse("F3").is_err_and(|e| e.contains("F1, F2, F7")));
    }

    #[test]
    fn with_notification_down_its_sends_are_not_held_against_availability() {
        assert!(!Fault::F2.gated(Kind::Notify));
        assert!(Fault::F2.gated(Kind::Login));
        assert!(Fault::F7.gated(Kind::Notify));
        assert!(!Fault::F1.gated(Kind::SignUp), "a sign-up is never retried");
    }

    #[test]
    fn every_lost_duplicated_or_failed_retriable_call_is_a_violation() {
        let clean = report(Fault::F1, check::Findings::default(), 0);
        assert!(violations(&clean, &[]).is_empty());
        let dirty = report(
            Fault::F7,
            check::Findings {
                lost: 1,
                stream_duplicated: 2,
                welcomes_missing: 3,
                ..check::Findings::default()
            },
            1,
        );
        let log = [
            op(Kind::Login, Outcome::Failed("DeadlineExceeded".to_owned())),
            op(
                Kind::SignUp,
                Outcome::Indeterminate("Unavailable".to_owned()),
            ),
            op(Kind::GetUser, Outcome::Ok(String::new())),
        ];
        let broken = violations(&dirty, &log);
        assert_eq!(broken.len(), 4, "{broken:?}");
        assert!(broken[3].contains("Login DeadlineExceeded"), "{broken:?}");
        assert!(!broken[3].contains("SignUp"), "{broken:?}");
        let mut failed = dirty;
        failed.violations = broken;
        let table = table(&[clean, failed]);
        assert_eq!(table.lines().count(), 3, "{table}");
        assert!(table.lines().nth(1).is_some_and(|l| l.ends_with("ok")));
        assert!(table.lines().nth(2).is_some_and(|l| l.ends_with("FAILED")));
    }
}
