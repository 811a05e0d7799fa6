//! The JSONPath subset CRDs use for `additionalPrinterColumns`, `selectableFields` and the scale
//! subresource's paths: `.spec.replicas`, `.items[0]`, `.items[*].name`, `['dotted.key']`, and a
//! filter on one field, `.status.conditions[?(@.type=="Ready")].status`. Anything else is a parse
//! error, reported when the CRD is written — never a silently empty column.

use serde_json::Value;

#[derive(Clone, Debug, PartialEq)]
enum Step {
    Field(String),
    Index(usize),
    All,
    /// `[?(@.a.b=="value")]` (or `!=`).
    Filter {
        path: Vec<String>,
        value: Value,
        equal: bool,
    },
}

/// A parsed path.
#[derive(Clone, Debug, PartialEq)]
pub struct JsonPath {
    steps: Vec<Step>,
    source: String,
}

impl JsonPath {
    pub fn parse(src: &str) -> Result<JsonPath, String> {
        let trimmed = src.trim();
        let inner = trimmed
            .strip_prefix('{')
            .and_then(|s| s.strip_suffix('}'))
            .unwrap_or(trimmed);
        let inner = inner.strip_prefix('$').unwrap_or(inner);
        if !inner.starts_with('.') && !inner.starts_with('[') {
            return Err(format!("{src:?} must start with '.' (e.g. .spec.replicas)"));
        }
        let b = inner.as_bytes();
        let mut i = 0;
        let mut steps = Vec::new();
        while i < b.len() {
            match b[i] {
                b'.' => {
                    let start = i + 1;
                    let mut j = start;
                    while j < b.len() && b[j] != b'.' && b[j] != b'[' {
                        j += 1;
                    }
                    if j == start {
                        return Err(format!("{src:?}: empty field name at offset {i}"));
                    }
                    steps.push(Step::Field(inner[start..j].to_string()));
                    i = j;
                }
                b'[' => {
                    let close = find_close(inner, i)
                        .ok_or_else(|| format!("{src:?}: unclosed '[' at offset {i}"))?;
                    let body = inner[i + 1..close].trim();
                    steps.push(parse_bracket(body).map_err(|e| format!("{src:?}: {e}"))?);
                    i = close + 1;
                }
                c => {
                    return Err(format!("{src:?}: unexpected {:?} at offset {i}", c as char));
                }
            }
        }
        Ok(JsonPath {
            steps,
            source: src.to_string(),
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// A simple path of fields only (`.spec.replicas`) as a JSON pointer (`/spec/replicas`).
    pub fn as_pointer(&self) -> Option<String> {
        let mut out = String::new();
        for s in &self.steps {
            match s {
                Step::Field(f) => {
                    out.push('/');
                    out.push_str(&f.replace('~', "~0").replace('/', "~1"));
                }
                _ => return None,
            }
        }
        (!out.is_empty()).then_some(out)
    }

    /// Every value the path selects, in order.
    pub fn find<'v>(&self, root: &'v Value) -> Vec<&'v Value> {
        let mut current = vec![root];
        for step in &self.steps {
            let mut next = Vec::new();
            for v in current {
                match step {
                    Step::Field(f) => {
                        if let Some(x) = v.get(f.as_str()) {
                            next.push(x);
                        }
                    }
                    Step::Index(n) => {
                        if let Some(x) = v.as_array().and_then(|a| a.get(*n)) {
                            next.push(x);
                        }
                    }
                    Step::All => match v {
                        Value::Array(a) => next.extend(a.iter()),
                        Value::Object(m) => next.extend(m.values()),
                        _ => {}
                    },
                    Step::Filter { path, value, equal } => {
                        if let Some(a) = v.as_array() {
                            for item in a {
                                let mut at = Some(item);
                                for p in path {
                                    at = at.and_then(|x| x.get(p.as_str()));
                                }
                                let hit = at.is_some_and(|x| x == value);
                                if hit == *equal && (at.is_some() || !*equal) {
                                    next.push(item);
                                }
                            }
                        }
                    }
                }
            }
            current = next;
            if current.is_empty() {
                break;
            }
        }
        current
    }

    /// The first selected value.
    pub fn first<'v>(&self, root: &'v Value) -> Option<&'v Value> {
        self.find(root).into_iter().next()
    }
}

