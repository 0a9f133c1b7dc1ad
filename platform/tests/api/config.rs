//! Loading refuses bad values, naming their keys: published default secrets outside
//! local development, and each bad setting of a peer's circuit breaker.

use trellis_platform::service::NoSettings;
use trellis_platform::{BuildError, Config, ConfigError, Context, ServiceInfo};

use crate::support::{Migrator, load};

const PUBLISHED: &str = "compose-local-secret-change-me";

#[test]
fn a_published_default_secret_is_refused_outside_local_development() {
    let err = load(&[("TRELLIS_PROBE__AUTH__CLIENT_SECRET", PUBLISHED)])
        .err()
        .map(|err| err.to_string())
        .unwrap_or_default();
    assert!(err.contains("`auth.client_secret`"), "{err}");
    assert!(err.contains("TRELLIS_PROBE__AUTH__CLIENT_SECRET"), "{err}");

    let local = load(&[
        ("TRELLIS_PROBE__AUTH__CLIENT_SECRET", PUBLISHED),
        ("TRELLIS_PROBE__LOCAL_DEVELOPMENT", "true"),
    ]);
    assert!(local.is_ok(), "{local:?}");
    let real = load(&[(
        "TRELLIS_PROBE__AUTH__CLIENT_SECRET",
        "a-real-secret-from-a-vault",
    )]);
    assert!(real.is_ok(), "{real:?}");
}

/// A service with one peer, `user`, whose breaker settings the test varies.
struct WithUserPeer;

impl trellis_platform::Service for WithUserPeer {
    const INFO: ServiceInfo = ServiceInfo {
        name: "probe",
        env_prefix: "TRELLIS_PROBE",
    };
    const DEFAULT_PORT: u16 = 50099;
    const DEFAULT_PEERS: &'static [(&'static str, &'static str)] =
        &[("user", "http://127.0.0.1:9")];
    type Settings = NoSettings;
    type Migrator = Migrator;

    async fn build(_: &mut Context<Self>) -> Result<(), BuildError> {
        Ok(())
    }
}

/// The dotted key that loading `variable = value` fails on: from validation, or from
/// deserializing (a duration of 0).
fn bad_breaker_key(variable: &str, value: &str) -> String {
    let env = [(
        format!("TRELLIS_PROBE__PEERS__USER__BREAKER__{variable}"),
        value.to_owned(),
    )];
    match Config::<WithUserPeer>::load_from(None, env) {
        Err(ConfigError::Invalid { key, .. }) => key,
        Err(ConfigError::Load(::config::ConfigError::At { key: Some(key), .. })) => key,
        other => panic!("expected an error naming a key, got {other:?}"),
    }
}

#[test]
fn breaker_validation_names_the_bad_key() {
    let keys: Vec<String> = [
        ("CONSECUTIVE_FAILURES", "0"),
        ("FAILURE_RATE_PERCENT", "101"),
        ("OPEN_MS", "0"),
        ("HALF_OPEN_CALLS", "0"),
    ]
    .into_iter()
    .map(|(variable, value)| bad_breaker_key(variable, value))
    .collect();
    assert_eq!(
        keys,
        [
            "peers.user.breaker.consecutive_failures",
            "peers.user.breaker.failure_rate_percent",
            "peers.user.breaker.open_ms",
            "peers.user.breaker.half_open_calls",
        ]
    );
}

/// The key loading `env` fails on (validation only).
fn invalid_key(env: &[(&str, &str)]) -> String {
    let env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned()));
    match Config::<WithUserPeer>::load_from(None, env) {
        Err(ConfigError::Invalid { key, .. }) => key,
        other => panic!("expected an invalid key, got {other:?}"),
    }
}

#[test]
fn tls_needs_all_three_files_and_https_peers_need_tls() {
    assert_eq!(
        invalid_key(&[("TRELLIS_PROBE__TLS__CERT", "/etc/tls/tls.crt")]),
        "tls"
    );
    assert_eq!(
        invalid_key(&[("TRELLIS_PROBE__TLS__TRUST_DOMAIN", "Trellis Local")]),
        "tls.trust_domain"
    );
    assert_eq!(
        invalid_key(&[(
            "TRELLIS_PROBE__PEERS__USER__ADDRESSES",
            "https://user.example:50051"
        )]),
        "peers.user.addresses"
    );
    assert_eq!(
        invalid_key(&[(
            "TRELLIS_PROBE__PEERS__USER__SPIFFE_ID",
            "spiffe://trellis.local/user"
        )]),
        "peers.user.spiffe_id"
    );
}

#[test]
fn consul_needs_an_acl_token_outside_local_development() {
    if std::env::var_os("CONSUL_HTTP_TOKEN").is_some() {
        return; // The environment supplies one.
    }
    assert_eq!(
        invalid_key(&[("TRELLIS_PROBE__DISCOVERY__BACKEND", "consul")]),
        "discovery.consul.token"
    );
    let local = Config::<WithUserPeer>::load_from(
        None,
        [
            ("TRELLIS_PROBE__DISCOVERY__BACKEND", "consul"),
            ("TRELLIS_PROBE__LOCAL_DEVELOPMENT", "true"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    assert!(local.is_ok(), "{:?}", local.err());
    let with_token = Config::<WithUserPeer>::load_from(
        None,
        [
            ("TRELLIS_PROBE__DISCOVERY__BACKEND", "consul"),
            ("TRELLIS_PROBE__DISCOVERY__CONSUL__TOKEN", "an-acl-token"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    assert!(with_token.is_ok(), "{:?}", with_token.err());
}

#[test]
fn cors_origins_load_from_one_variable_and_a_wildcard_is_refused() {
    let config = load(&[(
        "TRELLIS_PROBE__SERVER__CORS__ALLOWED_ORIGINS",
        "https://App.Example.com, http://localhost:50050",
    )])
    .expect("two origins");
    assert_eq!(
        config.server.cors.allowed_origins,
        ["https://app.example.com", "http://localhost:50050"]
    );
    assert!(
        load(&[])
            .expect("the defaults")
            .server
            .cors
            .allowed_origins
            .is_empty(),
        "no page may call by default"
    );
    for (bad, says) in [
        ("*", "wildcards"),
        ("https://app.example.com/", "nothing else"),
    ] {
        let err = load(&[("TRELLIS_PROBE__SERVER__CORS__ALLOWED_ORIGINS", bad)])
            .err()
            .map(|err| format!("{err:#}"))
            .unwrap_or_default();
        assert!(err.contains(says), "{bad}: {err}");
    }
}
