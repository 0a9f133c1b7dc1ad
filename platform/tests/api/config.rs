//! Published default secrets are refused outside local development.

use crate::support::load;

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
