//! Manifests: the objects of multi-document YAML (or JSON) files, each remembering the file
//! and line it came from so that every error can name them (`apps/web.yaml:12: ...`), as
//! kubectl's and Flux's do. `kind: List` documents stand for their items.

use serde_json::Value;

use super::ApplyError;

/// One object to apply, and where it was read.
#[derive(Clone, Debug, PartialEq)]
pub struct Manifest {
    pub object: Value,
    /// The file (or `stdin`).
    pub source: String,
    /// The line its document starts at (1-based).
    pub line: usize,
    /// The namespace a kustomization (or a GitSync's targetNamespace) puts it in, when it is
    /// namespaced: known only once discovery says so.
    pub namespace_override: Option<String>,
}

impl Manifest {
    pub fn api_version(&self) -> &str {
        self.object["apiVersion"].as_str().unwrap_or_default()
    }

    pub fn kind(&self) -> &str {
        self.object["kind"].as_str().unwrap_or_default()
    }

    pub fn name(&self) -> &str {
        self.object["metadata"]["name"].as_str().unwrap_or_default()
    }

    /// `file:line`.
    pub fn at(&self) -> String {
        format!("{}:{}", self.source, self.line)
    }
}

/// The documents of `text`, split at `---` lines: (first line, text).
fn documents(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let (mut start, mut doc) = (1, String::new());
    for (i, line) in text.lines().enumerate() {
        let is_separator = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        if is_separator {
            out.push((start, std::mem::take(&mut doc)));
            start = i + 2;
            // `--- {a: 1}` carries content on the separator's line.
            let rest = line[3..].trim_start();
            if !rest.is_empty() && !rest.starts_with('#') {
                start = i + 1;
                doc.push_str(rest);
                doc.push('\n');
            }
            continue;
        }
        if line == "..." {
            continue;
        }
        doc.push_str(line);
        doc.push('\n');
    }
    out.push((start, doc));
    out
}

/// Every object of one file's text.
pub fn parse(source: &str, text: &str) -> Result<Vec<Manifest>, ApplyError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    for (start, doc) in documents(text) {
        if doc.trim().is_empty() {
            continue;
        }
        let value: serde_yaml::Value = serde_yaml::from_str(&doc).map_err(|e| {
            let line = e.location().map_or(start, |l| start + l.line() - 1);
            ApplyError::Parse {
                at: format!("{source}:{line}"),
                message: e.to_string(),
            }
        })?;
        let at = format!("{source}:{start}");
        let object = serde_json::to_value(value).map_err(|e| ApplyError::Parse {
            at: at.clone(),
            message: e.to_string(),
        })?;
        match object {
            Value::Null => {}
            Value::Object(ref m) if m.get("kind").and_then(Value::as_str) == Some("List") => {
                for item in m
                    .get("items")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    out.push(checked(item.clone(), source, start)?);
                }
            }
            Value::Object(_) => out.push(checked(object, source, start)?),
            _ => {
                return Err(ApplyError::Invalid {
                    at,
                    message: "a document is not an object".into(),
                });
            }
        }
    }
    Ok(out)
}

/// An object with what applying it needs: apiVersion, kind and metadata.name.
fn checked(object: Value, source: &str, line: usize) -> Result<Manifest, ApplyError> {
    let at = format!("{source}:{line}");
    let missing = |field: &str| ApplyError::Invalid {
        at: at.clone(),
        message: format!("{field} is required"),
    };
    if !object.is_object() {
        return Err(ApplyError::Invalid {
            at,
            message: "a List item is not an object".into(),
        });
    }
    if object["apiVersion"].as_str().is_none_or(str::is_empty) {
        return Err(missing("apiVersion"));
    }
    if object["kind"].as_str().is_none_or(str::is_empty) {
        return Err(missing("kind"));
    }
    if object["metadata"]["name"]
        .as_str()
        .is_none_or(str::is_empty)
    {
        return Err(missing("metadata.name"));
    }
    Ok(Manifest {
        object,
        source: source.to_string(),
        line,
        namespace_override: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_keep_their_lines() {
        let text = "# leading comment\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: b\n";
        let m = parse("x.yaml", text).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].name(), m[0].line), ("a", 1));
        assert_eq!((m[1].name(), m[1].line), ("b", 7));
        assert_eq!(m[1].at(), "x.yaml:7");
    }

    #[test]
    fn a_yaml_error_names_file_and_line() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: b\n data: x\n";
        match parse("apps/cm.yaml", text) {
            Err(ApplyError::Parse { at, .. }) => assert_eq!(at, "apps/cm.yaml:9"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn lists_stand_for_their_items_and_names_are_required() {
        let text = r#"{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Secret","metadata":{"name":"s"}}]}"#;
        let m = parse("l.json", text).unwrap();
        assert_eq!((m.len(), m[0].kind()), (1, "Secret"));
        let err = parse("n.yaml", "apiVersion: v1\nkind: ConfigMap\n").unwrap_err();
        assert!(
            err.to_string().contains("n.yaml:1") && err.to_string().contains("metadata.name"),
            "{err}"
        );
        assert!(parse("s.yaml", "- a\n- b\n").is_err());
    }

    #[test]
    fn separators_with_content_and_byte_order_marks() {
        let m = parse(
            "d.yaml",
            "\u{feff}--- {apiVersion: v1, kind: ConfigMap, metadata: {name: c}}\n",
        )
        .unwrap();
        assert_eq!((m[0].name(), m[0].line), ("c", 1));
    }
}
