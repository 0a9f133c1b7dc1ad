//! The platform's own suite, on in-process servers: access policies, statuses, the
//! server's HTTP/2 limits, the outbox dispatcher, configuration rules and the metrics
//! endpoint.

// Tests panic on purpose: a failed expectation is the test failing.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    missing_docs,
    unreachable_pub
)]

mod access;
mod config;
mod metrics;
mod outbox;
mod server;
mod status;
mod support;
mod verifier;
