//! SLO gates (`--slo 'p99<20ms,errors<0.1%,rps>1000'`): each gate compares one figure of
//! every measured row with a threshold; the command exits non-zero when any fails.
//!
//! | gate | figure |
//! |---|---|
//! | `p50`, `p90`, `p99`, `p999`, `max` `<`/`<=`/`>`/`>=` a duration (`20ms`, `1s`, `500us`) | latency |
//! | `errors<0.1%` | failed calls / calls |
//! | `errors<5` | failed calls, counted |
//! | `rps>1000` | calls per second |
//! | `ratio>0.5` | calls per second ÷ the baseline's (bare tonic health, same run) |
//! | `goodput>0.8` | `overload`: OK calls a second at three times the capacity ÷ the capacity |
//! | `p99-ratio<2` | `overload`: admitted calls' p99 ÷ the p99 at half the capacity |
//! | `probe-failures<1` | `overload`: health probes not answered SERVING |
//! | `lost<1` | `subscribe`: deliveries owed and never received |
//! | `duplicated<1` | `subscribe`: notifications received again on the same stream |
//!
//! A gate prefixed with a scenario's name and a colon (`get-user:ratio>0.05`) applies to
//! that scenario's rows only; without one, to every row whose scenario has no gate of its
//! own on the same figure (`errors<1%,overload:errors<5%`: 5 % for overload, 1 % for the
//! rest). `ratio` gates are machine
//! independent: they compare with a server measured on the same cores in the same run,
//! so CI can gate on them where absolute rates would vary with the machine.
//!
//! The three `overload` gates and the two delivery counts read figures only their
//! scenario has: other rows pass them.
//!
//! For `subscribe`, latency gates read the delivery latency (intended send to receipt on
//! a stream), what a subscriber sees; `errors` and `rps` read the sends.

use std::time::Duration;

use crate::report::{Figures, Ratios};
use crate::units::parse_duration;

/// The figure a gate reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Metric {
    P50,
    P90,
    P99,
    P999,
    Max,
    Errors,
    Rps,
    Ratio,
    Goodput,
    P99Ratio,
    ProbeFailures,
    Lost,
    Duplicated,
}

/// How the figure must compare with the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Comparison {
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
}

impl Comparison {
    fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Self::Less => value < threshold,
            Self::LessOrEqual => value <= threshold,
            Self::Greater => value > threshold,
            Self::GreaterOrEqual => value >= threshold,
        }
    }
}

/// What the figure is compared with.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Threshold {
    Latency(Duration),
    /// 0 to 1.
    ErrorRatio(f64),
    ErrorCount(f64),
    Rate(f64),
    Ratio(f64),
}

/// One gate, e.g. `p99<20ms`.
#[derive(Debug, Clone, PartialEq)]
pub struct Gate {
    text: String,
    /// The scenario the gate is limited to; `None` for every row.
    scenario: Option<String>,
    metric: Metric,
    comparison: Comparison,
    threshold: Threshold,
}

/// Parses a comma-separated list of gates.
///
/// # Errors
/// A message naming the gate that does not parse.
pub fn parse(spec: &str) -> Result<Vec<Gate>, String> {
    spec.split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(parse_gate)
        .collect()
}

fn parse_gate(text: &str) -> Result<Gate, String> {
    let at = text
        .find(['<', '>'])
        .ok_or_else(|| format!("gate `{text}` has no `<` or `>`"))?;
    let (name, rest) = text.split_at(at);
    let (scenario, name) = match name.split_once(':') {
        Some((scenario, name)) if !scenario.trim().is_empty() => {
            (Some(scenario.trim().to_owned()), name)
        }
        Some(_) => return Err(format!("gate `{text}` has an empty scenario before `:`")),
        None => (None, name),
    };
    let (comparison, value) = if let Some(v) = rest.strip_prefix("<=") {
        (Comparison::LessOrEqual, v)
    } else if let Some(v) = rest.strip_prefix(">=") {
        (Comparison::GreaterOrEqual, v)
    } else if let Some(v) = rest.strip_prefix('<') {
        (Comparison::Less, v)
    } else {
        (Comparison::Greater, &rest[1..])
    };
    let value = value.trim();
    let number = |v: &str| {
        v.parse::<f64>()
            .ok()
            .filter(|n| n.is_finite() && *n >= 0.0)
            .ok_or_else(|| format!("`{v}` in gate `{text}` is not a non-negative number"))
    };
    let (metric, threshold) = match name.trim() {
        "p50" => (Metric::P50, None),
        "p90" => (Metric::P90, None),
        "p99" => (Metric::P99, None),
        "p999" | "p99.9" => (Metric::P999, None),
        "max" => (Metric::Max, None),
        "errors" => match value.strip_suffix('%') {
            Some(percent) => (
                Metric::Errors,
                Some(Threshold::ErrorRatio(number(percent)? / 100.0)),
            ),
            None => (Metric::Errors, Some(Threshold::ErrorCount(number(value)?))),
        },
        "rps" => (Metric::Rps, Some(Threshold::Rate(number(value)?))),
        "ratio" => (Metric::Ratio, Some(Threshold::Ratio(number(value)?))),
        "goodput" => (Metric::Goodput, Some(Threshold::Ratio(number(value)?))),
        "p99-ratio" => (Metric::P99Ratio, Some(Threshold::Ratio(number(value)?))),
        "probe-failures" => (
            Metric::ProbeFailures,
            Some(Threshold::ErrorCount(number(value)?)),
        ),
        "lost" => (Metric::Lost, Some(Threshold::ErrorCount(number(value)?))),
        "duplicated" => (
            Metric::Duplicated,
            Some(Threshold::ErrorCount(number(value)?)),
        ),
        other => {
            return Err(format!(
                "gate `{text}`: unknown figure `{other}` (p50, p90, p99, p999, max, errors, rps, ratio, goodput, p99-ratio, probe-failures, lost, duplicated)"
            ));
        }
    };
    let threshold = match threshold {
        Some(t) => t,
        None => {
            Threshold::Latency(parse_duration(value).map_err(|e| format!("gate `{text}`: {e}"))?)
        }
    };
    Ok(Gate {
        text: text.to_owned(),
        scenario,
        metric,
        comparison,
        threshold,
    })
}

