//! The queue from a connection actor to its socket task: bounded in count, one producer (the
//! connection actor, through its `SocketLink`) and one consumer (the socket task).
//!
//! Why not `tokio::sync::mpsc`: a tokio channel allocates its first block of 32 slots up front
//! (≈ 1.8 KiB for `Outbound`) plus a separate shared state, for every socket, even an idle one.
//! This queue is a slot for its oldest item and a `VecDeque` for the rest, behind a mutex. The
//! buffer is allocated only when a second item waits and freed once drained, so an idle
//! connection's queue allocates nothing, and neither does a call's usual traffic (one frame
//! queued, then written). The mutex is uncontended in practice (one producer, one consumer,
//! held for a push or a pop).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;

use futures_util::task::AtomicWaker;

/// The items in order: `first` (when set) before all of `rest`.
#[derive(Debug)]
struct Queue<T> {
    first: Option<T>,
    rest: VecDeque<T>,
}

impl<T> Queue<T> {
    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    fn push(&mut self, item: T) {
        // `first` only takes an item when nothing else waits, so it is always the oldest.
        if self.first.is_none() && self.rest.is_empty() {
            self.first = Some(item);
        } else {
            self.rest.push_back(item);
        }
    }

    fn pop(&mut self) -> Option<T> {
        let item = self.first.take().or_else(|| self.rest.pop_front());
        // A drained buffer is freed: an idle connection holds no allocation here (keeping even
        // the 4 slots `VecDeque` first grows to cost 224 bytes per idle connection — its
        // `welcome`'s).
        if self.rest.is_empty() && self.rest.capacity() > 0 {
            self.rest = VecDeque::new();
        }
        item
    }
}

#[derive(Debug)]
struct Shared<T> {
    queue: Mutex<Queue<T>>,
    capacity: usize,
    /// The receiver's task, woken by a push or by the sender's drop (one consumer: an
    /// `AtomicWaker`, not a `Notify` and its lock-guarded list of waiters).
    ready: AtomicWaker,
    /// The sender was dropped (the connection let go of this socket).
    sender_gone: AtomicBool,
    /// The receiver was dropped (the socket task ended).
    receiver_gone: AtomicBool,
}

impl<T> Shared<T> {
    fn queue(&self) -> MutexGuard<'_, Queue<T>> {
        // Never held across an await; a panic while holding it cannot leave it inconsistent.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A new queue holding at most `capacity` items.
pub fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue {
            first: None,
            rest: VecDeque::new(),
        }),
        capacity,
        ready: AtomicWaker::new(),
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
            q.push(item);
        }
        self.0.ready.wake();
        Ok(())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.0.sender_gone.store(true, Ordering::Release);
        self.0.ready.wake();
    }
}

/// The consumer side.
#[derive(Debug)]
pub struct Receiver<T>(Arc<Shared<T>>);

impl<T> Receiver<T> {
    /// The next item; `None` once the sender is gone and everything queued was taken.
    /// Cancel-safe: an item is only removed when it is returned. A few atomic operations and
    /// one uncontended lock per poll (no waiter list: one consumer).
    pub fn recv(&mut self) -> impl Future<Output = Option<T>> + '_ {
        std::future::poll_fn(move |cx| {
            // Registered before looking, so a push (or the sender's drop) after the look wakes
            // the task, and one before it is seen now.
            self.0.ready.register(cx.waker());
            if let Some(item) = self.try_recv() {
                return Poll::Ready(Some(item));
            }
            if self.0.sender_gone.load(Ordering::Acquire) {
                // The sender may have pushed right before leaving.
                return Poll::Ready(self.try_recv());
            }
            Poll::Pending
        })
    }

    /// The next item if one is queued.
    pub fn try_recv(&mut self) -> Option<T> {
        self.0.queue().pop()
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

    /// A receiver waiting on an empty queue wakes when the sender goes (and sees the end), and
    /// one that polled an empty queue and was woken finds what was pushed meanwhile, however
    /// many times it was polled in between (the waker is replaced, never lost).
    #[tokio::test]
    async fn a_waiting_receiver_wakes_for_a_push_or_the_end() {
        let (tx, mut rx) = channel::<u32>(4);
        let waiter = tokio::spawn(async move { rx.recv().await });
        tokio::task::yield_now().await;
        drop(tx);
        assert_eq!(waiter.await.unwrap(), None, "woken by the sender's drop");

        let (tx, mut rx) = channel::<u32>(4);
        let mut recv = Box::pin(rx.recv());
        for _ in 0..3 {
            assert_eq!(futures_util::FutureExt::now_or_never(recv.as_mut()), None);
        }
        tx.try_send(9).unwrap();
        assert_eq!(recv.await, Some(9));
    }

    #[test]
    fn a_drained_queue_gives_back_its_buffer() {
        let (tx, mut rx) = channel(1000);
        for i in 0..500 {
            tx.try_send(i).unwrap();
        }
        for i in 0..250 {
            assert_eq!(rx.try_recv(), Some(i));
        }
        for i in 500..600 {
            tx.try_send(i).unwrap();
        }
        let mut got = vec![];
        while let Some(i) = rx.try_recv() {
            got.push(i);
        }
        assert_eq!(
            got,
            (250..600).collect::<Vec<_>>(),
            "in order across the refill"
        );
        assert_eq!(rx.0.queue().rest.capacity(), 0);
        tx.try_send(1).unwrap();
        assert_eq!(
            rx.0.queue().rest.capacity(),
            0,
            "one item queued: no buffer"
        );
        tx.try_send(2).unwrap();
        assert_eq!(rx.try_recv(), Some(1));
        tx.try_send(3).unwrap();
        assert_eq!(rx.try_recv(), Some(2));
        assert_eq!(rx.try_recv(), Some(3));
        assert_eq!(rx.try_recv(), None);
        assert_eq!(rx.0.queue().rest.capacity(), 0, "drained: nothing kept");
    }
}
