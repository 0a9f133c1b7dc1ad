//! Endpoint failover: the configured etcd members, one lazily connected channel each.
//! Calls go to one member and move on to the next while it is unreachable, as etcd's own
//! client does: tonic's balanced channel keeps picking dead endpoints (STACK-NOTES).

use std::future::Future;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::BACKEND;
use crate::discovery::DiscoveryError;

/// HTTP/2 PING interval on the long-lived watch and keep-alive streams, so a member that
/// vanished without closing its connection is noticed. etcd's server refuses pings more
/// often than every 5 s (`--grpc-keepalive-min-time`).
const HTTP2_PING: Duration = Duration::from_secs(10);

/// The members `endpoints` names (comma-separated client URLs; a bare `host:port` means
/// `http://`), each connecting within `timeout`, over TLS with `tls` (all `https://`) or
/// without (all `http://`), or why they are invalid.
pub(super) fn members(
    endpoints: &str,
    timeout: Duration,
    tls: Option<&ClientTlsConfig>,
) -> Result<Vec<Member>, String> {
    let mut members = Vec::new();
    for raw in endpoints.split(',').map(str::trim) {
        if raw.is_empty() {
            continue;
        }
        let url = if raw.contains("://") {
            raw.to_owned()
        } else {
            format!("http://{raw}")
        };
        let scheme = if tls.is_some() { "https://" } else { "http://" };
        if !url.starts_with(scheme) {
            return Err(match tls {
                Some(_) => format!("{raw:?}: with `ca` set, every endpoint is https://"),
                None => format!("{raw:?}: an https:// endpoint needs `ca` (and http:// otherwise)"),
            });
        }
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(|err| format!("{raw:?} is not a valid URL: {err}"))?;
        if let Some(tls) = tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|err| format!("{raw:?}: {err}"))?;
        }
        let endpoint = endpoint
            .connect_timeout(timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(HTTP2_PING)
            .keep_alive_timeout(HTTP2_PING)
            .keep_alive_while_idle(true);
        members.push(Member {
            url,
            endpoint,
            channel: OnceLock::new(),
        });
    }
    if members.is_empty() {
        return Err("must name at least one endpoint".to_owned());
    }
    Ok(members)
}

/// One etcd member: its client URL and its channel, made on first use (making a channel
/// needs a Tokio runtime; [`super::EtcdRegistry::new`] does not).
#[derive(Debug)]
pub(super) struct Member {
    pub(super) url: String,
    endpoint: Endpoint,
    channel: OnceLock<Channel>,
}

impl Member {
    fn channel(&self) -> Channel {
        self.channel
            .get_or_init(|| self.endpoint.connect_lazy())
            .clone()
    }
}

/// The configured members and which one calls go to.
#[derive(Debug)]
pub(super) struct Cluster {
    members: Vec<Member>,
    current: AtomicUsize,
    timeout: Duration,
}

impl Cluster {
    /// Calls go to `members` in turn, each call given `timeout`.
    pub(super) fn new(members: Vec<Member>, timeout: Duration) -> Self {
        Self {
            members,
            current: AtomicUsize::new(0),
            timeout,
        }
    }

    /// Makes `call` on the current member and, while members are unreachable
    /// (UNAVAILABLE, or no answer within the timeout), on the next ones; answers the
    /// first answer or the last error.
    pub(super) async fn call<T, F, Fut>(&self, method: &str, call: F) -> Result<T, DiscoveryError>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut last = DiscoveryError::backend(BACKEND, "no endpoint is configured");
        for _ in 0..self.members.len() {
            let index = self.current.load(Ordering::Relaxed) % self.members.len();
            let member = &self.members[index];
            match tokio::time::timeout(self.timeout, call(member.channel())).await {
                Ok(Ok(response)) => return Ok(response.into_inner()),
                Ok(Err(status)) if status.code() != tonic::Code::Unavailable => {
                    return Err(status_error(method, &member.url, &status));
                }
                Ok(Err(status)) => last = status_error(method, &member.url, &status),
                Err(_) => {
                    last = DiscoveryError::backend(
                        BACKEND,
                        format!(
                            "{method} at {}: no answer within {} ms",
                            member.url,
                            self.timeout.as_millis()
                        ),
                    );
                }
            }
            // Another task may have moved on already: only move from this member.
            let next = (index + 1) % self.members.len();
            let _ =
                self.current
                    .compare_exchange(index, next, Ordering::Relaxed, Ordering::Relaxed);
        }
        Err(last)
    }
}

/// A failed call as a [`DiscoveryError`] naming the method and the member.
pub(super) fn status_error(method: &str, url: &str, status: &tonic::Status) -> DiscoveryError {
    let at = if url.is_empty() {
        String::new()
    } else {
        format!(" at {url}")
    };
    DiscoveryError::backend(
        BACKEND,
        format!("{method}{at}: {:?}: {}", status.code(), status.message()),
    )
}
