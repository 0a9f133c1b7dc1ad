//! Server reflection, v1 and v1alpha: a client that knows only reflection can list the
//! services, fetch the notification services' file, and then fetch each file it imports
//! — the way grpcurl resolves a service.

use crate::helpers::spawn_app;

const EXPECTED_SERVICES: [&str; 3] = [
    "trellis.notification.v1.NotificationService",
    "trellis.notification.v1.NotificationInternalService",
    "grpc.health.v1.Health",
];

/// Generates the same test for one reflection version's generated types.
macro_rules! reflection_test {
    ($name:ident, $version:ident) => {
        #[tokio::test]
        async fn $name() {
            use pb::server_reflection_client::ServerReflectionClient;
            use pb::server_reflection_request::MessageRequest;
            use pb::server_reflection_response::MessageResponse;
            use prost::Message as _;
            use tonic_reflection::pb::$version as pb;

            let app = spawn_app().await;
            let mut client = ServerReflectionClient::new(app.channel.clone());
            let mut ask = async |requests: Vec<MessageRequest>| {
                let requests: Vec<_> = requests
                    .into_iter()
                    .map(|message| pb::ServerReflectionRequest {
                        host: String::new(),
                        message_request: Some(message),
                    })
                    .collect();
                let count = requests.len();
                let mut stream = client
                    .server_reflection_info(tokio_stream::iter(requests))
                    .await
                    .expect("reflection answers")
                    .into_inner();
                let mut answers = Vec::new();
                for _ in 0..count {
                    let answer = stream
                        .message()
                        .await
                        .expect("answer")
                        .expect("one per request");
                    answers.push(answer.message_response.expect("has a response"));
                }
                answers
            };
            let files_of = |answer: &MessageResponse| -> Vec<prost_types::FileDescriptorProto> {
                let MessageResponse::FileDescriptorResponse(files) = answer else {
                    panic!("expected file descriptors, got {answer:?}");
                };
                files
                    .file_descriptor_proto
                    .iter()
                    .map(|bytes| {
                        prost_types::FileDescriptorProto::decode(bytes.as_slice()).expect("decodes")
                    })
                    .collect()
            };

            let answers = ask(vec![
                MessageRequest::ListServices(String::new()),
                MessageRequest::FileContainingSymbol(
                    "trellis.notification.v1.NotificationInternalService".into(),
                ),
            ])
            .await;
            let MessageResponse::ListServicesResponse(list) = &answers[0] else {
                panic!("expected a service list, got {:?}", answers[0]);
            };
            let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
            for expected in EXPECTED_SERVICES {
                assert!(
                    names.contains(&expected),
                    "{expected} missing from {names:?}"
                );
            }
            let files = files_of(&answers[1]);
            let file = files
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

            let answers = ask(dependencies
                .iter()
                .cloned()
                .map(MessageRequest::FileByFilename)
                .collect())
            .await;
            for (dependency, answer) in dependencies.iter().zip(&answers) {
                let files = files_of(answer);
                assert!(
                    files.iter().any(|f| f.name() == dependency),
                    "{dependency} not served"
                );
            }
        }
    };
}

reflection_test!(
    reflection_v1_lists_both_services_and_resolves_their_file_with_imports,
    v1
);
reflection_test!(
    reflection_v1alpha_lists_both_services_and_resolves_their_file_with_imports,
    v1alpha
);
