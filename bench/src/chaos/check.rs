//! The checks after a fault healed: sign-ups durable and welcomed, notifications listed
//! and streamed exactly once, in order (see [`super`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;
use trellis_proto::notification_v1::ListNotificationsRequest;

use super::workload::{self, Clients, KIND, Kind, Op, Outcome, Recipient};

/// How long the checker waits for the outbox to deliver every welcome and for the
/// streams to receive every notification (the outbox retries with backoff of up to 2 s
/// in a chaos run).
const SETTLE: Duration = Duration::from_secs(30);

/// What the checker found; every count but `sign_ups` and `notifications` must be 0.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Findings {
    /// Acknowledged sign-ups.
    pub sign_ups: usize,
    /// Of them, those that could not log in.
    pub sign_ups_lost: usize,
    /// Of them, those without a welcome notification by the end of [`SETTLE`].
    pub welcomes_missing: usize,
    /// Acknowledged notifications.
    pub notifications: usize,
    /// Acknowledged but not listed.
    pub lost: usize,
    /// Listed more than once.
    pub duplicated: usize,
    /// Listed, never sent.
    pub unexpected: usize,
    /// Acknowledged, not received on the recipient's live stream.
    pub stream_lost: usize,
    /// Received twice on a live stream.
    pub stream_duplicated: usize,
    /// Received on a live stream before an older one.
    pub stream_out_of_order: usize,
    /// Checks that could not be made (a call failed after the heal), as sentences.
    pub errors: Vec<String>,
}

/// Checks `log` against the system through `clients`.
pub async fn check(clients: &Clients, recipients: &[Arc<Recipient>], log: &[Op]) -> Findings {
    let mut findings = Findings::default();
    let deadline = Instant::now() + SETTLE;
    sign_ups(clients, log, deadline, &mut findings).await;
    notifications(clients, recipients, log, deadline, &mut findings).await;
    findings
}

async fn sign_ups(clients: &Clients, log: &[Op], deadline: Instant, findings: &mut Findings) {
    let acknowledged: Vec<&Op> = log
        .iter()
        .filter(|op| op.kind == Kind::SignUp && matches!(op.outcome, Outcome::Ok(_)))
        .collect();
    findings.sign_ups = acknowledged.len();
    for op in acknowledged {
        let bearer = match workload::login(clients, &op.key).await {
            Ok((_, bearer)) => bearer,
            Err(status) => {
                findings.sign_ups_lost += 1;
                findings
                    .errors
                    .push(format!("{} cannot log in: {status}", op.key));
                continue;
            }
        };
        loop {
            let listed = list(clients, &bearer).await;
            match listed {
                Ok(all) if all.iter().any(|(kind, _, _)| kind == "welcome") => break,
                _ if Instant::now() >= deadline => {
                    findings.welcomes_missing += 1;
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }
}

async fn notifications(
    clients: &Clients,
    recipients: &[Arc<Recipient>],
    log: &[Op],
    deadline: Instant,
    findings: &mut Findings,
) {
    let sends: Vec<&Op> = log.iter().filter(|op| op.kind == Kind::Notify).collect();
    let attempted: BTreeSet<&str> = sends.iter().map(|op| op.token.as_str()).collect();
    for recipient in recipients {
        let acknowledged: BTreeSet<&str> = sends
            .iter()
            .filter(|op| op.key == recipient.user_id && matches!(op.outcome, Outcome::Ok(_)))
            .map(|op| op.token.as_str())
            .collect();
        findings.notifications += acknowledged.len();
        // The stream first: wait until it has every acknowledged one (or the deadline).
        loop {
            let received = recipient.received.lock().await;
            let bodies: BTreeSet<&str> = received.iter().map(|r| r.body.as_str()).collect();
            if acknowledged.is_subset(&bodies) || Instant::now() >= deadline {
                findings.stream_lost += acknowledged.difference(&bodies).count();
                let mut seen = BTreeSet::new();
                findings.stream_duplicated += received
                    .iter()
                    .filter(|r| !seen.insert(r.id.as_str()))
                    .count();
                findings.stream_out_of_order += received
                    .windows(2)
                    .filter(|pair| pair[1].created < pair[0].created)
                    .count();
                break;
            }
            drop(received);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let listed = match list(clients, &recipient.bearer).await {
            Ok(listed) => listed,
            Err(error) => {
                findings.errors.push(error);
                findings.lost += acknowledged.len();
                continue;
            }
        };
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for (kind, body, _) in &listed {
            if kind == KIND {
                *counts.entry(body.as_str()).or_default() += 1;
            }
        }
        findings.lost += acknowledged
            .iter()
            .filter(|b| !counts.contains_key(*b))
            .count();
        findings.duplicated += counts.values().filter(|n| **n > 1).count();
        findings.unexpected += counts.keys().filter(|b| !attempted.contains(*b)).count();
    }
}

/// Every notification of the account `bearer` names: (kind, body, id).
async fn list(
    clients: &Clients,
    bearer: &tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
) -> Result<Vec<(String, String, String)>, String> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = clients
            .notification
            .clone()
            .list_notifications(workload::authorized(
                ListNotificationsRequest {
                    page_size: 100,
                    page_token: page_token.clone(),
                    unread_only: false,
                },
                bearer,
            ))
            .await
            .map_err(|status| format!("ListNotifications failed: {status}"))?
            .into_inner();
        all.extend(
            page.notifications
                .into_iter()
                .map(|n| (n.kind, n.body, n.id)),
        );
        if page.next_page_token.is_empty() {
            return Ok(all);
        }
        page_token = page.next_page_token;
    }
}
