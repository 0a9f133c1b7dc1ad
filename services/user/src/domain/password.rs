//! Password hashing with argon2id on a fixed pool of worker threads.
//!
//! Each hash takes tens of ms of CPU and `memory_kib` of memory, and anyone can ask for
//! one (sign-up, login), so the work is bounded three ways:
//!
//! - **Workers:** `max_concurrent` OS threads, started once, each owning one argon2 memory
//!   buffer that it reuses for every hash. Resident memory after any burst stays near
//!   `max_concurrent × memory_kib` (no per-hash allocation for allocator arenas to keep).
//! - **Cancellation:** a caller that goes away (a cancelled RPC) cannot free a worker
//!   while its hash still runs: the hash finishes on that worker and is discarded, and a
//!   job whose caller left before a worker took it is skipped. Cancelling never starts
//!   more hashes than there are workers.
//! - **Queue:** at most `max_queued` jobs wait for a worker; beyond that
//!   [`HashError::Saturated`] is returned at once, which the gRPC layer answers with
//!   RESOURCE_EXHAUSTED and a `google.rpc.RetryInfo`.
//!
//! Hashes are PHC strings (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`), as the `argon2`
//! crate's own `PasswordHasher` writes them, and stored hashes are verified with the
//! parameters they carry.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use argon2::password_hash::phc::{Output, ParamsString, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use subtle::ConstantTimeEq as _;
use tokio::sync::oneshot;

use super::UserError;
use super::validation::Password;

/// argon2id cost parameters and the hashing pool's bounds. The cost defaults are OWASP's
/// minimum for argon2id (Password Storage Cheat Sheet: m = 19 MiB, t = 2, p = 1); lower
/// values are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HashCost {
    /// Memory per hash, in KiB. Default and minimum 19456 (19 MiB).
    pub memory_kib: u32,
    /// Passes over memory. Default and minimum 2.
    pub iterations: u32,
    /// Lanes. Default 1.
    pub parallelism: u32,
    /// Hashing worker threads, each holding `memory_kib` of memory once it has hashed:
    /// the most hashes computed at once. Default 4.
    pub max_concurrent: usize,
    /// Most hash jobs waiting for a worker; further requests are refused at once
    /// ([`HashError::Saturated`]). `None` (the default) means 4 × `max_concurrent`;
    /// 0 refuses whenever every worker is busy.
    pub max_queued: Option<usize>,
}

/// OWASP's argon2id minimum memory, in KiB.
pub const OWASP_MIN_MEMORY_KIB: u32 = 19 * 1024;
/// OWASP's argon2id minimum iterations at that memory.
pub const OWASP_MIN_ITERATIONS: u32 = 2;
/// The delay a refused caller is told to wait (`google.rpc.RetryInfo`): a few hashes'
/// time, so that the queue has moved on.
pub const SATURATED_RETRY_AFTER: Duration = Duration::from_secs(1);
/// Salt length in bytes: the `argon2` crate's recommendation (and its own hasher's).
const SALT_BYTES: usize = argon2::RECOMMENDED_SALT_LEN;

impl HashCost {
    /// The queue bound in effect: `max_queued`, or 4 × `max_concurrent` when unset.
    pub fn queue_bound(&self) -> usize {
        self.max_queued
            .unwrap_or_else(|| self.max_concurrent.saturating_mul(4))
    }
}

