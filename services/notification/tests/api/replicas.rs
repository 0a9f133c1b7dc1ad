//! Replicas on one SQLite file (what `cargo xtask up --scale notification=2` runs): a
//! stream on either replica gets every notification of its user live, whichever replica
//! stored it — through the file's change detector (`PRAGMA data_version`), not the
//! follower's poll, which these tests set to a minute so a late delivery fails them.

use std::time::Duration;

use trellis_platform::data::DatabaseConfig;
use trellis_platform::testing::TestIssuer;

use crate::helpers::{TestApp, new_user_id, next_subscribed, spawn_replica};

/// Far longer than the change detector's interval, far shorter than the poll.
const LIVE: Duration = Duration::from_secs(5);

/// Two replicas sharing a fresh SQLite file in `dir`, polling only once a minute.
async fn replicas(dir: &tempfile::TempDir) -> (TestApp, TestApp) {
    let url = format!("sqlite://{}/notification.db?mode=rwc", dir.path().display());
    let issuer = TestIssuer::new();
    let mut apps = Vec::new();
    for _ in 0..2 {
        let url = url.clone();
        apps.push(
            spawn_replica(issuer.clone(), move |config| {
                config.database = DatabaseConfig::with_url(&url);
                config.service.feed.poll_interval_ms = 60_000;
            })
            .await,
        );
    }
    let second = apps.pop().expect("two");
    let first = apps.pop().expect("two");
    (first, second)
}

#[tokio::test]
async fn a_stream_on_one_replica_gets_what_the_other_stored_live_and_in_order() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (mut one, mut other) = replicas(&dir).await;
    let ada = new_user_id();
    let mut on_one = one.subscribe(&ada, "").await;
    let mut on_other = other.subscribe(&ada, "").await;

    // Alternating replicas: each stream sees all four, in commit order, within LIVE.
    let mut sent = Vec::new();
    for i in 0..4 {
        let app = if i % 2 == 0 { &mut one } else { &mut other };
        sent.push(app.send(&ada, &format!("Number {i}")).await);
    }
    for stream in [&mut on_one, &mut on_other] {
        for expected in &sent {
            let got = tokio::time::timeout(LIVE, next_subscribed(stream))
                .await
                .expect("delivered live, not at the next poll");
            assert_eq!(&got, expected);
        }
    }
}
