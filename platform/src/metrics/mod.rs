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
//!
//! The scrape rate never becomes the query rate: the [`Metrics::on_scrape`] refreshes
//! run at most once per [`SCRAPE_REFRESH_INTERVAL`] (5 s) and one run at a time —
//! scrapes that arrive while a run is in progress wait for it and answer its values, and
//! scrapes within the interval answer the values of the last run. However many clients
//! scrape, and however often, a database-backed gauge costs at most one round of queries
//! per interval. Refreshes of in-memory state, cheap and expected fresh, go to
//! [`Metrics::on_every_scrape`] instead.

pub mod endpoint;
pub mod grpc;
pub mod layer;
mod refresh;

pub use endpoint::MetricsEndpoint;
pub use layer::{ClientMetrics, MetricsLayer};
pub use prometheus;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::{IntGauge, IntGaugeVec, Opts, Registry};
use serde::Deserialize;

use grpc::{RpcMetrics, Side};

/// How long a scrape waits for the async refreshes ([`Metrics::on_scrape`]) before it
/// answers with the values it has.
pub const SCRAPE_REFRESH_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the values of the [`Metrics::on_scrape`] refreshes are reused: a scrape
/// within this time of the last run's start answers its values without running them
/// again. Prometheus scrapes every 15 s to 1 min, so one scraper always sees fresh
/// values; a second scraper (an HA pair) or a client scraping in a loop adds no query.
pub const SCRAPE_REFRESH_INTERVAL: Duration = Duration::from_secs(5);

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

/// One service's metrics: its registry, with the process collector and the
/// `grpc_client_*` families registered. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    client: ClientMetrics,
    refreshes: refresh::Refreshes,
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
                refreshes: refresh::Refreshes::default(),
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

    /// Runs `refresh` before a scrape is encoded, to update gauges from a slow source (a
    /// database count) — at most once per [`SCRAPE_REFRESH_INTERVAL`], shared by every
    /// scrape in that time and by the scrapes that arrive while it runs (single-flight).
    /// Every refresh of a run shares [`SCRAPE_REFRESH_TIMEOUT`]; one that fails or runs
    /// out of time is logged at WARN (naming `what`) and its gauges keep their last
    /// values until the next run.
    pub fn on_scrape<F, Fut>(&self, what: &'static str, refresh: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), RefreshError>> + Send + 'static,
    {
        self.inner
            .refreshes
            .add(what, refresh::boxed(refresh), false);
    }

    /// Runs `refresh` before every scrape, uncached: for gauges read from in-memory state
    /// (a breaker's state, a balancer's instances) that cost no I/O and must be current.
    /// Timeouts and failures as [`Self::on_scrape`].
    pub fn on_every_scrape<F, Fut>(&self, what: &'static str, refresh: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), RefreshError>> + Send + 'static,
    {
        self.inner
            .refreshes
            .add(what, refresh::boxed(refresh), true);
    }

    /// Runs every refresh ([`Self::on_scrape`] and [`Self::on_every_scrape`]) now, all
    /// within `timeout`, whatever the cache holds (for tests and tools; scrapes go
    /// through [`Self::scrape`]).
    pub async fn refresh(&self, timeout: Duration) {
        self.inner.refreshes.run_all(timeout).await;
    }

    /// Every metric in Prometheus' text format 0.0.4, as it stands (no refresh).
    ///
    /// # Errors
    /// [`MetricsError::Register`] when a collector yields a malformed family.
    pub fn encode(&self) -> Result<String, MetricsError> {
        Ok(prometheus::TextEncoder::new().encode_to_string(&self.inner.registry.gather())?)
    }

    /// What the endpoint answers: the refreshes due (every [`Self::on_every_scrape`] one;
    /// the [`Self::on_scrape`] ones at most once per [`SCRAPE_REFRESH_INTERVAL`],
    /// single-flight), within [`SCRAPE_REFRESH_TIMEOUT`], then [`Self::encode`].
    ///
    /// # Errors
    /// As [`Self::encode`].
    pub async fn scrape(&self) -> Result<String, MetricsError> {
        self.inner
            .refreshes
            .run_for_scrape(SCRAPE_REFRESH_INTERVAL, SCRAPE_REFRESH_TIMEOUT)
            .await;
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
