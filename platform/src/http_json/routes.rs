//! The route table: each RPC's `google.api.http` rule (AIP-127) read from the
//! descriptors, its path template parsed, and requests matched and bound to a JSON
//! object in the proto3 JSON mapping.

use std::collections::HashMap;
use std::sync::Arc;

use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor,
    Value as ProtoValue,
};
use serde_json::{Map, Value};

/// The name of the method option holding an RPC's HTTP rule.
const HTTP_RULE_EXTENSION: &str = "google.api.http";

/// Why the route table could not be built: an HTTP rule the gateway cannot serve.
#[derive(Debug, thiserror::Error)]
#[error("{method}: {reason}")]
pub struct RouteError {
    /// The RPC, e.g. `trellis.user.v1.UserService/GetUser`.
    pub method: String,
    /// What is wrong with its rule.
    pub reason: String,
}

/// One segment of a path template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// Matches exactly this text.
    Literal(String),
    /// Matches one segment and binds it to the field at this path (`user.id`).
    Variable(Vec<String>),
}

/// One HTTP binding of an RPC.
#[derive(Debug, Clone)]
pub struct Route {
    /// The HTTP method, e.g. `GET`.
    pub http_method: http::Method,
    /// The template as written, e.g. `/v1/users/{id}`.
    pub template: String,
    segments: Vec<Segment>,
    /// The `:verb` suffix of the last segment, e.g. `grantRole`.
    verb: Option<String>,
    /// The request field the body maps to: `*` (all), a field name, or none.
    pub body: Option<String>,
    /// The RPC.
    pub method: MethodDescriptor,
    /// `/package.Service/Method`, the gRPC path the request is sent to.
    pub grpc_path: String,
}

impl Route {
    /// The field paths bound by the path template, e.g. `[["user", "id"]]`.
    pub fn path_fields(&self) -> impl Iterator<Item = &[String]> {
        self.segments.iter().filter_map(|segment| match segment {
            Segment::Variable(path) => Some(path.as_slice()),
            Segment::Literal(_) => None,
        })
    }

    /// The template in OpenAPI form: `{id=*}` becomes `{id}`, and a nested field's
    /// variable `{user.id}` becomes `{user_id}` ([`Self::openapi_parameter`]).
    pub fn openapi_path(&self) -> String {
        let mut path = String::new();
        for segment in &self.segments {
            path.push('/');
            match segment {
                Segment::Literal(text) => path.push_str(text),
                Segment::Variable(field) => {
                    path.push('{');
                    path.push_str(&Self::openapi_parameter(field));
                    path.push('}');
                }
            }
        }
        if let Some(verb) = &self.verb {
            path.push(':');
            path.push_str(verb);
        }
        path
    }

    /// The OpenAPI name of the path variable bound to `field`: its proto names joined
    /// with `_` (`user_id` for `user.id`), since tools read a dotted name as an
    /// attribute lookup (schemathesis formats paths with Python's `str.format`).
    pub fn openapi_parameter(field: &[String]) -> String {
        field.join("_")
    }

    /// The path variables of `path` when it matches, as (field path, decoded value).
    fn matches(&self, path: &str) -> Option<Vec<(&[String], String)>> {
        let path = path.strip_prefix('/')?;
        let (path, verb) = match &self.verb {
            Some(verb) => {
                let rest = path.strip_suffix(verb.as_str())?.strip_suffix(':')?;
                (rest, Some(verb))
            }
            None => (path, None),
        };
        let parts: Vec<&str> = path.split('/').collect();
        if parts.len() != self.segments.len() {
            return None;
        }
        let mut bound = Vec::new();
        for (segment, part) in self.segments.iter().zip(parts) {
            match segment {
                Segment::Literal(text) => {
                    if text != part {
                        return None;
                    }
                }
                Segment::Variable(field) => {
                    // Without a verb, a trailing `:x` on the last variable is no match of
                    // ours (it is another route's custom method).
                    if part.is_empty() || (verb.is_none() && part.contains(':')) {
                        return None;
                    }
                    let value = percent_encoding::percent_decode_str(part)
                        .decode_utf8()
                        .ok()?
                        .into_owned();
                    bound.push((field.as_slice(), value));
                }
            }
        }
        Some(bound)
    }
}

/// The path variables a match bound: each field path with its decoded value.
pub type Bound<'a> = Vec<(&'a [String], String)>;

