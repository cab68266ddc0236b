// Copyright (c) Sean Lawlor
//
// This source code is licensed under both the MIT license found in the
// LICENSE-MIT file in the root directory of this source tree.

//! Shared concurrency primitives utilized within the library for different frameworks (tokio, async-std, etc)

/// A timeout error
#[derive(Debug)]
pub struct Timeout;
impl std::error::Error for Timeout {}
impl std::fmt::Display for Timeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Timeout")
    }
}

/// A notification
pub type Notify = tokio::sync::Notify;

/// A one-use sender
pub type OneshotSender<T> = tokio::sync::oneshot::Sender<T>;
/// A one-use receiver
pub type OneshotReceiver<T> = tokio::sync::oneshot::Receiver<T>;

/// A bounded MP;SC sender
pub type MpscSender<T> = tokio::sync::mpsc::Sender<T>;
/// A bounded MP;SC receiver
pub type MpscReceiver<T> = tokio::sync::mpsc::Receiver<T>;

/// A bounded MP;SC sender
pub type MpscUnboundedSender<T> = tokio::sync::mpsc::UnboundedSender<T>;
/// A bounded MP;SC receiver
pub type MpscUnboundedReceiver<T> = tokio::sync::mpsc::UnboundedReceiver<T>;

/// A bounded broadcast sender
pub type BroadcastSender<T> = tokio::sync::broadcast::Sender<T>;
/// A bounded broadcast receiver
pub type BroadcastReceiver<T> = tokio::sync::broadcast::Receiver<T>;

/// MPSC bounded channel
pub fn mpsc_bounded<T>(buffer: usize) -> (MpscSender<T>, MpscReceiver<T>) {
    tokio::sync::mpsc::channel(buffer)
}

/// MPSC unbounded channel
pub fn mpsc_unbounded<T>() -> (MpscUnboundedSender<T>, MpscUnboundedReceiver<T>) {
    tokio::sync::mpsc::unbounded_channel()
}

