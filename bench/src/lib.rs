//! `trellis-bench`: a load generator for Trellis's own RPCs, on the same stack (a tonic
//! client), run by `cargo xtask bench`.
//!
//! - [`load::run`] runs one [`load::Scenario`] against a running system with a
//!   [`load::Load`] (connections × streams, open loop at a rate or closed loop, warm-up,
//!   window) and returns a [`load::Measurement`]: an HDR latency histogram, errors by
//!   gRPC code, the server processes' CPU time and memory.
//! - [`plan::execute`] runs a whole [`plan::Plan`]: the bare-tonic [`baseline`] server
//!   and each variant of the system ([`system`] starts and stops them), in rounds, into a
//!   [`report::Report`] with ratios and the [`slo`] gates' outcome.
//!
//! `docs/performance.md` describes the command.

pub mod argon2_rate;
pub mod baseline;
pub mod chaos;
pub mod load;
pub mod plan;
pub mod procstat;
pub mod report;
pub mod schedule;
pub mod slo;
pub mod system;
pub mod transports;
pub mod units;

pub use load::run;