/// Every HTTP route of the services a server runs.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
    by_grpc_path: HashMap<String, usize>,
}

impl RouteTable {
    /// The routes of `service_names`' RPCs that carry a `google.api.http` rule in `pool`.
    /// RPCs without one are served over gRPC only; a client-streaming RPC cannot carry
    /// one.
    ///
    /// # Errors
    /// [`RouteError`] for a rule the gateway cannot serve (custom HTTP methods, `**`
    /// variables, a body field that does not exist, a client-streaming RPC).
    pub fn new(pool: &DescriptorPool, service_names: &[&str]) -> Result<Self, RouteError> {
        let mut table = Self::default();
        let Some(extension) = pool.get_extension_by_name(HTTP_RULE_EXTENSION) else {
            return Ok(table);
        };
        for name in service_names {
            let Some(service) = pool.get_service_by_name(name) else {
                continue;
            };
            for method in service.methods() {
                let options = method.options();
                if !options.has_extension(&extension) {
                    continue;
                }
                let Some(rule) = options.get_extension(&extension).as_message().cloned() else {
                    continue;
                };
                let grpc_path = format!("/{}/{}", service.full_name(), method.name());
                let error = |reason: String| RouteError {
                    method: grpc_path.trim_start_matches('/').to_owned(),
                    reason,
                };
                if method.is_client_streaming() {
                    return Err(error("a client-streaming RPC cannot be transcoded".into()));
                }
                let mut rules = vec![rule.clone()];
                if let Some(ProtoValue::List(more)) = rule
                    .get_field_by_name("additional_bindings")
                    .map(std::borrow::Cow::into_owned)
                {
                    rules.extend(more.into_iter().filter_map(|value| match value {
                        ProtoValue::Message(message) => Some(message),
                        _ => None,
                    }));
                }
                for rule in rules {
                    let route = route_of(&rule, &method, &grpc_path).map_err(error)?;
                    table
                        .by_grpc_path
                        .entry(grpc_path.clone())
                        .or_insert(table.routes.len());
                    table.routes.push(Arc::new(route));
                }
            }
        }
        Ok(table)
    }

    /// True when no RPC has a route.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Every route, in the order the services declare them.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// The route matching `method` and `path`, with its bound path variables; or, when
    /// only the method differs, `Err(())` (405).
    #[allow(clippy::result_unit_err)]
    pub fn find(
        &self,
        method: &http::Method,
        path: &str,
    ) -> Result<Option<(&Arc<Route>, Bound<'_>)>, ()> {
        let mut path_matched = false;
        for route in &self.routes {
            if let Some(bound) = route.matches(path) {
                if route.http_method == method {
                    return Ok(Some((route, bound)));
                }
                path_matched = true;
            }
        }
        if path_matched { Err(()) } else { Ok(None) }
    }
}

fn route_of(
    rule: &DynamicMessage,
    method: &MethodDescriptor,
    grpc_path: &str,
) -> Result<Route, String> {
    let text = |name: &str| {
        rule.get_field_by_name(name)
            .and_then(|value| value.as_str().map(str::to_owned))
            .filter(|text| !text.is_empty())
    };
    let (http_method, template) = [
        ("get", http::Method::GET),
        ("put", http::Method::PUT),
        ("post", http::Method::POST),
        ("delete", http::Method::DELETE),
        ("patch", http::Method::PATCH),
    ]
    .into_iter()
    .find_map(|(field, method)| text(field).map(|template| (method, template)))
    .ok_or_else(|| "the HTTP rule has no get, put, post, delete or patch pattern".to_owned())?;
    let (segments, verb) = parse_template(&template)?;
    let input = method.input();
    for segment in &segments {
        if let Segment::Variable(path) = segment {
            let field = resolve(&input, path)
                .ok_or_else(|| format!("path variable {} is no field", path.join(".")))?;
            if field.is_list() || field.is_map() || matches!(field.kind(), Kind::Message(_)) {
                return Err(format!(
                    "path variable {} must be a scalar field",
                    path.join(".")
                ));
            }
        }
    }
    let body = text("body");
    if let Some(body) = body.as_deref().filter(|body| *body != "*")
        && input.get_field_by_name(body).is_none()
    {
        return Err(format!("body field {body} is no field of the request"));
    }
    if text("response_body").is_some() {
        return Err("response_body is not supported: the whole response is the body".into());
    }
    Ok(Route {
        http_method,
        template,
        segments,
        verb,
        body,
        method: method.clone(),
        grpc_path: grpc_path.to_owned(),
    })
}

