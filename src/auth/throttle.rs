//! Login throttling, after OWASP's Authentication Cheat Sheet ("Account lockout" / "Protect
//! against automated attacks"); the trade-offs are written down in `docs/security.md`
//! ("Login throttling").
//!
//! Every attempt is counted **before** its password is checked ([`LoginThrottle::begin`]
//! reserves it as a failure) and given back only on success ([`LoginAttempt::succeeded`]), so
//! parallel requests cannot outrun the count, and an attempt abandoned mid-check still counts.
//! Three counters apply, each with its own free failures, after which every further attempt
//! locks its key for a doubling delay (`base_delay_secs` … `max_delay_secs`), answered 429:
//!
//! * **(account, address)** — one address guessing one account. This is the lock a single
//!   attacker hits, and it cannot lock the owner out from anywhere else.
//! * **address** — one address spraying many accounts.
//! * **account, from every address** — a much larger budget that still slows a distributed
//!   guesser. Addresses from which the account logged in successfully before (within
//!   `known_address_secs`) are exempt from it, so a botnet cannot lock the owner out of the
//!   places they use.
//!
//! The table is bounded (`max_entries`). When it is full, stale entries go first, then the
//! oldest unlocked ones; if every entry is a live lock, a new key is refused with 429: the
//! throttle fails closed, never open.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::config::ThrottleSettings;
use crate::domain::address_key;

/// A tracked counter. Accounts appear only as a keyed hash of the lower-cased name, so the table
/// holds no raw usernames (or passwords mistyped into the name field); the per-process random
/// key makes colliding two accounts on purpose impractical.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    /// One account from one address.
    AccountFromAddress(u64, IpAddr),
    /// One address, every account.
    Address(IpAddr),
    /// One account, every address.
    Account(u64),
    /// An address this account logged in from (exempt from [`Key::Account`]).
    Known(u64, IpAddr),
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Attempts counted (reserved and not given back) within the window.
    failures: u32,
    /// Last time the entry changed.
    last: Instant,
    /// Refuse attempts until then.
    locked_until: Option<Instant>,
}

/// Share of the table evicted at once when it is full: amortises the O(n) scan.
const EVICT_DIVISOR: usize = 8;

/// Tracks login attempts. A std `Mutex` (not an actor or tokio's lock): every critical section
/// is a few map operations with no `.await`, so contention is negligible and no task can hold
/// it across a suspension point.
pub struct LoginThrottle {
    settings: ThrottleSettings,
    entries: Mutex<HashMap<Key, Entry>>,
    hasher: std::collections::hash_map::RandomState,
}

/// One reserved login attempt, counted as a failure unless [`LoginAttempt::succeeded`] is
/// called — dropping it (wrong password, unknown user, cancelled request) keeps it counted.
#[must_use = "an attempt is a failure unless `succeeded` is called"]
pub struct LoginAttempt<'a> {
    throttle: &'a LoginThrottle,
    account: u64,
    address: IpAddr,
    counted_for_account: bool,
}

