//! etcd discovery and registration: a key per instance under a lease kept alive while
//! the process runs, found by a watch on the service's key prefix.
//!
//! The backend speaks etcd's v3 gRPC API through the clients generated in
//! [`trellis_proto::etcd`] (the `etcd-client` crate's build needs a protoc binary):
//!
//! - **register**: `LeaseGrant` (TTL `lease_ttl_s`), then `Put <prefix><service>/<id>` =
//!   `{"uri":"http://host:port","metadata":{...}}` attached to that lease. A task streams
//!   `LeaseKeepAlive` every TTL/3; when the lease is lost (a keep-alive answered with
//!   TTL 0, or no answer for a whole TTL) it grants a new lease and puts the key again.
//!   Deregistering stops the task and revokes the lease, which deletes the key at once;
//!   a killed process's key goes when its lease expires, one TTL after the last
//!   keep-alive (etcd's lease semantics, <https://etcd.io/docs/v3.5/learning/api/#lease-api>).
//! - **watch**: `Range` over the prefix `<prefix><service>/` (`range_end` is the prefix
//!   with its last byte plus one, as etcd's API defines prefix ranges), publish, then
//!   `Watch` from the range's revision + 1 and apply each PUT and DELETE. A compacted,
//!   cancelled or broken watch ranges again and watches anew; until then the last set
//!   stays published.
//! - **endpoints**: one lazily connected channel per endpoint. Calls go to one member and
//!   move on to the next when it is unreachable: tonic's balanced channel keeps picking
//!   dead endpoints (STACK-NOTES), where failing over is what etcd's own client does.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rand::Rng as _;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::{IntervalStream, WatchStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use trellis_proto::etcd::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, LeaseRevokeResponse, PutRequest,
    RangeRequest, WatchCreateRequest, WatchRequest, kv_client::KvClient, lease_client::LeaseClient,
    watch_client::WatchClient, watch_request::RequestUnion,
};
use trellis_proto::etcd::mvccpb::{KeyValue, event::EventType};

use super::{
    BoxFuture, DiscoveryError, Instance, Publisher, Registered, Registration, Registry, Target,
    Watch,
};
use crate::config::{ConfigError, require_positive};

/// The backend's name in errors and logs.
const BACKEND: &str = "etcd";

/// The first retry delay after a failure; it doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(100);

/// The longest delay between two retries of a watch or a lease grant.
const MAX_RETRY: Duration = Duration::from_secs(5);

/// HTTP/2 PING interval on the long-lived watch and keep-alive streams, so a member that
/// vanished without closing its connection is noticed. etcd's server refuses pings more
/// often than every 5 s (`--grpc-keepalive-min-time`).
const HTTP2_PING: Duration = Duration::from_secs(10);

/// The `discovery.etcd.*` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EtcdConfig {
    /// Comma-separated client URLs (`http://host:port`; a bare `host:port` means
    /// `http://`). Default `http://127.0.0.1:2379`. TLS (`https://`) is not supported.
    pub endpoints: String,
    /// Key prefix; an instance is stored at `<prefix><service>/<id>`. Default
    /// `/trellis/services/`.
    pub prefix: String,
    /// Lease time to live, s: a killed instance disappears this long after its last
    /// keep-alive. Default 10. etcd raises a TTL below its minimum (about 2 s with the
    /// default heartbeat) to that minimum.
    pub lease_ttl_s: u64,
    /// Deadline of each call to etcd and of connecting to a member, ms. Default 5000.
    pub timeout_ms: u64,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoints: "http://127.0.0.1:2379".to_owned(),
            prefix: "/trellis/services/".to_owned(),
            lease_ttl_s: 10,
            timeout_ms: 5000,
        }
    }
}

impl EtcdConfig {
    /// Checks the values; `prefix` is the section's key.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key.
    pub fn validate(&self, prefix: &str) -> Result<(), ConfigError> {
        self.members()
            .map_err(|message| ConfigError::invalid(format!("{prefix}.endpoints"), message))?;
        require_positive(&format!("{prefix}.lease_ttl_s"), self.lease_ttl_s)?;
        if i64::try_from(self.lease_ttl_s).is_err() {
            return Err(ConfigError::invalid(
                format!("{prefix}.lease_ttl_s"),
                "is too large",
            ));
        }
        require_positive(&format!("{prefix}.timeout_ms"), self.timeout_ms)
    }