impl Default for HashCost {
    fn default() -> Self {
        Self {
            memory_kib: OWASP_MIN_MEMORY_KIB,
            iterations: OWASP_MIN_ITERATIONS,
            parallelism: 1,
            max_concurrent: 4,
            max_queued: None,
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

/// Why a hash or verification did not happen.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// Every worker is busy and the wait queue is full: try again after `retry_after`.
    #[error("password hashing is saturated")]
    Saturated {
        /// How long the caller should wait before retrying.
        retry_after: Duration,
    },
    /// Hashing failed, a stored hash is unusable, or the workers are gone.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

impl From<HashError> for UserError {
    fn from(err: HashError) -> Self {
        match err {
            HashError::Saturated { retry_after } => UserError::Overloaded { retry_after },
            HashError::Failed(err) => UserError::Unexpected(err),
        }
    }
}

/// What the hashing pool is doing, for tests, metrics and load drills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashingLoad {
    /// Worker threads (`max_concurrent`).
    pub workers: usize,
    /// argon2 computations running now.
    pub hashing: usize,
    /// The most argon2 computations ever running at once; never above `workers`.
    pub peak_hashing: usize,
    /// argon2 computations started since the pool began.
    pub started: usize,
    /// Jobs skipped because their caller had gone before a worker took them.
    pub skipped: usize,
    /// Jobs accepted and not finished: running, or waiting for a worker.
    pub admitted: usize,
}

/// Hashes and verifies passwords with argon2id on a fixed pool of workers (see the module
/// docs). Clones share the pool; the workers stop when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct PasswordHasher {
    pool: Arc<Pool>,
    params: Params,
    /// Verified against when an email is unknown, so that path costs the same time.
    dummy: PasswordHash,
}

impl PasswordHasher {
    /// Starts `cost.max_concurrent` workers (which allocate their argon2 memory at their
    /// first hash) and makes the dummy hash.
    ///
    /// # Errors
    /// When `cost` is below OWASP's minimum, argon2 rejects it, or a thread cannot start.
    pub fn new(cost: HashCost) -> anyhow::Result<Self> {
        anyhow::ensure!(
            cost.memory_kib >= OWASP_MIN_MEMORY_KIB && cost.iterations >= OWASP_MIN_ITERATIONS,
            "argon2id cost below OWASP's minimum (m = {OWASP_MIN_MEMORY_KIB} KiB, t = {OWASP_MIN_ITERATIONS})"
        );
        anyhow::ensure!(cost.max_concurrent > 0, "max_concurrent must be at least 1");
        let params = Params::new(cost.memory_kib, cost.iterations, cost.parallelism, None)
            .map_err(|err| anyhow::anyhow!("invalid argon2 parameters: {err}"))?;
        let pool = Pool::start(
            cost.max_concurrent,
            cost.queue_bound(),
            params.block_count(),
        )?;

        // The dummy only has to cost what a real hash costs to verify: a PHC string with
        // today's parameters, a random salt and a random output (which no password
        // derives), so start-up computes no argon2 and holds no worker memory.
        let mut salt = [0_u8; SALT_BYTES];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut salt);
        let mut output = [0_u8; Params::DEFAULT_OUTPUT_LEN];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut output);
        let dummy = phc(&params, &salt, &output)?;
        Ok(Self {
            pool: Arc::new(pool),
            params,
            dummy,
        })
    }

    /// Hashes `password` with a fresh random salt.
    ///
    /// # Errors
    /// [`HashError::Saturated`] when the queue is full; [`HashError::Failed`] otherwise.
    pub async fn hash(&self, password: Password<'_>) -> Result<PasswordHash, HashError> {
        let password = password.expose().as_bytes().to_vec();
        let params = self.params.clone();
        self.run(move |memory| hash_with(memory, &params, &password))
            .await
    }

    /// Whether `password` matches `hash`, compared in constant time.
    ///
    /// # Errors
    /// [`HashError::Saturated`] when the queue is full; [`HashError::Failed`] when `hash`
    /// is not a usable PHC string.
    pub async fn verify(&self, password: &str, hash: PasswordHash) -> Result<bool, HashError> {
        let password = password.as_bytes().to_vec();
        self.run(move |memory| verify_with(memory, &password, hash.as_phc()))
            .await
    }

    /// Verifies `password` against the dummy hash and discards the answer: the cost of
    /// [`Self::verify`] without an account.
    ///
    /// # Errors
    /// As [`Self::verify`].
    pub async fn verify_dummy(&self, password: &str) -> Result<(), HashError> {
        self.verify(password, self.dummy.clone()).await.map(drop)
    }

    /// A snapshot of the pool's counters.
    pub fn load(&self) -> HashingLoad {
        self.pool.load()
    }

    /// Holds `places` of the pool (workers first, then queue places) until the returned
    /// [`Occupation`] is dropped, and returns once every worker it holds is blocked. For
    /// tests and load drills: it makes "all workers busy, queue full" exact.
    ///
    /// # Errors
    /// [`HashError::Saturated`] when fewer than `places` are free (nothing is held then).
    pub async fn occupy(&self, places: usize) -> Result<Occupation, HashError> {
        let (release, gate) = crossbeam_channel::bounded::<()>(0);
        let mut started = Vec::new();
        for _ in 0..places {
            let (tx, rx) = oneshot::channel::<()>();
            let gate = gate.clone();
            let submitted = self.pool.submit(move |_, _admitted| {
                let _ = tx.send(());
                // Returns when the occupation's sender is dropped.
                let _ = gate.recv();
            });
            if let Err(err) = submitted {
                drop(release);
                return Err(err);
            }
            started.push(rx);
        }
        // Workers take jobs in order: the first `workers` jobs are the ones that run.
        for rx in started.into_iter().take(self.pool.workers) {
            rx.await
                .map_err(|_| anyhow::anyhow!("password hashing worker stopped"))?;
        }
        Ok(Occupation { _release: release })
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Memory) -> anyhow::Result<T> + Send + 'static,
    ) -> Result<T, HashError> {
        let (reply, answer) = oneshot::channel();
        self.pool.submit(move |memory, admitted| {
            // The caller is gone (e.g. a cancelled RPC): nobody wants the answer.
            if reply.is_closed() {
                memory.load.skipped.fetch_add(1, Ordering::AcqRel);
                return;
            }
            let result = work(memory);
            // Released before the answer, so a caller that has its answer can count on
            // the place being free again.
            drop(admitted);
            let _ = reply.send(result);
        })?;
        answer
            .await
            .map_err(|_| anyhow::anyhow!("password hashing worker stopped"))?
            .map_err(HashError::Failed)
    }
}

