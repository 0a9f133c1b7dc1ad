//! Throttling of failed sign-ins per account and per source address (OWASP ASVS 5.0
//! V6.3.1 / 4.0 V2.2.1: at most 100 failed attempts per hour per account).
//!
//! # Design
//!
//! - **Budgets are rolling one-hour windows.** A budget of `B` allows `B` failures in any
//!   one-hour window, exactly: the `B + 1`-th within the hour is refused with the time
//!   until the oldest of them leaves the window. A lockout therefore always expires, one
//!   slot an hour after each failure; nothing is locked for good.
//! - **Slots are reserved before the password is checked** ([`LoginThrottle::reserve`]),
//!   under one lock for every budget, so `N` concurrent wrong guesses against a budget of
//!   `B` reach the user service at most `B` times. A success or a fault of the check
//!   itself gives its slot back ([`LoginThrottle::refund`], [`LoginThrottle::succeeded`]);
//!   a wrong password, and an attempt its caller ended — abandoned half-way (a cancelled
//!   call) or cut by the caller's own deadline, however short — keep it. Only faults of
//!   the platform (the user service down or unreachable, its circuit open, its own
//!   timeout expired) refund: a client cannot buy free guesses with short deadlines.
//! - **Known sources are not locked out by a flood from elsewhere** (OWASP Authentication
//!   Cheat Sheet, "Account Lockout", which warns that lockout lets anyone deny service to
//!   an account; the same idea as its device cookies). A source address the account
//!   signed in from successfully within [`KNOWN_SOURCE_TTL`] (at most
//!   [`MAX_KNOWN_SOURCES`] per account) has a budget of its own for that account. Every
//!   other source shares the account's budget — the per-account ceiling an attacker
//!   spread over many addresses runs into. However long a flood from other addresses
//!   lasts, the owner signs in from where they signed in before; from a new address they
//!   wait until the flood's failures leave the window.
//! - **A source's budget spans every account**, so one address cannot spray guesses over
//!   many accounts. IPv6 sources are counted by their /64 prefix (one subscriber's
//!   allocation, RFC 6177), or a single host could pick a fresh address per guess.
//! - **Keys are bounded**: an account is keyed by the SHA-256 of its normalised address
//!   (trimmed, lower-cased), 32 bytes whatever the client sent, so case variants share a
//!   budget and a long input cannot inflate memory; a window keeps at most its budget's
//!   count of instants, and windows whose failures all left the hour are dropped.
//!
//! So, per account and hour, at most `B` failed guesses from addresses it never signed in
//! from, plus `B` from each of its (at most [`MAX_KNOWN_SOURCES`]) known addresses, which
//! an attacker would have to share with the owner. The state is in memory per instance.
//!
//! Time is injected (`*_at` methods take the current [`Instant`]) so the rules are tested
//! without waiting. The state is behind a `parking_lot` lock, which cannot be poisoned: a
//! panic elsewhere while it was held never turns the throttle off (fail open) or wedges it.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sha2::{Digest as _, Sha256};

/// The window every budget counts failures in: one hour.
pub const WINDOW: Duration = Duration::from_secs(3600);

/// How long a source address stays known to an account after a successful sign-in from
/// it: 30 days, the lifetime of a sign-in's refresh tokens.
pub const KNOWN_SOURCE_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Most source addresses remembered per account; a new one replaces the one that would
/// be forgotten first.
pub const MAX_KNOWN_SOURCES: usize = 8;

/// Stale windows are dropped once per this many reservations.
const PRUNE_EVERY: u64 = 256;

/// An account's throttle key: SHA-256 of its normalised (trimmed, lower-cased) address.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct AccountKey([u8; 32]);

impl AccountKey {
    /// The key of `email`; case variants and surrounding whitespace give the same key.
    pub fn of(email: &str) -> Self {
        Self(Sha256::digest(email.trim().to_lowercase().as_bytes()).into())
    }
}

impl std::fmt::Debug for AccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccountKey(..)")
    }
}

