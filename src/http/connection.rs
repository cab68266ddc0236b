//! Bounds on each TCP connection of the HTTP server: the deadlines a connection lives under from
//! its first byte to its last idle moment, and the cap on connections held by one client address.
//! Nothing here parses HTTP (hyper does); [`super::serve`] wires these around every connection.
//!
//! Why our own deadlines and not hyper's: hyper's `header_read_timeout` starts only once the
//! HTTP/1 parser runs, but the version detection in front of it (hyper-util's `auto`) waits for
//! the first 24 bytes without any deadline, and an HTTP/2 connection with no streams lives as
//! long as its peer answers pings. A connection that does nothing useful must still end. And
//! hyper's HTTP/1 header timer starts as soon as it waits for the next head, data or not: it
//! closed every idle keep-alive connection at `header_read_timeout_secs` (10 s), not at
//! `idle_timeout_secs` (60 s) — a proxy keeping upstream connections for 50 s then sent
//! requests into connections the server was closing. So hyper's timer is off, and a later
//! HTTP/1 head's deadline runs from its first byte ([`Watched`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::domain::address_key;

/// How long a connection told to close (idle deadline, shutdown) may take to say goodbye —
/// flush a response, send HTTP/2 GOAWAY — before its socket is simply dropped. Short, because
/// a peer that does not read must not keep the slot.
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The deadlines of one connection (from `[server]`, see `config/default.toml`).
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// From accept to the first complete request head, whatever the protocol: a silent socket,
    /// a trickled HTTP/1 head (slowloris) or an HTTP/2 preface with no stream all end here; and
    /// from the first byte of every later HTTP/1 head to its end
    /// (`server.header_read_timeout_secs`).
    pub first_request: Duration,
    /// No request in progress for this long after the last one finished: the connection is
    /// closed (HTTP/1 keep-alive idle timeout; HTTP/2 GOAWAY) (`server.idle_timeout_secs`).
    pub idle: Duration,
}

/// What one connection is doing, as seen by its service: requests in progress and when the last
/// one finished. A std `Mutex` (not tokio's): each critical section is a few field updates with
/// no `.await` inside.
#[derive(Debug)]
pub struct Activity {
    opened: Instant,
    state: Mutex<ActivityState>,
    /// Woken whenever a request starts or ends, so the deadline is recomputed at once.
    changed: Notify,
    /// Set while an HTTP/1 connection is between requests and no byte of the next head has
    /// arrived: the next read that brings bytes notes the head's start ([`Watched`]). One
    /// relaxed load per read otherwise (after a WebSocket upgrade [`Watched`] lets go of the
    /// activity at its next read).
    awaiting_head: AtomicBool,
    /// The connection speaks HTTP/2 (its streams are requests; bytes between them are pings
    /// and settings, not heads).
    http2: AtomicBool,
}

#[derive(Debug)]
struct ActivityState {
    in_flight: usize,
    last_done: Option<Instant>,
    /// When the first byte of the next HTTP/1 head arrived (after `last_done`).
    head_started: Option<Instant>,
}

/// Marks one request in progress; dropping it (the handler finished or was cancelled) records
/// the end.
#[derive(Debug)]
pub struct RequestGuard(Arc<Activity>);

impl Default for Activity {
    fn default() -> Self {
        Self {
            opened: Instant::now(),
            state: Mutex::new(ActivityState {
                in_flight: 0,
                last_done: None,
                head_started: None,
            }),
            changed: Notify::new(),
            awaiting_head: AtomicBool::new(false),
            http2: AtomicBool::new(false),
        }
    }
}

impl Activity {
    fn lock(&self) -> MutexGuard<'_, ActivityState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request's head arrived and its handler starts; `http2` for a request of an HTTP/2
    /// connection.
    pub fn begin(self: &Arc<Self>, http2: bool) -> RequestGuard {
        if http2 {
            self.http2.store(true, Ordering::Relaxed);
        }
        self.awaiting_head.store(false, Ordering::Relaxed);
        {
            let mut s = self.lock();
            s.in_flight += 1;
            s.head_started = None;
        }
        self.changed.notify_waiters();
        RequestGuard(self.clone())
    }

    /// `bytes` arrived: if the connection was waiting for a next HTTP/1 head, it started now —
    /// unless they are only empty lines, which a server ignores before a request line (RFC 9112
    /// §2.2; some clients send one after a body): they keep the idle deadline.
    fn bytes_arrived(&self, bytes: &[u8]) {
        if !self.awaiting_head.load(Ordering::Relaxed)
            || bytes.iter().all(|b| matches!(b, b'\r' | b'\n'))
            || !self.awaiting_head.swap(false, Ordering::Relaxed)
        {
            return;
        }
        {
            let mut s = self.lock();
            if s.in_flight > 0 || s.head_started.is_some() {
                return;
            }
            s.head_started = Some(Instant::now());
        }
        self.changed.notify_waiters();
    }

