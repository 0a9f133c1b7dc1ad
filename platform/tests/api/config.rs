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
