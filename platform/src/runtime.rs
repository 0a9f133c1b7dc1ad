//! The life of a service process: parse the command line, load and validate the config
//! before anything binds, install telemetry, then serve (or run a health check, or one of
//! the service's own [`Commands`]) on a tokio runtime, and turn the outcome into an exit
//! code.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::config::ServiceInfo;
use crate::service::{Commands, Config, NoCommands, Service};

/// Exit code for an unusable configuration (sysexits' `EX_CONFIG`).
const EXIT_CONFIG: u8 = 78;

/// The command line every service binary accepts, with the service's own subcommands `C`.
#[derive(Debug, Parser)]
#[command(version, about = "A Trellis gRPC service")]
struct Cli<C: clap::Subcommand> {
    /// A config file (TOML, YAML or JSON) layered between the defaults and the
    /// environment.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command<C>>,
}

#[derive(Debug, clap::Subcommand)]
enum Command<C: clap::Subcommand> {
    /// Serve gRPC (the default).
    Serve,
    /// Ask the running instance configured here for its health (grpc.health.v1 Check of
    /// ""); exit 0 when SERVING, 1 otherwise. For container HEALTHCHECKs.
    Healthcheck,
    /// Print the OpenAPI 3.1 document of the service's HTTP/JSON routes (what it serves
    /// at `GET /openapi.json`), built as `serve` would build the service but with an
    /// in-memory database, no metrics endpoint and a port of the system's choosing; the
    /// service is never started.
    Openapi,
    /// The transactional outbox's messages that peers rejected for good.
    #[command(subcommand)]
    Outbox(OutboxCommand),
    #[command(flatten)]
    Service(C),
}

/// `<service> outbox …`: see and retry what the outbox could not deliver.
#[derive(Debug, clap::Subcommand)]
enum OutboxCommand {
    /// List the messages peers rejected for good (oldest first), with their last error.
    Failed {
        /// The most messages to list.
        #[arg(long, default_value_t = 100)]
        limit: u64,
    },
    /// Put failed messages back in the queue, due now, with their attempts reset: the
    /// ones named, or every failed message. Fix what the peer rejected first.
    Retry {
        /// Message ids (from `outbox failed`); none retries every failed message.
        ids: Vec<uuid::Uuid>,
    },
}

/// The whole `main` of a service binary: `fn main() -> ExitCode { run::<my::Service>() }`.
///
/// Parses the command line, loads and validates the config, installs telemetry, builds
/// the service ([`crate::service::build`]) and serves until SIGINT/SIGTERM. Returns the
/// process's exit code: 0 on a clean stop, 1 when building or serving failed, 78 when the
/// config is unusable (its message names the key).
pub fn run<S: Service>() -> ExitCode {
    run_with::<S, NoCommands>()
}

/// [`run`] for a binary with its own subcommands `C` beside `serve` and `healthcheck`:
/// `fn main() -> ExitCode { run_with::<my::Service, my::Commands>() }`. A command runs
/// with the config `serve` would load and the migrated database (see [`Commands`]); it
/// exits 0 when it succeeds, 1 when it fails (the error is printed to standard error), 78
/// when the config is unusable.
pub fn run_with<S: Service, C: Commands<S>>() -> ExitCode {
    serve_config::<S, C, _, _, _>(|config| async move {
        crate::service::build(config)
            .await?
            .run_until_stopped()
            .await
            .map_err(crate::service::BuildError::from)
    })
}

