//! The per-zone rate limit on tainting unhealthy nodes NoExecute (Kubernetes' zoneNoExecuteTainter:
//! a RateLimitedTimedQueue over a token bucket with burst 1, swapped when the zone's state
//! changes). Time is given, never read, so the arithmetic is tested without waiting.
//!
//! Worked example at 0.1 nodes/s: three nodes of one zone go Unknown at t=0. The bucket starts
//! full, so the first is tainted at t=0, the second at t=10 s, the third at t=20 s. Should the
//! zone fall into partial disruption at t=5 s in a small cluster, the rate becomes 0 and the
//! other two wait — for as long as the zone stays that way.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// A token bucket of burst 1 (flowcontrol.NewTokenBucketRateLimiter(qps, 1)); a rate of 0
/// never gives a token.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket (as a swapped-in limiter starts).
    pub fn new(rate: f64, now: Instant) -> Self {
        TokenBucket {
            rate: rate.max(0.0),
            tokens: 1.0,
            last: now,
        }
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(1.0);
        self.last = now;
    }

    /// Takes a token when one is there.
    pub fn try_take(&mut self, now: Instant) -> bool {
        if self.rate <= 0.0 {
            return false;
        }
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// When the next token is there (None: never, at rate 0).
    pub fn next_token(&self, now: Instant) -> Option<Instant> {
        if self.rate <= 0.0 {
            return None;
        }
        let mut b = self.clone();
        b.refill(now);
        let missing = (1.0 - b.tokens).max(0.0);
        Some(now + Duration::from_secs_f64(missing / self.rate))
    }
}

/// One zone's queue of nodes waiting for their NoExecute taint, in the order they went
/// unhealthy, behind the zone's bucket.
#[derive(Debug, Clone)]
pub struct ZoneTainter {
    pub bucket: TokenBucket,
    queue: VecDeque<String>,
}

impl ZoneTainter {
    pub fn new(rate: f64, now: Instant) -> Self {
        ZoneTainter {
            bucket: TokenBucket::new(rate, now),
            queue: VecDeque::new(),
        }
    }

    /// Swaps the bucket when the rate changes (a new bucket starts full, as in Kubernetes).
    pub fn set_rate(&mut self, rate: f64, now: Instant) {
        if (self.bucket.rate() - rate).abs() > f64::EPSILON {
            self.bucket = TokenBucket::new(rate, now);
        }
    }

    /// Queues a node once.
    pub fn add(&mut self, node: &str) {
        if !self.queue.iter().any(|n| n == node) {
            self.queue.push_back(node.to_string());
        }
    }

    pub fn remove(&mut self, node: &str) {
        self.queue.retain(|n| n != node);
    }

    pub fn clear(&mut self) {
        self.queue.clear();
    }

    pub fn contains(&self, node: &str) -> bool {
        self.queue.iter().any(|n| n == node)
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The nodes whose turn has come, in order: as many as the bucket has tokens for.
    pub fn take_ready(&mut self, now: Instant) -> Vec<String> {
        let mut out = Vec::new();
        while !self.queue.is_empty() && self.bucket.try_take(now) {
            out.extend(self.queue.pop_front());
        }
        out
    }

    /// When the next queued node's turn comes (None: nothing queued, or rate 0).
    pub fn next_turn(&self, now: Instant) -> Option<Instant> {
        if self.queue.is_empty() {
            return None;
        }
        self.bucket.next_token(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn a_full_bucket_gives_one_node_at_once_then_one_per_period() {
        let t0 = Instant::now();
        let mut z = ZoneTainter::new(0.1, t0);
        for n in ["a", "b", "c"] {
            z.add(n);
        }
        z.add("a"); // queued once
        assert_eq!(z.len(), 3);
        assert_eq!(z.take_ready(t0), vec!["a"]);
        assert_eq!(z.take_ready(t0 + secs(9.9)), Vec::<String>::new());
        assert_eq!(z.next_turn(t0 + secs(9.9)), Some(t0 + secs(10.0)));
        assert_eq!(z.take_ready(t0 + secs(10.0)), vec!["b"]);
        // A long quiet time still gives only burst 1.
        assert_eq!(z.take_ready(t0 + secs(100.0)), vec!["c"]);
        assert!(z.is_empty());
        assert_eq!(z.next_turn(t0 + secs(100.0)), None);
    }

    #[test]
    fn rate_zero_never_taints_and_a_new_rate_starts_full() {
        let t0 = Instant::now();
        let mut z = ZoneTainter::new(0.1, t0);
        z.add("a");
        z.add("b");
        assert_eq!(z.take_ready(t0), vec!["a"]);
        z.set_rate(0.0, t0 + secs(1.0));
        assert!(z.take_ready(t0 + secs(1000.0)).is_empty());
        assert_eq!(z.next_turn(t0 + secs(1000.0)), None);
        z.set_rate(0.01, t0 + secs(1000.0));
        assert_eq!(z.take_ready(t0 + secs(1000.0)), vec!["b"]);
        z.add("c");
        assert_eq!(z.next_turn(t0 + secs(1000.0)), Some(t0 + secs(1100.0)));
    }

    #[test]
    fn the_same_rate_keeps_the_bucket() {
        let t0 = Instant::now();
        let mut z = ZoneTainter::new(0.1, t0);
        z.add("a");
        z.add("b");
        assert_eq!(z.take_ready(t0), vec!["a"]);
        z.set_rate(0.1, t0 + secs(1.0));
        assert!(z.take_ready(t0 + secs(1.0)).is_empty(), "no fresh burst");
        z.remove("b");
        assert!(!z.contains("b"));
    }
}
