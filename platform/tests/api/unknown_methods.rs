//! Calls to methods no descriptor names — a scanner's `/no.Such/Method`, random paths,
//! made-up methods of a real service — are answered, and their names go nowhere: every
//! such call is counted under `grpc_service="unknown"`, `grpc_method="unknown"`, and no
//! label of the scrape carries the caller's bytes.

use std::sync::Arc;

use bytes::{Buf as _, BufMut as _, Bytes};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::{Code, Status};
use trellis_platform::service::Launch;
use trellis_platform::testing::metrics::{sample, scrape};
use trellis_platform::testing::{TestIssuer, TestServer, local_listener, test_config, with_token};

use crate::support::Probe;

/// Messages as raw bytes: a call to any path, known or not.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        Self
    }

    fn decoder(&mut self) -> Self::Decoder {
        Self
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// Calls `path` with an empty message as `token`'s holder; the code it ends with.
async fn call(channel: tonic::transport::Channel, path: &'static str, token: &str) -> Code {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("the channel is ready");
    grpc.unary(
        with_token(Bytes::new(), token),
        PathAndQuery::from_static(path),
        RawCodec,
    )
    .await
    .map_or_else(|status| status.code(), |_| Code::Ok)
}

#[tokio::test]
async fn unknown_methods_are_answered_and_counted_as_unknown_without_their_names() {
    let issuer = TestIssuer::new();
    let server = TestServer::start(
        Launch::new(test_config::<Probe>())
            .key_source(Arc::new(issuer.key_source()))
            .metrics_listener(local_listener()),
    )
    .await;
    let user = issuer.user_token("ada", &[]);
    let paths = [
        "/no.Such/Method",
        "/zq9~x!/%41%42..;rm-rf",
        "/trellis.notification.v1.NotificationService/NoSuchMethod",
    ];
    for path in paths {
        assert_eq!(
            call(server.channel.clone(), path, &user).await,
            Code::Unimplemented,
            "{path}"
        );
    }
    // A made-up method of a real service, from another service.
    assert_eq!(
        call(
            server.channel.clone(),
            "/trellis.notification.v1.NotificationInternalService/Bogus",
            &issuer.service_token("billing", "probe"),
        )
        .await,
        Code::Unimplemented
    );

    let text = scrape(server.metrics_addr.expect("a metrics endpoint")).await;
    for fragment in ["no.Such", "NoSuchMethod", "Bogus", "zq9", "rm-rf"] {
        assert!(!text.contains(fragment), "{fragment} in\n{text}");
    }
    let unknown = r#"grpc_method="unknown",grpc_service="unknown",grpc_type="unary""#;
    assert_eq!(
        sample(
            &text,
            &format!("grpc_server_handled_total{{grpc_code=\"Unimplemented\",{unknown}}}")
        ),
        Some(4.0)
    );
}
