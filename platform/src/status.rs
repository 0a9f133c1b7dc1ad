//! Building `tonic::Status` values the same way in every service: validation failures
//! carry `google.rpc.BadRequest` field violations, and an INTERNAL never carries the
//! underlying error (it is logged inside the request's span instead).
//!
//! A status travels in HTTP/2 headers (`grpc-message`, `grpc-status-details-bin`), and
//! gRPC clients refuse response headers above their limit (16 KiB in grpc-go and tonic,
//! 8 KiB in some proxies). So a status echoes at most [`MAX_ECHOED_VIOLATIONS`]
//! violations, each field name and description cut to [`MAX_ECHOED_TEXT_BYTES`], within
//! a byte budget that keeps message plus details under 8 KiB however large the request.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};
use uuid::Uuid;

// Defined in the gRPC-free `validation` module so domains can use them; re-exported here
// because every INVALID_ARGUMENT is built from them.
pub use crate::validation::{FieldViolation, uuid_field};

/// Most field violations one status echoes; the message counts the rest.
pub const MAX_ECHOED_VIOLATIONS: usize = 100;

/// Longest field name or description echoed, in bytes; longer ones are cut at a
/// character boundary and end with `…`.
pub const MAX_ECHOED_TEXT_BYTES: usize = 128;

/// Budget of the echoed violations' field names and descriptions together, in bytes
/// (before protobuf framing and base64: about 4.5 KiB on the wire at most).
const DETAILS_BUDGET_BYTES: usize = 3 * 1024;

/// Longest status message built here, in bytes (before percent-encoding, which can
/// triple non-ASCII bytes: 1.5 KiB on the wire at most).
const MAX_MESSAGE_BYTES: usize = 512;

/// INVALID_ARGUMENT with a `google.rpc.BadRequest` detail listing `violations`.
///
/// The message names the fields, so a client that ignores details still learns which.
/// At most [`MAX_ECHOED_VIOLATIONS`] are echoed (fewer when their text is long), the
/// message ending `… and N more` for the rest; message and details together stay well
/// under 8 KiB.
pub fn invalid_argument(violations: &[FieldViolation]) -> Status {
    let mut details = ErrorDetails::new();
    let mut budget = DETAILS_BUDGET_BYTES;
    let mut echoed = 0;
    for violation in violations.iter().take(MAX_ECHOED_VIOLATIONS) {
        let field = clip(&violation.field, MAX_ECHOED_TEXT_BYTES);
        let description = clip(&violation.description, MAX_ECHOED_TEXT_BYTES);
        let Some(left) = budget.checked_sub(field.len() + description.len()) else {
            break;
        };
        budget = left;
        details.add_bad_request_violation(field, description);
        echoed += 1;
    }
    let message = match violations {
        [] => "invalid request".to_owned(),
        [one] => format!(
            "invalid {}: {}",
            clip(&one.field, MAX_ECHOED_TEXT_BYTES),
            clip(&one.description, MAX_ECHOED_TEXT_BYTES)
        ),
        many => {
            let mut message = "invalid fields: ".to_owned();
            let mut named = 0;
            for violation in &many[..echoed] {
                let field = clip(&violation.field, MAX_ECHOED_TEXT_BYTES);
                // Leave room for the count that follows.
                if message.len() + field.len() + 2 > MAX_MESSAGE_BYTES - 32 {
                    break;
                }
                if named > 0 {
                    message.push_str(", ");
                }
                message.push_str(&field);
                named += 1;
            }
            if named < many.len() {
                message.push_str(&format!(" … and {} more", many.len() - named));
            }
            message
        }
    };
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// RESOURCE_EXHAUSTED with a `google.rpc.RetryInfo` saying when to try again (the gRPC
/// error model's advice for load shedding and rate limits).
pub fn resource_exhausted(message: &str, retry_after: std::time::Duration) -> Status {
    Status::with_error_details(
        Code::ResourceExhausted,
        message,
        ErrorDetails::with_retry_info(Some(retry_after)),
    )
}

/// Checks a repeated request field's length against its cap.
///
/// # Errors
/// INVALID_ARGUMENT with one violation of `field` (`has N items; at most MAX are
/// allowed`) when `len > max`.
pub fn check_max_items(field: &str, len: usize, max: usize) -> Result<(), Status> {
    if len <= max {
        return Ok(());
    }
    Err(invalid_argument(&[FieldViolation::new(
        field,
        format!("has {len} items; at most {max} are allowed"),
    )]))
}

/// `text` cut to at most `max` bytes at a character boundary, marked with `…` when cut.
fn clip(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let ellipsis = "…";
    let end = text.floor_char_boundary(max - ellipsis.len());
    format!("{}{ellipsis}", &text[..end]).into()
}

/// INTERNAL with a fixed message. The error itself is logged at ERROR level inside the
/// current span (the request's span, with its method and request id) and never sent.
pub fn internal(error: &(dyn std::error::Error + 'static)) -> Status {
    tracing::error!(error = %ErrorChain(error), "internal error");
    Status::internal("internal error")
}

/// Parses the UUID request field `field` (RFC 9562 text form).
///
/// # Errors
/// INVALID_ARGUMENT with one `google.rpc.BadRequest` violation of `field` (see
/// [`uuid_field`] for its descriptions).
pub fn parse_id(field: &str, raw: &str) -> Result<Uuid, Status> {
    uuid_field(field, raw).map_err(|violation| invalid_argument(&[violation]))
}

/// Parses a repeated UUID request field, in order. Elements are named
/// `{field_prefix}[{index}]` (AIP-193), e.g. `ids[0]`.
///
/// # Errors
/// INVALID_ARGUMENT listing a violation for every element that is not a UUID, not only
/// the first.
pub fn parse_ids(field_prefix: &str, raw: &[String]) -> Result<Vec<Uuid>, Status> {
    let mut ids = Vec::with_capacity(raw.len());
    let mut violations = Vec::new();
    for (i, id) in raw.iter().enumerate() {
        match uuid_field(format!("{field_prefix}[{i}]"), id) {
            Ok(id) => ids.push(id),
            Err(violation) => violations.push(violation),
        }
    }
    if violations.is_empty() {
        Ok(ids)
    } else {
        Err(invalid_argument(&violations))
    }
}

/// Displays an error with its sources, `outer: inner: innermost`.
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(err) = source {
            write!(f, ": {err}")?;
            source = err.source();
        }
        Ok(())
    }
}