    /// The endpoints as client URLs with their tonic endpoints, or why they are invalid.
    fn members(&self) -> Result<Vec<Member>, String> {
        let timeout = Duration::from_millis(self.timeout_ms);
        let mut members = Vec::new();
        for raw in self.endpoints.split(',').map(str::trim) {
            if raw.is_empty() {
                continue;
            }
            let url = if raw.contains("://") {
                raw.to_owned()
            } else {
                format!("http://{raw}")
            };
            if !url.starts_with("http://") {
                return Err(format!(
                    "{raw:?}: only http:// endpoints are supported (no TLS in this build)"
                ));
            }
            let endpoint = Endpoint::from_shared(url.clone())
                .map_err(|err| format!("{raw:?} is not a valid URL: {err}"))?
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
}

/// The etcd backend: cheap to clone (the members' channels are shared).
#[derive(Debug, Clone)]
pub struct EtcdRegistry {
    cluster: Arc<Cluster>,
    prefix: String,
    lease_ttl_s: i64,
}

impl EtcdRegistry {
    /// A client of the cluster at `config.endpoints` (connects lazily, on first use).
    ///
    /// # Errors
    /// [`DiscoveryError`] when an endpoint is not a valid `http://` URL or a value is out
    /// of range.
    pub fn new(config: &EtcdConfig) -> Result<Self, DiscoveryError> {
        config
            .validate("discovery.etcd")
            .map_err(|err| DiscoveryError::backend(BACKEND, err))?;
        let members = config
            .members()
            .map_err(|err| DiscoveryError::backend(BACKEND, err))?;
        let lease_ttl_s = i64::try_from(config.lease_ttl_s)
            .map_err(|_| DiscoveryError::backend(BACKEND, "lease_ttl_s is too large"))?;
        Ok(Self {
            cluster: Arc::new(Cluster {
                members,
                current: AtomicUsize::new(0),
                timeout: Duration::from_millis(config.timeout_ms),
            }),
            prefix: config.prefix.clone(),
            lease_ttl_s,
        })
    }

    /// The key prefix every instance of `service` is stored under: `<prefix><service>/`.
    fn service_prefix(&self, service: &str) -> String {
        format!("{}{service}/", self.prefix)
    }
}

impl Registry for EtcdRegistry {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn watch(&self, target: &Target) -> Watch {
        let (publisher, watch) = super::channel();
        let follower = Follower {
            cluster: Arc::clone(&self.cluster),
            peer: target.peer.clone(),
            prefix: self.service_prefix(&target.service).into_bytes(),
            publisher,
        };
        tokio::spawn(follower.run());
        watch
    }

    fn register<'a>(
        &'a self,
        registration: &'a Registration,
    ) -> BoxFuture<'a, Result<Box<dyn Registered>, DiscoveryError>> {
        Box::pin(async move {
            for (field, value) in [("service", &registration.service), ("id", &registration.id)] {
                if value.is_empty() || value.contains('/') {
                    return Err(DiscoveryError::backend(
                        BACKEND,
                        format!(
                            "the registration's {field} {value:?} must be non-empty and have no '/' (it is a key segment)"
                        ),
                    ));
                }
            }
            let key = format!(
                "{}{}",
                self.service_prefix(&registration.service),
                registration.id
            );
            let value = serde_json::to_vec(&Record {
                uri: registration.instance().uri,
                metadata: registration.metadata.clone(),
            })
            .map_err(|err| DiscoveryError::backend(BACKEND, err))?;
            let lease = self
                .cluster
                .grant_and_put(&key, &value, self.lease_ttl_s)
                .await?;
            tracing::info!(
                key,
                lease = lease.id,
                ttl_s = lease.ttl.as_secs(),
                "registered in etcd"
            );
            let cancel = CancellationToken::new();
            let keeper = Keeper {
                cluster: Arc::clone(&self.cluster),
                key: key.clone(),
                value,
                ttl_s: self.lease_ttl_s,
                cancel: cancel.clone(),
            };
            let task = tokio::spawn(keeper.run(lease));
            Ok(Box::new(EtcdRegistered {
                cluster: Arc::clone(&self.cluster),
                key,
                cancel,
                keep_alive: Some(task),
            }) as Box<dyn Registered>)
        })
    }
}

