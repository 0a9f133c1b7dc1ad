//! Issue 20's hostile sequence against auth: a client choosing deadlines of a few
//! milliseconds cannot open auth's circuit to the user service (valid sign-ins keep
//! working) and gets no free guesses — an attempt whose credentials reached the user
//! service is charged, whatever the deadline. The user service's own timeout, a fault of
//! the platform, still opens the circuit, and charges no one.

use std::time::Duration;

use tonic::{Code, Status};
use trellis_platform::testing::metrics::{sample, scrape};
use trellis_proto::auth_v1 as pb;

use crate::helpers::{ADA, TestApp, spawn_app, spawn_app_with};

/// auth's circuit to the user service, as its metrics say: 0 closed, 1 open.
async fn circuit_to_users(app: &TestApp) -> Option<f64> {
    sample(
        &scrape(app.metrics_addr).await,
        "trellis_peer_circuit_state{peer=\"user\"}",
    )
}

/// A Login with `timeout` as the caller's deadline.
async fn login_within(
    app: &TestApp,
    email: &str,
    password: &str,
    timeout: Duration,
) -> Result<pb::LoginResponse, Status> {
    let mut request = tonic::Request::new(pb::LoginRequest {
        email: email.to_owned(),
        password: password.to_owned(),
    });
    request.set_timeout(timeout);
    app.auth
        .clone()
        .login(request)
        .await
        .map(tonic::Response::into_inner)
}

/// Asserts `result` is the end of the caller's deadline: DEADLINE_EXCEEDED from the
/// service, or CANCELLED from the client's own timer — never UNAVAILABLE.
fn assert_out_of_time<T: std::fmt::Debug>(result: Result<T, Status>) {
    let status = result.expect_err("the deadline expires first");
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
}

#[tokio::test]
async fn thirty_wrong_logins_with_8_ms_deadlines_leave_the_circuit_closed_and_a_valid_login_works()
{
    let mut app = spawn_app().await;
    // Checking a password takes longer than any of these deadlines.
    app.users.hold();
    for guess in 0..30 {
        let email = format!("guess{guess}@example.com");
        assert_out_of_time(
            login_within(&app, &email, "wrong password!", Duration::from_millis(8)).await,
        );
    }
    app.users.release();
    app.sign_in(ADA).await;
    assert_eq!(circuit_to_users(&app).await, Some(0.0));
    app.stop().await;
}

#[tokio::test]
async fn wrong_logins_cut_by_the_callers_deadline_are_charged_to_the_throttle() {
    const BUDGET: u32 = 3;
    let mut app = spawn_app_with(|config| {
        config
            .service
            .login_throttle
            .max_failures_per_account_per_hour = BUDGET;
    })
    .await;
    app.users.hold();
    // Long enough for each attempt to reach the user service, far too short for it to
    // answer.
    for _ in 0..BUDGET {
        assert_out_of_time(
            login_within(&app, ADA, "wrong password!", Duration::from_millis(500)).await,
        );
    }
    assert_eq!(
        app.users.calls().len(),
        BUDGET as usize,
        "every attempt reached the user service"
    );
    app.users.release();
    let status = app
        .login(ADA, "wrong password!")
        .await
        .expect_err("over budget");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(
        app.users.calls().len(),
        BUDGET as usize,
        "the throttled attempt did not reach the user service"
    );
    assert_eq!(circuit_to_users(&app).await, Some(0.0));
    app.stop().await;
}

#[tokio::test]
async fn the_user_services_own_timeout_still_opens_the_circuit_and_charges_no_one() {
    const BUDGET: u32 = 2;
    let mut app = spawn_app_with(|config| {
        config
            .service
            .login_throttle
            .max_failures_per_account_per_hour = BUDGET;
        let users = config.peers.get_mut("user").expect("a user peer");
        users.timeout = Duration::from_millis(200);
        users.breaker.open = Duration::from_secs(600);
    })
    .await;
    app.users.hold();
    // The breaker's default: five failures in a row. More than the budget, all refunded.
    for attempt in 0..5 {
        let status = app
            .login(ADA, "wrong password!")
            .await
            .expect_err("no answer in time");
        assert_eq!(
            status.code(),
            Code::Unavailable,
            "attempt {attempt}: {status:?}"
        );
    }
    assert_eq!(app.users.calls().len(), 5);
    assert_eq!(circuit_to_users(&app).await, Some(1.0));
    let status = app.login(ADA, "wrong password!").await.expect_err("open");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        app.users.calls().len(),
        5,
        "the open circuit answers without calling"
    );
    app.stop().await;
}
