//! Slowloris against the user service: a flood of calls that send their headers and never
//! a body, over several connections, starves neither health checks nor GetUser, and the
//! body timeout answers every one of them.

use std::time::Duration;

use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use trellis_platform::server::LIVENESS;
use trellis_platform::testing::{answers_of, call_without_body};
use trellis_proto::user_v1 as pb;

use crate::helpers::{spawn_app_with, with_token};

const GET_USER: &str = "/trellis.user.v1.UserService/GetUser";

async fn connect(addr: std::net::SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("a socket address is a valid URI")
        .connect()
        .await
        .expect("the service accepts a connection")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eleven_hundred_bodiless_calls_leave_liveness_and_get_user_answering() {
    let mut app = spawn_app_with(|config| {
        config.server.request_body_timeout = Duration::from_secs(8);
    })
    .await;
    let user = app.create_user("ada@example.com", "Ada").await;
    let token = app.token_for(&user);

    // 6 × 184 = 1,104 calls, each connection within its 200 streams.
    let mut hanging = Vec::new();
    for _ in 0..6 {
        let mut channel = connect(app.addr()).await;
        for _ in 0..184 {
            hanging.push(call_without_body(&mut channel, GET_USER).await);
        }
    }

    let mut health = HealthClient::new(connect(app.addr()).await);
    let check = health.check(HealthCheckRequest {
        service: LIVENESS.to_owned(),
    });
    let status = tokio::time::timeout(Duration::from_secs(2), check)
        .await
        .expect("liveness answers within 2 s")
        .expect("liveness answers")
        .into_inner()
        .status();
    assert_eq!(status, ServingStatus::Serving);

    let mut users = pb::user_service_client::UserServiceClient::new(connect(app.addr()).await);
    let read = users
        .get_user(with_token(
            pb::GetUserRequest {
                id: user.id.clone(),
            },
            &token,
        ))
        .await
        .expect("GetUser answers while the flood waits")
        .into_inner()
        .user
        .expect("the user");
    assert_eq!(read.id, user.id);
    assert!(
        hanging.iter().all(|call| !call.is_finished()),
        "the bodiless calls were still waiting"
    );

    let answered = answers_of(hanging, Duration::from_secs(60)).await;
    assert_eq!(answered.len(), 1104);
    assert!(
        answered
            .iter()
            .all(|code| *code == Some(Code::DeadlineExceeded)),
        "{:?}",
        answered
            .iter()
            .find(|code| **code != Some(Code::DeadlineExceeded))
    );
}
