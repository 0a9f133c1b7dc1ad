//! The Consul backend against an in-process double of the agent's documented HTTP API
//! (no Consul binary here): `PUT /v1/agent/service/register`,
//! `PUT /v1/agent/service/deregister/:id` and blocking `GET /v1/health/service/:service`
//! that holds a query until the catalog's index differs from the query's `index`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::response::Response;
use parking_lot::Mutex;
use percent_encoding::percent_decode_str;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::*;
use crate::discovery::{Watch, channel};

/// How long a test waits for something that should happen at once.
const PATIENCE: Duration = Duration::from_secs(5);

/// One request the double received.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    query: BTreeMap<String, String>,
    token: Option<String>,
    body: Bytes,
}

impl Seen {
    fn param(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }
}

/// The double's state: the health catalog of every service and the agent's services.
#[derive(Debug, Default)]
struct Catalog {
    /// The `X-Consul-Index` of the health catalog.
    index: u64,
    /// `/v1/health/service` entries (`Node`, `Service`, `Checks`).
    entries: Vec<Value>,
    /// Answer every health query with 500.
    failing: bool,
    /// Refuse requests without this `X-Consul-Token` (403, as Consul's ACLs do).
    required_token: Option<String>,
    /// The agent's registered services by ID.
    services: BTreeMap<String, Value>,
    seen: Vec<Seen>,
}

struct Shared {
    catalog: Mutex<Catalog>,
    /// Bumped on every change: releases held blocking queries.
    generation: watch::Sender<u64>,
    /// How many requests arrived.
    arrivals: watch::Sender<usize>,
}

struct ConsulDouble {
    address: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl Drop for ConsulDouble {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl ConsulDouble {
    async fn start(index: u64, entries: Vec<Value>) -> Self {
        let shared = Arc::new(Shared {
            catalog: Mutex::new(Catalog {
                index,
                entries,
                ..Catalog::default()
            }),
            generation: watch::Sender::new(0),
            arrivals: watch::Sender::new(0),
        });
        let router = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Self {
            address,
            shared,
            server,
        }
    }

    fn config(&self) -> ConsulConfig {
        ConsulConfig {
            address: format!("http://{}", self.address),
            wait_s: 30,
            ..ConsulConfig::default()
        }
    }

    /// Changes the catalog and releases the blocking queries it holds.
    fn change(&self, change: impl FnOnce(&mut Catalog)) {
        change(&mut self.shared.catalog.lock());
        self.shared
            .generation
            .send_modify(|generation| *generation += 1);
    }

    fn seen(&self) -> Vec<Seen> {
        self.shared.catalog.lock().seen.clone()
    }

    fn services(&self) -> BTreeMap<String, Value> {
        self.shared.catalog.lock().services.clone()
    }

    /// The requests so far, once at least `count` have arrived.
    async fn wait_for_requests(&self, count: usize) -> Vec<Seen> {
        let mut arrivals = self.shared.arrivals.subscribe();
        tokio::time::timeout(PATIENCE, arrivals.wait_for(|arrived| *arrived >= count))
            .await
            .unwrap_or_else(|_| panic!("fewer than {count} requests: {:#?}", self.seen()))
            .unwrap();
        self.seen()
    }
}

fn reply(status: StatusCode, body: impl Into<Body>) -> Response {
    Response::builder()
        .status(status)
        .body(body.into())
        .unwrap()
}

fn decode(text: &str) -> String {
    percent_decode_str(text).decode_utf8_lossy().into_owned()
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = to_bytes(body, 1 << 20).await.unwrap();
    let query: BTreeMap<String, String> = parts
        .uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(name), decode(value))
        })
        .collect();
    let seen = Seen {
        method: parts.method.clone(),
        path: parts.uri.path().to_owned(),
        query,
        token: parts
            .headers
            .get("x-consul-token")
            .map(|value| value.to_str().unwrap().to_owned()),
        body,
    };
    // Subscribed before the catalog is read: no change slips between the two.
    let mut generation = shared.generation.subscribe();
    let required_token = {
        let mut catalog = shared.catalog.lock();
        catalog.seen.push(seen.clone());
        catalog.required_token.clone()
    };
    shared.arrivals.send_modify(|arrived| *arrived += 1);
    if required_token.is_some() && seen.token != required_token {
        return reply(StatusCode::FORBIDDEN, "ACL not found");
    }
    if seen.method == Method::PUT && seen.path == "/v1/agent/service/register" {
        let Ok(definition) = serde_json::from_slice::<Value>(&seen.body) else {
            return reply(StatusCode::BAD_REQUEST, "Request decode failed");
        };
        let id = definition["ID"].as_str().unwrap_or_default().to_owned();
        shared.catalog.lock().services.insert(id, definition);
        return reply(StatusCode::OK, "");
    }
    if let Some(id) = seen.path.strip_prefix("/v1/agent/service/deregister/")
        && seen.method == Method::PUT
    {
        return match shared.catalog.lock().services.remove(&decode(id)) {
            Some(_) => reply(StatusCode::OK, ""),
            None => reply(StatusCode::NOT_FOUND, "Unknown service ID"),
        };
    }
    if let Some(service) = seen.path.strip_prefix("/v1/health/service/")
        && seen.method == Method::GET
    {
        let service = decode(service);
        let wanted: u64 = seen
            .param("index")
            .map_or(0, |index| index.parse().unwrap());
        let passing_only = seen.query.contains_key("passing");
        loop {
            {
                let catalog = shared.catalog.lock();
                if catalog.failing {
                    return reply(StatusCode::INTERNAL_SERVER_ERROR, "No cluster leader");
                }
                if wanted == 0 || wanted != catalog.index {
                    let entries: Vec<&Value> = catalog
                        .entries
                        .iter()
                        .filter(|entry| entry["Service"]["Service"] == service.as_str())
                        .filter(|entry| {
                            !passing_only
                                || entry["Checks"]
                                    .as_array()
                                    .unwrap()
                                    .iter()
                                    .all(|check| check["Status"] == "passing")
                        })
                        .collect();
                    return Response::builder()
                        .header("content-type", "application/json")
                        .header("x-consul-index", catalog.index.to_string())
                        .body(Body::from(serde_json::to_vec(&entries).unwrap()))
                        .unwrap();
                }
            }
            // A blocking query: held until the catalog changes.
            generation.changed().await.unwrap();
        }
    }
    reply(StatusCode::NOT_FOUND, "no such endpoint")
}

