//! Registration rate limit per client address: a token bucket of
//! `auth.register_per_address_per_hour` tokens per address (IPv4, or IPv6 /64), refilled evenly
//! over the hour. Free accounts are a lever (each can be throttled, invite, hold sockets), and
//! each registration costs an argon2 hash, so one address gets only a few per hour (OWASP
//! Authentication Cheat Sheet, "Protect against automated attacks"). Over the limit: 429
//! `too_many_attempts` with `Retry-After`, before any hashing or database work.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::domain::address_key;

/// One address's bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Tokens left at `at`.
    tokens: f64,
    /// When `tokens` was computed.
    at: Instant,
}

/// Per-address registration buckets. A std `Mutex`: each critical section is a few map
/// operations with no `.await`.
pub struct RegistrationLimit {
    per_hour: u32,
    max_entries: usize,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl RegistrationLimit {
    /// `per_hour` registrations per address (also the burst; 0 refuses every registration); at
    /// most `max_entries` addresses tracked (a full table of partly spent buckets refuses new
    /// addresses: fail closed).
    pub fn new(per_hour: u32, max_entries: usize) -> Self {
        Self {
            per_hour,
            max_entries: max_entries.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, Bucket>> {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tokens per second.
    fn rate(&self) -> f64 {
        f64::from(self.per_hour) / 3600.0
    }

    fn refilled(&self, b: Bucket, now: Instant) -> f64 {
        (b.tokens + now.duration_since(b.at).as_secs_f64() * self.rate())
            .min(f64::from(self.per_hour))
    }

    /// Takes one registration for `addr`, or `Err(wait)` until the next one is allowed.
    pub fn take(&self, addr: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let key = address_key(addr);
        let full = f64::from(self.per_hour);
        let next_token = secs(1.0 / self.rate());
        let mut map = self.lock();
        if !map.contains_key(&key) && map.len() >= self.max_entries {
            // A full bucket says nothing an absent one would not: drop those first.
            map.retain(|_, b| self.refilled(*b, now) < full);
            if map.len() >= self.max_entries {
                tracing::warn!("registration limit table is full; refusing new addresses");
                return Err(next_token);
            }
        }
        let bucket = map.entry(key).or_insert(Bucket {
            tokens: full,
            at: now,
        });
        let tokens = self.refilled(*bucket, now);
        if tokens < 1.0 {
            *bucket = Bucket { tokens, at: now };
            return Err(secs((1.0 - tokens) / self.rate()));
        }
        *bucket = Bucket {
            tokens: tokens - 1.0,
            at: now,
        };
        Ok(())
    }
}

/// Seconds as a duration, at most an hour (the bucket refills within one); never panics, even
/// on a zero rate.
fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s)
        .unwrap_or(Duration::MAX)
        .min(Duration::from_secs(3600))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn an_address_gets_its_hourly_share_then_waits() {
        let limit = RegistrationLimit::new(3, 100);
        for _ in 0..3 {
            limit.take(ip("10.0.0.1")).expect("within the share");
        }
        let wait = limit.take(ip("10.0.0.1")).expect_err("over the share");
        assert!(wait <= Duration::from_secs(1200) && wait > Duration::from_secs(1100));
        assert!(limit.take(ip("10.0.0.2")).is_ok(), "another address");
        assert!(limit.take(ip("2001:db8::1")).is_ok());
    }

    #[test]
    fn a_full_table_refuses_new_addresses() {
        let limit = RegistrationLimit::new(3, 2);
        limit.take(ip("10.0.0.1")).expect("first");
        limit.take(ip("10.0.0.2")).expect("second");
        assert!(limit.take(ip("10.0.0.3")).is_err(), "fails closed");
    }
}
