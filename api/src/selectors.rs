//! Label and field selectors, in the query-string syntax the API takes
//! (`?labelSelector=app=web,tier!=db,env in (prod,staging),!canary`) and as
//! `metav1.LabelSelector` objects (matchLabels / matchExpressions) that workloads carry.
//!
//! Grammar (Kubernetes' `labels.Parse`): requirements separated by commas; each is
//! `key`, `!key`, `key=value`, `key==value`, `key!=value`, `key in (v1,v2)`, `key notin (v1,v2)`.
//! Field selectors (`fields.ParseSelector`) take only `=`, `==` and `!=`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unable to parse requirement: {0}")]
pub struct SelectorError(pub String);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Equals(String),
    NotEquals(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub op: Op,
}

impl Requirement {
    fn matches(&self, value: Option<&str>) -> bool {
        match (&self.op, value) {
            (Op::Equals(v), Some(x)) => v == x,
            (Op::Equals(_), None) => false,
            // As in Kubernetes: a missing label satisfies != and notin.
            (Op::NotEquals(v), x) => x != Some(v.as_str()),
            (Op::In(vs), Some(x)) => vs.iter().any(|v| v == x),
            (Op::In(_), None) => false,
            (Op::NotIn(vs), x) => x.is_none_or(|x| !vs.iter().any(|v| v == x)),
            (Op::Exists, x) => x.is_some(),
            (Op::DoesNotExist, x) => x.is_none(),
        }
    }
}

/// A conjunction of requirements; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    pub requirements: Vec<Requirement>,
}

impl Selector {
    pub fn everything() -> Self {
        Selector::default()
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Parses a label selector string.
    pub fn parse_labels(s: &str) -> Result<Selector, SelectorError> {
        parse(s, true)
    }

    /// Parses a field selector string (only =, == and !=).
    pub fn parse_fields(s: &str) -> Result<Selector, SelectorError> {
        parse(s, false)
    }

    /// Whether a set of labels (or fields) satisfies every requirement.
    pub fn matches(&self, get: impl Fn(&str) -> Option<String>) -> bool {
        self.requirements
            .iter()
            .all(|r| r.matches(get(&r.key).as_deref()))
    }

    pub fn matches_map(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches(|k| labels.get(k).cloned())
    }

    /// A metav1.LabelSelector as a Selector. An empty LabelSelector matches everything (as in
    /// Kubernetes' `LabelSelectorAsSelector`).
    pub fn from_label_selector(ls: &LabelSelector) -> Result<Selector, SelectorError> {
        let mut requirements = Vec::new();
        for (k, v) in ls.match_labels.iter().flatten() {
            requirements.push(Requirement {
                key: k.clone(),
                op: Op::Equals(v.clone()),
            });
        }
        for e in ls.match_expressions.iter().flatten() {
            let values = e.values.clone().unwrap_or_default();
            let op = match e.operator.as_str() {
                "In" => Op::In(values),
                "NotIn" => Op::NotIn(values),
                "Exists" => Op::Exists,
                "DoesNotExist" => Op::DoesNotExist,
                other => {
                    return Err(SelectorError(format!(
                        "{other:?} is not a valid selector operator"
                    )));
                }
            };
            if matches!(op, Op::In(ref v) | Op::NotIn(ref v) if v.is_empty()) {
                return Err(SelectorError(format!(
                    "{}: values must be non-empty for In and NotIn",
                    e.key
                )));
            }
            requirements.push(Requirement {
                key: e.key.clone(),
                op,
            });
        }
        Ok(Selector { requirements })
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .requirements
            .iter()
            .map(|r| match &r.op {
                Op::Equals(v) => format!("{}={v}", r.key),
                Op::NotEquals(v) => format!("{}!={v}", r.key),
                Op::In(vs) => format!("{} in ({})", r.key, vs.join(",")),
                Op::NotIn(vs) => format!("{} notin ({})", r.key, vs.join(",")),
                Op::Exists => r.key.clone(),
                Op::DoesNotExist => format!("!{}", r.key),
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// Splits on commas that are not inside parentheses.
fn split_top(s: &str) -> Result<Vec<&str>, SelectorError> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(SelectorError(format!("unbalanced ')' in {s:?}")));
                }
            }
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(SelectorError(format!("unbalanced '(' in {s:?}")));
    }
    parts.push(&s[start..]);
    Ok(parts)
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 316
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn valid_value(v: &str) -> bool {
    v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn value(v: &str, labels: bool) -> Result<String, SelectorError> {
    let v = v.trim();
    // Field values (e.g. spec.nodeName=node-1, status.phase=Running) are not label values;
    // only label values are held to the label value syntax.
    if labels && !valid_value(v) {
        return Err(SelectorError(format!("invalid label value: {v:?}")));
    }
    Ok(v.to_string())
}

fn parse(s: &str, labels: bool) -> Result<Selector, SelectorError> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(Selector::everything());
    }
    let mut requirements = Vec::new();
    for part in split_top(s)? {
        let part = part.trim();
        if part.is_empty() {
            return Err(SelectorError(format!("empty requirement in {s:?}")));
        }
        let req = if let Some((k, v)) = part.split_once("!=") {
            Requirement {
                key: k.trim().to_string(),
                op: Op::NotEquals(value(v, labels)?),
            }
        } else if let Some((k, v)) = part.split_once("==") {
            Requirement {
                key: k.trim().to_string(),
                op: Op::Equals(value(v, labels)?),
            }
        } else if let Some((k, v)) = part.split_once('=') {
            Requirement {
                key: k.trim().to_string(),
                op: Op::Equals(value(v, labels)?),
            }
        } else if !labels {
            return Err(SelectorError(format!(
                "invalid field selector {part:?}: expected key=value, key==value or key!=value"
            )));
        } else if let Some(k) = part.strip_prefix('!') {
            Requirement {
                key: k.trim().to_string(),
                op: Op::DoesNotExist,
            }
        } else if let Some((k, rest)) = set_op(part, " notin ") {
            Requirement {
                key: k,
                op: Op::NotIn(set_values(rest)?),
            }
        } else if let Some((k, rest)) = set_op(part, " in ") {
            Requirement {
                key: k,
                op: Op::In(set_values(rest)?),
            }
        } else {
            Requirement {
                key: part.to_string(),
                op: Op::Exists,
            }
        };
        if !valid_key(&req.key) {
            return Err(SelectorError(format!("invalid key {:?} in {s:?}", req.key)));
        }
        requirements.push(req);
    }
    Ok(Selector { requirements })
}

fn set_op<'a>(part: &'a str, op: &str) -> Option<(String, &'a str)> {
    let i = part.find(op)?;
    Some((part[..i].trim().to_string(), part[i + op.len()..].trim()))
}

