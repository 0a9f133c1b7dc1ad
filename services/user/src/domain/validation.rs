//! Field rules for user input. Each type can only hold a valid value.

use email_address::{EmailAddress, Options};
use trellis_platform::validation::{FieldViolation, text_field};

/// Most characters in a display name.
pub const DISPLAY_NAME_MAX_CHARS: usize = 100;
/// Fewest bytes in a password (OWASP ASVS 5.0 V6.2.1 asks for at least 8; we ask 12).
pub const PASSWORD_MIN_BYTES: usize = 12;
/// Most bytes in a password: bounds the hashing work one request can cause.
pub const PASSWORD_MAX_BYTES: usize = 1024;
/// Most bytes in an email address (RFC 5321 §4.5.3.1.3 path limit).
pub const EMAIL_MAX_BYTES: usize = 254;

/// An email address as entered, surrounding whitespace trimmed, with syntax per RFC 5322
/// (no display text, no domain literals), and its canonical form: the whole address
/// lower-cased ([`str::to_lowercase`], Unicode-aware).
///
/// Addresses are compared on the canonical form only, so `Ann@Example.com` and
/// `ann@example.com` are one address. RFC 5321 §2.4 lets a mail server treat local parts
/// as case-sensitive, but no common provider does, and an address that differs from
/// another only by case is far more often a typo or an impersonation than a second person
/// (OWASP Authentication Cheat Sheet: user ids are case-insensitive).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email {
    address: String,
    canonical: String,
}

impl Email {
    /// Validates and trims `raw`; errors name `field`.
    ///
    /// # Errors
    /// A [`FieldViolation`] when `raw` is not an address.
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, FieldViolation> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(FieldViolation::new(field, "is required"));
        }
        if trimmed.len() > EMAIL_MAX_BYTES {
            return Err(FieldViolation::new(
                field,
                format!("must be at most {EMAIL_MAX_BYTES} bytes"),
            ));
        }
        let options = Options::default()
            .without_display_text()
            .without_domain_literal();
        EmailAddress::parse_with_options(trimmed, options)
            .map_err(|_| FieldViolation::new(field, "is not a valid email address"))?;
        Ok(Self::from_stored(trimmed.to_owned()))
    }

    /// The address as entered (trimmed).
    pub fn as_str(&self) -> &str {
        &self.address
    }

    /// The form addresses are compared on: the whole address lower-cased.
    pub fn canonical(&self) -> &str {
        &self.canonical
    }

    /// Wraps an address read back from storage, where it was stored validated.
    pub fn from_stored(address: String) -> Self {
        Self {
            canonical: canonical_email(&address),
            address,
        }
    }
}

/// The canonical form of an (already trimmed) address: the whole address lower-cased. The
/// migration that introduced `users.email_canonical` backfills it with this function, so
/// stored and computed forms agree.
pub fn canonical_email(address: &str) -> String {
    address.to_lowercase()
}

/// A display name: trimmed, 1 to 100 characters (Unicode scalar values), no control
/// characters (Unicode category Cc, which includes NUL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayName(String);

impl DisplayName {
    /// Validates `raw`; errors name `field`.
    ///
    /// # Errors
    /// A [`FieldViolation`] when `raw` breaks a rule.
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, FieldViolation> {
        let trimmed = raw.trim();
        text_field(field, trimmed, DISPLAY_NAME_MAX_CHARS, false)?;
        Ok(Self(trimmed.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Wraps a name read back from storage.
    pub fn from_stored(stored: String) -> Self {
        Self(stored)
    }
}

/// A new password: 12 to 1024 bytes. Its `Debug` output is redacted.
#[derive(Clone)]
pub struct Password<'a>(&'a str);

impl std::fmt::Debug for Password<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password([redacted])")
    }
}

impl<'a> Password<'a> {
    /// Validates `raw`; errors name `field`.
    ///
    /// # Errors
    /// A [`FieldViolation`] when `raw` is too short or too long.
    pub fn parse(field: &'static str, raw: &'a str) -> Result<Self, FieldViolation> {
        if raw.len() < PASSWORD_MIN_BYTES || raw.len() > PASSWORD_MAX_BYTES {
            return Err(FieldViolation::new(
                field,
                format!("must be {PASSWORD_MIN_BYTES} to {PASSWORD_MAX_BYTES} bytes"),
            ));
        }
        Ok(Self(raw))
    }

    /// The password.
    pub fn expose(&self) -> &'a str {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_is_kept_as_entered_and_compared_lower_cased_whole() {
        let email = Email::parse("email", "  Ada.Lovelace@Example.COM \n");
        assert_eq!(
            email.as_ref().map(|e| (e.as_str(), e.canonical())),
            Ok(("Ada.Lovelace@Example.COM", "ada.lovelace@example.com"))
        );
        // Case variants of the local part are one address.
        let variants = [
            "ADMIN@example.com",
            "admin@EXAMPLE.com",
            "Admin@Example.Com",
        ]
        .map(|raw| Email::parse("email", raw).map(|e| e.canonical().to_owned()));
        assert!(
            variants
                .iter()
                .all(|c| c.as_deref() == Ok("admin@example.com")),
            "{variants:?}"
        );
    }

    #[test]
    fn malformed_emails_are_rejected() {
        for raw in [
            "",
            "   ",
            "ada",
            "ada@",
            "@example.com",
            "Ada <ada@example.com>",
            "ada@[127.0.0.1]",
            "a\0b@example.com",
        ] {
            assert!(Email::parse("email", raw).is_err(), "{raw:?} was accepted");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(Email::parse("email", &long).is_err());
    }

    #[test]
    fn display_name_counts_characters_not_bytes() {
        assert!(DisplayName::parse("display_name", &"é".repeat(100)).is_ok());
        assert!(DisplayName::parse("display_name", &"é".repeat(101)).is_err());
        assert!(DisplayName::parse("display_name", "A").is_ok());
        assert!(DisplayName::parse("display_name", "").is_err());
        assert!(DisplayName::parse("display_name", "   ").is_err());
    }

    #[test]
    fn display_name_rejects_control_characters() {
        for raw in ["Ada\0", "Ada\nLovelace", "Ada\u{7f}", "\u{9b}x"] {
            let err = DisplayName::parse("display_name", raw);
            assert_eq!(
                err.map_err(|v| v.description),
                Err("must not contain control characters".to_owned()),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn password_length_is_measured_in_bytes() {
        assert!(Password::parse("password", &"a".repeat(11)).is_err());
        assert!(Password::parse("password", &"a".repeat(12)).is_ok());
        assert!(Password::parse("password", &"a".repeat(1024)).is_ok());
        assert!(Password::parse("password", &"a".repeat(1025)).is_err());
        // Six two-byte characters are twelve bytes.
        assert!(Password::parse("password", &"é".repeat(6)).is_ok());
    }

    #[test]
    fn password_debug_is_redacted() {
        let password =
            Password::parse("password", "correct horse battery").map(|p| format!("{p:?}"));
        assert_eq!(password.as_deref(), Ok("Password([redacted])"));
    }
}
