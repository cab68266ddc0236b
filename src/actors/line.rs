//! A connection's outgoing line: the numbered stream of messages for its client (`seq`), the
//! messages held until the client has them, and the current socket's queue — shared by the
//! connection actor, its socket task and, for an answered call, the socket task of the other
//! party, which appends relayed `sdp`/`ice` itself (no actor mailbox hop on the relay path of an
//! answered call; docs/architecture.md, "A call, message by message").
//!
//! Every message for the client enters the line under its one lock, so `seq` order, the held
//! order and the socket queue's order are the same order. Held messages are bounded in count
//! and bytes (`ws.outbound_queue`, `ws.outbound_queue_bytes`): when a bound is reached, messages
//! already written are forgotten first; if that is not enough, the line is marked overflowed and
//! the connection actor disconnects the client that does not read.
//!
//! The lock is a `std::sync::Mutex`, never held across an await: each holder pushes, trims or
//! swaps a socket and lets go. Lock order: the line, then the socket queue's own lock.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::connection::{Outbound, SocketLink};
use crate::domain::CallId;
use crate::ws::outbox;

/// A message could not be queued: the client does not read (or stayed away too long).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow;

/// A connection's outgoing line (see the module docs).
#[derive(Debug)]
pub struct Line {
    state: Mutex<LineState>,
    /// Most messages held (`ws.outbound_queue`).
    max: usize,
    /// Most bytes held (`ws.outbound_queue_bytes`).
    max_bytes: usize,
}

/// How a direct append from the other party's socket task went.
#[derive(Debug, PartialEq, Eq)]
pub enum Appended {
    /// Numbered, held and queued to the socket (if one is attached).
    Done,
    /// Not appended: the line is not open for this call yet, or relayed messages sent through
    /// the connection actor's mailbox are still on their way. The caller casts it to the actor
    /// instead; the line counted it ([`LineState::relayed_by_actor`] uncounts it).
    ViaActor,
    /// The line overflowed now: the caller tells the connection actor to disconnect.
    Overflowed,
    /// The line had already overflowed (the connection is ending): dropped, like every message
    /// for a client being disconnected.
    Ending,
}

/// The line's state, behind its lock.
#[derive(Debug)]
pub struct LineState {
    /// `seq` of the next message.
    next_seq: u64,
    /// Messages not known to be delivered, in `seq` order (contiguous).
    held: VecDeque<(u64, Utf8Bytes)>,
    held_bytes: usize,
    /// Highest `seq` written by any socket of this connection.
    written: u64,
    /// The current socket.
    socket: Option<SocketLink>,
    /// The answered call whose other party may append directly: set by the connection actor
    /// once `call.accepted` is in the line, so no relayed message overtakes it.
    open_for: Option<CallId>,
    /// Relayed messages cast to the connection actor and not yet appended by it: direct
    /// appends wait until it has caught up, so none overtakes them.
    in_mailbox: u32,
    /// A bound was hit; the connection actor disconnects the client.
    overflowed: bool,
}

impl Line {
    /// A new line with the given bounds, attached to `socket`.
    pub fn new(max: usize, max_bytes: usize, socket: Option<SocketLink>) -> Self {
        Self {
            state: Mutex::new(LineState {
                next_seq: 1,
                held: VecDeque::new(),
                held_bytes: 0,
                written: 0,
                socket,
                open_for: None,
                in_mailbox: 0,
                overflowed: false,
            }),
            max,
            max_bytes,
        }
    }