/// Places of the pool held by [`PasswordHasher::occupy`]; dropping it frees them.
#[derive(Debug)]
pub struct Occupation {
    _release: crossbeam_channel::Sender<()>,
}

// === impl Pool ===

/// A job for a worker, given that worker's memory.
type Job = Box<dyn FnOnce(&mut Memory) + Send>;

/// One admitted job's place in the pool, given back when dropped: when the job has run,
/// or when it is dropped unrun.
struct Admitted(Arc<Load>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The fixed set of worker threads and the queue in front of them.
#[derive(Debug)]
struct Pool {
    jobs: crossbeam_channel::Sender<Job>,
    load: Arc<Load>,
    workers: usize,
    /// Most jobs admitted at once: one running per worker plus the queue bound.
    capacity: usize,
}

#[derive(Debug, Default)]
struct Load {
    admitted: AtomicUsize,
    hashing: AtomicUsize,
    peak_hashing: AtomicUsize,
    started: AtomicUsize,
    skipped: AtomicUsize,
}

impl Pool {
    fn start(workers: usize, max_queued: usize, block_count: usize) -> anyhow::Result<Self> {
        let (jobs, queue) = crossbeam_channel::unbounded::<Job>();
        let load = Arc::new(Load::default());
        for index in 0..workers {
            let queue = queue.clone();
            let mut memory = Memory {
                blocks: Vec::new(),
                own_blocks: block_count,
                load: Arc::clone(&load),
            };
            std::thread::Builder::new()
                .name(format!("argon2-{index}"))
                .spawn(move || {
                    // Ends when every sender is gone, i.e. the last hasher clone dropped.
                    while let Ok(job) = queue.recv() {
                        // A panicking job loses its answer (the caller sees an error), not
                        // the worker.
                        let _ = std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut memory)));
                    }
                })
                .context("cannot start a password hashing worker")?;
        }
        Ok(Self {
            jobs,
            load,
            workers,
            capacity: workers.saturating_add(max_queued),
        })
    }

    /// Queues `job`, or refuses at once when `capacity` jobs are already admitted. The job
    /// gets its worker's memory and its place, to give back when it no longer needs it.
    fn submit(
        &self,
        job: impl FnOnce(&mut Memory, Admitted) + Send + 'static,
    ) -> Result<(), HashError> {
        if self.load.admitted.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.load.admitted.fetch_sub(1, Ordering::AcqRel);
            return Err(HashError::Saturated {
                retry_after: SATURATED_RETRY_AFTER,
            });
        }
        let admitted = Admitted(Arc::clone(&self.load));
        // When the workers are gone the job, and with it its place, is dropped here.
        self.jobs
            .send(Box::new(move |memory: &mut Memory| job(memory, admitted)))
            .map_err(|_| HashError::Failed(anyhow::anyhow!("password hashing workers stopped")))
    }

    fn load(&self) -> HashingLoad {
        let load = &self.load;
        HashingLoad {
            workers: self.workers,
            hashing: load.hashing.load(Ordering::Acquire),
            peak_hashing: load.peak_hashing.load(Ordering::Acquire),
            started: load.started.load(Ordering::Acquire),
            skipped: load.skipped.load(Ordering::Acquire),
            admitted: load.admitted.load(Ordering::Acquire),
        }
    }
}

