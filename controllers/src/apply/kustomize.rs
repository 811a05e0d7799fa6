//! What a directory of a repository stands for, as Flux's kustomize-controller reads it: its
//! `kustomization.yaml` when it has one (`resources` — files and directories — and
//! `namespace`), else every manifest file under it (*.yaml, *.yml, *.json, hidden
//! directories skipped, in path order). Other kustomize features are refused by name rather
//! than ignored, so a repository never applies differently from what its author meant.

use std::collections::BTreeMap;

use serde_json::Value;

use super::ApplyError;
use super::manifests::{self, Manifest};

/// A snapshot of a repository's files: path (relative, `/`-separated) → text.
#[derive(Clone, Debug, Default)]
pub struct Files(pub BTreeMap<String, String>);

const KUSTOMIZATION: [&str; 3] = ["kustomization.yaml", "kustomization.yml", "Kustomization"];
/// The fields of a kustomization that are read.
const SUPPORTED: [&str; 6] = [
    "apiVersion",
    "kind",
    "metadata",
    "resources",
    "bases",
    "namespace",
];
/// How deep kustomizations may include one another.
const MAX_DEPTH: usize = 16;

/// Whether `path` is a manifest file.
pub fn is_manifest_file(path: &str) -> bool {
    path.ends_with(".yaml") || path.ends_with(".yml") || path.ends_with(".json")
}

