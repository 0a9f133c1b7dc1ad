//! The whole system as containers — the three service images and PostgreSQL on one
//! Docker network, reaching each other by name — driven over gRPC from the test.

use std::net::SocketAddr;
use std::time::Duration;

use integration_tests::client::{
    log_in, notification_kinds, notifications, sign_up, sign_up_and_log_in, users,
};
use integration_tests::scenarios::wait_outbox_drained;
use integration_tests::{Trellis, assert_eventually, channel, docker, wait_serving, with_token};
use testcontainers::core::{IntoContainerPort as _, WaitFor};
use testcontainers::runners::AsyncRunner as _;
use testcontainers::{ContainerAsync, GenericImage, ImageExt as _};
use testcontainers_modules::postgres::Postgres;
use tonic::transport::Channel;
use trellis_proto::notification_v1 as pb;
use trellis_proto::user_v1 as user;

use crate::postgres::INIT_SQL;

const SECRET: &str = "cluster-test-client-secret";

struct Cluster {
    _network: String,
    _postgres: ContainerAsync<Postgres>,
    user: ContainerAsync<GenericImage>,
    auth: ContainerAsync<GenericImage>,
    notification: ContainerAsync<GenericImage>,
    addrs: [SocketAddr; 3],
    /// The user service's database as the test reaches it (the host's mapped port).
    user_database: String,
}

impl Trellis for Cluster {
    fn user_channel(&self) -> Channel {
        channel(self.addrs[0])
    }

    fn auth_channel(&self) -> Channel {
        channel(self.addrs[1])
    }

    fn notification_channel(&self) -> Channel {
        channel(self.addrs[2])
    }
}

async fn host_addr(container: &ContainerAsync<GenericImage>, port: u16) -> SocketAddr {
    let port = container
        .get_host_port_ipv4(port)
        .await
        .expect("mapped port");
    SocketAddr::from(([127, 0, 0, 1], port))
}

async fn service(
    name: &str,
    port: u16,
    id: &str,
    network: &str,
    env: Vec<(String, String)>,
) -> ContainerAsync<GenericImage> {
    let (repository, tag) = docker::image(&format!("{name}-service"));
    let mut request = GenericImage::new(repository, tag)
        .with_exposed_port(port.tcp())
        .with_wait_for(WaitFor::healthcheck())
        .with_network(network)
        .with_container_name(format!("{name}-{id}"));
    for (key, value) in env {
        request = request.with_env_var(key, value);
    }
    request
        .start()
        .await
        .unwrap_or_else(|err| panic!("the {name} container starts: {err}"))
}

impl Cluster {
    async fn start() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        let network = format!("trellis-test-{id}");
        let (name, tag) = docker::image("postgres");
        let postgres = Postgres::default()
            .with_init_sql(INIT_SQL.as_bytes().to_vec())
            .with_name(name)
            .with_tag(tag)
            .with_network(&network)
            .with_container_name(format!("postgres-{id}"))
            .start()
            .await
            .expect("the PostgreSQL container starts");
        let postgres_port = postgres
            .get_host_port_ipv4(5432)
            .await
            .expect("mapped port");
        let user_database =
            format!("postgres://postgres:postgres@127.0.0.1:{postgres_port}/trellis_user");
        let db =
            |name: &str| format!("postgres://postgres:postgres@postgres-{id}:5432/trellis_{name}");
        let peer = |name: &str, port: u16| format!("http://{name}-{id}:{port}");
        let env = |pairs: &[(&str, String)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect::<Vec<_>>()
        };
        let notification = service(
            "notification",
            50053,
            &id,
            &network,
            env(&[
                ("TRELLIS_NOTIFICATION__DATABASE__URL", db("notification")),
                (
                    "TRELLIS_NOTIFICATION__PEERS__AUTH__ADDRESSES",
                    peer("auth", 50052),
                ),
            ]),
        )
        .await;
        let user = service(
            "user",
            50051,
            &id,
            &network,
            env(&[
                ("TRELLIS_USER__DATABASE__URL", db("user")),
                ("TRELLIS_USER__PEERS__AUTH__ADDRESSES", peer("auth", 50052)),
                (
                    "TRELLIS_USER__PEERS__NOTIFICATION__ADDRESSES",
                    peer("notification", 50053),
                ),
                ("TRELLIS_USER__AUTH__CLIENT_SECRET", SECRET.to_owned()),
                ("TRELLIS_USER__OUTBOX__MAX_BACKOFF_MS", "500".to_owned()),
            ]),
        )
        .await;
        let auth = service(
            "auth",
            50052,
            &id,
            &network,
            env(&[
                ("TRELLIS_AUTH__DATABASE__URL", db("auth")),
                ("TRELLIS_AUTH__PEERS__USER__ADDRESSES", peer("user", 50051)),
                (
                    "TRELLIS_AUTH__PEERS__NOTIFICATION__ADDRESSES",
                    peer("notification", 50053),
                ),
                ("TRELLIS_AUTH__SERVICE_CLIENTS__USER", SECRET.to_owned()),
                ("TRELLIS_AUTH__OUTBOX__MAX_BACKOFF_MS", "500".to_owned()),
            ]),
        )
        .await;
        let addrs = [
            host_addr(&user, 50051).await,
            host_addr(&auth, 50052).await,
            host_addr(&notification, 50053).await,
        ];
        Self {
            _network: network,
            _postgres: postgres,
            user,
            auth,
            notification,
            addrs,
            user_database,
        }
    }

    /// Re-reads the mapped ports (they change when a container restarts) and waits
    /// until every service reports SERVING.
    async fn refresh(&mut self) {
        self.addrs = [
            host_addr(&self.user, 50051).await,
            host_addr(&self.auth, 50052).await,
            host_addr(&self.notification, 50053).await,
        ];
        for addr in self.addrs {
            wait_serving(addr).await;
        }
    }
}