/// A `/v1/health/service/user` entry whose checks are all `status`.
fn entry(node_address: &str, service_address: &str, port: u16, status: &str) -> Value {
    json!({
        "Node": {"Node": format!("node-{node_address}"), "Address": node_address},
        "Service": {
            "ID": format!("user-{port}"),
            "Service": "user",
            "Address": service_address,
            "Port": port,
        },
        "Checks": [
            {"CheckID": "serfHealth", "Status": "passing"},
            {"CheckID": format!("service:user-{port}"), "Status": status},
        ],
    })
}

fn target() -> Target {
    Target {
        peer: "users".to_owned(),
        service: "user".to_owned(),
        addresses: Vec::new(),
        srv: None,
    }
}

fn registration() -> Registration {
    Registration {
        service: "user".to_owned(),
        id: "user-10.1.2.3-50051".to_owned(),
        host: "10.1.2.3".to_owned(),
        port: 50051,
        health_service: "trellis.user.v1.UserService".to_owned(),
        metadata: BTreeMap::from([
            ("version".to_owned(), "0.1.0".to_owned()),
            ("metrics_port".to_owned(), "9090".to_owned()),
        ]),
    }
}

/// Waits until the watch holds exactly `expected` (sorted URIs).
async fn until_set(watch: &mut Watch, expected: &[&str]) {
    let reached = tokio::time::timeout(PATIENCE, async {
        loop {
            let current: Option<Vec<String>> = watch
                .current()
                .map(|set| set.iter().map(|instance| instance.uri.clone()).collect());
            if current.as_deref().is_some_and(|uris| uris == expected) {
                return;
            }
            assert!(watch.changed().await, "the watch stopped");
        }
    })
    .await;
    assert!(
        reached.is_ok(),
        "the watch never held {expected:?}; it holds {:?}",
        watch.current()
    );
}

fn indexes(seen: &[Seen]) -> Vec<&str> {
    seen.iter()
        .map(|request| request.param("index").unwrap_or("<none>"))
        .collect()
}

#[tokio::test]
async fn registration_puts_the_documented_service_definition_with_a_grpc_check_and_the_token() {
    let double = ConsulDouble::start(1, Vec::new()).await;
    let config = ConsulConfig {
        token: Some(SecretString::from("s3cr3t-token")),
        check_interval_s: 7,
        deregister_critical_after_s: 90,
        ..double.config()
    };
    let registry = ConsulRegistry::new(&config).unwrap();

    let _registered = registry.register(&registration()).await.unwrap();

    let seen = double.seen();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!(seen[0].method, Method::PUT);
    assert_eq!(seen[0].path, "/v1/agent/service/register");
    assert_eq!(seen[0].token.as_deref(), Some("s3cr3t-token"));
    let body: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(
        body,
        json!({
            "ID": "user-10.1.2.3-50051",
            "Name": "user",
            "Address": "10.1.2.3",
            "Port": 50051,
            "Meta": {"version": "0.1.0", "metrics_port": "9090"},
            "Check": {
                "GRPC": "10.1.2.3:50051/trellis.user.v1.UserService",
                "GRPCUseTLS": false,
                "Interval": "7s",
                "DeregisterCriticalServiceAfter": "90s",
            },
        })
    );
    assert!(double.services().contains_key("user-10.1.2.3-50051"));
}

