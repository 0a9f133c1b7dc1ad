//! The shared cases with every service on PostgreSQL (in-process services, one
//! PostgreSQL container per test).

use integration_tests::{Databases, System, docker, scenarios};
use testcontainers::ContainerAsync;
use testcontainers::ImageExt as _;
use testcontainers::runners::AsyncRunner as _;
use testcontainers_modules::postgres::Postgres;

/// The databases the services use, one each.
pub(crate) const INIT_SQL: &str = "CREATE DATABASE trellis_user; CREATE DATABASE trellis_auth; CREATE DATABASE trellis_notification;";

/// A PostgreSQL container with the three databases, and their URLs.
pub(crate) async fn postgres() -> (ContainerAsync<Postgres>, Databases) {
    let (name, tag) = docker::image("postgres");
    let container = Postgres::default()
        .with_init_sql(INIT_SQL.as_bytes().to_vec())
        .with_name(name)
        .with_tag(tag)
        .start()
        .await
        .expect("the PostgreSQL container starts");
    let port = container
        .get_host_port_ipv4(5432)
        .await
        .expect("mapped port");
    let url = |db: &str| format!("postgres://postgres:postgres@127.0.0.1:{port}/{db}");
    let databases = Databases {
        user: url("trellis_user"),
        auth: url("trellis_auth"),
        notification: url("trellis_notification"),
    };
    (container, databases)
}

#[tokio::test]
async fn accounts_and_pagination_on_postgres() {
    if !docker::require(&["postgres"]) {
        return;
    }
    let (_postgres, databases) = postgres().await;
    let system = System::start_on(Some(databases)).await;
    scenarios::accounts_and_pagination(&system).await;
    system.stop().await;
}

#[tokio::test]
async fn welcome_exactly_once_across_an_outage_on_postgres() {
    if !docker::require(&["postgres"]) {
        return;
    }
    let (_postgres, databases) = postgres().await;
    let mut system = System::start_on(Some(databases)).await;
    scenarios::welcome_exactly_once_across_an_outage(&mut system).await;
    system.stop().await;
}

#[tokio::test]
async fn refresh_rotation_on_postgres() {
    if !docker::require(&["postgres"]) {
        return;
    }
    let (_postgres, databases) = postgres().await;
    let system = System::start_on(Some(databases)).await;
    scenarios::refresh_rotation(&system).await;
    system.stop().await;
}
