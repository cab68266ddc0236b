//! The queue from a connection actor to its socket task: bounded in count, one producer (the
//! connection actor, through its `SocketLink`) and one consumer (the socket task).
//!
//! Why not `tokio::sync::mpsc`: a tokio channel allocates its first block of 32 slots up front
//! (≈ 1.8 KiB for `Outbound`) plus a separate shared state, for every socket, even an idle one.
//! This queue is a `VecDeque` behind a mutex: it allocates nothing until a frame is queued and
//! gives back a grown buffer once drained, so an idle connection pays for a few words. The
//! mutex is uncontended in practice (one producer, one consumer, held for a push or a pop). A
//! drained queue frees its buffer at once, so an idle connection's queue allocates nothing.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

#[derive(Debug)]
struct Shared<T> {
    queue: Mutex<VecDeque<T>>,
    capacity: usize,
    ready: Notify,
    /// The sender was dropped (the connection let go of this socket).
    sender_gone: AtomicBool,
    /// The receiver was dropped (the socket task ended).
    receiver_gone: AtomicBool,
}

impl<T> Shared<T> {
    fn queue(&self) -> MutexGuard<'_, VecDeque<T>> {
        // Never held across an await; a panic while holding it cannot leave it inconsistent.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A new queue holding at most `capacity` items.
pub fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(VecDeque::new()),
        capacity,
        ready: Notify::new(),
        sender_gone: AtomicBool::new(false),
        receiver_gone: AtomicBool::new(false),
    });
    (Sender(shared.clone()), Receiver(shared))
}

/// Why [`Sender::try_send`] refused an item (which it gives back).
#[derive(Debug, PartialEq, Eq)]
pub enum TrySendError<T> {
    /// The queue holds `capacity` items.
    Full(T),
    /// The receiver is gone.
    Closed(T),
}

/// The producer side (not `Clone`: dropping it tells the receiver that no more will come).
#[derive(Debug)]
pub struct Sender<T>(Arc<Shared<T>>);

impl<T> Sender<T> {
    /// Queues `item` unless the queue is full or the receiver is gone.
    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        if self.0.receiver_gone.load(Ordering::Acquire) {
            return Err(TrySendError::Closed(item));
        }
        {
            let mut q = self.0.queue();
            if q.len() >= self.0.capacity {
                return Err(TrySendError::Full(item));
            }
            q.push_back(item);
        }
        self.0.ready.notify_one();
        Ok(())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.0.sender_gone.store(true, Ordering::Release);
        self.0.ready.notify_one();
    }
}

/// The consumer side.
#[derive(Debug)]
pub struct Receiver<T>(Arc<Shared<T>>);

impl<T> Receiver<T> {
    /// The next item; `None` once the sender is gone and everything queued was taken.
    /// Cancel-safe: an item is only removed when it is returned.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            if let Some(item) = self.try_recv() {
                return Some(item);
            }
            if self.0.sender_gone.load(Ordering::Acquire) {
                // The sender may have pushed right before leaving.
                return self.try_recv();
            }
            // `notify_one` stores a permit when nobody waits, so a push between the check
            // above and this await is not missed.
            self.0.ready.notified().await;
        }
    }

    /// The next item if one is queued.
    pub fn try_recv(&mut self) -> Option<T> {
        let mut q = self.0.queue();
        let item = q.pop_front();
        // A drained queue frees its buffer: an idle connection holds no allocation here
        // (keeping even the 4 slots `VecDeque` first grows to cost 224 bytes per idle
        // connection — its `welcome`'s); a busy one pays one small allocation per batch.
        if q.is_empty() && q.capacity() > 0 {
            *q = VecDeque::new();
        }
        item
    }

    /// Items queued now.
    pub fn len(&self) -> usize {
        self.0.queue().len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.0.receiver_gone.store(true, Ordering::Release);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_ordered_and_closes() {
        let (tx, mut rx) = channel(2);
        assert_eq!(tx.try_send(1), Ok(()));
        assert_eq!(tx.try_send(2), Ok(()));
        assert_eq!(tx.try_send(3), Err(TrySendError::Full(3)));
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(tx.try_send(3), Ok(()));
        drop(tx);
        assert_eq!(rx.recv().await, Some(2));
        assert_eq!(rx.recv().await, Some(3));
        assert_eq!(rx.recv().await, None, "sender gone and drained");
    }

    #[tokio::test]
    async fn a_dropped_receiver_refuses_and_a_waiting_one_wakes() {
        let (tx, mut rx) = channel::<u32>(4);
        let waiter = tokio::spawn(async move { (rx.recv().await, rx) });
        tokio::task::yield_now().await;
        tx.try_send(7).unwrap();
        let (got, rx) = waiter.await.unwrap();
        assert_eq!(got, Some(7));
        drop(rx);
        assert_eq!(tx.try_send(8), Err(TrySendError::Closed(8)));
    }

    #[test]
    fn a_drained_queue_gives_back_its_buffer() {
        let (tx, mut rx) = channel(1000);
        for i in 0..500 {
            tx.try_send(i).unwrap();
        }
        while rx.try_recv().is_some() {}
        assert_eq!(rx.0.queue().capacity(), 0);
        tx.try_send(1).unwrap();
        assert_eq!(rx.try_recv(), Some(1));
        assert_eq!(rx.0.queue().capacity(), 0, "one item taken: nothing kept");
    }
}