    /// When the connection must close if nothing changes, or `None` while a request is in
    /// progress (its body has its own deadline, `server.body_read_timeout_secs`).
    pub fn deadline(&self, deadlines: Deadlines) -> Option<Instant> {
        let s = self.lock();
        if s.in_flight > 0 {
            return None;
        }
        Some(match (s.last_done, s.head_started) {
            (None, _) => self.opened + deadlines.first_request,
            // A head under way has its own deadline, whatever the idle one says.
            (Some(_), Some(head)) => head + deadlines.first_request,
            (Some(done), None) => done + deadlines.idle,
        })
    }

    /// Resolves once the connection has passed its deadline with no request in progress.
    pub async fn expired(&self, deadlines: Deadlines) {
        loop {
            // Registered before reading the state, so no change between the two is missed.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.deadline(deadlines) {
                Some(at) if at <= Instant::now() => return,
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        {
            let mut s = self.0.lock();
            s.in_flight = s.in_flight.saturating_sub(1);
            s.last_done = Some(Instant::now());
            if s.in_flight == 0 && !self.0.http2.load(Ordering::Relaxed) {
                self.0.awaiting_head.store(true, Ordering::Relaxed);
            }
        }
        self.0.changed.notify_waiters();
    }
}

/// A connection's byte stream, noting in its [`Activity`] when the first byte of a next HTTP/1
/// request head arrives (the head's deadline runs from then). It lets go of the activity once
/// nothing else holds it (the connection was upgraded to a WebSocket and its HTTP deadlines are
/// gone): an idle WebSocket keeps no HTTP state.
#[derive(Debug)]
pub struct Watched<IO> {
    io: IO,
    activity: Option<Arc<Activity>>,
}

impl<IO> Watched<IO> {
    /// `io`, watched for `activity`.
    pub fn new(io: IO, activity: Arc<Activity>) -> Self {
        Self {
            io,
            activity: Some(activity),
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Some(activity) = &self.activity {
            if buf.filled().len() > before {
                activity.bytes_arrived(&buf.filled()[before..]);
            }
            if Arc::strong_count(activity) == 1 {
                self.activity = None;
            }
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Counts open connections per client address so that one address holds at most `cap` of the
/// server's `server.max_tcp_connections` slots (`server.max_connections_per_address`). The map
/// only holds addresses with an open connection, so it is bounded by the slot count.
#[derive(Debug)]
pub struct AddressSlots {
    cap: usize,
    held: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's share of its address's cap, given back on drop.
#[derive(Debug)]
pub struct AddressSlot {
    slots: Arc<AddressSlots>,
    key: IpAddr,
}

impl AddressSlots {
    /// At most `cap` connections per address; 0 = no cap.
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            cap: if cap == 0 { usize::MAX } else { cap },
            held: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for a new connection from `ip`, or `None` when its address holds the cap already.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        let key = address_key(ip);
        let mut held = self.lock();
        let count = held.entry(key).or_insert(0);
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            slots: self.clone(),
            key,
        })
    }

    /// Open connections counted for `ip`'s address.
    #[cfg(test)]
    fn held(&self, ip: IpAddr) -> usize {
        self.lock().get(&address_key(ip)).copied().unwrap_or(0)
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut held = self.slots.lock();
        if let Some(count) = held.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn one_address_gets_at_most_its_cap_and_slots_come_back() {
        let slots = AddressSlots::new(2);
        let a = slots.try_acquire(ip("10.0.0.1")).expect("first");
        let _b = slots.try_acquire(ip("10.0.0.1")).expect("second");
        assert!(slots.try_acquire(ip("10.0.0.1")).is_none(), "third refused");
        assert!(slots.try_acquire(ip("10.0.0.2")).is_some(), "other address");
        drop(a);
        assert!(slots.try_acquire(ip("10.0.0.1")).is_some(), "slot returned");
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let slots = AddressSlots::new(1);
        let _a = slots.try_acquire(ip("2001:db8:1:2::1")).expect("first");
        assert!(
            slots.try_acquire(ip("2001:db8:1:2:ffff::9")).is_none(),
            "same /64"
        );
        assert!(
            slots.try_acquire(ip("2001:db8:1:3::1")).is_some(),
            "next /64"
        );
        let _v4 = slots.try_acquire(ip("192.0.2.7")).expect("v4");
        assert!(
            slots.try_acquire(ip("::ffff:192.0.2.7")).is_none(),
            "mapped"
        );
    }

    #[test]
    fn no_cap_when_zero() {
        let slots = AddressSlots::new(0);
        let held: Vec<_> = (0..100)
            .map(|_| slots.try_acquire(ip("10.0.0.1")).expect("uncapped"))
            .collect();
        assert_eq!(slots.held(ip("10.0.0.1")), held.len());
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_runs_from_accept_then_from_the_last_request() {
        let d = Deadlines {
            first_request: Duration::from_secs(2),
            idle: Duration::from_secs(5),
        };
        let activity = Arc::new(Activity::default());
        let opened = Instant::now();
        assert_eq!(activity.deadline(d), Some(opened + d.first_request));
        let guard = activity.begin(false);
        assert_eq!(
            activity.deadline(d),
            None,
            "busy connections have no idle deadline"
        );
        tokio::time::advance(Duration::from_secs(30)).await;
        drop(guard);
        let done = Instant::now();
        assert_eq!(activity.deadline(d), Some(done + d.idle));
        activity.expired(d).await;
        assert_eq!(Instant::now(), done + d.idle);
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_http1_head_runs_on_the_header_deadline_from_its_first_byte() {
        let d = Deadlines {
            first_request: Duration::from_secs(2),
            idle: Duration::from_secs(60),
        };
        let activity = Arc::new(Activity::default());
        drop(activity.begin(false));
        let done = Instant::now();
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(
            activity.deadline(d),
            Some(done + d.idle),
            "idle, no byte yet"
        );
        activity.bytes_arrived(b"\r\n");
        assert_eq!(
            activity.deadline(d),
            Some(done + d.idle),
            "an empty line before a request line is not a head (RFC 9112 §2.2)"
        );
        activity.bytes_arrived(b"G");
        let head = Instant::now();
        assert_eq!(activity.deadline(d), Some(head + d.first_request));
        tokio::time::advance(Duration::from_secs(1)).await;
        activity.bytes_arrived(b"ET / HTTP/1.1");
        assert_eq!(
            activity.deadline(d),
            Some(head + d.first_request),
            "from the head's first byte, not its latest"
        );
        drop(activity.begin(false));
        let done = Instant::now();
        assert_eq!(
            activity.deadline(d),
            Some(done + d.idle),
            "the head completed"
        );
        // HTTP/2: bytes between streams are pings and settings, not heads.
        let h2 = Arc::new(Activity::default());
        drop(h2.begin(true));
        let done = Instant::now();
        h2.bytes_arrived(b"\0\0\0\x04");
        assert_eq!(h2.deadline(d), Some(done + d.idle));
    }

    /// After a WebSocket upgrade the stream is the only holder of the connection's activity:
    /// it lets go at its next read (an idle WebSocket keeps no HTTP state; ~128 bytes each).
    #[tokio::test]
    async fn the_stream_lets_go_of_the_activity_once_only_it_holds_it() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, server) = tokio::io::duplex(64);
        let activity = Arc::new(Activity::default());
        let weak = Arc::downgrade(&activity);
        let mut watched = Watched::new(server, activity.clone());
        let mut client = client;
        let mut buf = [0u8; 8];
        client.write_all(b"a").await.expect("write");
        assert_eq!(watched.read(&mut buf).await.expect("read"), 1);
        assert!(weak.upgrade().is_some(), "the connection still holds it");
        drop(activity);
        client.write_all(b"b").await.expect("write");
        assert_eq!(watched.read(&mut buf).await.expect("read"), 1);
        assert!(
            weak.upgrade().is_none(),
            "let go once only the stream held it"
        );
        client.write_all(b"c").await.expect("write");
        assert_eq!(
            watched.read(&mut buf).await.expect("read"),
            1,
            "still reads"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_watchdog_sees_a_request_end() {
        let d = Deadlines {
            first_request: Duration::from_secs(30),
            idle: Duration::from_secs(1),
        };
        let activity = Arc::new(Activity::default());
        let watchdog = tokio::spawn({
            let activity = activity.clone();
            async move { activity.expired(d).await }
        });
        tokio::task::yield_now().await;
        drop(activity.begin(false));
        let done = Instant::now();
        watchdog.await.expect("watchdog");
        assert_eq!(Instant::now(), done + d.idle, "not the 30 s first deadline");
    }
}
