//! grpc.health.v1 and server reflection, as grpcurl and probes see them (the testkit's
//! check).

use trellis_platform::testing::assert_serves_health_and_reflection;

use crate::helpers::spawn_app;

#[tokio::test]
async fn serves_health_and_reflection_for_both_notification_services_as_grpcurl_expects() {
    let app = spawn_app().await;
    assert_serves_health_and_reflection(
        &app.channel,
        &[
            "trellis.notification.v1.NotificationService",
            "trellis.notification.v1.NotificationInternalService",
        ],
    )
    .await;
}