/// The gRPC status code a header or trailer map carries in `grpc-status` (the trailers,
/// or the headers of a trailers-only response: gRPC over HTTP/2, "Responses"), if any.
pub fn grpc_status(headers: &http::HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .map(|value| tonic::Code::from_bytes(value.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_carries_every_field_violation() {
        let status = invalid_argument(&[
            FieldViolation::new("email", "is not an email address"),
            FieldViolation::new("password", "must be at least 12 bytes"),
        ]);
        assert_eq!(status.code(), Code::InvalidArgument);
        let fields: Vec<_> = status
            .get_details_bad_request()
            .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
            .unwrap_or_default();
        assert_eq!(fields, ["email", "password"]);
    }

    #[test]
    fn parse_id_answers_invalid_argument_naming_the_field() {
        let status = parse_id("user.id", "nope").err();
        assert_eq!(
            status.as_ref().map(Status::code),
            Some(Code::InvalidArgument)
        );
        assert_eq!(
            status.as_ref().map(Status::message),
            Some("invalid user.id: is not a valid UUID")
        );
    }

    #[test]
    fn parse_ids_keeps_order_and_names_every_bad_element() {
        let good = [Uuid::now_v7(), Uuid::now_v7()];
        let raw: Vec<String> = good.iter().map(Uuid::to_string).collect();
        assert_eq!(parse_ids("ids", &raw).ok(), Some(good.to_vec()));

        let raw = ["x".to_owned(), good[0].to_string(), String::new()];
        let fields: Vec<_> = parse_ids("ids", &raw)
            .err()
            .and_then(|status| status.get_details_bad_request())
            .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
            .unwrap_or_default();
        assert_eq!(fields, ["ids[0]", "ids[2]"]);
    }

    /// The size of `status` on the wire: its `grpc-message` and
    /// `grpc-status-details-bin` headers as tonic sends them.
    fn wire_bytes(status: &Status) -> usize {
        let response = status.clone().into_http::<()>();
        ["grpc-message", "grpc-status-details-bin"]
            .iter()
            .filter_map(|name| response.headers().get(*name))
            .map(http::HeaderValue::len)
            .sum()
    }

    /// The violations `status` echoes, asserting it fits in 8 KiB on the wire.
    fn echoed_within_8_kib(status: &Status) -> Vec<tonic_types::FieldViolation> {
        let bytes = wire_bytes(status);
        assert!(bytes < 8 * 1024, "{bytes} bytes");
        status
            .get_details_bad_request()
            .map(|b| b.field_violations)
            .unwrap_or_default()
    }

    #[test]
    fn many_violations_are_capped_and_counted_under_8_kib() {
        let violations: Vec<_> = (0..200_000)
            .map(|i| FieldViolation::new(format!("ids[{i}]"), "is required"))
            .collect();
        let status = invalid_argument(&violations);
        let fields = echoed_within_8_kib(&status);
        assert_eq!(fields.len(), MAX_ECHOED_VIOLATIONS);
        assert_eq!(fields[0].field, "ids[0]");
        assert!(
            status
                .message()
                .starts_with("invalid fields: ids[0], ids[1]")
        );
        assert!(status.message().ends_with("more"), "{}", status.message());
    }

    #[test]
    fn long_field_names_and_descriptions_are_cut_at_a_char_boundary() {
        let long = "é".repeat(10_000);
        let violations: Vec<_> = (0..150)
            .map(|_| FieldViolation::new(long.clone(), long.clone()))
            .collect();
        let echoed = echoed_within_8_kib(&invalid_argument(&violations));
        assert!(!echoed.is_empty());
        assert!(echoed.iter().all(|v| v.field.len() <= MAX_ECHOED_TEXT_BYTES
            && v.field.ends_with('…')
            && v.description.len() <= MAX_ECHOED_TEXT_BYTES));

        let one = echoed_within_8_kib(&invalid_argument(&[FieldViolation::new(
            long.clone(),
            long,
        )]));
        assert_eq!(one.len(), 1);
    }

    #[test]
    fn check_max_items_rejects_only_above_the_cap() {
        assert!(check_max_items("ids", 1000, 1000).is_ok());
        let status = check_max_items("ids", 1001, 1000).err();
        assert_eq!(
            status.as_ref().map(Status::code),
            Some(Code::InvalidArgument)
        );
        assert_eq!(
            status.as_ref().map(Status::message),
            Some("invalid ids: has 1001 items; at most 1000 are allowed")
        );
    }

    #[test]
    fn internal_hides_the_error_message() {
        let err = std::io::Error::other("password=hunter2 at db:5432");
        let status = internal(&err);
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("hunter2"));
    }
}
