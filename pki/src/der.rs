//! Just enough DER to read who a certificate names: the subject's CN and O values (a client
//! certificate's user and groups, as Kubernetes reads them) and when it expires. Any input is
//! safe: a malformed certificate gives None, never a panic (the fuzz test feeds it noise).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The parts of a certificate's subject Capstan reads.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Subject {
    /// CN: the user.
    pub common_name: String,
    /// O, in order: the groups.
    pub organizations: Vec<String>,
}

pub(crate) const SEQUENCE: u8 = 0x30;
pub(crate) const SET: u8 = 0x31;
pub(crate) const OID: u8 = 0x06;
pub(crate) const CONTEXT_0: u8 = 0xa0;
const CN: &[u8] = &[0x55, 0x04, 0x03];
const O: &[u8] = &[0x55, 0x04, 0x0a];

/// One TLV: (tag, contents, rest).
pub(crate) fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

pub(crate) fn expect(input: &[u8], want: u8) -> Option<(&[u8], &[u8])> {
    let (tag, body, rest) = tlv(input)?;
    (tag == want).then_some((body, rest))
}

/// The TBSCertificate's fields after the signature algorithm: issuer, validity, subject, ...
fn tbs_fields(cert: &[u8]) -> Option<&[u8]> {
    let (cert, _) = expect(cert, SEQUENCE)?;
    let (tbs, _) = expect(cert, SEQUENCE)?;
    let mut rest = tbs;
    // [0] version, when present.
    if let Some((CONTEXT_0, _, r)) = tlv(rest) {
        rest = r;
    }
    let (_serial, _, r) = tlv(rest)?;
    let (_sig_alg, r) = expect(r, SEQUENCE)?;
    Some(r)
}

/// The subject's CN and O values; None for anything that is not a well-formed certificate.
pub fn subject(cert: &[u8]) -> Option<Subject> {
    let r = tbs_fields(cert)?;
    let (_issuer, r) = expect(r, SEQUENCE)?;
    let (_validity, r) = expect(r, SEQUENCE)?;
    let (name, _) = expect(r, SEQUENCE)?;
    name_of(name)
}

/// The CN and O values of an X.501 Name's contents.
pub(crate) fn name_of(mut name: &[u8]) -> Option<Subject> {
    let mut s = Subject::default();
    while !name.is_empty() {
        let (mut rdn, rest) = expect(name, SET)?;
        name = rest;
        while !rdn.is_empty() {
            let (atv, rest) = expect(rdn, SEQUENCE)?;
            rdn = rest;
            let (oid, value) = expect(atv, OID)?;
            let (_string_tag, text, _) = tlv(value)?;
            let text = std::str::from_utf8(text).ok()?.to_string();
            if oid == CN {
                s.common_name = text;
            } else if oid == O {
                s.organizations.push(text);
            }
        }
    }
    Some(s)
}

/// When the certificate stops being valid.
pub fn not_after(cert: &[u8]) -> Option<SystemTime> {
    let r = tbs_fields(cert)?;
    let (_issuer, r) = expect(r, SEQUENCE)?;
    let (validity, _) = expect(r, SEQUENCE)?;
    let (_, _, r) = tlv(validity)?;
    let (tag, text, _) = tlv(r)?;
    let text = std::str::from_utf8(text).ok()?;
    let digits = text.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 if digits.len() == 12 => {
            let yy: i64 = digits.get(..2)?.parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &digits[2..])
        }
        0x18 if digits.len() == 14 => (digits.get(..4)?.parse().ok()?, &digits[4..]),
        _ => return None,
    };
    let field = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
    let (month, day, h, m, sec) = (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    let secs = days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + sec;
    u64::try_from(secs)
        .ok()
        .map(|s| UNIX_EPOCH + Duration::from_secs(s))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2026, 12, 3), 20_790);
    }

    #[test]
    fn expiry_is_read() {
        let ca = crate::Ca::generate().unwrap();
        let c = ca.client("u", &[]).unwrap();
        let der = crate::tls::certs(&c.cert_pem).unwrap().remove(0);
        let t = not_after(&der).unwrap();
        let left = t.duration_since(SystemTime::now()).unwrap();
        let want = crate::LEAF_VALIDITY;
        assert!(
            left <= want && left + Duration::from_secs(120) > want,
            "{left:?}"
        );
    }

    #[test]
    fn every_organization_of_an_openssl_certificate_is_read() {
        // openssl writes one O per group, as Kubernetes' docs make them.
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.pem");
        let crt = dir.path().join("c.pem");
        let made = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "1",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&crt)
            .args(["-subj", "/CN=jane/O=dev/O=ops"])
            .output();
        let Ok(out) = made else {
            eprintln!("skipped: no openssl here");
            return;
        };
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pem = std::fs::read_to_string(&crt).unwrap();
        let der = crate::tls::certs(&pem).unwrap().remove(0);
        let s = subject(&der).unwrap();
        assert_eq!(s.common_name, "jane");
        assert_eq!(s.organizations, vec!["dev", "ops"]);
    }

    #[test]
    fn noise_and_truncations_never_panic() {
        let ca = crate::Ca::generate().unwrap();
        let c = ca.client("user", &["g1"]).unwrap();
        let der = crate::tls::certs(&c.cert_pem).unwrap().remove(0).to_vec();
        for cut in 0..der.len() {
            let _ = subject(&der[..cut]);
            let _ = not_after(&der[..cut]);
        }
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            let mut bytes = der.clone();
            for _ in 0..4 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let i = (seed as usize) % bytes.len();
                bytes[i] = (seed >> 32) as u8;
            }
            let _ = subject(&bytes);
            let _ = not_after(&bytes);
        }
    }
}
