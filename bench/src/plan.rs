//! A whole benchmark: rounds of the baseline and every variant of the system, each
//! variant a fresh start of the services with its own extra environment, every scenario
//! run against each; measurements of the same variant and scenario are merged over the
//! rounds, so machine noise spreads over all of them evenly.

use std::path::PathBuf;

use anyhow::Context as _;

use crate::load::{self, Load, Measurement, Scenario, SystemUnderTest};
use crate::report::StartupRow;
use crate::report::{Report, SloOutcome};
use crate::slo::Gate;
use crate::system;

/// A configuration of the system to measure: a name and extra environment variables for
/// every service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variant {
    /// The name reports use.
    pub name: String,
    /// Set on every service process.
    pub env: Vec<(String, String)>,
}

impl Variant {
    /// Parses `NAME` or `NAME:KEY=VALUE,KEY=VALUE`. Keys are upper-case environment
    /// names (POSIX); a piece that does not start with one continues the previous value,
    /// so values may hold commas (`OTEL_RESOURCE_ATTRIBUTES=a=1,b=2`).
    ///
    /// # Errors
    /// An empty name, or a first entry without `=`.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let (name, rest) = spec.split_once(':').unwrap_or((spec, ""));
        let name = name.trim();
        if name.is_empty() {
            return Err(format!("variant `{spec}` has no name"));
        }
        let mut env: Vec<(String, String)> = Vec::new();
        for piece in rest.split(',').filter(|p| !p.trim().is_empty()) {
            match (piece.split_once('='), env.last_mut()) {
                (Some((key, value)), _) if is_env_name(key) => {
                    env.push((key.trim().to_owned(), value.to_owned()));
                }
                (_, Some((_, value))) => {
                    value.push(',');
                    value.push_str(piece);
                }
                (_, None) => return Err(format!("variant `{spec}`: `{piece}` is not KEY=VALUE")),
            }
        }
        Ok(Self {
            name: name.to_owned(),
            env,
        })
    }
}

fn is_env_name(key: &str) -> bool {
    let key = key.trim();
    key.starts_with(|c: char| c.is_ascii_uppercase() || c == '_')
        && key
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// The system a plan measures.
#[derive(Debug, Clone)]
pub enum Under {
    /// The bench starts the services from this directory, once per variant and round.
    Start {
        /// Holds `user-service`, `auth-service` and `notification-service`.
        bin_dir: PathBuf,
    },
    /// A system already running.
    Running(SystemUnderTest),
}

/// Everything a benchmark does.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Run in this order against each variant.
    pub scenarios: Vec<Scenario>,
    /// The load's shape.
    pub load: Load,
    /// At least one (the command line's default is one named `trellis` with no extra
    /// environment).
    pub variants: Vec<Variant>,
    /// Each round measures the baseline and every variant; variants rotate so each goes
    /// first equally often.
    pub rounds: usize,
    /// The program whose `baseline-server` subcommand serves the baseline (this binary),
    /// or `None` to measure none.
    pub baseline: Option<PathBuf>,
    /// CPUs the servers run on (`taskset -c` list), or `None` for no pinning.
    pub server_cpus: Option<String>,
    /// Where the system comes from.
    pub under: Under,
    /// Checked on every row but the baseline's.
    pub gates: Vec<Gate>,
    /// Copied into the report.
    pub settings: serde_json::Value,
}

