//! The etcd discovery backend against a real etcd (Debian's `etcd-server`; skipped where it
//! is not installed, unless `CI` is set): registrations appear in watches, keep-alives
//! hold them, a killed instance expires with its lease, deregistering removes one at
//! once, a lost lease is granted again, and a watch survives etcd going down.

use std::collections::BTreeMap;
use std::time::Duration;

use tonic::transport::Channel;
use trellis_platform::discovery::{
    EtcdConfig, EtcdRegistry, Registration, Registry, Target, Watch,
};
use trellis_platform::testing::metrics::{http_get, sample};
use trellis_platform::testing::{EtcdServer, TestCa, assert_eventually, assert_eventually_that};
use trellis_proto::etcd::etcdserverpb::kv_client::KvClient;
use trellis_proto::etcd::etcdserverpb::lease_client::LeaseClient;
use trellis_proto::etcd::etcdserverpb::{LeaseRevokeRequest, RangeRequest};
use trellis_proto::etcd::mvccpb::KeyValue;

fn config(server: &EtcdServer, lease_ttl_s: u64) -> EtcdConfig {
    EtcdConfig {
        endpoints: server.url.clone(),
        prefix: "/test/services/".to_owned(),
        lease_ttl_s,
        timeout: Duration::from_millis(2000),
        ..EtcdConfig::default()
    }
}

fn target(service: &str) -> Target {
    Target {
        peer: service.to_owned(),
        service: service.to_owned(),
        addresses: Vec::new(),
        srv: None,
    }
}

fn registration(service: &str, id: &str, port: u16) -> Registration {
    Registration {
        service: service.to_owned(),
        id: id.to_owned(),
        host: "127.0.0.1".to_owned(),
        port,
        health_service: format!("trellis.{service}.v1.Service"),
        metadata: BTreeMap::from([("version".to_owned(), "1.2.3".to_owned())]),
    }
}

fn uris(watch: &Watch) -> Option<Vec<String>> {
    watch
        .current()
        .map(|set| set.iter().map(|i| i.uri.clone()).collect())
}

/// Waits until `watch` shows exactly `expected`.
async fn wait_for(watch: &Watch, expected: &[&str]) {
    let expected: Vec<String> = expected.iter().map(|&s| s.to_owned()).collect();
    let what = format!("the watch showing {expected:?}");
    assert_eventually_that(&what, || {
        std::future::ready(uris(watch).as_ref() == Some(&expected))
    })
    .await;
}

fn channel(server: &EtcdServer) -> Channel {
    Channel::from_shared(server.url.clone())
        .unwrap()
        .connect_lazy()
}

/// `key` as stored in etcd, read straight from it.
async fn stored(server: &EtcdServer, key: &str) -> Option<KeyValue> {
    let range = KvClient::new(channel(server))
        .range(RangeRequest {
            key: key.as_bytes().to_vec(),
            ..RangeRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    range.kvs.into_iter().next()
}

/// etcd's count of open watchers (its `/metrics`).
async fn watchers(server: &EtcdServer) -> Option<f64> {
    let addr = server.url.trim_start_matches("http://").parse().unwrap();
    let text = http_get(addr, "/metrics").await.body;
    sample(&text, "etcd_debugging_mvcc_watcher_total")
}

#[tokio::test]
async fn etcd_registrations_are_watched_and_deregistering_removes_one_at_once() {
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    // A dead member first: calls fail over to the live one. A 60 s lease: only a revoke
    // explains a key gone within the 15 s the test waits.
    let mut config = config(&server, 60);
    config.endpoints = format!("http://127.0.0.1:9, {}", server.url);
    let registry = EtcdRegistry::new(&config).unwrap();
    let watch = registry.watch(&target("user"));
    wait_for(&watch, &[]).await;

    let a = registry
        .register(&registration("user", "user-a", 1001))
        .await
        .unwrap();
    wait_for(&watch, &["http://127.0.0.1:1001"]).await;
    let value = stored(&server, "/test/services/user/user-a").await.unwrap();
    assert_ne!(value.lease, 0, "the key is under a lease");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&value.value).unwrap(),
        serde_json::json!({"uri": "http://127.0.0.1:1001", "metadata": {"version": "1.2.3"}})
    );

    // A service whose name starts with the same letters is outside the prefix: its put
    // comes first, so had the watch seen it, it would show with user-b.
    let other = registry
        .register(&registration("user2", "user2-a", 2001))
        .await
        .unwrap();
    let b = registry
        .register(&registration("user", "user-b", 1002))
        .await
        .unwrap();
    wait_for(&watch, &["http://127.0.0.1:1001", "http://127.0.0.1:1002"]).await;

    b.deregister().await.unwrap();
    wait_for(&watch, &["http://127.0.0.1:1001"]).await;
    assert!(
        stored(&server, "/test/services/user/user-b")
            .await
            .is_none()
    );
    a.deregister().await.unwrap();
    other.deregister().await.unwrap();
    wait_for(&watch, &[]).await;
}

