//! Behind a trusted proxy, the login throttle's per-source budget belongs to the client
//! the proxy names, and Login's rate limit too; from any other peer, a forged
//! `X-Forwarded-For` changes nothing.

use tonic::{Code, Request};
use trellis_platform::auth::RateClass;
use trellis_platform::rate_limit::RateLimitsConfig;
use trellis_proto::auth_v1 as pb;

use crate::helpers::{ADA, PASSWORD, TestApp, spawn_app_with};

/// A Login of `email` with `password` that says it was forwarded for `client`.
async fn login_for(
    app: &mut TestApp,
    email: &str,
    password: &str,
    client: &str,
) -> Result<(), tonic::Status> {
    let mut request = Request::new(pb::LoginRequest {
        email: email.to_owned(),
        password: password.to_owned(),
    });
    request
        .metadata_mut()
        .insert("x-forwarded-for", client.parse().expect("a header value"));
    app.auth.login(request).await.map(drop)
}

/// One failed login per source an hour; 127.0.0.1 trusted as a proxy when `behind_proxy`.
async fn app(behind_proxy: bool, rate_limits: RateLimitsConfig) -> TestApp {
    spawn_app_with(|config| {
        config
            .service
            .login_throttle
            .max_failures_per_source_per_hour = 1;
        config.rate_limits = rate_limits;
        if behind_proxy {
            config.server.trusted_proxies = vec!["127.0.0.1/32".parse().expect("a CIDR range")];
        }
    })
    .await
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_login_throttle_counts_each_forwarded_client() {
    let mut app = app(true, RateLimitsConfig::default()).await;
    let guess = login_for(
        &mut app,
        "nobody@example.com",
        "wrong password!",
        "203.0.113.1",
    )
    .await;
    assert_eq!(guess.map_err(|s| s.code()), Err(Code::Unauthenticated));
    let throttled = login_for(&mut app, ADA, PASSWORD, "203.0.113.1").await;
    assert_eq!(
        throttled.map_err(|s| s.code()),
        Err(Code::ResourceExhausted)
    );
    // Another client behind the same proxy signs in.
    assert_eq!(
        login_for(&mut app, ADA, PASSWORD, "203.0.113.2")
            .await
            .map_err(|s| s.code()),
        Ok(())
    );
    app.stop().await;
}

#[tokio::test]
async fn from_an_untrusted_peer_a_forged_x_forwarded_for_does_not_escape_the_throttle() {
    let mut app = app(false, RateLimitsConfig::default()).await;
    let guess = login_for(
        &mut app,
        "nobody@example.com",
        "wrong password!",
        "203.0.113.1",
    )
    .await;
    assert_eq!(guess.map_err(|s| s.code()), Err(Code::Unauthenticated));
    let throttled = login_for(&mut app, ADA, PASSWORD, "203.0.113.2").await;
    assert_eq!(
        throttled.map_err(|s| s.code()),
        Err(Code::ResourceExhausted)
    );
    app.stop().await;
}

#[tokio::test]
async fn logins_beyond_the_sign_in_rate_are_refused_per_forwarded_client() {
    let rate_limits = RateLimitsConfig::default().with_class(RateClass::SIGN_IN.name, 0.01, 2);
    let mut app = app(true, rate_limits).await;
    for _ in 0..2 {
        assert_eq!(
            login_for(&mut app, ADA, PASSWORD, "203.0.113.1")
                .await
                .map_err(|s| s.code()),
            Ok(())
        );
    }
    let limited = login_for(&mut app, ADA, PASSWORD, "203.0.113.1")
        .await
        .expect_err("over the sign-in rate");
    assert_eq!(limited.code(), Code::ResourceExhausted);
    assert!(limited.message().contains("rate limit"), "{limited:?}");
    assert_eq!(
        login_for(&mut app, ADA, PASSWORD, "203.0.113.2")
            .await
            .map_err(|s| s.code()),
        Ok(())
    );
    app.stop().await;
}