/// An unbounded MPSC channel that allocates nothing until its first message: the shared
/// state is a small `Arc` (a mutex around a `VecDeque`, which allocates on first push, and a
/// `Notify`), instead of tokio's channel which allocates its first block of 32 slots and a
/// cache-padded shared state (about 3 KiB for a `SupervisionEvent`) when it is made.
///
/// callsignal patch: used for the supervision port, which most actors (every leaf actor)
/// never receive a message on; see PATCHES.md at the root of this crate.
pub mod lazy_unbounded {
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex, MutexGuard};

    pub use tokio::sync::mpsc::error::{SendError, TryRecvError};

    struct Queue<T> {
        items: VecDeque<T>,
        /// The receiver closed the channel or every sender is gone.
        closed: bool,
    }

    impl<T> Queue<T> {
        /// Takes the first message; an emptied queue lets go of a large buffer (a burst, say
        /// thousands of children stopping at once, would otherwise stay allocated for the
        /// actor's life; tokio's channel frees its blocks too).
        fn pop(&mut self) -> Option<T> {
            let v = self.items.pop_front();
            if self.items.is_empty() && self.items.capacity() > 8 {
                self.items = VecDeque::new();
            }
            v
        }
    }

    struct Shared<T> {
        queue: Mutex<Queue<T>>,
        notify: tokio::sync::Notify,
        senders: AtomicUsize,
    }

    impl<T> Shared<T> {
        fn lock(&self) -> MutexGuard<'_, Queue<T>> {
            // No code panics while holding the lock (push/pop only).
            self.queue.lock().unwrap_or_else(|p| p.into_inner())
        }
    }

    /// The sending half (cloneable).
    pub struct Sender<T>(Arc<Shared<T>>);

    /// The receiving half.
    pub struct Receiver<T>(Arc<Shared<T>>);

    /// Makes a channel; allocates only the small shared state.
    pub fn channel<T>() -> (Sender<T>, Receiver<T>) {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                closed: false,
            }),
            notify: tokio::sync::Notify::new(),
            senders: AtomicUsize::new(1),
        });
        (Sender(shared.clone()), Receiver(shared))
    }

    impl<T> Sender<T> {
        /// Queues `value`; gives it back if the receiver closed the channel or is gone.
        pub fn send(&self, value: T) -> Result<(), SendError<T>> {
            {
                let mut q = self.0.lock();
                if q.closed {
                    return Err(SendError(value));
                }
                q.items.push_back(value);
            }
            self.0.notify.notify_one();
            Ok(())
        }
    }

    impl<T> Clone for Sender<T> {
        fn clone(&self) -> Self {
            self.0.senders.fetch_add(1, Ordering::Relaxed);
            Sender(self.0.clone())
        }
    }

    impl<T> Drop for Sender<T> {
        fn drop(&mut self) {
            if self.0.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
                self.0.lock().closed = true;
                self.0.notify.notify_one();
            }
        }
    }

    impl<T> Receiver<T> {
        /// The next message, or `None` once the channel is closed and empty (cancel safe: a
        /// message is taken only in the poll that returns it).
        pub async fn recv(&mut self) -> Option<T> {
            loop {
                let ready = {
                    let q = self.0.lock();
                    q.closed || !q.items.is_empty()
                };
                if ready {
                    // Like tokio's own channels, a receive that returns spends a unit of the
                    // task's cooperative budget: an actor fed by this port yields to the
                    // runtime now and then (without it, an actor that restarts a child whose
                    // task the shutting down runtime cancels at once loops forever inside one
                    // poll). Spent before taking the message, so a receive cancelled here
                    // loses nothing.
                    #[cfg(all(feature = "tokio_runtime", not(feature = "async-std")))]
                    tokio::task::coop::consume_budget().await;
                    // Only this receiver takes messages: what was there is still there.
                    return self.0.lock().pop();
                }
                // `notify_one` stores a permit when nobody waits, so a message sent between
                // the check above and this await wakes it.
                self.0.notify.notified().await;
            }
        }

        /// The next message if one is queued.
        pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
            let mut q = self.0.lock();
            match q.pop() {
                Some(v) => Ok(v),
                None if q.closed => Err(TryRecvError::Disconnected),
                None => Err(TryRecvError::Empty),
            }
        }

        /// Refuses further messages; those already queued can still be received.
        pub fn close(&mut self) {
            self.0.lock().closed = true;
        }
    }

    impl<T> Drop for Receiver<T> {
        fn drop(&mut self) {
            let items = {
                let mut q = self.0.lock();
                q.closed = true;
                std::mem::take(&mut q.items)
            };
            // Dropped outside the lock: a message's drop may drop an actor's last reference,
            // whose ports may be this channel's.
            drop(items);
        }
    }

    #[cfg(all(test, feature = "tokio_runtime", not(feature = "async-std")))]
    mod tests {
        use super::*;

        #[tokio::test]
        async fn messages_arrive_in_order_and_close_refuses_new_ones() {
            let (tx, mut rx) = channel();
            tx.send(1).unwrap();
            tx.send(2).unwrap();
            assert_eq!(rx.recv().await, Some(1));
            rx.close();
            assert!(tx.send(3).is_err(), "closed: refused, message given back");
            assert_eq!(rx.recv().await, Some(2), "queued before close: still delivered");
            assert_eq!(rx.recv().await, None);
            assert!(matches!(rx.try_recv(), Err(TryRecvError::Disconnected)));
        }

        #[tokio::test]
        async fn a_waiting_receiver_is_woken_and_dropping_every_sender_ends_it() {
            let (tx, mut rx) = channel();
            let tx2 = tx.clone();
            let waiter = tokio::spawn(async move {
                let a = rx.recv().await;
                let b = rx.recv().await;
                (a, b, rx.recv().await)
            });
            tokio::task::yield_now().await;
            tx.send(7).unwrap();
            tx2.send(8).unwrap();
            drop(tx);
            drop(tx2);
            assert_eq!(waiter.await.unwrap(), (Some(7), Some(8), None));
        }

        #[tokio::test]
        async fn a_send_after_the_receiver_is_gone_fails() {
            let (tx, rx) = channel::<u8>();
            drop(rx);
            assert_eq!(tx.send(1).unwrap_err().0, 1);
        }

        #[tokio::test]
        async fn a_cancelled_receive_loses_nothing() {
            let (tx, mut rx) = channel();
            // A receive that loses a race (as in `select!`) is dropped while waiting.
            tokio::select! {
                biased;
                _ = std::future::ready(()) => {}
                _ = rx.recv() => unreachable!(),
            }
            tx.send(5).unwrap();
            assert_eq!(rx.recv().await, Some(5));
        }

        #[tokio::test]
        async fn an_emptied_queue_lets_go_of_a_burst() {
            let (tx, mut rx) = channel();
            for i in 0..10_000 {
                tx.send(i).unwrap();
            }
            assert!(rx.0.lock().items.capacity() >= 10_000);
            for i in 0..10_000 {
                assert_eq!(rx.recv().await, Some(i));
            }
            assert_eq!(rx.0.lock().items.capacity(), 0);
        }

        #[tokio::test(flavor = "current_thread")]
        async fn receiving_spends_the_cooperative_budget() {
            // A loop fed only by this channel must yield to the runtime now and then, like one
            // fed by a tokio channel: another task gets to run before 1,000 messages are taken.
            let (tx, mut rx) = channel();
            for i in 0..1000 {
                tx.send(i).unwrap();
            }
            let other_ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flag = other_ran.clone();
            tokio::spawn(async move { flag.store(true, std::sync::atomic::Ordering::SeqCst) });
            let mut taken = 0;
            while taken < 1000 && !other_ran.load(std::sync::atomic::Ordering::SeqCst) {
                rx.recv().await.unwrap();
                taken += 1;
            }
            assert!(taken < 1000, "the receiving loop never yielded");
        }
    }

    impl<T> std::fmt::Debug for Sender<T> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("lazy_unbounded::Sender")
        }
    }

    impl<T> std::fmt::Debug for Receiver<T> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("lazy_unbounded::Receiver")
        }
    }
}

/// Oneshot channel
pub fn oneshot<T>() -> (OneshotSender<T>, OneshotReceiver<T>) {
    tokio::sync::oneshot::channel()
}

/// Broadcast channel
pub fn broadcast<T: Clone>(buffer: usize) -> (BroadcastSender<T>, BroadcastReceiver<T>) {
    tokio::sync::broadcast::channel(buffer)
}

#[cfg(all(
    not(all(target_arch = "wasm32", target_os = "unknown")),
    not(feature = "async-std")
))]
pub mod tokio_primitives;
#[cfg(all(
    not(all(target_arch = "wasm32", target_os = "unknown")),
    not(feature = "async-std")
))]
pub use self::tokio_primitives::*;

#[cfg(all(
    not(all(target_arch = "wasm32", target_os = "unknown")),
    feature = "async-std"
))]
pub mod async_std_primitives;
#[cfg(all(
    not(all(target_arch = "wasm32", target_os = "unknown")),
    feature = "async-std"
))]
pub use self::async_std_primitives::*;

#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
pub mod wasm_browser_primitives;
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
pub use self::wasm_browser_primitives::*;

#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
mod target_specific {
    pub(crate) use web_time::SystemTime;
}
#[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
mod target_specific {
    pub(crate) use std::time::SystemTime;
}

pub(crate) use target_specific::SystemTime;
