//! Strategic merge patch (`application/strategic-merge-patch+json`) for the built-in kinds, as
//! apimachinery's `strategicpatch` applies it — what client-side `kubectl apply` and plain
//! `kubectl patch` send.
//!
//! Like a JSON merge patch (maps merge, `null` deletes a key, other values replace), except:
//! - lists whose Go field carries `patchStrategy:"merge"` merge element-wise: by their
//!   `patchMergeKey` for lists of objects (containers by `name`, ports by `containerPort` ...),
//!   as a set for lists of scalars (finalizers). Every other list is replaced whole.
//! - directives: `$patch: replace|delete|merge` in a map or list element, `$retainKeys` (keys to
//!   keep, others cleared), `$setElementOrder/<field>` (final order of a merged list) and
//!   `$deleteFromPrimitiveList/<field>` (scalars to remove from a merged list).
//!
//! Which fields merge, and by what key, is [`strategy_for`]: a table of the built-in types'
//! patch metadata (from their Go struct tags), looked up by the field's path.

use serde_json::{Map, Value};

/// How a list field merges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListStrategy {
    /// Replaced whole (no patchStrategy).
    Replace,
    /// Objects merged by this key.
    MergeByKey(&'static str),
    /// Scalars merged as a set.
    MergeScalars,
}

/// The patch strategy of the list at `path` (field names from the object's root; list indices
/// are not in the path) in an object of `kind`.
pub fn strategy_for(kind: &str, path: &[&str]) -> ListStrategy {
    use ListStrategy::*;
    let Some((field, parent)) = path.split_last() else {
        return Replace;
    };
    let parent_last = parent.last().copied().unwrap_or("");
    match (*field, parent_last) {
        ("finalizers", "metadata") => MergeScalars,
        ("ownerReferences", "metadata") => MergeByKey("uid"),
        // PodSpec, wherever it sits (pods: spec; workloads: spec.template.spec).
        ("containers" | "initContainers" | "ephemeralContainers", "spec") => MergeByKey("name"),
        ("volumes" | "imagePullSecrets" | "resourceClaims" | "schedulingGates", "spec") => {
            MergeByKey("name")
        }
        ("hostAliases", "spec") => MergeByKey("ip"),
        ("topologySpreadConstraints", "spec") => MergeByKey("topologyKey"),
        // Container fields: the parent is the container list itself.
        ("env", "containers" | "initContainers" | "ephemeralContainers") => MergeByKey("name"),
        ("ports", "containers" | "initContainers" | "ephemeralContainers") => {
            MergeByKey("containerPort")
        }
        ("volumeMounts", "containers" | "initContainers" | "ephemeralContainers") => {
            MergeByKey("mountPath")
        }
        ("volumeDevices", "containers" | "initContainers" | "ephemeralContainers") => {
            MergeByKey("devicePath")
        }
        ("ports", "spec") if kind == "Service" && parent.len() == 1 => MergeByKey("port"),
        ("conditions", "status") => MergeByKey("type"),
        ("addresses", "status") if kind == "Node" => MergeByKey("type"),
        _ => Replace,
    }
}

/// Why a patch could not be applied.
#[derive(Debug, PartialEq, Eq)]
pub struct PatchError(pub String);

/// Applies a strategic merge patch to `original` (an object of `kind`).
pub fn apply(kind: &str, original: &Value, patch: &Value) -> Result<Value, PatchError> {
    let (Some(orig), Some(p)) = (original.as_object(), patch.as_object()) else {
        return Err(PatchError(
            "a strategic merge patch must be a JSON object".into(),
        ));
    };
    match merge_map(kind, &mut Vec::new(), orig.clone(), p)? {
        Some(m) => Ok(Value::Object(m)),
        None => Err(PatchError(
            "$patch: delete cannot delete the whole object".into(),
        )),
    }
}