#[tokio::test]
async fn deregistering_removes_the_service_id_from_the_agent() {
    let double = ConsulDouble::start(1, Vec::new()).await;
    let registry = ConsulRegistry::new(&double.config()).unwrap();
    let registered = registry.register(&registration()).await.unwrap();
    assert_eq!(double.services().len(), 1);

    registered.deregister().await.unwrap();

    let seen = double.seen();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    assert_eq!(seen[1].method, Method::PUT);
    assert_eq!(
        seen[1].path,
        "/v1/agent/service/deregister/user-10.1.2.3-50051"
    );
    assert!(double.services().is_empty());
}

#[tokio::test]
async fn a_refused_registration_names_the_request_the_status_and_the_body() {
    let double = ConsulDouble::start(1, Vec::new()).await;
    double.change(|catalog| catalog.required_token = Some("right".to_owned()));
    let config = ConsulConfig {
        token: Some(SecretString::from("wrong")),
        ..double.config()
    };
    let registry = ConsulRegistry::new(&config).unwrap();

    let Err(error) = registry.register(&registration()).await else {
        panic!("a 403 must fail the registration");
    };

    let message = error.to_string();
    let url = format!("PUT http://{}/v1/agent/service/register", double.address);
    assert!(message.contains(&url), "{message}");
    assert!(message.contains("403 Forbidden"), "{message}");
    assert!(message.contains("ACL not found"), "{message}");
    assert!(!message.contains("wrong"), "the token leaked: {message}");
}

#[tokio::test]
async fn a_watch_sees_the_first_set_then_a_change_released_from_a_blocking_query_on_the_last_index()
{
    let double = ConsulDouble::start(7, vec![entry("10.0.0.1", "10.1.0.1", 5001, "passing")]).await;
    let registry = ConsulRegistry::new(&double.config()).unwrap();
    let mut watch = registry.watch(&target());

    until_set(&mut watch, &["http://10.1.0.1:5001"]).await;
    // The second query carries the first answer's X-Consul-Index; the double holds it.
    let held = double.wait_for_requests(2).await;
    assert_eq!(indexes(&held), ["0", "7"]);

    double.change(|catalog| {
        catalog.index = 9;
        catalog
            .entries
            .push(entry("10.0.0.2", "10.1.0.2", 5002, "passing"));
    });
    until_set(
        &mut watch,
        &["http://10.1.0.1:5001", "http://10.1.0.2:5002"],
    )
    .await;

    let seen = double.wait_for_requests(3).await;
    assert_eq!(indexes(&seen), ["0", "7", "9"]);
    for request in &seen {
        assert_eq!(request.method, Method::GET);
        assert_eq!(request.path, "/v1/health/service/user");
        assert_eq!(request.param("passing"), Some("true"));
        assert_eq!(request.param("wait"), Some("30s"));
        assert_eq!(request.param("dc"), None);
    }
}

#[tokio::test]
async fn the_watch_asks_only_for_passing_instances_and_falls_back_to_the_node_address() {
    let double = ConsulDouble::start(
        4,
        vec![
            entry("10.0.0.1", "", 5001, "passing"),
            entry("10.0.0.2", "10.1.0.2", 5002, "critical"),
            entry("10.0.0.3", "10.1.0.3", 5003, "passing"),
        ],
    )
    .await;
    let config = ConsulConfig {
        datacenter: Some("eu west".to_owned()),
        ..double.config()
    };
    let registry = ConsulRegistry::new(&config).unwrap();
    let mut watch = registry.watch(&target());

    until_set(
        &mut watch,
        &["http://10.0.0.1:5001", "http://10.1.0.3:5003"],
    )
    .await;

    let seen = double.seen();
    assert_eq!(seen[0].param("passing"), Some("true"));
    assert_eq!(seen[0].param("dc"), Some("eu west"));
}

