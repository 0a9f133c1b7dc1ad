//! The user service's API tests: each starts the real service in-process on
//! 127.0.0.1:0 with an in-memory SQLite database and drives it through the generated
//! gRPC clients. Set `TEST_LOG=1` to see the service's logs.

// Helpers panic on purpose: a failed expectation is the test failing.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod helpers;

mod admin;
mod admission;
mod authz;
mod credentials;
mod deletion;
mod errors;
mod forwarded;
mod health;
mod limits;
mod properties;
mod roles;
mod unknown_kids;
mod users;
