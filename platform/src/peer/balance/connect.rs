//! Connections to one instance: a lazily connected channel, plaintext or mutual TLS
//! through [`PeerTls`], and the [`Endpoint`] that holds it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicUsize};
use std::time::Duration;

use tokio::time::Instant;

use tonic::transport::{Channel, Endpoint as TonicEndpoint};

use super::{DEFAULT_RTT, Endpoint, HEALTH_UNKNOWN};
use crate::discovery::Instance;
use crate::tls::PeerTls;

pub(super) fn connect(
    instance: &Instance,
    connect_timeout: Duration,
    tls: Option<&PeerTls>,
) -> Result<Arc<Endpoint>, String> {
    let generation = tls.map_or(0, PeerTls::generation);
    let channel = make_channel(instance, connect_timeout, tls)?;
    Ok(Arc::new(Endpoint {
        instance: instance.clone(),
        channel: parking_lot::Mutex::new((generation, channel)),
        connect_timeout,
        tls: tls.cloned(),
        health: AtomicU8::new(HEALTH_UNKNOWN),
        outstanding: AtomicUsize::new(0),
        consecutive_failures: AtomicU32::new(0),
        ejections: AtomicU32::new(0),
        rtt: parking_lot::Mutex::new((DEFAULT_RTT.as_nanos() as f64, Instant::now())),
        ejected_until: parking_lot::Mutex::new(None),
        suspect_until: parking_lot::Mutex::new(None),
        health_task: parking_lot::Mutex::new(None),
    }))
}

/// A lazily connected channel to `instance`: plaintext, or mutual TLS through `tls`
/// whatever the address's scheme says ([`PeerTls::channel`]).
pub(super) fn make_channel(
    instance: &Instance,
    connect_timeout: Duration,
    tls: Option<&PeerTls>,
) -> Result<Channel, String> {
    let Some(tls) = tls else {
        return Ok(TonicEndpoint::from_shared(instance.uri.clone())
            .map_err(|err| err.to_string())?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .connect_lazy());
    };
    let authority = instance
        .uri
        .split_once("://")
        .map_or(instance.uri.as_str(), |(_, rest)| rest)
        .trim_end_matches('/');
    tls.channel(authority, connect_timeout)
}