/// Parses `/v1/users/{user.id}:verb` into segments and the verb. Variables match one
/// segment (`{name}` or `{name=*}`); `**` and multi-segment patterns are refused.
fn parse_template(template: &str) -> Result<(Vec<Segment>, Option<String>), String> {
    let rest = template
        .strip_prefix('/')
        .ok_or_else(|| format!("template {template} does not start with /"))?;
    // The verb is a `:` after the last segment, outside braces.
    let (rest, verb) = match rest.rfind(':') {
        Some(at) if !rest[at..].contains('}') && !rest[at..].contains('/') => {
            (&rest[..at], Some(rest[at + 1..].to_owned()))
        }
        _ => (rest, None),
    };
    let mut segments = Vec::new();
    for part in rest.split('/') {
        if let Some(inner) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            let (name, pattern) = inner.split_once('=').unwrap_or((inner, "*"));
            if pattern != "*" {
                return Err(format!(
                    "template {template}: only single-segment variables are supported"
                ));
            }
            segments.push(Segment::Variable(
                name.split('.').map(str::to_owned).collect(),
            ));
        } else if part.is_empty() || part.contains(['{', '}', '*']) {
            return Err(format!("template {template}: unsupported segment {part:?}"));
        } else {
            segments.push(Segment::Literal(part.to_owned()));
        }
    }
    Ok((segments, verb))
}

/// The field at `path` (proto or JSON names) under `message`.
pub fn resolve(message: &MessageDescriptor, path: &[String]) -> Option<FieldDescriptor> {
    let (first, rest) = path.split_first()?;
    let field = field_named(message, first)?;
    if rest.is_empty() {
        return Some(field);
    }
    match field.kind() {
        Kind::Message(inner) if !field.is_list() && !field.is_map() => resolve(&inner, rest),
        _ => None,
    }
}

/// The field of `message` called `name`, by its proto name or its JSON name (the proto3
/// JSON mapping accepts both).
fn field_named(message: &MessageDescriptor, name: &str) -> Option<FieldDescriptor> {
    message
        .get_field_by_name(name)
        .or_else(|| message.get_field_by_json_name(name))
}

/// Why a request could not be bound.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BindError {
    /// The body is not a JSON object (or not JSON at all).
    #[error("the body is not a JSON object: {0}")]
    Body(String),
    /// A query parameter names no field, or a field that cannot be set from a query.
    #[error("unknown query parameter {0}")]
    UnknownParameter(String),
    /// The body or the query sets a field the path binds.
    #[error("{0} is bound by the path: it may not be set in the body or the query")]
    BoundByPath(String),
}

/// The request as one JSON object in the proto3 JSON mapping: the body (whole, or under
/// its field), then query parameters (none when the body is `*`), then path variables.
/// A field the path binds may not also be set by the body or the query (under either
/// of its names): the URL says which resource is acted on, and nothing else may change
/// it behind a proxy's or a log's back.
///
/// # Errors
/// [`BindError`] for a body that is not a JSON object, an unknown query parameter and a
/// path-bound field set again.
pub fn bind(
    route: &Route,
    path_values: Vec<(&[String], String)>,
    query: Option<&str>,
    body: &[u8],
) -> Result<Value, BindError> {
    let input = route.method.input();
    let mut request = Map::new();
    match route.body.as_deref() {
        Some(field) => {
            let parsed: Value = if body.iter().all(u8::is_ascii_whitespace) {
                Value::Object(Map::new())
            } else {
                serde_json::from_slice(body).map_err(|err| BindError::Body(err.to_string()))?
            };
            if field == "*" {
                match parsed {
                    Value::Object(object) => request = object,
                    _ => return Err(BindError::Body("expected an object".into())),
                }
            } else {
                let name = input
                    .get_field_by_name(field)
                    .map_or_else(|| field.to_owned(), |f| f.json_name().to_owned());
                request.insert(name, parsed);
            }
        }
        None => {
            if !body.iter().all(u8::is_ascii_whitespace) {
                return Err(BindError::Body("this route takes no body".into()));
            }
        }
    }
    if route.body.as_deref() != Some("*") {
        for (key, value) in query_pairs(query.unwrap_or_default()) {
            let path: Vec<String> = key.split('.').map(str::to_owned).collect();
            // The body's field is bound by the body only.
            let body_field = route
                .body
                .as_deref()
                .and_then(|b| input.get_field_by_name(b));
            let first = resolve(&input, &path[..1]);
            if first.is_some()
                && first.as_ref().map(FieldDescriptor::name)
                    == body_field.as_ref().map(FieldDescriptor::name)
            {
                return Err(BindError::UnknownParameter(key));
            }
            set(&input, &mut request, &path, value, true)
                .map_err(|()| BindError::UnknownParameter(key.clone()))?;
        }
    } else if let Some((key, _)) = query_pairs(query.unwrap_or_default()).next() {
        return Err(BindError::UnknownParameter(key));
    }
    for (path, value) in path_values {
        if is_set(&input, &request, path) {
            return Err(BindError::BoundByPath(path.join(".")));
        }
        set(&input, &mut request, path, value, false)
            .map_err(|()| BindError::UnknownParameter(path.join(".")))?;
    }
    Ok(Value::Object(request))
}