/// A source's throttle key: an IPv4 address, or the /64 prefix of an IPv6 address (an
/// IPv4-mapped IPv6 address is its IPv4 address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct SourceKey(IpAddr);

impl SourceKey {
    fn of(ip: IpAddr) -> Self {
        Self(trellis_platform::context::source_bucket(ip))
    }
}

/// The instants of the failures counted in one window, oldest first.
type Failures = VecDeque<Instant>;

/// Drops the failures that left the window ending at `now`.
fn expire(failures: &mut Failures, now: Instant) {
    while failures
        .front()
        .is_some_and(|at| now.saturating_duration_since(*at) >= WINDOW)
    {
        failures.pop_front();
    }
}

/// How long until `failures` (expired up to `now`) is under `budget` again, if it is full.
fn wait(failures: &Failures, budget: u32, now: Instant) -> Option<Duration> {
    if failures.len() < budget as usize {
        return None;
    }
    let oldest = failures.front()?;
    Some((*oldest + WINDOW).saturating_duration_since(now))
}

/// Removes one failure recorded at `at`, if any; returns whether `failures` is now empty.
fn remove(failures: &mut Failures, at: Instant) -> bool {
    if let Some(i) = failures.iter().rposition(|t| *t == at) {
        failures.remove(i);
    }
    failures.is_empty()
}

/// Where an attempt's failure is counted for its account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum AccountWindow {
    /// The account's shared window (sources it never signed in from, or no source).
    Shared(AccountKey),
    /// The window of one known source of the account.
    Known(AccountKey, SourceKey),
}

#[derive(Default)]
struct State {
    accounts: HashMap<AccountWindow, Failures>,
    sources: HashMap<SourceKey, Failures>,
    /// Per account: its known sources and until when each is known.
    known: HashMap<AccountKey, Vec<(SourceKey, Instant)>>,
    reservations: u64,
}

impl State {
    fn is_known(&self, account: AccountKey, source: SourceKey, now: Instant) -> bool {
        self.known.get(&account).is_some_and(|sources| {
            sources
                .iter()
                .any(|(s, until)| *s == source && *until > now)
        })
    }

    fn prune(&mut self, now: Instant) {
        let recent = |failures: &Failures| {
            failures
                .back()
                .is_some_and(|at| now.saturating_duration_since(*at) < WINDOW)
        };
        self.accounts.retain(|_, failures| recent(failures));
        self.sources.retain(|_, failures| recent(failures));
        self.known.retain(|_, sources| {
            sources.retain(|(_, until)| *until > now);
            !sources.is_empty()
        });
    }
}

/// A failure slot taken by [`LoginThrottle::reserve`]. It stays counted unless given back
/// with [`LoginThrottle::refund`] or [`LoginThrottle::succeeded`]: dropping it (say, the
/// call was cancelled while the password was being checked) counts it as a failure.
#[derive(Debug)]
#[must_use = "a reservation is a counted failure until it is refunded"]
pub struct Reservation {
    account: AccountWindow,
    source: Option<SourceKey>,
    at: Instant,
}

/// The sign-in throttle (see the module docs for its design).
pub struct LoginThrottle {
    per_account: u32,
    per_source: u32,
    state: Mutex<State>,
}

impl std::fmt::Debug for LoginThrottle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginThrottle")
            .field("per_account", &self.per_account)
            .field("per_source", &self.per_source)
            .finish_non_exhaustive()
    }
}

impl LoginThrottle {
    /// A throttle allowing `per_account` failures per account (and per known source of
    /// it) and `per_source` per source address, in any one-hour window. A budget of 0
    /// counts as 1.
    pub fn new(per_account: u32, per_source: u32) -> Self {
        Self {
            per_account: per_account.max(1),
            per_source: per_source.max(1),
            state: Mutex::new(State::default()),
        }
    }

