//! The figures of a run, as a table for people and as JSON (`--json FILE`): per variant
//! and scenario, req/s, latency percentiles, errors by code, server CPU per request and
//! resident memory, each also as a ratio to the bare-tonic baseline and to the first
//! variant.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::load::Measurement;
use crate::units::format_ms;

/// Latency percentiles, ms.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Slowest.
    pub max: f64,
}

impl Latency {
    fn of(histogram: &hdrhistogram::Histogram<u64>) -> Self {
        let ms = |us: u64| Duration::from_micros(us).as_secs_f64() * 1e3;
        Self {
            p50: ms(histogram.value_at_quantile(0.5)),
            p90: ms(histogram.value_at_quantile(0.9)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
        }
    }
}

/// Notifications received on live streams (`subscribe`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeliveryFigures {
    /// Deliveries per second of the window.
    pub per_second: f64,
    /// Deliveries received.
    pub received: u64,
    /// Deliveries owed (notifications sent OK × open streams of their recipient).
    pub expected: u64,
    /// Live streams.
    pub subscribers: u64,
    /// Deliveries owed and never received: `expected` − (`received` − `duplicated`).
    pub lost: u64,
    /// Deliveries of a notification a stream had received before.
    pub duplicated: u64,
    /// Server CPU time (all watched processes) per delivery received, µs.
    pub cpu_us_per_delivery: Option<f64>,
    /// From intended send to receipt.
    pub latency_ms: Latency,
}

/// What one scenario measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figures {
    /// Calls due in the window, OK or not (an open loop's `UNSENT` ones included).
    pub requests: u64,
    /// Calls made per second of the window (`UNSENT` ones excluded).
    pub rps: f64,
    /// Latency of every call in the window.
    pub latency_ms: Latency,
    /// Failed calls.
    pub errors: u64,
    /// Failed calls / calls (0 to 1).
    pub error_ratio: f64,
    /// Failed calls by gRPC code.
    pub errors_by_code: BTreeMap<String, u64>,
    /// Server CPU time (all watched processes) per call made, µs.
    pub cpu_us_per_request: Option<f64>,
    /// Resident memory of each watched process at the end of the window, KiB.
    pub rss_kib: BTreeMap<String, u64>,
    /// The watched processes' resident memory together, KiB.
    pub rss_kib_total: Option<u64>,
    /// `subscribe` only.
    pub delivery: Option<DeliveryFigures>,
    /// `overload` only.
    pub overload: Option<crate::load::OverloadFigures>,
}

impl From<&Measurement> for Figures {
    fn from(m: &Measurement) -> Self {
        let requests = m.requests();
        let sent = m.sent();
        let errors = m.error_count();
        let seconds = m.window.as_secs_f64();
        #[allow(clippy::cast_precision_loss)] // counts far below 2^53
        let per_second = |n: u64| {
            if seconds > 0.0 {
                n as f64 / seconds
            } else {
                0.0
            }
        };
        #[allow(clippy::cast_precision_loss)]
        let ratio = |a: u64, b: u64| if b > 0 { a as f64 / b as f64 } else { 0.0 };
        let server = m.server.as_ref();
        Self {
            requests,
            rps: per_second(sent),
            latency_ms: Latency::of(&m.latency),
            errors,
            error_ratio: ratio(errors, requests),
            errors_by_code: m.errors.clone(),
            cpu_us_per_request: server.filter(|_| sent > 0).map(|s| {
                #[allow(clippy::cast_precision_loss)]
                let per = s.cpu.as_secs_f64() * 1e6 / sent as f64;
                per
            }),
            rss_kib: server.map(|s| s.rss_kib.clone()).unwrap_or_default(),
            rss_kib_total: server.map(|s| s.rss_kib.values().sum()),
            delivery: m.delivery.as_ref().map(|d| DeliveryFigures {
                per_second: per_second(d.received),
                received: d.received,
                expected: d.expected,
                subscribers: d.subscribers,
                lost: d
                    .expected
                    .saturating_sub(d.received.saturating_sub(d.duplicated)),
                duplicated: d.duplicated,
                #[allow(clippy::cast_precision_loss)]
                cpu_us_per_delivery: server
                    .filter(|_| d.received > 0)
                    .map(|s| s.cpu.as_secs_f64() * 1e6 / d.received as f64),
                latency_ms: Latency::of(&d.latency),
            }),
            overload: m.overload.clone(),
        }
    }
}

