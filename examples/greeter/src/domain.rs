//! The greeter's rules: what a valid name is and what a greeting says. No gRPC, no SQL:
//! storage is reached through [`GreetingRepository`].

use std::future::Future;

use chrono::{DateTime, Utc};
use trellis_platform::status::FieldViolation;
use trellis_platform::validation::text_field;
use uuid::Uuid;

/// Longest name, in characters.
pub const MAX_NAME_CHARS: usize = 100;

/// A stored greeting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    /// UUIDv7: id order is creation order.
    pub id: Uuid,
    /// Whom it greets.
    pub name: String,
    /// What it says.
    pub message: String,
    /// When it was made.
    pub create_time: DateTime<Utc>,
}

/// Everything that can go wrong in a greeter operation.
#[derive(Debug, thiserror::Error)]
pub enum GreeterError {
    /// The request broke a field rule.
    #[error("invalid request")]
    Invalid(Vec<FieldViolation>),
    /// Storage failed; the cause is for the log, never for the caller.
    #[error("storage failed")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Storage of greetings, implemented by [`crate::storage`].
pub trait GreetingRepository: Send + Sync + 'static {
    /// Stores `greeting`.
    fn insert(&self, greeting: &Greeting) -> impl Future<Output = Result<(), GreeterError>> + Send;
    /// Greetings (of `name` only, when given) with an id above `after`, oldest first, at
    /// most `limit`.
    fn after(
        &self,
        name: Option<&str>,
        after: Option<Uuid>,
        limit: u64,
    ) -> impl Future<Output = Result<Vec<Greeting>, GreeterError>> + Send;
}

/// The greeter's operations.
#[derive(Debug)]
pub struct Greetings<R> {
    repository: R,
}

impl<R: GreetingRepository> Greetings<R> {
    /// The operations over `repository`.
    pub fn new(repository: R) -> Self {
        Self { repository }
    }

    /// Greets `name` (1 to [`MAX_NAME_CHARS`] characters, no control characters) and
    /// stores the greeting.
    ///
    /// # Errors
    /// [`GreeterError::Invalid`] naming `name`; [`GreeterError::Storage`].
    pub async fn say_hello(&self, name: &str) -> Result<Greeting, GreeterError> {
        let name = validate_name("name", name)?;
        let greeting = Greeting {
            id: Uuid::now_v7(),
            name: name.to_owned(),
            message: format!("Hello, {name}!"),
            create_time: trellis_platform::data::now(),
        };
        self.repository.insert(&greeting).await?;
        Ok(greeting)
    }

    /// One batch of stored greetings after `after` (see [`GreetingRepository::after`]);
    /// an empty `name` means every name.
    ///
    /// # Errors
    /// [`GreeterError::Invalid`] for a malformed name filter; [`GreeterError::Storage`].
    pub async fn batch_after(
        &self,
        name: &str,
        after: Option<Uuid>,
        limit: u64,
    ) -> Result<Vec<Greeting>, GreeterError> {
        let name = match name {
            "" => None,
            name => Some(validate_name("name", name)?),
        };
        self.repository.after(name, after, limit).await
    }
}

fn validate_name<'a>(field: &str, name: &'a str) -> Result<&'a str, GreeterError> {
    text_field(field, name, MAX_NAME_CHARS, false)
        .map(|()| name)
        .map_err(|violation| GreeterError::Invalid(vec![violation]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_for_length_and_control_characters() {
        assert!(validate_name("name", "Ada").is_ok());
        for bad in ["", "a\u{0}b", &"x".repeat(MAX_NAME_CHARS + 1)] {
            let Err(GreeterError::Invalid(violations)) = validate_name("name", bad) else {
                panic!("{bad:?} was accepted");
            };
            assert_eq!(violations[0].field, "name");
        }
    }
}
