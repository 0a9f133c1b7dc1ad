//! Prometheus metrics: one [`Metrics`] handle per service (a registry of its own, so
//! several services can run in one process), served as text (format 0.0.4) on
//! `http://<metrics.host>:<metrics.port>/metrics` ([`endpoint`]).
//!
//! What a service exports without writing a line:
//!
//! - the gRPC families of grpc-ecosystem's go-grpc-middleware Prometheus provider, which
//!   the usual Grafana gRPC dashboards query ([`grpc`]): `grpc_server_started_total`,
//!   `grpc_server_handled_total`, `grpc_server_msg_received_total`,
//!   `grpc_server_msg_sent_total`, `grpc_server_handling_seconds` (histogram, Prometheus'
//!   default buckets) for the calls it answers ([`MetricsLayer`]) and their
//!   `grpc_client_*` twins for its calls to peers ([`ClientMetrics`]), labelled
//!   `grpc_type`, `grpc_service`, `grpc_method` (and `grpc_code` on `handled_total`, spelt
//!   as grpc-go spells codes). Every server method × code series exists at zero from the
//!   start; paths no descriptor names share `grpc_service="unknown"`,
//!   `grpc_method="unknown"`;
//! - the process: `process_cpu_seconds_total`, `process_resident_memory_bytes`,
//!   `process_open_fds`, `process_max_fds`, `process_virtual_memory_bytes`,
//!   `process_threads`, `process_start_time_seconds` (Linux);
//! - the database pool: `trellis_db_pool_connections{state="in_use"|"idle"}`;
//! - the outbox, when the service uses it ([`crate::outbox`]);
//! - token verification failures by reason ([`crate::auth`]).
//!
//! A service adds its own through [`crate::Context::metrics`]: create a collector of the
//! `prometheus` crate (re-exported here as [`prometheus`]) and [`Metrics::register`] it,
//! or give a function read at each scrape to [`Metrics::gauge_fn`], or an async refresh
//! to [`Metrics::on_scrape`] (e.g. a database count). Name it `trellis_<service>_…`, with
//! a unit suffix (`_seconds`, `_bytes`) and `_total` on counters, so
//! `promtool check metrics` stays quiet.

pub mod endpoint;
pub mod grpc;
pub mod layer;

pub use endpoint::MetricsEndpoint;
pub use layer::{ClientMetrics, MetricsLayer};
pub use prometheus;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::{IntGauge, IntGaugeVec, Opts, Registry};
use serde::Deserialize;

use grpc::{RpcMetrics, Side};

/// How long a scrape waits for the async refreshes ([`Metrics::on_scrape`]) before it
/// answers with the values it has.
pub const SCRAPE_REFRESH_TIMEOUT: Duration = Duration::from_secs(2);

/// The `metrics` section of a service's configuration.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// The address the endpoint listens on. Default `0.0.0.0`.
    pub host: IpAddr,
    /// The endpoint's port; `0` disables it. A service's default is its
    /// [`crate::Service::DEFAULT_METRICS_PORT`] (its gRPC port + 1000: user 51051, auth
    /// 51052, notification 51053).
    pub port: u16,
}

impl Default for MetricsConfig {
    /// Disabled (port 0) on `0.0.0.0`.
    fn default() -> Self {
        Self::with_port(0)
    }
}

impl MetricsConfig {
    /// The endpoint on `0.0.0.0:port`.
    pub fn with_port(port: u16) -> Self {
        Self {
            host: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port,
        }
    }

    /// No endpoint (tests, or a process scraped some other way).
    pub fn disabled() -> Self {
        Self::default()
    }

    /// Whether an endpoint is served.
    pub fn enabled(&self) -> bool {
        self.port != 0
    }
}

/// Why metrics could not be set up or served.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// A collector could not be registered (e.g. a name already taken).
    #[error("cannot register metrics")]
    Register(#[from] prometheus::Error),
    /// A descriptor set, read for the method table, is malformed.
    #[error("cannot decode a descriptor set for the gRPC metrics")]
    Descriptor(#[from] prost::DecodeError),
    /// The endpoint's address could not be bound.
    #[error("cannot listen for metrics on {addr}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The I/O failure.
        #[source]
        source: std::io::Error,
    },
}

/// An error of an async refresh ([`Metrics::on_scrape`]).
pub type RefreshError = Box<dyn std::error::Error + Send + Sync + 'static>;

type Refresh =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), RefreshError>> + Send>> + Send + Sync>;