// === impl Memory ===

/// One worker's argon2 memory, allocated on its first hash and reused for every later one.
struct Memory {
    blocks: Vec<Block>,
    /// Blocks a hash at the configured cost needs: the size of `blocks` once allocated.
    own_blocks: usize,
    load: Arc<Load>,
}

impl Memory {
    /// Runs argon2 into `out`, counting the computation in the pool's load.
    fn derive(
        &mut self,
        argon2: &Argon2<'_>,
        password: &[u8],
        salt: &[u8],
        out: &mut [u8],
    ) -> anyhow::Result<()> {
        let load = Arc::clone(&self.load);
        let running = load.hashing.fetch_add(1, Ordering::AcqRel) + 1;
        load.peak_hashing.fetch_max(running, Ordering::AcqRel);
        load.started.fetch_add(1, Ordering::AcqRel);
        let needed = argon2.params().block_count();
        let result = if needed <= self.own_blocks {
            if self.blocks.len() < self.own_blocks {
                self.blocks.resize(self.own_blocks, Block::new());
            }
            argon2.hash_password_into_with_memory(password, salt, out, &mut self.blocks[..needed])
        } else {
            // A stored hash made at a higher cost than today's: a one-off buffer, so the
            // worker's own memory stays at the configured size.
            let mut blocks = vec![Block::new(); needed];
            argon2.hash_password_into_with_memory(password, salt, out, &mut blocks[..])
        };
        load.hashing.fetch_sub(1, Ordering::AcqRel);
        result.map_err(|err| anyhow::anyhow!("argon2 hashing failed: {err}"))
    }
}

fn hash_with(
    memory: &mut Memory,
    params: &Params,
    password: &[u8],
) -> anyhow::Result<PasswordHash> {
    let mut salt = [0_u8; SALT_BYTES];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut salt);
    let mut out = [0_u8; Params::DEFAULT_OUTPUT_LEN];
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    memory.derive(&argon2, password, &salt, &mut out)?;
    phc(params, &salt, &out)
}

/// The PHC string of an argon2id (v19) hash with `params`, `salt` and `output`.
fn phc(params: &Params, salt: &[u8], output: &[u8]) -> anyhow::Result<PasswordHash> {
    let phc = argon2::PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params).map_err(phc_error)?,
        salt: Some(Salt::new(salt).map_err(phc_error)?),
        hash: Some(Output::new(output).map_err(phc_error)?),
    };
    Ok(PasswordHash(phc.to_string()))
}

fn verify_with(memory: &mut Memory, password: &[u8], stored: &str) -> anyhow::Result<bool> {
    // The hash's own algorithm, version and parameters are used, so hashes made with
    // older costs (or by the `argon2` crate's own hasher) still verify.
    let parsed = argon2::PasswordHash::new(stored).map_err(unusable)?;
    let algorithm = Algorithm::try_from(parsed.algorithm.as_str()).map_err(unusable)?;
    let version = parsed
        .version
        .map(Version::try_from)
        .transpose()
        .map_err(unusable)?
        .unwrap_or_default();
    let params = Params::try_from(&parsed).map_err(unusable)?;
    let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
        // As the `argon2` crate's verifier: a PHC string without salt or hash matches nothing.
        return Ok(false);
    };
    let mut out = vec![0_u8; expected.len()];
    memory.derive(
        &Argon2::new(algorithm, version, params),
        password,
        salt.as_ref(),
        &mut out,
    )?;
    Ok(bool::from(out.as_slice().ct_eq(expected.as_bytes())))
}

