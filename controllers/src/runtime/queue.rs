//! A deduplicating work queue (client-go's workqueue): an item queued several times before a
//! worker takes it is processed once; an item queued while a worker holds it is processed again
//! after that worker is done, never by two workers at once. Failed items come back after a
//! per-item exponential backoff ([`Backoffs`]).
//!
//! Delayed adds are deduplicated too (client-go's delaying queue): while an item waits, adding it
//! again with a later or equal deadline changes nothing and an earlier one replaces the wait.
//! That is what makes a batch period work — the first change of a burst starts the clock and the
//! rest of the burst rides along in the same sync.
//!
//! For controllers whose work items are not one kind of object (the garbage collector's uids,
//! the endpoint controllers' Service keys), where kube's `Controller` does not fit.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::Backoffs;

#[derive(Debug)]
struct State<T> {
    queue: VecDeque<T>,
    /// Queued and not yet taken (the dedup set).
    dirty: HashSet<T>,
    /// Taken by a worker and not yet done.
    processing: HashSet<T>,
    /// Waiting for a delayed add, with the deadline that will add it.
    waiting: HashMap<T, Instant>,
    shutdown: bool,
}

#[derive(Debug)]
pub struct WorkQueue<T> {
    state: Mutex<State<T>>,
    ready: Notify,
    backoffs: Backoffs<T>,
}

impl<T: Hash + Eq + Clone + Send + Sync + 'static> WorkQueue<T> {
    pub fn new(backoffs: Backoffs<T>) -> Arc<Self> {
        Arc::new(WorkQueue {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                dirty: HashSet::new(),
                processing: HashSet::new(),
                waiting: HashMap::new(),
                shutdown: false,
            }),
            ready: Notify::new(),
            backoffs,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn add(&self, item: T) {
        let mut s = self.lock();
        if s.shutdown || !s.dirty.insert(item.clone()) {
            return;
        }
        if s.processing.contains(&item) {
            return; // queued again by `done`
        }
        s.queue.push_back(item);
        drop(s);
        self.ready.notify_one();
    }

    /// Queues `item` after `delay` (from a timer task that holds no strong reference). An item
    /// already waiting for an earlier (or the same) deadline is left as it is.
    pub fn add_after(self: &Arc<Self>, item: T, delay: Duration) {
        if delay.is_zero() {
            return self.add(item);
        }
        let deadline = Instant::now() + delay;
        {
            let mut s = self.lock();
            if s.shutdown || s.waiting.get(&item).is_some_and(|d| *d <= deadline) {
                return;
            }
            s.waiting.insert(item.clone(), deadline);
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep_until(deadline).await;
            if let Some(q) = weak.upgrade() {
                let mine = {
                    let mut s = q.lock();
                    // Only the timer of the current deadline adds (an earlier one replaced us).
                    let mine = s.waiting.get(&item) == Some(&deadline);
                    if mine {
                        s.waiting.remove(&item);
                    }
                    mine
                };
                if mine {
                    q.add(item);
                }
            }
        });
    }

    /// Queues `item` again after its next backoff delay.
    pub fn retry(self: &Arc<Self>, item: T) {
        let delay = self.backoffs.failed(&item);
        self.add_after(item, delay);
    }

    /// Clears `item`'s failure count (after it was processed successfully).
    pub fn forget(&self, item: &T) {
        self.backoffs.succeeded(item);
    }

    /// The next item, waiting for one; None once shut down.
    pub async fn get(&self) -> Option<T> {
        loop {
            let notified = self.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut s = self.lock();
                if let Some(item) = s.queue.pop_front() {
                    s.dirty.remove(&item);
                    s.processing.insert(item.clone());
                    let more = !s.queue.is_empty();
                    drop(s);
                    if more {
                        self.ready.notify_one(); // hand the wakeup on to another worker
                    }
                    return Some(item);
                }
                if s.shutdown {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// Marks `item` processed; if it was queued meanwhile, it goes back in the queue.
    pub fn done(&self, item: &T) {
        let mut s = self.lock();
        s.processing.remove(item);
        if s.dirty.contains(item) {
            s.queue.push_back(item.clone());
            drop(s);
            self.ready.notify_one();
        }
    }

    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Wakes every waiting worker with None.
    pub fn shutdown(&self) {
        self.lock().shutdown = true;
        self.ready.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> Arc<WorkQueue<&'static str>> {
        WorkQueue::new(Backoffs::new(
            Duration::from_millis(10),
            Duration::from_secs(1),
        ))
    }

    #[tokio::test]
    async fn duplicates_collapse_and_order_is_kept() {
        let q = queue();
        q.add("a");
        q.add("b");
        q.add("a");
        assert_eq!(q.len(), 2);
        assert_eq!(q.get().await, Some("a"));
        assert_eq!(q.get().await, Some("b"));
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn an_item_added_while_processing_comes_back_after_done_only() {
        let q = queue();
        q.add("a");
        let a = q.get().await.unwrap();
        q.add("a");
        assert!(q.is_empty(), "not handed to a second worker while held");
        q.done(&a);
        assert_eq!(q.len(), 1);
        assert_eq!(q.get().await, Some("a"));
        q.done(&"a");
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn delayed_adds_of_a_waiting_item_collapse_into_the_earliest() {
        let q = queue();
        q.add_after("a", Duration::from_millis(100));
        tokio::time::sleep(Duration::from_millis(50)).await;
        q.add_after("a", Duration::from_millis(100)); // later than the wait: rides along
        q.add_after("b", Duration::from_millis(200));
        q.add_after("b", Duration::from_millis(10)); // earlier: replaces the wait
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(q.len(), 2, "a at 100 ms and b at 60 ms, once each");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(q.len(), 2, "no second add from the superseded timers");
        // Once the wait is over, a new delayed add waits again.
        assert_eq!(q.get().await, Some("b"));
        q.done(&"b");
        q.add_after("b", Duration::from_millis(10));
        assert_eq!(q.len(), 1);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(q.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_back_off_and_waiters_wake() {
        let q = queue();
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move { q.get().await })
        };
        q.retry("x"); // 10 ms
        let started = tokio::time::Instant::now();
        assert_eq!(waiter.await.unwrap(), Some("x"));
        assert!(started.elapsed() >= Duration::from_millis(10));
        q.done(&"x");
        q.retry("x"); // 20 ms
        let started = tokio::time::Instant::now();
        assert_eq!(q.get().await, Some("x"));
        assert!(started.elapsed() >= Duration::from_millis(20));
        q.forget(&"x");
        q.shutdown();
        assert_eq!(q.get().await, None);
    }
}
