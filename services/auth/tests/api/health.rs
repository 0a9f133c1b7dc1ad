//! Health and reflection: what `grpcurl` and orchestrators see.

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use trellis_platform::testing::health_status;
use trellis_platform::testing::reflection::{Ask, Version, ask};

use crate::helpers::spawn_app;

#[tokio::test]
async fn check_reports_serving_for_the_server_and_the_auth_service() {
    let app = spawn_app().await;
    let mut health = HealthClient::new(app.channel.clone());
    for service in ["", "trellis.auth.v1.AuthService"] {
        assert_eq!(
            health_status(&mut health, service).await,
            Some(ServingStatus::Serving),
            "{service:?}"
        );
    }
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