/// Whether `object` already sets the field at `path` under either of its names.
fn is_set(message: &MessageDescriptor, object: &Map<String, Value>, path: &[String]) -> bool {
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let Some(field) = field_named(message, first) else {
        return false;
    };
    [field.json_name(), field.name()].into_iter().any(|name| {
        match (object.get(name), field.kind()) {
            (None, _) => false,
            (Some(_), _) if rest.is_empty() => true,
            (Some(Value::Object(inner)), Kind::Message(nested)) => is_set(&nested, inner, rest),
            (Some(_), _) => false,
        }
    })
}

/// `a=1&b=x%20y` as decoded pairs (`application/x-www-form-urlencoded`, as HTML forms
/// and most HTTP clients write queries: `+` is a space).
fn query_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    form_urlencoded::parse(query.as_bytes())
        .map(|(key, value)| (key.into_owned(), value.into_owned()))
}

/// Sets the field at `path` under `object` to `raw`, converted for its kind: booleans
/// as JSON booleans, repeated fields appended (when `repeat` allows), everything else as
/// a JSON string (the proto3 JSON mapping accepts numbers, enums, timestamps and field
/// masks as strings). Fails for an unknown field or one a string cannot set.
fn set(
    message: &MessageDescriptor,
    object: &mut Map<String, Value>,
    path: &[String],
    raw: String,
    repeat: bool,
) -> Result<(), ()> {
    let (first, rest) = path.split_first().ok_or(())?;
    let field = field_named(message, first).ok_or(())?;
    let name = field.json_name().to_owned();
    if !rest.is_empty() {
        let Kind::Message(inner) = field.kind() else {
            return Err(());
        };
        if field.is_list() || field.is_map() || is_string_valued(&inner) {
            return Err(());
        }
        let entry = object
            .entry(name)
            .or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(nested) = entry else {
            return Err(());
        };
        return set(&inner, nested, rest, raw, repeat);
    }
    if field.is_map() {
        return Err(());
    }
    let value = match field.kind() {
        Kind::Bool => match raw.as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => Value::String(raw),
        },
        Kind::Message(inner) if !is_string_valued(&inner) => return Err(()),
        _ => Value::String(raw),
    };
    if field.is_list() {
        if !repeat {
            return Err(());
        }
        match object
            .entry(name)
            .or_insert_with(|| Value::Array(Vec::new()))
        {
            Value::Array(items) => items.push(value),
            _ => return Err(()),
        }
    } else {
        object.insert(name, value);
    }
    Ok(())
}