/// `dir` joined with `rel`, `.` and `..` resolved; `None` when it leaves the repository.
pub fn join(dir: &str, rel: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    let start = if rel.starts_with('/') { "" } else { dir };
    for p in start.split('/').chain(rel.split('/')) {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

impl Files {
    fn is_dir(&self, dir: &str) -> bool {
        dir.is_empty() || {
            let prefix = format!("{dir}/");
            self.0
                .range(prefix.clone()..)
                .next()
                .is_some_and(|(k, _)| k.starts_with(&prefix))
        }
    }

    /// The files under `dir`, recursively, in path order.
    fn under<'a>(&'a self, dir: &'a str) -> impl Iterator<Item = (&'a String, &'a String)> + 'a {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        self.0
            .range(prefix.clone()..)
            .take_while({
                let prefix = prefix.clone();
                move |(k, _)| k.starts_with(&prefix)
            })
            .filter(move |(k, _)| {
                !k[prefix.len()..]
                    .split('/')
                    .any(|part| part.starts_with('.'))
            })
    }

    /// The manifests `dir` stands for.
    pub fn render(&self, dir: &str) -> Result<Vec<Manifest>, ApplyError> {
        let dir = join("", dir).ok_or_else(|| ApplyError::Invalid {
            at: dir.to_string(),
            message: "the path leaves the repository".into(),
        })?;
        self.render_at(&dir, 0)
    }

    fn render_at(&self, dir: &str, depth: usize) -> Result<Vec<Manifest>, ApplyError> {
        if depth > MAX_DEPTH {
            return Err(ApplyError::Invalid {
                at: dir.to_string(),
                message: format!("kustomizations nest more than {MAX_DEPTH} deep (a cycle?)"),
            });
        }
        if !self.is_dir(dir) {
            return Err(ApplyError::Invalid {
                at: if dir.is_empty() { "." } else { dir }.to_string(),
                message: "no such directory in the repository".into(),
            });
        }
        let kustomization = KUSTOMIZATION
            .iter()
            .map(|f| join(dir, f).unwrap_or_default())
            .find(|p| self.0.contains_key(p));
        match kustomization {
            Some(path) => self.kustomize(dir, &path, depth),
            None => {
                let mut out = Vec::new();
                for (path, text) in self.under(dir) {
                    // A file without a `kind` is not a manifest (CI configs, values files).
                    if is_manifest_file(path) && text.contains("kind") {
                        out.extend(manifests::parse(path, text)?);
                    }
                }
                Ok(out)
            }
        }
    }

    fn kustomize(&self, dir: &str, path: &str, depth: usize) -> Result<Vec<Manifest>, ApplyError> {
        let invalid = |line: usize, message: String| ApplyError::Invalid {
            at: format!("{path}:{line}"),
            message,
        };
        let text = &self.0[path];
        let k: Value = serde_yaml::from_str::<serde_yaml::Value>(text)
            .map_err(|e| ApplyError::Parse {
                at: format!("{path}:{}", e.location().map_or(1, |l| l.line())),
                message: e.to_string(),
            })
            .and_then(|v| serde_json::to_value(v).map_err(|e| invalid(1, e.to_string())))?;
        let Value::Object(fields) = &k else {
            return Err(invalid(1, "a kustomization is a mapping".into()));
        };
        if let Some(other) = fields.keys().find(|f| !SUPPORTED.contains(&f.as_str())) {
            return Err(invalid(
                line_of(text, other),
                format!(
                    "`{other}` is not supported (Capstan reads a kustomization's resources and namespace)"
                ),
            ));
        }
        let namespace = match &k["namespace"] {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            _ => {
                return Err(invalid(
                    line_of(text, "namespace"),
                    "namespace is a string".into(),
                ));
            }
        };
        let mut out = Vec::new();
        for field in ["bases", "resources"] {
            for entry in k[field].as_array().into_iter().flatten() {
                let Some(rel) = entry.as_str() else {
                    return Err(invalid(
                        line_of(text, field),
                        format!("{field} lists paths"),
                    ));
                };
                let at = line_of(text, rel);
                if rel.contains("://") || rel.starts_with("github.com/") {
                    return Err(invalid(
                        at,
                        format!("remote resource {rel:?} is not supported"),
                    ));
                }
                let Some(target) = join(dir, rel) else {
                    return Err(invalid(at, format!("{rel:?} leaves the repository")));
                };
                if self.0.contains_key(&target) {
                    out.extend(manifests::parse(&target, &self.0[&target])?);
                } else if self.is_dir(&target) {
                    out.extend(self.render_at(&target, depth + 1)?);
                } else {
                    return Err(invalid(at, format!("{rel:?}: no such file or directory")));
                }
            }
        }
        if let Some(ns) = namespace {
            for m in &mut out {
                m.namespace_override = Some(ns.clone());
            }
        }
        Ok(out)
    }
}

/// The first line of `text` mentioning `word` (1 when none does): where an error points.
fn line_of(text: &str, word: &str) -> usize {
    text.lines()
        .position(|l| l.contains(word))
        .map_or(1, |i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(entries: &[(&str, &str)]) -> Files {
        Files(
            entries
                .iter()
                .map(|(p, t)| (p.to_string(), t.to_string()))
                .collect(),
        )
    }

    fn cm(name: &str) -> String {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n")
    }

    #[test]
    fn a_directory_without_kustomization_is_every_manifest_under_it() {
        let f = files(&[
            ("apps/a.yaml", &cm("a")),
            ("apps/sub/b.yml", &cm("b")),
            ("apps/.hidden/c.yaml", &cm("c")),
            ("apps/values.yaml", "replicas: 3\n"),
            ("apps/README.md", "kind: not yaml"),
            ("other/d.yaml", &cm("d")),
        ]);
        let names: Vec<_> = f
            .render("apps")
            .unwrap()
            .iter()
            .map(|m| m.name().to_string())
            .collect();
        assert_eq!(names, ["a", "b"]);
        let all: Vec<_> = f
            .render("")
            .unwrap()
            .iter()
            .map(|m| m.name().to_string())
            .collect();
        assert_eq!(all, ["a", "b", "d"]);
        assert!(f.render("missing").is_err());
    }

    #[test]
    fn kustomizations_list_resources_and_set_the_namespace() {
        let f = files(&[
            ("base/x.yaml", &cm("x")),
            ("base/y.yaml", &cm("y")),
            (
                "app/kustomization.yaml",
                "namespace: shop\nresources:\n- ../base/y.yaml\n- sub\n",
            ),
            ("app/sub/kustomization.yaml", "resources: [z.yaml]\n"),
            ("app/sub/z.yaml", &cm("z")),
            ("app/ignored.yaml", &cm("ignored")),
        ]);
        let m = f.render("./app/").unwrap();
        let names: Vec<_> = m.iter().map(|m| m.name()).collect();
        assert_eq!(names, ["y", "z"]);
        assert!(
            m.iter()
                .all(|m| m.namespace_override.as_deref() == Some("shop"))
        );
    }

    #[test]
    fn unsupported_fields_missing_files_and_escapes_are_errors_with_lines() {
        let f = files(&[
            (
                "k/kustomization.yaml",
                "resources:\n- a.yaml\npatches:\n- p.yaml\n",
            ),
            ("m/kustomization.yaml", "resources:\n- gone.yaml\n"),
            ("e/kustomization.yaml", "resources:\n- ../../etc\n"),
            ("k/a.yaml", &cm("a")),
        ]);
        let e = f.render("k").unwrap_err().to_string();
        assert!(
            e.contains("k/kustomization.yaml:3") && e.contains("patches"),
            "{e}"
        );
        let e = f.render("m").unwrap_err().to_string();
        assert!(
            e.contains("m/kustomization.yaml:2") && e.contains("gone.yaml"),
            "{e}"
        );
        let e = f.render("e").unwrap_err().to_string();
        assert!(e.contains("leaves the repository"), "{e}");
        assert_eq!(join("a/b", "../c"), Some("a/c".into()));
        assert_eq!(join("a", "../../c"), None);
    }
}
