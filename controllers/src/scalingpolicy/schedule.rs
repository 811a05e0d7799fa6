//! Schedule triggers: a window that opens at each `start` and closes at the following `end`,
//! both 5-field cron schedules read in an IANA time zone (as CronJobs read theirs). Whether a
//! time is inside a window needs no memory: it is when the next `end` comes before the next
//! `start` (KEDA's cron scaler decides the same way).

use capstan_api::crds::scalingpolicy::ScheduleTrigger;
use capstan_api::cron::Schedule;
use jiff::Timestamp;
use jiff::tz::TimeZone;

#[derive(Debug, Clone)]
pub struct Window {
    start: Schedule,
    end: Schedule,
    tz: TimeZone,
    pub replicas: i32,
}

impl Window {
    /// The window, or why the spec cannot make one (a bad schedule, an unknown zone).
    pub fn parse(t: &ScheduleTrigger) -> Result<Window, String> {
        let tz = match t.timezone.as_deref() {
            None | Some("") => TimeZone::UTC,
            Some(name) => {
                TimeZone::get(name).map_err(|e| format!("unknown time zone {name:?}: {e}"))?
            }
        };
        if t.start.trim() == t.end.trim() {
            return Err("start and end must differ".into());
        }
        let start = Schedule::parse(&t.start).map_err(|e| format!("start {:?}: {e}", t.start))?;
        let end = Schedule::parse(&t.end).map_err(|e| format!("end {:?}: {e}", t.end))?;
        Ok(Window {
            start,
            end,
            tz,
            replicas: t.replicas,
        })
    }

    /// Whether `now` is inside a window: the next close comes before the next opening (a
    /// schedule that never fires again opens nothing).
    pub fn is_open(&self, now: Timestamp) -> bool {
        match (
            self.start.next_after(now, &self.tz),
            self.end.next_after(now, &self.tz),
        ) {
            (Some(start), Some(end)) => end < start,
            (None, Some(_)) => true,
            _ => false,
        }
    }

    /// The next time the window opens or closes after `now`.
    pub fn next_change(&self, now: Timestamp) -> Option<Timestamp> {
        let s = self.start.next_after(now, &self.tz);
        let e = self.end.next_after(now, &self.tz);
        match (s, e) {
            (Some(s), Some(e)) => Some(s.min(e)),
            (s, e) => s.or(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(tz: &str, start: &str, end: &str) -> Window {
        Window::parse(&ScheduleTrigger {
            timezone: Some(tz.into()),
            start: start.into(),
            end: end.into(),
            replicas: 5,
        })
        .unwrap()
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn business_hours_in_seoul_open_at_nine_and_close_at_six_on_weekdays() {
        let w = window("Asia/Seoul", "0 9 * * 1-5", "0 18 * * 1-5");
        // Monday 2026-12-07, Seoul is UTC+9.
        assert!(!w.is_open(at("2026-12-06T23:59:00Z"))); // 08:59 KST
        assert!(w.is_open(at("2026-12-07T00:00:00Z"))); // 09:00 KST
        assert!(w.is_open(at("2026-12-07T08:59:59Z"))); // 17:59:59 KST
        assert!(!w.is_open(at("2026-12-07T09:00:00Z"))); // 18:00 KST
        // Saturday noon in Seoul.
        assert!(!w.is_open(at("2026-12-12T03:00:00Z")));
        assert_eq!(
            w.next_change(at("2026-12-06T23:59:00Z")),
            Some(at("2026-12-07T00:00:00Z"))
        );
    }

    #[test]
    fn a_window_over_midnight_and_an_hour_before_a_sale_closes() {
        let night = window("UTC", "0 22 * * *", "0 6 * * *");
        assert!(night.is_open(at("2026-12-07T23:30:00Z")));
        assert!(night.is_open(at("2026-12-08T05:59:00Z")));
        assert!(!night.is_open(at("2026-12-08T12:00:00Z")));
        // A sale closing at 2026-12-24 20:00 Berlin: the hour before it.
        let sale = window("Europe/Berlin", "0 19 24 12 *", "0 20 24 12 *");
        assert!(sale.is_open(at("2026-12-24T18:30:00Z"))); // 19:30 CET
        assert!(!sale.is_open(at("2026-12-24T19:00:00Z"))); // 20:00 CET
    }

    #[test]
    fn bad_schedules_and_zones_are_named() {
        let bad = |tz: &str, start: &str, end: &str| {
            Window::parse(&ScheduleTrigger {
                timezone: Some(tz.into()),
                start: start.into(),
                end: end.into(),
                replicas: 1,
            })
            .unwrap_err()
        };
        assert!(bad("Mars/Olympus", "0 9 * * *", "0 18 * * *").contains("Mars/Olympus"));
        assert!(bad("UTC", "0 25 * * *", "0 18 * * *").contains("start"));
        assert!(bad("UTC", "0 9 * * *", "nope").contains("end"));
        assert!(bad("UTC", "0 9 * * *", "0 9 * * *").contains("differ"));
    }
}
