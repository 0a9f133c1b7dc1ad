//! Password hashing with argon2id, off the async workers and with a bound on how many
//! hashes run at once (each takes tens of ms of CPU and `memory_kib` of memory).

use std::sync::Arc;

use anyhow::Context as _;
use argon2::{Algorithm, Argon2, Params, PasswordHasher as _, PasswordVerifier as _, Version};
use tokio::sync::Semaphore;

use super::validation::Password;

/// argon2id cost parameters. The defaults are OWASP's minimum for argon2id
/// (Password Storage Cheat Sheet: m = 19 MiB, t = 2, p = 1); lower values are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HashCost {
    /// Memory per hash, in KiB. Default and minimum 19456 (19 MiB).
    pub memory_kib: u32,
    /// Passes over memory. Default and minimum 2.
    pub iterations: u32,
    /// Lanes. Default 1.
    pub parallelism: u32,
    /// Most hashes computed at once; further requests wait. Default 4.
    pub max_concurrent: usize,
}

/// OWASP's argon2id minimum memory, in KiB.
pub const OWASP_MIN_MEMORY_KIB: u32 = 19 * 1024;
/// OWASP's argon2id minimum iterations at that memory.
pub const OWASP_MIN_ITERATIONS: u32 = 2;

impl Default for HashCost {
    fn default() -> Self {
        Self {
            memory_kib: OWASP_MIN_MEMORY_KIB,
            iterations: OWASP_MIN_ITERATIONS,
            parallelism: 1,
            max_concurrent: 4,
        }
    }
}

/// A stored argon2id hash in PHC string form (`$argon2id$v=19$m=...`). Its `Debug`
/// output is redacted so it cannot reach a log line.
#[derive(Clone)]
pub struct PasswordHash(String);

impl PasswordHash {
    /// Wraps a PHC string read from storage.
    pub fn from_stored(phc: String) -> Self {
        Self(phc)
    }

    /// The PHC string, for storage only.
    pub fn as_phc(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordHash([redacted])")
    }
}

/// Hashes and verifies passwords with argon2id.
#[derive(Debug, Clone)]
pub struct PasswordHasher {
    params: Params,
    permits: Arc<Semaphore>,
    /// Verified against when an email is unknown, so that path costs the same time.
    dummy: PasswordHash,
}

impl PasswordHasher {
    /// A hasher with `cost`; computes the dummy hash once.
    ///
    /// # Errors
    /// When `cost` is below OWASP's minimum or argon2 rejects it.
    pub fn new(cost: HashCost) -> anyhow::Result<Self> {
        anyhow::ensure!(
            cost.memory_kib >= OWASP_MIN_MEMORY_KIB && cost.iterations >= OWASP_MIN_ITERATIONS,
            "argon2id cost below OWASP's minimum (m = {OWASP_MIN_MEMORY_KIB} KiB, t = {OWASP_MIN_ITERATIONS})"
        );
        anyhow::ensure!(cost.max_concurrent > 0, "max_concurrent must be at least 1");
        let params = Params::new(cost.memory_kib, cost.iterations, cost.parallelism, None)
            .map_err(|err| anyhow::anyhow!("invalid argon2 parameters: {err}"))?;
        let mut random = [0_u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut random);
        let dummy = hash_blocking(&params, &random)?;
        Ok(Self {
            params,
            permits: Arc::new(Semaphore::new(cost.max_concurrent)),
            dummy,
        })
    }

    /// Hashes `password` with a fresh random salt.
    ///
    /// # Errors
    /// When hashing fails or the blocking pool is gone.
    pub async fn hash(&self, password: Password<'_>) -> anyhow::Result<PasswordHash> {
        let password = password.expose().as_bytes().to_vec();
        let params = self.params.clone();
        self.run(move || hash_blocking(&params, &password)).await
    }

    /// Whether `password` matches `hash`.
    ///
    /// # Errors
    /// When `hash` is not a valid PHC string or the blocking pool is gone.
    pub async fn verify(&self, password: &str, hash: PasswordHash) -> anyhow::Result<bool> {
        let password = password.as_bytes().to_vec();
        self.run(move || verify_blocking(&password, &hash)).await
    }

    /// Verifies `password` against the dummy hash and discards the answer: the cost of
    /// [`Self::verify`] without an account.
    ///
    /// # Errors
    /// When the blocking pool is gone.
    pub async fn verify_dummy(&self, password: &str) -> anyhow::Result<()> {
        self.verify(password, self.dummy.clone()).await.map(drop)
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let _permit = self.permits.acquire().await.context("hasher closed")?;
        tokio::task::spawn_blocking(work)
            .await
            .context("password hashing task failed")?
    }
}

fn argon2(params: &Params) -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
}

fn hash_blocking(params: &Params, password: &[u8]) -> anyhow::Result<PasswordHash> {
    let hash = argon2(params)
        .hash_password(password)
        .map_err(|err| anyhow::anyhow!("argon2 hashing failed: {err}"))?;
    Ok(PasswordHash(hash.to_string()))
}

fn verify_blocking(password: &[u8], hash: &PasswordHash) -> anyhow::Result<bool> {
    // The hash's own parameters are used, so hashes made with older costs still verify.
    match Argon2::default().verify_password(password, hash.as_phc()) {
        Ok(()) => Ok(true),
        Err(argon2::password_hash::Error::PasswordInvalid) => Ok(false),
        Err(err) => Err(anyhow::anyhow!("stored password hash is unusable: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_is_argon2id_at_owasp_cost_and_verifies() -> anyhow::Result<()> {
        let hasher = PasswordHasher::new(HashCost::default())?;
        let password = Password::parse("password", "correct horse battery")
            .map_err(|v| anyhow::anyhow!("{v:?}"))?;
        let hash = hasher.hash(password).await?;
        assert!(
            hash.as_phc().starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{}",
            hash.as_phc()
        );
        assert!(hasher.verify("correct horse battery", hash.clone()).await?);
        assert!(!hasher.verify("correct horse battery!", hash).await?);
        Ok(())
    }

    #[test]
    fn cost_below_owasp_minimum_is_refused() {
        let weak = HashCost {
            memory_kib: 4096,
            ..HashCost::default()
        };
        assert!(PasswordHasher::new(weak).is_err());
    }

    #[test]
    fn hash_debug_is_redacted() {
        let hash = PasswordHash::from_stored("$argon2id$secret".to_owned());
        assert_eq!(format!("{hash:?}"), "PasswordHash([redacted])");
    }
}