/// What a registration stores as its key's value (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    /// The instance's base URI, e.g. `http://10.1.2.3:50051`.
    uri: String,
    /// The registration's metadata.
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

/// A granted lease: its id and the TTL etcd chose.
#[derive(Debug, Clone, Copy)]
struct Lease {
    id: i64,
    ttl: Duration,
}

// === Registration ===

/// A key kept alive by a background task until [`Registered::deregister`] (which revokes
/// its lease) or drop (which only stops the keep-alive: the key expires with the lease).
#[derive(Debug)]
struct EtcdRegistered {
    cluster: Arc<Cluster>,
    key: String,
    cancel: CancellationToken,
    /// The keep-alive task; it answers the lease id it holds when it stops.
    keep_alive: Option<JoinHandle<i64>>,
}

impl Drop for EtcdRegistered {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Registered for EtcdRegistered {
    fn deregister(mut self: Box<Self>) -> BoxFuture<'static, Result<(), DiscoveryError>> {
        Box::pin(async move {
            self.cancel.cancel();
            let task = self.keep_alive.take();
            let lease = match task {
                Some(task) => task.await.map_err(|err| {
                    DiscoveryError::backend(
                        BACKEND,
                        format!("the keep-alive of {} failed: {err}", self.key),
                    )
                })?,
                None => return Ok(()),
            };
            self.cluster.revoke(lease).await?;
            tracing::info!(key = self.key, lease, "deregistered from etcd");
            Ok(())
        })
    }
}

/// The keep-alive task of one registration.
struct Keeper {
    cluster: Arc<Cluster>,
    key: String,
    value: Vec<u8>,
    ttl_s: i64,
    cancel: CancellationToken,
}

/// Why a keep-alive stream stopped.
enum Interrupted {
    /// etcd answered TTL 0: the lease is gone (expired or revoked elsewhere).
    Expired,
    /// No answer for a whole TTL: the lease has expired by now.
    Unanswered,
    /// The stream could not be opened or broke.
    Failed(DiscoveryError),
}

impl Keeper {
    /// Keeps `lease` alive, granting a new one and putting the key again when it is lost,
    /// until cancelled; answers the lease it holds then.
    async fn run(self, mut lease: Lease) -> i64 {
        let mut backoff = Backoff::new((lease.ttl / 3).clamp(FIRST_RETRY, MAX_RETRY));
        let mut last_answer = Instant::now();
        loop {
            let interrupted = tokio::select! {
                () = self.cancel.cancelled() => return lease.id,
                interrupted = self.keep_alive(lease, &mut last_answer) => interrupted,
            };
            match interrupted {
                Interrupted::Failed(err) if last_answer.elapsed() < lease.ttl => {
                    tracing::warn!(key = self.key, lease = lease.id, error = %err, "etcd keep-alive failed; retrying");
                    if !backoff.wait(&self.cancel).await {
                        return lease.id;
                    }
                    continue;
                }
                Interrupted::Failed(err) => {
                    tracing::warn!(key = self.key, lease = lease.id, error = %err, "etcd keep-alive failed for a whole TTL; registering again");
                }
                Interrupted::Unanswered => {
                    tracing::warn!(
                        key = self.key,
                        lease = lease.id,
                        "no etcd keep-alive answer for a whole TTL; registering again"
                    );
                }
                Interrupted::Expired => {
                    tracing::warn!(
                        key = self.key,
                        lease = lease.id,
                        "etcd lease lost; registering again"
                    );
                }
            }
            // Cancellation is checked between attempts only: an attempt cut off after its
            // put would leave a key whose lease this task no longer knows.
            lease = loop {
                match self
                    .cluster
                    .grant_and_put(&self.key, &self.value, self.ttl_s)
                    .await
                {
                    Ok(lease) => break lease,
                    Err(err) => {
                        tracing::warn!(key = self.key, error = %err, "cannot register in etcd again; retrying");
                        if !backoff.wait(&self.cancel).await {
                            return lease.id;
                        }
                    }
                }
            };
            tracing::info!(key = self.key, lease = lease.id, "registered in etcd again");
            last_answer = Instant::now();
            backoff.reset();
        }
    }