/// One service's metrics: its registry, with the process collector and the
/// `grpc_client_*` families registered. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    client: ClientMetrics,
    refreshes: parking_lot::Mutex<Vec<(&'static str, Refresh)>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A fresh registry with the process metrics and the client families (labelled from
    /// every contract in [`trellis_proto::FILE_DESCRIPTOR_SET`] and health's).
    ///
    /// # Errors
    /// [`MetricsError`] when the built-in descriptor sets do not decode (a build defect).
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let table = grpc::method_table(
            &[
                trellis_proto::FILE_DESCRIPTOR_SET,
                tonic_health::pb::FILE_DESCRIPTOR_SET,
            ],
            None,
        )?;
        // Client series appear on a method's first call, as in the Go provider: a
        // service calls few of the contracts' methods.
        let client = RpcMetrics::new(Side::Client, table, &registry, false)?;
        Ok(Self {
            inner: Arc::new(Inner {
                registry,
                client: ClientMetrics::new(Arc::new(client)),
                refreshes: parking_lot::Mutex::default(),
            }),
        })
    }

    /// The registry, for anything the other methods do not cover.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// Registers `collector` (any `prometheus` metric or vector) and returns it, to keep
    /// as the handle that updates it.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use trellis_platform::metrics::{Metrics, prometheus::IntCounter};
    /// let metrics = Metrics::new()?;
    /// let sent = metrics.register(IntCounter::new(
    ///     "trellis_example_emails_sent_total",
    ///     "Emails handed to the mail relay.",
    /// )?)?;
    /// sent.inc();
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`MetricsError::Register`] when its name (with the same labels) is taken.
    pub fn register<C: Collector + Clone + 'static>(
        &self,
        collector: C,
    ) -> Result<C, MetricsError> {
        self.inner.registry.register(Box::new(collector.clone()))?;
        Ok(collector)
    }

    /// Registers the gauge `name`, set to what `read` returns each time it is scraped
    /// (for a value the service already keeps, such as a count of open streams).
    ///
    /// # Errors
    /// [`MetricsError::Register`] when the name is invalid or taken.
    pub fn gauge_fn(
        &self,
        name: &str,
        help: &str,
        read: impl Fn() -> i64 + Send + Sync + 'static,
    ) -> Result<(), MetricsError> {
        let gauge = IntGauge::new(name, help)?;
        let set = gauge.clone();
        self.inner.registry.register(Box::new(ReadAtCollect {
            collector: gauge,
            read: move || set.set(read()),
        }))?;
        Ok(())
    }

    /// Runs `refresh` before each scrape is encoded, to update gauges from a slow source
    /// (a database count). Every refresh of a scrape shares [`SCRAPE_REFRESH_TIMEOUT`];
    /// one that fails or runs out of time is logged at WARN (naming `what`) and its
    /// gauges keep their last values.
    pub fn on_scrape<F, Fut>(&self, what: &'static str, refresh: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), RefreshError>> + Send + 'static,
    {
        let refresh: Refresh = Arc::new(move || Box::pin(refresh()));
        self.inner.refreshes.lock().push((what, refresh));
    }

    /// Runs every [`Self::on_scrape`] refresh, all within `timeout`.
    pub async fn refresh(&self, timeout: Duration) {
        let refreshes = self.inner.refreshes.lock().clone();
        let deadline = tokio::time::Instant::now() + timeout;
        for (what, refresh) in refreshes {
            match tokio::time::timeout_at(deadline, refresh()).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    tracing::warn!(metric = what, error = %err, "cannot refresh a metric; keeping its last value");
                }
                Err(_) => {
                    tracing::warn!(
                        metric = what,
                        timeout_ms = timeout.as_millis() as u64,
                        "metric refresh timed out; keeping its last value"
                    );
                }
            }
        }
    }

    /// Every metric in Prometheus' text format 0.0.4, as it stands (no refresh).
    ///
    /// # Errors
    /// [`MetricsError::Register`] when a collector yields a malformed family.
    pub fn encode(&self) -> Result<String, MetricsError> {
        Ok(prometheus::TextEncoder::new().encode_to_string(&self.inner.registry.gather())?)
    }

    /// What the endpoint answers: [`Self::refresh`] within [`SCRAPE_REFRESH_TIMEOUT`],
    /// then [`Self::encode`].
    ///
    /// # Errors
    /// As [`Self::encode`].
    pub async fn scrape(&self) -> Result<String, MetricsError> {
        self.refresh(SCRAPE_REFRESH_TIMEOUT).await;
        self.encode()
    }

    /// Registers the `grpc_server_*` families for a server running `services` (plus
    /// health and reflection, always served), with the method table read from
    /// `descriptor_sets` (plus health's and reflection's), every method × code series at
    /// zero; returns the layer that records into them. Called once per handle, by
    /// [`crate::server::ServerBuilder::bind`].
    ///
    /// # Errors
    /// [`MetricsError::Register`] when called a second time on the same handle;
    /// [`MetricsError::Descriptor`] when a set is malformed.
    pub fn server_layer(
        &self,
        services: &[&str],
        descriptor_sets: &[&[u8]],
    ) -> Result<MetricsLayer, MetricsError> {
        let mut sets = vec![
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ];
        sets.extend_from_slice(descriptor_sets);
        let mut names = vec![
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ];
        names.extend_from_slice(services);
        let table = grpc::method_table(&sets, Some(&names))?;
        let rpc = RpcMetrics::new(Side::Server, table, &self.inner.registry, true)?;
        Ok(MetricsLayer::new(Arc::new(rpc)))
    }

    /// The `grpc_client_*` recorder, for peer channels.
    pub fn client(&self) -> ClientMetrics {
        self.inner.client.clone()
    }

    /// Registers `trellis_db_pool_connections{state="in_use"|"idle"}`, read from `db`'s
    /// connection pool (SQLite or PostgreSQL) at each scrape.
    ///
    /// # Errors
    /// [`MetricsError::Register`] when called twice on the same handle.
    pub fn watch_database(&self, db: &sea_orm::DatabaseConnection) -> Result<(), MetricsError> {
        let gauges = IntGaugeVec::new(
            Opts::new(
                "trellis_db_pool_connections",
                "Connections of the database pool, by state: in_use (lent out) or idle.",
            ),
            &["state"],
        )?;
        let in_use = gauges.with_label_values(&["in_use"]);
        let idle = gauges.with_label_values(&["idle"]);
        let db = db.clone();
        self.inner.registry.register(Box::new(ReadAtCollect {
            collector: gauges,
            read: move || {
                if let Some((size, idle_now)) = pool_state(&db) {
                    idle.set(idle_now);
                    in_use.set(size.saturating_sub(idle_now));
                }
            },
        }))?;
        Ok(())
    }
}

