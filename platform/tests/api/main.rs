//! The platform's own suite, on in-process servers: access policies, statuses, the
//! server's HTTP/2 limits, the outbox dispatcher, configuration rules, the metrics
//! endpoint and the etcd discovery backend (against a real etcd).

// Tests panic on purpose: a failed expectation is the test failing.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    missing_docs,
    unreachable_pub
)]

mod access;
mod admission;
mod config;
mod consul_tls;
mod etcd;
mod faults;
mod metrics;
mod mtls;
mod outbox;
mod rate_limits;
mod server;
mod status;
mod support;
mod unknown_methods;
mod verifier;
