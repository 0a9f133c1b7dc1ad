//! grpc.health.v1 Check and Watch, server reflection (the testkit's check), and
//! graceful shutdown with an open stream.

use std::time::Duration;

use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use trellis_platform::testing::assert_serves_health_and_reflection;

use crate::helpers::spawn_app;

#[tokio::test]
async fn serves_health_and_reflection_for_both_services_as_grpcurl_expects() {
    let app = spawn_app().await;
    assert_serves_health_and_reflection(
        &app.channel,
        &[
            "trellis.user.v1.UserService",
            "trellis.user.v1.UserInternalService",
        ],
    )
    .await;
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
