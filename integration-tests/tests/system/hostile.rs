//! The whole system against a client that picks its own deadlines and tokens: nothing it
//! chooses opens a circuit between the services or locks anyone else out.

use std::time::Duration;

use integration_tests::client::{PASSWORD, auth, sign_up, sign_up_and_log_in, users};
use integration_tests::{System, with_token};
use tonic::Code;
use trellis_platform::testing::TestIssuer;
use trellis_platform::testing::metrics::{sample, scrape};
use trellis_proto::auth_v1 as auth_pb;
use trellis_proto::user_v1 as user_pb;

/// The state of `service`'s circuit to `peer` (0 closed, 1 open, 2 half-open).
async fn circuit(system: &System, service: &str, peer: &str) -> Option<f64> {
    let addr = system.metrics_addr(service).expect("metrics are on");
    sample(
        &scrape(addr).await,
        &format!("trellis_peer_circuit_state{{peer=\"{peer}\"}}"),
    )
}

/// Codes a call cut short by its own tiny deadline, or refused, may end with.
fn cut_short_or_refused(code: Code) -> bool {
    matches!(
        code,
        Code::DeadlineExceeded | Code::Cancelled | Code::Unauthenticated
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_logins_with_8_ms_deadlines_leave_sign_in_working_for_everyone() {
    let system = System::start_with_metrics().await;
    sign_up(&system, "ada@example.com").await;
    let mut sessions = auth(&system);
    let mut cut_short = 0;
    for guess in 0..30 {
        let mut request = tonic::Request::new(auth_pb::LoginRequest {
            email: format!("guess{guess}@example.com"),
            password: "wrong password!".to_owned(),
        });
        request.set_timeout(Duration::from_millis(8));
        let status = sessions
            .login(request)
            .await
            .expect_err("a wrong password never signs in");
        assert!(cut_short_or_refused(status.code()), "{status:?}");
        cut_short += usize::from(status.code() != Code::Unauthenticated);
    }
    // Checking a password (argon2id, OWASP's minimum cost) takes longer than 8 ms: the
    // hostile case happened, and is not what this test passed by.
    assert!(cut_short > 0, "no login was cut short by its deadline");
    let tokens = sessions
        .login(auth_pb::LoginRequest {
            email: "ada@example.com".to_owned(),
            password: PASSWORD.to_owned(),
        })
        .await
        .expect("a valid sign-in still works");
    assert!(tokens.into_inner().tokens.is_some());
    assert_eq!(circuit(&system, "auth", "user").await, Some(0.0));
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_of_unknown_keys_with_5_ms_deadlines_leave_the_circuit_to_auth_closed() {
    let system = System::start_with_metrics().await;
    let ada = sign_up_and_log_in(&system, "ada@example.com").await;
    let mut client = users(&system);
    for _ in 0..30 {
        // A key no one published: the service may fetch keys, at most at its rate.
        let forged = TestIssuer::new().user_token(&ada.user.id, &["admin"]);
        let mut request = with_token(
            user_pb::GetUserRequest {
                id: ada.user.id.clone(),
            },
            &forged,
        );
        request.set_timeout(Duration::from_millis(5));
        let status = client
            .get_user(request)
            .await
            .expect_err("a token of an unknown key is refused");
        assert!(cut_short_or_refused(status.code()), "{status:?}");
    }
    let own = client
        .get_user(with_token(
            user_pb::GetUserRequest {
                id: ada.user.id.clone(),
            },
            ada.access(),
        ))
        .await
        .expect("a valid token still works");
    assert_eq!(own.into_inner().user.map(|u| u.id), Some(ada.user.id));
    assert_eq!(circuit(&system, "user", "auth").await, Some(0.0));
    system.stop().await;
}
