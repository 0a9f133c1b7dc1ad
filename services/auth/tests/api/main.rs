//! The auth service's API tests: each starts the real service in-process on
//! 127.0.0.1:0 with an in-memory SQLite database, its `user` peer an in-process fake
//! user service, and drives it through the generated gRPC client. Set `TEST_LOG=1` to
//! see the service's logs.

// Helpers panic on purpose: a failed expectation is the test failing.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod fakes;
mod helpers;

mod errors;
mod forwarded;
mod health;
mod hostile;
mod internal;
mod login;
mod notices;
mod roles;
mod service_tokens;
mod sessions;
mod signing_keys;
mod throttle;
