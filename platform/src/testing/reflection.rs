//! What a client that knows only server reflection (grpcurl, Postman) learns from a
//! server, in either protocol version: the services listed, the file that defines a
//! symbol, and files by name — each answer decoded.

use prost::Message as _;
use prost_types::FileDescriptorProto;
use tonic::transport::Channel;

/// The reflection protocol version (grpcurl tries `V1` then `V1Alpha`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// `grpc.reflection.v1.ServerReflection`.
    V1,
    /// `grpc.reflection.v1alpha.ServerReflection`.
    V1Alpha,
}

/// One reflection question.
#[derive(Debug, Clone)]
pub enum Ask {
    /// Every service name.
    ListServices,
    /// The file defining a fully qualified symbol, with what it imports if served so.
    FileContainingSymbol(String),
    /// A file by its name, e.g. `google/protobuf/timestamp.proto`.
    FileByFilename(String),
}

/// One reflection answer, decoded.
#[derive(Debug, Clone)]
pub enum Answer {
    /// Service names.
    Services(Vec<String>),
    /// File descriptors.
    Files(Vec<FileDescriptorProto>),
}

impl Answer {
    /// The service names.
    ///
    /// # Panics
    /// When the answer is not a service list.
    pub fn services(&self) -> Vec<&str> {
        match self {
            Self::Services(names) => names.iter().map(String::as_str).collect(),
            Self::Files(_) => panic!("expected a service list, got files"),
        }
    }

    /// The files.
    ///
    /// # Panics
    /// When the answer is not a file list.
    pub fn files(&self) -> &[FileDescriptorProto] {
        match self {
            Self::Files(files) => files,
            Self::Services(_) => panic!("expected file descriptors, got a service list"),
        }
    }
}

/// Asks `questions` on one reflection stream and returns one answer per question.
///
/// # Panics
/// When reflection does not answer each question, or answers with an error.
pub async fn ask(channel: &Channel, version: Version, questions: Vec<Ask>) -> Vec<Answer> {
    macro_rules! ask_with {
        ($pb:ident) => {{
            use pb::server_reflection_request::MessageRequest;
            use pb::server_reflection_response::MessageResponse;
            use tonic_reflection::pb::$pb as pb;
            let count = questions.len();
            let requests: Vec<_> = questions
                .into_iter()
                .map(|question| pb::ServerReflectionRequest {
                    host: String::new(),
                    message_request: Some(match question {
                        Ask::ListServices => MessageRequest::ListServices(String::new()),
                        Ask::FileContainingSymbol(symbol) => {
                            MessageRequest::FileContainingSymbol(symbol)
                        }
                        Ask::FileByFilename(name) => MessageRequest::FileByFilename(name),
                    }),
                })
                .collect();
            let mut stream =
                pb::server_reflection_client::ServerReflectionClient::new(channel.clone())
                    .server_reflection_info(tokio_stream::iter(requests))
                    .await
                    .expect("reflection answers")
                    .into_inner();
            let mut answers = Vec::with_capacity(count);
            for _ in 0..count {
                let answer = stream
                    .message()
                    .await
                    .expect("an answer")
                    .expect("one answer per question")
                    .message_response
                    .expect("the answer has a response");
                answers.push(match answer {
                    MessageResponse::ListServicesResponse(list) => {
                        Answer::Services(list.service.into_iter().map(|s| s.name).collect())
                    }
                    MessageResponse::FileDescriptorResponse(files) => Answer::Files(
                        files
                            .file_descriptor_proto
                            .iter()
                            .map(|bytes| {
                                FileDescriptorProto::decode(bytes.as_slice())
                                    .expect("a file descriptor decodes")
                            })
                            .collect(),
                    ),
                    other => panic!("unexpected reflection answer {other:?}"),
                });
            }
            answers
        }};
    }
    match version {
        Version::V1 => ask_with!(v1),
        Version::V1Alpha => ask_with!(v1alpha),
    }
}
