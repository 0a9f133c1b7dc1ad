//! A status with a huge number of violations still reaches a real client.

use tonic::Code;
use tonic_types::StatusExt as _;
use trellis_platform::status::{FieldViolation, MAX_ECHOED_VIOLATIONS, invalid_argument};
use trellis_proto::notification_v1::notification_internal_service_client::NotificationInternalServiceClient;

use crate::support::{Answer, Notifications, serve_notifications};

#[tokio::test]
async fn a_client_reads_a_status_built_from_200000_violations() {
    let violations: Vec<_> = (0..200_000)
        .map(|i| FieldViolation::new(format!("ids[{i}]"), "is required"))
        .collect();
    let status = invalid_argument(&violations);
    let addr = serve_notifications(Notifications(Answer::Fail(status))).await;
    // The header limit of grpc-go's clients (16 KiB), which tonic's defaults exceed.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .http2_max_header_list_size(16 * 1024)
        .connect_lazy();
    let mut client = NotificationInternalServiceClient::new(channel);
    let status = client
        .send_notification(crate::support::send_request())
        .await
        .expect_err("the handler fails");
    // Before the cap, the 2.4 MB of headers broke the call instead.
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let echoed = status
        .get_details_bad_request()
        .map(|b| b.field_violations)
        .unwrap_or_default();
    assert_eq!(echoed.len(), MAX_ECHOED_VIOLATIONS);
    assert!(status.message().ends_with("more"), "{}", status.message());
}
