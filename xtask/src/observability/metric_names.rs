//! Every metric the dashboard and the rules query is one the services export
//! (deploy/observability/metric-names.txt), read from PromQL by a lexical scan.

use super::grafana::dashboard_expressions;
use super::*;

/// The metric families a PromQL expression (or Grafana's `label_values(metric, label)`)
/// selects: `_bucket`, `_sum` and `_count` stripped to their histogram's family; function,
/// operator and label names, strings, durations, numbers and Grafana variables skipped;
/// `up` (Prometheus's own) and recording-rule names (they contain `:`) left out.
///
/// A lexical scan, not a parser: enough for the expressions we write, and any name it
/// misreads shows up as an unknown metric in the test that uses it.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const AGGREGATIONS: &[&str] = &[
        "sum",
        "avg",
        "min",
        "max",
        "count",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "limitk",
        "limit_ratio",
    ];
    const LABEL_LIST: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    const KEYWORDS: &[&str] = &[
        "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
    ];

    if let Some(args) = expr.trim().strip_prefix("label_values(") {
        // Grafana: label_values(metric, label) or label_values(label).
        return args
            .rsplit_once(',')
            .map(|(metric, _)| metric_names(metric))
            .unwrap_or_default();
    }
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    // Skips from an opening delimiter to its closing one, over quoted strings.
    let skip_to = |mut i: usize, close: char| -> usize {
        while i < chars.len() && chars[i] != close {
            if matches!(chars[i], '"' | '\'' | '`') {
                i = skip_string(&chars, i);
            } else {
                i += 1;
            }
        }
        i + 1
    };
    let next_significant = |mut i: usize| {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        (i, chars.get(i).copied())
    };
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            i = skip_string(&chars, i);
        } else if c == '{' {
            i = skip_to(i + 1, '}');
        } else if c == '[' {
            i = skip_to(i + 1, ']');
        } else if c == '#' {
            i = skip_to(i + 1, '\n');
        } else if c == '$' {
            // A Grafana variable: $name or ${name}.
            i += 1;
            if chars.get(i) == Some(&'{') {
                i = skip_to(i + 1, '}');
            } else {
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit() || c == '.' {
            // Numbers and durations (1e3, 0.99, 5m).
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '_' | ':'))
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let (after, next) = next_significant(i);
            if LABEL_LIST.contains(&word.as_str()) {
                if next == Some('(') {
                    i = skip_to(after + 1, ')');
                }
            } else if KEYWORDS.contains(&word.as_str()) || next == Some('(') {
                // An operator, or a function or aggregation called here.
            } else if AGGREGATIONS.contains(&word.as_str()) {
                // `sum by (…) (…)`: the label list follows.
            } else if word != "up" && !word.contains(':') {
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| word.strip_suffix(suffix))
                    .unwrap_or(&word);
                names.insert(family.to_owned());
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The index just past the string literal that opens at `start`.
fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() && chars[i] != quote {
        if chars[i] == '\\' && quote != '`' {
            i += 1;
        }
        i += 1;
    }
    i + 1
}

/// The names listed in metric-names.txt.
fn exported_metric_names() -> BTreeSet<String> {
    read(&workspace_root().join(METRIC_NAMES))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// Every metric family the dashboard (panels and variables) and the rules query.
fn queried_metric_names() -> BTreeSet<String> {
    let dashboard = dashboard();
    let mut names: BTreeSet<String> = dashboard_expressions(&dashboard)
        .iter()
        .flat_map(|e| metric_names(e))
        .collect();
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if let Some(query) = variable["query"]["query"].as_str() {
            names.extend(metric_names(query));
        }
    }
    let rules = yaml(&workspace_root().join(RULES));
    for group in rules["groups"].as_vec().expect("groups") {
        for rule in group["rules"].as_vec().expect("rules") {
            names.extend(metric_names(rule["expr"].as_str().expect("an expr")));
        }
    }
    names
}

#[test]
fn dashboard_and_rules_query_only_exported_metrics() {
    let exported = exported_metric_names();
    let queried = queried_metric_names();
    assert!(
        queried.len() >= 10 && queried.contains("grpc_server_handling_seconds"),
        "the scan found too little: {queried:?}"
    );
    let unknown: Vec<&String> = queried.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard or the rules query metrics the services do not export \
         (not in {METRIC_NAMES}): {unknown:?}"
    );
}

#[test]
fn metric_names_are_read_from_promql() {
    let names = |e: &str| metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"histogram_quantile(0.99, sum by (job, le) (rate(grpc_server_handling_seconds_bucket{job=~"$service", grpc_type="unary"}[$__rate_interval])))"#
        ),
        ["grpc_server_handling_seconds"]
    );
    assert_eq!(
        names(
            r#"sum without (instance) (rate(a_total{code=~"x|y"}[5m] offset 1h)) / on (job) group_left (le) (b_count > 0) and up == 1 or c:rate5m"#
        ),
        ["a_total", "b"]
    );
    assert_eq!(
        names("time() - process_start_time_seconds{job=\"user\"}"),
        ["process_start_time_seconds"]
    );
    assert_eq!(names("max(x_sum) by (job) + 1e3"), ["x"]);
    assert_eq!(
        names(r#"label_values(grpc_server_started_total{job=~"$service"}, grpc_method)"#),
        ["grpc_server_started_total"]
    );
    assert!(names("label_values(job)").is_empty());
    assert!(names(r#"count_values("v", up)"#).is_empty());
}
