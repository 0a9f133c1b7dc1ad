//! The whole system in one process: user, auth and notification on 127.0.0.1, calling
//! each other over gRPC. Set `TEST_LOG=1` to see their logs.

// Tests panic on purpose: a failed expectation is the test failing.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod bench_reference;
mod flows;
mod grpc_web;
mod hostile;
mod http_json;
mod mtls;
mod notifications;
mod rfc8725;
mod scenarios;
mod tokens;