    /// Takes a failure slot for a sign-in to `account` from `source`, before the
    /// credentials are checked.
    ///
    /// # Errors
    /// How long until a slot frees up, when the account's window (the shared one, or the
    /// source's own if it is known to the account) or the source's is full. Nothing is
    /// taken then.
    pub fn reserve(
        &self,
        account: AccountKey,
        source: Option<IpAddr>,
    ) -> Result<Reservation, Duration> {
        self.reserve_at(account, source, Instant::now())
    }

    /// [`Self::reserve`] at `now`.
    ///
    /// # Errors
    /// As [`Self::reserve`].
    pub fn reserve_at(
        &self,
        account: AccountKey,
        source: Option<IpAddr>,
        now: Instant,
    ) -> Result<Reservation, Duration> {
        let source = source.map(SourceKey::of);
        let mut state = self.state.lock();
        state.reservations += 1;
        if state.reservations.is_multiple_of(PRUNE_EVERY) {
            // Pruning walks every key: now and then, not on each attempt, which is
            // exactly the path an attack makes hot.
            state.prune(now);
        }
        let window = match source {
            Some(source) if state.is_known(account, source, now) => {
                AccountWindow::Known(account, source)
            }
            _ => AccountWindow::Shared(account),
        };
        let account_failures = state.accounts.entry(window).or_default();
        expire(account_failures, now);
        let mut retry_after = wait(account_failures, self.per_account, now);
        if let Some(source) = source {
            let source_failures = state.sources.entry(source).or_default();
            expire(source_failures, now);
            retry_after = retry_after.max(wait(source_failures, self.per_source, now));
        }
        if let Some(retry_after) = retry_after {
            return Err(retry_after);
        }
        state.accounts.entry(window).or_default().push_back(now);
        if let Some(source) = source {
            state.sources.entry(source).or_default().push_back(now);
        }
        Ok(Reservation {
            account: window,
            source,
            at: now,
        })
    }

    /// Gives a slot back: the attempt did not fail because of the credentials (the check
    /// could not be made, or it succeeded).
    pub fn refund(&self, reservation: Reservation) {
        let mut state = self.state.lock();
        if let Some(failures) = state.accounts.get_mut(&reservation.account)
            && remove(failures, reservation.at)
        {
            state.accounts.remove(&reservation.account);
        }
        if let Some(source) = reservation.source
            && let Some(failures) = state.sources.get_mut(&source)
            && remove(failures, reservation.at)
        {
            state.sources.remove(&source);
        }
    }

    /// The sign-in succeeded: gives the slot back and remembers its source as known to
    /// the account for [`KNOWN_SOURCE_TTL`].
    pub fn succeeded(&self, reservation: Reservation) {
        self.succeeded_at(reservation, Instant::now());
    }

    /// [`Self::succeeded`] at `now`.
    pub fn succeeded_at(&self, reservation: Reservation, now: Instant) {
        let account = match reservation.account {
            AccountWindow::Shared(account) | AccountWindow::Known(account, _) => account,
        };
        let source = reservation.source;
        self.refund(reservation);
        let Some(source) = source else {
            return;
        };
        let mut state = self.state.lock();
        let known = state.known.entry(account).or_default();
        known.retain(|(s, until)| *s != source && *until > now);
        if known.len() >= MAX_KNOWN_SOURCES {
            // Forget the one that would be forgotten first.
            if let Some(first) = known
                .iter()
                .enumerate()
                .min_by_key(|(_, (_, until))| *until)
                .map(|(i, _)| i)
            {
                known.swap_remove(first);
            }
        }
        known.push((source, now + KNOWN_SOURCE_TTL));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};

    use super::*;

    const ADA: &str = "ada@example.com";
    const OWNER: [u8; 4] = [192, 0, 2, 1];

    fn ip(octets: [u8; 4]) -> Option<IpAddr> {
        Some(IpAddr::from(octets))
    }

    /// Reserves a slot for `email` from `source` at `now`.
    fn reserve(
        throttle: &LoginThrottle,
        email: &str,
        source: Option<IpAddr>,
        now: Instant,
    ) -> Result<Reservation, Duration> {
        throttle.reserve_at(AccountKey::of(email), source, now)
    }

