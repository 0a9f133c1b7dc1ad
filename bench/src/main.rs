//! The `trellis-bench` command (run by `cargo xtask bench`): parses the options, pins
//! itself to the load generator's CPUs, runs the plan, prints the table, writes the JSON
//! and exits non-zero when an SLO gate fails. `trellis-bench baseline-server` is the
//! bare-tonic server the bench measures as its baseline.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use trellis_bench::load::{Load, Scenario, SubscribeOptions, SystemUnderTest, Targets};
use trellis_bench::plan::{Plan, Under, Variant};
use trellis_bench::units::parse_duration;
use trellis_bench::{baseline, plan, slo, system};

/// Load generator for Trellis's RPCs, with a bare-tonic baseline measured in the same run.
#[derive(Debug, Parser)]
#[command(name = "trellis-bench", args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve a bare tonic health server (the baseline) until SIGTERM or Ctrl-C.
    BaselineServer {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
    /// Print argon2id verifications a second on one thread, with the user service's
    /// default cost (the login scenario's reference).
    Argon2Rate {
        /// How long to measure (e.g. 3s).
        #[arg(long, default_value = "3s", value_parser = parse_duration)]
        duration: Duration,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Scenarios to run, in order (repeatable or comma-separated): health, get-user,
    /// list-notifications, create-user, login, mixed (80 % get-user, 15 %
    /// list-notifications, 5 % create-user), subscribe.
    #[arg(long, value_delimiter = ',', default_value = "health")]
    scenario: Vec<String>,
    /// HTTP/2 connections per service called.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Calls in flight at once per connection.
    #[arg(long, default_value_t = 16)]
    streams: usize,
    /// Open loop: send this many requests per second in all, latency measured from each
    /// request's intended send time. Without it, a closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Measured window per scenario (e.g. 10s, 1m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Load before each window, not measured.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// A call unanswered this long counts as DEADLINE_EXCEEDED.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// Measure a running system instead of starting one:
    /// `user=http://…,auth=http://…,notification=http://…` (and `health=` for the health
    /// scenario, default: the user service; `subscribe=` for where the subscribe scenario
    /// opens its streams, default: where it sends — another replica measures delivery
    /// across replicas).
    #[arg(long)]
    target: Option<String>,
    /// With --target: a server process whose CPU and memory to read (repeatable).
    #[arg(long, requires = "target")]
    watch_pid: Vec<u32>,
    /// With --target: the client secret of the service client `user`, for the subscribe
    /// scenario's internal SendNotification calls.
    #[arg(
        long,
        env = "TRELLIS_BENCH_CLIENT_SECRET",
        requires = "target",
        hide_env_values = true
    )]
    client_secret: Option<String>,
    /// Start the system once per variant with extra environment variables:
    /// `NAME:KEY=VALUE,KEY=VALUE` (repeatable). Default: one variant, `trellis`, with none.
    #[arg(long, conflicts_with = "target")]
    variant: Vec<String>,
    /// Measure the baseline and every variant this many times, alternating.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// SLO gates, e.g. `p99<20ms,errors<0.1%,rps>1000` (also p50, p90, p999, max, and
    /// `ratio>0.5`: req/s ÷ the baseline's); `SCENARIO:GATE` limits a gate to one
    /// scenario (`get-user:ratio>0.05`). The command exits with status 3 when any fails.
    #[arg(long)]
    slo: Option<String>,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Where the service binaries are (default: beside this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// CPUs for the servers (a `taskset -c` list). Default `0` when there are at least two.
    #[arg(long)]
    server_cpus: Option<String>,
    /// CPUs for the load generator. Default: all but the first, when there are two or more.
    #[arg(long)]
    client_cpus: Option<String>,
    /// Do not pin anything to CPUs.
    #[arg(long, conflicts_with_all = ["server_cpus", "client_cpus"])]
    no_pin: bool,
    /// Skip the bare-tonic baseline.
    #[arg(long)]
    no_baseline: bool,
    /// subscribe: live Subscribe streams.
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    /// subscribe: streams per account (the service allows 8 per user by default).
    #[arg(long, default_value_t = 8)]
    subscribers_per_user: usize,
    /// subscribe: notifications sent per second through SendNotification.
    #[arg(long, default_value_t = 100)]
    notify_rate: u32,
    /// Instead of the scenarios: GetUser and ListNotifications (a page of 50) over
    /// HTTP/1.1 + JSON and over gRPC against the same servers, side by side (latency,
    /// requests/s, server CPU and bytes on the wire per call), for --duration each.
    #[arg(long)]
    transports: bool,
    /// transports: the concurrencies to compare at (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    transport_concurrency: Vec<usize>,
}

/// Exit status when an SLO gate fails (1 is any other failure).
const SLO_FAILED: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::BaselineServer { listen }) => {
            serve_baseline(listen).map(|()| ExitCode::SUCCESS)
        }
        Some(Command::Argon2Rate { duration }) => trellis_bench::argon2_rate::verify_rate(duration)
            .map(|rate| {
                println!("{rate}");
                ExitCode::SUCCESS
            }),
        None => bench(&cli.run),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("trellis-bench: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve_baseline(listen: SocketAddr) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        println!("listening on {}", listener.local_addr()?);
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                () = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
        };
        baseline::serve(listener, shutdown).await?;
        Ok(())
    })
}