impl Gate {
    /// The gate as it was written.
    #[must_use]
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether the gate applies to rows of `scenario`.
    #[must_use]
    pub fn applies_to(&self, scenario: &str) -> bool {
        self.scenario.as_deref().is_none_or(|s| s == scenario)
    }

    /// The gates of `gates` that apply to rows of `scenario`: its own, and the general
    /// ones on figures it has no gate of its own for.
    #[must_use]
    pub fn for_scenario<'a>(gates: &'a [Gate], scenario: &str) -> Vec<&'a Gate> {
        let own = |metric: Metric| {
            gates
                .iter()
                .any(|g| g.metric == metric && g.scenario.as_deref() == Some(scenario))
        };
        gates
            .iter()
            .filter(|g| match g.scenario.as_deref() {
                Some(s) => s == scenario,
                None => !own(g.metric),
            })
            .collect()
    }

    /// `None` when `figures` pass (with `ratio`, the row's ratios to the baseline, for
    /// `ratio` gates); otherwise what was measured, for the failure line. A `ratio` gate
    /// fails when no baseline was measured.
    #[must_use]
    pub fn check(&self, figures: &Figures, ratio: Option<&Ratios>) -> Option<String> {
        if let Some(outcome) = self.check_overload(figures) {
            return outcome;
        }
        if let Some(outcome) = self.check_delivery(figures) {
            return outcome;
        }
        let l = figures
            .delivery
            .as_ref()
            .map_or(&figures.latency_ms, |d| &d.latency_ms);
        #[allow(clippy::cast_precision_loss)]
        let (value, threshold, shown) = match (self.metric, self.threshold) {
            (metric, Threshold::Latency(limit)) => {
                let ms = match metric {
                    Metric::P50 => l.p50,
                    Metric::P90 => l.p90,
                    Metric::P99 => l.p99,
                    Metric::P999 => l.p999,
                    _ => l.max,
                };
                (ms, limit.as_secs_f64() * 1e3, format!("{ms:.3} ms"))
            }
            (_, Threshold::ErrorRatio(limit)) => (
                figures.error_ratio,
                limit,
                format!("{:.3}%", figures.error_ratio * 100.0),
            ),
            (_, Threshold::ErrorCount(limit)) => {
                let n = figures.errors as f64;
                (n, limit, format!("{} errors", figures.errors))
            }
            (_, Threshold::Rate(limit)) => {
                (figures.rps, limit, format!("{:.0} req/s", figures.rps))
            }
            (_, Threshold::Ratio(limit)) => match ratio.and_then(|r| r.rps) {
                Some(r) => (r, limit, format!("{r:.3} of the baseline's req/s")),
                None => return Some(format!("{}: no baseline was measured", self.text)),
            },
        };
        (!self.comparison.holds(value, threshold))
            .then(|| format!("{}: measured {shown}", self.text))
    }

    /// The outcome of a `lost` or `duplicated` gate (`Some(None)`: it passes, also on rows
    /// without deliveries); `None` for every other gate.
    fn check_delivery(&self, figures: &Figures) -> Option<Option<String>> {
        let (Metric::Lost | Metric::Duplicated, Threshold::ErrorCount(threshold)) =
            (self.metric, self.threshold)
        else {
            return None;
        };
        let Some(d) = &figures.delivery else {
            return Some(None);
        };
        let (n, what) = if self.metric == Metric::Lost {
            (d.lost, "lost")
        } else {
            (d.duplicated, "duplicated")
        };
        #[allow(clippy::cast_precision_loss)]
        let value = n as f64;
        Some(
            (!self.comparison.holds(value, threshold))
                .then(|| format!("{}: measured {n} {what} of {}", self.text, d.expected)),
        )
    }

    /// The outcome of an `overload` gate (`Some(None)`: it passes, also on rows without
    /// overload figures); `None` for every other gate.
    fn check_overload(&self, figures: &Figures) -> Option<Option<String>> {
        if !matches!(
            self.metric,
            Metric::Goodput | Metric::P99Ratio | Metric::ProbeFailures
        ) {
            return None;
        }
        let Some(o) = &figures.overload else {
            return Some(None);
        };
        let threshold = match self.threshold {
            Threshold::Ratio(t) | Threshold::ErrorCount(t) => t,
            _ => return Some(None),
        };
        #[allow(clippy::cast_precision_loss)]
        let (value, shown) = match self.metric {
            Metric::Goodput => (
                o.goodput_ratio,
                format!("{:.3} of capacity", o.goodput_ratio),
            ),
            Metric::P99Ratio => (o.p99_ratio, format!("{:.2}× the unloaded p99", o.p99_ratio)),
            _ => (
                o.probe_failures as f64,
                format!("{} of {} probes failed", o.probe_failures, o.probes),
            ),
        };
        Some(
            (!self.comparison.holds(value, threshold))
                .then(|| format!("{}: measured {shown}", self.text)),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::report::Latency;

    fn figures(p99_ms: f64, errors: u64, requests: u64, rps: f64) -> Figures {
        #[allow(clippy::cast_precision_loss)]
        let error_ratio = errors as f64 / requests as f64;
        Figures {
            requests,
            rps,
            latency_ms: Latency {
                p50: p99_ms / 4.0,
                p90: p99_ms / 2.0,
                p99: p99_ms,
                p999: p99_ms * 2.0,
                max: p99_ms * 4.0,
            },
            errors,
            error_ratio,
            errors_by_code: BTreeMap::new(),
            cpu_us_per_request: None,
            rss_kib: BTreeMap::new(),
            rss_kib_total: None,
            delivery: None,
            overload: None,
        }
    }

    fn failures(spec: &str, f: &Figures) -> Vec<String> {
        parse(spec)
            .unwrap_or_default()
            .iter()
            .filter_map(|g| g.check(f, None))
            .collect()
    }

    #[test]
    fn every_figure_and_comparison_parses() -> Result<(), String> {
        let gates = parse(
            "p50<1ms, p90<=2ms,p99<20ms,p999<100ms,p99.9<1s,max<2s,errors<0.1%,errors<=5,rps>1000,rps>=10",
        )?;
        assert_eq!(gates.len(), 10);
        assert_eq!(
            gates[2].threshold,
            Threshold::Latency(Duration::from_millis(20))
        );
        assert_eq!(gates[2].comparison, Comparison::Less);
        assert_eq!(gates[1].comparison, Comparison::LessOrEqual);
        assert_eq!(gates[6].threshold, Threshold::ErrorRatio(0.001));
        assert_eq!(gates[7].threshold, Threshold::ErrorCount(5.0));
        assert_eq!(gates[8].comparison, Comparison::Greater);
        assert_eq!(gates[9].comparison, Comparison::GreaterOrEqual);
        Ok(())
    }

    #[test]
    fn malformed_gates_are_refused_with_their_text() {
        for bad in [
            "p99",
            "p98<1ms",
            "p99<20",
            "p99<fast",
            "errors<x%",
            "rps>-1",
            "rps>",
        ] {
            let err = parse(bad).err().unwrap_or_default();
            assert!(
                err.contains(bad.split(['<', '>']).next().unwrap_or(bad)),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn passing_figures_fail_no_gate() {
        let f = figures(10.0, 0, 10_000, 5000.0);
        assert!(failures("p99<20ms,errors<0.1%,rps>1000", &f).is_empty());
    }

    #[test]
    fn each_failed_gate_is_reported_with_what_was_measured() {
        let f = figures(30.0, 20, 10_000, 500.0);
        let failed = failures("p99<20ms,errors<0.1%,rps>1000,max<1s", &f);
        assert_eq!(failed.len(), 3, "{failed:?}");
        assert!(
            failed[0].starts_with("p99<20ms") && failed[0].contains("30.000 ms"),
            "{failed:?}"
        );
        assert!(failed[1].contains("0.200%"), "{failed:?}");
        assert!(failed[2].contains("500 req/s"), "{failed:?}");
    }

    #[test]
    fn latency_gates_read_the_delivery_latency_of_a_subscribe_row() {
        let mut f = figures(1.0, 0, 1000, 100.0);
        f.delivery = Some(crate::report::DeliveryFigures {
            per_second: 100.0,
            received: 1000,
            expected: 1000,
            subscribers: 10,
            lost: 0,
            duplicated: 0,
            cpu_us_per_delivery: None,
            latency_ms: Latency {
                p50: 30.0,
                p90: 30.0,
                p99: 30.0,
                p999: 30.0,
                max: 30.0,
            },
        });
        assert_eq!(failures("p99<20ms", &f).len(), 1);
        assert!(failures("lost<1,duplicated<1", &f).is_empty());
        if let Some(d) = f.delivery.as_mut() {
            d.lost = 3;
            d.duplicated = 1;
        }
        let failed = failures("lost<1,duplicated<1", &f);
        assert!(failed[0].contains("3 lost of 1000"), "{failed:?}");
        assert!(failed[1].contains("1 duplicated"), "{failed:?}");
        // Rows without deliveries pass them.
        assert!(failures("lost<1", &figures(1.0, 0, 10, 1.0)).is_empty());
        assert!(failures("errors<1%,rps>50", &f).is_empty());
    }

    #[test]
    fn a_threshold_equal_to_the_figure_fails_strict_and_passes_inclusive() {
        let f = figures(20.0, 5, 1000, 100.0);
        assert_eq!(failures("p99<20ms", &f).len(), 1);
        assert!(failures("p99<=20ms,errors<=5,rps>=100", &f).is_empty());
        assert_eq!(failures("errors<5", &f).len(), 1);
    }

    #[test]
    fn a_ratio_gate_reads_the_ratio_to_the_baseline_and_fails_without_one() -> Result<(), String> {
        let f = figures(1.0, 0, 1000, 100.0);
        let gates = parse("ratio>0.5")?;
        let ratio = |rps| Ratios {
            rps: Some(rps),
            p50: None,
            p90: None,
            p99: None,
            p999: None,
            max: None,
            cpu_us_per_request: None,
            rss: None,
        };
        assert_eq!(gates[0].check(&f, Some(&ratio(0.6))), None);
        let failed = gates[0].check(&f, Some(&ratio(0.05))).unwrap_or_default();
        assert!(failed.contains("0.050 of the baseline"), "{failed}");
        let failed = gates[0].check(&f, None).unwrap_or_default();
        assert!(failed.contains("no baseline"), "{failed}");
        Ok(())
    }

    #[test]
    fn a_scenario_prefix_limits_a_gate_to_that_scenario() -> Result<(), String> {
        let gates = parse("get-user:ratio>0.05, p99<1s")?;
        assert!(gates[0].applies_to("get-user"));
        assert!(!gates[0].applies_to("login"));
        assert!(gates[1].applies_to("login"));
        assert!(parse(":p99<1s").is_err());
        Ok(())
    }

    #[test]
    fn a_scenarios_own_gate_replaces_the_general_one_on_the_same_figure() -> Result<(), String> {
        let gates = parse("errors<1%,p99<1s,overload:errors<5%")?;
        let texts = |scenario: &str| -> Vec<String> {
            Gate::for_scenario(&gates, scenario)
                .iter()
                .map(|g| g.text().to_owned())
                .collect()
        };
        assert_eq!(texts("overload"), ["p99<1s", "overload:errors<5%"]);
        assert_eq!(texts("get-user"), ["errors<1%", "p99<1s"]);
        Ok(())
    }

    #[test]
    fn overload_gates_read_the_overload_figures_and_pass_other_rows() -> Result<(), String> {
        let gates = parse("goodput>0.8,p99-ratio<2,probe-failures<1")?;
        let plain = figures(1.0, 0, 1000, 100.0);
        assert!(gates.iter().all(|g| g.check(&plain, None).is_none()));
        let mut f = plain.clone();
        f.overload = Some(crate::load::OverloadFigures {
            capacity_rps: 1000.0,
            unloaded_p99_ms: 2.0,
            offered_rps: 3000.0,
            goodput_rps: 700.0,
            goodput_ratio: 0.7,
            admitted_p99_ms: 5.0,
            p99_ratio: 2.5,
            shed: 10,
            limited: 0,
            unsent: 0,
            probes: 100,
            probe_failures: 1,
            probe_max_ms: 3.0,
        });
        let failed: Vec<String> = gates.iter().filter_map(|g| g.check(&f, None)).collect();
        assert_eq!(failed.len(), 3, "{failed:?}");
        assert!(failed[0].contains("0.700 of capacity"), "{}", failed[0]);
        assert!(failed[1].contains("2.50×"), "{}", failed[1]);
        assert!(failed[2].contains("1 of 100 probes"), "{}", failed[2]);
        Ok(())
    }
}