/// Merges `patch` into `orig`; None when the patch deletes the map (`$patch: delete`).
fn merge_map<'a>(
    kind: &str,
    path: &mut Vec<&'a str>,
    mut orig: Map<String, Value>,
    patch: &'a Map<String, Value>,
) -> Result<Option<Map<String, Value>>, PatchError> {
    match patch.get("$patch").map(|v| v.as_str()) {
        None | Some(Some("merge")) => {}
        Some(Some("delete")) => return Ok(None),
        Some(Some("replace")) => {
            let mut replaced = patch.clone();
            replaced.remove("$patch");
            return Ok(Some(strip_directives(replaced)));
        }
        Some(other) => {
            return Err(PatchError(format!("unknown $patch directive {other:?}")));
        }
    }
    let retain = match patch.get("$retainKeys") {
        None => None,
        Some(Value::Array(keys)) => Some(
            keys.iter()
                .map(|k| {
                    k.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| PatchError("$retainKeys must list strings".into()))
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(_) => return Err(PatchError("$retainKeys must be a list".into())),
    };
    for (key, value) in patch {
        if key == "$patch" || key == "$retainKeys" {
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            let remove = value
                .as_array()
                .ok_or_else(|| PatchError(format!("{key} must be a list")))?;
            if let Some(Value::Array(list)) = orig.get_mut(field) {
                list.retain(|v| !remove.contains(v));
            }
            continue;
        }
        if key.starts_with("$setElementOrder/") {
            continue; // applied after the field itself is merged
        }
        if key.starts_with('$') {
            return Err(PatchError(format!("unknown directive {key}")));
        }
        if value.is_null() {
            orig.remove(key);
            continue;
        }
        path.push(key.as_str());
        let merged = match (orig.remove(key), value) {
            (Some(Value::Object(o)), Value::Object(p)) => {
                merge_map(kind, path, o, p)?.map(Value::Object)
            }
            (None, Value::Object(p)) => merge_map(kind, path, Map::new(), p)?.map(Value::Object),
            (o, Value::Array(p)) => Some(Value::Array(merge_list(
                kind,
                path,
                match o {
                    Some(Value::Array(a)) => a,
                    _ => Vec::new(),
                },
                p,
            )?)),
            (_, v) => Some(v.clone()),
        };
        path.pop();
        if let Some(v) = merged {
            orig.insert(key.clone(), v);
        }
    }
    for (key, order) in patch {
        if let Some(field) = key.strip_prefix("$setElementOrder/") {
            let order = order
                .as_array()
                .ok_or_else(|| PatchError(format!("{key} must be a list")))?;
            path.push(field);
            let strategy = strategy_for(kind, path);
            path.pop();
            if let Some(Value::Array(list)) = orig.get_mut(field) {
                reorder(list, order, strategy);
            }
        }
    }
    if let Some(keep) = retain {
        orig.retain(|k, _| keep.contains(k));
    }
    Ok(Some(orig))
}

fn merge_list<'a>(
    kind: &str,
    path: &mut Vec<&'a str>,
    mut orig: Vec<Value>,
    patch: &'a [Value],
) -> Result<Vec<Value>, PatchError> {
    let replace_all = patch
        .iter()
        .any(|e| e.get("$patch").and_then(Value::as_str) == Some("replace"));
    let strategy = strategy_for(kind, path);
    if replace_all || strategy == ListStrategy::Replace {
        return Ok(patch
            .iter()
            .filter(|e| e.get("$patch").is_none())
            .cloned()
            .map(|v| match v {
                Value::Object(m) => Value::Object(strip_directives(m)),
                other => other,
            })
            .collect());
    }
    match strategy {
        ListStrategy::MergeScalars => {
            for v in patch {
                if !orig.contains(v) {
                    orig.push(v.clone());
                }
            }
            Ok(orig)
        }
        ListStrategy::MergeByKey(key) => {
            for elem in patch {
                let Some(p) = elem.as_object() else {
                    return Err(PatchError(format!(
                        "{}: elements must be objects with the merge key {key:?}",
                        path.join(".")
                    )));
                };
                let Some(id) = p.get(key) else {
                    return Err(PatchError(format!(
                        "{}: an element lacks the merge key {key:?}",
                        path.join(".")
                    )));
                };
                let pos = orig.iter().position(|o| o.get(key) == Some(id));
                if p.get("$patch").and_then(Value::as_str) == Some("delete") {
                    if let Some(i) = pos {
                        orig.remove(i);
                    }
                    continue;
                }
                match pos {
                    Some(i) => {
                        let current = match orig[i].take() {
                            Value::Object(m) => m,
                            _ => Map::new(),
                        };
                        match merge_map(kind, path, current, p)? {
                            Some(m) => orig[i] = Value::Object(m),
                            None => {
                                orig.remove(i);
                            }
                        }
                    }
                    None => {
                        if let Some(m) = merge_map(kind, path, Map::new(), p)? {
                            orig.push(Value::Object(m));
                        }
                    }
                }
            }
            Ok(orig)
        }
        ListStrategy::Replace => unreachable!("handled above"),
    }
}

/// Orders `list` as `order` lists it (by merge key, or by value); elements `order` does not
/// name keep their relative order after the named ones.
fn reorder(list: &mut [Value], order: &[Value], strategy: ListStrategy) {
    let rank = |v: &Value| -> usize {
        let found = match strategy {
            ListStrategy::MergeByKey(key) => order.iter().position(|o| o.get(key) == v.get(key)),
            _ => order.iter().position(|o| o == v),
        };
        found.unwrap_or(order.len())
    };
    list.sort_by_key(|v| rank(v));
}

/// Drops directive keys from a map that replaces rather than merges.
fn strip_directives(mut m: Map<String, Value>) -> Map<String, Value> {
    m.retain(|k, _| !k.starts_with('$'));
    for v in m.values_mut() {
        if let Value::Object(inner) = v {
            *inner = strip_directives(std::mem::take(inner));
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(containers: Value) -> Value {
        json!({"spec": {"template": {"spec": {"containers": containers}}}})
    }

    #[test]
    fn containers_merge_by_name_and_keep_what_the_patch_does_not_name() {
        let orig = deployment(
            json!([{"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}]}, {"name": "b", "image": "b:1"}]),
        );
        let patch = deployment(
            json!([{"name": "a", "image": "a:2", "env": [{"name": "Y", "value": "2"}]}]),
        );
        let out = apply("Deployment", &orig, &patch).unwrap();
        assert_eq!(
            out,
            deployment(json!([
                {"name": "a", "image": "a:2", "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]},
                {"name": "b", "image": "b:1"}
            ]))
        );
    }

    #[test]
    fn kubectl_apply_style_patches_delete_reorder_and_retain() {
        // What kubectl apply sends after a container was removed from the file and the
        // strategy changed from RollingUpdate to Recreate.
        let orig = json!({"spec": {
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
            "template": {"spec": {"containers": [{"name": "a", "image": "a"}, {"name": "b", "image": "b"}, {"name": "c", "image": "c"}]}}}});
        let patch = json!({"spec": {
            "strategy": {"$retainKeys": ["type"], "type": "Recreate"},
            "template": {"spec": {
                "$setElementOrder/containers": [{"name": "c"}, {"name": "a"}],
                "containers": [{"$patch": "delete", "name": "b"}]}}}});
        let out = apply("Deployment", &orig, &patch).unwrap();
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            json!([{"name": "c", "image": "c"}, {"name": "a", "image": "a"}])
        );
    }

    #[test]
    fn lists_without_a_strategy_are_replaced_and_null_deletes() {
        let orig = json!({"spec": {"tolerations": [{"key": "a"}], "nodeSelector": {"x": "1", "y": "2"}}, "metadata": {"finalizers": ["f1"]}});
        let patch = json!({"spec": {"tolerations": [{"key": "b"}], "nodeSelector": {"x": null}}, "metadata": {"finalizers": ["f2"], "$deleteFromPrimitiveList/finalizers": ["f1"]}});
        let out = apply("Pod", &orig, &patch).unwrap();
        assert_eq!(out["spec"]["tolerations"], json!([{"key": "b"}]));
        assert_eq!(out["spec"]["nodeSelector"], json!({"y": "2"}));
        assert_eq!(out["metadata"]["finalizers"], json!(["f2"]));
    }

    #[test]
    fn service_ports_merge_by_port_and_replace_directives_replace() {
        let orig = json!({"spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443}]}});
        let patch = json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}]}});
        let out = apply("Service", &orig, &patch).unwrap();
        assert_eq!(
            out["spec"]["ports"],
            json!([{"port": 80, "name": "http", "targetPort": 8080}, {"port": 443}])
        );
        let patch = json!({"spec": {"ports": [{"$patch": "replace"}, {"port": 1}]}});
        assert_eq!(
            apply("Service", &orig, &patch).unwrap()["spec"]["ports"],
            json!([{"port": 1}])
        );
        let patch = json!({"spec": {"$patch": "replace", "ports": []}});
        assert_eq!(
            apply("Service", &orig, &patch).unwrap()["spec"],
            json!({"ports": []})
        );
    }

    #[test]
    fn malformed_patches_are_errors_not_panics() {
        let orig = deployment(json!([{"name": "a"}]));
        for bad in [
            json!({"spec": {"template": {"spec": {"containers": [{"image": "no-name"}]}}}}),
            json!({"spec": {"template": {"spec": {"containers": ["scalar"]}}}}),
            json!({"$patch": "explode"}),
            json!({"$retainKeys": "x"}),
            json!({"$unknown": 1}),
            json!({"$patch": "delete"}),
            json!([1]),
        ] {
            assert!(apply("Deployment", &orig, &bad).is_err(), "{bad}");
        }
    }
}
