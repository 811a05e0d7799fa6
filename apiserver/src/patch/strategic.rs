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

use std::collections::{HashMap, HashSet, VecDeque};

use serde_json::{Map, Value};

/// A value as text that equal values share (maps are sorted): the key of the hash indexes that
/// keep merging linear — one lookup per patch element, never a scan of the list.
fn canonical(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

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
            let remove: HashSet<String> = remove.iter().map(canonical).collect();
            if let Some(Value::Array(list)) = orig.get_mut(field) {
                list.retain(|v| !remove.contains(&canonical(v)));
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
        let keep: HashSet<&str> = keep.iter().map(String::as_str).collect();
        orig.retain(|k, _| keep.contains(k.as_str()));
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
            let mut seen: HashSet<String> = orig.iter().map(canonical).collect();
            for v in patch {
                if seen.insert(canonical(v)) {
                    orig.push(v.clone());
                }
            }
            Ok(orig)
        }
        ListStrategy::MergeByKey(key) => {
            // Items stay in their slots (a deleted one leaves None); each merge key maps to the
            // slots holding it, first first — what a scan for the first match would find.
            let mut slots: Vec<Option<Value>> = orig.into_iter().map(Some).collect();
            let mut index: HashMap<String, VecDeque<usize>> = HashMap::new();
            for (i, item) in slots.iter().enumerate() {
                if let Some(id) = item.as_ref().and_then(|v| v.get(key)) {
                    index.entry(canonical(id)).or_default().push_back(i);
                }
            }
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
                let holders = index.entry(canonical(id)).or_default();
                let pos = holders.front().copied();
                if p.get("$patch").and_then(Value::as_str) == Some("delete") {
                    if let Some(i) = pos {
                        slots[i] = None;
                        holders.pop_front();
                    }
                    continue;
                }
                match pos {
                    Some(i) => {
                        let current = match slots[i].take() {
                            Some(Value::Object(m)) => m,
                            _ => Map::new(),
                        };
                        match merge_map(kind, path, current, p)? {
                            Some(m) => slots[i] = Some(Value::Object(m)),
                            None => {
                                holders.pop_front();
                            }
                        }
                    }
                    None => {
                        if let Some(m) = merge_map(kind, path, Map::new(), p)? {
                            holders.push_back(slots.len());
                            slots.push(Some(Value::Object(m)));
                        }
                    }
                }
            }
            Ok(slots.into_iter().flatten().collect())
        }
        ListStrategy::Replace => unreachable!("handled above"),
    }
}

/// Orders `list` as `order` lists it (by merge key, or by value); elements `order` does not
/// name keep their relative order after the named ones.
fn reorder(list: &mut [Value], order: &[Value], strategy: ListStrategy) {
    let key_of = |v: &Value| match strategy {
        ListStrategy::MergeByKey(key) => v.get(key).map(canonical).unwrap_or_default(),
        _ => canonical(v),
    };
    let mut rank: HashMap<String, usize> = HashMap::new();
    for (i, o) in order.iter().enumerate() {
        rank.entry(key_of(o)).or_insert(i);
    }
    list.sort_by_cached_key(|v| rank.get(&key_of(v)).copied().unwrap_or(order.len()));
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

    #[test]
    fn long_merged_lists_merge_in_linear_time() {
        // Found by the issue 16 probe: each patch element scanned the whole list (and
        // $setElementOrder ranked by scanning the order): 30,000 items took minutes.
        let n = 30_000;
        let items = |prefix: &str| -> Value {
            Value::Array(
                (0..n)
                    .map(|i| json!({"name": format!("{prefix}{i}")}))
                    .collect(),
            )
        };
        let orig = json!({"spec": {"containers": items("a"), "finalizers": []}, "metadata": {"finalizers": (0..n).map(|i| format!("f{i}")).collect::<Vec<_>>()}});
        let patch = json!({"spec": {"containers": items("b"), "$setElementOrder/containers": items("b")},
            "metadata": {"finalizers": (0..n).map(|i| format!("g{i}")).collect::<Vec<_>>(),
                         "$deleteFromPrimitiveList/finalizers": (0..n).map(|i| format!("f{i}")).collect::<Vec<_>>()}});
        let started = std::time::Instant::now();
        let out = apply("Pod", &orig, &patch).unwrap();
        assert!(
            started.elapsed() < std::time::Duration::from_secs(15),
            "{:?}",
            started.elapsed()
        );
        let c = out["spec"]["containers"].as_array().unwrap();
        assert_eq!(c.len(), 2 * n);
        assert_eq!(
            (c[0]["name"].as_str(), c[n]["name"].as_str()),
            (Some("b0"), Some("a0"))
        );
        assert_eq!(out["metadata"]["finalizers"].as_array().unwrap().len(), n);
    }

    #[test]
    fn duplicate_keys_merge_into_the_first_and_deletes_take_them_in_order() {
        let orig = json!({"spec": {"containers": [{"name": "a", "n": 1}, {"name": "a", "n": 2}]}});
        let patch = json!({"spec": {"containers": [{"name": "a", "$patch": "delete"}, {"name": "a", "x": true}]}});
        let out = apply("Pod", &orig, &patch).unwrap();
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "a", "n": 2, "x": true}])
        );
    }
}