    /// Fails `n` sign-ins to `email` from `source` at `now`, asserting each got a slot.
    fn fail(throttle: &LoginThrottle, email: &str, source: Option<IpAddr>, n: u32, now: Instant) {
        for i in 0..n {
            let reserved = reserve(throttle, email, source, now);
            assert!(reserved.is_ok(), "failure {i} of {n}: {reserved:?}");
        }
    }

    #[test]
    fn the_whole_budget_is_allowed_in_an_hour_and_not_one_more() {
        let throttle = LoginThrottle::new(10, 1000);
        let start = Instant::now();
        // Spread over the hour: a burst-and-refill limiter would have tripped at half.
        for i in 0..10 {
            fail(
                &throttle,
                ADA,
                None,
                1,
                start + Duration::from_secs(i * 300),
            );
        }
        let now = start + Duration::from_secs(3000);
        let wait = reserve(&throttle, ADA, None, now);
        assert_eq!(wait.err(), Some(Duration::from_secs(600)));
        // Case variants of the address share its budget; other accounts do not.
        assert!(reserve(&throttle, "  Ada@Example.COM ", None, now).is_err());
        assert!(reserve(&throttle, "grace@example.com", None, now).is_ok());
    }

    #[test]
    fn a_lockout_expires_as_its_failures_leave_the_hour() {
        let throttle = LoginThrottle::new(3, 1000);
        let start = Instant::now();
        fail(&throttle, ADA, ip([198, 51, 100, 7]), 3, start);
        let retry_after =
            reserve(&throttle, ADA, ip(OWNER), start).expect_err("the account is locked");
        assert_eq!(retry_after, WINDOW);
        assert!(
            reserve(&throttle, ADA, ip(OWNER), start + retry_after).is_ok(),
            "the lockout ended when it said it would"
        );
    }

