//! Rate limits per caller (subject for authenticated methods, client address for public
//! ones), the client address behind trusted proxies, and the rich status a refused call
//! carries; internal calls by services and health stay outside every limit.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Code, Request, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt as _;
use trellis_platform::auth::{Access, AccessPolicy, RateClass};
use trellis_platform::rate_limit::RateLimitsConfig;
use trellis_platform::service::{Launch, NoSettings};
use trellis_platform::testing::metrics::{sample, scrape};
use trellis_platform::testing::{
    TestIssuer, TestServer, code, local_listener, test_config, with_token,
};
use trellis_platform::{BuildError, Config, Context, ServiceInfo};
use trellis_proto::greeter_v1 as pb;
use trellis_proto::greeter_v1::greeter_service_client::GreeterServiceClient;
use trellis_proto::greeter_v1::greeter_service_server::GreeterServiceServer;
use trellis_proto::notification_v1::notification_internal_service_client::NotificationInternalServiceClient;

use crate::support::{Hello, Migrator, Probe};

const SAY_HELLO: &str = "trellis.greeter.v1.GreeterService/SayHello";
/// The probe's class: two calls, then one every 100 s (so no test sees a refill).
const PROBE: RateClass = RateClass::new("probe", 0.01, 2);

/// A greeter whose `SayHello` is in [`PROBE`]; public when `PUBLIC`, else it needs a token.
#[derive(Debug)]
struct Greeter<const PUBLIC: bool>;

impl<const PUBLIC: bool> trellis_platform::Service for Greeter<PUBLIC> {
    const INFO: ServiceInfo = ServiceInfo {
        name: "greeter-probe",
        env_prefix: "TRELLIS_GREETER_PROBE",
    };
    const DEFAULT_PORT: u16 = 50098;
    type Settings = NoSettings;
    type Migrator = Migrator;

    fn access_policy() -> AccessPolicy {
        let access = if PUBLIC {
            Access::Public
        } else {
            Access::Authenticated
        };
        AccessPolicy::new(Access::Authenticated)
            .method(SAY_HELLO, access)
            .rate(SAY_HELLO, PROBE)
    }

    async fn build(ctx: &mut Context<Self>) -> Result<(), BuildError> {
        ctx.add_service(GreeterServiceServer::new(Hello));
        Ok(())
    }
}

async fn start<const PUBLIC: bool>(
    issuer: &TestIssuer,
    configure: impl FnOnce(&mut Config<Greeter<PUBLIC>>),
) -> TestServer {
    let mut config = test_config::<Greeter<PUBLIC>>();
    configure(&mut config);
    TestServer::start(
        Launch::new(config)
            .key_source(Arc::new(issuer.key_source()))
            .metrics_listener(local_listener()),
    )
    .await
}

