//! Field rules declared in the contract, enforced before the handler: every request
//! message whose type carries `buf.validate` rules (protovalidate's standard rules:
//! lengths, formats, ranges, repeated-field caps, `required`) is checked by
//! [`prost_protovalidate`] against the descriptors the server was given, for gRPC and
//! transcoded HTTP/JSON calls alike (the latter arrive here as gRPC calls). A request
//! that breaks a rule is answered INVALID_ARGUMENT with a `google.rpc.BadRequest` naming
//! each field (capped as every INVALID_ARGUMENT is: [`crate::status::invalid_argument`]),
//! and the handler never runs; handlers keep only the rules that need state.
//!
//! The layer sits inside authentication and the access policy, so a caller who may not
//! call a method learns nothing about its rules. Methods with no rules cost nothing;
//! client-streaming methods are not checked here (their messages arrive one by one).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf as _, Bytes};
use http::Request;
use http_body_util::BodyExt as _;
use prost_reflect::{DescriptorPool, DynamicMessage, ExtensionDescriptor, Kind, MessageDescriptor};
use tower::{Layer, Service};

use crate::status::{FieldViolation, invalid_argument};

/// The layer (see the module docs).
#[derive(Clone)]
pub struct ValidateLayer {
    rules: Arc<Rules>,
}

struct Rules {
    /// Request types with rules, by gRPC path (`/package.Service/Method`).
    methods: HashMap<String, Arc<Method>>,
    validator: prost_protovalidate::Validator,
    max_message_bytes: usize,
}

impl std::fmt::Debug for ValidateLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValidateLayer")
            .field("methods", &self.rules.methods.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl ValidateLayer {
    /// Checks the requests of `service_names`' unary and server-streaming methods whose
    /// request type (or a message under it) has rules in `pool`; requests above
    /// `max_message_bytes` are left to the codec, which refuses them.
    pub fn new(pool: &DescriptorPool, service_names: &[&str], max_message_bytes: usize) -> Self {
        let extension = pool.get_extension_by_name("buf.validate.field");
        let mut methods = HashMap::new();
        for name in service_names {
            let Some(service) = pool.get_service_by_name(name) else {
                continue;
            };
            for method in service.methods() {
                let input = method.input();
                if method.is_client_streaming()
                    || !has_rules(&input, extension.as_ref(), &mut Vec::new())
                {
                    continue;
                }
                let caps = extension
                    .as_ref()
                    .map(|extension| caps_of(&input, extension))
                    .unwrap_or_default();
                methods.insert(
                    format!("/{}/{}", service.full_name(), method.name()),
                    Arc::new(Method { input, caps }),
                );
            }
        }
        Self {
            rules: Arc::new(Rules {
                methods,
                validator: prost_protovalidate::Validator::new(),
                max_message_bytes,
            }),
        }
    }

    /// The gRPC paths whose requests are checked.
    pub fn methods(&self) -> impl Iterator<Item = &str> {
        self.rules.methods.keys().map(String::as_str)
    }
}

/// A method whose requests are checked.
#[derive(Debug, Clone)]
struct Method {
    input: MessageDescriptor,
    /// The request's repeated string, bytes and message fields with `max_items`, counted
    /// on the wire before anything is decoded.
    caps: Vec<Cap>,
}

/// A `repeated.max_items` rule of a top-level field.
#[derive(Debug, Clone)]
struct Cap {
    number: u32,
    name: String,
    max: u64,
}

/// The top-level repeated fields of `input` whose elements are length-delimited on the
/// wire (never packed) and that carry `repeated.max_items`.
fn caps_of(input: &MessageDescriptor, extension: &ExtensionDescriptor) -> Vec<Cap> {
    input
        .fields()
        .filter(|field| {
            field.is_list() && matches!(field.kind(), Kind::String | Kind::Bytes | Kind::Message(_))
        })
        .filter_map(|field| {
            let rules = crate::validation::field_rules(&field, extension)?;
            let Some(prost_reflect::Value::Message(repeated)) =
                crate::validation::rule(&rules, "repeated")
            else {
                return None;
            };
            let max = crate::validation::rule(&repeated, "max_items")?.as_u64()?;
            Some(Cap {
                number: field.number(),
                name: field.name().to_owned(),
                max,
            })
        })
        .collect()
}

/// How often each of `numbers` occurs at the top level of an encoded message, read from
/// the wire without decoding it; `None` when it is malformed.
fn count_on_wire(mut buf: &[u8], numbers: &[u32]) -> Option<Vec<u64>> {
    use prost::encoding::decode_varint;
    let mut counts = vec![0; numbers.len()];
    while !buf.is_empty() {
        let key = decode_varint(&mut buf).ok()?;
        let skip = match key & 7 {
            0 => {
                decode_varint(&mut buf).ok()?;
                0
            }
            1 => 8,
            2 => usize::try_from(decode_varint(&mut buf).ok()?).ok()?,
            5 => 4,
            _ => return None,
        };
        buf = buf.get(skip..)?;
        if let Some(at) = numbers
            .iter()
            .position(|number| u64::from(*number) == key >> 3)
        {
            counts[at] += 1;
        }
    }
    Some(counts)
}

/// Whether `message` or a message field under it has a field rule.
fn has_rules(
    message: &MessageDescriptor,
    extension: Option<&ExtensionDescriptor>,
    seen: &mut Vec<String>,
) -> bool {
    let Some(extension) = extension else {
        return false;
    };
    if seen.iter().any(|name| name == message.full_name()) {
        return false;
    }
    seen.push(message.full_name().to_owned());
    message.fields().any(|field| {
        field.options().has_extension(extension)
            || matches!(field.kind(), Kind::Message(inner) if has_rules(&inner, Some(extension), seen))
    })
}

impl<S> Layer<S> for ValidateLayer {
    type Service = ValidateService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ValidateService {
            inner,
            rules: Arc::clone(&self.rules),
        }
    }
}

