//! The `trellis-chaos` command (run by `cargo xtask chaos`): runs each fault asked for on
//! a fresh cluster under load, prints the table, writes the JSON report and exits
//! non-zero when any fault broke a rule (see `trellis_bench::chaos`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use trellis_bench::chaos::{self, Fault, Options};
use trellis_bench::units::parse_duration;

/// Faults on purpose, under load, with a checker of what was acknowledged.
#[derive(Debug, Parser)]
#[command(name = "trellis-chaos")]
struct Cli {
    /// Where the release service binaries are (`cargo xtask chaos` passes it).
    #[arg(long)]
    bin_dir: PathBuf,
    /// The faults to run, comma-separated (F1, F2, F7); all by default.
    #[arg(long, value_delimiter = ',', value_parser = Fault::parse)]
    fault: Vec<Fault>,
    /// How long each fault lasts (default: the fault's own, 10-30 s).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Operations a second (sign-ups, logins, GetUser, SendNotification in turn).
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Load before each fault.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    lead_in: Duration,
    /// Load after each heal.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    tail: Duration,
    /// Where to write the JSON report (every fault's figures, findings and violations).
    #[arg(long)]
    json: Option<PathBuf>,
}

fn main() -> ExitCode {
    match run(&Cli::parse()) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("trellis-chaos: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    let faults = if cli.fault.is_empty() {
        Fault::ALL.to_vec()
    } else {
        cli.fault.clone()
    };
    let options = Options {
        rate: cli.rate,
        lead_in: cli.lead_in,
        duration: cli.duration,
        tail: cli.tail,
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    let reports = runtime.block_on(async {
        let mut reports = Vec::new();
        for fault in faults {
            reports.push(chaos::run(&cli.bin_dir, fault, options).await?);
        }
        anyhow::Ok(reports)
    })?;
    print!("\n{}", chaos::table(&reports));
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_vec_pretty(&reports)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("trellis-chaos: wrote {}", path.display());
    }
    let mut failed = false;
    for report in &reports {
        for violation in &report.violations {
            failed = true;
            println!("FAILED {:?}: {violation}", report.fault);
        }
        for error in &report.check.errors {
            println!("{:?}: {error}", report.fault);
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
