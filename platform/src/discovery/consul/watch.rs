//! Discovery through Consul: the blocking-query loop on `/v1/health/service/:service`
//! that follows one target's passing instances, with the index rules of Consul's
//! "Blocking Queries" documentation.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::Agent;
use crate::discovery::{Publisher, Target};

/// Shortest time between two blocking queries (the docs ask clients to rate-limit their
/// loop; consul-template uses the same 100 ms).
const MIN_QUERY_INTERVAL: Duration = Duration::from_millis(100);

/// The index for the next blocking query after one answered `returned` (Consul docs,
/// "Blocking Queries", implementation details): back to 0 when it went backwards (a
/// restarted or different server: start over), otherwise at least 1 (an index of 0
/// would make every query return at once).
fn next_index(previous: u64, returned: u64) -> u64 {
    if returned < previous {
        0
    } else {
        returned.max(1)
    }
}

/// Runs the blocking-query loop for `target` until every [`Watch`] is gone: publishes
/// each answer, keeps the last set while the agent fails (retrying with backoff), and
/// abandons a pending query as soon as the watchers leave.
pub(super) fn spawn_watch(
    agent: Arc<Agent>,
    target: &Target,
    publisher: Publisher,
) -> JoinHandle<()> {
    let peer = target.peer.clone();
    let service = target.service.clone();
    tokio::spawn(async move {
        let mut index = 0;
        let mut retry_in = agent.backoff.initial;
        loop {
            let started = Instant::now();
            let answer = tokio::select! {
                () = publisher.closed() => return,
                answer = agent.health(&service, index) => answer,
            };
            let pause = match answer {
                Ok(health) => {
                    publisher.publish(health.instances);
                    index = next_index(index, health.index);
                    retry_in = agent.backoff.initial;
                    MIN_QUERY_INTERVAL.saturating_sub(started.elapsed())
                }
                Err(error) => {
                    tracing::warn!(
                        peer,
                        service,
                        %error,
                        retry_in_ms = retry_in.as_millis(),
                        "consul: health query failed; keeping the last set of instances"
                    );
                    let pause = retry_in;
                    retry_in = (retry_in * 2).min(agent.backoff.max);
                    pause
                }
            };
            if !pause.is_zero() {
                tokio::select! {
                    () = publisher.closed() => return,
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
    })
}
