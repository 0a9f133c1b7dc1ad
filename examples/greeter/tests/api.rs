//! The greeter's API tests: the real service in-process on 127.0.0.1:0 with in-memory
//! SQLite, driven through the generated client, with tokens from the platform's testkit.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;

use tokio_stream::StreamExt as _;
use tonic::Code;
use tonic::transport::Channel;
use trellis_platform::service::Launch;
use trellis_platform::testing::{
    FakeAuth, TestIssuer, TestServer, assert_serves_health_and_reflection, test_config,
    violated_fields, with_token,
};
use trellis_proto::greeter_v1 as pb;
use trellis_proto::greeter_v1::greeter_service_client::GreeterServiceClient;

async fn start() -> (TestServer, GreeterServiceClient<Channel>, String) {
    let issuer = TestIssuer::new();
    let token = issuer.user_token(&uuid::Uuid::now_v7().to_string(), &[]);
    let launch =
        Launch::new(test_config::<greeter::Service>()).key_source(Arc::new(issuer.key_source()));
    let server = TestServer::start(launch).await;
    let client = GreeterServiceClient::new(server.channel.clone());
    (server, client, token)
}

fn hello(name: &str, token: &str) -> tonic::Request<pb::SayHelloRequest> {
    with_token(
        pb::SayHelloRequest {
            name: name.to_owned(),
        },
        token,
    )
}

#[tokio::test]
async fn say_hello_greets_by_name_and_streams_back_every_greeting_in_order() {
    let (server, mut client, token) = start().await;
    let greeting = client
        .say_hello(hello("Ada", &token))
        .await
        .expect("SayHello")
        .into_inner()
        .greeting
        .expect("a greeting");
    assert_eq!(greeting.message, "Hello, Ada!");
    client
        .say_hello(hello("Grace", &token))
        .await
        .expect("SayHello");

    let all: Vec<_> = client
        .stream_greetings(with_token(pb::StreamGreetingsRequest::default(), &token))
        .await
        .expect("StreamGreetings")
        .into_inner()
        .map(|item| item.expect("an item").greeting.expect("a greeting").name)
        .collect()
        .await;
    assert_eq!(all, ["Ada", "Grace"]);

    let only: Vec<_> = client
        .stream_greetings(with_token(
            pb::StreamGreetingsRequest {
                name: "Grace".to_owned(),
            },
            &token,
        ))
        .await
        .expect("StreamGreetings")
        .into_inner()
        .map(|item| item.expect("an item").greeting.expect("a greeting").id)
        .collect()
        .await;
    assert_eq!(only.len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn a_bad_name_is_invalid_argument_naming_the_field() {
    let (server, mut client, token) = start().await;
    let status = client
        .say_hello(hello("", &token))
        .await
        .expect_err("an empty name is refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["name"]);
    server.stop().await;
}

#[tokio::test]
async fn every_method_needs_an_access_token() {
    let (server, mut client, _) = start().await;
    let status = client
        .say_hello(pb::SayHelloRequest {
            name: "Ada".to_owned(),
        })
        .await
        .expect_err("no token, no greeting");
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = client
        .stream_greetings(pb::StreamGreetingsRequest::default())
        .await
        .expect_err("no token, no stream");
    assert_eq!(status.code(), Code::Unauthenticated);
    server.stop().await;
}

#[tokio::test]
async fn tokens_verify_against_keys_fetched_from_the_identity_peer() {
    let auth = FakeAuth::start(TestIssuer::new()).await;
    let mut config = test_config::<greeter::Service>();
    config
        .peers
        .get_mut("auth")
        .expect("an auth peer")
        .addresses = auth.uri();
    let server = TestServer::start(Launch::new(config)).await;
    let mut client = GreeterServiceClient::new(server.channel.clone());
    let token = auth.issuer.user_token("someone", &[]);
    client
        .say_hello(hello("Ada", &token))
        .await
        .expect("a token signed by the identity peer's key is accepted");
    let stranger = TestIssuer::new().user_token("someone", &[]);
    let status = client
        .say_hello(hello("Ada", &stranger))
        .await
        .expect_err("a token signed by another key is refused");
    assert_eq!(status.code(), Code::Unauthenticated);
    server.stop().await;
}

#[tokio::test]
async fn serves_health_and_reflection_as_grpcurl_expects() {
    let (server, _client, _token) = start().await;
    assert_serves_health_and_reflection(&server.channel, &["trellis.greeter.v1.GreeterService"])
        .await;
    server.stop().await;
}