/// [`run`] with `serve` receiving the validated config and serving until a signal.
fn serve_config<S, C, F, Fut, E>(serve: F) -> ExitCode
where
    S: Service,
    C: Commands<S>,
    F: FnOnce(Config<S>) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
{
    let service = &S::INFO;
    let cli = Cli::<C>::parse();
    let config = match Config::<S>::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{}: configuration error: {err}", service.name);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let workers = worker_threads();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("{}: cannot start the async runtime: {err}", service.name);
            return ExitCode::FAILURE;
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Healthcheck => runtime.block_on(healthcheck(service, &config.server, &config.tls)),
        Command::Openapi => runtime.block_on(openapi::<S>(config)),
        Command::Outbox(command) => runtime.block_on(run_command(
            |_config: Config<S>, db| outbox_command(command, db),
            config,
        )),
        Command::Service(command) => {
            runtime.block_on(run_command(|config, db| command.run(config, db), config))
        }
        Command::Serve => {
            // Inside the runtime: the trace exporter's channel runs on it.
            let telemetry = {
                let _runtime = runtime.enter();
                crate::telemetry::init(&config.telemetry, service.name, env!("CARGO_PKG_VERSION"))
            };
            tracing::info!(
                service = service.name,
                version = env!("CARGO_PKG_VERSION"),
                tracing = telemetry.tracing(),
                workers,
                "starting"
            );
            let drain_timeout = config.server.drain_timeout;
            let code = match runtime.block_on(serve(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    let err: Box<dyn std::error::Error + Send + Sync> = err.into();
                    let chain = crate::status::ErrorChain(err.as_ref());
                    tracing::error!(error = %chain, "stopped with an error");
                    ExitCode::FAILURE
                }
            };
            // On this thread, not a runtime worker (flushing there can stall the export
            // it waits for), while the runtime still runs the exporter's connection.
            telemetry.shutdown(drain_timeout);
            code
        }
    }
}

/// The runtime's worker threads: `TOKIO_WORKER_THREADS` when set to a positive number,
/// else the CPUs this process may use — its affinity mask (`taskset`, a cpuset) and its
/// cgroup's CPU quota (`cpu.max` in cgroup v2, `cpu.cfs_quota_us` in v1: a container's
/// `--cpus`, a Kubernetes CPU limit), rounded down and at least 1, as
/// [`std::thread::available_parallelism`] reads them — never more than that. The host's
/// core count would give a pod limited to one CPU a worker per host core, each one
/// preempted by the quota's throttling.
fn worker_threads() -> usize {
    workers_from(
        std::env::var("TOKIO_WORKER_THREADS").ok().as_deref(),
        std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
    )
}

/// [`worker_threads`] from the variable's value and the available parallelism.
fn workers_from(variable: Option<&str>, available: usize) -> usize {
    variable
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(available)
        .max(1)
}

/// Builds the service as [`Command::Openapi`] says and prints its document.
async fn openapi<S: Service>(mut config: Config<S>) -> ExitCode {
    config.server.listen_addr = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    config.metrics = crate::metrics::MetricsConfig::disabled();
    config.database.url = secrecy::SecretString::from("sqlite::memory:");
    let outcome = async {
        let app = crate::service::build(config).await?;
        println!("{}", serde_json::to_string_pretty(app.openapi())?);
        Ok(())
    };
    exit_code::<S>(outcome.await)
}

/// 0 for success; 1 with the error's chain on standard error otherwise.
fn exit_code<S: Service>(outcome: Result<(), crate::service::BuildError>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!(
                "{}: {}",
                S::INFO.name,
                crate::status::ErrorChain(err.as_ref())
            );
            ExitCode::FAILURE
        }
    }
}

/// Opens and migrates the database `config` names and runs `command` against it.
async fn run_command<S, F, Fut>(command: F, config: Config<S>) -> ExitCode
where
    S: Service,
    F: FnOnce(Config<S>, sea_orm::DatabaseConnection) -> Fut,
    Fut: Future<Output = Result<(), crate::service::BuildError>>,
{
    let outcome = match crate::data::connect::<S::Migrator>(&config.database).await {
        Ok(db) => command(config, db).await,
        Err(err) => Err(err.into()),
    };
    exit_code::<S>(outcome)
}

/// Runs an `outbox` subcommand, printing to standard output.
async fn outbox_command(
    command: OutboxCommand,
    db: sea_orm::DatabaseConnection,
) -> Result<(), crate::service::BuildError> {
    match command {
        OutboxCommand::Failed { limit } => {
            let total = crate::outbox::failed_count(&db).await?;
            for message in crate::outbox::failed_messages(&db, limit).await? {
                println!(
                    "{}\t{}\t{}\tattempts={}\tfailed={}\t{}",
                    message.id,
                    message.peer,
                    message.method,
                    message.attempts,
                    message
                        .failed_time
                        .map(|time| time.to_rfc3339())
                        .unwrap_or_default(),
                    message.last_error.unwrap_or_default()
                );
            }
            println!("{total} failed message(s)");
        }
        OutboxCommand::Retry { ids } => {
            let ids = (!ids.is_empty()).then_some(ids.as_slice());
            let retried = crate::outbox::retry_failed(&db, ids).await?;
            println!("{retried} message(s) back in the queue");
        }
    }
    Ok(())
}

