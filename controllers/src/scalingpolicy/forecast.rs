//! Predictive triggers: the forecast trigger's value is recorded as a bounded series of equal
//! steps (each the average of the readings within it), and forecast with additive
//! Holt-Winters — level, trend and one seasonal term per step of the season — whose smoothing
//! parameters are chosen afresh on each forecast by the smallest one-step-ahead squared error
//! over the series (a small grid: the series is at most 8 seasons of 96 steps). Until two
//! seasons are recorded there is no forecast. Each forecast made for a step still to come is
//! kept, and once that step is recorded its absolute error feeds `forecastError`.

use capstan_api::crds::scalingpolicy::{PendingForecast, ValueHistory};
use jiff::Timestamp;

/// Steps per season the series aims for (a 24 h season: 15-minute steps).
pub const STEPS_PER_SEASON: u64 = 96;
/// The most seasons kept.
pub const MAX_SEASONS: u64 = 8;
/// The most pending forecasts kept.
const MAX_PENDING: usize = 64;
/// The weight of the newest error in forecastError (an exponential average).
const ERROR_WEIGHT: f64 = 0.2;

/// A fitted model's state after the last value.
#[derive(Debug, Clone)]
struct State {
    level: f64,
    trend: f64,
    season: Vec<f64>,
    n: usize,
}

fn run(values: &[f64], period: usize, alpha: f64, beta: f64, gamma: f64) -> (f64, State) {
    let first: f64 = values[..period].iter().sum::<f64>() / period as f64;
    let second: f64 = values[period..2 * period].iter().sum::<f64>() / period as f64;
    let mut level = first;
    let mut trend = (second - first) / period as f64;
    let mut season: Vec<f64> = values[..period].iter().map(|v| v - first).collect();
    let mut sse = 0.0;
    for (t, &y) in values.iter().enumerate().skip(period) {
        let s = season[t % period];
        let predicted = level + trend + s;
        sse += (y - predicted) * (y - predicted);
        let new_level = alpha * (y - s) + (1.0 - alpha) * (level + trend);
        trend = beta * (new_level - level) + (1.0 - beta) * trend;
        season[t % period] = gamma * (y - new_level) + (1.0 - gamma) * s;
        level = new_level;
    }
    (
        sse,
        State {
            level,
            trend,
            season,
            n: values.len(),
        },
    )
}

/// The forecasts for the `horizon` steps after the last of `values` (whose season is `period`
/// steps); None with fewer than two seasons of values. Never negative when no value was.
pub fn forecast(values: &[f64], period: usize, horizon: usize) -> Option<Vec<f64>> {
    if period < 2 || values.len() < 2 * period || values.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let mut best: Option<(f64, State)> = None;
    for alpha in [0.1, 0.3, 0.5, 0.7, 0.9] {
        for beta in [0.0, 0.01, 0.05, 0.1] {
            for gamma in [0.05, 0.1, 0.2, 0.4, 0.6] {
                let (sse, state) = run(values, period, alpha, beta, gamma);
                if best.as_ref().is_none_or(|(b, _)| sse < *b) {
                    best = Some((sse, state));
                }
            }
        }
    }
    let (_, s) = best?;
    let floor = if values.iter().all(|v| *v >= 0.0) {
        0.0
    } else {
        f64::NEG_INFINITY
    };
    Some(
        (1..=horizon)
            .map(|h| {
                let v = s.level + h as f64 * s.trend + s.season[(s.n + h - 1) % period];
                v.max(floor)
            })
            .collect(),
    )
}

/// The step of a series for a season and a polling interval: 1/96 of the season, never
/// shorter than the polling interval, whole seconds.
pub fn step_for(season: std::time::Duration, polling: std::time::Duration) -> u64 {
    (season.as_secs() / STEPS_PER_SEASON)
        .max(polling.as_secs())
        .max(1)
}

/// A trigger's recorded series: completed steps (persisted in status) and the step being
/// filled (kept in memory).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub start: Timestamp,
    pub step: u64,
    pub values: Vec<f64>,
    pub capacity: usize,
    /// (step index from start, sum, count) of the step being filled.
    partial: Option<(i64, f64, u32)>,
    pub pending: Vec<PendingForecast>,
    /// The exponential average of the resolved forecasts' absolute errors.
    pub error: Option<f64>,
}