fn find_close(s: &str, open: usize) -> Option<usize> {
    let b = s.as_bytes();
    let mut quote: Option<u8> = None;
    let mut depth = 0;
    for (i, &c) in b.iter().enumerate().skip(open) {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, b'\'' | b'"') => quote = Some(c),
            (None, b'[') => depth += 1,
            (None, b']') => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

fn unquote(s: &str) -> Option<&str> {
    let s = s.trim();
    if s.len() >= 2
        && ((s.starts_with('\'') && s.ends_with('\'')) || (s.starts_with('"') && s.ends_with('"')))
    {
        Some(&s[1..s.len() - 1])
    } else {
        None
    }
}

fn parse_bracket(body: &str) -> Result<Step, String> {
    if body == "*" {
        return Ok(Step::All);
    }
    if let Ok(n) = body.parse::<usize>() {
        return Ok(Step::Index(n));
    }
    if let Some(key) = unquote(body) {
        return Ok(Step::Field(key.to_string()));
    }
    if let Some(filter) = body.strip_prefix("?(").and_then(|f| f.strip_suffix(')')) {
        let (lhs, rhs, equal) = if let Some((l, r)) = filter.split_once("==") {
            (l, r, true)
        } else if let Some((l, r)) = filter.split_once("!=") {
            (l, r, false)
        } else {
            return Err(format!("filter {filter:?} must compare with == or !="));
        };
        let lhs = lhs
            .trim()
            .strip_prefix("@.")
            .ok_or_else(|| format!("filter {filter:?} must start with @."))?;
        let path: Vec<String> = lhs.split('.').map(str::to_string).collect();
        if path.iter().any(String::is_empty) {
            return Err(format!("filter {filter:?} has an empty field name"));
        }
        let rhs = rhs.trim();
        let value = match unquote(rhs) {
            Some(s) => Value::String(s.to_string()),
            None => serde_json::from_str(rhs).map_err(|_| {
                format!("filter value {rhs:?} must be quoted text, a number or a boolean")
            })?,
        };
        return Ok(Step::Filter { path, value, equal });
    }
    Err(format!("unsupported JSONPath expression [{body}]"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_paths_crds_use_select_what_kubectl_would() {
        let obj = json!({"spec": {"replicas": 3, "a.b": "dotted", "ports": [{"name": "x"}, {"name": "y"}]},
            "status": {"conditions": [{"type": "Synced", "status": "False"}, {"type": "Ready", "status": "True"}]}});
        let get = |p: &str| {
            JsonPath::parse(p)
                .unwrap()
                .find(&obj)
                .into_iter()
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(get(".spec.replicas"), vec![json!(3)]);
        assert_eq!(get("{.spec.replicas}"), vec![json!(3)]);
        assert_eq!(get(".spec['a.b']"), vec![json!("dotted")]);
        assert_eq!(get(".spec.ports[1].name"), vec![json!("y")]);
        assert_eq!(get(".spec.ports[*].name"), vec![json!("x"), json!("y")]);
        assert_eq!(
            get(".status.conditions[?(@.type==\"Ready\")].status"),
            vec![json!("True")]
        );
        assert_eq!(
            get(".status.conditions[?(@.type=='Ready')].status"),
            vec![json!("True")]
        );
        assert!(get(".spec.missing").is_empty());
        assert!(get(".spec.replicas.deeper").is_empty());
        assert_eq!(
            JsonPath::parse(".spec.replicas")
                .unwrap()
                .as_pointer()
                .as_deref(),
            Some("/spec/replicas")
        );
        assert_eq!(
            JsonPath::parse(".spec.ports[0]").unwrap().as_pointer(),
            None
        );
    }

    #[test]
    fn malformed_paths_are_errors() {
        for bad in [
            "spec",
            ".spec..x",
            ".spec[",
            ".a[?(@.x)]",
            ".a[foo]",
            ".a[?(x==1)]",
            "",
            ".a[?(@.b==bare)]",
        ] {
            assert!(JsonPath::parse(bad).is_err(), "{bad}");
        }
    }
}
