//! The string formats Kubernetes validates in CRD schemas (unknown formats pass, as in
//! Kubernetes).

/// Checks a string format Kubernetes validates; unknown formats pass, as in Kubernetes.
pub fn check_format(format: &str, s: &str) -> Result<(), &'static str> {
    let ok = match format {
        "date-time" | "datetime" => s.parse::<jiff::Timestamp>().is_ok(),
        "date" => s.len() == 10 && s.parse::<jiff::civil::Date>().is_ok(),
        "int32" => s.parse::<i32>().is_ok(),
        "int64" => s.parse::<i64>().is_ok(),
        "byte" => is_base64(s),
        "uuid" => is_uuid(s),
        "ipv4" => s.parse::<std::net::Ipv4Addr>().is_ok(),
        "ipv6" => s.parse::<std::net::Ipv6Addr>().is_ok(),
        "cidr" => s.split_once('/').is_some_and(|(ip, bits)| {
            let bits: Result<u8, _> = bits.parse();
            match (ip.parse::<std::net::IpAddr>(), bits) {
                (Ok(std::net::IpAddr::V4(_)), Ok(b)) => b <= 32,
                (Ok(std::net::IpAddr::V6(_)), Ok(b)) => b <= 128,
                _ => false,
            }
        }),
        "hostname" => capstan_api::validation::dns1123_subdomain(s).is_ok(),
        "duration" => is_go_duration(s),
        _ => return Ok(()),
    };
    if ok {
        Ok(())
    } else {
        Err(match format {
            "date-time" | "datetime" => "date-time",
            "date" => "date",
            "int32" => "int32",
            "int64" => "int64",
            "byte" => "byte",
            "uuid" => "uuid",
            "ipv4" => "ipv4",
            "ipv6" => "ipv6",
            "cidr" => "cidr",
            "hostname" => "hostname",
            _ => "duration",
        })
    }
}

pub(super) fn is_base64(s: &str) -> bool {
    let b = s.as_bytes();
    if !b.len().is_multiple_of(4) {
        return false;
    }
    let pad = b.iter().rev().take_while(|&&c| c == b'=').count();
    pad <= 2
        && b[..b.len() - pad]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
}

pub(super) fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                *c == b'-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

/// Go's time.ParseDuration syntax: `1h30m`, `-1.5s`, `300ms`.
pub(super) fn is_go_duration(s: &str) -> bool {
    let s = s.strip_prefix(['-', '+']).unwrap_or(s);
    if s == "0" {
        return true;
    }
    if s.is_empty() {
        return false;
    }
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if digits == 0 || rest[..digits].parse::<f64>().is_err() {
            return false;
        }
        rest = &rest[digits..];
        let unit = ["ns", "us", "µs", "μs", "ms", "s", "m", "h"]
            .iter()
            .find(|u| rest.starts_with(**u));
        match unit {
            // "ms" before "m" and "s": the list order tries longer units first.
            Some(u) => rest = &rest[u.len()..],
            None => return false,
        }
    }
    true
}
