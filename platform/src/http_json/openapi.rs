//! The OpenAPI 3.1 document of a server's HTTP/JSON routes, generated from the same
//! descriptors the transcoder serves from, never written by hand: one operation per
//! `google.api.http` binding, each message a schema in the proto3 JSON mapping, the
//! protos' comments as descriptions, the `buf.validate` field rules as JSON Schema
//! constraints, bearer JWTs as the security scheme, and `google.rpc.Status` as every
//! error's body.

use std::collections::{BTreeMap, HashMap};

use prost_reflect::{
    DescriptorPool, DynamicMessage, ExtensionDescriptor, FieldDescriptor, FileDescriptor, Kind,
    MessageDescriptor, Value as ProtoValue,
};
use serde_json::{Map, Value, json};

use super::routes::{Route, RouteTable, is_string_valued, resolve};
use crate::validation::rule;

/// The schema name of the error body.
const STATUS_SCHEMA: &str = "google.rpc.Status";

/// What the document says about who may call a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// Anyone: no token (`security: []`).
    Public,
    /// An end user or service with a bearer token.
    Authenticated,
    /// Trellis services only; an end user's token is refused (403).
    Internal,
}

/// The document for `routes` of a service titled `title`; `audience` says, for a gRPC
/// path such as `/trellis.user.v1.UserService/GetUser`, who may call it.
pub fn document(
    pool: &DescriptorPool,
    routes: &RouteTable,
    title: &str,
    audience: &dyn Fn(&str) -> Audience,
) -> Value {
    let mut generator = Generator {
        comments: Comments::default(),
        schemas: BTreeMap::new(),
        rule_extension: pool.get_extension_by_name("buf.validate.field"),
    };
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for route in routes.routes() {
        let operation = generator.operation(route, audience(&route.grpc_path));
        paths
            .entry(route.openapi_path())
            .or_default()
            .insert(route.http_method.as_str().to_lowercase(), operation);
    }
    let mut schemas: Map<String, Value> =
        std::mem::take(&mut generator.schemas).into_iter().collect();
    schemas.insert(STATUS_SCHEMA.to_owned(), status_schema());
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": env!("CARGO_PKG_VERSION"),
            "description": "HTTP/JSON transcoded from the service's gRPC contract (google.api.http, AIP-127); \
                            the same calls are served over gRPC on the same port.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "An access token from the auth service's Login (`POST /v1/tokens:login`).",
                },
            },
        },
        "security": [{"bearerAuth": []}],
    })
}

/// The proto comments of each file, by element path (`SourceCodeInfo`).
#[derive(Default)]
struct Comments {
    files: HashMap<String, HashMap<Vec<i32>, String>>,
}

impl Comments {
    fn of(&mut self, file: &FileDescriptor, path: &[i32]) -> Option<String> {
        let comments = self.files.entry(file.name().to_owned()).or_insert_with(|| {
            file.file_descriptor_proto()
                .source_code_info
                .iter()
                .flat_map(|info| &info.location)
                .filter_map(|location| {
                    let text = location.leading_comments.as_deref()?;
                    Some((location.path.clone(), clean_comment(text)))
                })
                .collect()
        });
        comments.get(path).filter(|text| !text.is_empty()).cloned()
    }
}

/// A `//` comment's text: each line's single leading space dropped, trimmed.
fn clean_comment(text: &str) -> String {
    text.lines()
        .map(|line| line.strip_prefix(' ').unwrap_or(line).trim_end())
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_owned()
}

struct Generator {
    comments: Comments,
    schemas: BTreeMap<String, Value>,
    rule_extension: Option<ExtensionDescriptor>,
}