    /// Streams keep-alives for `lease` every TTL/3 until the stream stops, recording when
    /// etcd last confirmed the lease in `last_answer`.
    async fn keep_alive(&self, lease: Lease, last_answer: &mut Instant) -> Interrupted {
        let period = (lease.ttl / 3).max(FIRST_RETRY);
        // The request stream is sent by the connection, not by this future: it must end
        // itself once this future returns or is dropped, or keep-alives would go on.
        let stop = CancellationToken::new();
        let _stop_when_done = stop.clone().drop_guard();
        let opened = self
            .cluster
            .call("LeaseKeepAlive", |channel| {
                let id = lease.id;
                let stop = stop.clone();
                let ticks = IntervalStream::new(tokio::time::interval(period))
                    .take_while(move |_| !stop.is_cancelled())
                    .map(move |_| LeaseKeepAliveRequest { id });
                async move { LeaseClient::new(channel).lease_keep_alive(ticks).await }
            })
            .await;
        let mut answers = match opened {
            Ok(answers) => answers,
            Err(err) => return Interrupted::Failed(err),
        };
        loop {
            let answer = tokio::select! {
                () = tokio::time::sleep_until(*last_answer + lease.ttl) => return Interrupted::Unanswered,
                answer = answers.message() => answer,
            };
            match answer {
                Ok(Some(answer)) if answer.ttl > 0 => *last_answer = Instant::now(),
                Ok(Some(_)) => return Interrupted::Expired,
                Ok(None) => {
                    return Interrupted::Failed(DiscoveryError::backend(
                        BACKEND,
                        "the keep-alive stream ended",
                    ));
                }
                Err(status) => {
                    return Interrupted::Failed(status_error("LeaseKeepAlive", "", &status));
                }
            }
        }
    }
}

// === Watch ===

/// The task behind one [`Watch`]: follows the instances under one service's prefix.
struct Follower {
    cluster: Arc<Cluster>,
    peer: String,
    prefix: Vec<u8>,
    publisher: Publisher,
}

