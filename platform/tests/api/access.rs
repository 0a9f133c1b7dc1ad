//! Internal methods admit only the service identities their policy names.

use std::sync::Arc;

use tonic::Code;
use trellis_platform::service::Launch;
use trellis_platform::testing::{TestIssuer, TestServer, code, test_config, with_token};
use trellis_proto::notification_v1::notification_internal_service_client::NotificationInternalServiceClient;

use crate::support::Probe;

#[tokio::test]
async fn an_internal_method_answers_only_its_declared_callers() {
    let issuer = TestIssuer::new();
    let server = TestServer::start(
        Launch::new(test_config::<Probe>()).key_source(Arc::new(issuer.key_source())),
    )
    .await;
    let mut client = NotificationInternalServiceClient::new(server.channel.clone());
    let mut send = async |token: &str| {
        code(
            client
                .send_notification(with_token(crate::support::send_request(), token))
                .await,
        )
    };
    for allowed in ["user", "auth"] {
        assert_eq!(
            send(&issuer.service_token(allowed, "probe")).await,
            Ok(()),
            "{allowed}"
        );
    }
    for denied in ["notification", "billing", ""] {
        assert_eq!(
            send(&issuer.service_token(denied, "probe")).await,
            Err(Code::PermissionDenied),
            "{denied}"
        );
    }
    // An end user named like a service is still an end user.
    assert_eq!(
        send(&issuer.user_token("service:user", &["admin"])).await,
        Err(Code::PermissionDenied)
    );
    assert_eq!(send("garbage").await, Err(Code::Unauthenticated));
    server.stop().await;
}
