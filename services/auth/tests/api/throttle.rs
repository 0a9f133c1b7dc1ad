//! Failed logins are throttled per account and per source address: RESOURCE_EXHAUSTED
//! with a `google.rpc.RetryInfo`, after exactly the hourly budget — also when the guesses
//! come at once — and faults of the user service charge no one. A flood of failures from
//! other addresses does not lock the owner out of an address they signed in from. Each
//! refusal counts in `trellis_auth_login_throttled_total`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use auth_service::domain::throttle::LoginThrottle;
use auth_service::domain::{Auth, AuthError, User, UserDirectory};
use auth_service::storage::SeaOrmAuthRepository;
use tonic::{Code, Status};
use trellis_platform::testing::metrics::scrape;

use crate::helpers::{
    ADA, ADMIN, PASSWORD, TestApp, migrated_repository, retry_delay, spawn_app_with, test_issuer,
};

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
    assert_eq!(
        failures, BUDGET as usize,
        "the whole budget, not half of it"
    );
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
    assert_eq!(
        failures, BUDGET as usize,
        "the whole budget, not half of it"
    );
    assert_throttled(&status);

    let status = app
        .login(ADA, PASSWORD)
        .await
        .expect_err("the address is throttled");
    assert_throttled(&status);

    // Both refusals are counted, and only they.
    let metrics = scrape(app.metrics_addr).await;
    assert!(
        metrics.contains("\ntrellis_auth_login_throttled_total 2\n"),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn logins_refused_because_the_user_service_cannot_be_asked_are_unavailable_and_charge_no_one()
{
    const BUDGET: u32 = 2;
    let mut app = spawn_app_with(|config| {
        let throttle = &mut config.service.login_throttle;
        throttle.max_failures_per_account_per_hour = BUDGET;
        throttle.max_failures_per_source_per_hour = BUDGET;
    })
    .await;
    // Down, or rejecting auth's own service token with UNAUTHENTICATED: neither says
    // anything about Ada's password.
    for fault in ["down", "rejecting auth's token"] {
        app.users.set_down(fault == "down");
        app.users.set_rejecting_callers(fault != "down");
        for _ in 0..=BUDGET {
            let status = app
                .login(ADA, "wrong password!")
                .await
                .expect_err("no sign-in without the user service");
            assert_eq!(status.code(), Code::Unavailable, "{fault}: {status:?}");
            assert_ne!(status.message(), "invalid email or password");
        }
    }
    app.users.set_down(false);
    app.users.set_rejecting_callers(false);
    // Ada's budget and the address's are whole.
    let (failures, status) =
        fail_until_throttled(&mut app, BUDGET as usize, |_| ADA.to_owned()).await;
    assert_eq!(failures, BUDGET as usize);
    assert_throttled(&status);
    app.stop().await;
}

#[tokio::test]
async fn n_concurrent_wrong_logins_against_a_budget_of_b_reach_the_user_service_b_times() {
    const BUDGET: u32 = 3;
    const N: usize = 12;
    let app = spawn_app_with(|config| {
        config
            .service
            .login_throttle
            .max_failures_per_account_per_hour = BUDGET;
    })
    .await;
    // Every check waits at the user service until all N logins have either reached it
    // or been answered: no guess can finish before the others are decided.
    app.users.hold();
    let logins: Vec<_> = (0..N)
        .map(|_| {
            let mut client = app.auth.clone();
            tokio::spawn(async move {
                client
                    .login(trellis_proto::auth_v1::LoginRequest {
                        email: ADA.to_owned(),
                        password: "wrong password!".to_owned(),
                    })
                    .await
                    .map(drop)
            })
        })
        .collect();
    crate::helpers::assert_eventually(|| {
        let answered = logins.iter().filter(|l| l.is_finished()).count();
        let checking = app.users.calls().len();
        async move { answered + checking == N }
    })
    .await;
    app.users.release();
    let mut codes = HashMap::new();
    for login in logins {
        let code = login
            .await
            .expect("the call task")
            .expect_err("refused")
            .code();
        *codes.entry(code).or_insert(0_usize) += 1;
    }
    assert_eq!(app.users.calls().len(), BUDGET as usize);
    assert_eq!(
        codes,
        HashMap::from([
            (Code::Unauthenticated, BUDGET as usize),
            (Code::ResourceExhausted, N - BUDGET as usize),
        ])
    );
    app.stop().await;
}

/// A user directory that knows Ada (by [`PASSWORD`]) and counts nothing.
struct Directory {
    ada: User,
}

impl UserDirectory for Directory {
    async fn verify_credentials(
        &self,
        email: &str,
        password: &str,
    ) -> Result<Option<User>, AuthError> {
        Ok((email == self.ada.email && password == PASSWORD).then(|| self.ada.clone()))
    }

    async fn lookup_user(&self, id: &str) -> Result<Option<User>, AuthError> {
        Ok((id == self.ada.id).then(|| self.ada.clone()))
    }
}

fn ip(octets: [u8; 4]) -> Option<IpAddr> {
    Some(IpAddr::from(octets))
}

/// Sources differ here, so this drives the domain operation a handler calls, with the
/// source address a handler passes.
#[tokio::test]
async fn a_flood_of_failures_from_other_addresses_does_not_lock_the_owner_out() {
    const BUDGET: u32 = 5;
    let auth: Auth<SeaOrmAuthRepository, Directory> = Auth::new(
        migrated_repository().await,
        Directory {
            ada: User {
                id: uuid::Uuid::now_v7().to_string(),
                email: ADA.to_owned(),
                roles: Vec::new(),
            },
        },
        test_issuer(),
        LoginThrottle::new(BUDGET, 1000),
        HashMap::new(),
    );
    let owner = ip([192, 0, 2, 1]);
    auth.login(ADA, PASSWORD, owner)
        .await
        .expect("Ada signs in from home");
    // Wrong guesses from many addresses, far over the account's budget.
    for i in 0..50_u8 {
        let result = auth
            .login(ADA, "wrong password!", ip([203, 0, 113, i]))
            .await;
        assert!(
            matches!(
                result,
                Err(AuthError::InvalidCredentials | AuthError::Throttled { .. })
            ),
            "{result:?}"
        );
    }
    let elsewhere = auth.login(ADA, PASSWORD, ip([198, 51, 100, 1])).await;
    let Err(AuthError::Throttled { retry_after }) = elsewhere else {
        panic!("an address Ada never used shares the flooded budget: {elsewhere:?}");
    };
    assert!(retry_after <= Duration::from_secs(3600), "{retry_after:?}");
    auth.login(ADA, PASSWORD, owner)
        .await
        .expect("from home, Ada still signs in");
}
