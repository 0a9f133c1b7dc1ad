//! Building `tonic::Status` values the same way in every service: validation failures
//! carry `google.rpc.BadRequest` field violations, and an INTERNAL never carries the
//! underlying error (it is logged inside the request's span instead).

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

/// One invalid field of a request (`google.rpc.BadRequest.FieldViolation`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field's path in the request, e.g. `user.email` (AIP-193).
    pub field: String,
    /// What is wrong with it, for a person to read.
    pub description: String,
}

impl FieldViolation {
    /// A violation of `field`.
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

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

/// Parses a UUID request field (RFC 9562 text form).
///
/// # Errors
/// A violation of `field`: `is required` when empty, `is not a valid UUID` otherwise.
pub fn uuid_field(field: impl Into<String>, raw: &str) -> Result<uuid::Uuid, FieldViolation> {
    if raw.is_empty() {
        return Err(FieldViolation::new(field, "is required"));
    }
    uuid::Uuid::parse_str(raw).map_err(|_| FieldViolation::new(field, "is not a valid UUID"))
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
    fn internal_hides_the_error_message() {
        let err = std::io::Error::other("password=hunter2 at db:5432");
        let status = internal(&err);
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("hunter2"));
    }
}
