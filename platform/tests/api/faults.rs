//! Faults injected on purpose on the server (`faults.*`): a rule aborts or delays the
//! calls it picks and nothing else, a caller's own fault headers count only where the
//! configuration allows them, a delay ends at the caller's deadline, and the cap on
//! active faults lets other calls through however many a rule picks.

use std::collections::BTreeMap;
use std::time::Duration;

use tonic::{Code, Request, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use trellis_platform::auth::{Access, AccessPolicy};
use trellis_platform::faults::{ABORT_HEADER, FaultRule, FaultsConfig};
use trellis_platform::service::{Launch, NoSettings};
use trellis_platform::testing::metrics::{sample, scrape};
use trellis_platform::testing::{
    TestServer, assert_eventually_that, code, local_listener, test_config,
};
use trellis_platform::{BuildError, Config, Context, ServiceInfo};
use trellis_proto::greeter_v1 as pb;
use trellis_proto::greeter_v1::greeter_service_client::GreeterServiceClient;
use trellis_proto::greeter_v1::greeter_service_server::GreeterServiceServer;

use crate::support::{Hello, Migrator};

const SAY_HELLO: &str = "trellis.greeter.v1.GreeterService/SayHello";

/// A public greeter.
#[derive(Debug)]
struct Greeter;

impl trellis_platform::Service for Greeter {
    const INFO: ServiceInfo = ServiceInfo {
        name: "greeter-faults",
        env_prefix: "TRELLIS_GREETER_FAULTS",
    };
    const DEFAULT_PORT: u16 = 50097;
    type Settings = NoSettings;
    type Migrator = Migrator;

    fn access_policy() -> AccessPolicy {
        AccessPolicy::new(Access::Public)
    }

    async fn build(ctx: &mut Context<Self>) -> Result<(), BuildError> {
        ctx.add_service(GreeterServiceServer::new(Hello));
        Ok(())
    }
}

async fn start(configure: impl FnOnce(&mut Config<Greeter>)) -> TestServer {
    let mut config = test_config::<Greeter>();
    configure(&mut config);
    TestServer::start(Launch::new(config).metrics_listener(local_listener())).await
}

/// Faults on, with the one server rule `name`.
fn one_rule(name: &str, rule: FaultRule) -> FaultsConfig {
    FaultsConfig {
        enabled: true,
        server: BTreeMap::from([(name.to_owned(), rule)]),
        ..FaultsConfig::default()
    }
}

/// A SayHello with `headers` and, when given, a `grpc-timeout`.
fn hello(
    headers: &[(&'static str, &str)],
    timeout: Option<Duration>,
) -> Request<pb::SayHelloRequest> {
    let mut request = Request::new(pb::SayHelloRequest::default());
    for (name, value) in headers {
        request
            .metadata_mut()
            .insert(*name, value.parse().expect("a header value"));
    }
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    request
}

async fn say(server: &TestServer, request: Request<pb::SayHelloRequest>) -> Result<(), Status> {
    GreeterServiceClient::new(server.channel.clone())
        .say_hello(request)
        .await
        .map(drop)
}

async fn health(server: &TestServer) -> Option<ServingStatus> {
    HealthClient::new(server.channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .ok()
        .map(|response| response.into_inner().status())
}

async fn metric(server: &TestServer, series: &str) -> Option<f64> {
    sample(
        &scrape(server.metrics_addr.expect("a metrics endpoint")).await,
        series,
    )
}

#[tokio::test]
async fn an_abort_rule_answers_its_code_for_its_method_only() {
    let server = start(|config| {
        config.faults = one_rule(
            "down",
            FaultRule {
                method: SAY_HELLO.to_owned(),
                abort_code: Some("UNAVAILABLE".to_owned()),
                ..FaultRule::default()
            },
        );
    })
    .await;
    let status = say(&server, hello(&[], None)).await.expect_err("aborted");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("rule `down`"), "{status:?}");
    // Another method of the same service, and health, are not picked.
    let stream = GreeterServiceClient::new(server.channel.clone())
        .stream_greetings(pb::StreamGreetingsRequest::default())
        .await;
    assert_eq!(code(stream), Ok(()));
    assert_eq!(health(&server).await, Some(ServingStatus::Serving));
    assert_eq!(
        metric(
            &server,
            "trellis_faults_injected_total{fault=\"abort\",rule=\"down\",side=\"server\"}"
        )
        .await,
        Some(1.0)
    );
    server.stop().await;
}

#[tokio::test]
async fn a_callers_fault_headers_count_only_where_the_configuration_allows_them() {
    let abort = [(ABORT_HEADER, "14")];
    // Off (the default): the header is a header.
    let off = start(|_| {}).await;
    assert_eq!(code(say(&off, hello(&abort, None)).await), Ok(()));
    assert_eq!(
        metric(&off, "trellis_faults_active{side=\"server\"}").await,
        None,
        "no fault family without faults.enabled"
    );
    off.stop().await;
    // On, with rules for another method but headers not allowed.
    let rules_only = start(|config| {
        config.faults = one_rule(
            "elsewhere",
            FaultRule {
                method: "trellis.greeter.v1.GreeterService/StreamGreetings".to_owned(),
                abort_code: Some("INTERNAL".to_owned()),
                ..FaultRule::default()
            },
        );
    })
    .await;
    assert_eq!(code(say(&rules_only, hello(&abort, None)).await), Ok(()));
    rules_only.stop().await;
    // On, headers allowed: the caller's abort happens; a 0 % share never does.
    let allowed = start(|config| {
        config.faults = FaultsConfig {
            enabled: true,
            allow_headers: true,
            ..FaultsConfig::default()
        };
    })
    .await;
    assert_eq!(
        code(say(&allowed, hello(&abort, None)).await),
        Err(Code::Unavailable)
    );
    let never = [
        (ABORT_HEADER, "14"),
        ("x-envoy-fault-abort-request-percentage", "0"),
    ];
    assert_eq!(code(say(&allowed, hello(&never, None)).await), Ok(()));
    // An OK "abort" is no fault.
    assert_eq!(
        code(say(&allowed, hello(&[(ABORT_HEADER, "0")], None)).await),
        Ok(())
    );
    allowed.stop().await;
}

#[tokio::test]
async fn a_delay_ends_at_the_callers_deadline_and_the_cap_lets_other_calls_through() {
    let server = start(|config| {
        config.faults = FaultsConfig {
            max_active_faults: Some(1),
            ..one_rule(
                "slow",
                FaultRule {
                    method: SAY_HELLO.to_owned(),
                    delay: Some(Duration::from_secs(600)),
                    ..FaultRule::default()
                },
            )
        };
    })
    .await;
    // Ten minutes of delay, a 200 ms deadline: the deadline wins.
    assert_eq!(
        code(say(&server, hello(&[], Some(Duration::from_millis(200)))).await),
        Err(Code::DeadlineExceeded)
    );
    assert_eventually_that("the expired fault gives its slot back", || async {
        metric(&server, "trellis_faults_active{side=\"server\"}").await == Some(0.0)
    })
    .await;
    // One delayed call holds the only slot …
    let held = {
        let request = hello(&[], Some(Duration::from_secs(60)));
        let channel = server.channel.clone();
        tokio::spawn(async move { GreeterServiceClient::new(channel).say_hello(request).await })
    };
    assert_eventually_that("a delayed call is in progress", || async {
        metric(&server, "trellis_faults_active{side=\"server\"}").await == Some(1.0)
    })
    .await;
    // … so the next call the rule picks goes on unharmed, and health never waits.
    assert_eq!(code(say(&server, hello(&[], None)).await), Ok(()));
    assert_eq!(health(&server).await, Some(ServingStatus::Serving));
    assert_eq!(
        metric(&server, "trellis_faults_skipped_total{side=\"server\"}").await,
        Some(1.0)
    );
    assert_eq!(
        metric(
            &server,
            "trellis_faults_injected_total{fault=\"delay\",rule=\"slow\",side=\"server\"}"
        )
        .await,
        Some(2.0)
    );
    held.abort();
    server.stop().await;
}

#[test]
fn fault_rules_load_from_the_environment_and_bad_ones_name_their_key() {
    let env = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<Vec<_>>()
    };
    let config = Config::<Greeter>::load_from(
        None,
        env(&[
            ("TRELLIS_GREETER_FAULTS__FAULTS__ENABLED", "true"),
            ("TRELLIS_GREETER_FAULTS__FAULTS__MAX_ACTIVE_FAULTS", "8"),
            (
                "TRELLIS_GREETER_FAULTS__FAULTS__SERVER__SLOW__METHOD",
                SAY_HELLO,
            ),
            (
                "TRELLIS_GREETER_FAULTS__FAULTS__SERVER__SLOW__DELAY_MS",
                "250",
            ),
            (
                "TRELLIS_GREETER_FAULTS__FAULTS__SERVER__SLOW__DELAY_PERCENT",
                "50",
            ),
        ]),
    )
    .expect("the rules load");
    let slow = &config.faults.server["slow"];
    assert!(config.faults.enabled);
    assert_eq!(config.faults.max_active_faults, Some(8));
    assert_eq!(slow.method, SAY_HELLO);
    assert_eq!(slow.delay, Some(Duration::from_millis(250)));
    assert!((slow.delay_percent - 50.0).abs() < f64::EPSILON);
    assert!(slow.abort_code.is_none());

    let bad = Config::<Greeter>::load_from(
        None,
        env(&[(
            "TRELLIS_GREETER_FAULTS__FAULTS__SERVER__X__ABORT_CODE",
            "SOMETIMES",
        )]),
    )
    .expect_err("no such code");
    assert!(
        bad.to_string().contains("faults.server.x.abort_code"),
        "{bad}"
    );
    let unknown_peer = Config::<Greeter>::load_from(
        None,
        env(&[(
            "TRELLIS_GREETER_FAULTS__FAULTS__PEERS__NOBODY__X__DELAY_MS",
            "5",
        )]),
    )
    .expect_err("no such peer");
    assert!(
        unknown_peer.to_string().contains("faults.peers.nobody"),
        "{unknown_peer}"
    );
}
