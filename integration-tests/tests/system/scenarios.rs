//! The cases shared with the PostgreSQL suite, here on SQLite.

use integration_tests::{System, scenarios};

#[tokio::test]
async fn accounts_and_pagination_on_sqlite() {
    let system = System::start().await;
    scenarios::accounts_and_pagination(&system).await;
    system.stop().await;
}

#[tokio::test]
async fn welcome_exactly_once_across_an_outage_on_sqlite() {
    let mut system = System::start().await;
    scenarios::welcome_exactly_once_across_an_outage(&mut system).await;
    system.stop().await;
}

#[tokio::test]
async fn refresh_rotation_on_sqlite() {
    let system = System::start().await;
    scenarios::refresh_rotation(&system).await;
    system.stop().await;
}
