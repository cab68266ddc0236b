//! One timer for the heartbeats of every socket (contract §2: the server pings, and drops a
//! peer silent for two intervals), instead of a timer per socket.
//!
//! A timer per socket cost each socket task a heap-allocated `Sleep` (≈ 128 bytes held for the
//! socket's whole life, even idle) and a poll of it every time the task woke up — once per
//! relayed message. Here a wheel of `ws.heartbeat_secs × 10` slots is turned by one task every
//! [`TICK`]: a socket joins the slot visited last, so it is visited one interval after it
//! joined and every interval after that. A visit looks at the socket's [`SocketControl`]: if
//! no frame arrived since the last visit the socket is one interval more silent; at two it is
//! dropped (no closing handshake: the peer is gone), otherwise the socket task is asked to
//! ping (its payload is the highest `seq` written, so the pong proves delivery). The slot holds
//! a weak reference: a socket that ended is forgotten at its next visit.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::actors::connection::{Beat, ControlInner, SocketControl};

/// How often the wheel turns by one slot: a socket is pinged within this much of its interval.
pub const TICK: Duration = Duration::from_millis(100);

/// The heartbeat wheel (see the module docs).
#[derive(Debug)]
pub struct Heartbeats {
    wheel: Mutex<Wheel>,
}

#[derive(Debug)]
struct Wheel {
    slots: Vec<Vec<Weak<ControlInner>>>,
    /// The slot visited last (a socket joining now is visited one whole turn later).
    current: usize,
}

impl Heartbeats {
    /// A wheel that visits each socket every `interval` (rounded to [`TICK`]s, at least one).
    pub fn new(interval: Duration) -> Arc<Self> {
        let n = usize::try_from(interval.as_millis().div_ceil(TICK.as_millis()))
            .unwrap_or(usize::MAX)
            .clamp(1, 1 << 20);
        Arc::new(Self {
            wheel: Mutex::new(Wheel {
                slots: (0..n).map(|_| Vec::new()).collect(),
                current: 0,
            }),
        })
    }

    /// Starts turning the wheel on the current tokio runtime (at server start, beside the
    /// listener); the task ends once the wheel is dropped.
    pub fn start(self: &Arc<Self>) {
        tokio::spawn(turn(Arc::downgrade(self)));
    }

    fn wheel(&self) -> std::sync::MutexGuard<'_, Wheel> {
        // Never held across an await; a panic while holding it leaves only a slot's list.
        self.wheel.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Watches `control`'s socket from now on: first visit one interval from now.
    pub fn watch(&self, control: &SocketControl) {
        // The frame that got the socket here (its `hello`) was heard.
        control.heard();
        let mut w = self.wheel();
        let i = w.current;
        w.slots[i].push(control.downgrade());
    }

    /// Sockets watched now (ended ones count until their slot's next visit).
    pub fn watched(&self) -> usize {
        self.wheel().slots.iter().map(Vec::len).sum()
    }

    /// Moves to the next slot and visits its sockets.
    fn advance(&self) {
        let (i, mut due) = {
            let mut w = self.wheel();
            w.current = (w.current + 1) % w.slots.len();
            let i = w.current;
            (i, std::mem::take(&mut w.slots[i]))
        };
        // Outside the lock: sockets joining meanwhile go into this slot's fresh list.
        due.retain(|weak| {
            weak.upgrade()
                .is_some_and(|inner| SocketControl::from_inner(inner).beat() == Beat::Watching)
        });
        if due.is_empty() {
            return;
        }
        let mut w = self.wheel();
        let slot = &mut w.slots[i];
        if slot.is_empty() {
            *slot = due;
        } else {
            slot.append(&mut due);
        }
    }
}

async fn turn(wheel: Weak<Heartbeats>) {
    let mut tick = tokio::time::interval(TICK);
    // After a stall the wheel goes on from where it was, one slot per tick: catching up in a
    // burst could count two silent intervals before any pong was read.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(wheel) = wheel.upgrade() else {
            return;
        };
        wheel.advance();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::future::Future;

    use super::*;
    use crate::actors::connection::Signal;

    /// Polls `control`'s signal once: what the socket task would see now.
    fn signal_now(control: &SocketControl) -> Option<Signal> {
        let fut = control.signal();
        tokio::pin!(fut);
        let waker = futures_util::task::noop_waker();
        match fut.poll(&mut std::task::Context::from_waker(&waker)) {
            std::task::Poll::Ready(s) => Some(s),
            std::task::Poll::Pending => None,
        }
    }

    #[tokio::test]
    async fn a_socket_is_pinged_each_turn_and_dropped_after_two_silent_ones() {
        let wheel = Heartbeats::new(Duration::from_millis(300));
        let (talking, silent) = (SocketControl::default(), SocketControl::default());
        wheel.watch(&talking);
        wheel.watch(&silent);
        // Two slots later: not visited yet.
        wheel.advance();
        wheel.advance();
        assert_eq!(signal_now(&silent), None);
        // One whole turn (3 slots): both pinged (the hello counts as heard).
        wheel.advance();
        assert_eq!(signal_now(&talking), Some(Signal::Ping));
        assert_eq!(signal_now(&silent), Some(Signal::Ping));
        assert_eq!(signal_now(&silent), None, "one ping per visit");
        for turn in 0..2 {
            talking.heard();
            for _ in 0..3 {
                wheel.advance();
            }
            assert_eq!(signal_now(&talking), Some(Signal::Ping), "turn {turn}");
            let expect = if turn == 0 {
                Signal::Ping
            } else {
                Signal::Drop
            };
            assert_eq!(signal_now(&silent), Some(expect), "turn {turn}");
        }
        assert_eq!(wheel.watched(), 1, "the dropped socket left the wheel");
        drop(talking);
        for _ in 0..3 {
            wheel.advance();
        }
        assert_eq!(
            wheel.watched(),
            0,
            "an ended socket is forgotten at its visit"
        );
    }

    #[tokio::test]
    async fn a_close_asked_for_wins_over_the_silent_drop() {
        let c = SocketControl::default();
        c.kill(4001);
        for _ in 0..3 {
            let _ = c.beat();
        }
        assert_eq!(signal_now(&c), Some(Signal::Close(4001)));
    }

    #[tokio::test]
    async fn a_kill_wins_over_a_ping_and_a_killed_socket_leaves() {
        let wheel = Heartbeats::new(TICK);
        let c = SocketControl::default();
        wheel.watch(&c);
        c.kill(4401);
        wheel.advance();
        assert_eq!(signal_now(&c), Some(Signal::Close(4401)));
        assert_eq!(wheel.watched(), 0);
    }
}
