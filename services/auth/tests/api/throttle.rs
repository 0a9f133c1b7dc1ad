//! Failed logins are throttled per account and per source address: RESOURCE_EXHAUSTED
//! with a `google.rpc.RetryInfo`, never more than the hourly budget allows.

use std::time::Duration;

use tonic::{Code, Status};

use crate::helpers::{ADA, ADMIN, PASSWORD, TestApp, retry_delay, spawn_app_with};

/// Fails logins (`email_for(attempt)`, wrong password) until one is throttled; returns
/// how many were refused as plain failures first, and the throttling status.
///
/// # Panics
/// When the `budget + 1`-th attempt is still not throttled: more than `budget` failures
/// in an hour were allowed.
async fn fail_until_throttled(
    app: &mut TestApp,
    budget: usize,
    email_for: impl Fn(usize) -> String,
) -> (usize, Status) {
    for attempt in 0..=budget {
        let status = app
            .login(&email_for(attempt), "wrong password!")
            .await
            .expect_err("a wrong password is refused");
        match status.code() {
            Code::Unauthenticated => {}
            Code::ResourceExhausted => return (attempt, status),
            other => panic!("attempt {attempt}: unexpected {other:?}: {status:?}"),
        }
    }
    panic!("{} failures in a row were not throttled", budget + 1);
}

fn assert_throttled(status: &Status) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let delay = retry_delay(status).expect("a RetryInfo with a delay");
    assert!(
        delay > Duration::ZERO && delay <= Duration::from_secs(3600),
        "retry after {delay:?}"
    );
}

#[tokio::test]
async fn failed_logins_over_the_account_budget_are_resource_exhausted_even_with_the_right_password()
{
    const BUDGET: u32 = 4;
    let mut app = spawn_app_with(|config| {
        config
            .service
            .login_throttle
            .max_failures_per_account_per_hour = BUDGET;
    })
    .await;
    // Case variants of one address share its budget.
    let variants = ["ada@example.com", "Ada@Example.com", "ADA@EXAMPLE.COM"];
    let (failures, status) = fail_until_throttled(&mut app, BUDGET as usize, |attempt| {
        variants[attempt % variants.len()].to_owned()
    })
    .await;
    assert!(failures >= 1, "throttled before any failure");
    assert_throttled(&status);

    // Throttled means throttled: the right password gets no further.
    let status = app
        .login(ADA, PASSWORD)
        .await
        .expect_err("the account is throttled");
    assert_throttled(&status);

    // Another account from the same address is not.
    app.sign_in(ADMIN).await;
    app.stop().await;
}

#[tokio::test]
async fn failed_logins_from_one_address_over_its_budget_are_resource_exhausted_for_every_account() {
    const BUDGET: u32 = 4;
    let mut app = spawn_app_with(|config| {
        config
            .service
            .login_throttle
            .max_failures_per_source_per_hour = BUDGET;
    })
    .await;
    // A different account each time: only the source address's budget runs out.
    let (failures, status) = fail_until_throttled(&mut app, BUDGET as usize, |attempt| {
        format!("user{attempt}@example.com")
    })
    .await;
    assert!(failures >= 1, "throttled before any failure");
    assert_throttled(&status);

    let status = app
        .login(ADA, PASSWORD)
        .await
        .expect_err("the address is throttled");
    assert_throttled(&status);
    app.stop().await;
}

#[tokio::test]
async fn logins_refused_while_the_user_service_is_down_do_not_count_as_failures() {
    const BUDGET: u32 = 2;
    let mut app = spawn_app_with(|config| {
        config
            .service
            .login_throttle
            .max_failures_per_account_per_hour = BUDGET;
        config
            .service
            .login_throttle
            .max_failures_per_source_per_hour = BUDGET;
    })
    .await;
    app.users.set_down(true);
    for _ in 0..=BUDGET {
        let status = app
            .login(ADA, "wrong password!")
            .await
            .expect_err("no sign-in without the user service");
        assert_eq!(status.code(), Code::Unavailable);
    }
    app.users.set_down(false);
    app.sign_in(ADA).await;
    app.stop().await;
}
