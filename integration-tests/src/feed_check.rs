//! A set checker for the live feed, in the manner of Jepsen's: from a history of
//! acknowledged sends and of what each subscriber's stream delivered, it finds every
//! anomaly — a notification lost, delivered that was never sent, delivered twice, or out
//! of order — instead of sampling a few.
//!
//! A subscriber here is what a client sees: one logical feed, which may reconnect (to
//! another replica, resuming with `after`) while it is open. The rules:
//!
//! - **lost** = acknowledged − delivered, over the sends to the subscriber's user that
//!   began after it opened and were acknowledged before it closed: must be empty;
//! - **unexpected**: delivered ids not among the user's sends (acknowledged or not —
//!   a send whose answer was lost may still have been stored);
//! - **duplicated**: an id delivered more than once on one feed;
//! - **reordered**: a send acknowledged before another began must be delivered before it
//!   (real-time order, which commit order respects), and two feeds of one user deliver
//!   their common notifications in the same order.

use std::collections::{HashMap, HashSet};

use tokio::time::Instant;

/// One `SendNotification` as the client saw it.
#[derive(Debug, Clone)]
pub struct SendRecord {
    /// The recipient.
    pub user: String,
    /// When the call began.
    pub invoked: Instant,
    /// The stored notification's id and when the answer came; `None` when the call
    /// failed (its effect is unknown).
    pub acknowledged: Option<(String, Instant)>,
}

/// What one subscriber's feed delivered.
#[derive(Debug, Clone)]
pub struct FeedRecord {
    /// Whose feed.
    pub user: String,
    /// A name for messages (`ada@replica-1`).
    pub name: String,
    /// When its first stream was open.
    pub opened: Instant,
    /// When the test stopped reading it.
    pub closed: Instant,
    /// Delivered ids, in order, with when each arrived.
    pub delivered: Vec<(String, Instant)>,
}

impl FeedRecord {
    /// The ids this feed delivered that `other` delivered too, in this feed's order.
    fn common_with(&self, other: &Self) -> Vec<&str> {
        let theirs: HashSet<&str> = other.delivered.iter().map(|(id, _)| id.as_str()).collect();
        self.delivered
            .iter()
            .map(|(id, _)| id.as_str())
            .filter(|id| theirs.contains(id))
            .collect()
    }
}

/// What the checker found; [`Self::anomalies`] is empty when the history is valid.
#[derive(Debug, Default)]
pub struct Verdict {
    /// One line per anomaly.
    pub anomalies: Vec<String>,
    /// Deliveries checked.
    pub deliveries: usize,
    /// The longest time from a send's acknowledgement to its delivery on a feed that was
    /// open before it began, if any.
    pub max_lag: Option<std::time::Duration>,
}

