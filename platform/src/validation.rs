//! Field validation shared by every service's domain: the one type a broken field rule
//! is reported as, and parsers for common request fields.
//!
//! A leaf module: plain data, no gRPC. The gRPC layer turns violations into
//! INVALID_ARGUMENT statuses with [`crate::status::invalid_argument`]. Also where the
//! contract's own rules (`buf.validate` options) are read from descriptors, for the
//! server's checks and the OpenAPI document alike.

/// One invalid field of a request; sent as a `google.rpc.BadRequest.FieldViolation`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field's path in the request, e.g. `user.email` or `ids[2]` (AIP-193).
    pub field: String,
    /// What is wrong with it, lowercase, for a person to read, e.g. `is required`.
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

/// Checks a free-text field: 1 to `max_chars` characters (Unicode scalar values) and no
/// control characters, except newlines and tabs when `allow_newlines`.
///
/// # Errors
/// A violation of `field`: `must be 1 to N characters` or `must not contain control
/// characters`.
pub fn text_field(
    field: impl Into<String>,
    value: &str,
    max_chars: usize,
    allow_newlines: bool,
) -> Result<(), FieldViolation> {
    let chars = value.chars().count();
    if chars == 0 || chars > max_chars {
        return Err(FieldViolation::new(
            field,
            format!("must be 1 to {max_chars} characters"),
        ));
    }
    if value
        .chars()
        .any(|c| c.is_control() && !(allow_newlines && (c == '\n' || c == '\t')))
    {
        return Err(FieldViolation::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// The `buf.validate.field` rules of `field` (protovalidate's `FieldRules`), read with
/// `extension` (the pool's `buf.validate.field`); `None` when it has none.
pub(crate) fn field_rules(
    field: &prost_reflect::FieldDescriptor,
    extension: &prost_reflect::ExtensionDescriptor,
) -> Option<prost_reflect::DynamicMessage> {
    let options = field.options();
    if !options.has_extension(extension) {
        return None;
    }
    options.get_extension(extension).as_message().cloned()
}

/// The field `name` of a rules message when it is set (an unset rule is no rule, even
/// where its default value would read as one).
pub(crate) fn rule(
    rules: &prost_reflect::DynamicMessage,
    name: &str,
) -> Option<prost_reflect::Value> {
    if !rules.has_field_by_name(name) {
        return None;
    }
    rules
        .get_field_by_name(name)
        .map(std::borrow::Cow::into_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_field_names_the_field_and_says_what_is_wrong() {
        assert_eq!(
            uuid_field("id", ""),
            Err(FieldViolation::new("id", "is required"))
        );
        assert_eq!(
            uuid_field("user.id", "not-a-uuid"),
            Err(FieldViolation::new("user.id", "is not a valid UUID"))
        );
        let id = uuid::Uuid::now_v7();
        assert_eq!(uuid_field("id", &id.to_string()), Ok(id));
    }

    #[test]
    fn text_field_counts_characters_and_refuses_control_characters() {
        assert_eq!(text_field("name", "Ada", 3, false), Ok(()));
        assert_eq!(text_field("name", "äöü", 3, false), Ok(()));
        assert_eq!(
            text_field("name", "Adam", 3, false),
            Err(FieldViolation::new("name", "must be 1 to 3 characters"))
        );
        assert_eq!(
            text_field("name", "", 3, false),
            Err(FieldViolation::new("name", "must be 1 to 3 characters"))
        );
        assert_eq!(
            text_field("body", "a\nb", 3, false),
            Err(FieldViolation::new(
                "body",
                "must not contain control characters"
            ))
        );
        assert_eq!(text_field("body", "a\nb", 3, true), Ok(()));
    }
}