impl Follower {
    /// Follows until every [`Watch`] is gone, ranging and watching again after a failure.
    async fn run(self) {
        let mut backoff = Backoff::new(MAX_RETRY);
        loop {
            let failure = tokio::select! {
                () = self.publisher.closed() => return,
                failure = self.follow(&mut backoff) => failure,
            };
            tracing::warn!(
                peer = self.peer,
                prefix = %String::from_utf8_lossy(&self.prefix),
                error = %failure,
                "etcd watch failed; keeping the last instances and retrying"
            );
            let wait = backoff.next_delay();
            tokio::select! {
                () = self.publisher.closed() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Ranges over the prefix, publishes, then applies the watch's events until it stops;
    /// answers why it stopped.
    async fn follow(&self, backoff: &mut Backoff) -> DiscoveryError {
        let range_end = prefix_end(&self.prefix);
        let request = RangeRequest {
            key: self.prefix.clone(),
            range_end: range_end.clone(),
            ..RangeRequest::default()
        };
        let range = match self
            .cluster
            .call("Range", |channel| {
                let request = request.clone();
                async move { KvClient::new(channel).range(request).await }
            })
            .await
        {
            Ok(range) => range,
            Err(err) => return err,
        };
        let mut instances: BTreeMap<Vec<u8>, Instance> = range
            .kvs
            .into_iter()
            .filter_map(|kv| Some((kv.key.clone(), instance(&kv)?)))
            .collect();
        self.publisher
            .publish(instances.values().cloned().collect());
        backoff.reset();

        let revision = range.header.map_or(0, |header| header.revision);
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: self.prefix.clone(),
                range_end,
                start_revision: revision + 1,
                ..WatchCreateRequest::default()
            })),
        };
        // The request stream stays open after its one create request while this future
        // runs (etcd ends a watch whose client side ends), and ends with it: the
        // connection, not this future, sends it.
        let (open, _) = tokio::sync::watch::channel(());
        let opened = self
            .cluster
            .call("Watch", |channel| {
                let until_done = WatchStream::from_changes(open.subscribe()).filter_map(|()| None);
                let requests = tokio_stream::iter([create.clone()]).chain(until_done);
                async move { WatchClient::new(channel).watch(requests).await }
            })
            .await;
        let mut responses = match opened {
            Ok(responses) => responses,
            Err(err) => return err,
        };
        loop {
            let response = match responses.message().await {
                Ok(Some(response)) => response,
                Ok(None) => return DiscoveryError::backend(BACKEND, "the watch stream ended"),
                Err(status) => return status_error("Watch", "", &status),
            };
            if response.compact_revision > 0 {
                return DiscoveryError::backend(
                    BACKEND,
                    format!(
                        "revision {} is compacted (the oldest kept is {}): listing again",
                        revision + 1,
                        response.compact_revision
                    ),
                );
            }
            if response.canceled {
                return DiscoveryError::backend(
                    BACKEND,
                    format!("the watch was cancelled: {}", response.cancel_reason),
                );
            }
            if response.events.is_empty() {
                continue;
            }
            for event in response.events {
                let event_type = event.r#type();
                let Some(kv) = event.kv else { continue };
                let found = match event_type {
                    EventType::Put => instance(&kv),
                    EventType::Delete => None,
                };
                match found {
                    Some(found) => instances.insert(kv.key, found),
                    None => instances.remove(&kv.key),
                };
            }
            self.publisher
                .publish(instances.values().cloned().collect());
        }
    }
}

/// The instance a registration's key holds; `None`, with a warning, when its value is
/// not a registration record.
fn instance(kv: &KeyValue) -> Option<Instance> {
    match serde_json::from_slice::<Record>(&kv.value) {
        Ok(record) => Some(Instance::new(record.uri)),
        Err(err) => {
            tracing::warn!(
                key = %String::from_utf8_lossy(&kv.key),
                error = %err,
                "ignoring an etcd key that is not a registration"
            );
            None
        }
    }
}

/// The `range_end` that makes a range or watch cover every key starting with `prefix`:
/// the prefix with its last byte below 0xff incremented and what follows dropped; `\0`
/// (every key from `prefix` on) when there is none. The rule of etcd's `RangeRequest`
/// documentation and of clientv3's `GetPrefixRangeEnd`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

// === Cluster ===

/// One etcd member: its client URL and its channel, made on first use (making a channel
/// needs a Tokio runtime; [`EtcdRegistry::new`] does not).
#[derive(Debug)]
struct Member {
    url: String,
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
struct Cluster {
    members: Vec<Member>,
    current: AtomicUsize,
    timeout: Duration,
}

impl Cluster {
    /// Makes `call` on the current member and, while members are unreachable
    /// (UNAVAILABLE, or no answer within the timeout), on the next ones; answers the
    /// first answer or the last error.
    async fn call<T, F, Fut>(&self, method: &str, call: F) -> Result<T, DiscoveryError>
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

