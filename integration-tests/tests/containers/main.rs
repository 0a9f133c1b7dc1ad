//! Suites on real containers (testcontainers): the shared cases on PostgreSQL, and the
//! whole system as the images `cargo xtask images` builds, on one Docker network.
//! Without Docker or the images they fail with instructions; `TRELLIS_SKIP_DOCKER_TESTS=1`
//! skips them.

// Tests panic on purpose: a failed expectation is the test failing.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod cluster;
mod live_feed;
mod postgres;
