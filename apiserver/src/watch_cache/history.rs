//! The watch cache's event history (kube-apiserver's watchCache ring): what lets a client resume
//! a watch from an older resourceVersion, and what every live client watch reads from.
//!
//! # Bounds
//! Kubernetes keeps a window of recent events (75 s, `eventsHistoryWindow`) within a capacity
//! (100 to 102,400 events). Events there are counted, not weighed, so 2,000 updates of a 1 MB
//! ConfigMap held 2.48 GiB here. This history is bounded three ways, checked on every append
//! (and when the cache's revision moves):
//! - at most [`HistoryLimits::max_events`] events;
//! - at most [`HistoryLimits::max_bytes`] bytes, by [`Cached::size`](super::Cached::size) of
//!   each event's object (its JSON and its selector index);
//! - no event older than [`HistoryLimits::window`] — except the newest
//!   [`HistoryLimits::min_events`], so a quiet resource still serves a watch resuming from its
//!   last change, as Kubernetes' lower-bound capacity does.
//!
//! The newest event is always kept: live watchers read it from here.
//!
//! # What the bytes count
//! An event's object is shared (`Arc`) with the cache's current object while it is the current
//! version, and with the next event as its `prev`. Each object is charged once, to the event
//! that introduced it. So the history holds at most `max_bytes`, plus the `prev` of its oldest
//! event (one object) — whatever the number of watchers, who hold only a position in it.
//!
//! Worked example (max_bytes 3.5 MB, objects of 1 MB, a list at RV 9): updates at RV 10, 11, 12
//! fit; the update at 13 evicts 10, so `oldest` becomes 10. A watch from RV 10 (wanting 11..) is
//! served, one from 9 gets 410 Expired, and a live watcher still positioned at 9 has lagged and
//! is closed (it re-watches from 9, gets 410, and relists).

use std::collections::VecDeque;
use std::mem::size_of;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use super::CacheEvent;

/// How much history a watch cache keeps for one resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryLimits {
    pub max_events: usize,
    pub max_bytes: usize,
    /// Events older than this are dropped (beyond the newest `min_events`).
    pub window: Duration,
    pub min_events: usize,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        // Kubernetes' upper capacity. Held as JSON, 64 MiB of pod events is ~22,000 of them:
        // the byte bound usually decides, and the count only bounds the entries' own overhead
        // (10,000 was 6 s of history while 50,000 pods started, and informers relisted).
        HistoryLimits {
            max_events: 102_400,
            max_bytes: 64 * 1024 * 1024,
            window: Duration::from_secs(75),
            min_events: 100,
        }
    }
}

/// Roughly the bytes a JSON value holds in memory: its own size, every string's and array's
/// buffer, and each map entry with its share of the map's nodes.
pub fn approx_size(v: &Value) -> usize {
    size_of::<Value>() + heap_size(v)
}

/// A map entry: key, value and its share of a B-tree node (parent link, slack).
const MAP_ENTRY: usize = size_of::<String>() + size_of::<Value>() + 24;

fn heap_size(v: &Value) -> usize {
    match v {
        Value::String(s) => s.capacity(),
        Value::Array(items) => {
            items.capacity() * size_of::<Value>() + items.iter().map(heap_size).sum::<usize>()
        }
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| MAP_ENTRY + k.capacity() + heap_size(v))
            .sum(),
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
    }
}

struct Entry {
    event: Arc<CacheEvent>,
    bytes: usize,
    at: Instant,
}

/// Events in revision order, bounded by [`HistoryLimits`].
pub(super) struct History {
    entries: VecDeque<Entry>,
    bytes: usize,
    oldest: i64,
    limits: HistoryLimits,
}

impl History {
    pub(super) fn new(limits: HistoryLimits) -> History {
        History {
            entries: VecDeque::new(),
            bytes: 0,
            oldest: 0,
            limits,
        }
    }

    /// Empties it after a (re)list at `revision`.
    pub(super) fn reset(&mut self, revision: i64) {
        self.entries.clear();
        self.bytes = 0;
        self.oldest = revision;
    }

    /// Every event after this revision is here (a watch from an older one gets 410).
    pub(super) fn oldest(&self) -> i64 {
        self.oldest
    }

    /// Bytes held by the events' objects.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Appends an event (revisions only grow) and drops what the limits no longer allow.
    pub(super) fn push(&mut self, event: Arc<CacheEvent>, now: Instant) {
        let bytes = event.object.size();
        self.bytes += bytes;
        self.entries.push_back(Entry {
            event,
            bytes,
            at: now,
        });
        self.trim(now);
    }