fn set_values(rest: &str) -> Result<Vec<String>, SelectorError> {
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| SelectorError(format!("expected a parenthesised set, got {rest:?}")))?;
    let values = inner
        .split(',')
        .map(|v| value(v, true))
        .collect::<Result<Vec<_>, _>>()?;
    if values.iter().any(String::is_empty) && values.len() > 1 {
        return Err(SelectorError(format!("empty value in set {rest:?}")));
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_operator_parses_and_matches_like_kubernetes() {
        let web = labels(&[("app", "web"), ("env", "prod")]);
        let db = labels(&[("app", "db")]);
        let cases = [
            ("app=web", true, false),
            ("app==web", true, false),
            ("app!=web", false, true),
            ("env", true, false),
            ("!env", false, true),
            ("env in (prod,staging)", true, false),
            ("env notin (prod)", false, true), // a missing label is "not in"
            ("app in (web,db),env!=dev", true, true), // db has no env: != holds
            ("", true, true),
        ];
        for (sel, want_web, want_db) in cases {
            let s = Selector::parse_labels(sel).unwrap();
            assert_eq!(s.matches_map(&web), want_web, "{sel} on web");
            assert_eq!(s.matches_map(&db), want_db, "{sel} on db");
        }
    }

    #[test]
    fn malformed_selectors_are_errors_not_panics() {
        for bad in [
            "app in (web",
            "app in web)",
            "a,,b",
            "=x",
            "app=we b",
            "app in ()x",
            "k=v)",
            "ключ=v",
        ] {
            assert!(
                Selector::parse_labels(bad).is_err(),
                "{bad:?} should not parse"
            );
        }
        assert!(Selector::parse_fields("spec.nodeName").is_err());
        assert!(Selector::parse_fields("a in (b)").is_err());
    }

    #[test]
    fn field_selectors_take_equality_only_and_any_value() {
        let s = Selector::parse_fields("spec.nodeName=node-1,status.phase!=Failed").unwrap();
        let f = |k: &str| match k {
            "spec.nodeName" => Some("node-1".to_string()),
            "status.phase" => Some("Running".to_string()),
            _ => None,
        };
        assert!(s.matches(f));
        assert_eq!(s.to_string(), "spec.nodeName=node-1,status.phase!=Failed");
    }

    #[test]
    fn label_selector_objects_convert_with_their_semantics() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
        let ls = LabelSelector {
            match_labels: Some([("app".to_string(), "web".to_string())].into()),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "NotIn".into(),
                values: Some(vec!["db".into()]),
            }]),
        };
        let s = Selector::from_label_selector(&ls).unwrap();
        assert!(s.matches_map(&labels(&[("app", "web")])));
        assert!(!s.matches_map(&labels(&[("app", "web"), ("tier", "db")])));
        assert!(
            Selector::from_label_selector(&LabelSelector::default())
                .unwrap()
                .is_empty()
        );
        let bad = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "x".into(),
                operator: "Near".into(),
                values: None,
            }]),
            ..Default::default()
        };
        assert!(Selector::from_label_selector(&bad).is_err());
    }
}
