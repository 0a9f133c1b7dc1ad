//! The Trellis platform: everything a production gRPC service needs besides its business
//! logic — configuration, the server (health, reflection, limits, per-RPC tracing,
//! graceful shutdown), telemetry, error statuses, pagination tokens, data access, peers,
//! authentication, the outbox and Prometheus metrics.
//!
//! A service implements [`Service`] (its name, defaults, settings, migrations, access
//! policy and handlers) and its `main.rs` is one call:
//!
//! ```ignore
//! fn main() -> std::process::ExitCode {
//!     trellis_platform::run::<my_service::Service>()
//! }
//! ```
//!
//! Modules form layers with no cycle (a tidy test in xtask checks it): leaves first —
//! `config` (loading, errors), `context` (request context), `validation`, `status`,
//! `pagination`, `telemetry`, `data`, `metrics`, `faults`; then `server`, `peer`, `auth`, `outbox`; then
//! `rate_limit` (over `auth`'s policy and `server`'s client address) and `app`; then
//! `service` (the builder), `runtime` and `testing` on top.

pub mod app;
pub mod auth;
pub mod config;
pub mod context;
pub mod data;
pub mod discovery;
pub mod faults;
pub mod http_json;
pub mod metrics;
pub mod outbox;
pub mod pagination;
pub mod peer;
pub mod rate_limit;
pub mod runtime;
pub mod server;
pub mod service;
pub mod status;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tls;
pub mod validation;

pub use config::{ConfigError, ServiceInfo};
pub use runtime::{run, run_with};
pub use service::{BuildError, Commands, Config, Context, NoCommands, Service};