impl LoginThrottle {
    /// A throttle with the configured policy.
    pub fn new(settings: ThrottleSettings) -> Self {
        Self {
            settings,
            entries: Mutex::new(HashMap::new()),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn account(&self, username: &str) -> u64 {
        self.hasher.hash_one(username.to_ascii_lowercase())
    }

    fn window(&self) -> Duration {
        Duration::from_secs(self.settings.window_secs)
    }

    /// The delay after `failures` attempts with `free` of them free, doubling per attempt.
    fn delay(&self, failures: u32, free: u32) -> Option<Duration> {
        let over = failures.checked_sub(free)?.checked_sub(1)?;
        let secs = self
            .settings
            .base_delay_secs
            .saturating_mul(1u64 << over.min(20))
            .min(self.settings.max_delay_secs);
        Some(Duration::from_secs(secs))
    }

    /// Reserves a login attempt for `username` from `addr` before its password is checked.
    /// `Err(wait)` when a counter is locked (answer 429 with `Retry-After: wait`); no argon2
    /// work may be done then.
    pub fn begin(&self, username: &str, addr: IpAddr) -> Result<LoginAttempt<'_>, Duration> {
        let now = Instant::now();
        let account = self.account(username);
        let address = address_key(addr);
        let s = &self.settings;
        let mut map = self.lock();
        let known = map
            .get(&Key::Known(account, address))
            .is_some_and(|e| now.duration_since(e.last).as_secs() < s.known_address_secs);
        let mut keys = vec![
            (
                Key::AccountFromAddress(account, address),
                s.account_free_failures,
            ),
            (Key::Address(address), s.address_free_failures),
        ];
        if !known {
            keys.push((Key::Account(account), s.account_global_free_failures));
        }
        let wait = keys
            .iter()
            .filter_map(|(k, _)| map.get(k)?.locked_until)
            .filter(|until| *until > now)
            .map(|until| until - now)
            .max();
        if let Some(wait) = wait {
            return Err(wait);
        }
        let new_keys = keys.iter().filter(|(k, _)| !map.contains_key(k)).count();
        if !self.make_room(&mut map, new_keys, now) {
            tracing::warn!("login throttle table is full of live locks; refusing new keys");
            return Err(Duration::from_secs(s.base_delay_secs.max(1)));
        }
        let window = self.window();
        for (key, free) in keys {
            let e = map.entry(key).or_insert(Entry {
                failures: 0,
                last: now,
                locked_until: None,
            });
            if now.duration_since(e.last) >= window {
                e.failures = 0;
            }
            e.failures = e.failures.saturating_add(1);
            e.last = now;
            if let Some(delay) = self.delay(e.failures, free) {
                e.locked_until = Some(now + delay);
            }
        }
        Ok(LoginAttempt {
            throttle: self,
            account,
            address,
            counted_for_account: !known,
        })
    }

    /// Makes room for `needed` new entries: drops stale ones, then the oldest unlocked ones.
    /// `false` if the table is still too full (every entry a live lock).
    fn make_room(&self, map: &mut HashMap<Key, Entry>, needed: usize, now: Instant) -> bool {
        let max = self.settings.max_entries.max(needed);
        if map.len() + needed <= max {
            return true;
        }
        let (window, known_for) = (
            self.window(),
            Duration::from_secs(self.settings.known_address_secs),
        );
        let locked = |e: &Entry| e.locked_until.is_some_and(|u| u > now);
        map.retain(|k, e| {
            let keep_for = if matches!(k, Key::Known(..)) {
                known_for
            } else {
                window
            };
            locked(e) || now.duration_since(e.last) < keep_for
        });
        if map.len() + needed > max {
            let mut unlocked: Vec<(Instant, Key)> = map
                .iter()
                .filter(|(_, e)| !locked(e))
                .map(|(k, e)| (e.last, *k))
                .collect();
            let evict = (max / EVICT_DIVISOR).max(map.len() + needed - max);
            if unlocked.len() > evict {
                unlocked.select_nth_unstable_by_key(evict, |(last, _)| *last);
                unlocked.truncate(evict);
            }
            for (_, k) in unlocked {
                map.remove(&k);
            }
        }
        map.len() + needed <= max
    }
}

impl LoginAttempt<'_> {
    /// Gives this attempt back to the address and account counters (and to the pair counter
    /// too when `pair` is set), lifting a lock it caused.
    fn give_back(&self, map: &mut HashMap<Key, Entry>, pair: bool) {
        let s = &self.throttle.settings;
        let mut keys = vec![(Key::Address(self.address), s.address_free_failures)];
        if self.counted_for_account {
            keys.push((Key::Account(self.account), s.account_global_free_failures));
        }
        if pair {
            keys.push((
                Key::AccountFromAddress(self.account, self.address),
                s.account_free_failures,
            ));
        }
        for (key, free) in keys {
            if let Some(e) = map.get_mut(&key) {
                e.failures = e.failures.saturating_sub(1);
                if e.failures <= free {
                    e.locked_until = None;
                }
            }
        }
    }

    /// The password was right: the account's count from this address is cleared, this
    /// attempt is given back to the other counters, and the address becomes known for the
    /// account.
    pub fn succeeded(self) {
        let t = self.throttle;
        let now = Instant::now();
        let mut map = t.lock();
        map.remove(&Key::AccountFromAddress(self.account, self.address));
        self.give_back(&mut map, false);
        let known = Key::Known(self.account, self.address);
        if map.contains_key(&known) || t.make_room(&mut map, 1, now) {
            map.insert(
                known,
                Entry {
                    failures: 0,
                    last: now,
                    locked_until: None,
                },
            );
        }
    }

