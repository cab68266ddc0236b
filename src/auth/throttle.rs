//! Login throttling per account and per client address. After the free failures, each further
//! failure doubles the delay (from `base_delay_secs` up to `max_delay_secs`) before the next
//! attempt is even looked at; the answer meanwhile is 429 with `Retry-After`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::ThrottleSettings;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Account(u64),
    Address(IpAddr),
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last_failure: Instant,
    locked_until: Option<Instant>,
}

/// Tracks failed logins. A std `Mutex` (not an actor or tokio's lock): every critical section
/// is a few map operations with no `.await`, so contention is negligible and no task can hold
/// it across a suspension point.
pub struct LoginThrottle {
    settings: ThrottleSettings,
    entries: Mutex<HashMap<Key, Entry>>,
    hasher: std::collections::hash_map::RandomState,
}

/// Accounts are tracked by a keyed hash of the lower-cased name, so the table holds no raw
/// usernames (or passwords mistyped into the name field); the per-process random key makes
/// colliding two accounts on purpose impractical.
fn account_key(hasher: &std::collections::hash_map::RandomState, username: &str) -> Key {
    use std::hash::BuildHasher;
    Key::Account(hasher.hash_one(username.to_ascii_lowercase()))
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Some(wait)` if a login for `username` from `addr` must wait that long first.
    pub fn check(&self, username: &str, addr: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let map = self.lock();
        [account_key(&self.hasher, username), Key::Address(addr)]
            .iter()
            .filter_map(|k| map.get(k)?.locked_until)
            .filter(|until| *until > now)
            .map(|until| until - now)
            .max()
    }

    /// Records a failed attempt against both keys.
    pub fn record_failure(&self, username: &str, addr: IpAddr) {
        let now = Instant::now();
        let window = Duration::from_secs(self.settings.window_secs);
        let mut map = self.lock();
        if map.len() >= self.settings.max_entries {
            map.retain(|_, e| {
                now.duration_since(e.last_failure) < window
                    || e.locked_until.is_some_and(|u| u > now)
            });
        }
        for (key, free) in [
            (
                account_key(&self.hasher, username),
                self.settings.account_free_failures,
            ),
            (Key::Address(addr), self.settings.address_free_failures),
        ] {
            if !map.contains_key(&key) && map.len() >= self.settings.max_entries {
                tracing::warn!("login throttle table is full; not tracking a new key");
                continue;
            }
            let e = map.entry(key).or_insert(Entry {
                failures: 0,
                last_failure: now,
                locked_until: None,
            });
            if now.duration_since(e.last_failure) >= window {
                e.failures = 0;
            }
            e.failures += 1;
            e.last_failure = now;
            if e.failures > free {
                let exp = (e.failures - free - 1).min(20);
                let secs = self
                    .settings
                    .base_delay_secs
                    .saturating_mul(1u64 << exp)
                    .min(self.settings.max_delay_secs);
                e.locked_until = Some(now + Duration::from_secs(secs));
            }
        }
    }

    /// Clears the account's failures after a successful login.
    pub fn record_success(&self, username: &str) {
        self.lock().remove(&account_key(&self.hasher, username));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ThrottleSettings {
        ThrottleSettings {
            account_free_failures: 2,
            address_free_failures: 100,
            base_delay_secs: 1,
            max_delay_secs: 8,
            window_secs: 60,
            max_entries: 10,
        }
    }

    #[test]
    fn delays_start_after_free_failures_and_grow() {
        let t = LoginThrottle::new(settings());
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        t.record_failure("alice", ip);
        t.record_failure("alice", ip);
        assert!(t.check("alice", ip).is_none());
        t.record_failure("alice", ip);
        let first = t.check("ALICE", ip).expect("locked");
        t.record_failure("alice", ip);
        let second = t.check("alice", ip).expect("locked");
        assert!(second > first, "{second:?} > {first:?}");
        assert!(t.check("bob", ip).is_none());
        t.record_success("alice");
        assert!(t.check("alice", ip).is_none());
    }
}