/// The service [`ValidateLayer`] makes.
#[derive(Clone)]
pub struct ValidateService<S> {
    inner: S,
    rules: Arc<Rules>,
}

impl<S> std::fmt::Debug for ValidateService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValidateService").finish_non_exhaustive()
    }
}

impl<S> Service<Request<axum::body::Body>> for ValidateService<S>
where
    S: Service<Request<axum::body::Body>, Response = axum::response::Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<axum::body::Body>) -> Self::Future {
        let Some(method) = self.rules.methods.get(request.uri().path()).map(Arc::clone) else {
            return Box::pin(self.inner.call(request));
        };
        let rules = Arc::clone(&self.rules);
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            // Room for the 5-byte frame header; a larger body is the codec's to refuse.
            let limit = rules.max_message_bytes.saturating_add(5);
            let bytes = match http_body_util::Limited::new(body, limit).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(_) => {
                    return Ok(tonic::Status::resource_exhausted(format!(
                        "the request is larger than {} bytes",
                        rules.max_message_bytes
                    ))
                    .into_http());
                }
            };
            if let Err(status) = check(&rules, &method, &bytes) {
                return Ok(status.into_http());
            }
            let request = Request::from_parts(parts, axum::body::Body::from(bytes));
            inner.call(request).await
        })
    }
}

/// Checks a unary or server-streaming call's body: exactly one uncompressed message
/// that decodes and keeps the rules. A body the codec would refuse anyway (empty, cut
/// short) passes to it. More than one message is refused: the codec would hand the
/// handler the first and drop the rest, so a second frame must not smuggle a first that
/// was never checked.
///
/// # Errors
/// INVALID_ARGUMENT: more than one message, a compressed one, one that does not decode,
/// or the rules' field violations.
fn check(rules: &Rules, method: &Method, bytes: &Bytes) -> Result<(), tonic::Status> {
    let mut frame = bytes.clone();
    if frame.len() < 5 {
        return Ok(());
    }
    if frame[0] != 0 {
        return Err(tonic::Status::invalid_argument(
            "compressed request messages are not accepted",
        ));
    }
    frame.advance(1);
    let len = frame.get_u32() as usize;
    if frame.len() < len {
        return Ok(());
    }
    if frame.len() > len {
        return Err(tonic::Status::invalid_argument(
            "a unary or server-streaming call carries exactly one request message",
        ));
    }
    // Caps first, on the wire: a 4 MiB list of empty strings is 2 million items, which
    // neither the decoder nor the rules should be asked to hold one by one.
    if !method.caps.is_empty() {
        let numbers: Vec<u32> = method.caps.iter().map(|cap| cap.number).collect();
        let counts = count_on_wire(&frame, &numbers).ok_or_else(|| {
            tonic::Status::invalid_argument("the request message does not decode")
        })?;
        let over: Vec<FieldViolation> = method
            .caps
            .iter()
            .zip(counts)
            .filter(|(cap, count)| *count > cap.max)
            .map(|(cap, _)| {
                FieldViolation::new(
                    cap.name.clone(),
                    format!("must contain no more than {} item(s)", cap.max),
                )
            })
            .collect();
        if !over.is_empty() {
            return Err(invalid_argument(&over));
        }
    }
    let message = DynamicMessage::decode(method.input.clone(), frame)
        .map_err(|_| tonic::Status::invalid_argument("the request message does not decode"))?;
    match violations(rules, &method.input, &message) {
        Some(violations) => Err(invalid_argument(&violations)),
        None => Ok(()),
    }
}

