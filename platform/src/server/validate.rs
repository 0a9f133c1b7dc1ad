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
    methods: HashMap<String, MessageDescriptor>,
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
                methods.insert(format!("/{}/{}", service.full_name(), method.name()), input);
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
        let Some(input) = self.rules.methods.get(request.uri().path()).cloned() else {
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
            if let Some(violations) = violations(&rules, &input, &bytes) {
                return Ok(invalid_argument(&violations).into_http());
            }
            let request = Request::from_parts(parts, axum::body::Body::from(bytes));
            inner.call(request).await
        })
    }
}

/// The rules `bytes` (one gRPC-framed message) breaks, or `None` when it keeps them or
/// is not one uncompressed message (the codec reports that).
fn violations(
    rules: &Rules,
    input: &MessageDescriptor,
    bytes: &Bytes,
) -> Option<Vec<FieldViolation>> {
    let mut frame = bytes.clone();
    if frame.len() < 5 || frame[0] != 0 {
        return None;
    }
    frame.advance(1);
    let len = frame.get_u32() as usize;
    if frame.len() != len {
        return None;
    }
    let message = DynamicMessage::decode(input.clone(), frame).ok()?;
    match rules.validator.validate(&message) {
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

    /// What a handler behind the layer answers `text` with: the gRPC code, and whether
    /// the handler ran.
    async fn say(pool: &DescriptorPool, text: &str) -> (i32, bool) {
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
        let service = ValidateLayer::new(pool, &["t.Echo"], 1024).layer(handler);
        let Some(input) = pool.get_message_by_name("t.SayRequest") else {
            panic!("no SayRequest");
        };
        let mut message = DynamicMessage::new(input);
        message.set_field_by_name("text", prost_reflect::Value::String(text.to_owned()));
        let encoded = prost::Message::encode_to_vec(&message);
        let mut framed = vec![0];
        framed.extend_from_slice(&u32::try_from(encoded.len()).unwrap_or(0).to_be_bytes());
        framed.extend_from_slice(&encoded);
        let request = Request::builder()
            .uri("/t.Echo/Say")
            .header("content-type", "application/grpc")
            .body(axum::body::Body::from(framed))
            .unwrap_or_default();
        let response = service
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
        let mut framed = vec![0, 0, 0, 0, 3];
        framed.extend_from_slice(&[10, 1, b'x']);
        let violations = violations(&rules, &input, &Bytes::from(framed));
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