impl Generator {
    fn operation(&mut self, route: &Route, audience: Audience) -> Value {
        let method = &route.method;
        let service = method.parent_service();
        let description = self
            .comments
            .of(&method.parent_file(), method.path())
            .unwrap_or_default();
        let summary = description
            .split_terminator(['.', '\n'])
            .next()
            .unwrap_or_default();
        let input = method.input();
        let path_fields: Vec<Vec<String>> = route.path_fields().map(<[String]>::to_vec).collect();
        let mut parameters = Vec::new();
        for path in &path_fields {
            let Some(field) = resolve(&input, path) else {
                continue;
            };
            parameters.push(json!({
                "name": Route::openapi_parameter(path),
                "in": "path",
                "required": true,
                "schema": self.field_schema(&field),
                "description": self.field_description(&field).unwrap_or_default(),
            }));
        }
        let mut operation = Map::new();
        operation.insert(
            "operationId".into(),
            json!(format!("{}_{}", service.name(), method.name())),
        );
        operation.insert("tags".into(), json!([service.name()]));
        if !summary.is_empty() {
            operation.insert("summary".into(), json!(summary.trim()));
        }
        let mut description = description;
        if audience == Audience::Internal {
            description.push_str(
                "\n\nInternal: callable by Trellis services only; an end user's token is refused (403).",
            );
        }
        operation.insert("description".into(), json!(description.trim()));
        match route.body.as_deref() {
            Some("*") => {
                let mut schema = self.message_object(&input);
                // Fields bound by the path are not in the body.
                for path in &path_fields {
                    if let [name] = path.as_slice() {
                        if let Some(field) = resolve(&input, path) {
                            remove_property(&mut schema, field.json_name());
                        } else {
                            remove_property(&mut schema, name);
                        }
                    }
                }
                operation.insert(
                    "requestBody".into(),
                    json!({"required": true, "content": {"application/json": {"schema": schema}}}),
                );
            }
            Some(field_name) => {
                if let Some(field) = input.get_field_by_name(field_name) {
                    let schema = self.field_schema(&field);
                    operation.insert(
                        "requestBody".into(),
                        json!({"required": true, "content": {"application/json": {"schema": schema}}}),
                    );
                    self.query_parameters(&input, &path_fields, Some(&field), &mut parameters);
                }
            }
            None => self.query_parameters(&input, &path_fields, None, &mut parameters),
        }
        if !parameters.is_empty() {
            operation.insert("parameters".into(), Value::Array(parameters));
        }
        let output = method.output();
        let output_ref = self.reference(&output);
        let ok = if method.is_server_streaming() {
            json!({
                "description": format!(
                    "Server-Sent Events: each event's `data:` is one {} in JSON; a stream that \
                     ends with an error sends `event: error` with a google.rpc.Status.",
                    output.name()
                ),
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            })
        } else {
            json!({
                "description": format!("The {}.", output.name()),
                "content": {"application/json": {"schema": output_ref}},
            })
        };
        operation.insert(
            "responses".into(),
            json!({
                "200": ok,
                "default": {
                    "description": "An error: the HTTP status of the gRPC code (AIP-193) and a google.rpc.Status.",
                    "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{STATUS_SCHEMA}")}}},
                },
            }),
        );
        if audience == Audience::Public {
            operation.insert("security".into(), json!([]));
        }
        operation.insert(
            "x-trellis-access".into(),
            json!(match audience {
                Audience::Public => "public",
                Audience::Authenticated => "authenticated",
                Audience::Internal => "internal",
            }),
        );
        operation.insert(
            "x-grpc-method".into(),
            json!(route.grpc_path.trim_start_matches('/')),
        );
        Value::Object(operation)
    }

    /// Query parameters: the request's top-level fields a query string can set, except
    /// those bound by the path or the body.
    fn query_parameters(
        &mut self,
        input: &MessageDescriptor,
        path_fields: &[Vec<String>],
        body: Option<&FieldDescriptor>,
        parameters: &mut Vec<Value>,
    ) {
        for field in input.fields() {
            let bound = path_fields
                .iter()
                .any(|path| path.first().map(String::as_str) == Some(field.name()));
            if bound || body.is_some_and(|body| body.name() == field.name()) || field.is_map() {
                continue;
            }
            if let Kind::Message(message) = field.kind()
                && !is_string_valued(&message)
            {
                continue;
            }
            let mut parameter = json!({
                "name": field.json_name(),
                "in": "query",
                "schema": self.field_schema(&field),
                "description": self.field_description(&field).unwrap_or_default(),
            });
            if field.is_list() {
                parameter["style"] = json!("form");
                parameter["explode"] = json!(true);
            }
            parameters.push(parameter);
        }
    }

    fn field_description(&mut self, field: &FieldDescriptor) -> Option<String> {
        self.comments.of(&field.parent_file(), field.path())
    }

    /// `{"$ref": …}` to the message's schema, generating it (and what it refers to) once.
    fn reference(&mut self, message: &MessageDescriptor) -> Value {
        let name = message.full_name().to_owned();
        if !self.schemas.contains_key(&name) {
            // Placeholder first: recursive messages refer to themselves.
            self.schemas.insert(name.clone(), Value::Null);
            let schema = self.message_object(message);
            self.schemas.insert(name.clone(), schema);
        }
        json!({"$ref": format!("#/components/schemas/{name}")})
    }

    /// The object schema of `message`, its fields' `required` rules listed.
    fn message_object(&mut self, message: &MessageDescriptor) -> Value {
        let mut properties = Map::new();
        let mut required = Vec::new();
        for field in message.fields() {
            let mut schema = self.field_schema(&field);
            if let Some(text) = self.field_description(&field)
                && let Value::Object(object) = &mut schema
            {
                object.insert("description".into(), json!(text));
            }
            if self
                .rules(&field)
                .is_some_and(|rules| flag(&rules, "required"))
            {
                required.push(json!(field.json_name()));
            }
            properties.insert(field.json_name().to_owned(), schema);
        }
        let mut object = json!({
            "type": "object",
            "properties": properties,
            "additionalProperties": false,
        });
        if let Some(text) = self.comments.of(&message.parent_file(), message.path()) {
            object["description"] = json!(text);
        }
        if !required.is_empty() {
            object["required"] = Value::Array(required);
        }
        object
    }

    /// The schema of one field's JSON value, with its `buf.validate` rules.
    fn field_schema(&mut self, field: &FieldDescriptor) -> Value {
        let rules = self.rules(field);
        if field.is_map() {
            let Kind::Message(entry) = field.kind() else {
                return json!({});
            };
            let value = entry.map_entry_value_field();
            return json!({"type": "object", "additionalProperties": self.kind_schema(&value.kind(), None)});
        }
        if field.is_list() {
            let item_rules = rules
                .as_ref()
                .and_then(|rules| message_field(rules, "repeated"))
                .and_then(|repeated| message_field(&repeated, "items"));
            let mut schema = json!({
                "type": "array",
                "items": self.kind_schema(&field.kind(), item_rules.as_ref()),
            });
            if let Some(repeated) = rules
                .as_ref()
                .and_then(|rules| message_field(rules, "repeated"))
            {
                if let Some(min) = uint(&repeated, "min_items") {
                    schema["minItems"] = json!(min);
                }
                if let Some(max) = uint(&repeated, "max_items") {
                    schema["maxItems"] = json!(max);
                }
            }
            return schema;
        }
        self.kind_schema(&field.kind(), rules.as_ref())
    }

    /// The schema of a single value of `kind`, constrained by `rules` (a
    /// `buf.validate.FieldRules`).
    fn kind_schema(&mut self, kind: &Kind, rules: Option<&DynamicMessage>) -> Value {
        let mut schema = match kind {
            Kind::Double | Kind::Float => json!({"type": "number"}),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
                json!({"type": "integer", "format": "int32"})
            }
            Kind::Uint32 | Kind::Fixed32 => {
                json!({"type": "integer", "format": "int64", "minimum": 0})
            }
            // The proto3 JSON mapping writes 64-bit integers as strings.
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
                json!({"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"})
            }
            Kind::Uint64 | Kind::Fixed64 => {
                json!({"type": "string", "format": "uint64", "pattern": "^[0-9]+$"})
            }
            Kind::Bool => json!({"type": "boolean"}),
            Kind::String => json!({"type": "string"}),
            Kind::Bytes => json!({"type": "string", "contentEncoding": "base64"}),
            Kind::Enum(enumeration) => {
                let names: Vec<String> = enumeration
                    .values()
                    .map(|value| value.name().to_owned())
                    .collect();
                json!({"type": "string", "enum": names})
            }
            Kind::Message(message) => match message.full_name() {
                "google.protobuf.Timestamp" => json!({"type": "string", "format": "date-time"}),
                "google.protobuf.Duration" => {
                    json!({"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$"})
                }
                "google.protobuf.FieldMask" => {
                    json!({"type": "string", "description": "Comma-separated lowerCamelCase field paths."})
                }
                "google.protobuf.Struct" => json!({"type": "object"}),
                "google.protobuf.Value" => json!({}),
                "google.protobuf.ListValue" => json!({"type": "array"}),
                "google.protobuf.Empty" => json!({"type": "object", "additionalProperties": false}),
                "google.protobuf.StringValue" => json!({"type": "string"}),
                "google.protobuf.BoolValue" => json!({"type": "boolean"}),
                "google.protobuf.Int32Value" | "google.protobuf.UInt32Value" => {
                    json!({"type": "integer"})
                }
                "google.protobuf.DoubleValue" | "google.protobuf.FloatValue" => {
                    json!({"type": "number"})
                }
                "google.protobuf.Int64Value" | "google.protobuf.UInt64Value" => {
                    json!({"type": "string", "pattern": "^-?[0-9]+$"})
                }
                "google.protobuf.BytesValue" => {
                    json!({"type": "string", "contentEncoding": "base64"})
                }
                _ => return self.reference(message),
            },
        };
        if let Some(rules) = rules {
            apply_rules(&mut schema, kind, rules);
        }
        schema
    }

    /// The field's `buf.validate.field` rules, when it has any.
    fn rules(&self, field: &FieldDescriptor) -> Option<DynamicMessage> {
        crate::validation::field_rules(field, self.rule_extension.as_ref()?)
    }
}

