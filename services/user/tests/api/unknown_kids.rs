//! Tokens naming a key no one published (an unknown `kid`), sent by anyone and with
//! deadlines of a few milliseconds, cannot make the user service hammer the auth service
//! nor open its circuit to auth: key fetches start at most once per
//! `auth.min_refresh_interval_ms`, are shared by every verification waiting for keys, and
//! run to their end whoever stops waiting. A valid token keeps working throughout.

use std::time::Duration;

use tonic::{Code, Status};
use trellis_platform::service::Launch;
use trellis_platform::testing::metrics::{sample, scrape};
use trellis_platform::testing::{
    FakeAuth, TestIssuer, TestServer, local_listener, test_config, with_token,
};
use trellis_proto::user_v1 as pb;
use trellis_proto::user_v1::user_service_client::UserServiceClient;
use user_service::config::SignUpRate;

use crate::helpers::sign_up;

/// GetUser of `id` as `token`, with `timeout` as the caller's deadline.
async fn get_user(
    mut users: UserServiceClient<tonic::transport::Channel>,
    id: String,
    token: String,
    timeout: Duration,
) -> Result<pb::User, Status> {
    let mut request = with_token(pb::GetUserRequest { id }, &token);
    request.set_timeout(timeout);
    let response = users.get_user(request).await?;
    Ok(response.into_inner().user.unwrap_or_default())
}

#[tokio::test]
async fn unknown_kids_with_short_deadlines_cause_one_key_fetch_and_leave_the_circuit_to_auth_closed()
 {
    let issuer = TestIssuer::new();
    let auth = FakeAuth::start_with_key_delay(issuer.clone(), Duration::from_millis(300)).await;
    let mut config = test_config::<user_service::Service>();
    config.service.sign_up_rate = SignUpRate::OFF;
    config
        .peers
        .get_mut("auth")
        .expect("an auth peer")
        .addresses = auth.uri();
    // Longer than the test: only the first fetch is allowed.
    config.auth.min_refresh_interval = Duration::from_secs(3600);
    let server = TestServer::start(Launch::new(config).metrics_listener(local_listener())).await;
    let mut users = UserServiceClient::new(server.channel.clone());
    let ada = sign_up(&mut users, "ada@example.com", "Ada").await;

    // 40 tokens at once, each naming a key of its own that nobody published, each with
    // 5 ms to live: the first starts a fetch, which outlives every one of them.
    let attack: Vec<_> = (0..40)
        .map(|_| {
            let token = TestIssuer::new().admin_token();
            let call = get_user(
                users.clone(),
                ada.id.clone(),
                token,
                Duration::from_millis(5),
            );
            tokio::spawn(call)
        })
        .collect();
    for call in attack {
        let status = call
            .await
            .expect("the call task")
            .expect_err("a token signed with an unknown key is refused");
        assert!(
            matches!(
                status.code(),
                Code::Unauthenticated | Code::DeadlineExceeded | Code::Cancelled
            ),
            "{status:?}"
        );
    }
    // And 20 more, one after another, with time to wait for keys: refused, no fetch.
    for _ in 0..20 {
        let token = TestIssuer::new().admin_token();
        let status = get_user(users.clone(), ada.id.clone(), token, Duration::from_secs(5))
            .await
            .expect_err("a token signed with an unknown key is refused");
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }

    // The keys that one fetch brought serve a valid token.
    let found = get_user(
        users.clone(),
        ada.id.clone(),
        issuer.admin_token(),
        Duration::from_secs(5),
    )
    .await
    .expect("a valid token still works");
    assert_eq!(found.id, ada.id);
    assert_eq!(
        auth.key_fetches(),
        1,
        "one key fetch for 60 unknown kids and a valid token"
    );
    let metrics = scrape(server.metrics_addr.expect("a metrics endpoint")).await;
    assert_eq!(
        sample(&metrics, "trellis_peer_circuit_state{peer=\"auth\"}"),
        Some(0.0),
        "the circuit to auth is closed"
    );
    server.stop().await;
}