#[tokio::test]
async fn an_index_that_goes_backwards_restarts_the_blocking_loop_from_zero() {
    let double = ConsulDouble::start(7, vec![entry("10.0.0.1", "10.1.0.1", 5001, "passing")]).await;
    let registry = ConsulRegistry::new(&double.config()).unwrap();
    let mut watch = registry.watch(&target());
    until_set(&mut watch, &["http://10.1.0.1:5001"]).await;
    double.wait_for_requests(2).await;

    // A restored or different server: its index is lower than the one the client holds.
    double.change(|catalog| {
        catalog.index = 3;
        catalog.entries = vec![entry("10.0.0.3", "10.1.0.3", 5003, "passing")];
    });
    until_set(&mut watch, &["http://10.1.0.3:5003"]).await;

    let seen = double.wait_for_requests(4).await;
    assert_eq!(indexes(&seen), ["0", "7", "0", "3"]);
}

#[tokio::test]
async fn an_erroring_agent_keeps_the_last_set_retries_and_recovers() {
    let double = ConsulDouble::start(7, vec![entry("10.0.0.1", "10.1.0.1", 5001, "passing")]).await;
    let mut registry = ConsulRegistry::new(&double.config()).unwrap();
    Arc::get_mut(&mut registry.agent).unwrap().backoff = Backoff {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(40),
    };
    let mut watch = registry.watch(&target());
    until_set(&mut watch, &["http://10.1.0.1:5001"]).await;
    double.wait_for_requests(2).await;

    double.change(|catalog| catalog.failing = true);
    // The held query fails, then two retries fail.
    double.wait_for_requests(4).await;
    let current = watch.current().unwrap();
    assert_eq!(*current, [Instance::new("http://10.1.0.1:5001")]);

    double.change(|catalog| {
        catalog.failing = false;
        catalog.index = 8;
        catalog.entries = vec![entry("10.0.0.2", "10.1.0.2", 5002, "passing")];
    });
    until_set(&mut watch, &["http://10.1.0.2:5002"]).await;
}

#[tokio::test]
async fn dropping_every_watch_stops_the_task_while_a_query_is_held() {
    let double = ConsulDouble::start(7, vec![entry("10.0.0.1", "10.1.0.1", 5001, "passing")]).await;
    let registry = ConsulRegistry::new(&double.config()).unwrap();
    let (publisher, mut watch) = channel();
    let task = spawn_watch(Arc::clone(&registry.agent), &target(), publisher);
    until_set(&mut watch, &["http://10.1.0.1:5001"]).await;
    double.wait_for_requests(2).await;
    let clone = watch.clone();

    drop(watch);
    drop(clone);

    // The held query would last wait_s = 30 s: the task must not wait for it.
    tokio::time::timeout(PATIENCE, task)
        .await
        .expect("the task kept waiting on its blocking query")
        .unwrap();
}

#[test]
fn the_grpc_check_brackets_an_ipv6_host() {
    let registration = Registration {
        host: "::1".to_owned(),
        ..registration()
    };
    assert_eq!(
        grpc_check_target(&registration),
        "[::1]:50051/trellis.user.v1.UserService"
    );
}

#[test]
fn the_configured_token_wins_over_consul_http_token_which_is_the_fallback() {
    let configured = SecretString::from("configured");
    let token = token_header(Some(&configured), Some("from-env".to_owned())).unwrap();
    assert_eq!(token.unwrap(), "configured");
    let token = token_header(None, Some("from-env".to_owned())).unwrap();
    assert_eq!(token.unwrap(), "from-env");
    assert!(token_header(None, Some(String::new())).unwrap().is_none());
    assert!(token_header(None, None).unwrap().is_none());
    let bad = SecretString::from("line\nbreak");
    assert!(token_header(Some(&bad), None).is_err());
}

#[test]
fn bad_addresses_and_waits_are_rejected_naming_the_key() {
    assert!(ConsulConfig::default().validate("discovery.consul").is_ok());
    let cases = [
        (
            ConsulConfig {
                address: "https://consul:8501".to_owned(),
                ..ConsulConfig::default()
            },
            "discovery.consul.address",
        ),
        (
            ConsulConfig {
                address: "consul:8500".to_owned(),
                ..ConsulConfig::default()
            },
            "discovery.consul.address",
        ),
        (
            ConsulConfig {
                address: "http://".to_owned(),
                ..ConsulConfig::default()
            },
            "discovery.consul.address",
        ),
        (
            ConsulConfig {
                wait_s: 601,
                ..ConsulConfig::default()
            },
            "discovery.consul.wait_s",
        ),
        (
            ConsulConfig {
                wait_s: 0,
                ..ConsulConfig::default()
            },
            "discovery.consul.wait_s",
        ),
    ];
    for (config, key) in cases {
        let error = config.validate("discovery.consul").unwrap_err().to_string();
        assert!(error.contains(key), "{key}: {error}");
        if key.ends_with("address") {
            let refused = ConsulRegistry::new(&config).unwrap_err().to_string();
            assert!(refused.contains(&config.address), "{refused}");
        }
    }
}
