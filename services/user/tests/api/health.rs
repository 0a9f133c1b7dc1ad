//! grpc.health.v1 Check and Watch, and graceful shutdown with an open stream.

use std::time::Duration;

use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::helpers::{health_status, spawn_app};

#[tokio::test]
async fn check_reports_serving_for_the_server_and_each_service() {
    let mut app = spawn_app().await;
    for service in [
        "",
        "trellis.user.v1.UserService",
        "trellis.user.v1.UserInternalService",
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

#[tokio::test]
async fn shutdown_turns_watch_to_not_serving_then_ends_it_unavailable_within_the_bound() {
    let mut app = spawn_app().await;
    let mut watch = app
        .health
        .watch(HealthCheckRequest {
            service: "trellis.user.v1.UserService".into(),
        })
        .await
        .expect("watch opens")
        .into_inner();
    let first = watch
        .message()
        .await
        .expect("first status")
        .map(|r| r.status());
    assert_eq!(first, Some(ServingStatus::Serving));

    let server = app.stop().await;

    let second = watch
        .message()
        .await
        .expect("status change")
        .map(|r| r.status());
    assert_eq!(
        second,
        Some(ServingStatus::NotServing),
        "Watch observes the change"
    );
    // The stream stays open through the drain bound, then ends with UNAVAILABLE.
    let end = watch.message().await;
    assert_eq!(end.map(drop).map_err(|s| s.code()), Err(Code::Unavailable));
    // The server returns cleanly; the 10 s guard only turns a hang into a failure.
    let result = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server stops after the drain bound");
    assert!(matches!(result, Ok(Ok(()))), "{result:?}");
}
