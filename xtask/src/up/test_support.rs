//! What the tests of `up`'s modules share: its options parsed from a command line, a
//! service by name, a developer's environment, and plans made with predictable ports
//! and secrets.

use clap::Parser as _;

use super::Args;
use super::plan::{Plan, Replica, Scale, plan};
use crate::services::Service;

/// `up`'s options on a command line of their own.
#[derive(Debug, clap::Parser)]
struct Cli {
    #[command(flatten)]
    args: Args,
}

pub(super) fn parse(line: &[&str]) -> Result<Args, clap::Error> {
    Cli::try_parse_from(std::iter::once("up").chain(line.iter().copied())).map(|c| c.args)
}

pub(super) fn spec(name: &str) -> &'static Service {
    crate::services::service(name).unwrap_or_else(|| panic!("no service {name}"))
}

/// A `lookup` answering from `pairs`, as the developer's environment.
pub(super) fn set(
    pairs: &'static [(&'static str, &'static str)],
) -> impl Fn(&str) -> Option<String> + Copy {
    move |key: &str| {
        pairs
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| (*v).to_owned())
    }
}

/// No developer settings.
pub(super) fn none(_: &str) -> Option<String> {
    None
}

/// [`plan`] with free ports taken in turn from `ports` (then 40000, 40001, …) and
/// secrets `secret-1`, `secret-2`, ….
pub(super) fn test_plan(
    scales: &[Scale],
    lookup: impl Fn(&str) -> Option<String>,
    ports: &[u16],
) -> Plan {
    try_plan(scales, lookup, ports).expect("a plan")
}

pub(super) fn try_plan(
    scales: &[Scale],
    lookup: impl Fn(&str) -> Option<String>,
    ports: &[u16],
) -> anyhow::Result<Plan> {
    let mut ports = ports.iter().copied();
    let mut next = 40_000;
    let mut secrets = 0;
    plan(
        scales,
        lookup,
        || {
            Ok(ports.next().unwrap_or_else(|| {
                next += 1;
                next - 1
            }))
        },
        || {
            secrets += 1;
            Ok(format!("secret-{secrets}"))
        },
    )
}

pub(super) fn scale(line: &[&str]) -> Vec<Scale> {
    let mut args = vec![];
    for value in line {
        args.extend(["--scale", value]);
    }
    parse(&args).expect("valid --scale").scale
}

pub(super) fn value<'a>(plan: &'a Plan, key: &str) -> Option<&'a str> {
    plan.environment
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

pub(super) fn replicas_of<'a>(plan: &'a Plan, name: &str) -> Vec<&'a Replica> {
    plan.replicas
        .iter()
        .filter(|r| r.spec.name == name)
        .collect()
}