    /// The line's state, locked. Never hold it across an await.
    pub fn lock(&self) -> Guard<'_> {
        Guard {
            // A panic while holding it leaves no half-made change: every method below changes
            // the state only after its last fallible step.
            state: self.state.lock().unwrap_or_else(|p| p.into_inner()),
            line: self,
        }
    }

    /// The other party's socket task appends a relayed message for `call_id`, built by
    /// `text(seq)` (the whole frame with `"seq"`), unless it must go through the actor
    /// ([`Appended::ViaActor`]: then `via_actor` is called under the lock, so the order of
    /// those casts is the order of the line).
    pub fn append_relayed(
        &self,
        call_id: CallId,
        received: Instant,
        text: impl FnOnce(u64) -> String,
        via_actor: impl FnOnce() -> bool,
    ) -> Appended {
        let mut g = self.lock();
        if g.state.overflowed {
            return Appended::Ending;
        }
        if g.state.open_for != Some(call_id) || g.state.in_mailbox > 0 {
            if via_actor() {
                g.state.in_mailbox += 1;
            }
            return Appended::ViaActor;
        }
        match g.push(text, Some(received)) {
            Ok(()) => Appended::Done,
            Err(Overflow) => Appended::Overflowed,
        }
    }
}

/// The locked state of a [`Line`].
pub struct Guard<'a> {
    state: MutexGuard<'a, LineState>,
    line: &'a Line,
}

