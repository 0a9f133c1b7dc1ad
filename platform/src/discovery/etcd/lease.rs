//! Lease registration: an instance's key put under a lease (`LeaseGrant`, then `Put`
//! with the lease), kept alive by a task streaming `LeaseKeepAlive` every TTL/3 and put
//! again under a new lease when the old one is lost; deregistering revokes the lease,
//! which deletes the key at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::IntervalStream;
use tokio_util::sync::CancellationToken;
use trellis_proto::etcd::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, LeaseRevokeResponse, PutRequest,
    kv_client::KvClient, lease_client::LeaseClient,
};

use super::cluster::{Cluster, status_error};
use super::{BACKEND, Backoff, FIRST_RETRY, MAX_RETRY};
use crate::discovery::{BoxFuture, DiscoveryError, Registered};

/// A granted lease: its id and the TTL etcd chose.
#[derive(Debug, Clone, Copy)]
struct Lease {
    id: i64,
    ttl: Duration,
}

/// Puts `key` = `value` under a lease of `ttl_s` seconds and keeps it alive until the
/// answer is deregistered or dropped.
pub(super) async fn register(
    cluster: &Arc<Cluster>,
    key: String,
    value: Vec<u8>,
    ttl_s: i64,
) -> Result<Box<dyn Registered>, DiscoveryError> {
    let lease = grant_and_put(cluster, &key, &value, ttl_s).await?;
    tracing::info!(
        key,
        lease = lease.id,
        ttl_s = lease.ttl.as_secs(),
        "registered in etcd"
    );
    let cancel = CancellationToken::new();
    let keeper = Keeper {
        cluster: Arc::clone(cluster),
        key: key.clone(),
        value,
        ttl_s,
        cancel: cancel.clone(),
    };
    let task = tokio::spawn(keeper.run(lease));
    Ok(Box::new(EtcdRegistered {
        cluster: Arc::clone(cluster),
        key,
        cancel,
        keep_alive: Some(task),
    }))
}

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
            revoke(&self.cluster, lease).await?;
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
                match grant_and_put(&self.cluster, &self.key, &self.value, self.ttl_s).await {
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

// === Calls ===

/// Grants a lease of `ttl_s` seconds and puts `key` = `value` with it; a lease whose
/// put failed is revoked (best effort: it expires anyway).
async fn grant_and_put(
    cluster: &Cluster,
    key: &str,
    value: &[u8],
    ttl_s: i64,
) -> Result<Lease, DiscoveryError> {
    let granted = cluster
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
    let stored = cluster
        .call("Put", |channel| {
            let put = put.clone();
            async move { KvClient::new(channel).put(put).await }
        })
        .await;
    if let Err(err) = stored {
        drop(revoke(cluster, lease.id).await);
        return Err(err);
    }
    Ok(lease)
}

/// Revokes lease `id`, deleting its keys; a lease etcd no longer knows (expired) is
/// not an error.
async fn revoke(cluster: &Cluster, id: i64) -> Result<(), DiscoveryError> {
    cluster
        .call("LeaseRevoke", |channel| async move {
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
