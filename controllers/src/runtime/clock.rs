//! The time controllers read: the system's, or for tests a clock that starts at a chosen
//! instant and runs faster than real time (a CronJob "every minute" fires every second at
//! 60×), with waits converted back to real time.

use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};

#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Option<(Instant, Timestamp)>,
    speed: u32,
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl Clock {
    pub fn system() -> Clock {
        Clock {
            start: None,
            speed: 1,
        }
    }

    /// A clock reading `at` now and advancing `speed` times faster than real time.
    pub fn fast(at: Timestamp, speed: u32) -> Clock {
        Clock {
            start: Some((Instant::now(), at)),
            speed: speed.max(1),
        }
    }

    pub fn now(&self) -> Timestamp {
        match self.start {
            None => Timestamp::now(),
            Some((real, at)) => {
                let passed = real.elapsed().saturating_mul(self.speed);
                at.saturating_add(SignedDuration::try_from(passed).unwrap_or(SignedDuration::MAX))
                    .unwrap_or(at)
            }
        }
    }

    /// How long to really wait for `d` of this clock's time to pass.
    pub fn real(&self, d: Duration) -> Duration {
        d / self.speed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fast_clock_runs_ahead_and_shortens_waits() {
        let at: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let c = Clock::fast(at, 60);
        assert!(c.now() >= at);
        assert_eq!(c.real(Duration::from_secs(60)), Duration::from_secs(1));
        let s = Clock::system();
        assert_eq!(s.real(Duration::from_secs(5)), Duration::from_secs(5));
        assert!(s.now().duration_until(Timestamp::now()).abs().as_secs() < 2);
    }
}
