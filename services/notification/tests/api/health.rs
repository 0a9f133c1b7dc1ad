//! grpc.health.v1 Check for the server and each of its services.

use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::helpers::{health_status, spawn_app};

#[tokio::test]
async fn check_reports_serving_for_the_server_and_both_notification_services() {
    let mut app = spawn_app().await;
    for service in [
        "",
        "trellis.notification.v1.NotificationService",
        "trellis.notification.v1.NotificationInternalService",
    ] {
        assert_eq!(
            health_status(&mut app.health, service).await,
            Some(ServingStatus::Serving),
            "{service:?}"
        );
    }
    let unknown = app
        .health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .expect_err("unknown service");
    assert_eq!(unknown.code(), Code::NotFound);
}