/// The running system `--target` names (with `--watch-pid` and `--client-secret`), or
/// `None` when the bench starts its own.
fn running_target(args: &RunArgs) -> anyhow::Result<Option<SystemUnderTest>> {
    let Some(spec) = &args.target else {
        return Ok(None);
    };
    Ok(Some(SystemUnderTest {
        targets: Targets::parse(spec).map_err(anyhow::Error::msg)?,
        processes: args
            .watch_pid
            .iter()
            .map(|p| (format!("pid {p}"), *p))
            .collect(),
        service_client: args
            .client_secret
            .clone()
            .map(|secret| (system::SERVICE_CLIENT_ID.to_owned(), secret)),
    }))
}

/// `--transports`: starts the system (or uses `--target`) and compares the transports.
fn transports(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let (server_cpus, client_cpus) = cpu_lists(args);
    if let Some(cpus) = &client_cpus {
        system::pin_current_process(cpus)?;
    }
    let options = trellis_bench::transports::Options {
        concurrency: args.transport_concurrency.clone(),
        duration: args.duration,
        warmup: args.warmup,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let comparison = runtime.block_on(async {
        let (running, sut) = match running_target(args)? {
            Some(sut) => (None, sut),
            None => {
                let bin_dir = match &args.bin_dir {
                    Some(dir) => dir.clone(),
                    None => std::env::current_exe()?
                        .parent()
                        .context("this binary has no directory")?
                        .to_owned(),
                };
                let (running, sut) =
                    system::start_system(&bin_dir, server_cpus.as_deref(), &[]).await?;
                (Some(running), sut)
            }
        };
        let comparison = trellis_bench::transports::run(&sut, &options).await;
        if let Some(running) = running {
            running.stop().await?;
        }
        comparison
    })?;
    println!("{}", comparison.table());
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&serde_json::json!({
            "transports": comparison,
            "ratios": comparison.ratios(),
            "settings": {
                "duration_s": args.duration.as_secs_f64(),
                "warmup_s": args.warmup.as_secs_f64(),
                "server_cpus": server_cpus,
                "client_cpus": client_cpus,
            },
        }))?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
        eprintln!("trellis-bench: wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Default CPU lists: the servers on CPU 0, the load generator on the rest, when there
/// are at least two CPUs and `taskset` exists; otherwise no pinning.
fn cpu_lists(args: &RunArgs) -> (Option<String>, Option<String>) {
    if args.no_pin || !system::taskset_available() {
        return (None, None);
    }
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let (server, client) = if cpus >= 2 {
        let rest = if cpus == 2 {
            "1".to_owned()
        } else {
            format!("1-{}", cpus - 1)
        };
        (Some("0".to_owned()), Some(rest))
    } else {
        (None, None)
    };
    (
        args.server_cpus.clone().or(server),
        args.client_cpus.clone().or(client),
    )
}

fn bench(args: &RunArgs) -> anyhow::Result<ExitCode> {
    if args.transports {
        return transports(args);
    }
    let options = SubscribeOptions {
        subscribers: args.subscribers,
        subscribers_per_user: args.subscribers_per_user,
        notifications_per_second: args.notify_rate,
    };
    let scenarios = args
        .scenario
        .iter()
        .map(|name| Scenario::from_name(name.trim(), options))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    let gates = args
        .slo
        .as_deref()
        .map(slo::parse)
        .transpose()
        .map_err(anyhow::Error::msg)?
        .unwrap_or_default();
    let mut variants = args
        .variant
        .iter()
        .map(|v| Variant::parse(v))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    if variants.is_empty() {
        variants.push(Variant {
            name: "trellis".to_owned(),
            env: Vec::new(),
        });
    }
    let this = std::env::current_exe().context("finding this binary")?;
    let under = match running_target(args)? {
        Some(sut) => Under::Running(sut),
        None => Under::Start {
            bin_dir: match &args.bin_dir {
                Some(dir) => dir.clone(),
                None => this
                    .parent()
                    .context("this binary has no directory")?
                    .to_owned(),
            },
        },
    };
    let (server_cpus, client_cpus) = cpu_lists(args);
    if let Some(cpus) = &client_cpus {
        // Before the runtime starts, so its worker threads are sized to these CPUs.
        system::pin_current_process(cpus)?;
    }
    let settings = serde_json::json!({
        "scenarios": scenarios.iter().map(Scenario::name).collect::<Vec<_>>(),
        "variants": variants.iter().map(|v| &v.name).collect::<Vec<_>>(),
        "connections": args.connections,
        "streams": args.streams,
        "rate": args.rate,
        "duration_s": args.duration.as_secs_f64(),
        "warmup_s": args.warmup.as_secs_f64(),
        "rounds": args.rounds,
        "server_cpus": server_cpus,
        "client_cpus": client_cpus,
        "target": args.target,
    });
    let plan = Plan {
        scenarios,
        load: Load {
            connections: args.connections,
            streams: args.streams,
            rate: args.rate,
            duration: args.duration,
            warmup: args.warmup,
            timeout: args.timeout,
        },
        variants,
        rounds: args.rounds,
        baseline: (!args.no_baseline).then_some(this),
        server_cpus,
        under,
        gates,
        settings,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let report = runtime.block_on(plan::execute(&plan))?;
    println!("{}", report.table());
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
        eprintln!("trellis-bench: wrote {}", path.display());
    }
    let failed = report.slo.as_ref().is_some_and(|s| !s.failures.is_empty());
    Ok(if failed {
        ExitCode::from(SLO_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}