    /// The password was never checked (hashing saturated, database unreachable): no guess was
    /// made, so the attempt is given back everywhere. Only for failures before the verdict —
    /// a cancelled request may have been checked and stays counted.
    pub fn not_checked(self) {
        let mut map = self.throttle.lock();
        self.give_back(&mut map, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ThrottleSettings {
        ThrottleSettings {
            account_free_failures: 2,
            address_free_failures: 100,
            account_global_free_failures: 100,
            base_delay_secs: 1,
            max_delay_secs: 8,
            window_secs: 60,
            known_address_secs: 3600,
            max_entries: 1000,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn fail(t: &LoginThrottle, name: &str, addr: IpAddr) -> Result<(), Duration> {
        t.begin(name, addr).map(drop)
    }

    #[test]
    fn delays_start_after_free_failures_and_grow() {
        let t = LoginThrottle::new(settings());
        let a = ip("10.0.0.1");
        fail(&t, "alice", a).expect("free");
        fail(&t, "alice", a).expect("free");
        fail(&t, "alice", a).expect("third is still checked, then locks");
        let first = t.begin("ALICE", a).err().expect("locked");
        assert!(first <= Duration::from_secs(1));
        assert!(
            t.begin("bob", a).is_ok(),
            "another account from the address"
        );
    }

    #[test]
    fn attempts_are_counted_before_the_check() {
        let t = LoginThrottle::new(settings());
        let a = ip("10.0.0.1");
        // Three reserved at once (in flight, not yet answered): the fourth is refused.
        let held: Vec<_> = (0..3).map(|_| t.begin("alice", a).expect("free")).collect();
        assert!(t.begin("alice", a).is_err());
        drop(held);
    }

    #[test]
    fn success_clears_the_pair_and_gives_the_attempt_back() {
        let t = LoginThrottle::new(settings());
        let a = ip("10.0.0.1");
        fail(&t, "alice", a).expect("free");
        fail(&t, "alice", a).expect("free");
        t.begin("alice", a).expect("third").succeeded();
        for _ in 0..3 {
            fail(&t, "alice", a).expect("count starts again");
        }
    }

    #[test]
    fn an_attempt_never_checked_is_given_back() {
        let t = LoginThrottle::new(settings());
        let a = ip("10.0.0.1");
        for _ in 0..10 {
            t.begin("alice", a).expect("never locked").not_checked();
        }
    }

    #[test]
    fn one_address_cannot_lock_the_account_elsewhere() {
        let t = LoginThrottle::new(settings());
        for _ in 0..10 {
            let _ = fail(&t, "alice", ip("10.0.0.66"));
        }
        assert!(t.begin("alice", ip("10.0.0.66")).is_err());
        assert!(t.begin("alice", ip("192.0.2.1")).is_ok());
    }

    #[test]
    fn many_addresses_lock_the_account_except_where_it_logged_in_before() {
        let t = LoginThrottle::new(ThrottleSettings {
            account_global_free_failures: 3,
            ..settings()
        });
        t.begin("alice", ip("192.0.2.1"))
            .expect("owner")
            .succeeded();
        for i in 1..=4 {
            fail(&t, "alice", ip(&format!("10.0.0.{i}"))).expect("each address's first");
        }
        assert!(
            t.begin("alice", ip("10.0.0.99")).is_err(),
            "a new address waits"
        );
        assert!(
            t.begin("alice", ip("192.0.2.1")).is_ok(),
            "a known one does not"
        );
    }

    #[test]
    fn a_full_table_still_throttles_new_accounts() {
        let t = LoginThrottle::new(ThrottleSettings {
            max_entries: 8,
            ..settings()
        });
        for i in 0..20 {
            let _ = fail(&t, &format!("filler{i}"), ip(&format!("10.1.0.{i}")));
        }
        let a = ip("10.0.0.1");
        let refused = (0..10).filter(|_| fail(&t, "newcomer", a).is_err()).count();
        assert!(
            refused >= 7,
            "only the free attempts and one more pass: {refused}"
        );
        assert!(t.lock().len() <= 8);
    }

    #[test]
    fn a_table_of_live_locks_refuses_new_keys() {
        let t = LoginThrottle::new(ThrottleSettings {
            max_entries: 3,
            account_free_failures: 0,
            address_free_failures: 0,
            account_global_free_failures: 0,
            ..settings()
        });
        fail(&t, "alice", ip("10.0.0.1")).expect("locks all three keys");
        assert!(fail(&t, "bob", ip("10.0.0.2")).is_err(), "fails closed");
    }

    #[test]
    fn ipv6_addresses_share_their_64() {
        let t = LoginThrottle::new(settings());
        for i in 1..=3 {
            let _ = fail(&t, "alice", ip(&format!("2001:db8::{i}")));
        }
        assert!(t.begin("alice", ip("2001:db8::ffff")).is_err());
    }
}