#[tokio::test]
async fn sign_up_log_in_get_user_and_the_welcome_on_subscribe() {
    if !docker::require(&[
        "postgres",
        "user-service",
        "auth-service",
        "notification-service",
    ]) {
        return;
    }
    let cluster = Cluster::start().await;
    let ada = sign_up_and_log_in(&cluster, "ada@example.com").await;
    let own = users(&cluster)
        .get_user(with_token(
            user::GetUserRequest {
                id: ada.user.id.clone(),
            },
            ada.access(),
        ))
        .await
        .expect("GetUser with the token")
        .into_inner()
        .user;
    assert_eq!(own, Some(ada.user.clone()));

    let mut stream = notifications(&cluster)
        .subscribe(with_token(pb::SubscribeRequest::default(), ada.access()))
        .await
        .expect("subscribe")
        .into_inner();
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        let message = tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .expect("a notification within 20 s")
            .expect("healthy stream")
            .expect("open stream");
        kinds.push(message.notification.expect("notification").kind);
    }
    kinds.sort();
    assert_eq!(kinds, ["new_sign_in", "welcome"]);
}

#[tokio::test]
async fn notification_outage_and_user_restart_lose_nothing() {
    if !docker::require(&[
        "postgres",
        "user-service",
        "auth-service",
        "notification-service",
    ]) {
        return;
    }
    let mut cluster = Cluster::start().await;
    let before = sign_up_and_log_in(&cluster, "before@example.com").await;

    // Notification down: sign-ups still succeed.
    cluster
        .notification
        .stop()
        .await
        .expect("notification stops");
    let mut signed_up = Vec::new();
    for i in 0..3 {
        signed_up.push(sign_up(&cluster, &format!("down{i}@example.com")).await);
    }
    cluster
        .notification
        .start()
        .await
        .expect("notification starts");
    cluster.refresh().await;
    for (i, user) in signed_up.iter().enumerate() {
        let tokens = log_in(&cluster, &format!("down{i}@example.com")).await;
        let session = integration_tests::client::Session {
            user: user.clone(),
            tokens,
        };
        let cluster = &cluster;
        assert_eventually(|| async {
            notification_kinds(cluster, &session)
                .await
                .iter()
                .any(|k| k == "welcome")
        })
        .await;
        // Once the user service's outbox has nothing pending, no further delivery will
        // come: a duplicate would show now.
        wait_outbox_drained(&cluster.user_database).await;
        let kinds = notification_kinds(cluster, &session).await;
        assert_eq!(
            kinds.iter().filter(|k| *k == "welcome").count(),
            1,
            "{kinds:?}"
        );
    }

    // The user container restarts: its data is in PostgreSQL, intact.
    cluster.user.stop().await.expect("user stops");
    cluster.user.start().await.expect("user starts");
    cluster.refresh().await;
    let again = log_in(&cluster, "before@example.com").await;
    let own = users(&cluster)
        .get_user(with_token(
            user::GetUserRequest {
                id: before.user.id.clone(),
            },
            &again.access_token,
        ))
        .await
        .expect("GetUser after the restart")
        .into_inner()
        .user;
    assert_eq!(own, Some(before.user));
}