/// Checks `feeds` against `sends` (see the module docs).
#[must_use]
pub fn check(sends: &[SendRecord], feeds: &[FeedRecord]) -> Verdict {
    let mut verdict = Verdict::default();
    let acked: Vec<(&SendRecord, &str, Instant)> = sends
        .iter()
        .filter_map(|s| {
            s.acknowledged
                .as_ref()
                .map(|(id, at)| (s, id.as_str(), *at))
        })
        .collect();
    let ack_of: HashMap<&str, Instant> = acked.iter().map(|(_, id, at)| (*id, *at)).collect();
    let owner: HashMap<&str, &str> = acked
        .iter()
        .map(|(s, id, _)| (*id, s.user.as_str()))
        .collect();
    let any_unacked = sends.iter().any(|s| s.acknowledged.is_none());

    for feed in feeds {
        verdict.deliveries += feed.delivered.len();
        let mut seen = HashSet::new();
        let mut position = HashMap::new();
        for (index, (id, at)) in feed.delivered.iter().enumerate() {
            if !seen.insert(id.as_str()) {
                verdict
                    .anomalies
                    .push(format!("{}: duplicated {id}", feed.name));
            }
            position.entry(id.as_str()).or_insert(index);
            match owner.get(id.as_str()) {
                Some(user) if *user == feed.user => {}
                Some(user) => verdict
                    .anomalies
                    .push(format!("{}: delivered {id}, which was {user}'s", feed.name)),
                // Possibly a send whose answer was lost; never when all were answered.
                None if any_unacked => {}
                None => verdict.anomalies.push(format!(
                    "{}: delivered {id}, which was never sent",
                    feed.name
                )),
            }
            if let Some(acked_at) = ack_of.get(id.as_str()) {
                let lag = at.saturating_duration_since(*acked_at);
                verdict.max_lag = Some(verdict.max_lag.map_or(lag, |max| max.max(lag)));
            }
        }
        let ours: Vec<_> = acked
            .iter()
            .filter(|(s, _, at)| {
                s.user == feed.user && s.invoked >= feed.opened && *at <= feed.closed
            })
            .collect();
        for (_, id, _) in &ours {
            if !seen.contains(id) {
                verdict.anomalies.push(format!("{}: lost {id}", feed.name));
            }
        }
        for (_, a_id, a_acked) in &ours {
            for (b, b_id, _) in &ours {
                if *a_acked < b.invoked
                    && let (Some(pa), Some(pb)) = (position.get(a_id), position.get(b_id))
                    && pa > pb
                {
                    verdict.anomalies.push(format!(
                        "{}: {b_id} (sent after {a_id} was acknowledged) delivered first",
                        feed.name
                    ));
                }
            }
        }
    }
    for (i, one) in feeds.iter().enumerate() {
        for other in feeds.iter().skip(i + 1).filter(|f| f.user == one.user) {
            let (common_one, common_other) = (one.common_with(other), other.common_with(one));
            if common_one != common_other {
                verdict.anomalies.push(format!(
                    "{} and {} delivered their common notifications in different orders",
                    one.name, other.name
                ));
            }
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    fn sent(base: Instant, user: &str, id: &str, from: u64, to: u64) -> SendRecord {
        SendRecord {
            user: user.to_owned(),
            invoked: at(base, from),
            acknowledged: Some((id.to_owned(), at(base, to))),
        }
    }

    fn feed(base: Instant, user: &str, name: &str, ids: &[&str]) -> FeedRecord {
        FeedRecord {
            user: user.to_owned(),
            name: name.to_owned(),
            opened: base,
            closed: at(base, 10_000),
            delivered: ids
                .iter()
                .map(|id| ((*id).to_owned(), at(base, 9_000)))
                .collect(),
        }
    }

    #[test]
    fn a_valid_history_has_no_anomalies() {
        let base = Instant::now();
        let sends = [sent(base, "ada", "a", 1, 2), sent(base, "ada", "b", 3, 4)];
        let feeds = [
            feed(base, "ada", "one", &["a", "b"]),
            feed(base, "ada", "two", &["a", "b"]),
        ];
        let verdict = check(&sends, &feeds);
        assert!(verdict.anomalies.is_empty(), "{:?}", verdict.anomalies);
        assert_eq!(verdict.deliveries, 4);
    }

    #[test]
    fn each_kind_of_anomaly_is_found() {
        let base = Instant::now();
        let sends = [
            sent(base, "ada", "a", 1, 2),
            sent(base, "ada", "b", 3, 4),
            sent(base, "grace", "g", 1, 2),
        ];
        let cases: [(&[&str], &str); 5] = [
            (&["a"], "lost b"),
            (&["a", "b", "b"], "duplicated b"),
            (&["b", "a"], "delivered first"),
            (&["a", "b", "g"], "which was grace's"),
            (&["a", "b", "x"], "never sent"),
        ];
        for (delivered, expected) in cases {
            let verdict = check(&sends, &[feed(base, "ada", "one", delivered)]);
            assert!(
                verdict.anomalies.iter().any(|a| a.contains(expected)),
                "{delivered:?}: {:?}",
                verdict.anomalies
            );
        }
        // Concurrent sends may commit in either order, but both feeds must agree on it.
        let concurrent = [sent(base, "ada", "a", 1, 5), sent(base, "ada", "b", 2, 6)];
        let feeds = [
            feed(base, "ada", "one", &["a", "b"]),
            feed(base, "ada", "two", &["b", "a"]),
        ];
        let verdict = check(&concurrent, &feeds);
        assert!(
            verdict
                .anomalies
                .iter()
                .any(|a| a.contains("different orders")),
            "{:?}",
            verdict.anomalies
        );
    }
}
