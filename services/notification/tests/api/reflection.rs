//! Server reflection, v1 and v1alpha: a client that knows only reflection can list the
//! services, fetch the notification services' file, and then fetch each file it imports
//! — the way grpcurl resolves a service.

use trellis_platform::testing::reflection::{Ask, Version, ask};

use crate::helpers::spawn_app;

const EXPECTED_SERVICES: [&str; 3] = [
    "trellis.notification.v1.NotificationService",
    "trellis.notification.v1.NotificationInternalService",
    "grpc.health.v1.Health",
];

async fn lists_both_services_and_resolves_their_file_with_imports(version: Version) {
    let app = spawn_app().await;
    let answers = ask(
        &app.channel,
        version,
        vec![
            Ask::ListServices,
            Ask::FileContainingSymbol("trellis.notification.v1.NotificationInternalService".into()),
        ],
    )
    .await;
    let names = answers[0].services();
    for expected in EXPECTED_SERVICES {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    let file = answers[1]
        .files()
        .iter()
        .find(|f| f.name() == "trellis/notification/v1/notification.proto")
        .expect("the notification services' file");
    let mut services: Vec<_> = file.service.iter().map(|s| s.name()).collect();
    services.sort_unstable();
    assert_eq!(
        services,
        ["NotificationInternalService", "NotificationService"]
    );
    let dependencies = file.dependency.clone();
    assert_eq!(dependencies, ["google/protobuf/timestamp.proto"]);

    let questions = dependencies
        .iter()
        .cloned()
        .map(Ask::FileByFilename)
        .collect();
    let answers = ask(&app.channel, version, questions).await;
    for (dependency, answer) in dependencies.iter().zip(&answers) {
        assert!(
            answer.files().iter().any(|f| f.name() == dependency),
            "{dependency} not served"
        );
    }
}

#[tokio::test]
async fn reflection_v1_lists_both_services_and_resolves_their_file_with_imports() {
    lists_both_services_and_resolves_their_file_with_imports(Version::V1).await;
}

#[tokio::test]
async fn reflection_v1alpha_lists_both_services_and_resolves_their_file_with_imports() {
    lists_both_services_and_resolves_their_file_with_imports(Version::V1Alpha).await;
}