/// Runs `plan` and reports (with the SLO outcome when it has gates).
///
/// # Errors
/// A process fails to start or stop, or a scenario's set-up fails.
pub async fn execute(plan: &Plan) -> anyhow::Result<Report> {
    let mut baseline: Option<Measurement> = None;
    let mut results: Vec<(String, Measurement)> = Vec::new();
    let mut startups: Vec<StartupRow> = Vec::new();
    let cpus = plan.server_cpus.as_deref();
    let health = Scenario::Health {
        service: String::new(),
    };
    let rounds = plan.rounds.max(1);
    for round in 0..rounds {
        let label = |what: &str| {
            if rounds > 1 {
                format!("round {}/{rounds}: {what}", round + 1)
            } else {
                what.to_owned()
            }
        };
        if let Some(program) = &plan.baseline {
            eprintln!("bench: {}", label("baseline (bare tonic health server)"));
            let (running, sut) = system::start_baseline(program, cpus).await?;
            startups.extend(startup_rows("baseline", round, &running).await?);
            let m = measure(&health, &sut, &plan.load).await;
            running
                .stop()
                .await
                .context("stopping the baseline server")?;
            merge(&mut baseline, m?);
        }
        let n = plan.variants.len();
        for k in 0..n {
            let variant = &plan.variants[(k + round) % n];
            eprintln!("bench: {}", label(&format!("variant {}", variant.name)));
            let (running, sut) = match &plan.under {
                Under::Start { bin_dir } => {
                    let (running, sut) = system::start_system(bin_dir, cpus, &variant.env).await?;
                    startups.extend(startup_rows(&variant.name, round, &running).await?);
                    (Some(running), sut)
                }
                Under::Running(sut) => (None, sut.clone()),
            };
            let mut outcome = Ok(());
            for scenario in &plan.scenarios {
                match measure(scenario, &sut, &plan.load).await {
                    Ok(m) => match results
                        .iter_mut()
                        .find(|(v, r)| *v == variant.name && r.scenario == m.scenario)
                    {
                        Some((_, merged)) => merged.merge(&m),
                        None => results.push((variant.name.clone(), m)),
                    },
                    Err(err) => {
                        outcome = Err(err);
                        break;
                    }
                }
            }
            if let Some(running) = running {
                running
                    .stop()
                    .await
                    .with_context(|| format!("stopping variant {}", variant.name))?;
            }
            outcome?;
        }
    }
    // Rows in the order the variants were given, whatever the rounds' rotation.
    results.sort_by_key(|(v, m)| {
        let variant = plan.variants.iter().position(|x| x.name == *v);
        let scenario = plan.scenarios.iter().position(|s| s.name() == m.scenario);
        (variant, scenario)
    });
    let mut report = Report::new(plan.settings.clone(), baseline.as_ref(), &results);
    report.startup = startups;
    let logins = plan.scenarios.iter().any(|s| s.name() == "login");
    if let (true, Some(program), Under::Start { .. }) = (logins, &plan.baseline, &plan.under) {
        eprintln!("bench: argon2id verify rate on the servers' CPUs (login's reference)");
        report.argon2_verify_per_second =
            Some(system::argon2_rate(program, cpus, plan.load.duration).await?);
    }
    if !plan.gates.is_empty() {
        let failures = report
            .rows
            .iter()
            .flat_map(|row| {
                crate::slo::Gate::for_scenario(&plan.gates, &row.scenario)
                    .into_iter()
                    .filter_map(|g| g.check(&row.figures, row.ratio_to_baseline.as_ref()))
                    .map(|f| format!("{} {}: {f}", row.variant, row.scenario))
            })
            .collect();
        report.slo = Some(SloOutcome {
            gates: plan.gates.iter().map(|g| g.text().to_owned()).collect(),
            failures,
        });
    }
    Ok(report)
}

/// `running`'s start-up figures as report rows of `variant` in `round` (from 0).
async fn startup_rows(
    variant: &str,
    round: usize,
    running: &system::Running,
) -> anyhow::Result<Vec<StartupRow>> {
    Ok(running
        .startup()
        .await?
        .into_iter()
        .map(|startup| StartupRow {
            variant: variant.to_owned(),
            round: round + 1,
            startup,
        })
        .collect())
}

async fn measure(
    scenario: &Scenario,
    sut: &SystemUnderTest,
    load: &Load,
) -> anyhow::Result<Measurement> {
    eprintln!(
        "bench:   {} ({} s warm-up, {} s measured)…",
        scenario.name(),
        load.warmup.as_secs_f64(),
        load.duration.as_secs_f64()
    );
    load::run(scenario, sut, load)
        .await
        .with_context(|| format!("scenario {}", scenario.name()))
}

fn merge(into: &mut Option<Measurement>, m: Measurement) {
    match into {
        Some(merged) => merged.merge(&m),
        None => *into = Some(m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_variant_is_a_name_and_environment_variables() -> Result<(), String> {
        let v = Variant::parse(
            "on:OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317,OTEL_TRACES_SAMPLER_ARG=0.01",
        )?;
        assert_eq!(v.name, "on");
        assert_eq!(
            v.env,
            vec![
                (
                    "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
                    "http://127.0.0.1:4317".to_owned()
                ),
                ("OTEL_TRACES_SAMPLER_ARG".to_owned(), "0.01".to_owned()),
            ]
        );
        assert_eq!(Variant::parse("plain")?.env, vec![]);
        Ok(())
    }

    #[test]
    fn a_value_may_hold_commas() -> Result<(), String> {
        let v = Variant::parse("x:OTEL_RESOURCE_ATTRIBUTES=a=1,b=2,K=v")?;
        assert_eq!(
            v.env,
            vec![
                ("OTEL_RESOURCE_ATTRIBUTES".to_owned(), "a=1,b=2".to_owned()),
                ("K".to_owned(), "v".to_owned()),
            ]
        );
        Ok(())
    }

    #[test]
    fn a_variant_without_a_name_or_with_a_bare_word_is_refused() {
        assert!(Variant::parse(":K=V").is_err());
        assert!(Variant::parse("x:novalue").is_err());
    }
}
