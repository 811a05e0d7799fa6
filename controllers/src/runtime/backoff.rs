//! Per-object exponential backoff with jitter, capped, reset on success — the runtime's error
//! policy (client-go's ItemExponentialFailureRateLimiter: 5 ms doubling; capped here at 5 min).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Debug)]
pub struct Backoffs<Key> {
    base: Duration,
    cap: Duration,
    failures: Mutex<HashMap<Key, u32>>,
}

impl<Key: Hash + Eq + Clone> Default for Backoffs<Key> {
    fn default() -> Self {
        Backoffs::new(Duration::from_millis(5), Duration::from_secs(300))
    }
}

impl<Key: Hash + Eq + Clone> Backoffs<Key> {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoffs {
            base,
            cap,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Records one more failure of `key` and returns how long to wait before retrying it:
    /// base·2^(failures-1), capped, with up to 10% jitter so retries of many objects spread out.
    pub fn failed(&self, key: &Key) -> Duration {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(key.clone()).or_insert(0);
        *n = n.saturating_add(1);
        let exp = (*n - 1).min(30);
        let delay = self.base.saturating_mul(1u32 << exp).min(self.cap);
        let jitter = delay.mul_f64(fastrand::f64() * 0.1);
        (delay + jitter).min(self.cap)
    }

    /// Forgets `key`'s failures (after a success).
    pub fn succeeded(&self, key: &Key) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(key);
    }

    pub fn failures(&self, key: &Key) -> u32 {
        let map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_reset_on_success() {
        let b = Backoffs::new(Duration::from_millis(10), Duration::from_secs(1));
        let d1 = b.failed(&"a");
        let d2 = b.failed(&"a");
        assert!(d1 >= Duration::from_millis(10) && d1 <= Duration::from_millis(11));
        assert!(d2 >= Duration::from_millis(20) && d2 <= Duration::from_millis(22));
        for _ in 0..40 {
            b.failed(&"a");
        }
        assert_eq!(b.failed(&"a"), Duration::from_secs(1));
        // Other keys are independent.
        assert!(b.failed(&"b") <= Duration::from_millis(11));
        b.succeeded(&"a");
        assert_eq!(b.failures(&"a"), 0);
        assert!(b.failed(&"a") <= Duration::from_millis(11));
    }
}