impl Guard<'_> {
    /// Numbers a message (`text(seq)` makes the frame), holds it and queues it to the socket.
    /// `received`: when a relayed message's original arrived (the socket task records the
    /// relay latency). A closed socket queue is not an error: the socket task is gone and its
    /// end notice is on the way; the message is held for the next socket.
    pub fn push(
        &mut self,
        text: impl FnOnce(u64) -> String,
        received: Option<Instant>,
    ) -> Result<(), Overflow> {
        if self.state.overflowed {
            return Err(Overflow);
        }
        let seq = self.state.next_seq;
        let text = Utf8Bytes::from(text(seq));
        // Room is made before the message is taken, so the held bytes never exceed the bound,
        // not even for the message that overflows it (that one is not numbered or held).
        self.make_room(text.len())?;
        let s = &mut *self.state;
        let out = match received {
            Some(at) => Outbound::Relayed(seq, text.clone(), at),
            None => Outbound::Text(seq, text.clone()),
        };
        if let Some(sock) = &s.socket
            && let Err(outbox::TrySendError::Full(_)) = sock.tx.try_send(out)
        {
            s.overflowed = true;
            return Err(Overflow);
        }
        s.next_seq += 1;
        s.held_bytes += text.len();
        s.held.push_back((seq, text));
        Ok(())
    }

    /// Sends a per-socket message (`welcome`, resume errors): no `seq`, never held or replayed.
    pub fn push_unsequenced(&mut self, text: String) -> Result<(), Overflow> {
        match &self.state.socket {
            Some(s) => {
                s.tx.try_send(Outbound::Text(0, Utf8Bytes::from(text)))
                    .map_err(|_| Overflow)
            }
            None => Ok(()),
        }
    }

    /// Makes room for one more message of `len` bytes within the count and byte bounds,
    /// forgetting written messages first; marks the line overflowed if that is not enough.
    fn make_room(&mut self, len: usize) -> Result<(), Overflow> {
        let (max, max_bytes) = (self.line.max, self.line.max_bytes);
        let fits = |s: &LineState| s.held.len() < max && s.held_bytes + len <= max_bytes;
        if fits(&self.state) {
            return Ok(());
        }
        let written = self.refresh_written();
        while !fits(&self.state) {
            match self.state.held.front() {
                Some((seq, _)) if *seq <= written => {
                    let seq = *seq;
                    self.trim_to(seq);
                }
                _ => {
                    self.state.overflowed = true;
                    return Err(Overflow);
                }
            }
        }
        Ok(())
    }

    /// The highest `seq` written by any socket of this connection.
    pub fn refresh_written(&mut self) -> u64 {
        if let Some(s) = &self.state.socket {
            self.state.written = self.state.written.max(s.control.written());
        }
        self.state.written
    }

    /// Forgets held messages up to `seq` (the client has them).
    pub fn trim_to(&mut self, seq: u64) {
        let s = &mut *self.state;
        while let Some((n, text)) = s.held.front() {
            if *n > seq {
                break;
            }
            s.held_bytes -= text.len();
            s.held.pop_front();
        }
    }

    /// The client processed every message up to `seq` (an `ack`): it can only vouch for what
    /// was sent.
    pub fn acked(&mut self, seq: u64) {
        let seq = seq.min(self.state.next_seq - 1);
        self.trim_to(seq);
    }

    /// The client provably has every message up to `seq` (the pong to a heartbeat ping that
    /// carried it): only what was written counts.
    pub fn delivered(&mut self, seq: u64) {
        let seq = seq.min(self.refresh_written());
        self.trim_to(seq);
    }

    /// Queues the held messages after `after` to the current socket.
    pub fn replay_after(&self, after: u64) -> Result<(), Overflow> {
        let Some(s) = &self.state.socket else {
            return Ok(());
        };
        for (seq, text) in self.state.held.iter().filter(|(seq, _)| *seq > after) {
            s.tx.try_send(Outbound::Text(*seq, text.clone()))
                .map_err(|_| Overflow)?;
        }
        Ok(())
    }

    /// Replaces the socket; gives back the old one (its written progress is kept).
    pub fn replace_socket(&mut self, socket: Option<SocketLink>) -> Option<SocketLink> {
        self.refresh_written();
        std::mem::replace(&mut self.state.socket, socket)
    }

    /// The current socket.
    pub fn socket(&self) -> Option<&SocketLink> {
        self.state.socket.as_ref()
    }

    /// The `seq` the next message gets.
    pub fn next_seq(&self) -> u64 {
        self.state.next_seq
    }

    /// The first held `seq`, or the next one when nothing is held.
    pub fn first_held(&self) -> u64 {
        self.state
            .held
            .front()
            .map_or(self.state.next_seq, |(s, _)| *s)
    }

    /// Messages and bytes held.
    pub fn held(&self) -> (usize, usize) {
        (self.state.held.len(), self.state.held_bytes)
    }

    /// Held messages after `after`.
    pub fn held_after(&self, after: u64) -> usize {
        self.state.held.iter().filter(|(s, _)| *s > after).count()
    }

    /// Opens (or closes, `None`) the line to direct appends for a call's relayed messages.
    pub fn open_for(&mut self, call_id: Option<CallId>) {
        self.state.open_for = call_id;
    }

    /// The connection actor appends a relayed message that reached it through its mailbox;
    /// `counted`: it was counted by [`Line::append_relayed`].
    pub fn relayed_by_actor(&mut self, counted: bool) {
        if counted {
            self.state.in_mailbox = self.state.in_mailbox.saturating_sub(1);
        }
    }

    /// Marks the line overflowed (no more messages are taken).
    pub fn set_overflowed(&mut self) {
        self.state.overflowed = true;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::actors::connection::SocketControl;

    fn link(capacity: usize) -> (SocketLink, outbox::Receiver<Outbound>) {
        let (tx, rx) = outbox::channel(capacity);
        (
            SocketLink {
                socket_id: 1,
                tx,
                control: SocketControl::default(),
            },
            rx,
        )
    }

    fn seq_of(out: Outbound) -> u64 {
        match out {
            Outbound::Text(seq, _) | Outbound::Relayed(seq, _, _) => seq,
            Outbound::Close(..) => 0,
        }
    }

    #[test]
    fn direct_appends_wait_for_the_call_and_for_the_mailbox() {
        let (sock, mut rx) = link(16);
        let line = Line::new(100, 1 << 20, Some(sock));
        let call = CallId::new();
        let now = Instant::now();
        let mut casts = 0;
        let mut via_actor = |line: &Line| {
            line.append_relayed(
                call,
                now,
                |s| format!("{s}"),
                || {
                    casts += 1;
                    true
                },
            )
        };
        // Not open yet: through the actor (counted).
        assert_eq!(via_actor(&line), Appended::ViaActor);
        line.lock().push(|s| format!("accepted {s}"), None).unwrap();
        line.lock().open_for(Some(call));
        // Open, but one is still in the mailbox: this one follows it there.
        assert_eq!(via_actor(&line), Appended::ViaActor);
        assert_eq!(casts, 2);
        // The actor appends both; then direct appends go straight in.
        for _ in 0..2 {
            let mut g = line.lock();
            g.relayed_by_actor(true);
            g.push(|s| format!("{s}"), Some(now)).unwrap();
        }
        let r = line.append_relayed(call, now, |s| format!("{s}"), || unreachable!());
        assert_eq!(r, Appended::Done);
        // Another call's messages never go straight in.
        let r = line.append_relayed(CallId::new(), now, |s| format!("{s}"), || false);
        assert_eq!(r, Appended::ViaActor);
        let mut seqs = Vec::new();
        while let Some(out) = rx.try_recv() {
            seqs.push(seq_of(out));
        }
        assert_eq!(seqs, vec![1, 2, 3, 4]);
    }

    #[test]
    fn bounds_forget_written_first_then_overflow() {
        let (sock, _rx) = link(64);
        let control = sock.control.clone();
        let line = Line::new(3, 1 << 20, Some(sock));
        for _ in 0..3 {
            line.lock().push(|s| format!("m{s}"), None).unwrap();
        }
        control.mark_written(2);
        // 4 held > 3: message 1 (written) is forgotten.
        line.lock().push(|s| format!("m{s}"), None).unwrap();
        assert_eq!(line.lock().first_held(), 2);
        line.lock().push(|s| format!("m{s}"), None).unwrap();
        // 5 held: 2 was written and goes; 3..5 are not written: the next push overflows.
        assert_eq!(line.lock().first_held(), 3);
        assert_eq!(line.lock().push(|s| format!("m{s}"), None), Err(Overflow));
        let r = line.append_relayed(CallId::new(), Instant::now(), |s| format!("{s}"), || true);
        assert_eq!(r, Appended::Ending);
    }

    #[test]
    fn held_bytes_never_exceed_the_bound_even_when_it_overflows() {
        let (sock, _rx) = link(1024);
        let line = Line::new(1000, 1000, Some(sock));
        let msg = |s: u64| format!("{s:0>300}");
        for _ in 0..3 {
            line.lock().push(msg, None).unwrap();
        }
        assert_eq!(line.lock().held(), (3, 900));
        // A fourth of 300 bytes does not fit and nothing was written: overflow, not held.
        assert_eq!(line.lock().push(msg, None), Err(Overflow));
        assert_eq!(line.lock().held(), (3, 900));
        assert_eq!(line.lock().next_seq(), 4, "the refused message took no seq");

        // With the first written, it is forgotten to make room.
        let (sock, _rx) = link(1024);
        let control2 = sock.control.clone();
        let line = Line::new(1000, 1000, Some(sock));
        for _ in 0..3 {
            line.lock().push(msg, None).unwrap();
        }
        control2.mark_written(1);
        line.lock().push(msg, None).unwrap();
        assert_eq!(line.lock().held(), (3, 900));
        assert_eq!(line.lock().first_held(), 2);
    }

    #[test]
    fn a_full_socket_queue_overflows_without_holding_the_message() {
        let (sock, _rx) = link(2);
        let line = Line::new(100, 1 << 20, Some(sock));
        line.lock().push(|s| format!("m{s}"), None).unwrap();
        line.lock().push(|s| format!("m{s}"), None).unwrap();
        assert_eq!(line.lock().push(|s| format!("m{s}"), None), Err(Overflow));
        assert_eq!(line.lock().held().0, 2);
    }

    #[test]
    fn acks_only_vouch_for_what_was_sent_and_pongs_for_what_was_written() {
        let (sock, _rx) = link(64);
        let control = sock.control.clone();
        let line = Line::new(100, 1 << 20, Some(sock));
        for _ in 0..4 {
            line.lock().push(|s| format!("m{s}"), None).unwrap();
        }
        control.mark_written(2);
        line.lock().delivered(99);
        assert_eq!(
            line.lock().first_held(),
            3,
            "a pong vouches only for written messages"
        );
        line.lock().acked(99);
        assert_eq!(
            line.lock().held(),
            (0, 0),
            "an ack up to the last sent clears all"
        );
        assert_eq!(line.lock().next_seq(), 5);
    }
}