impl Series {
    /// The series from status when its step matches, else a new one starting at `now`.
    pub fn resume(
        status: Option<&ValueHistory>,
        error: Option<f64>,
        step: u64,
        capacity: usize,
        now: Timestamp,
    ) -> Series {
        if let Some(h) = status
            && h.step_seconds == step as i64
            && let Ok(start) = h.start.parse::<Timestamp>()
        {
            let mut s = Series {
                start,
                step,
                values: h.values.clone(),
                capacity,
                partial: None,
                pending: h.pending.clone(),
                error,
            };
            s.trim();
            return s;
        }
        Series {
            start: now,
            step,
            values: Vec::new(),
            capacity: capacity.max(1),
            partial: None,
            pending: Vec::new(),
            error: None,
        }
    }

    fn index(&self, at: Timestamp) -> i64 {
        (at.as_second() - self.start.as_second()).div_euclid(self.step as i64)
    }

    /// Adds a reading taken at `now`. Closing a step records its average; steps no reading
    /// fell in are filled with the same step a season earlier when there is one, else with
    /// the last value.
    pub fn record(&mut self, now: Timestamp, value: f64, period: usize) {
        if !value.is_finite() {
            return;
        }
        let mut index = self.index(now);
        if index < self.values.len() as i64 {
            return; // a clock that went back
        }
        if let Some((i, sum, count)) = self.partial.take() {
            if i == index {
                self.partial = Some((i, sum + value, count + 1));
                return;
            }
            if i == self.values.len() as i64 {
                self.close(sum / f64::from(count));
                index = self.index(now); // the start may have moved on
            }
        }
        while (self.values.len() as i64) < index {
            let n = self.values.len();
            let fill = if n >= period && period > 0 {
                self.values[n - period]
            } else {
                self.values.last().copied().unwrap_or(value)
            };
            self.close(fill);
            index = self.index(now);
        }
        self.partial = Some((index, value, 1));
    }

    fn close(&mut self, value: f64) {
        let step = self.values.len() as i64;
        self.values.push(value);
        if let Some(p) = self.pending.iter().position(|p| p.step == step) {
            let err = (self.pending[p].value - value).abs();
            self.error = Some(match self.error {
                Some(e) => (1.0 - ERROR_WEIGHT) * e + ERROR_WEIGHT * err,
                None => err,
            });
        }
        self.pending.retain(|p| p.step > step);
        self.trim();
    }

    /// Drops the oldest values beyond capacity (moving the start on).
    fn trim(&mut self) {
        let extra = self.values.len().saturating_sub(self.capacity);
        if extra > 0 {
            self.values.drain(..extra);
            self.start = self
                .start
                .checked_add(jiff::SignedDuration::from_secs(
                    (extra as u64 * self.step) as i64,
                ))
                .unwrap_or(self.start);
            let shift = extra as i64;
            for p in &mut self.pending {
                p.step -= shift;
            }
            self.pending.retain(|p| p.step >= 0);
        }
    }

    /// The highest value forecast over the `horizon` steps after the recorded ones, and notes
    /// each step's forecast to score it once that step is recorded.
    pub fn forecast_max(&mut self, period: usize, horizon: usize) -> Option<f64> {
        let f = forecast(&self.values, period, horizon.max(1))?;
        let base = self.values.len() as i64;
        for (h, v) in f.iter().enumerate() {
            let step = base + h as i64;
            if let Some(p) = self.pending.iter_mut().find(|p| p.step == step) {
                p.value = *v;
            } else {
                self.pending.push(PendingForecast { step, value: *v });
            }
        }
        self.pending.sort_by_key(|p| p.step);
        self.pending.truncate(MAX_PENDING);
        f.into_iter().reduce(f64::max)
    }