    #[test]
    fn n_concurrent_reservations_against_a_budget_of_b_get_exactly_b_slots() {
        const B: u32 = 5;
        const N: usize = 32;
        let throttle = Arc::new(LoginThrottle::new(B, 1000));
        let barrier = Arc::new(Barrier::new(N));
        let threads: Vec<_> = (0..N)
            .map(|_| {
                let throttle = Arc::clone(&throttle);
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    barrier.wait();
                    throttle.reserve(AccountKey::of(ADA), None).is_ok()
                })
            })
            .collect();
        let granted = threads
            .into_iter()
            .map(|t| t.join().unwrap_or(false))
            .filter(|granted| *granted)
            .count();
        assert_eq!(granted, B as usize);
    }

    #[test]
    fn a_refunded_slot_can_be_taken_again() {
        let throttle = LoginThrottle::new(1, 1000);
        let now = Instant::now();
        let reservation = reserve(&throttle, ADA, ip(OWNER), now).expect("a slot");
        assert!(reserve(&throttle, ADA, None, now).is_err());
        throttle.refund(reservation);
        assert!(reserve(&throttle, ADA, None, now).is_ok());
    }

    #[test]
    fn a_flood_from_elsewhere_never_locks_the_owner_out_of_a_source_they_signed_in_from() {
        let throttle = LoginThrottle::new(5, 1000);
        let start = Instant::now();
        let signed_in = reserve(&throttle, ADA, ip(OWNER), start).expect("a slot");
        throttle.succeeded_at(signed_in, start);
        // A sustained, distributed flood: every ten minutes for two days, a new address
        // takes every slot of the account's shared budget as soon as it frees up.
        for step in 0..(2 * 24 * 6_u32) {
            let now = start + Duration::from_secs(u64::from(step) * 600);
            let attacker = ip([203, 0, 113, u8::try_from(step % 250).unwrap_or(0)]);
            while reserve(&throttle, ADA, attacker, now).is_ok() {}
            // The owner, from their address, still gets a slot and signs in.
            let owner = reserve(&throttle, ADA, ip(OWNER), now)
                .unwrap_or_else(|wait| panic!("step {step}: owner locked out for {wait:?}"));
            throttle.succeeded_at(owner, now);
            // A new address of the owner's waits, but never longer than the window.
            let wait = reserve(&throttle, ADA, ip([192, 0, 2, 99]), now)
                .expect_err("unknown sources share the flooded budget");
            assert!(wait <= WINDOW, "{wait:?}");
        }
    }

    #[test]
    fn a_known_source_has_its_own_budget_for_the_account() {
        let throttle = LoginThrottle::new(3, 1000);
        let now = Instant::now();
        let signed_in = reserve(&throttle, ADA, ip(OWNER), now).expect("a slot");
        throttle.succeeded_at(signed_in, now);
        fail(&throttle, ADA, ip(OWNER), 3, now);
        assert!(reserve(&throttle, ADA, ip(OWNER), now).is_err());
        // Its failures did not use the account's shared budget.
        fail(&throttle, ADA, ip([198, 51, 100, 7]), 3, now);
    }

    #[test]
    fn a_known_source_is_forgotten_after_its_ttl() {
        let throttle = LoginThrottle::new(1, 1000);
        let start = Instant::now();
        let signed_in = reserve(&throttle, ADA, ip(OWNER), start).expect("a slot");
        throttle.succeeded_at(signed_in, start);
        let later = start + KNOWN_SOURCE_TTL;
        fail(&throttle, ADA, ip([198, 51, 100, 7]), 1, later);
        assert!(
            reserve(&throttle, ADA, ip(OWNER), later).is_err(),
            "no longer known, the owner's address shares the flooded budget"
        );
    }

    #[test]
    fn a_source_is_throttled_across_accounts_and_ipv6_by_its_64_prefix() {
        let throttle = LoginThrottle::new(1000, 4);
        let now = Instant::now();
        let host = |last: u16| Some(IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, last]));
        for i in 0..4 {
            fail(&throttle, &format!("user{i}@example.com"), host(i), 1, now);
        }
        assert!(reserve(&throttle, "new@example.com", host(99), now).is_err());
        let other_prefix = Some(IpAddr::from([0x2001, 0xdb8, 0, 2, 0, 0, 0, 1]));
        assert!(reserve(&throttle, "new@example.com", other_prefix, now).is_ok());
    }

    #[test]
    fn a_refused_reservation_takes_nothing() {
        let throttle = LoginThrottle::new(1000, 1);
        let now = Instant::now();
        fail(&throttle, "grace@example.com", ip(OWNER), 1, now);
        // The source is full: Ada's account must not be charged for the refusal.
        assert!(reserve(&throttle, ADA, ip(OWNER), now).is_err());
        let state = throttle.state.lock();
        let ada = state
            .accounts
            .get(&AccountWindow::Shared(AccountKey::of(ADA)));
        assert!(ada.is_none_or(VecDeque::is_empty), "{ada:?}");
    }

    #[test]
    fn windows_are_bounded_by_their_budget_and_pruned_when_stale() {
        let throttle = LoginThrottle::new(3, 1000);
        let start = Instant::now();
        for _ in 0..10 {
            let _ = reserve(&throttle, ADA, None, start);
        }
        assert_eq!(
            throttle
                .state
                .lock()
                .accounts
                .values()
                .map(VecDeque::len)
                .max(),
            Some(3)
        );
        let later = start + WINDOW;
        for i in 0..PRUNE_EVERY {
            let _ = reserve(&throttle, &format!("u{i}@example.com"), None, later);
        }
        let state = throttle.state.lock();
        assert!(
            !state
                .accounts
                .contains_key(&AccountWindow::Shared(AccountKey::of(ADA)))
        );
    }

    #[test]
    fn a_panic_while_the_lock_is_held_does_not_turn_the_throttle_off() {
        let throttle = LoginThrottle::new(1, 1000);
        let now = Instant::now();
        fail(&throttle, ADA, None, 1, now);
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _held = throttle.state.lock();
            panic!("a bug while the lock is held");
        }));
        assert!(panicked.is_err());
        // A std mutex would now be poisoned.
        assert!(reserve(&throttle, ADA, None, now).is_err());
    }
}