    /// Drops the oldest events beyond the limits; never the newest.
    pub(super) fn trim(&mut self, now: Instant) {
        let l = &self.limits;
        while let Some(first) = self.entries.front() {
            let n = self.entries.len();
            let over = n > l.max_events
                || self.bytes > l.max_bytes
                || (n > l.min_events && now.duration_since(first.at) > l.window);
            if n == 1 || !over {
                break;
            }
            self.bytes -= first.bytes;
            self.oldest = first.event.rv;
            self.entries.pop_front();
        }
    }

    fn first_after(&self, rv: i64) -> usize {
        self.entries.partition_point(|e| e.event.rv <= rv)
    }

    /// The events after `rv`, oldest first (the caller checks `rv >= oldest()`).
    pub(super) fn after(&self, rv: i64) -> impl Iterator<Item = &Arc<CacheEvent>> {
        self.entries.range(self.first_after(rv)..).map(|e| &e.event)
    }

    /// The first event after `rv`, if one has happened.
    pub(super) fn next_after(&self, rv: i64) -> Option<&Arc<CacheEvent>> {
        self.entries.get(self.first_after(rv)).map(|e| &e.event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch_cache::{Cached, Kind};
    use serde_json::json;

    fn event(rv: i64, payload: usize) -> Arc<CacheEvent> {
        Arc::new(CacheEvent {
            kind: Kind::Modified,
            rv,
            object: Arc::new(Cached::new(
                &json!({"metadata": {"name": "a"}, "data": {"k": "x".repeat(payload)}}),
                &[],
            )),
            prev: None,
        })
    }

    fn limits(max_events: usize, max_bytes: usize) -> HistoryLimits {
        HistoryLimits {
            max_events,
            max_bytes,
            window: Duration::from_secs(75),
            min_events: 2,
        }
    }

    /// A history after a list at 0 and events 1..=last of 10 bytes each, all at `t`.
    fn filled(l: HistoryLimits, last: i64, t: Instant) -> History {
        let mut h = History::new(l);
        h.reset(0);
        for rv in 1..=last {
            h.push(event(rv, 10), t);
        }
        h
    }

    fn rvs(h: &History, after: i64) -> Vec<i64> {
        h.after(after).map(|e| e.rv).collect()
    }

    #[test]
    fn approx_size_counts_string_buffers_and_entries() {
        let small = approx_size(&json!({"a": "b"}));
        let big = approx_size(&json!({"a": "b".repeat(1_000_000)}));
        assert!(big - small >= 999_999, "{small} {big}");
        assert!(big - small < 1_000_100, "{small} {big}");
        let empty = approx_size(&json!({}));
        assert!(small > empty + MAP_ENTRY, "entries count: {empty} {small}");
    }

    #[test]
    fn history_never_holds_more_bytes_than_its_bound() {
        let t = Instant::now();
        let mut h = History::new(limits(10_000, 3_500_000));
        h.reset(9);
        for rv in 10..=40 {
            h.push(event(rv, 1_000_000), t);
            assert!(h.bytes() <= 3_500_000, "{} bytes at rv {rv}", h.bytes());
        }
        assert_eq!(rvs(&h, h.oldest()), vec![38, 39, 40]);
        assert_eq!(
            h.oldest(),
            37,
            "a watch from 37 is served, from 36 it is expired"
        );
    }

    #[test]
    fn history_keeps_at_most_max_events() {
        let h = filled(limits(3, usize::MAX), 5, Instant::now());
        assert_eq!((rvs(&h, 0), h.oldest()), (vec![3, 4, 5], 2));
    }

    #[test]
    fn events_older_than_the_window_go_beyond_the_newest_few() {
        let t = Instant::now();
        let mut h = filled(limits(10_000, usize::MAX), 4, t);
        // Within the window: all kept.
        h.trim(t + Duration::from_secs(75));
        assert_eq!(h.len(), 4);
        // Past it: only min_events (2) stay, however old.
        h.trim(t + Duration::from_secs(76));
        assert_eq!((rvs(&h, 0), h.oldest()), (vec![3, 4], 2));
        h.trim(t + Duration::from_secs(3600));
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn the_newest_event_stays_even_when_it_alone_is_over_the_bound() {
        let t = Instant::now();
        let mut h = History::new(limits(10_000, 100));
        h.reset(0);
        h.push(event(1, 1_000), t);
        h.push(event(2, 1_000), t);
        assert_eq!((rvs(&h, 0), h.oldest()), (vec![2], 1));
        assert_eq!(h.next_after(1).map(|e| e.rv), Some(2));
        assert!(h.next_after(2).is_none());
    }
}