/// One figure set divided by another: above 1 means more (req/s) or slower (latency)
/// or costlier (CPU, memory). `None` where the divisor is 0 or missing.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Ratios {
    /// req/s.
    pub rps: Option<f64>,
    /// p50 latency.
    pub p50: Option<f64>,
    /// p90 latency.
    pub p90: Option<f64>,
    /// p99 latency.
    pub p99: Option<f64>,
    /// p99.9 latency.
    pub p999: Option<f64>,
    /// Slowest call.
    pub max: Option<f64>,
    /// Server CPU per call.
    pub cpu_us_per_request: Option<f64>,
    /// Resident memory, all watched processes together.
    pub rss: Option<f64>,
}

impl Ratios {
    /// `ours / theirs`, figure by figure.
    #[must_use]
    pub fn of(ours: &Figures, theirs: &Figures) -> Self {
        let div = |a: f64, b: f64| (b > 0.0).then(|| a / b);
        let opt = |a: Option<f64>, b: Option<f64>| a.zip(b).and_then(|(a, b)| div(a, b));
        #[allow(clippy::cast_precision_loss)]
        let kib = |k: Option<u64>| k.map(|k| k as f64);
        let (a, b) = (&ours.latency_ms, &theirs.latency_ms);
        Self {
            rps: div(ours.rps, theirs.rps),
            p50: div(a.p50, b.p50),
            p90: div(a.p90, b.p90),
            p99: div(a.p99, b.p99),
            p999: div(a.p999, b.p999),
            max: div(a.max, b.max),
            cpu_us_per_request: opt(ours.cpu_us_per_request, theirs.cpu_us_per_request),
            rss: opt(kib(ours.rss_kib_total), kib(theirs.rss_kib_total)),
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// `baseline`, or the variant's name.
    pub variant: String,
    /// The scenario's name.
    pub scenario: String,
    /// Its figures.
    #[serde(flatten)]
    pub figures: Figures,
    /// Divided by the baseline's `health` figures.
    pub ratio_to_baseline: Option<Ratios>,
    /// Divided by the first variant's figures for the same scenario (variants after the
    /// first only).
    pub ratio_to_first_variant: Option<Ratios>,
}

/// The outcome of the SLO gates.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SloOutcome {
    /// The gates, as given.
    pub gates: Vec<String>,
    /// One line per failed gate and row.
    pub failures: Vec<String>,
}

/// A whole run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The load's shape and where it ran.
    pub settings: serde_json::Value,
    /// The bare-tonic health server's figures (absent with `--no-baseline`).
    pub baseline: Option<Row>,
    /// The system's figures, variant by variant, scenario by scenario.
    pub rows: Vec<Row>,
    /// SLO gates, when given.
    pub slo: Option<SloOutcome>,
    /// Each start of a process the bench started: time to SERVING and idle memory.
    pub startup: Vec<StartupRow>,
    /// argon2id verifications a second of one thread on the servers' CPUs with the user
    /// service's default cost (measured when `login` runs): the ceiling of `login`'s
    /// req/s on one core.
    pub argon2_verify_per_second: Option<f64>,
}

/// One process's start in one round.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StartupRow {
    /// `baseline`, or the variant's name.
    pub variant: String,
    /// The round, from 1.
    pub round: usize,
    /// What was measured.
    #[serde(flatten)]
    pub startup: crate::system::Startup,
}

impl Report {
    /// Builds the rows from merged measurements, in order, with their ratios.
    #[must_use]
    pub fn new(
        settings: serde_json::Value,
        baseline: Option<&Measurement>,
        results: &[(String, Measurement)],
    ) -> Self {
        let baseline = baseline.map(|m| Row {
            variant: "baseline".to_owned(),
            scenario: m.scenario.clone(),
            figures: Figures::from(m),
            ratio_to_baseline: None,
            ratio_to_first_variant: None,
        });
        let first_variant = results.first().map(|(v, _)| v.clone());
        let firsts: Vec<(String, Figures)> = results
            .iter()
            .filter(|(v, _)| Some(v) == first_variant.as_ref())
            .map(|(_, m)| (m.scenario.clone(), Figures::from(m)))
            .collect();
        let rows = results
            .iter()
            .map(|(variant, m)| {
                let figures = Figures::from(m);
                let ratio_to_baseline = baseline.as_ref().map(|b| Ratios::of(&figures, &b.figures));
                let ratio_to_first_variant = (Some(variant) != first_variant.as_ref())
                    .then(|| firsts.iter().find(|(s, _)| *s == m.scenario))
                    .flatten()
                    .map(|(_, first)| Ratios::of(&figures, first));
                Row {
                    variant: variant.clone(),
                    scenario: m.scenario.clone(),
                    figures,
                    ratio_to_baseline,
                    ratio_to_first_variant,
                }
            })
            .collect();
        Self {
            settings,
            baseline,
            rows,
            slo: None,
            startup: Vec::new(),
            argon2_verify_per_second: None,
        }
    }

