//! What every service's port must show grpcurl and an orchestrator, as one check each
//! service's suite calls: grpc.health.v1 `Check` and server reflection in both versions.

use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use super::health_status;
use super::reflection::{Ask, Version, ask};

/// The health service's own name, which reflection must list too (or `grpcurl list`
/// would not show it).
const HEALTH: &str = "grpc.health.v1.Health";

/// Asserts that the server behind `channel` serves `services` (fully qualified, e.g.
/// `trellis.user.v1.UserService`) the way grpcurl and Kubernetes probes expect:
///
/// - health `Check` answers SERVING for `""` (the server) and for each service, and
///   NOT_FOUND for an unknown name (the gRPC health checking protocol);
/// - reflection, v1 and v1alpha alike, lists each service and `grpc.health.v1.Health`,
///   answers for each service the file that defines it, and then every file that file
///   imports, by name (how grpcurl resolves a service's messages).
///
/// # Panics
/// On the first expectation that fails, naming the service, the version and what was
/// answered instead.
pub async fn assert_serves_health_and_reflection(channel: &Channel, services: &[&str]) {
    let mut health = HealthClient::new(channel.clone());
    for service in std::iter::once("").chain(services.iter().copied()) {
        assert_eq!(
            health_status(&mut health, service).await,
            Some(ServingStatus::Serving),
            "health of {service:?}"
        );
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .expect_err("health of an unknown service is an error");
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");

    for version in [Version::V1, Version::V1Alpha] {
        let answers = ask(channel, version, vec![Ask::ListServices]).await;
        let listed = answers[0].services();
        for expected in services.iter().copied().chain([HEALTH]) {
            assert!(
                listed.contains(&expected),
                "{version:?}: {expected} missing from {listed:?}"
            );
        }
        for service in services {
            resolves_with_imports(channel, version, service).await;
        }
    }
}

/// Asserts that reflection `version` answers the file defining `service`, then each of
/// its imports by name.
async fn resolves_with_imports(channel: &Channel, version: Version, service: &str) {
    let answers = ask(
        channel,
        version,
        vec![Ask::FileContainingSymbol(service.to_owned())],
    )
    .await;
    let files = answers[0].files();
    let defines = |file: &&prost_types::FileDescriptorProto| {
        file.service
            .iter()
            .any(|s| format!("{}.{}", file.package(), s.name()) == service)
    };
    let Some(file) = files.iter().find(defines) else {
        let names: Vec<&str> = files.iter().map(|f| f.name()).collect();
        panic!("{version:?}: no file defining {service} among {names:?}");
    };
    let imports = file.dependency.clone();
    let questions = imports.iter().cloned().map(Ask::FileByFilename).collect();
    let answers = ask(channel, version, questions).await;
    for (import, answer) in imports.iter().zip(&answers) {
        assert!(
            answer.files().iter().any(|f| f.name() == import),
            "{version:?}: {import} (imported by {}) not served",
            file.name()
        );
    }
}
