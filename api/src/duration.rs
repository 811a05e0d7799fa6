//! Durations as Kubernetes and Go write them in flags and specs.

/// `s` parsed (see [`parse`]), or `default` when there is none.
pub fn parse_or(
    s: Option<&str>,
    default: std::time::Duration,
) -> Result<std::time::Duration, String> {
    s.map_or(Ok(default), parse)
}

/// A Go-style duration: a sequence of decimal numbers with units ns, us (µs), ms, s, m, h
/// and (beyond Go) d for 24 h, e.g. "300ms", "1.5s", "1m30s", "7d"; a bare "0" is zero.
pub fn parse(s: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("invalid duration {s:?} (e.g. 100ms, 1s, 1m30s, 7d)");
    if s == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let value: f64 = rest[..n].parse().map_err(|_| bad())?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..u] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            _ => return Err(bad()),
        };
        total += value * seconds;
        rest = &rest[u..];
    }
    std::time::Duration::try_from_secs_f64(total).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn go_durations_and_days_parse_and_junk_is_refused() {
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        for bad in ["", "5", "1x", "s", "-1s", "1e400h"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
