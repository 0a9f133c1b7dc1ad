//! Health and reflection: what `grpcurl` and orchestrators see.

use trellis_platform::testing::assert_serves_health_and_reflection;
use trellis_platform::testing::reflection::{Ask, Version, ask};

use crate::helpers::spawn_app;

#[tokio::test]
async fn serves_health_and_reflection_for_both_auth_services_as_grpcurl_expects() {
    let app = spawn_app().await;
    assert_serves_health_and_reflection(
        &app.channel,
        &[
            "trellis.auth.v1.AuthService",
            "trellis.auth.v1.AuthInternalService",
        ],
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn reflection_lists_the_auth_service_for_grpcurl() {
    let app = spawn_app().await;
    let answers = ask(&app.channel, Version::V1, vec![Ask::ListServices]).await;
    let mut names = answers[0].services();
    names.sort_unstable();
    assert_eq!(names.first().copied(), Some("grpc.health.v1.Health"));
    assert!(names.contains(&"trellis.auth.v1.AuthService"), "{names:?}");
    // Auth serves no internal service of another: only its own.
    assert!(
        !names.iter().any(|n| n.starts_with("trellis.user.")),
        "{names:?}"
    );
    app.stop().await;
}
