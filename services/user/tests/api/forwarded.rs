//! Behind a trusted proxy, the sign-up budget is per client the proxy names; from any
//! other peer, a forged `X-Forwarded-For` changes nothing.

use tonic::{Code, Request};
use trellis_platform::testing::TEST_PASSWORD;
use trellis_proto::user_v1 as pb;
use user_service::config::SignUpRate;

use crate::helpers::{TestApp, spawn_app_with};

/// A CreateUser of `email` that says it was forwarded for `client`.
fn sign_up_for(email: &str, client: &str) -> Request<pb::CreateUserRequest> {
    let mut request = Request::new(pb::CreateUserRequest {
        email: email.to_owned(),
        display_name: "Someone".to_owned(),
        password: TEST_PASSWORD.to_owned(),
    });
    request
        .metadata_mut()
        .insert("x-forwarded-for", client.parse().expect("a header value"));
    request
}

/// The code of a CreateUser; a refusal must be the sign-up limit's.
async fn create(app: &mut TestApp, email: &str, client: &str) -> Result<(), Code> {
    match app.users.create_user(sign_up_for(email, client)).await {
        Ok(_) => Ok(()),
        Err(status) => {
            if status.code() == Code::ResourceExhausted {
                assert!(status.message().contains("sign-ups"), "{status:?}");
            }
            Err(status.code())
        }
    }
}

/// One sign-up per address, trusting 127.0.0.1 as a proxy when `behind_proxy`.
async fn app(behind_proxy: bool) -> TestApp {
    spawn_app_with(|config| {
        config.service.sign_up_rate = SignUpRate {
            per_minute: 1,
            burst: 1,
        };
        if behind_proxy {
            config.server.trusted_proxies = vec!["127.0.0.1/32".parse().expect("a CIDR range")];
        }
    })
    .await
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_sign_up_budget() {
    let mut app = app(true).await;
    assert_eq!(
        create(&mut app, "a1@example.com", "203.0.113.1").await,
        Ok(())
    );
    assert_eq!(
        create(&mut app, "a2@example.com", "203.0.113.1").await,
        Err(Code::ResourceExhausted)
    );
    // The proxy appended the real client; the client's own entry on the left is ignored.
    assert_eq!(
        create(&mut app, "b1@example.com", "203.0.113.1, 203.0.113.2").await,
        Ok(())
    );
    assert_eq!(
        create(&mut app, "b2@example.com", "203.0.113.2, 203.0.113.1").await,
        Err(Code::ResourceExhausted)
    );
}

#[tokio::test]
async fn from_an_untrusted_peer_a_forged_x_forwarded_for_shares_the_peers_sign_up_budget() {
    let mut app = app(false).await;
    assert_eq!(
        create(&mut app, "a1@example.com", "203.0.113.1").await,
        Ok(())
    );
    assert_eq!(
        create(&mut app, "b1@example.com", "203.0.113.2").await,
        Err(Code::ResourceExhausted)
    );
}