    pub fn to_status(&self) -> ValueHistory {
        ValueHistory {
            start: self.start.to_string(),
            step_seconds: self.step as i64,
            values: self
                .values
                .iter()
                .map(|v| (v * 1000.0).round() / 1000.0)
                .collect(),
            pending: self.pending.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A daily shape (15-minute steps): a quiet night, a morning ramp, an evening peak, with
    /// uniform noise of ±`noise`.
    fn daily(days: usize, noise: f64, seed: u64) -> Vec<f64> {
        let mut rng = fastrand::Rng::with_seed(seed);
        (0..days * 96)
            .map(|t| {
                let hour = (t % 96) as f64 / 4.0;
                let base = 20.0
                    + 60.0 * (-((hour - 11.0) / 3.0).powi(2)).exp()
                    + 90.0 * (-((hour - 19.0) / 2.0).powi(2)).exp();
                base + noise * (2.0 * rng.f64() - 1.0)
            })
            .collect()
    }

    #[test]
    fn the_seasonal_forecast_beats_the_last_value_by_at_least_30_percent() {
        let series = daily(9, 6.0, 7);
        let horizon = 4; // one hour ahead
        let (mut model, mut naive) = (0.0, 0.0);
        let mut n = 0.0;
        for t in (7 * 96..9 * 96 - horizon).step_by(3) {
            let f = forecast(&series[..t], 96, horizon).unwrap();
            let actual = series[t + horizon - 1];
            model += (f[horizon - 1] - actual).abs();
            naive += (series[t - 1] - actual).abs();
            n += 1.0;
        }
        let (model, naive) = (model / n, naive / n);
        assert!(
            model <= 0.7 * naive,
            "Holt-Winters MAE {model:.2} against the last value's {naive:.2}"
        );
    }

    #[test]
    fn the_forecast_sees_the_evening_peak_coming_before_it_does() {
        let series = daily(8, 3.0, 11);
        // 17:00 on day 8: the value is about half the peak; the peak is two hours off.
        let t = 7 * 96 + 17 * 4;
        let now = series[t - 1];
        let peak = series[7 * 96 + 19 * 4];
        assert!(now < 0.7 * peak, "{now} {peak}");
        let ahead = forecast(&series[..t], 96, 8).unwrap(); // two hours
        let max = ahead.iter().copied().fold(f64::MIN, f64::max);
        assert!(max >= 0.9 * peak, "forecast {max:.1}, peak {peak:.1}");
        // Too little history: no forecast.
        assert!(forecast(&series[..150], 96, 8).is_none());
    }

    #[test]
    fn readings_average_into_steps_gaps_fill_from_a_season_before_and_errors_are_scored() {
        let t0: Timestamp = "2026-12-01T00:00:00Z".parse().unwrap();
        let at = |s: i64| t0.checked_add(jiff::SignedDuration::from_secs(s)).unwrap();
        let mut s = Series::resume(None, None, 10, 6, t0);
        s.record(at(0), 1.0, 2);
        s.record(at(5), 3.0, 2); // step 0: average 2
        s.record(at(12), 4.0, 2); // closes step 0
        assert_eq!(s.values, [2.0]);
        s.record(at(25), 6.0, 2); // closes step 1 (4)
        s.record(at(55), 8.0, 2); // closes step 2 (6); steps 3, 4 missing
        assert_eq!(s.values, [2.0, 4.0, 6.0, 4.0, 6.0]); // a season (2 steps) earlier
        // A forecast for step 5, scored when step 5 closes.
        s.pending.push(PendingForecast {
            step: 5,
            value: 10.0,
        });
        s.record(at(61), 0.0, 2); // closes step 5 (8): error 2
        assert_eq!(s.error, Some(2.0));
        assert!(s.pending.is_empty());
        // Bounded: the oldest steps go and the start moves on.
        assert_eq!(s.values.len(), 6);
        s.record(at(75), 0.0, 2);
        assert_eq!(s.values.len(), 6);
        assert_eq!(s.start, at(10));
        // A status round trip keeps the series.
        let back = Series::resume(Some(&s.to_status()), s.error, 10, 6, at(80));
        assert_eq!((back.start, &back.values), (s.start, &s.values));
        // Another step size starts afresh.
        assert!(
            Series::resume(Some(&s.to_status()), None, 20, 6, at(80))
                .values
                .is_empty()
        );
    }
}
