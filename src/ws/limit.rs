//! Per-user limits on what clients send (contract §2.2 "Limits"). One [`RateLimiter`] is
//! shared by every connection of a user and outlives them while it is not back to full, so
//! neither a reconnect nor a resume resets it.

use std::time::Instant;

use crate::config::WsSettings;

/// What the limiter says about one inbound frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the limits.
    Pass,
    /// Over the limits: answer `error rate_limited`, drop the frame.
    Limited,
    /// Persistent abuse: close 1008.
    Abuse,
}

/// Two token buckets (frames and bytes) and a leaky strike counter.
///
/// * frames: `rate_limit_per_sec` sustained, bursts of `rate_limit_burst`;
/// * bytes: `rate_limit_bytes_per_sec` sustained, bursts of `rate_limit_bytes_burst`;
/// * every refused frame adds a strike; strikes leak so that `rate_limit_strikes` of them are
///   forgiven after `rate_limit_strike_decay_secs` of good behaviour; more than
///   `rate_limit_strikes` outstanding is abuse.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    frames: f64,
    bytes: f64,
    strikes: f64,
    last: Instant,
    frame_rate: f64,
    frame_burst: f64,
    byte_rate: f64,
    byte_burst: f64,
    strike_max: f64,
    strike_leak: f64,
}

impl RateLimiter {
    /// A full limiter with the configured policy.
    pub fn new(ws: &WsSettings) -> Self {
        let strike_max = f64::from(ws.rate_limit_strikes);
        Self {
            frames: f64::from(ws.rate_limit_burst),
            bytes: ws.rate_limit_bytes_burst as f64,
            strikes: 0.0,
            last: Instant::now(),
            frame_rate: f64::from(ws.rate_limit_per_sec),
            frame_burst: f64::from(ws.rate_limit_burst),
            byte_rate: ws.rate_limit_bytes_per_sec as f64,
            byte_burst: ws.rate_limit_bytes_burst as f64,
            strike_max,
            strike_leak: strike_max / ws.rate_limit_strike_decay_secs.max(1) as f64,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.frames = (self.frames + dt * self.frame_rate).min(self.frame_burst);
        self.bytes = (self.bytes + dt * self.byte_rate).min(self.byte_burst);
        self.strikes = (self.strikes - dt * self.strike_leak).max(0.0);
    }

    /// Accounts one inbound frame of `len` bytes (any kind: text, binary, ping, pong, close).
    pub fn take(&mut self, len: usize) -> Verdict {
        self.take_at(len, Instant::now())
    }

    /// [`take`](Self::take) at a given instant (for tests with controlled time).
    pub fn take_at(&mut self, len: usize, now: Instant) -> Verdict {
        self.refill(now);
        let len = len as f64;
        if self.frames >= 1.0 && self.bytes >= len {
            self.frames -= 1.0;
            self.bytes -= len;
            return Verdict::Pass;
        }
        self.strikes += 1.0;
        if self.strikes > self.strike_max {
            Verdict::Abuse
        } else {
            Verdict::Limited
        }
    }

    /// Whether the limiter is back to its initial state (full buckets, no strikes), so that
    /// forgetting it resets nothing.
    pub fn is_rested(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.frames >= self.frame_burst && self.bytes >= self.byte_burst && self.strikes <= 0.0
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ws() -> WsSettings {
        crate::config::Settings::from_figment(crate::config::Settings::defaults())
            .expect("defaults")
            .ws
    }

    #[test]
    fn occasional_bursts_are_forgiven_but_persistent_floods_are_abuse() {
        let mut l = RateLimiter::new(&ws());
        let mut now = Instant::now();
        // Three bursts of 135 frames 2 ms apart, 10 s of quiet between them.
        for _ in 0..3 {
            for _ in 0..135 {
                assert_ne!(l.take_at(40, now), Verdict::Abuse);
                now += Duration::from_millis(2);
            }
            now += Duration::from_secs(10);
        }
        // A flood is abuse quickly.
        let verdicts: Vec<_> = (0..400).map(|_| l.take_at(40, now)).collect();
        assert!(verdicts.contains(&Verdict::Abuse));
    }

    #[test]
    fn bytes_count_as_well_as_frames() {
        let mut l = RateLimiter::new(&ws());
        let now = Instant::now();
        let big = ws().rate_limit_bytes_burst / 2 + 1;
        assert_eq!(l.take_at(big, now), Verdict::Pass);
        assert_eq!(l.take_at(big, now), Verdict::Limited);
        assert!(!l.is_rested(now));
        assert!(l.is_rested(now + Duration::from_secs(3600)));
    }
}