/// The pool's (size, idle connections), for the pooled backends.
fn pool_state(db: &sea_orm::DatabaseConnection) -> Option<(i64, i64)> {
    use sea_orm::DatabaseConnectionType as Kind;
    let (size, idle) = match &db.inner {
        Kind::SqlxSqlitePoolConnection(_) => {
            let pool = db.get_sqlite_connection_pool();
            (pool.size(), pool.num_idle())
        }
        Kind::SqlxPostgresPoolConnection(_) => {
            let pool = db.get_postgres_connection_pool();
            (pool.size(), pool.num_idle())
        }
        _ => return None,
    };
    Some((i64::from(size), i64::try_from(idle).unwrap_or(i64::MAX)))
}

/// A collector whose values are set by `read` each time it is collected.
struct ReadAtCollect<C, F> {
    collector: C,
    read: F,
}

impl<C: Collector, F: Fn() + Send + Sync> Collector for ReadAtCollect<C, F> {
    fn desc(&self) -> Vec<&Desc> {
        self.collector.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        (self.read)();
        self.collector.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gauge_fn_is_read_at_each_scrape() {
        let metrics = Metrics::new().expect("metrics");
        let value = Arc::new(std::sync::atomic::AtomicI64::new(3));
        let read = Arc::clone(&value);
        metrics
            .gauge_fn("trellis_test_things", "Things.", move || {
                read.load(std::sync::atomic::Ordering::Relaxed)
            })
            .expect("registered");
        assert!(
            metrics
                .encode()
                .expect("text")
                .contains("trellis_test_things 3\n")
        );
        value.store(5, std::sync::atomic::Ordering::Relaxed);
        assert!(
            metrics
                .encode()
                .expect("text")
                .contains("trellis_test_things 5\n")
        );
    }

    #[tokio::test]
    async fn a_failed_refresh_keeps_the_last_value() {
        let metrics = Metrics::new().expect("metrics");
        let gauge = metrics
            .register(IntGauge::new("trellis_test_backlog", "Backlog.").expect("valid"))
            .expect("registered");
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = Arc::clone(&calls);
        let set = gauge.clone();
        metrics.on_scrape("backlog", move || {
            let call = seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let set = set.clone();
            async move {
                if call == 0 {
                    set.set(7);
                    Ok(())
                } else {
                    Err("the database is down".into())
                }
            }
        });
        // The second refresh fails: the value stays.
        for _ in 0..2 {
            let text = metrics.scrape().await.expect("text");
            assert!(text.contains("trellis_test_backlog 7\n"), "{text}");
        }
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_refresh_does_not_hold_the_scrape() {
        let metrics = Metrics::new().expect("metrics");
        metrics.on_scrape("forever", std::future::pending);
        let text = metrics.scrape().await.expect("text");
        assert!(text.contains("# TYPE"), "{text}");
    }

    #[test]
    fn a_second_server_on_one_handle_is_refused() {
        let metrics = Metrics::new().expect("metrics");
        metrics.server_layer(&[], &[]).expect("the first");
        assert!(matches!(
            metrics.server_layer(&[], &[]),
            Err(MetricsError::Register(_))
        ));
    }
}
