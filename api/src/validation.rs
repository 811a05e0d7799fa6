//! Kubernetes' validation rules for object names, label keys and values, and annotations
//! (apimachinery `validation.IsDNS1123Subdomain`, `IsQualifiedName`, `IsValidLabelValue`,
//! `ValidateAnnotations`). Each returns the messages Kubernetes returns, so kubectl users see
//! familiar errors.

use std::collections::BTreeMap;

/// The most bytes of annotations an object may carry (256 KiB, as in Kubernetes).
pub const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;

fn is_alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// RFC 1123 label: at most 63 lower-case alphanumerics or '-', starting and ending alphanumeric.
pub fn dns1123_label(s: &str) -> Result<(), String> {
    let b = s.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && is_alnum(b[0])
        && is_alnum(b[b.len() - 1])
        && b.iter().all(|&c| is_alnum(c) || c == b'-');
    if ok {
        Ok(())
    } else if b.len() > 63 {
        Err("must be no more than 63 characters".into())
    } else {
        Err("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')".into())
    }
}

/// RFC 1123 subdomain: dot-separated labels, at most 253 characters.
pub fn dns1123_subdomain(s: &str) -> Result<(), String> {
    let b = s.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 253
        && s.split('.').all(|part| {
            let p = part.as_bytes();
            !p.is_empty()
                && is_alnum(p[0])
                && is_alnum(p[p.len() - 1])
                && p.iter().all(|&c| is_alnum(c) || c == b'-')
        });
    if ok {
        Ok(())
    } else if b.len() > 253 {
        Err("must be no more than 253 characters".into())
    } else {
        Err("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')".into())
    }
}

fn name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A qualified name (label and annotation keys): `[prefix/]name`, prefix a DNS subdomain.
pub fn qualified_name(s: &str) -> Result<(), String> {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix {
        if p.is_empty() {
            return Err("prefix part must be non-empty".into());
        }
        dns1123_subdomain(p).map_err(|e| format!("prefix part {e}"))?;
    }
    if name.len() > 63 {
        return Err("name part must be no more than 63 characters".into());
    }
    if !name_part(name) || name.contains('/') {
        return Err("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')".into());
    }
    Ok(())
}

/// A label value: empty, or up to 63 alphanumerics, '-', '_', '.', alphanumeric at both ends.
pub fn label_value(s: &str) -> Result<(), String> {
    if s.is_empty() || name_part(s) {
        return Ok(());
    }
    if s.len() > 63 {
        return Err("must be no more than 63 characters".into());
    }
    Err("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')".into())
}

/// One invalid field: its path (`metadata.labels`), the bad value, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub value: String,
    pub message: String,
}

/// Validates labels; every problem is reported.
pub fn labels(path: &str, labels: &BTreeMap<String, String>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (k, v) in labels {
        if let Err(m) = qualified_name(k) {
            errs.push(FieldError {
                field: path.into(),
                value: k.clone(),
                message: m,
            });
        }
        if let Err(m) = label_value(v) {
            errs.push(FieldError {
                field: format!("{path}[{k}]"),
                value: v.clone(),
                message: m,
            });
        }
    }
    errs
}

/// Validates annotation keys and their total size.
pub fn annotations(path: &str, annotations: &BTreeMap<String, String>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut total = 0;
    for (k, v) in annotations {
        total += k.len() + v.len();
        if let Err(m) = qualified_name(&k.to_ascii_lowercase()) {
            errs.push(FieldError {
                field: path.into(),
                value: k.clone(),
                message: m,
            });
        }
    }
    if total > TOTAL_ANNOTATION_SIZE_LIMIT {
        errs.push(FieldError {
            field: path.into(),
            value: String::new(),
            message: format!("Too long: must have at most {TOTAL_ANNOTATION_SIZE_LIMIT} bytes"),
        });
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_rfc_1123() {
        assert!(dns1123_subdomain("web-1.example").is_ok());
        assert!(dns1123_label("web-1").is_ok());
        for bad in ["", "Web", "-a", "a-", "a..b", "a_b"] {
            assert!(dns1123_subdomain(bad).is_err(), "{bad}");
        }
        assert!(dns1123_label("a.b").is_err());
        assert!(dns1123_label(&"a".repeat(64)).is_err());
        assert!(dns1123_subdomain(&"a".repeat(254)).is_err());
    }

    #[test]
    fn label_keys_and_values_follow_kubernetes() {
        assert!(qualified_name("app.kubernetes.io/name").is_ok());
        assert!(qualified_name("App_1").is_ok());
        for bad in ["/a", "a/", "-a", "a/b/c", "Example.com/a", ""] {
            assert!(qualified_name(bad).is_err(), "{bad}");
        }
        assert!(label_value("").is_ok());
        assert!(label_value("v1.2_x").is_ok());
        assert!(label_value("has space").is_err());
        let errs = labels(
            "metadata.labels",
            &[("ok".to_string(), "bad value".to_string())].into(),
        );
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "metadata.labels[ok]");
    }

    #[test]
    fn annotations_are_limited_in_total_size() {
        let big = [("a".to_string(), "x".repeat(TOTAL_ANNOTATION_SIZE_LIMIT))].into();
        assert_eq!(annotations("metadata.annotations", &big).len(), 1);
    }
}
