//! A bounded in-memory queue that drops its oldest item when full, so that a producer never
//! waits: an alert about what is happening now is worth more than one about a minute ago.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

#[derive(Debug)]
struct Inner<T> {
    items: VecDeque<T>,
    closed: bool,
}

/// Single-consumer queue with drop-oldest overflow and a close signal.
#[derive(Debug)]
pub(crate) struct DropOldestQueue<T> {
    inner: Mutex<Inner<T>>,
    notify: Notify,
    capacity: usize,
}

impl<T> DropOldestQueue<T> {
    /// `capacity` is at least 1 (a zero capacity would drop everything).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                items: VecDeque::with_capacity(capacity.clamp(1, 1024)),
                closed: false,
            }),
            notify: Notify::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<T>> {
        // A panic while holding this lock cannot leave the deque half-updated, so a poisoned
        // lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends an item; returns the oldest item when it had to be dropped to make room, and the
    /// item itself when the queue is closed.
    pub(crate) fn push(&self, item: T) -> Option<T> {
        let dropped = {
            let mut inner = self.lock();
            if inner.closed {
                return Some(item);
            }
            let dropped = if inner.items.len() >= self.capacity {
                inner.items.pop_front()
            } else {
                None
            };
            inner.items.push_back(item);
            dropped
        };
        self.notify.notify_one();
        dropped
    }

    /// Waits for the oldest item; `None` once the queue is closed and empty.
    pub(crate) async fn pop(&self) -> Option<T> {
        loop {
            let notified = self.notify.notified();
            {
                let mut inner = self.lock();
                if let Some(item) = inner.items.pop_front() {
                    return Some(item);
                }
                if inner.closed {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// Refuses new items; the consumer drains what is queued, then sees `None`.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_one();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().items.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_queue_drops_the_oldest_and_keeps_its_bound() {
        let q = DropOldestQueue::new(3);
        for i in 0..3 {
            assert_eq!(q.push(i), None);
        }
        assert_eq!(q.push(3), Some(0));
        assert_eq!(q.push(4), Some(1));
        assert_eq!(q.len(), 3);
    }

    #[tokio::test]
    async fn close_lets_the_consumer_drain_then_end() {
        let q = DropOldestQueue::new(4);
        q.push(1);
        q.push(2);
        q.close();
        assert_eq!(q.push(3), Some(3), "closed queue refuses new items");
        assert_eq!(q.pop().await, Some(1));
        assert_eq!(q.pop().await, Some(2));
        assert_eq!(q.pop().await, None);
    }

    #[tokio::test]
    async fn pop_wakes_on_push_from_another_task() {
        let q = std::sync::Arc::new(DropOldestQueue::new(2));
        let consumer = tokio::spawn({
            let q = q.clone();
            async move { q.pop().await }
        });
        tokio::task::yield_now().await;
        q.push(7);
        assert_eq!(consumer.await.expect("consumer runs"), Some(7));
    }

    #[test]
    fn zero_capacity_is_treated_as_one() {
        let q = DropOldestQueue::new(0);
        assert_eq!(q.push(1), None);
        assert_eq!(q.push(2), Some(1));
    }
}
