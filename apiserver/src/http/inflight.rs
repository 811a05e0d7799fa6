//! Overload protection: at most `--max-requests-inflight` read-only (get, list) and
//! `--max-mutating-requests-inflight` mutating requests at once (kube-apiserver's flags and
//! defaults, 400 and 200; 0 lifts a limit). Long-running requests — watches, exec, attach,
//! port-forward, followed logs — are not counted. Past a limit the answer is kube-apiserver's:
//! 429 TooManyRequests, `Retry-After: 1`.
//!
//! A per-user fair share instead of API Priority and Fairness' queues: while several users
//! hold seats of a pool, none may hold more than its seats divided among them (rounded up),
//! so one client flooding the server gets the 429s and the others keep being served. A user
//! alone may use the whole pool. Seats are held until the response body has been sent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// kube-apiserver's `--max-requests-inflight` default.
pub const DEFAULT_READONLY: usize = 400;
/// kube-apiserver's `--max-mutating-requests-inflight` default.
pub const DEFAULT_MUTATING: usize = 200;

/// The two limits (0: unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub readonly: usize,
    pub mutating: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            readonly: DEFAULT_READONLY,
            mutating: DEFAULT_MUTATING,
        }
    }
}

#[derive(Debug, Default)]
struct Pool {
    held: usize,
    by_user: HashMap<String, usize>,
}

/// The seats of both pools.
#[derive(Debug, Default)]
pub struct InFlight {
    limits: Limits,
    pools: [Mutex<Pool>; 2],
}

/// Which pool a verb draws from.
pub fn mutating(verb: &str) -> bool {
    !matches!(verb, "get" | "list" | "watch")
}

/// A seat, given back when dropped.
#[derive(Debug)]
pub struct Seat {
    owner: Arc<InFlight>,
    pool: usize,
    user: String,
}

impl Drop for Seat {
    fn drop(&mut self) {
        if let Ok(mut p) = self.owner.pools[self.pool].lock() {
            p.held = p.held.saturating_sub(1);
            if let Some(n) = p.by_user.get_mut(&self.user) {
                *n -= 1;
                if *n == 0 {
                    p.by_user.remove(&self.user);
                }
            }
        }
    }
}

impl InFlight {
    pub fn new(limits: Limits) -> Arc<InFlight> {
        Arc::new(InFlight {
            limits,
            pools: Default::default(),
        })
    }

    /// A seat for `user`'s request in the pool of `mutating`, or None (answer 429). Always a
    /// seat when the pool is unlimited.
    pub fn admit(self: &Arc<Self>, user: &str, mutating: bool) -> Option<Seat> {
        let pool = usize::from(mutating);
        let limit = if mutating {
            self.limits.mutating
        } else {
            self.limits.readonly
        };
        let mut p = self.pools[pool].lock().ok()?;
        if limit > 0 {
            let mine = p.by_user.get(user).copied().unwrap_or(0);
            let users = p.by_user.len() + usize::from(mine == 0);
            let share = limit.div_ceil(users.max(1));
            if p.held >= limit || mine >= share {
                return None;
            }
        }
        p.held += 1;
        *p.by_user.entry(user.to_string()).or_default() += 1;
        Some(Seat {
            owner: self.clone(),
            pool,
            user: user.to_string(),
        })
    }

    /// Seats held now: (read-only, mutating).
    pub fn held(&self) -> (usize, usize) {
        let n = |i: usize| self.pools[i].lock().map(|p| p.held).unwrap_or(0);
        (n(0), n(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flooding_user_is_held_to_its_share_while_others_are_served() {
        let f = InFlight::new(Limits {
            readonly: 4,
            mutating: 1,
        });
        // Alone, a user may take the whole pool.
        let a: Vec<Seat> = (0..2).map(|_| f.admit("a", false).unwrap()).collect();
        // b arrives: two users, two seats each at most.
        let b1 = f.admit("b", false).unwrap();
        assert!(f.admit("a", false).is_none(), "a holds its share");
        let b2 = f.admit("b", false).unwrap();
        assert!(f.admit("b", false).is_none(), "the pool is full");
        assert_eq!(f.held(), (4, 0));
        // Pools are separate; a mutating seat is there for a.
        let m = f.admit("a", true).unwrap();
        assert!(f.admit("c", true).is_none());
        drop((b1, b2, m));
        assert_eq!(f.held(), (2, 0));
        // b gone: a alone again, up to the limit.
        let more: Vec<Seat> = (0..2).map(|_| f.admit("a", false).unwrap()).collect();
        assert!(f.admit("a", false).is_none());
        drop((a, more));
        assert_eq!(f.held(), (0, 0));
        let unlimited = InFlight::new(Limits {
            readonly: 0,
            mutating: 0,
        });
        let many: Vec<Seat> = (0..1000)
            .map(|_| unlimited.admit("a", true).unwrap())
            .collect();
        assert_eq!(many.len(), 1000);
    }
}