#[tokio::test]
async fn an_etcd_registration_whose_keep_alive_stops_disappears_after_the_ttl() {
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    let registry = EtcdRegistry::new(&config(&server, 2)).unwrap();
    let mut watch = registry.watch(&target("user"));
    let registered = registry
        .register(&registration("user", "user-a", 1001))
        .await
        .unwrap();
    wait_for(&watch, &["http://127.0.0.1:1001"]).await;

    // Kept alive: the set does not change over three TTLs.
    watch.mark_seen();
    assert!(
        tokio::time::timeout(Duration::from_secs(6), watch.changed())
            .await
            .is_err(),
        "the registration expired while kept alive: {:?}",
        uris(&watch)
    );

    // A killed instance: keep-alives stop, nothing is revoked.
    drop(registered);
    assert_eq!(
        uris(&watch).unwrap(),
        ["http://127.0.0.1:1001"],
        "nothing removes the key before its lease expires"
    );
    wait_for(&watch, &[]).await;
}

#[tokio::test]
async fn a_lost_etcd_lease_is_granted_again_and_the_key_put_back() {
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    let registry = EtcdRegistry::new(&config(&server, 3)).unwrap();
    let watch = registry.watch(&target("user"));
    let registered = registry
        .register(&registration("user", "user-a", 1001))
        .await
        .unwrap();
    wait_for(&watch, &["http://127.0.0.1:1001"]).await;
    let key = "/test/services/user/user-a";
    let first = stored(&server, key).await.unwrap().lease;

    // Revoked behind the registration's back (as when etcd lost it): the key goes.
    LeaseClient::new(channel(&server))
        .lease_revoke(LeaseRevokeRequest { id: first })
        .await
        .unwrap();
    assert!(stored(&server, key).await.is_none());
    assert_eventually(|| async {
        stored(&server, key)
            .await
            .is_some_and(|kv| kv.lease != 0 && kv.lease != first)
    })
    .await;
    wait_for(&watch, &["http://127.0.0.1:1001"]).await;
    registered.deregister().await.unwrap();
    assert!(stored(&server, key).await.is_none());
}

#[tokio::test]
async fn an_etcd_watch_keeps_its_set_while_etcd_is_down_and_follows_it_again_after() {
    let Some(mut server) = EtcdServer::start().await else {
        return;
    };
    let registry = EtcdRegistry::new(&config(&server, 60)).unwrap();
    let mut watch = registry.watch(&target("user"));
    let a = registry
        .register(&registration("user", "user-a", 1001))
        .await
        .unwrap();
    wait_for(&watch, &["http://127.0.0.1:1001"]).await;

    // Within a second the broken watch is noticed and retried several times.
    server.kill();
    watch.mark_seen();
    assert!(
        tokio::time::timeout(Duration::from_secs(1), watch.changed())
            .await
            .is_err(),
        "an unreachable etcd changed the set: {:?}",
        uris(&watch)
    );

    server.restart().await;
    let b = registry
        .register(&registration("user", "user-b", 1002))
        .await
        .unwrap();
    wait_for(&watch, &["http://127.0.0.1:1001", "http://127.0.0.1:1002"]).await;
    a.deregister().await.unwrap();
    b.deregister().await.unwrap();
}

#[tokio::test]
async fn an_etcd_watch_ends_at_etcd_when_its_watchers_are_gone() {
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    let registry = EtcdRegistry::new(&config(&server, 60)).unwrap();
    let watch = registry.watch(&target("user"));
    wait_for(&watch, &[]).await;
    assert_eventually(|| async { watchers(&server).await == Some(1.0) }).await;
    drop(watch);
    assert_eventually(|| async { watchers(&server).await == Some(0.0) }).await;
}

#[tokio::test]
async fn an_etcd_registration_id_with_a_slash_is_refused_before_any_call() {
    // Nothing listens on the discard port: a call would fail differently.
    let registry = EtcdRegistry::new(&EtcdConfig {
        endpoints: "http://127.0.0.1:9".to_owned(),
        ..EtcdConfig::default()
    })
    .unwrap();
    let Err(err) = registry.register(&registration("user", "a/b", 1)).await else {
        panic!("registered an id with a slash");
    };
    assert!(err.to_string().contains("\"a/b\""), "{err}");
}

#[tokio::test]
async fn over_tls_a_client_certificate_registers_and_watches_and_none_is_refused() {
    let ca = TestCa::new();
    let client = ca.workload("user");
    let Some(server) = EtcdServer::start_tls(&ca, &client).await else {
        return;
    };
    let tls = EtcdConfig {
        ca: Some(client.ca.clone()),
        cert: Some(client.cert.clone()),
        key: Some(client.key.clone()),
        ..config(&server, 10)
    };
    let registry = EtcdRegistry::new(&tls).unwrap();
    let registered = registry
        .register(&registration("user", "user-1", 50051))
        .await
        .expect("a client certificate of the CA is let in");
    let watch = registry.watch(&target("user"));
    wait_for(&watch, &["http://127.0.0.1:50051"]).await;
    registered.deregister().await.unwrap();

    // The CA but no client certificate: etcd (--client-cert-auth) refuses the handshake.
    let anonymous = EtcdRegistry::new(&EtcdConfig {
        cert: None,
        key: None,
        ..tls.clone()
    })
    .unwrap();
    assert!(
        anonymous
            .register(&registration("user", "user-2", 50052))
            .await
            .is_err()
    );
    // And plaintext to a TLS member is not configurable.
    assert!(
        EtcdRegistry::new(&EtcdConfig {
            ca: None,
            cert: None,
            key: None,
            ..tls
        })
        .is_err()
    );
}
