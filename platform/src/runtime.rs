//! The life of a service process: parse the command line, load and validate the config
//! before anything binds, install telemetry, then serve (or run a health check) on a
//! tokio runtime, and turn the outcome into an exit code.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::config::ServiceInfo;
use crate::service::{Config, Service};

/// Exit code for an unusable configuration (sysexits' `EX_CONFIG`).
const EXIT_CONFIG: u8 = 78;

/// The command line every service binary accepts.
#[derive(Debug, Parser)]
#[command(version, about = "A Trellis gRPC service")]
struct Cli {
    /// A config file (TOML, YAML or JSON) layered between the defaults and the
    /// environment.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Serve gRPC (the default).
    Serve,
    /// Ask the running instance configured here for its health (grpc.health.v1 Check of
    /// ""); exit 0 when SERVING, 1 otherwise. For container HEALTHCHECKs.
    Healthcheck,
}

/// The whole `main` of a service binary: `fn main() -> ExitCode { run::<my::Service>() }`.
///
/// Parses the command line, loads and validates the config, installs telemetry, builds
/// the service ([`crate::service::build`]) and serves until SIGINT/SIGTERM. Returns the
/// process's exit code: 0 on a clean stop, 1 when building or serving failed, 78 when the
/// config is unusable (its message names the key).
pub fn run<S: Service>() -> ExitCode {
    serve_config::<S, _, _, _>(|config| async move {
        crate::service::build(config)
            .await?
            .run_until_stopped()
            .await
            .map_err(crate::service::BuildError::from)
    })
}

/// [`run`] with `serve` receiving the validated config and serving until a signal.
fn serve_config<S, F, Fut, E>(serve: F) -> ExitCode
where
    S: Service,
    F: FnOnce(Config<S>) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
{
    let service = &S::INFO;
    let cli = Cli::parse();
    let config = match Config::<S>::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{}: configuration error: {err}", service.name);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
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
        Command::Healthcheck => runtime.block_on(healthcheck(service, &config.server)),
        Command::Serve => {
            crate::telemetry::init(&config.telemetry);
            tracing::info!(
                service = service.name,
                version = env!("CARGO_PKG_VERSION"),
                "starting"
            );
            match runtime.block_on(serve(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    let err: Box<dyn std::error::Error + Send + Sync> = err.into();
                    let chain = crate::status::ErrorChain(err.as_ref());
                    tracing::error!(error = %chain, "stopped with an error");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn healthcheck(service: &ServiceInfo, server: &crate::server::ServerConfig) -> ExitCode {
    let addr = server.local_client_addr();
    let status = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
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
