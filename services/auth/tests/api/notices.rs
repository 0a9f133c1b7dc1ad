//! Sign-in notices go through the transactional outbox: login succeeds while the
//! notification service is down, and the notice arrives once it is back.

use std::time::Duration;

use trellis_platform::auth::PrincipalKind;

use crate::fakes::FakeNotifications;
use crate::helpers::{ADA, assert_eventually, bearer, spawn_app_with};

#[tokio::test]
async fn a_sign_in_notice_waits_while_notification_is_down_and_arrives_once_it_is_back() {
    let (notifications, serving) = FakeNotifications::start(true).await;
    let uri = serving.uri();
    let mut app = spawn_app_with(|config| {
        config
            .peers
            .get_mut("notification")
            .expect("a notification peer")
            .addresses = uri;
        // Quick retries, so the test does not wait for the default backoff.
        config.outbox.initial_backoff = Duration::from_millis(20);
        config.outbox.max_backoff = Duration::from_millis(100);
    })
    .await;

    let response = app
        .login(ADA, crate::helpers::PASSWORD)
        .await
        .expect("sign-in does not need the notification service");
    // The notice was tried and refused...
    assert_eventually(|| {
        let notifications = notifications.clone();
        async move { notifications.refused() > 0 }
    })
    .await;
    // ...and is delivered once the service is back.
    notifications.set_down(false);
    assert_eventually(|| {
        let notifications = notifications.clone();
        async move { !notifications.received().is_empty() }
    })
    .await;

    let received = notifications.received();
    let (notice, authorization) = &received[0];
    assert_eq!(notice.user_id, response.user_id);
    assert_eq!(notice.kind, "new_sign_in");
    assert!(!notice.idempotency_key.is_empty());
    assert!(
        notice.body.contains("127.0.0.1"),
        "names the source: {}",
        notice.body
    );
    // Every delivery of this notice carries the same idempotency key, so redelivery
    // cannot duplicate it.
    assert!(
        received
            .iter()
            .all(|(n, _)| n.idempotency_key == notice.idempotency_key),
        "{received:?}"
    );
    // Delivered with auth's own service credentials.
    let principal = app
        .principal_of(bearer(authorization.as_deref()), "notification")
        .await;
    assert_eq!(principal.kind, PrincipalKind::Service);
    assert_eq!(principal.service_name(), Some("auth"));
    app.stop().await;
}
