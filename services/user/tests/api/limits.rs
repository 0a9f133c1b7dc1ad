//! Exhaustion limits reached without logging in: saturated password hashing and too many
//! sign-ups from one address, each RESOURCE_EXHAUSTED with a `google.rpc.RetryInfo`.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::StatusExt as _;
use trellis_platform::testing::assert_eventually;
use trellis_proto::user_v1 as pb;
use user_service::config::SignUpRate;
use user_service::domain::PasswordHasher;
use user_service::domain::password::{HashCost, SATURATED_RETRY_AFTER};

use crate::helpers::{PASSWORD, spawn_app_with, with_token};

fn sign_up(email: &str) -> pb::CreateUserRequest {
    pb::CreateUserRequest {
        email: email.to_owned(),
        display_name: "Ada".to_owned(),
        password: PASSWORD.to_owned(),
    }
}

fn retry_delay(status: &Status) -> Option<Duration> {
    status
        .get_details_retry_info()
        .and_then(|info| info.retry_delay)
}

#[tokio::test]
async fn calls_that_hash_while_hashing_is_saturated_are_resource_exhausted_with_retry_info() {
    let hasher = PasswordHasher::new(HashCost {
        max_concurrent: 1,
        max_queued: Some(1),
        ..HashCost::default()
    })
    .expect("hasher");
    let mut app =
        spawn_app_with(|config| config.service.shared_hasher = Some(hasher.clone())).await;
    // The one worker busy and the one queue place taken.
    let held = hasher.occupy(2).await.expect("the pool is free");

    let status = app
        .users
        .create_user(sign_up("ada@example.com"))
        .await
        .expect_err("hashing is saturated");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(retry_delay(&status), Some(SATURATED_RETRY_AFTER));

    // Login's credential check (auth calls VerifyCredentials) is refused the same way.
    let token = app.service_token();
    let status = app
        .internal
        .verify_credentials(with_token(
            pb::VerifyCredentialsRequest {
                email: "ada@example.com".to_owned(),
                password: PASSWORD.to_owned(),
            },
            &token,
        ))
        .await
        .expect_err("hashing is saturated");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(retry_delay(&status), Some(SATURATED_RETRY_AFTER));

    drop(held);
    assert_eventually(|| async { hasher.load().admitted == 0 }).await;
    app.create_user("ada@example.com", "Ada").await;
}

#[tokio::test]
async fn sign_ups_from_one_address_beyond_the_burst_are_resource_exhausted_with_retry_info() {
    let mut app = spawn_app_with(|config| {
        config.service.sign_up_rate = SignUpRate {
            per_minute: 1,
            burst: 2,
        };
    })
    .await;
    app.create_user("one@example.com", "One").await;
    app.create_user("two@example.com", "Two").await;

    let status = app
        .users
        .create_user(sign_up("three@example.com"))
        .await
        .expect_err("over the burst");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let delay = retry_delay(&status).expect("a RetryInfo with a delay");
    assert!(
        delay > Duration::ZERO && delay <= Duration::from_secs(60),
        "{delay:?}"
    );

    // A malformed sign-up is the contract's INVALID_ARGUMENT before the handler: it
    // costs no hashing and no place (the platform's per-address rate limit, outside
    // validation, bounds floods of them).
    let status = app
        .users
        .create_user(sign_up("not an address"))
        .await
        .expect_err("malformed");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}
