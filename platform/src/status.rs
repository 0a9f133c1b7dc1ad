//! Building `tonic::Status` values the same way in every service: validation failures
//! carry `google.rpc.BadRequest` field violations, and an INTERNAL never carries the
//! underlying error (it is logged inside the request's span instead).

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};
use uuid::Uuid;

// Defined in the gRPC-free `validation` module so domains can use them; re-exported here
// because every INVALID_ARGUMENT is built from them.
pub use crate::validation::{FieldViolation, uuid_field};

/// INVALID_ARGUMENT with a `google.rpc.BadRequest` detail listing `violations`.
///
/// The message names the fields, so a client that ignores details still learns which.
pub fn invalid_argument(violations: &[FieldViolation]) -> Status {
    let mut details = ErrorDetails::new();
    for violation in violations {
        details.add_bad_request_violation(&violation.field, &violation.description);
    }
    let message = match violations {
        [] => "invalid request".to_owned(),
        [one] => format!("invalid {}: {}", one.field, one.description),
        many => {
            let fields: Vec<_> = many.iter().map(|v| v.field.as_str()).collect();
            format!("invalid fields: {}", fields.join(", "))
        }
    };
    Status::with_error_details(Code::InvalidArgument, message, details)
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

    #[test]
    fn internal_hides_the_error_message() {
        let err = std::io::Error::other("password=hunter2 at db:5432");
        let status = internal(&err);
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("hunter2"));
    }
}