async fn healthcheck(
    service: &ServiceInfo,
    server: &crate::server::ServerConfig,
    tls: &crate::tls::TlsConfig,
) -> ExitCode {
    let addr = server.local_client_addr();
    let status = async {
        // Under TLS, as a peer would: this workload's certificate, and the server must
        // prove this workload's own SPIFFE ID.
        let channel = match crate::tls::TlsSource::load(tls, service.name)? {
            Some(source) => crate::tls::PeerTls::new(source, tls.identity_of(service.name))
                .channel(&addr.to_string(), std::time::Duration::from_secs(5))?,
            None => {
                tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                    .connect()
                    .await?
            }
        };
        let mut client = HealthClient::new(channel);
        let response = client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await?;
        Ok::<_, Box<dyn std::error::Error>>(response.into_inner().status())
    };
    match tokio::time::timeout(std::time::Duration::from_secs(5), status).await {
        Ok(Ok(ServingStatus::Serving)) => ExitCode::SUCCESS,
        Ok(Ok(other)) => {
            eprintln!("{} at {addr}: {}", service.name, other.as_str_name());
            ExitCode::FAILURE
        }
        Ok(Err(err)) => {
            eprintln!("{} at {addr}: {err}", service.name);
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("{} at {addr}: no answer within 5 s", service.name);
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::{Cli, Command, NoCommands, OutboxCommand, workers_from};

    /// A service's own subcommands, as a service declares them.
    #[derive(Debug, PartialEq, Eq, clap::Subcommand)]
    enum Admin {
        /// Grant something.
        Grant { email: String },
    }

    #[test]
    fn a_services_own_subcommands_parse_beside_the_platforms() -> Result<(), clap::Error> {
        let cli = Cli::<Admin>::try_parse_from(["svc", "--config", "c.toml", "grant", "a@b.c"])?;
        assert_eq!(
            cli.command
                .map(|c| matches!(c, Command::Service(Admin::Grant { email }) if email == "a@b.c")),
            Some(true)
        );
        let cli = Cli::<Admin>::try_parse_from(["svc", "healthcheck"])?;
        assert!(matches!(cli.command, Some(Command::Healthcheck)));
        Ok(())
    }

    #[test]
    fn every_binary_has_the_outbox_commands() -> Result<(), clap::Error> {
        let cli = Cli::<NoCommands>::try_parse_from(["svc", "outbox", "failed"])?;
        assert!(matches!(
            cli.command,
            Some(Command::Outbox(OutboxCommand::Failed { limit: 100 }))
        ));
        let id = "0190f1c2-0000-7000-8000-000000000001";
        let cli = Cli::<NoCommands>::try_parse_from(["svc", "outbox", "retry", id])?;
        assert!(matches!(
            cli.command,
            Some(Command::Outbox(OutboxCommand::Retry { ids })) if ids.len() == 1
        ));
        assert!(Cli::<NoCommands>::try_parse_from(["svc", "outbox", "retry", "nope"]).is_err());
        Ok(())
    }

    #[test]
    fn without_commands_only_the_platforms_parse() -> Result<(), clap::Error> {
        assert!(Cli::<NoCommands>::try_parse_from(["svc", "grant", "a@b.c"]).is_err());
        assert!(
            Cli::<NoCommands>::try_parse_from(["svc"])?
                .command
                .is_none()
        );
        let cli = Cli::<NoCommands>::try_parse_from(["svc", "serve"])?;
        assert!(matches!(cli.command, Some(Command::Serve)));
        Ok(())
    }

    #[test]
    fn workers_follow_the_available_cpus_unless_the_variable_names_a_count() {
        assert_eq!(workers_from(None, 1), 1);
        assert_eq!(workers_from(None, 6), 6);
        assert_eq!(workers_from(Some("3"), 1), 3);
        for unusable in ["0", "", "many", "-2"] {
            assert_eq!(workers_from(Some(unusable), 2), 2, "{unusable:?}");
        }
    }
}
