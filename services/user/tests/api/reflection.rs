//! Server reflection, v1 and v1alpha: a client that knows only reflection can list the
//! services, fetch the user service's file, and then fetch each file it imports — the
//! way grpcurl resolves a service.

use trellis_platform::testing::reflection::{Ask, Version, ask};

use crate::helpers::spawn_app;

const EXPECTED_SERVICES: [&str; 3] = [
    "trellis.user.v1.UserService",
    "trellis.user.v1.UserInternalService",
    "grpc.health.v1.Health",
];

async fn lists_services_and_resolves_user_service_with_imports(version: Version) {
    let app = spawn_app().await;
    let answers = ask(
        &app.channel,
        version,
        vec![
            Ask::ListServices,
            Ask::FileContainingSymbol("trellis.user.v1.UserService".into()),
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
    let files = answers[1].files();
    let user_file = files
        .iter()
        .find(|f| f.name() == "trellis/user/v1/user.proto")
        .expect("the user service's file");
    assert!(user_file.service.iter().any(|s| s.name() == "UserService"));
    let mut dependencies = user_file.dependency.clone();
    dependencies.sort();
    assert_eq!(
        dependencies,
        [
            "google/protobuf/field_mask.proto",
            "google/protobuf/timestamp.proto"
        ]
    );

    let questions = dependencies
        .iter()
        .cloned()
        .map(Ask::FileByFilename)
        .collect();
    let answers = ask(&app.channel, version, questions).await;
    for (dependency, answer) in dependencies.iter().zip(&answers) {
        let files = answer.files();
        assert!(
            files.iter().any(|f| f.name() == dependency),
            "{dependency} not served"
        );
    }
}

#[tokio::test]
async fn reflection_v1_lists_services_and_resolves_user_service_with_imports() {
    lists_services_and_resolves_user_service_with_imports(Version::V1).await;
}

#[tokio::test]
async fn reflection_v1alpha_lists_services_and_resolves_user_service_with_imports() {
    lists_services_and_resolves_user_service_with_imports(Version::V1Alpha).await;
}
