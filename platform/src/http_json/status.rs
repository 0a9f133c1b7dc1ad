//! A gRPC status as an HTTP response: the status code by AIP-193's mapping (the table of
//! `google.rpc.Code`), and the body as the `google.rpc.Status` message in the proto3 JSON
//! mapping, its standard details (`google.rpc.BadRequest`, `RetryInfo`, `ErrorInfo`, …)
//! with their `@type`.

use serde_json::{Value, json};
use tonic::Code;
use tonic_types::StatusExt as _;

/// The HTTP status of a gRPC code (AIP-193; `google/rpc/code.proto`'s table).
pub fn http_status(code: Code) -> http::StatusCode {
    use http::StatusCode as S;
    match code {
        Code::Ok => S::OK,
        // 499 Client Closed Request, as google.rpc.Code documents for CANCELLED.
        Code::Cancelled => S::from_u16(499).unwrap_or(S::BAD_REQUEST),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => S::BAD_REQUEST,
        Code::DeadlineExceeded => S::GATEWAY_TIMEOUT,
        Code::NotFound => S::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => S::CONFLICT,
        Code::PermissionDenied => S::FORBIDDEN,
        Code::Unauthenticated => S::UNAUTHORIZED,
        Code::ResourceExhausted => S::TOO_MANY_REQUESTS,
        Code::Unimplemented => S::NOT_IMPLEMENTED,
        Code::Unavailable => S::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => S::INTERNAL_SERVER_ERROR,
    }
}

/// The `google.rpc.Status` JSON of `status`: `{"code": 3, "message": "…", "details":
/// [{"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": […]}]}`.
pub fn status_json(status: &tonic::Status) -> Value {
    let mut details = Vec::new();
    let error_details = status.get_error_details();
    if let Some(bad_request) = error_details.bad_request() {
        let violations: Vec<Value> = bad_request
            .field_violations
            .iter()
            .map(
                |violation| json!({"field": violation.field, "description": violation.description}),
            )
            .collect();
        details.push(json!({
            "@type": tonic_types::BadRequest::TYPE_URL,
            "fieldViolations": violations,
        }));
    }
    if let Some(delay) = error_details.retry_info().and_then(|info| info.retry_delay) {
        details.push(json!({
            "@type": tonic_types::RetryInfo::TYPE_URL,
            "retryDelay": duration_json(delay),
        }));
    }
    if let Some(info) = error_details.error_info() {
        details.push(json!({
            "@type": tonic_types::ErrorInfo::TYPE_URL,
            "reason": info.reason,
            "domain": info.domain,
            "metadata": info.metadata,
        }));
    }
    if let Some(failure) = error_details.precondition_failure() {
        let violations: Vec<Value> = failure
            .violations
            .iter()
            .map(|v| json!({"type": v.r#type, "subject": v.subject, "description": v.description}))
            .collect();
        details.push(json!({
            "@type": tonic_types::PreconditionFailure::TYPE_URL,
            "violations": violations,
        }));
    }
    if let Some(info) = error_details.resource_info() {
        details.push(json!({
            "@type": tonic_types::ResourceInfo::TYPE_URL,
            "resourceType": info.resource_type,
            "resourceName": info.resource_name,
            "owner": info.owner,
            "description": info.description,
        }));
    }
    let mut body = json!({
        "code": status.code() as i32,
        "message": status.message(),
    });
    if !details.is_empty() {
        body["details"] = Value::Array(details);
    }
    body
}

/// Whole seconds to wait before retrying, rounded up (RFC 9110 §10.2.3 `Retry-After`),
/// from the status's `RetryInfo`.
pub fn retry_after_seconds(status: &tonic::Status) -> Option<u64> {
    let delay = status.get_error_details().retry_info()?.retry_delay?;
    Some(delay.as_secs() + u64::from(delay.subsec_nanos() > 0))
}

/// A `google.protobuf.Duration` in JSON: seconds with up to 9 fractional digits and `s`.
fn duration_json(delay: std::time::Duration) -> String {
    let nanos = delay.subsec_nanos();
    if nanos == 0 {
        format!("{}s", delay.as_secs())
    } else {
        let fraction = format!("{nanos:09}");
        format!("{}.{}s", delay.as_secs(), fraction.trim_end_matches('0'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{FieldViolation, invalid_argument, resource_exhausted};

    #[test]
    fn every_code_maps_as_aip_193_says() {
        let table = [
            (Code::Ok, 200),
            (Code::Cancelled, 499),
            (Code::Unknown, 500),
            (Code::InvalidArgument, 400),
            (Code::DeadlineExceeded, 504),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::PermissionDenied, 403),
            (Code::ResourceExhausted, 429),
            (Code::FailedPrecondition, 400),
            (Code::Aborted, 409),
            (Code::OutOfRange, 400),
            (Code::Unimplemented, 501),
            (Code::Internal, 500),
            (Code::Unavailable, 503),
            (Code::DataLoss, 500),
            (Code::Unauthenticated, 401),
        ];
        for (code, expected) in table {
            assert_eq!(http_status(code).as_u16(), expected, "{code:?}");
        }
    }

    #[test]
    fn a_status_body_carries_its_details_in_json() {
        let status = invalid_argument(&[FieldViolation::new("email", "is required")]);
        assert_eq!(
            status_json(&status),
            json!({
                "code": 3,
                "message": "invalid email: is required",
                "details": [{
                    "@type": "type.googleapis.com/google.rpc.BadRequest",
                    "fieldViolations": [{"field": "email", "description": "is required"}],
                }],
            })
        );
        let status = resource_exhausted("slow down", std::time::Duration::from_millis(1500));
        assert_eq!(
            status_json(&status)["details"][0],
            json!({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.5s"})
        );
        assert_eq!(retry_after_seconds(&status), Some(2));
    }
}