fn phc_error(err: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("cannot encode the PHC string: {err}")
}

fn unusable(err: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("stored password hash is unusable: {err}")
}

#[cfg(test)]
mod tests {
    use argon2::{PasswordHasher as _, PasswordVerifier as _};
    use trellis_platform::testing::assert_eventually;

    use super::*;

    const SECRET: &str = "correct horse battery";

    fn password() -> Password<'static> {
        Password::parse("password", SECRET).unwrap_or_else(|v| panic!("{v:?}"))
    }

    /// Waits until no job is admitted: the released places are free again.
    async fn drained(hasher: &PasswordHasher) {
        assert_eventually(|| async { hasher.load().admitted == 0 }).await;
    }

    fn cost(max_concurrent: usize, max_queued: usize) -> HashCost {
        HashCost {
            max_concurrent,
            max_queued: Some(max_queued),
            ..HashCost::default()
        }
    }

    #[tokio::test]
    async fn hash_is_argon2id_at_owasp_cost_and_verifies() -> anyhow::Result<()> {
        let hasher = PasswordHasher::new(HashCost::default())?;
        let hash = hasher.hash(password()).await?;
        assert!(
            hash.as_phc().starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{}",
            hash.as_phc()
        );
        assert!(hasher.verify(SECRET, hash.clone()).await?);
        assert!(!hasher.verify("correct horse battery!", hash).await?);
        Ok(())
    }

    #[tokio::test]
    async fn hashes_made_by_the_argon2_crates_own_hasher_still_verify() -> anyhow::Result<()> {
        let hasher = PasswordHasher::new(HashCost::default())?;
        // The previous code path: argon2's `PasswordHasher` at today's cost, and one at a
        // higher cost than the workers' memory (a hash stored before a cost change).
        let params = Params::new(OWASP_MIN_MEMORY_KIB, OWASP_MIN_ITERATIONS, 1, None)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let larger = Params::new(2 * OWASP_MIN_MEMORY_KIB, 3, 2, None)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for params in [params, larger] {
            let stored = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
                .hash_password(SECRET.as_bytes())
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .to_string();
            let stored = PasswordHash::from_stored(stored);
            assert!(hasher.verify(SECRET, stored.clone()).await?);
            assert!(!hasher.verify("correct horse battery?", stored).await?);
        }
        Ok(())
    }

    #[tokio::test]
    async fn new_hashes_verify_with_the_argon2_crates_own_verifier() -> anyhow::Result<()> {
        let hasher = PasswordHasher::new(HashCost::default())?;
        let hash = hasher.hash(password()).await?;
        let parsed =
            argon2::PasswordHash::new(hash.as_phc()).map_err(|e| anyhow::anyhow!("{e}"))?;
        assert!(
            Argon2::default()
                .verify_password(SECRET.as_bytes(), &parsed)
                .is_ok()
        );
        Ok(())
    }

    #[tokio::test]
    async fn an_unparsable_stored_hash_is_an_error_not_a_mismatch() -> anyhow::Result<()> {
        let hasher = PasswordHasher::new(HashCost::default())?;
        let stored = PasswordHash::from_stored("not a phc string".to_owned());
        assert!(matches!(
            hasher.verify(SECRET, stored).await,
            Err(HashError::Failed(_))
        ));
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cancelled_hashes_never_run_more_argon2_at_once_than_max_concurrent()
    -> anyhow::Result<()> {
        let hasher = PasswordHasher::new(cost(2, 64))?;
        let before = hasher.load().started;
        // Waves of callers that give up as soon as one of their hashes is running: with a
        // permit freed on cancellation, each wave would start hashes beside the last one's.
        for _ in 0..4 {
            let started = hasher.load().started;
            let callers: Vec<_> = (0..8)
                .map(|_| {
                    let hasher = hasher.clone();
                    tokio::spawn(async move { hasher.hash(password()).await.map(drop) })
                })
                .collect();
            assert_eventually(|| {
                let hasher = hasher.clone();
                async move { hasher.load().started > started }
            })
            .await;
            for caller in callers {
                caller.abort();
            }
        }
        // Two more hashes, awaited: every job queued before them has been taken by then.
        let (a, b) = tokio::join!(hasher.hash(password()), hasher.hash(password()));
        a?;
        b?;
        let load = hasher.load();
        assert!(load.started > before, "{load:?}");
        assert!(load.peak_hashing <= 2, "{load:?}");
        Ok(())
    }

    #[tokio::test]
    async fn start_up_hashes_nothing_and_the_dummy_costs_a_real_verification() -> anyhow::Result<()>
    {
        let hasher = PasswordHasher::new(cost(1, 8))?;
        assert_eq!(hasher.load().started, 0, "no argon2 at start-up");
        let stored = hasher.hash(password()).await?;
        // The dummy has today's parameters, so verifying against it costs what a real
        // verification costs, and no password matches it.
        let parsed =
            argon2::PasswordHash::new(hasher.dummy.as_phc()).map_err(|e| anyhow::anyhow!("{e}"))?;
        let real =
            argon2::PasswordHash::new(stored.as_phc()).map_err(|e| anyhow::anyhow!("{e}"))?;
        assert_eq!(parsed.params, real.params);
        assert_eq!(parsed.algorithm, real.algorithm);
        assert!(!hasher.verify(SECRET, hasher.dummy.clone()).await?);
        assert_eq!(hasher.load().started, 2, "the dummy was really verified");
        Ok(())
    }

    #[tokio::test]
    async fn queued_jobs_whose_caller_left_are_skipped() -> anyhow::Result<()> {
        let hasher = PasswordHasher::new(cost(1, 8))?;
        let held = hasher.occupy(1).await?;
        let started = hasher.load().started;
        for _ in 0..5 {
            let mut call = Box::pin(hasher.hash(password()));
            // Polled once: the job is queued behind the held worker; then the caller leaves.
            assert!(futures::poll!(call.as_mut()).is_pending());
        }
        assert_eq!(hasher.load().admitted, 6);
        drop(held);
        assert!(hasher.verify_dummy(SECRET).await.is_ok());
        let load = hasher.load();
        assert_eq!(load.skipped, 5, "{load:?}");
        assert_eq!(
            load.started,
            started + 1,
            "only the last call hashed: {load:?}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_full_queue_is_refused_at_once_and_frees_when_work_ends() -> anyhow::Result<()> {
        let hasher = PasswordHasher::new(cost(1, 2))?;
        let held = hasher.occupy(3).await?;
        assert!(matches!(
            hasher.hash(password()).await,
            Err(HashError::Saturated { retry_after }) if retry_after == SATURATED_RETRY_AFTER
        ));
        assert!(matches!(
            hasher.verify_dummy(SECRET).await,
            Err(HashError::Saturated { .. })
        ));
        drop(held);
        drained(&hasher).await;
        assert!(hasher.verify_dummy(SECRET).await.is_ok());
        Ok(())
    }

    #[tokio::test]
    async fn no_queue_refuses_whenever_every_worker_is_busy() -> anyhow::Result<()> {
        let hasher = PasswordHasher::new(cost(1, 0))?;
        let held = hasher.occupy(1).await?;
        assert!(matches!(
            hasher.hash(password()).await,
            Err(HashError::Saturated { .. })
        ));
        drop(held);
        drained(&hasher).await;
        assert!(hasher.hash(password()).await.is_ok());
        Ok(())
    }

    #[test]
    fn the_default_queue_is_four_times_the_workers() {
        assert_eq!(HashCost::default().queue_bound(), 16);
        assert_eq!(cost(3, 0).queue_bound(), 0);
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