    /// The report as a human-readable table, with ratio tables below it.
    #[must_use]
    pub fn table(&self) -> String {
        let all: Vec<&Row> = self.baseline.iter().chain(&self.rows).collect();
        let mut out = String::new();
        let header = format!(
            "{:<10} {:<20} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8}",
            "variant",
            "scenario",
            "req/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "errors",
            "CPU µs/req",
            "RSS MiB"
        );
        let _ = writeln!(out, "{header}");
        for row in &all {
            let f = &row.figures;
            let l = &f.latency_ms;
            let ms = |v: f64| format_ms(Duration::from_secs_f64(v / 1e3));
            #[allow(clippy::cast_precision_loss)]
            let mib = f
                .rss_kib_total
                .map_or("-".to_owned(), |k| format!("{:.1}", k as f64 / 1024.0));
            let _ = writeln!(
                out,
                "{:<10} {:<20} {:>9.0} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7.2}% {:>10} {:>8}",
                row.variant,
                row.scenario,
                f.rps,
                ms(l.p50),
                ms(l.p90),
                ms(l.p99),
                ms(l.p999),
                ms(l.max),
                f.error_ratio * 100.0,
                f.cpu_us_per_request
                    .map_or("-".to_owned(), |c| format!("{c:.0}")),
                mib,
            );
            if let Some(d) = &f.delivery {
                let l = &d.latency_ms;
                let _ = writeln!(
                    out,
                    "{:<10} {:<20} {:>9.0} {:>8} {:>8} {:>8} {:>8} {:>8}  {}/{} delivered to {} streams, {} lost, {} duplicated, {} CPU µs per delivery",
                    row.variant,
                    "  (delivery)",
                    d.per_second,
                    ms(l.p50),
                    ms(l.p90),
                    ms(l.p99),
                    ms(l.p999),
                    ms(l.max),
                    d.received,
                    d.expected,
                    d.subscribers,
                    d.lost,
                    d.duplicated,
                    d.cpu_us_per_delivery
                        .map_or("-".to_owned(), |c| format!("{c:.0}")),
                );
            }
            if let Some(o) = &f.overload {
                let _ = writeln!(
                    out,
                    "{:<10} {:<20} capacity {:.0}/s, offered {:.0}/s: goodput {:.0}/s ({:.2} of capacity), \
                     admitted p99 {:.2} ms ({:.2}× the {:.2} ms at half capacity), shed {}, rate-limited {}, \
                     unsent {}, health {}/{} answered (slowest {:.1} ms)",
                    row.variant,
                    "  (overload)",
                    o.capacity_rps,
                    o.offered_rps,
                    o.goodput_rps,
                    o.goodput_ratio,
                    o.admitted_p99_ms,
                    o.p99_ratio,
                    o.unloaded_p99_ms,
                    o.shed,
                    o.limited,
                    o.unsent,
                    o.probes - o.probe_failures,
                    o.probes,
                    o.probe_max_ms,
                );
            }
        }
        let errors: Vec<String> = all
            .iter()
            .filter(|r| !r.figures.errors_by_code.is_empty())
            .map(|r| {
                let codes: Vec<String> = r
                    .figures
                    .errors_by_code
                    .iter()
                    .map(|(code, n)| format!("{code} {n}"))
                    .collect();
                format!("  {} {}: {}", r.variant, r.scenario, codes.join(", "))
            })
            .collect();
        if !errors.is_empty() {
            let _ = writeln!(out, "\nerrors by code:\n{}", errors.join("\n"));
        }
        let ratio_table = |title: &str, pick: &dyn Fn(&Row) -> Option<Ratios>| {
            let rows: Vec<(&Row, Ratios)> = self
                .rows
                .iter()
                .filter_map(|r| pick(r).map(|x| (r, x)))
                .collect();
            if rows.is_empty() {
                return String::new();
            }
            let mut t = format!(
                "\n{title}\n{:<10} {:<20} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8}\n",
                "variant",
                "scenario",
                "req/s",
                "p50",
                "p90",
                "p99",
                "p99.9",
                "max",
                "",
                "CPU/req",
                "RSS"
            );
            let x = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
            for (row, r) in rows {
                let _ = writeln!(
                    t,
                    "{:<10} {:<20} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10} {:>8}",
                    row.variant,
                    row.scenario,
                    x(r.rps),
                    x(r.p50),
                    x(r.p90),
                    x(r.p99),
                    x(r.p999),
                    x(r.max),
                    "",
                    x(r.cpu_us_per_request),
                    x(r.rss),
                );
            }
            t
        };
        out.push_str(&ratio_table(
            "ratio to the baseline (bare tonic health server, same run, same cores):",
            &|r| r.ratio_to_baseline,
        ));
        out.push_str(&ratio_table("ratio to the first variant:", &|r| {
            r.ratio_to_first_variant
        }));
        if let Some(raw) = self.argon2_verify_per_second {
            let _ = writeln!(
                out,
                "\nraw argon2id verify rate (one thread on the servers' CPUs, default cost): {raw:.1}/s"
            );
            for row in self.rows.iter().filter(|r| r.scenario == "login") {
                // Successful logins only: a refused one (RESOURCE_EXHAUSTED) costs no hash.
                let ok_per_second = row.figures.rps * (1.0 - row.figures.error_ratio);
                let _ = writeln!(
                    out,
                    "{:<10} login OK/s ÷ raw argon2id verify rate: {:.2}",
                    row.variant,
                    ok_per_second / raw
                );
            }
        }
        if !self.startup.is_empty() {
            let _ = writeln!(
                out,
                "\nstart-up (spawn to SERVING, fresh database) and idle memory (RSS; anon: without the binary's own pages):\n{:<10} {:>5} {:<14} {:>10} {:>13} {:>10}",
                "variant", "round", "process", "start ms", "idle RSS MiB", "anon MiB"
            );
            for row in &self.startup {
                #[allow(clippy::cast_precision_loss)]
                let mib = |kib: u64| kib as f64 / 1024.0;
                let _ = writeln!(
                    out,
                    "{:<10} {:>5} {:<14} {:>10.1} {:>13.1} {:>10.1}",
                    row.variant,
                    row.round,
                    row.startup.process,
                    row.startup.serving_ms,
                    mib(row.startup.idle_rss_kib),
                    mib(row.startup.idle_rss_anon_kib),
                );
            }
        }
        if let Some(slo) = &self.slo {
            let _ = writeln!(out, "\nSLO {}:", slo.gates.join(","));
            if slo.failures.is_empty() {
                let _ = writeln!(out, "  all gates pass");
            }
            for failure in &slo.failures {
                let _ = writeln!(out, "  FAILED {failure}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]

    use super::*;
    use crate::load::{ServerUsage, new_histogram};

    fn measurement(
        scenario: &str,
        latencies_us: &[u64],
        errors: &[(&str, u64)],
        cpu_ms: u64,
    ) -> Measurement {
        let mut latency = new_histogram();
        for us in latencies_us {
            latency.record(*us).expect("in range");
        }
        let errors: BTreeMap<String, u64> =
            errors.iter().map(|(c, n)| ((*c).to_owned(), *n)).collect();
        Measurement {
            scenario: scenario.to_owned(),
            ok: latencies_us.len() as u64 - errors.values().sum::<u64>(),
            ok_latency: latency.clone(),
            latency,
            errors,
            window: Duration::from_secs(2),
            server: Some(ServerUsage {
                cpu: Duration::from_millis(cpu_ms),
                rss_kib: BTreeMap::from([("user".to_owned(), 10_240)]),
            }),
            delivery: None,
            overload: None,
        }
    }

    fn report() -> Report {
        let baseline = measurement("health", &[100; 1000], &[], 100);
        let results = vec![
            (
                "off".to_owned(),
                measurement("health", &[200; 500], &[], 100),
            ),
            (
                "on".to_owned(),
                measurement("health", &[400; 250], &[("UNAVAILABLE", 25)], 100),
            ),
        ];
        Report::new(
            serde_json::json!({"connections": 1}),
            Some(&baseline),
            &results,
        )
    }

    #[test]
    fn figures_come_from_the_window_and_the_server_usage() {
        let report = report();
        let off = &report.rows[0].figures;
        assert_eq!(off.requests, 500);
        assert!((off.rps - 250.0).abs() < 1e-9);
        assert!((off.latency_ms.p99 - 0.2).abs() < 0.001);
        assert_eq!(off.cpu_us_per_request, Some(200.0));
        assert_eq!(off.rss_kib_total, Some(10_240));
        let on = &report.rows[1].figures;
        assert_eq!(on.errors, 25);
        assert!((on.error_ratio - 0.1).abs() < 1e-9);
    }

    #[test]
    fn unsent_calls_are_errors_but_not_throughput() {
        let mut m = measurement("health", &[100; 100], &[], 100);
        m.errors.insert(crate::load::UNSENT.to_owned(), 100);
        let f = Figures::from(&m);
        assert_eq!(f.requests, 200);
        assert!((f.rps - 50.0).abs() < 1e-9, "{}", f.rps);
        assert!((f.error_ratio - 0.5).abs() < 1e-9);
        assert_eq!(f.cpu_us_per_request, Some(1000.0));
    }

    #[test]
    fn ratios_divide_by_the_baseline_and_by_the_first_variant() {
        let report = report();
        let off = &report.rows[0];
        let to_baseline = off.ratio_to_baseline.expect("baseline ratios");
        assert_eq!(to_baseline.rps, Some(0.5));
        assert_eq!(to_baseline.cpu_us_per_request, Some(2.0));
        assert!(
            off.ratio_to_first_variant.is_none(),
            "the first variant has none"
        );
        let on = report.rows[1]
            .ratio_to_first_variant
            .expect("ratios to the first variant");
        assert_eq!(on.rps, Some(0.5));
        assert!((on.p50.expect("p50") - 2.0).abs() < 0.01);
    }

    #[test]
    fn json_has_the_documented_shape() -> serde_json::Result<()> {
        let json = serde_json::to_value(report())?;
        assert_eq!(json["baseline"]["variant"], "baseline");
        let row = &json["rows"][1];
        assert_eq!(row["variant"], "on");
        assert_eq!(row["scenario"], "health");
        assert_eq!(row["requests"], 250);
        assert_eq!(row["errors_by_code"]["UNAVAILABLE"], 25);
        for key in ["p50", "p90", "p99", "p999", "max"] {
            assert!(row["latency_ms"][key].is_number(), "{key}");
        }
        assert!(row["ratio_to_baseline"]["rps"].is_number());
        assert!(row["ratio_to_first_variant"]["cpu_us_per_request"].is_number());
        assert_eq!(row["rss_kib"]["user"], 10_240);
        assert_eq!(json["settings"]["connections"], 1);
        Ok(())
    }

    #[test]
    fn the_table_shows_every_row_errors_and_ratios() {
        let table = report().table();
        assert!(table.contains("baseline"), "{table}");
        assert!(table.contains("UNAVAILABLE 25"), "{table}");
        assert!(table.contains("ratio to the baseline"), "{table}");
        assert!(table.contains("ratio to the first variant"), "{table}");
    }

    #[test]
    fn start_up_figures_are_in_the_table_and_the_json() -> serde_json::Result<()> {
        let mut report = report();
        report.startup.push(StartupRow {
            variant: "off".to_owned(),
            round: 1,
            startup: crate::system::Startup {
                process: "user".to_owned(),
                serving_ms: 42.5,
                idle_rss_kib: 12_288,
                idle_rss_anon_kib: 2_048,
            },
        });
        let table = report.table();
        assert!(table.contains("start-up"), "{table}");
        assert!(table.contains("42.5") && table.contains("12.0"), "{table}");
        let json = serde_json::to_value(&report)?;
        assert_eq!(json["startup"][0]["process"], "user");
        assert_eq!(json["startup"][0]["serving_ms"], 42.5);
        assert_eq!(json["startup"][0]["idle_rss_kib"], 12_288);
        Ok(())
    }

    #[test]
    fn login_is_shown_as_a_ratio_to_the_raw_argon2_rate() {
        let mut report = Report::new(
            serde_json::json!({}),
            None,
            &[("on".to_owned(), measurement("login", &[100; 50], &[], 100))],
        );
        report.argon2_verify_per_second = Some(50.0);
        let table = report.table();
        // 50 logins in the 2 s window: 25/s, half the raw rate.
        assert!(
            table.contains("login OK/s ÷ raw argon2id verify rate: 0.50"),
            "{table}"
        );
    }
}
