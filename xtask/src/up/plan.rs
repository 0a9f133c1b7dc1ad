//! What `up` starts, computed from the options alone: every replica of every service
//! with its ports, the variables scaling adds (peer addresses, a shared page-token key),
//! and where each replica's metrics are. Nothing here starts a process.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use anyhow::{Context as _, bail};

use crate::services::{SERVICES, Service};

/// The most processes `--scale` runs of one service.
const MAX_REPLICAS: usize = 16;

/// `--scale SERVICE=N`: run `replicas` processes of the service named `service`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Scale {
    pub(super) service: &'static str,
    pub(super) replicas: usize,
}

/// Parses `SERVICE=N` (N from 1 to [`MAX_REPLICAS`]); the error names what is wrong
/// and what is accepted.
pub(super) fn parse_scale(value: &str) -> Result<Scale, String> {
    let names = || {
        SERVICES
            .iter()
            .map(|spec| spec.name)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (name, count) = value
        .split_once('=')
        .ok_or_else(|| format!("expected SERVICE=N, e.g. user=3 (services: {})", names()))?;
    let spec = crate::services::service(name.trim())
        .ok_or_else(|| format!("unknown service `{name}` (services: {})", names()))?;
    let replicas = count
        .trim()
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=MAX_REPLICAS).contains(n))
        .ok_or_else(|| {
            format!("`{count}` is not a number of replicas: give 1 to {MAX_REPLICAS}")
        })?;
    Ok(Scale {
        service: spec.name,
        replicas,
    })
}

/// One process `up` runs: a replica of a service.
#[derive(Debug)]
pub(super) struct Replica {
    pub(super) spec: &'static Service,
    /// 1-based; the first keeps the service's default ports.
    pub(super) index: usize,
    /// How many replicas the service has.
    pub(super) of: usize,
    /// Its gRPC port.
    pub(super) port: u16,
    /// Its `/metrics` address; `None` when metrics are off.
    pub(super) metrics: Option<SocketAddr>,
    /// Variables for this replica alone (its ports), over the developer's.
    pub(super) own_environment: Vec<(String, String)>,
}

impl Replica {
    /// `user`, or `user#2` when the service has several replicas.
    pub(super) fn label(&self) -> String {
        if self.of > 1 {
            format!("{}#{}", self.spec.name, self.index)
        } else {
            self.spec.name.to_owned()
        }
    }