/// The constraints JSON Schema can state for `rules` on a value of `kind`: string
/// lengths (`max_bytes` bounds `maxLength` too: a string has no more characters than
/// bytes), patterns and the `email`/`uuid` formats; numeric bounds.
fn apply_rules(schema: &mut Value, kind: &Kind, rules: &DynamicMessage) {
    let required = flag(rules, "required");
    match kind {
        Kind::String => {
            let Some(string) = message_field(rules, "string") else {
                if required {
                    schema["minLength"] = json!(1);
                }
                return;
            };
            let min = uint(&string, "min_len").or(required.then_some(1));
            if let Some(min) = min {
                schema["minLength"] = json!(min);
            }
            let max = [uint(&string, "max_len"), uint(&string, "max_bytes")]
                .into_iter()
                .flatten()
                .min();
            if let Some(max) = max {
                schema["maxLength"] = json!(max);
            }
            if let Some(pattern) = text(&string, "pattern") {
                schema["pattern"] = json!(pattern);
            }
            if flag(&string, "email") {
                schema["format"] = json!("email");
            }
            if flag(&string, "uuid") {
                schema["format"] = json!("uuid");
            }
        }
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 | Kind::Uint32 | Kind::Fixed32 => {
            let name = match kind {
                Kind::Int32 => "int32",
                Kind::Sint32 => "sint32",
                Kind::Sfixed32 => "sfixed32",
                Kind::Uint32 => "uint32",
                _ => "fixed32",
            };
            if let Some(numbers) = message_field(rules, name) {
                for (rule, keyword) in [
                    ("gte", "minimum"),
                    ("gt", "exclusiveMinimum"),
                    ("lte", "maximum"),
                    ("lt", "exclusiveMaximum"),
                ] {
                    if let Some(bound) = number(&numbers, rule) {
                        schema[keyword] = json!(bound);
                    }
                }
            }
        }
        _ => {}
    }
}

