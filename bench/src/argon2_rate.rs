//! The login scenario's ceiling: argon2id verifications a second on one core, with the
//! user service's default cost, computed the way the service computes them (into
//! memory allocated once, `Argon2::hash_password_into_with_memory`). Run pinned to the
//! servers' CPUs as its own process (`trellis-bench argon2-rate`), so `login`'s rate can
//! be read as a ratio to it: what a Login costs beyond its one password verification.

use std::time::{Duration, Instant};

use argon2::{Algorithm, Argon2, Block, Params, Version};

/// The user service's default `password_hashing.memory_kib` (OWASP's argon2id minimum,
/// 19 MiB); a test in `integration-tests` keeps the two equal.
pub const MEMORY_KIB: u32 = 19 * 1024;
/// The user service's default `password_hashing.iterations`.
pub const ITERATIONS: u32 = 2;
/// The user service's default `password_hashing.parallelism`.
pub const PARALLELISM: u32 = 1;

/// Verifications a second of one thread over at least `duration` (at least one is
/// computed), with the default cost.
///
/// # Errors
/// argon2 refuses the parameters (it does not with these).
pub fn verify_rate(duration: Duration) -> anyhow::Result<f64> {
    let params = Params::new(MEMORY_KIB, ITERATIONS, PARALLELISM, None)
        .map_err(|err| anyhow::anyhow!("argon2 parameters: {err}"))?;
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let mut blocks = vec![Block::new(); params.block_count()];
    let salt = [7_u8; argon2::RECOMMENDED_SALT_LEN];
    let mut out = [0_u8; Params::DEFAULT_OUTPUT_LEN];
    let started = Instant::now();
    let mut verified = 0_u32;
    while verified == 0 || started.elapsed() < duration {
        argon2
            .hash_password_into_with_memory(b"correct horse battery", &salt, &mut out, &mut blocks)
            .map_err(|err| anyhow::anyhow!("argon2: {err}"))?;
        verified += 1;
    }
    Ok(f64::from(verified) / started.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_verification_at_least_is_timed() -> anyhow::Result<()> {
        let rate = verify_rate(Duration::ZERO)?;
        // One 19 MiB argon2id pass takes milliseconds, not nanoseconds or minutes.
        assert!(rate > 0.1 && rate < 10_000.0, "{rate}");
        Ok(())
    }
}
