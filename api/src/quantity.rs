//! Kubernetes resource quantities ("250000n", "100m", "1.5", "2Gi", "1e3").

/// Parses a Kubernetes quantity ("100m", "1.5", "2Gi", "1e3", "500M") scaled by `scale` (1000
/// for millis, 1 for plain units); None when malformed.
pub fn parse(q: &str, scale: f64) -> Option<i64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let base: f64 = num.parse().ok()?;
    let mult: f64 = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse().ok()?),
        _ => return None,
    };
    // Rounded up, as Kubernetes' Value/MilliValue — but a product a float error put a hair
    // above a whole number (150000000n × 1e-9 × 1000 = 150.00000000000003) is that number.
    let exact = base * mult * scale;
    let v = if (exact - exact.round()).abs() <= 1e-9 * exact.abs().max(1.0) {
        exact.round()
    } else {
        exact.ceil()
    };
    v.is_finite().then_some(v as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_with_every_suffix() {
        assert_eq!(parse("100m", 1000.0), Some(100));
        assert_eq!(parse("1.5", 1000.0), Some(1500));
        assert_eq!(parse("2", 1000.0), Some(2000));
        assert_eq!(parse("2Gi", 1.0), Some(2 * 1024 * 1024 * 1024));
        assert_eq!(parse("500M", 1.0), Some(500_000_000));
        assert_eq!(parse("1e3", 1.0), Some(1000));
        assert_eq!(parse("128974848", 1.0), Some(128_974_848));
        assert_eq!(
            parse("990581178n", 1000.0),
            Some(991),
            "rounded up, as MilliValue"
        );
        assert_eq!(parse("5u", 1_000_000.0), Some(5));
        assert_eq!(
            parse("150000000n", 1000.0),
            Some(150),
            "no float error rounds up"
        );
        assert_eq!(parse("0.1", 1000.0), Some(100));
        assert_eq!(parse("1.0001", 1000.0), Some(1001));
        assert_eq!(parse("12x", 1.0), None);
        assert_eq!(parse("", 1.0), None);
    }
}
