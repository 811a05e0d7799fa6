//! CronJob schedules: the standard five fields (minute, hour, day of month, month, day of
//! week) and the `@hourly`-style macros, as Kubernetes parses them (robfig/cron v3's
//! `ParseStandard`), and the next time a schedule fires in a time zone.
//!
//! Each field takes `*` or `?`, a value, a range `a-b`, a step `*/n`, `a-b/n` or `a/n` (from
//! `a` to the field's end) and comma-separated lists of these; months and weekdays also take
//! their three-letter English names. Day of month and day of week combine as cron always has:
//! when either is a bare `*` the other alone decides, otherwise a day matching either fires.

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

/// A parsed schedule: one bit per allowed value of each field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minute: u64,
    hour: u64,
    dom: u64,
    month: u64,
    dow: u64,
    /// Day of month or day of week was `*`/`?`: the days are the intersection.
    star_day: bool,
}

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MINUTE: Field = Field {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: Field = Field {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
};
const DOM: Field = Field {
    name: "day of month",
    min: 1,
    max: 31,
    names: &[],
};
const MONTH: Field = Field {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
};
const DOW: Field = Field {
    name: "day of week",
    min: 0,
    max: 6,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
};

impl Field {
    fn value(&self, s: &str) -> Result<u32, String> {
        let lower = s.to_ascii_lowercase();
        if let Some(i) = self.names.iter().position(|n| *n == lower) {
            return Ok(i as u32 + self.min);
        }
        let v: u32 = s
            .parse()
            .map_err(|_| format!("failed to parse int from {s}: invalid syntax"))?;
        if v < self.min || v > self.max {
            return Err(format!(
                "{} value {v} out of range ({}-{})",
                self.name, self.min, self.max
            ));
        }
        Ok(v)
    }

    /// The bits of one field; the flag says it was a bare `*` or `?`.
    fn parse(&self, text: &str) -> Result<(u64, bool), String> {
        let mut bits = 0u64;
        let mut star = false;
        for part in text.split(',') {
            let (range, step) = match part.split_once('/') {
                Some((r, s)) => {
                    let step: u32 = s
                        .parse()
                        .map_err(|_| format!("failed to parse int from {s}: invalid syntax"))?;
                    if step == 0 {
                        return Err(format!("step of range should be a positive number: {part}"));
                    }
                    (r, Some(step))
                }
                None => (part, None),
            };
            let (start, end, is_star) = if range == "*" || range == "?" {
                (self.min, self.max, true)
            } else if let Some((a, b)) = range.split_once('-') {
                (self.value(a)?, self.value(b)?, false)
            } else {
                let v = self.value(range)?;
                // `a/n` runs from a to the field's end.
                (v, if step.is_some() { self.max } else { v }, false)
            };
            if start > end {
                return Err(format!(
                    "beginning of range ({start}) beyond end of range ({end}): {part}"
                ));
            }
            let step = step.unwrap_or(1);
            star |= is_star && step == 1;
            let mut v = start;
            while v <= end {
                bits |= 1 << v;
                v += step;
            }
        }
        Ok((bits, star))
    }
}

impl Schedule {
    /// Parses a schedule; the error is worded as Kubernetes reports it after
    /// `spec.schedule: Invalid value: "...": `.
    pub fn parse(spec: &str) -> Result<Schedule, String> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Err("empty spec string".into());
        }
        let expanded = match spec {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            s if s.starts_with('@') => return Err(format!("unrecognized descriptor: {s}")),
            s => s,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "expected exactly 5 fields, found {}: [{}]",
                fields.len(),
                fields.join(" ")
            ));
        }
        let (minute, _) = MINUTE.parse(fields[0])?;
        let (hour, _) = HOUR.parse(fields[1])?;
        let (dom, dom_star) = DOM.parse(fields[2])?;
        let (month, _) = MONTH.parse(fields[3])?;
        let (dow, dow_star) = DOW.parse(fields[4])?;
        Ok(Schedule {
            minute,
            hour,
            dom,
            month,
            dow,
            star_day: dom_star || dow_star,
        })
    }

    fn day_matches(&self, d: Date) -> bool {
        let dom = self.dom & (1 << d.day()) != 0;
        let dow = self.dow & (1 << d.weekday().to_sunday_zero_offset()) != 0;
        if self.star_day {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first time after `after` (strictly) the schedule fires in `tz`; None when it never
    /// does within five years (`0 0 30 2 *`). A wall time a DST gap skips fires at the first
    /// instant after the gap; one a fold repeats fires once, at its first occurrence.
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let start = tz.to_datetime(after);
        let mut t = DateTime::from_parts(
            start.date(),
            Time::new(start.hour(), start.minute(), 0, 0).ok()?,
        );
        let limit = start.year() + 5;
        loop {
            t = t.checked_add(1.minute()).ok()?;
            if t.year() > limit {
                return None;
            }
            if self.month & (1 << t.month()) == 0 {
                let first = t.date().first_of_month();
                t = first
                    .checked_add(1.month())
                    .ok()?
                    .to_datetime(Time::midnight());
                t = t.checked_sub(1.minute()).ok()?;
                continue;
            }
            if !self.day_matches(t.date()) {
                t = t.date().tomorrow().ok()?.to_datetime(Time::midnight());
                t = t.checked_sub(1.minute()).ok()?;
                continue;
            }
            if self.hour & (1 << t.hour()) == 0 {
                t = DateTime::from_parts(t.date(), Time::new(t.hour(), 59, 0, 0).ok()?);
                continue;
            }
            if self.minute & (1 << t.minute()) == 0 {
                continue;
            }
            let at = tz.to_ambiguous_timestamp(t).compatible().ok()?;
            if at > after {
                return Some(at);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().expect("a timestamp")
    }

    fn next(spec: &str, after: &str, tz: &TimeZone) -> String {
        Schedule::parse(spec)
            .expect("parses")
            .next_after(at(after), tz)
            .map(|t| t.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn schedules_fire_when_cron_would() {
        let utc = TimeZone::UTC;
        for (spec, after, expected) in [
            ("* * * * *", "2026-12-04T10:00:30Z", "2026-12-04T10:01:00Z"),
            (
                "*/15 * * * *",
                "2026-12-04T10:01:00Z",
                "2026-12-04T10:15:00Z",
            ),
            (
                "0 9-17/4 * * mon-fri",
                "2026-12-04T18:00:00Z",
                "2026-12-07T09:00:00Z",
            ),
            ("30 2 1 * *", "2026-12-04T00:00:00Z", "2027-01-01T02:30:00Z"),
            ("@weekly", "2026-12-04T00:00:00Z", "2026-12-06T00:00:00Z"),
            ("@yearly", "2026-12-04T00:00:00Z", "2027-01-01T00:00:00Z"),
            ("0 0 29 2 *", "2026-12-04T00:00:00Z", "2028-02-29T00:00:00Z"),
            // Both days given: either fires (the 13th, or a Friday).
            ("0 0 13 * 5", "2026-12-04T00:00:00Z", "2026-12-11T00:00:00Z"),
            // A star day of week: the 13th alone.
            ("0 0 13 * *", "2026-12-04T00:00:00Z", "2026-12-13T00:00:00Z"),
            (
                "5/20 * * * *",
                "2026-12-04T10:06:00Z",
                "2026-12-04T10:25:00Z",
            ),
            (
                "0 12 * JAN,Jul ?",
                "2026-12-04T00:00:00Z",
                "2027-01-01T12:00:00Z",
            ),
        ] {
            assert_eq!(next(spec, after, &utc), expected, "{spec} after {after}");
        }
        assert_eq!(next("0 0 30 2 *", "2026-12-04T00:00:00Z", &utc), "");
    }

    #[test]
    fn time_zones_and_their_daylight_saving_changes() {
        let Ok(ny) = TimeZone::get("America/New_York") else {
            return; // no tz database on this machine (CI installs tzdata)
        };
        // 09:00 in New York in December is 14:00 UTC.
        assert_eq!(
            next("0 9 * * *", "2026-12-04T00:00:00Z", &ny),
            "2026-12-04T14:00:00Z"
        );
        // 2027-03-14 02:30 does not exist in New York: it fires at 03:30 EDT (07:30 UTC).
        assert_eq!(
            next("30 2 * * *", "2027-03-14T05:00:00Z", &ny),
            "2027-03-14T07:30:00Z"
        );
        // 2027-11-07 01:30 happens twice: once, the first time (05:30 UTC), then the next day.
        assert_eq!(
            next("30 1 * * *", "2027-11-07T05:00:00Z", &ny),
            "2027-11-07T05:30:00Z"
        );
        assert_eq!(
            next("30 1 * * *", "2027-11-07T05:30:00Z", &ny),
            "2027-11-08T06:30:00Z"
        );
    }

    #[test]
    fn bad_schedules_say_why() {
        for (spec, expected) in [
            ("", "empty spec string"),
            ("* * * *", "expected exactly 5 fields, found 4: [* * * *]"),
            ("61 * * * *", "minute value 61 out of range (0-59)"),
            ("* * * * 7", "day of week value 7 out of range (0-6)"),
            (
                "*/0 * * * *",
                "step of range should be a positive number: */0",
            ),
            (
                "5-1 * * * *",
                "beginning of range (5) beyond end of range (1): 5-1",
            ),
            ("x * * * *", "failed to parse int from x: invalid syntax"),
            ("@often", "unrecognized descriptor: @often"),
        ] {
            assert_eq!(Schedule::parse(spec).unwrap_err(), expected, "{spec}");
        }
    }
}
