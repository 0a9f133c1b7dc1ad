//! Browsers: gRPC-Web on every service's port through the whole chain (tonic-web's own
//! client over HTTP/1.1, as a browser's fetch sends it), the CORS policy for the allowed
//! page and for any other origin, and the web page's protobuf fixtures against prost.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, header};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use integration_tests::client::sign_up_and_log_in;
use integration_tests::json::{self, Reply};
use integration_tests::{PAGE_ORIGIN, System, with_token};
use prost::Message as _;
use tokio_stream::StreamExt as _;
use tonic::Code;
use tonic_web::{GrpcWebCall, GrpcWebClientLayer, GrpcWebClientService};
use trellis_proto::notification_v1 as notification;
use trellis_proto::user_v1 as user;

type WebClient = GrpcWebClientService<
    Client<hyper_util::client::legacy::connect::HttpConnector, GrpcWebCall<tonic::body::Body>>,
>;

/// A gRPC-Web channel to `addr` over HTTP/1.1 (tonic-web's client layer over hyper).
fn web_channel(addr: std::net::SocketAddr) -> (WebClient, http::Uri) {
    let client = Client::builder(TokioExecutor::new()).build_http();
    let service = tower::ServiceBuilder::new()
        .layer(GrpcWebClientLayer::new())
        .service(client);
    let origin = format!("http://{addr}").parse().expect("a URI");
    (service, origin)
}

#[tokio::test]
async fn grpc_web_serves_unary_calls_and_server_streams_through_auth_and_policy() {
    let system = System::start().await;
    let ada = sign_up_and_log_in(&system, "ada@example.com").await;

    let (channel, origin) = web_channel(system.user_addr);
    let mut users = user::user_service_client::UserServiceClient::with_origin(channel, origin);
    let read = users
        .get_user(with_token(
            user::GetUserRequest {
                id: ada.user.id.clone(),
            },
            ada.access(),
        ))
        .await
        .expect("GetUser over gRPC-Web")
        .into_inner()
        .user
        .expect("a user");
    assert_eq!(read.email, "ada@example.com");
    // The same chain as gRPC: authentication, then the contract's field rules.
    let anonymous = users
        .get_user(user::GetUserRequest {
            id: ada.user.id.clone(),
        })
        .await
        .expect_err("no token");
    assert_eq!(anonymous.code(), Code::Unauthenticated, "{anonymous:?}");
    let malformed = users
        .get_user(with_token(
            user::GetUserRequest {
                id: "not-a-uuid".to_owned(),
            },
            ada.access(),
        ))
        .await
        .expect_err("a malformed id");
    assert_eq!(malformed.code(), Code::InvalidArgument, "{malformed:?}");

    // Subscribe: the welcome (sign-up) and the sign-in notice arrive on the stream.
    let (channel, origin) = web_channel(system.notification_addr);
    let mut feed =
        notification::notification_service_client::NotificationServiceClient::with_origin(
            channel, origin,
        );
    let mut stream = feed
        .subscribe(with_token(
            notification::SubscribeRequest::default(),
            ada.access(),
        ))
        .await
        .expect("Subscribe over gRPC-Web")
        .into_inner();
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        let next = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("notifications arrive within 10 s")
            .expect("the stream stays open")
            .expect("a notification");
        kinds.push(next.notification.expect("a notification").kind);
    }
    kinds.sort();
    assert_eq!(kinds, ["new_sign_in", "welcome"]);

    // A stream's refusal comes back as a status too.
    let refused = feed
        .subscribe(notification::SubscribeRequest::default())
        .await
        .expect_err("no token");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
}

/// Sends a preflight for `method` on `path` of `addr` from `origin`, asking for
/// `headers`.
async fn preflight(
    addr: std::net::SocketAddr,
    path: &str,
    origin: &str,
    method: &str,
    headers: &str,
) -> Reply {
    json::send(
        http::Request::builder()
            .method(Method::OPTIONS)
            .uri(format!("http://{addr}{path}"))
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, method)
            .header(header::ACCESS_CONTROL_REQUEST_HEADERS, headers)
            .body(Full::new(Bytes::new()))
            .expect("a request"),
    )
    .await
}

fn header_list(reply: &Reply, name: http::HeaderName) -> Vec<String> {
    reply
        .headers
        .get_all(name)
        .iter()
        .flat_map(|value| value.to_str().unwrap_or_default().split(','))
        .map(|item| item.trim().to_ascii_lowercase())
        .filter(|item| !item.is_empty())
        .collect()
}

/// POSTs `body` to the user service's GetUser as a raw gRPC-Web call with `headers`
/// (content type, origin, token...), as a browser's fetch would.
async fn get_user_raw(system: &System, headers: &[(http::HeaderName, &str)], body: Bytes) -> Reply {
    let mut request = http::Request::builder().method(Method::POST).uri(format!(
        "http://{}/trellis.user.v1.UserService/GetUser",
        system.user_addr
    ));
    for (name, value) in headers {
        request = request.header(name, *value);
    }
    json::send(request.body(Full::new(body)).expect("a request")).await
}