/// A SayHello request carrying `token` (none when empty) and `headers`.
fn hello(token: &str, headers: &[(&'static str, &str)]) -> Request<pb::SayHelloRequest> {
    let mut request = if token.is_empty() {
        Request::new(pb::SayHelloRequest::default())
    } else {
        with_token(pb::SayHelloRequest::default(), token)
    };
    for (name, value) in headers {
        request
            .metadata_mut()
            .insert(*name, value.parse().expect("a header value"));
    }
    request
}

/// The outcome of one SayHello.
async fn say(server: &TestServer, request: Request<pb::SayHelloRequest>) -> Result<(), Status> {
    GreeterServiceClient::new(server.channel.clone())
        .say_hello(request)
        .await
        .map(drop)
}

/// Asserts `result` is the refusal of a rate limit: RESOURCE_EXHAUSTED with a retry delay
/// within one refill of [`PROBE`] and a quota failure naming `subject` and the class.
fn assert_limited(result: Result<(), Status>, subject: &str) {
    let status = result.expect_err("the call is over its budget");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let details = status.get_error_details();
    let delay = details
        .retry_info()
        .and_then(|info| info.retry_delay)
        .expect("a RetryInfo with a delay");
    assert!(
        delay > Duration::ZERO && delay <= Duration::from_secs(100),
        "{delay:?}"
    );
    let violations = details
        .quota_failure()
        .map(|failure| failure.violations.clone())
        .unwrap_or_default();
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert_eq!(violations[0].subject, subject);
    assert_eq!(violations[0].quota_id, "probe");
}

#[tokio::test]
async fn an_exhausted_subject_leaves_other_users_and_health_their_budgets() {
    let issuer = TestIssuer::new();
    // The config raises the class's burst from 2 to 3.
    let server = start::<false>(&issuer, |config| {
        config.rate_limits = RateLimitsConfig::default().with_class("probe", 0.01, 3);
    })
    .await;
    let ada = issuer.user_token("ada", &[]);
    for _ in 0..3 {
        assert_eq!(code(say(&server, hello(&ada, &[])).await), Ok(()));
    }
    assert_limited(say(&server, hello(&ada, &[])).await, "subject:ada");
    // Another user from the same address has a budget of their own.
    let bob = issuer.user_token("bob", &[]);
    assert_eq!(code(say(&server, hello(&bob, &[])).await), Ok(()));
    // Health is no route of the service: no limit reaches it.
    let mut health = HealthClient::new(server.channel.clone());
    for _ in 0..10 {
        let status = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|response| response.into_inner().status());
        assert_eq!(status.ok(), Some(ServingStatus::Serving));
    }
    // A rejected token is refused before any budget is looked at.
    assert_eq!(
        code(say(&server, hello("garbage", &[])).await),
        Err(Code::Unauthenticated)
    );

    let text = scrape(server.metrics_addr.expect("a metrics endpoint")).await;
    assert_eq!(
        sample(
            &text,
            "trellis_rate_limited_total{grpc_method=\"SayHello\",grpc_service=\"trellis.greeter.v1.GreeterService\"}"
        ),
        Some(1.0),
        "{text}"
    );
    server.stop().await;
}

#[tokio::test]
async fn without_a_trusted_proxy_a_forged_x_forwarded_for_shares_the_peers_budget() {
    let issuer = TestIssuer::new();
    let server = start::<true>(&issuer, |_| {}).await;
    for client in ["203.0.113.1", "203.0.113.2"] {
        let forged = hello("", &[("x-forwarded-for", client)]);
        assert_eq!(code(say(&server, forged).await), Ok(()));
    }
    // Every forged client is the TCP peer, 127.0.0.1, whose budget is spent; and a
    // token does not turn a public method into a per-subject one.
    let forged = hello("", &[("x-forwarded-for", "203.0.113.3")]);
    assert_limited(say(&server, forged).await, "clientip:127.0.0.1");
    let with_token = hello(&issuer.user_token("ada", &[]), &[]);
    assert_limited(say(&server, with_token).await, "clientip:127.0.0.1");
    server.stop().await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_budget() {
    let issuer = TestIssuer::new();
    let server = start::<true>(&issuer, |config| {
        config.server.trusted_proxies = vec!["127.0.0.1/32".parse().expect("a CIDR range")];
    })
    .await;
    let from = |client: &str| {
        // A forged leftmost entry is skipped: the proxy appended the real client.
        hello(
            "",
            &[("x-forwarded-for", &format!("198.51.100.99, {client}"))],
        )
    };
    for _ in 0..2 {
        assert_eq!(code(say(&server, from("203.0.113.1")).await), Ok(()));
    }
    assert_limited(
        say(&server, from("203.0.113.1")).await,
        "clientip:203.0.113.1",
    );
    assert_eq!(code(say(&server, from("203.0.113.2")).await), Ok(()));
    // IPv6 clients count per /64.
    for _ in 0..2 {
        assert_eq!(code(say(&server, from("2001:db8:1:2::1")).await), Ok(()));
    }
    assert_limited(
        say(&server, from("2001:db8:1:2::ffff")).await,
        "clientip:2001:db8:1:2::/64",
    );
    assert_eq!(code(say(&server, from("2001:db8:1:3::1")).await), Ok(()));
    // Only the configured header is read: a client's own `Forwarded` header is not, so
    // these calls all count against the proxy's own address.
    for node in ["192.0.2.77", "192.0.2.78"] {
        let forwarded = hello("", &[("forwarded", &format!("for={node}"))]);
        assert_eq!(code(say(&server, forwarded).await), Ok(()));
    }
    let forwarded = hello("", &[("forwarded", "for=192.0.2.79")]);
    assert_limited(say(&server, forwarded).await, "clientip:127.0.0.1");
    server.stop().await;
}

#[tokio::test]
async fn a_proxy_configured_for_forwarded_names_clients_in_that_header() {
    let issuer = TestIssuer::new();
    let server = start::<true>(&issuer, |config| {
        config.server.trusted_proxies = vec!["127.0.0.0/8".parse().expect("a CIDR range")];
        config.server.forwarded_header =
            trellis_platform::server::client_address::ForwardedHeader::Forwarded;
    })
    .await;
    let from = |node: &str| hello("", &[("forwarded", &format!("for={node};proto=https"))]);
    for _ in 0..2 {
        assert_eq!(
            code(say(&server, from("\"[2001:db8::7]:4711\"")).await),
            Ok(())
        );
    }
    assert_limited(
        say(&server, from("\"[2001:db8::8]:80\"")).await,
        "clientip:2001:db8::/64",
    );
    assert_eq!(code(say(&server, from("192.0.2.1")).await), Ok(()));
    server.stop().await;
}

#[tokio::test]
async fn internal_methods_called_by_services_are_not_limited() {
    let issuer = TestIssuer::new();
    let mut config = test_config::<Probe>();
    // Every undeclared method is in `write`; internal ones are not, unless declared.
    config.rate_limits = RateLimitsConfig::default().with_class("write", 0.01, 1);
    let server =
        TestServer::start(Launch::new(config).key_source(Arc::new(issuer.key_source()))).await;
    let mut client = NotificationInternalServiceClient::new(server.channel.clone());
    let token = issuer.service_token("user", "probe");
    for _ in 0..10 {
        let sent = client
            .send_notification(with_token(crate::support::send_request(), &token))
            .await;
        assert_eq!(code(sent), Ok(()));
    }
    server.stop().await;
}

#[test]
fn rate_limits_and_trusted_proxies_are_read_from_the_environment_and_checked() {
    use crate::support::load;
    let config = load(&[
        ("TRELLIS_PROBE__RATE_LIMITS__WRITE__PER_SECOND", "2.5"),
        ("TRELLIS_PROBE__RATE_LIMITS__WRITE__BURST", "7"),
        ("TRELLIS_PROBE__RATE_LIMITS__MAX_KEYS", "500"),
        (
            "TRELLIS_PROBE__SERVER__TRUSTED_PROXIES",
            "10.0.0.0/8, 192.0.2.1",
        ),
        ("TRELLIS_PROBE__SERVER__FORWARDED_HEADER", "forwarded"),
    ])
    .expect("the config loads");
    assert_eq!(
        config.rate_limits.effective(RateClass::WRITE),
        RateClass::new("write", 2.5, 7)
    );
    assert_eq!(config.rate_limits.max_keys, 500);
    let proxies: Vec<String> = config
        .server
        .trusted_proxies
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(proxies, ["10.0.0.0/8", "192.0.2.1/32"]);

    let error = |env: &[(&str, &str)]| {
        load(env)
            .err()
            .map(|err| err.to_string())
            .unwrap_or_default()
    };
    // A class no method is in (a misspelt one) names its key.
    let message = error(&[("TRELLIS_PROBE__RATE_LIMITS__WIRTE__BURST", "7")]);
    assert!(message.contains("rate_limits.wirte"), "{message}");
    let message = error(&[("TRELLIS_PROBE__RATE_LIMITS__WRITE__BURST", "0")]);
    assert!(message.contains("rate_limits.write.burst"), "{message}");
    let message = error(&[("TRELLIS_PROBE__SERVER__TRUSTED_PROXIES", "0.0.0.0/0")]);
    assert!(message.contains("server.trusted_proxies"), "{message}");
    let message = error(&[("TRELLIS_PROBE__SERVER__TRUSTED_PROXIES", "proxy.local")]);
    assert!(message.contains("trusted_proxies"), "{message}");
}
