//! The notification service's API tests: each starts the real service in-process on
//! 127.0.0.1:0 with an in-memory SQLite database and drives it only through its gRPC
//! surface (generated clients, health, reflection). Set `TEST_LOG=1` to see the
//! service's logs.

// Helpers panic on purpose: a failed expectation is the test failing.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod helpers;

mod abuse;
mod authz;
mod connect;
mod health;
mod list;
mod mark_read;
mod replicas;
mod send;
mod subscribe;