/// Well-known types whose JSON form is a string (or a scalar a string can carry).
pub fn is_string_valued(message: &MessageDescriptor) -> bool {
    matches!(
        message.full_name(),
        "google.protobuf.Timestamp"
            | "google.protobuf.Duration"
            | "google.protobuf.FieldMask"
            | "google.protobuf.StringValue"
            | "google.protobuf.BytesValue"
            | "google.protobuf.Int32Value"
            | "google.protobuf.Int64Value"
            | "google.protobuf.UInt32Value"
            | "google.protobuf.UInt64Value"
            | "google.protobuf.FloatValue"
            | "google.protobuf.DoubleValue"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        let pool = DescriptorPool::decode(trellis_proto::FILE_DESCRIPTOR_SET).unwrap_or_default();
        RouteTable::new(
            &pool,
            &[
                "trellis.user.v1.UserService",
                "trellis.notification.v1.NotificationService",
                "trellis.notification.v1.NotificationInternalService",
            ],
        )
        .unwrap_or_default()
    }

    fn bound(
        method: http::Method,
        path: &str,
        query: Option<&str>,
        body: &str,
    ) -> Result<(String, Value), String> {
        let table = table();
        let (route, values) = table
            .find(&method, path)
            .map_err(|()| "405".to_owned())?
            .ok_or_else(|| "404".to_owned())?;
        let request = bind(route, values, query, body.as_bytes()).map_err(|e| e.to_string())?;
        Ok((route.grpc_path.clone(), request))
    }

    #[test]
    fn the_annotated_routes_bind_path_query_and_body() {
        assert_eq!(
            bound(http::Method::GET, "/v1/users/abc", None, ""),
            Ok((
                "/trellis.user.v1.UserService/GetUser".into(),
                serde_json::json!({"id": "abc"})
            ))
        );
        assert_eq!(
            bound(
                http::Method::PATCH,
                "/v1/users/u%2D1",
                Some("updateMask=displayName"),
                r#"{"displayName":"Ann"}"#
            ),
            Ok((
                "/trellis.user.v1.UserService/UpdateUser".into(),
                serde_json::json!({"user": {"displayName": "Ann", "id": "u-1"}, "updateMask": "displayName"})
            ))
        );
        assert_eq!(
            bound(
                http::Method::POST,
                "/v1/users/u1:grantRole",
                None,
                r#"{"role":"admin"}"#
            ),
            Ok((
                "/trellis.user.v1.UserService/GrantRole".into(),
                serde_json::json!({"id": "u1", "role": "admin"})
            ))
        );
        assert_eq!(
            bound(
                http::Method::GET,
                "/v1/notifications",
                Some("page_size=5&unreadOnly=true&pageToken=a+b"),
                ""
            ),
            Ok((
                "/trellis.notification.v1.NotificationService/ListNotifications".into(),
                serde_json::json!({"pageSize": "5", "unreadOnly": true, "pageToken": "a b"})
            ))
        );
    }

    #[test]
    fn unknown_parameters_wrong_methods_and_bad_bodies_are_refused() {
        assert_eq!(
            bound(http::Method::GET, "/v1/users", Some("nope=1"), ""),
            Err("unknown query parameter nope".into())
        );
        assert_eq!(
            bound(http::Method::PUT, "/v1/users/abc", None, ""),
            Err("405".into())
        );
        assert_eq!(
            bound(http::Method::GET, "/v1/nothing", None, ""),
            Err("404".into())
        );
        assert!(bound(http::Method::POST, "/v1/users", None, "[1]").is_err());
        // The route's body is its field `user`: the query cannot set it.
        assert_eq!(
            bound(
                http::Method::PATCH,
                "/v1/users/a",
                Some("user.email=x"),
                "{}"
            ),
            Err("unknown query parameter user.email".into())
        );
        // Nothing but the path sets a path-bound field, under either name.
        let bound_by_path =
            Err("id is bound by the path: it may not be set in the body or the query".to_owned());
        assert_eq!(
            bound(http::Method::GET, "/v1/users/a", Some("id=b"), ""),
            bound_by_path
        );
        assert_eq!(
            bound(
                http::Method::POST,
                "/v1/users/a:grantRole",
                None,
                r#"{"id":"b","role":"admin"}"#
            ),
            bound_by_path
        );
        assert_eq!(
            bound(http::Method::PATCH, "/v1/users/a", None, r#"{"id":"b"}"#),
            Err("user.id is bound by the path: it may not be set in the body or the query".into())
        );
        assert_eq!(
            bound(
                http::Method::POST,
                "/v1/users/a/notifications",
                None,
                r#"{"user_id":"b"}"#
            ),
            Err("user_id is bound by the path: it may not be set in the body or the query".into())
        );
    }

    #[test]
    fn templates_with_unsupported_variables_are_refused() {
        assert!(parse_template("/v1/{name=users/*}").is_err());
        assert!(parse_template("/v1/{name=**}").is_err());
        assert_eq!(
            parse_template("/v1/users/{id}:grantRole"),
            Ok((
                vec![
                    Segment::Literal("v1".into()),
                    Segment::Literal("users".into()),
                    Segment::Variable(vec!["id".into()])
                ],
                Some("grantRole".into())
            ))
        );
    }
}
