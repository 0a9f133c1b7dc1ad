//! Health and reflection: what `grpcurl` and orchestrators see.

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use trellis_platform::testing::health_status;

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
    use pb::server_reflection_client::ServerReflectionClient;
    use pb::server_reflection_request::MessageRequest;
    use pb::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1 as pb;

    let app = spawn_app().await;
    let mut client = ServerReflectionClient::new(app.channel.clone());
    let request = pb::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let answer = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection answers")
        .into_inner()
        .message()
        .await
        .expect("an answer")
        .and_then(|a| a.message_response);
    let Some(MessageResponse::ListServicesResponse(list)) = answer else {
        panic!("expected a service list, got {answer:?}");
    };
    let mut names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(
        names.first().map(String::as_str),
        Some("grpc.health.v1.Health")
    );
    assert!(
        names.iter().any(|n| n == "trellis.auth.v1.AuthService"),
        "{names:?}"
    );
    // Auth serves no internal service of another: only its own.
    assert!(
        !names.iter().any(|n| n.starts_with("trellis.user.")),
        "{names:?}"
    );
    app.stop().await;
}
