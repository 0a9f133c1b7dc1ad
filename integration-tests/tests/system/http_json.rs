//! HTTP/JSON on the gRPC ports: the annotated routes round-trip as a plain HTTP/1.1
//! client sends them, errors follow AIP-193, and authentication, the access policy,
//! limits and the contract's field rules apply exactly as to gRPC calls.

use std::time::Duration;

use http::Method;
use integration_tests::client::{PASSWORD, sign_up_and_log_in, users};
use integration_tests::json::{self, call};
use integration_tests::{System, with_token};
use serde_json::json;
use tonic::Code;
use trellis_proto::user_v1 as user;

/// The field names of a `google.rpc.Status` body's BadRequest violations.
fn violated_fields(body: &serde_json::Value) -> Vec<String> {
    let mut fields: Vec<String> = body["details"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|detail| detail["@type"] == "type.googleapis.com/google.rpc.BadRequest")
        .flat_map(|detail| {
            detail["fieldViolations"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|violation| violation["field"].as_str().map(str::to_owned))
        .collect();
    fields.sort();
    fields
}

#[tokio::test]
async fn curl_can_sign_up_log_in_read_update_and_list_notifications() {
    let system = System::start().await;
    let created = call(
        system.user_addr,
        Method::POST,
        "/v1/users",
        None,
        Some(json!({"email": "ada@example.com", "displayName": "Ada", "password": PASSWORD})),
    )
    .await;
    assert_eq!(created.status, 200, "{:?}", created.json);
    let id = created.json["user"]["id"]
        .as_str()
        .expect("an id")
        .to_owned();
    // Canonical proto3 JSON: lowerCamelCase names, Timestamps as RFC 3339.
    let created_at = created.json["user"]["createTime"]
        .as_str()
        .expect("a createTime");
    assert!(
        chrono::DateTime::parse_from_rfc3339(created_at).is_ok(),
        "{created_at}"
    );

    let login = call(
        system.auth_addr,
        Method::POST,
        "/v1/tokens:login",
        None,
        Some(json!({"email": "ada@example.com", "password": PASSWORD})),
    )
    .await;
    assert_eq!(login.status, 200, "{:?}", login.json);
    assert_eq!(login.json["userId"], id.as_str());
    // int64 as a string.
    assert!(
        login.json["tokens"]["expiresIn"].is_string(),
        "{:?}",
        login.json
    );
    let token = login.json["tokens"]["accessToken"]
        .as_str()
        .expect("a token")
        .to_owned();

    let read = call(
        system.user_addr,
        Method::GET,
        &format!("/v1/users/{id}"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(read.status, 200, "{:?}", read.json);
    assert_eq!(read.json["user"]["email"], "ada@example.com");

    // PATCH with the mask as a query parameter (AIP-134; FieldMask as a string).
    let updated = call(
        system.user_addr,
        Method::PATCH,
        &format!("/v1/users/{id}?updateMask=displayName"),
        Some(&token),
        Some(json!({"displayName": "Ada L.", "email": "ignored@example.com"})),
    )
    .await;
    assert_eq!(updated.status, 200, "{:?}", updated.json);
    assert_eq!(updated.json["user"]["displayName"], "Ada L.");
    assert_eq!(updated.json["user"]["email"], "ada@example.com");
    // The same data as gRPC sees it.
    let over_grpc = users(&system)
        .get_user(with_token(user::GetUserRequest { id: id.clone() }, &token))
        .await
        .expect("GetUser over gRPC")
        .into_inner()
        .user
        .expect("a user");
    assert_eq!(over_grpc.display_name, "Ada L.");

    // The welcome notification arrives through the outbox.
    let listed = std::cell::RefCell::new(serde_json::Value::Null);
    let (listed_ref, token_ref, system_ref) = (&listed, &token, &system);
    trellis_platform::testing::assert_eventually_that(
        "the welcome is listed",
        move || async move {
            let reply = call(
                system_ref.notification_addr,
                Method::GET,
                "/v1/notifications?pageSize=10&unreadOnly=true",
                Some(token_ref),
                None,
            )
            .await;
            assert_eq!(reply.status, 200, "{:?}", reply.json);
            let arrived = reply.json["notifications"]
                .as_array()
                .is_some_and(|n| !n.is_empty());
            if arrived {
                *listed_ref.borrow_mut() = reply.json;
            }
            arrived
        },
    )
    .await;
    let listed = listed.into_inner();
    let first = listed["notifications"][0]["id"]
        .as_str()
        .expect("a notification")
        .to_owned();
    let marked = call(
        system.notification_addr,
        Method::POST,
        "/v1/notifications:markRead",
        Some(&token),
        Some(json!({"ids": [first]})),
    )
    .await;
    assert_eq!(marked.status, 200, "{:?}", marked.json);
    assert!(
        marked.json["updatedCount"].as_i64() >= Some(1),
        "{:?}",
        marked.json
    );
    system.stop().await;
}

#[tokio::test]
async fn errors_follow_aip_193_and_the_policy_applies_as_to_grpc() {
    let system = System::start().await;
    let ada = sign_up_and_log_in(&system, "ada@example.com").await;
    let grace = sign_up_and_log_in(&system, "grace@example.com").await;
    let user_path = |id: &str| format!("/v1/users/{id}");

    // No token: 401 UNAUTHENTICATED — before the JSON is even parsed (a malformed body
    // from a caller the policy refuses costs no parse, and says nothing of the rules).
    let reply = call(
        system.user_addr,
        Method::GET,
        &user_path(&ada.user.id),
        None,
        None,
    )
    .await;
    assert_eq!(reply.status_and_code(), (401, Some(16)));
    let reply = call(
        system.notification_addr,
        Method::POST,
        "/v1/notifications:markRead",
        None,
        Some(json!({"bogus": 1, "ids": "not a list"})),
    )
    .await;
    assert_eq!(reply.status_and_code(), (401, Some(16)));
    // The path alone names the resource: a query or body naming it again is refused.
    let reply = call(
        system.user_addr,
        Method::GET,
        &format!("{}?id={}", user_path(&ada.user.id), grace.user.id),
        Some(ada.access()),
        None,
    )
    .await;
    assert_eq!(reply.status_and_code(), (400, Some(3)));
    // Someone else: 403 PERMISSION_DENIED, as over gRPC.
    let reply = call(
        system.user_addr,
        Method::GET,
        &user_path(&grace.user.id),
        Some(ada.access()),
        None,
    )
    .await;
    assert_eq!(reply.status_and_code(), (403, Some(7)));
    // An internal method called by an end user: 403.
    let reply = call(
        system.notification_addr,
        Method::POST,
        &format!("/v1/users/{}/notifications", ada.user.id),
        Some(ada.access()),
        Some(json!({"kind": "k", "title": "t", "body": "b", "idempotencyKey": "x"})),
    )
    .await;
    assert_eq!(reply.status_and_code(), (403, Some(7)));
    // Not found, as an admin: 404.
    let admin = system.sign_up_admin(integration_tests::ADMIN_EMAIL).await;
    let missing = uuid::Uuid::now_v7().to_string();
    let reply = call(
        system.user_addr,
        Method::GET,
        &user_path(&missing),
        Some(admin.access()),
        None,
    )
    .await;
    assert_eq!(reply.status_and_code(), (404, Some(5)));
    // The email is taken: 409 ALREADY_EXISTS.
    let reply = call(
        system.user_addr,
        Method::POST,
        "/v1/users",
        None,
        Some(json!({"email": "ada@example.com", "displayName": "Ada", "password": PASSWORD})),
    )
    .await;
    assert_eq!(reply.status_and_code(), (409, Some(6)));
    // Unknown JSON fields: 400, nothing created.
    let reply = call(
        system.user_addr,
        Method::POST,
        "/v1/users",
        None,
        Some(json!({"email": "eve@example.com", "displayName": "Eve", "password": PASSWORD, "isAdmin": true})),
    )
    .await;
    assert_eq!(reply.status_and_code(), (400, Some(3)), "{:?}", reply.json);
    let reply = call(
        system.user_addr,
        Method::GET,
        "/v1/users?pageSize=1&role=admin",
        Some(admin.access()),
        None,
    )
    .await;
    assert_eq!(reply.status, 400, "{:?}", reply.json);
    // Wrong method and unknown path.
    let reply = call(
        system.user_addr,
        Method::PUT,
        &user_path(&ada.user.id),
        Some(ada.access()),
        None,
    )
    .await;
    assert_eq!(reply.status, 405);
    let reply = call(system.user_addr, Method::GET, "/v2/nothing", None, None).await;
    assert_eq!(reply.status, 404);
    // Too many failed logins: 429 RESOURCE_EXHAUSTED with Retry-After.
    let mut throttled = None;
    for _ in 0..50 {
        let reply = call(
            system.auth_addr,
            Method::POST,
            "/v1/tokens:login",
            None,
            Some(json!({"email": "grace@example.com", "password": "wrong password!"})),
        )
        .await;
        if reply.status == 429 {
            throttled = Some(reply);
            break;
        }
        assert_eq!(reply.status, 401, "{:?}", reply.json);
    }
    let throttled = throttled.expect("failed logins are throttled");
    assert_eq!(throttled.json["code"], 8);
    let retry_after: u64 = throttled.headers["retry-after"]
        .to_str()
        .ok()
        .and_then(|s| s.parse().ok())
        .expect("a Retry-After in seconds");
    assert!(retry_after >= 1);
    system.stop().await;
}

#[tokio::test]
async fn the_contracts_field_rules_refuse_bad_input_on_both_transports() {
    let system = System::start().await;
    let bad = user::CreateUserRequest {
        email: "not an address".into(),
        display_name: "tab\there".into(),
        password: "short".into(),
    };
    let status = users(&system)
        .create_user(bad)
        .await
        .expect_err("refused over gRPC");
    assert_eq!(status.code(), Code::InvalidArgument);
    let details = tonic_types::StatusExt::get_error_details(&status);
    let mut fields: Vec<String> = details
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default();
    fields.sort();
    assert_eq!(fields, ["display_name", "email", "password"]);

    let reply = call(
        system.user_addr,
        Method::POST,
        "/v1/users",
        None,
        Some(json!({"email": "not an address", "displayName": "tab\there", "password": "short"})),
    )
    .await;
    assert_eq!(reply.status, 400);
    assert_eq!(
        violated_fields(&reply.json),
        ["display_name", "email", "password"]
    );

    // Ranges, formats and repeated items, on an authenticated route.
    let ada = sign_up_and_log_in(&system, "ada@example.com").await;
    let reply = call(
        system.notification_addr,
        Method::GET,
        "/v1/notifications?pageSize=-1",
        Some(ada.access()),
        None,
    )
    .await;
    assert_eq!(
        (reply.status.as_u16(), violated_fields(&reply.json)),
        (400, vec!["page_size".to_owned()])
    );
    let reply = call(
        system.notification_addr,
        Method::POST,
        "/v1/notifications:markRead",
        Some(ada.access()),
        Some(json!({"ids": [uuid::Uuid::now_v7().to_string(), "nope"]})),
    )
    .await;
    assert_eq!(
        (reply.status.as_u16(), violated_fields(&reply.json)),
        (400, vec!["ids[1]".to_owned()])
    );
    let reply = call(
        system.user_addr,
        Method::GET,
        "/v1/users/not-a-uuid",
        Some(ada.access()),
        None,
    )
    .await;
    assert_eq!(
        (reply.status.as_u16(), violated_fields(&reply.json)),
        (400, vec!["id".to_owned()])
    );
    system.stop().await;
}

#[tokio::test]
async fn a_json_client_sees_a_notification_arrive_live_as_server_sent_events() {
    use http_body_util::BodyExt as _;

    let system = System::start().await;
    let ada = sign_up_and_log_in(&system, "ada@example.com").await;
    let request = http::Request::builder()
        .uri(format!(
            "http://{}/v1/notifications:subscribe",
            system.notification_addr
        ))
        .header("authorization", format!("Bearer {}", ada.access()))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("a request");
    let response = json::client()
        .request(request)
        .await
        .expect("the stream opens");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let mut seen = String::new();
    let mut signed_in_again = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    // Replayed notifications (the welcome) come first; a sign-in made while the stream
    // is open must then arrive on it, live.
    while !seen.contains("\"kind\":\"new_sign_in\"") {
        if !signed_in_again && seen.contains("data: ") {
            let login = call(
                system.auth_addr,
                Method::POST,
                "/v1/tokens:login",
                None,
                Some(json!({"email": "ada@example.com", "password": PASSWORD})),
            )
            .await;
            assert_eq!(login.status, 200);
            signed_in_again = true;
        }
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .expect("the notification arrives within 20 s")
            .expect("the stream stays open")
            .expect("a frame");
        if let Ok(data) = frame.into_data() {
            seen.push_str(&String::from_utf8_lossy(&data));
        }
    }
    assert!(signed_in_again, "{seen}");
    assert!(seen.contains("\"title\""), "{seen}");
    system.stop().await;
}

#[tokio::test]
async fn each_service_serves_its_own_openapi_document() {
    let system = System::start().await;
    for (addr, path, method, public) in [
        (system.user_addr, "/v1/users", "post", true),
        (system.user_addr, "/v1/users", "get", false),
        (system.auth_addr, "/v1/tokens:login", "post", true),
        (system.notification_addr, "/v1/notifications", "get", false),
    ] {
        let reply = call(addr, Method::GET, "/openapi.json", None, None).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json["openapi"], "3.1.0");
        let operation = &reply.json["paths"][path][method];
        assert!(
            operation.is_object(),
            "{method} {path} in {:?}",
            reply.json["paths"]
        );
        assert_eq!(
            operation["security"] == json!([]),
            public,
            "{method} {path}"
        );
    }
    let reply = call(system.user_addr, Method::GET, "/openapi.json", None, None).await;
    let schemas = &reply.json["components"]["schemas"];
    // The proto's comments and rules are in the schemas.
    let create = &reply.json["paths"]["/v1/users"]["post"]["requestBody"]["content"]["application/json"]
        ["schema"];
    assert_eq!(create["properties"]["email"]["format"], "email");
    assert_eq!(create["properties"]["displayName"]["maxLength"], 100);
    assert!(
        create["required"]
            .as_array()
            .is_some_and(|r| r.contains(&json!("password")))
    );
    assert!(
        schemas["trellis.user.v1.User"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("account"))
    );
    system.stop().await;
}

#[tokio::test]
async fn a_json_body_that_never_arrives_is_answered_408_while_others_are_served() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let system = System::start().await;
    // A body promised and never sent: the gateway reads bodies before the call goes
    // inward, so it bounds the wait itself (server.request_body_timeout_ms, 5 s).
    let mut slow = tokio::net::TcpStream::connect(system.user_addr)
        .await
        .expect("connects");
    slow.write_all(b"POST /v1/users HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{")
        .await
        .expect("writes");
    let started = tokio::time::Instant::now();
    // Meanwhile, everyone else is served.
    let reply = call(system.user_addr, Method::GET, "/openapi.json", None, None).await;
    assert_eq!(reply.status, 200);
    let mut head = vec![0; 64];
    let read = tokio::time::timeout(Duration::from_secs(15), slow.read(&mut head))
        .await
        .expect("answered within the bound")
        .expect("reads");
    let head = String::from_utf8_lossy(&head[..read]).into_owned();
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    system.stop().await;
}