    /// Its base URI, as a peer calls it.
    pub(super) fn uri(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// What `up` runs, computed from the options alone: every replica, in start order (a
/// service after those it calls; its first replica first), and the variables scaling
/// adds for every process.
#[derive(Debug)]
pub(super) struct Plan {
    pub(super) replicas: Vec<Replica>,
    /// `(key, value)` pairs; each process takes those under its service's prefix, and a
    /// value the developer set wins.
    pub(super) environment: Vec<(String, String)>,
}

/// Plans the replicas for `scales`: the first of each service on its default ports, the
/// others on ports from `free_port` that are no service's default and not given twice;
/// each other service's `peers.<service>.addresses` lists every replica of a scaled
/// service, and a scaled service gets one `page_token_secret` from `secret` for all its
/// replicas (so a page token from one works at another). `lookup` reads the developer's
/// environment (metrics port and host). Errors when a service is scaled twice, or
/// `free_port` fails or finds no new port.
pub(super) fn plan(
    scales: &[Scale],
    lookup: impl Fn(&str) -> Option<String>,
    mut free_port: impl FnMut() -> std::io::Result<u16>,
    mut secret: impl FnMut() -> anyhow::Result<String>,
) -> anyhow::Result<Plan> {
    for (i, scale) in scales.iter().enumerate() {
        if scales[..i].iter().any(|s| s.service == scale.service) {
            bail!(
                "--scale names {} twice: give each service once",
                scale.service
            );
        }
    }
    let mut taken: BTreeSet<u16> = SERVICES
        .iter()
        .flat_map(|spec| [spec.port, spec.metrics_port])
        .collect();
    let mut next_port = || -> anyhow::Result<u16> {
        for _ in 0..100 {
            let port = free_port().context("finding a free port for a replica")?;
            if port != 0 && taken.insert(port) {
                return Ok(port);
            }
        }
        bail!("found no free port for a replica in 100 tries")
    };
    let mut replicas = Vec::new();
    for spec in SERVICES {
        let of = scales
            .iter()
            .find(|s| s.service == spec.name)
            .map_or(1, |s| s.replicas);
        let first_metrics = metrics_address(spec, &lookup);
        replicas.push(Replica {
            spec,
            index: 1,
            of,
            port: spec.port,
            metrics: first_metrics,
            own_environment: Vec::new(),
        });
        for index in 2..=of {
            let port = next_port()?;
            let metrics = match first_metrics {
                Some(first) => Some(SocketAddr::new(first.ip(), next_port()?)),
                None => None,
            };
            let metrics_port = metrics.map_or(0, |a| a.port());
            replicas.push(Replica {
                spec,
                index,
                of,
                port,
                metrics,
                own_environment: vec![
                    (
                        format!("{}__SERVER__LISTEN_ADDR", spec.env_prefix),
                        SocketAddr::from(([0, 0, 0, 0], port)).to_string(),
                    ),
                    (metrics_port_key(spec), metrics_port.to_string()),
                ],
            });
        }
    }
    let mut environment = Vec::new();
    for spec in SERVICES {
        let own: Vec<&Replica> = replicas.iter().filter(|r| r.spec == spec).collect();
        if own.len() < 2 {
            continue;
        }
        let addresses = own.iter().map(|r| r.uri()).collect::<Vec<_>>().join(",");
        for caller in SERVICES.iter().filter(|c| c.peers.contains(&spec.name)) {
            environment.push((
                format!(
                    "{}__PEERS__{}__ADDRESSES",
                    caller.env_prefix,
                    spec.name.to_uppercase()
                ),
                addresses.clone(),
            ));
        }
        environment.push((format!("{}__PAGE_TOKEN_SECRET", spec.env_prefix), secret()?));
    }
    Ok(Plan {
        replicas,
        environment,
    })
}

/// A free TCP port on 127.0.0.1, as the OS hands one out (bound, then released).
pub(super) fn free_port() -> std::io::Result<u16> {
    std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()
        .map(|a| a.port())
}

/// The scrape targets of `--observability`: every replica with metrics on, under its
/// service's job.
pub(super) fn prometheus_targets<'a>(
    replicas: impl IntoIterator<Item = &'a Replica>,
) -> Vec<crate::prometheus::Target> {
    replicas
        .into_iter()
        .filter_map(|replica| {
            replica.metrics.map(|address| crate::prometheus::Target {
                job: replica.spec.name,
                address: address.to_string(),
            })
        })
        .collect()
}

/// `TRELLIS_<SERVICE>__METRICS__PORT`.
pub(super) fn metrics_port_key(spec: &Service) -> String {
    format!("{}__METRICS__PORT", spec.env_prefix)
}

/// The `host:port` of the `/metrics` of `spec`'s first replica under `up`: the port the
/// developer set (`TRELLIS_<SERVICE>__METRICS__PORT`, read through `lookup`) or the
/// default `up` passes, on 127.0.0.1 unless `metrics.host` names one address. `None`
/// when the port is 0 (metrics off) or not a port.
fn metrics_address(spec: &Service, lookup: impl Fn(&str) -> Option<String>) -> Option<SocketAddr> {
    let port = match lookup(&metrics_port_key(spec)) {
        Some(value) => value.trim().parse::<u16>().ok()?,
        None => spec.metrics_port,
    };
    if port == 0 {
        return None;
    }
    let host = lookup(&format!("{}__METRICS__HOST", spec.env_prefix))
        .and_then(|h| h.trim().parse::<IpAddr>().ok())
        .filter(|ip| !ip.is_unspecified())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    Some(SocketAddr::from((host, port)))
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::super::processes::set_environment;
    use super::super::test_support::{
        none, replicas_of, scale, set, spec, test_plan, try_plan, value,
    };
    use super::*;

    #[test]
    fn metrics_port_key_is_under_the_services_prefix() {
        assert_eq!(
            metrics_port_key(spec("user")),
            "TRELLIS_USER__METRICS__PORT"
        );
    }

    #[test]
    fn metrics_address_follows_the_developers_port_and_host() {
        let user = spec("user");
        let address = |lookup| metrics_address(user, lookup).map(|a| a.to_string());
        assert_eq!(address(set(&[])).as_deref(), Some("127.0.0.1:51051"));
        let moved = set(&[("TRELLIS_USER__METRICS__PORT", "9400")]);
        assert_eq!(address(moved).as_deref(), Some("127.0.0.1:9400"));
        let off = set(&[("TRELLIS_USER__METRICS__PORT", "0")]);
        assert_eq!(address(off), None);
        let garbage = set(&[("TRELLIS_USER__METRICS__PORT", "ninety")]);
        assert_eq!(address(garbage), None);
        // Another service's setting is not this one's.
        let other = set(&[("TRELLIS_AUTH__METRICS__PORT", "0")]);
        assert_eq!(address(other).as_deref(), Some("127.0.0.1:51051"));
        let any = set(&[("TRELLIS_USER__METRICS__HOST", "0.0.0.0")]);
        assert_eq!(address(any).as_deref(), Some("127.0.0.1:51051"));
        let v6 = set(&[("TRELLIS_USER__METRICS__HOST", "::1")]);
        assert_eq!(address(v6).as_deref(), Some("[::1]:51051"));
    }
    #[test]
    fn without_scale_up_runs_one_process_per_service_on_its_default_ports() {
        let plan = test_plan(&[], none, &[]);
        let started: Vec<(String, u16, Option<String>)> = plan
            .replicas
            .iter()
            .map(|r| (r.label(), r.port, r.metrics.map(|a| a.to_string())))
            .collect();
        assert_eq!(
            started,
            [
                (
                    "notification".to_owned(),
                    50053,
                    Some("127.0.0.1:51053".to_owned())
                ),
                ("user".to_owned(), 50051, Some("127.0.0.1:51051".to_owned())),
                ("auth".to_owned(), 50052, Some("127.0.0.1:51052".to_owned())),
            ]
        );
        assert!(plan.replicas.iter().all(|r| r.own_environment.is_empty()));
        // The services' own default peer addresses stay in force.
        assert_eq!(plan.environment, []);
    }

    #[test]
    fn replicas_after_the_first_take_distinct_free_ports_that_are_no_default() {
        // The port source hands out defaults and repeats: the plan skips them.
        let plan = test_plan(
            &scale(&["user=3"]),
            none,
            &[
                50051, 41001, 51053, 41001, 41002, 50052, 41003, 41001, 41004,
            ],
        );
        let user = replicas_of(&plan, "user");
        let found: Vec<(String, u16, Option<String>)> = user
            .iter()
            .map(|r| (r.label(), r.port, r.metrics.map(|a| a.to_string())))
            .collect();
        assert_eq!(
            found,
            [
                (
                    "user#1".to_owned(),
                    50051,
                    Some("127.0.0.1:51051".to_owned())
                ),
                (
                    "user#2".to_owned(),
                    41001,
                    Some("127.0.0.1:41002".to_owned())
                ),
                (
                    "user#3".to_owned(),
                    41003,
                    Some("127.0.0.1:41004".to_owned())
                ),
            ]
        );
        assert_eq!(user[0].own_environment, []);
        assert_eq!(
            user[2].own_environment,
            [
                (
                    "TRELLIS_USER__SERVER__LISTEN_ADDR".to_owned(),
                    "0.0.0.0:41003".to_owned()
                ),
                ("TRELLIS_USER__METRICS__PORT".to_owned(), "41004".to_owned()),
            ]
        );
        // The other services stay single, and start after those they call.
        let labels: Vec<String> = plan.replicas.iter().map(Replica::label).collect();
        assert_eq!(
            labels,
            ["notification", "user#1", "user#2", "user#3", "auth"]
        );
    }

    #[test]
    fn plan_fails_when_no_new_free_port_comes() {
        let mut calls = 0;
        let err = plan(
            &scale(&["user=2"]),
            none,
            || {
                calls += 1;
                Ok(50051)
            },
            || Ok("s".to_owned()),
        )
        .expect_err("only a default port on offer");
        assert!(err.to_string().contains("no free port"), "{err}");
        assert_eq!(calls, 100);
        let err = plan(
            &scale(&["user=2"]),
            none,
            || Err(std::io::Error::other("no sockets")),
            || Ok("s".to_owned()),
        )
        .expect_err("the port source fails");
        assert!(format!("{err:#}").contains("no sockets"), "{err:#}");
    }

    #[test]
    fn every_caller_of_a_scaled_service_lists_all_its_replicas() {
        let plan = test_plan(&scale(&["user=3", "notification=2"]), none, &[]);
        let uris = |name| {
            replicas_of(&plan, name)
                .iter()
                .map(|r| r.uri())
                .collect::<Vec<_>>()
                .join(",")
        };
        assert_eq!(
            uris("user"),
            "http://127.0.0.1:50051,http://127.0.0.1:40002,http://127.0.0.1:40004"
        );
        let users = uris("user");
        let notifications = "http://127.0.0.1:50053,http://127.0.0.1:40000";
        for (key, expected) in [
            // auth calls user; nobody else does.
            ("TRELLIS_AUTH__PEERS__USER__ADDRESSES", Some(users.as_str())),
            ("TRELLIS_NOTIFICATION__PEERS__USER__ADDRESSES", None),
            // user and auth call notification.
            (
                "TRELLIS_USER__PEERS__NOTIFICATION__ADDRESSES",
                Some(notifications),
            ),
            (
                "TRELLIS_AUTH__PEERS__NOTIFICATION__ADDRESSES",
                Some(notifications),
            ),
            // auth is not scaled: its callers keep their default address.
            ("TRELLIS_USER__PEERS__AUTH__ADDRESSES", None),
            // One page-token key per scaled service, shared by its replicas.
            ("TRELLIS_NOTIFICATION__PAGE_TOKEN_SECRET", Some("secret-1")),
            ("TRELLIS_USER__PAGE_TOKEN_SECRET", Some("secret-2")),
            ("TRELLIS_AUTH__PAGE_TOKEN_SECRET", None),
        ] {
            assert_eq!(value(&plan, key), expected, "{key}");
        }
        // A replica takes the shared variables of its service, not another's.
        let mut command = Command::new("true");
        set_environment(
            &mut command,
            replicas_of(&plan, "user")[1],
            &plan.environment,
        );
        let passed: Vec<String> = command
            .get_envs()
            .filter_map(|(k, _)| k.to_str().map(str::to_owned))
            .collect();
        assert!(
            passed.contains(&"TRELLIS_USER__PEERS__NOTIFICATION__ADDRESSES".to_owned())
                && passed.contains(&"TRELLIS_USER__SERVER__LISTEN_ADDR".to_owned())
                && !passed.iter().any(|k| k.starts_with("TRELLIS_AUTH")),
            "{passed:?}"
        );
    }

    #[test]
    fn scaling_a_service_twice_is_an_error() {
        let err = try_plan(&scale(&["user=2", "user=3"]), none, &[]).expect_err("twice");
        assert!(err.to_string().contains("names user twice"), "{err}");
    }

    #[test]
    fn replicas_keep_metrics_off_when_the_developer_turned_them_off() {
        let plan = test_plan(
            &scale(&["auth=2"]),
            set(&[("TRELLIS_AUTH__METRICS__PORT", "0")]),
            &[],
        );
        let auth = replicas_of(&plan, "auth");
        assert_eq!(
            auth.iter().map(|r| r.metrics).collect::<Vec<_>>(),
            [None, None]
        );
        assert_eq!(
            auth[1].own_environment[1],
            ("TRELLIS_AUTH__METRICS__PORT".to_owned(), "0".to_owned())
        );
        // The developer's metrics host applies to every replica.
        let plan = test_plan(
            &scale(&["auth=2"]),
            set(&[("TRELLIS_AUTH__METRICS__HOST", "::1")]),
            &[],
        );
        let auth = replicas_of(&plan, "auth");
        assert_eq!(
            auth[1].metrics.map(|a| a.to_string()).as_deref(),
            Some("[::1]:40001")
        );
    }

    #[test]
    fn prometheus_scrapes_every_replica_under_its_service_job() {
        let plan = test_plan(&scale(&["user=3"]), none, &[]);
        let targets: Vec<(&str, String)> = prometheus_targets(&plan.replicas)
            .into_iter()
            .map(|t| (t.job, t.address))
            .collect();
        assert_eq!(
            targets,
            [
                ("notification", "127.0.0.1:51053".to_owned()),
                ("user", "127.0.0.1:51051".to_owned()),
                ("user", "127.0.0.1:40001".to_owned()),
                ("user", "127.0.0.1:40003".to_owned()),
                ("auth", "127.0.0.1:51052".to_owned()),
            ]
        );
        let off = test_plan(
            &scale(&["user=2"]),
            set(&[("TRELLIS_USER__METRICS__PORT", "0")]),
            &[],
        );
        assert!(
            prometheus_targets(&off.replicas)
                .iter()
                .all(|t| t.job != "user")
        );
    }
}