/// The rules `message` breaks, or `None` when it keeps them.
fn violations(
    rules: &Rules,
    input: &MessageDescriptor,
    message: &DynamicMessage,
) -> Option<Vec<FieldViolation>> {
    match rules.validator.validate(message) {
        Ok(()) => None,
        Err(prost_protovalidate::Error::Validation(error)) => {
            // A list over its cap is reported as the list alone: its items' own
            // violations (one per item of a 200,000-item list) would bury it.
            let capped: Vec<String> = error
                .violations()
                .iter()
                .filter(|violation| violation.rule_id() == "repeated.max_items")
                .map(|violation| format!("{}[", violation.field_path()))
                .collect();
            Some(
                error
                    .violations()
                    .iter()
                    .filter(|violation| {
                        let path = violation.field_path();
                        !capped.iter().any(|list| path.starts_with(list.as_str()))
                    })
                    .map(|violation| {
                        FieldViolation::new(violation.field_path(), describe(violation))
                    })
                    .collect(),
            )
        }
        Err(err) => {
            // A rule that cannot be evaluated is the contract's fault, not the caller's.
            tracing::error!(error = %err, message = input.full_name(), "a field rule could not be evaluated");
            Some(vec![FieldViolation::new(
                "",
                "could not be validated (see the server's log)",
            )])
        }
    }
}