fn message_field(message: &DynamicMessage, name: &str) -> Option<DynamicMessage> {
    match rule(message, name)? {
        ProtoValue::Message(inner) => Some(inner),
        _ => None,
    }
}

fn flag(message: &DynamicMessage, name: &str) -> bool {
    rule(message, name).and_then(|value| value.as_bool()) == Some(true)
}

fn uint(message: &DynamicMessage, name: &str) -> Option<u64> {
    rule(message, name)?.as_u64()
}

fn number(message: &DynamicMessage, name: &str) -> Option<i64> {
    match rule(message, name)? {
        ProtoValue::I32(value) => Some(i64::from(value)),
        ProtoValue::U32(value) => Some(i64::from(value)),
        ProtoValue::I64(value) => Some(value),
        _ => None,
    }
}

fn text(message: &DynamicMessage, name: &str) -> Option<String> {
    match rule(message, name)? {
        ProtoValue::String(text) => Some(text),
        _ => None,
    }
}

fn remove_property(schema: &mut Value, name: &str) {
    if let Some(properties) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        properties.remove(name);
    }
    if let Some(required) = schema.get_mut("required").and_then(Value::as_array_mut) {
        required.retain(|entry| entry != name);
        if required.is_empty()
            && let Some(object) = schema.as_object_mut()
        {
            object.remove("required");
        }
    }
}

/// `google.rpc.Status` in JSON, as every error body is.
fn status_schema() -> Value {
    json!({
        "type": "object",
        "description": "The gRPC status of a failed call (google.rpc.Status in the proto3 JSON mapping).",
        "properties": {
            "code": {"type": "integer", "description": "The google.rpc.Code, e.g. 3 for INVALID_ARGUMENT."},
            "message": {"type": "string", "description": "What went wrong, for a developer to read."},
            "details": {
                "type": "array",
                "description": "Standard error details (google.rpc.BadRequest, RetryInfo, …), each with its @type.",
                "items": {
                    "type": "object",
                    "properties": {"@type": {"type": "string"}},
                    "required": ["@type"],
                },
            },
        },
        "required": ["code", "message"],
    })
}