/// An empty GetUserRequest in one gRPC-Web data frame.
const EMPTY_FRAME: &[u8] = &[0, 0, 0, 0, 0];

#[tokio::test]
async fn cors_allows_the_configured_page_and_refuses_other_origins() {
    let system = System::start().await;
    let web_headers = "authorization,content-type,x-grpc-web,x-user-agent,grpc-timeout";
    for addr in [system.user_addr, system.auth_addr, system.notification_addr] {
        let allowed = preflight(
            addr,
            "/trellis.user.v1.UserService/GetUser",
            PAGE_ORIGIN,
            "POST",
            web_headers,
        )
        .await;
        assert!(allowed.status.is_success(), "{addr}: {allowed:?}");
        assert_eq!(
            allowed.headers[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            PAGE_ORIGIN
        );
        let allowed_headers = header_list(&allowed, header::ACCESS_CONTROL_ALLOW_HEADERS);
        for wanted in web_headers.split(',') {
            assert!(
                allowed_headers.iter().any(|h| h == wanted),
                "{wanted}: {allowed_headers:?}"
            );
        }
        let methods = header_list(&allowed, header::ACCESS_CONTROL_ALLOW_METHODS);
        assert!(methods.iter().any(|m| m == "post"), "{methods:?}");
        assert!(
            allowed
                .headers
                .get(header::ACCESS_CONTROL_ALLOW_CREDENTIALS)
                .is_none(),
            "bearer tokens only, never cookies"
        );

        for other in [
            "http://evil.test",
            "http://page.test:50051",
            "https://page.test:50050",
            "null",
        ] {
            let refused = preflight(addr, "/v1/users", other, "POST", "content-type").await;
            assert_eq!(refused.status, 403, "{addr} {other}: {refused:?}");
            assert!(
                refused
                    .headers
                    .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
                    .is_none(),
                "{other}: {refused:?}"
            );
        }
    }

    // The JSON API's methods are preflighted as well (PATCH is never "simple").
    let patch = preflight(
        system.user_addr,
        "/v1/users/x",
        PAGE_ORIGIN,
        "PATCH",
        "authorization,content-type",
    )
    .await;
    let methods = header_list(&patch, header::ACCESS_CONTROL_ALLOW_METHODS);
    assert!(methods.iter().any(|m| m == "patch"), "{methods:?}");

    // An actual call from the page: its status headers are readable by the page.
    let reply = get_user_raw(
        &system,
        &[
            (header::ORIGIN, PAGE_ORIGIN),
            (header::CONTENT_TYPE, "application/grpc-web+proto"),
            (http::HeaderName::from_static("x-grpc-web"), "1"),
        ],
        Bytes::from_static(EMPTY_FRAME),
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.headers[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        PAGE_ORIGIN
    );
    let exposed = header_list(&reply, header::ACCESS_CONTROL_EXPOSE_HEADERS);
    for wanted in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        assert!(exposed.iter().any(|h| h == wanted), "{wanted}: {exposed:?}");
    }
    // Trailers-only: no token, so UNAUTHENTICATED (16) in the headers.
    assert_eq!(reply.headers["grpc-status"], "16", "{reply:?}");

    // The same call from another origin is answered (CORS is the browser's business,
    // the token the server's) without a grant the browser would honour.
    let foreign = get_user_raw(
        &system,
        &[
            (header::ORIGIN, "http://evil.test"),
            (header::CONTENT_TYPE, "application/grpc-web+proto"),
        ],
        Bytes::from_static(EMPTY_FRAME),
    )
    .await;
    assert_eq!(foreign.headers["grpc-status"], "16", "{foreign:?}");
    assert!(
        foreign
            .headers
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .is_none(),
        "{foreign:?}"
    );

    // An OPTIONS that is no preflight (no Access-Control-Request-Method) is not CORS's:
    // it reaches the service's routes, which have no OPTIONS.
    let options = json::send(
        http::Request::builder()
            .method(Method::OPTIONS)
            .uri(format!("http://{}/v1/users", system.user_addr))
            .header(header::ORIGIN, "http://evil.test")
            .body(Full::new(Bytes::new()))
            .expect("a request"),
    )
    .await;
    assert_eq!(options.status, 405, "{options:?}");
}

#[tokio::test]
async fn grpc_web_text_round_trips_base64_frames() {
    use base64::Engine as _;
    let system = System::start().await;
    let ada = sign_up_and_log_in(&system, "ada@example.com").await;
    let message = user::GetUserRequest {
        id: ada.user.id.clone(),
    }
    .encode_to_vec();
    let mut frame = vec![0];
    frame.extend_from_slice(&u32::try_from(message.len()).expect("small").to_be_bytes());
    frame.extend_from_slice(&message);
    let engine = base64::engine::general_purpose::STANDARD;
    let bearer = format!("Bearer {}", ada.access());
    let reply = get_user_raw(
        &system,
        &[
            (header::CONTENT_TYPE, "application/grpc-web-text"),
            (header::ACCEPT, "application/grpc-web-text"),
            (header::AUTHORIZATION, &bearer),
        ],
        Bytes::from(engine.encode(&frame)),
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.headers[header::CONTENT_TYPE],
        "application/grpc-web-text+proto"
    );
    // The body is base64 chunks (one per frame, each padded): decode them in turn.
    let text = String::from_utf8(reply.raw.to_vec()).expect("base64 text");
    let mut body = Vec::new();
    let mut rest = text.as_str();
    while !rest.is_empty() {
        let end = rest.find('=').map_or(rest.len(), |at| {
            at + rest[at..].chars().take_while(|c| *c == '=').count()
        });
        body.extend(engine.decode(&rest[..end]).expect("base64"));
        rest = &rest[end..];
    }
    assert_eq!(body[0], 0, "a data frame first");
    let length = u32::from_be_bytes(body[1..5].try_into().expect("four bytes")) as usize;
    let read = user::GetUserResponse::decode(&body[5..5 + length]).expect("a GetUserResponse");
    assert_eq!(read.user.expect("a user").email, "ada@example.com");
    let trailer = &body[5 + length..];
    assert_eq!(trailer[0], 0x80, "then the trailer frame");
    let trailers = String::from_utf8_lossy(&trailer[5..]).to_ascii_lowercase();
    assert!(trailers.contains("grpc-status:0"), "{trailers}");
}

/// The web page's protobuf module (`web/grpc-web.js`) is tested under `node --test`
/// against `web/test/fixtures.json`: bytes prost encodes and the canonical proto3 JSON
/// of the same messages. This keeps the file true to prost; `TRELLIS_BLESS=1` rewrites
/// it after a deliberate change.
#[test]
fn web_fixtures_are_what_prost_encodes() {
    let notification_descriptor =
        prost_reflect::DescriptorPool::decode(trellis_proto::FILE_DESCRIPTOR_SET)
            .expect("the descriptors")
            .get_message_by_name("trellis.notification.v1.Notification")
            .expect("Notification");
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let json_of = |n: &notification::Notification| {
        let message = prost_reflect::DynamicMessage::decode(
            notification_descriptor.clone(),
            n.encode_to_vec().as_slice(),
        )
        .expect("decodes");
        serde_json::to_value(&message).expect("canonical JSON")
    };
    let time = |seconds: i64, nanos: i32| Some(prost_types::Timestamp { seconds, nanos });

    let requests: Vec<serde_json::Value> = ["", "019ae0c4-7f3a-7c41-9d2e-5b8a1f0c3e77"]
        .into_iter()
        .map(|after| {
            let bytes = notification::SubscribeRequest {
                after: after.to_owned(),
            }
            .encode_to_vec();
            serde_json::json!({ "after": after, "hex": hex(&bytes) })
        })
        .collect();

    let notifications = [
        notification::Notification {
            id: "019ae0c4-7f3a-7c41-9d2e-5b8a1f0c3e77".to_owned(),
            user_id: "019ae0c4-0000-7000-8000-000000000001".to_owned(),
            kind: "welcome".to_owned(),
            title: "Welcome to Trellis".to_owned(),
            body: "Hello Ada".to_owned(),
            create_time: time(1_765_000_000, 0),
            read_time: None,
        },
        notification::Notification {
            id: "019ae0c4-7f3a-7c41-9d2e-5b8a1f0c3e78".to_owned(),
            user_id: "019ae0c4-0000-7000-8000-000000000001".to_owned(),
            kind: "new_sign_in".to_owned(),
            title: "Nouvelle connexion — ✓ 日本語 🎉".to_owned(),
            // Over 127 bytes: a two-byte length varint.
            body: "Your account was signed in to at 2026-12-07 22:53 UTC from 192.0.2.1. \
                   If this was not you, change your password. <script>alert(1)</script>"
                .to_owned(),
            create_time: time(1_765_000_000, 123_000_000),
            read_time: time(1_765_000_001, 123_456_789),
        },
        notification::Notification {
            id: "019ae0c4-7f3a-7c41-9d2e-5b8a1f0c3e79".to_owned(),
            create_time: time(0, 1_000),
            ..Default::default()
        },
    ];
    let responses: Vec<serde_json::Value> = notifications
        .iter()
        .map(|n| {
            let bytes = notification::SubscribeResponse {
                notification: Some(n.clone()),
            }
            .encode_to_vec();
            serde_json::json!({ "notification": json_of(n), "hex": hex(&bytes) })
        })
        .collect();

    let fixtures = serde_json::json!({
        "about": "Written by integration-tests/tests/system/grpc_web.rs \
                  (TRELLIS_BLESS=1 cargo nextest run -p integration-tests web_fixtures); \
                  read by web/test/grpc-web.test.mjs.",
        "subscribeRequests": requests,
        "subscribeResponses": responses,
    });
    let text = format!(
        "{}\n",
        serde_json::to_string_pretty(&fixtures).expect("JSON")
    );
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../web/test/fixtures.json");
    if std::env::var_os("TRELLIS_BLESS").is_some() {
        std::fs::write(&path, &text).expect("writing the fixtures");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == text,
        "{} is not what prost encodes: run TRELLIS_BLESS=1 cargo nextest run -p integration-tests web_fixtures",
        path.display()
    );
}