/// What a violation says, for a person, lowercase, without protovalidate's leading
/// "value " (the field is named beside it). The standard well-known string rules
/// (`string.email`, `string.uuid`, …) come with no message without CEL: theirs is said
/// here as protovalidate's own rule definitions say it.
fn describe(violation: &prost_protovalidate::Violation) -> String {
    let message = violation.message();
    if !message.is_empty() {
        return message.strip_prefix("value ").unwrap_or(message).to_owned();
    }
    let rule = violation.rule_id();
    let name = |rule: &str| match rule {
        "uuid" | "tuuid" => "UUID".to_owned(),
        "ip" | "ipv4" | "ipv6" => format!("{} address", rule.to_uppercase()),
        "uri" | "uri_ref" => "URI".to_owned(),
        "email" => "email address".to_owned(),
        other => other.replace('_', " "),
    };
    match rule.strip_prefix("string.") {
        Some(known) => match known.strip_suffix("_empty") {
            Some(known) => format!("is empty, which is not a valid {}", name(known)),
            None => format!("must be a valid {}", name(known)),
        },
        None => format!("breaks the rule {rule}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn layer() -> ValidateLayer {
        let pool = DescriptorPool::decode(trellis_proto::FILE_DESCRIPTOR_SET).unwrap_or_default();
        ValidateLayer::new(
            &pool,
            &[
                "trellis.user.v1.UserService",
                "trellis.notification.v1.NotificationService",
            ],
            4 * 1024 * 1024,
        )
    }

    /// A pool with `rule` on `Echo.Say`'s `text`, compiled from a proto written now.
    fn pool_with_rule(rule: &str) -> DescriptorPool {
        let dir = tempfile::tempdir().unwrap_or_else(|err| panic!("{err}"));
        let proto = format!(
            "syntax = \"proto3\";\npackage t;\nimport \"buf/validate/validate.proto\";\n\
             service Echo {{ rpc Say(SayRequest) returns (SayRequest); }}\n\
             message SayRequest {{ string text = 1 [(buf.validate.field).string = {{{rule}}}]; }}\n"
        );
        std::fs::write(dir.path().join("t.proto"), proto).unwrap_or_else(|err| panic!("{err}"));
        let third_party = concat!(env!("CARGO_MANIFEST_DIR"), "/../proto/third_party");
        let mut compiler = protox::Compiler::new([dir.path(), std::path::Path::new(third_party)])
            .unwrap_or_else(|err| panic!("{err}"));
        compiler
            .include_imports(true)
            .open_file("t.proto")
            .unwrap_or_else(|err| panic!("{err}"));
        // Encoded by protox: the rules are custom options, which prost's types drop.
        DescriptorPool::decode(compiler.encode_file_descriptor_set().as_slice())
            .unwrap_or_else(|err| panic!("{err}"))
    }

    /// One gRPC frame of `message`.
    fn frame(message: &impl prost::Message) -> Vec<u8> {
        let encoded = message.encode_to_vec();
        let mut framed = vec![0];
        framed.extend_from_slice(&u32::try_from(encoded.len()).unwrap_or(0).to_be_bytes());
        framed.extend_from_slice(&encoded);
        framed
    }

    /// What a handler of `service` behind the layer answers a call of `path` carrying
    /// `body` with: the gRPC code, and whether the handler ran.
    async fn send(pool: &DescriptorPool, service: &str, path: &str, body: Vec<u8>) -> (i32, bool) {
        use std::sync::atomic::{AtomicBool, Ordering};
        use tower::ServiceExt as _;
        let ran = Arc::new(AtomicBool::new(false));
        let handler = {
            let ran = Arc::clone(&ran);
            tower::service_fn(move |_: Request<axum::body::Body>| {
                ran.store(true, Ordering::SeqCst);
                async {
                    Ok::<_, Infallible>(axum::response::Response::new(axum::body::Body::empty()))
                }
            })
        };
        let layered = ValidateLayer::new(pool, &[service], 4 * 1024 * 1024).layer(handler);
        let request = Request::builder()
            .uri(path)
            .header("content-type", "application/grpc")
            .body(axum::body::Body::from(body))
            .unwrap_or_default();
        let response = layered
            .oneshot(request)
            .await
            .unwrap_or_else(|never| match never {});
        let code = response
            .headers()
            .get("grpc-status")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse().ok())
            .unwrap_or(0);
        (code, ran.load(Ordering::SeqCst))
    }

    fn say_request(pool: &DescriptorPool, text: &str) -> DynamicMessage {
        let Some(input) = pool.get_message_by_name("t.SayRequest") else {
            panic!("no SayRequest");
        };
        let mut message = DynamicMessage::new(input);
        message.set_field_by_name("text", prost_reflect::Value::String(text.to_owned()));
        message
    }

    /// What a handler behind the layer answers `text` with.
    async fn say(pool: &DescriptorPool, text: &str) -> (i32, bool) {
        send(
            pool,
            "t.Echo",
            "/t.Echo/Say",
            frame(&say_request(pool, text)),
        )
        .await
    }

    #[tokio::test]
    async fn a_second_message_cannot_smuggle_an_unchecked_first() {
        let pool = pool_with_rule("max_len: 3");
        // The codec would hand the handler the first message and drop the second.
        let mut body = frame(&say_request(&pool, "far too long"));
        body.extend_from_slice(&frame(&say_request(&pool, "ok")));
        assert_eq!(
            send(&pool, "t.Echo", "/t.Echo/Say", body).await,
            (Code::InvalidArgument as i32, false)
        );
        let mut body = frame(&say_request(&pool, "far too long"));
        body.extend_from_slice(&[0, 0, 0, 0, 0]);
        assert_eq!(
            send(&pool, "t.Echo", "/t.Echo/Say", body).await,
            (Code::InvalidArgument as i32, false)
        );
        // Nor a compressed one, nor bytes that do not decode.
        let mut body = frame(&say_request(&pool, "far too long"));
        body[0] = 1;
        assert_eq!(
            send(&pool, "t.Echo", "/t.Echo/Say", body).await,
            (Code::InvalidArgument as i32, false)
        );
        assert_eq!(
            send(
                &pool,
                "t.Echo",
                "/t.Echo/Say",
                vec![0, 0, 0, 0, 2, 0xff, 0xff]
            )
            .await,
            (Code::InvalidArgument as i32, false)
        );
    }

    #[tokio::test]
    async fn a_list_over_its_cap_is_refused_from_the_wire_and_named_alone() {
        let pool = DescriptorPool::decode(trellis_proto::FILE_DESCRIPTOR_SET).unwrap_or_default();
        let service = "trellis.notification.v1.NotificationService";
        let path = "/trellis.notification.v1.NotificationService/MarkRead";
        let ids = |n: usize| trellis_proto::notification_v1::MarkReadRequest {
            ids: vec![String::new(); n],
        };
        // 400,000 empty ids (2 bytes each on the wire): refused before any is decoded.
        assert_eq!(
            send(&pool, service, path, frame(&ids(400_000))).await,
            (Code::InvalidArgument as i32, false)
        );
        let rules = Rules {
            methods: HashMap::new(),
            validator: prost_protovalidate::Validator::new(),
            max_message_bytes: 4 * 1024 * 1024,
        };
        let Some(method) = ValidateLayer::new(&pool, &[service], 4 * 1024 * 1024)
            .rules
            .methods
            .get(path)
            .cloned()
        else {
            panic!("MarkRead has rules");
        };
        let refused = check(&rules, &method, &Bytes::from(frame(&ids(1001))));
        let details = refused
            .as_ref()
            .err()
            .map(tonic_types::StatusExt::get_error_details);
        let fields: Vec<String> = details
            .as_ref()
            .and_then(|details| details.bad_request())
            .map(|bad| {
                bad.field_violations
                    .iter()
                    .map(|v| v.field.clone())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(fields, ["ids"]);
        // At the cap, each item is checked (empty ids are not UUIDs).
        assert!(check(&rules, &method, &Bytes::from(frame(&ids(1000)))).is_err());
        let valid = trellis_proto::notification_v1::MarkReadRequest {
            ids: vec!["0190f1c2-0000-7000-8000-000000000001".to_owned(); 1000],
        };
        assert!(check(&rules, &method, &Bytes::from(frame(&valid))).is_ok());
    }

    #[tokio::test]
    async fn a_rule_changed_in_the_proto_changes_behaviour_with_no_handler_edit() {
        let strict = pool_with_rule("max_len: 3");
        assert_eq!(
            say(&strict, "abcd").await,
            (Code::InvalidArgument as i32, false)
        );
        assert_eq!(say(&strict, "abc").await, (0, true));
        let relaxed = pool_with_rule("max_len: 5");
        assert_eq!(say(&relaxed, "abcd").await, (0, true));
        let formatted = pool_with_rule("email: true");
        assert_eq!(
            say(&formatted, "abcd").await,
            (Code::InvalidArgument as i32, false)
        );
        assert_eq!(say(&formatted, "a@example.com").await, (0, true));
    }

    #[test]
    fn a_broken_rule_is_described_for_a_person() {
        let pool = pool_with_rule("email: true");
        let Some(input) = pool.get_message_by_name("t.SayRequest") else {
            panic!("no SayRequest");
        };
        let rules = Rules {
            methods: HashMap::new(),
            validator: prost_protovalidate::Validator::new(),
            max_message_bytes: 1024,
        };
        let message = DynamicMessage::decode(input.clone(), &[10, 1, b'x'][..])
            .unwrap_or_else(|err| panic!("{err}"));
        let violations = violations(&rules, &input, &message);
        assert_eq!(
            violations,
            Some(vec![FieldViolation::new(
                "text",
                "must be a valid email address"
            )])
        );
    }

    #[test]
    fn only_methods_with_rules_are_checked() {
        let layer = layer();
        let mut methods: Vec<&str> = layer.methods().collect();
        methods.sort_unstable();
        assert!(methods.contains(&"/trellis.user.v1.UserService/CreateUser"));
        assert!(methods.contains(&"/trellis.notification.v1.NotificationService/Subscribe"));
        // ConnectRequest has no rules (and Connect is client-streaming).
        assert!(!methods.iter().any(|m| m.ends_with("/Connect")));
    }
}