    /// Grants a lease of `ttl_s` seconds and puts `key` = `value` with it; a lease whose
    /// put failed is revoked (best effort: it expires anyway).
    async fn grant_and_put(
        &self,
        key: &str,
        value: &[u8],
        ttl_s: i64,
    ) -> Result<Lease, DiscoveryError> {
        let granted = self
            .call("LeaseGrant", |channel| async move {
                LeaseClient::new(channel)
                    .lease_grant(LeaseGrantRequest { ttl: ttl_s, id: 0 })
                    .await
            })
            .await?;
        if !granted.error.is_empty() {
            return Err(DiscoveryError::backend(
                BACKEND,
                format!("LeaseGrant: {}", granted.error),
            ));
        }
        let ttl = u64::try_from(granted.ttl).unwrap_or(1).max(1);
        let lease = Lease {
            id: granted.id,
            ttl: Duration::from_secs(ttl),
        };
        let put = PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.to_vec(),
            lease: lease.id,
            ..PutRequest::default()
        };
        let stored = self
            .call("Put", |channel| {
                let put = put.clone();
                async move { KvClient::new(channel).put(put).await }
            })
            .await;
        if let Err(err) = stored {
            drop(self.revoke(lease.id).await);
            return Err(err);
        }
        Ok(lease)
    }

    /// Revokes lease `id`, deleting its keys; a lease etcd no longer knows (expired) is
    /// not an error.
    async fn revoke(&self, id: i64) -> Result<(), DiscoveryError> {
        self.call("LeaseRevoke", |channel| async move {
            match LeaseClient::new(channel)
                .lease_revoke(LeaseRevokeRequest { id })
                .await
            {
                // etcd's `ErrGRPCLeaseNotFound`: the lease expired already.
                Err(status) if status.code() == tonic::Code::NotFound => {
                    Ok(tonic::Response::new(LeaseRevokeResponse::default()))
                }
                answer => answer,
            }
        })
        .await
        .map(drop)
    }
}

/// A failed call as a [`DiscoveryError`] naming the method and the member.
fn status_error(method: &str, url: &str, status: &tonic::Status) -> DiscoveryError {
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

/// Exponential retry delays from [`FIRST_RETRY`] up to a bound, with ±20 % jitter.
#[derive(Debug)]
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Self {
        Self {
            next: FIRST_RETRY,
            max,
        }
    }

    fn reset(&mut self) {
        self.next = FIRST_RETRY;
    }

    fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay.mul_f64(rand::rng().random_range(0.8..1.2))
    }

    /// Sleeps the next delay; `false` when `cancel` fired first.
    async fn wait(&mut self, cancel: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            () = cancel.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ranges_end_after_the_last_byte_below_0xff() {
        assert_eq!(prefix_end(b"/s/user/"), b"/s/user0");
        assert_eq!(prefix_end(&[b'a', 0xff]), b"b");
        assert_eq!(prefix_end(&[0xff, 0xff]), [0]);
    }

    #[test]
    fn endpoints_are_http_urls_or_bare_host_ports() {
        let config = EtcdConfig {
            endpoints: "10.0.0.1:2379, http://etcd-1:2379,".to_owned(),
            ..EtcdConfig::default()
        };
        let urls: Vec<String> = config
            .members()
            .unwrap()
            .into_iter()
            .map(|m| m.url)
            .collect();
        assert_eq!(urls, ["http://10.0.0.1:2379", "http://etcd-1:2379"]);

        for (endpoints, ttl, key) in [
            ("https://etcd:2379", 10, "discovery.etcd.endpoints"),
            (" , ", 10, "discovery.etcd.endpoints"),
            ("http://bad host:1", 10, "discovery.etcd.endpoints"),
            ("http://etcd:2379", 0, "discovery.etcd.lease_ttl_s"),
        ] {
            let config = EtcdConfig {
                endpoints: endpoints.to_owned(),
                lease_ttl_s: ttl,
                ..EtcdConfig::default()
            };
            let err = config.validate("discovery.etcd").unwrap_err();
            assert!(err.to_string().contains(key), "{endpoints:?}: {err}");
            assert!(EtcdRegistry::new(&config).is_err());
        }
    }

    #[test]
    fn a_key_that_is_not_a_registration_is_ignored() {
        let kv = |value: &str| KeyValue {
            key: b"/k".to_vec(),
            value: value.as_bytes().to_vec(),
            ..KeyValue::default()
        };
        assert_eq!(
            instance(&kv(r#"{"uri":"http://h:1"}"#)),
            Some(Instance::new("http://h:1"))
        );
        assert_eq!(instance(&kv("http://h:1")), None);
    }
}
