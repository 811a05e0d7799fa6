//! Server-side apply (`application/apply-patch+yaml`), after structured-merge-diff's model.
//!
//! Each field manager owns a set of fields, kept in `metadata.managedFields` as FieldsV1
//! (`{"f:spec": {"f:replicas": {}}}`; list items of merge-keyed lists as `k:{"name":"web"}` with
//! `.` for the item itself, set members as `v:<json>`). An apply by manager M with configuration C:
//! 1. C's field set A is computed (list keys from the same patch metadata as strategic merge);
//! 2. conflicts: a field in A that another manager owns and whose value in C differs from the
//!    live one — a 409 listing them, unless `force=true`, which takes the fields over;
//! 3. C is merged into the live object (maps merge, keyed lists merge by key, others replace);
//! 4. fields M applied before but not now are removed, unless another manager owns them;
//! 5. M's Apply entry becomes A; other managers keep what was not taken from them.
//!
//! Non-apply writes (POST, PUT, PATCH) are recorded too
//! ([`super::managed_fields::track_update`]): the writer's `Update` entry gains the fields it
//! changed, taken from everyone else — so an applier conflicts with a `kubectl scale` or a
//! controller that changed a field it applies. The ownership sets themselves are
//! [`super::managed_fields`].

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use std::ops::Bound;

use crate::patch::field_paths::{Finder, differs, remove_all};
use crate::patch::managed_fields::{
    Entry, FieldSet, Path, Step, display, entries, entries_json, field_set,
};
use crate::patch::strategic;

/// A conflict: the field and the manager that owns it.
#[derive(Debug, PartialEq, Eq)]
pub struct Conflict {
    pub path: String,
    pub manager: String,
    pub api_version: String,
}

/// Why an apply was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum ApplyError {
    /// Fields other managers own with other values (a 409 unless forced).
    Conflicts(Vec<Conflict>),
    /// The configuration cannot be applied (a 400).
    Invalid(String),
}

/// A merge key field of a list item (`k:{"name":"web"}` / `f:name`): it goes with the item.
fn is_key_field(path: &[Step]) -> bool {
    match path {
        [.., Step::Key(k), Step::Field(f)] => {
            serde_json::from_str::<Map<String, Value>>(k).is_ok_and(|m| m.contains_key(f))
        }
        _ => false,
    }
}

/// The first `$` directive key anywhere in `v` (not allowed in an applied configuration).
fn directive(v: &Value) -> Option<String> {
    match v {
        Value::Object(m) => m.iter().find_map(|(k, v)| {
            if k.starts_with('$') {
                Some(k.clone())
            } else {
                directive(v)
            }
        }),
        Value::Array(a) => a.iter().find_map(directive),
        _ => None,
    }
}

/// The result of applying `applied` by `manager` to `live` (None: the object does not exist).
pub fn apply(
    kind: &str,
    api_version: &str,
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    now: &str,
) -> Result<Value, ApplyError> {
    if let Some(d) = directive(applied) {
        return Err(ApplyError::Invalid(format!(
            "{d} is a patch directive, not allowed in an applied configuration"
        )));
    }
    let set = field_set(kind, applied);
    let Some(live) = live else {
        let mut obj = applied.clone();
        let entry = Entry::apply(manager, api_version, now, set);
        crate::object::set_path(
            &mut obj,
            &["metadata", "managedFields"],
            entries_json(&[entry]),
        );
        return Ok(obj);
    };
    let mut all = entries(live);
    let mut conflicts = Vec::new();
    let (config, current) = (Finder::new(applied), Finder::new(live));
    for e in all
        .iter()
        .filter(|e| !(e.manager == manager && e.operation == "Apply"))
    {
        for path in e.fields.iter().filter(|p| set.contains(*p)) {
            if differs(&config, &current, path) {
                conflicts.push(Conflict {
                    path: display(path),
                    manager: e.manager.clone(),
                    api_version: e.api_version.clone(),
                });
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(ApplyError::Conflicts(conflicts));
    }
    let previous: FieldSet = all
        .iter()
        .filter(|e| e.manager == manager && e.operation == "Apply")
        .flat_map(|e| e.fields.iter().cloned())
        .collect();
    // Others lose what this apply takes over (with force, or where the values agree: shared).
    for e in all
        .iter_mut()
        .filter(|e| !(e.manager == manager && e.operation == "Apply"))
    {
        if force {
            e.fields.retain(|p| !set.contains(p));
        }
    }
    let others: FieldSet = all
        .iter()
        .filter(|e| !(e.manager == manager && e.operation == "Apply"))
        .flat_map(|e| e.fields.iter().cloned())
        .collect();
    let mut config = strip_nulls(applied);
    if let Some(m) = config.as_object_mut() {
        m.remove("status"); // the main resource's apply never writes status
    }
    let mut merged = strategic::apply(kind, live, &config).map_err(|e| ApplyError::Invalid(e.0))?;
    // Whole list items first: removing an item's key field first would leave it unfindable.
    let gone: Vec<&Path> = previous
        .difference(&set)
        .filter(|p| !others.contains(*p))
        .collect();
    // An item goes only if nobody else owns anything inside it (the paths inside it sort right
    // after it); otherwise just this manager's fields inside it go (never its key).
    let items: Vec<&[Step]> = gone
        .iter()
        .filter(|p| p.last() == Some(&Step::Dot))
        .filter(|p| {
            let item = &p[..p.len() - 1];
            others
                .range::<[Step], _>((Bound::Excluded(item), Bound::Unbounded))
                .next()
                .is_none_or(|o| !o.starts_with(item))
        })
        .map(|p| p.as_slice())
        .collect();
    remove_all(&mut merged, &items, false);
    // Then fields; a map left empty by the removals goes too (as `labels: {}` is omitted in
    // Kubernetes).
    let fields: Vec<&[Step]> = gone
        .iter()
        .filter(|p| p.last() != Some(&Step::Dot) && !is_key_field(p))
        .map(|p| p.as_slice())
        .collect();
    remove_all(&mut merged, &fields, true);
    all.retain(|e| !(e.manager == manager && e.operation == "Apply"));
    all.push(Entry::apply(manager, api_version, now, set));
    // A no-op apply (the same object, everyone owning what they owned) keeps the live
    // managedFields, timestamp included: nothing is written, as in Kubernetes.
    let managed_fields = if without_managed_fields(&merged) == without_managed_fields(live)
        && owners(&all) == owners(&entries(live))
    {
        live.pointer("/metadata/managedFields").cloned()
    } else {
        None
    };
    crate::object::set_path(
        &mut merged,
        &["metadata", "managedFields"],
        managed_fields.unwrap_or_else(|| entries_json(&all)),
    );
    Ok(merged)
}

fn without_managed_fields(obj: &Value) -> Value {
    let mut obj = obj.clone();
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
        m.remove("resourceVersion");
    }
    obj
}

/// Who owns what, whenever they took it.
fn owners(entries: &[Entry]) -> BTreeSet<(&str, &str, &str, &FieldSet)> {
    entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            (
                e.manager.as_str(),
                e.operation.as_str(),
                e.api_version.as_str(),
                &e.fields,
            )
        })
        .collect()
}

/// An applied configuration never deletes through null: drop nulls before merging.
fn strip_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), strip_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_nulls).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::patch::managed_fields::{from_fields_v1, to_fields_v1, track_update};

    fn deploy(replicas: i64, containers: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"app": "web"}},
               "spec": {"replicas": replicas, "template": {"spec": {"containers": containers}}}})
    }

    #[test]
    fn field_sets_round_trip_through_fields_v1() {
        let d = deploy(2, json!([{"name": "web", "image": "a", "args": ["x"]}]));
        let set = field_set("Deployment", &d);
        let v1 = to_fields_v1(&set);
        assert_eq!(
            v1["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"web\"}"]["f:image"],
            json!({})
        );
        assert!(
            v1["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"web\"}"]["."]
                .is_object()
        );
        assert_eq!(
            v1["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"web\"}"]["f:args"],
            json!({}),
            "atomic list"
        );
        assert_eq!(from_fields_v1(&v1), set);
    }

    #[test]
    fn applying_the_same_configuration_again_keeps_the_entry_and_its_time() {
        let a = deploy(2, json!([{"name": "web", "image": "a"}]));
        let live = apply("Deployment", "apps/v1", None, &a, "alice", false, "t1").unwrap();
        let again = apply(
            "Deployment",
            "apps/v1",
            Some(&live),
            &a,
            "alice",
            false,
            "t2",
        )
        .unwrap();
        assert_eq!(again, live, "a no-op apply changes nothing");
        let changed = deploy(3, json!([{"name": "web", "image": "a"}]));
        let after = apply(
            "Deployment",
            "apps/v1",
            Some(&live),
            &changed,
            "alice",
            false,
            "t2",
        );
        assert_eq!(after.unwrap()["metadata"]["managedFields"][0]["time"], "t2");
    }

    #[test]
    fn a_second_manager_conflicts_on_a_differing_value_unless_forced() {
        let a = deploy(2, json!([{"name": "web", "image": "a"}]));
        let live = apply("Deployment", "apps/v1", None, &a, "alice", false, "t").unwrap();
        // Same value: no conflict, ownership shared.
        let same = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 2}});
        assert!(
            apply(
                "Deployment",
                "apps/v1",
                Some(&live),
                &same,
                "bob",
                false,
                "t"
            )
            .is_ok()
        );
        let other = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 5}});
        let err = apply(
            "Deployment",
            "apps/v1",
            Some(&live),
            &other,
            "bob",
            false,
            "t",
        )
        .unwrap_err();
        assert_eq!(
            err,
            ApplyError::Conflicts(vec![Conflict {
                path: ".spec.replicas".into(),
                manager: "alice".into(),
                api_version: "apps/v1".into()
            }])
        );
        let forced = apply(
            "Deployment",
            "apps/v1",
            Some(&live),
            &other,
            "bob",
            true,
            "t",
        )
        .unwrap();
        assert_eq!(forced["spec"]["replicas"], 5);
        let owners: Vec<(String, bool)> = entries(&forced)
            .iter()
            .map(|e| {
                (
                    e.manager.clone(),
                    e.fields.contains(&vec![
                        Step::Field("spec".into()),
                        Step::Field("replicas".into()),
                    ]),
                )
            })
            .collect();
        assert_eq!(
            owners,
            [("alice".to_string(), false), ("bob".to_string(), true)]
        );
    }

    #[test]
    fn an_update_takes_the_fields_it_changes_and_an_applier_then_conflicts() {
        let live = apply(
            "Deployment",
            "apps/v1",
            None,
            &deploy(2, json!([{"name": "web", "image": "a"}])),
            "alice",
            false,
            "t",
        )
        .unwrap();
        let mut scaled = live.clone();
        scaled["spec"]["replicas"] = json!(5);
        track_update(
            "Deployment",
            "apps/v1",
            "kubectl-scale",
            Some(&live),
            &mut scaled,
            "t2",
        );
        let managers: Vec<(String, String)> = entries(&scaled)
            .into_iter()
            .map(|e| (e.manager, e.operation))
            .collect();
        assert_eq!(
            managers,
            [
                ("alice".into(), "Apply".into()),
                ("kubectl-scale".into(), "Update".into())
            ]
        );
        // Alice re-applies replicas 2: the scaler owns it now.
        let again = apply(
            "Deployment",
            "apps/v1",
            Some(&scaled),
            &deploy(2, json!([{"name": "web", "image": "a"}])),
            "alice",
            false,
            "t3",
        );
        match again.unwrap_err() {
            ApplyError::Conflicts(c) => assert_eq!(c[0].manager, "kubectl-scale"),
            other => panic!("{other:?}"),
        }
        // A write that changes nothing leaves managedFields byte for byte.
        let mut same = scaled.clone();
        track_update(
            "Deployment",
            "apps/v1",
            "other",
            Some(&scaled),
            &mut same,
            "t4",
        );
        assert_eq!(same, scaled);
    }

    #[test]
    fn a_change_inside_a_list_item_does_not_take_the_item() {
        // Found in review: an update inside a container took the container's `.`, and the next
        // apply of the same container conflicted on the whole item.
        let cfg = deploy(2, json!([{"name": "web", "image": "a"}]));
        let live = apply("Deployment", "apps/v1", None, &cfg, "alice", false, "t").unwrap();
        let mut edited = live.clone();
        edited["spec"]["template"]["spec"]["containers"][0]["env"] =
            json!([{"name": "X", "value": "1"}]);
        track_update(
            "Deployment",
            "apps/v1",
            "bob",
            Some(&live),
            &mut edited,
            "t2",
        );
        let again = apply(
            "Deployment",
            "apps/v1",
            Some(&edited),
            &cfg,
            "alice",
            false,
            "t3",
        )
        .unwrap();
        assert_eq!(
            again["spec"]["template"]["spec"]["containers"][0]["env"][0]["name"],
            "X"
        );
        // Alice stops applying the container; Bob's env keeps it, with its name.
        let bare = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 2}});
        let out = apply(
            "Deployment",
            "apps/v1",
            Some(&again),
            &bare,
            "alice",
            false,
            "t4",
        )
        .unwrap();
        let c = &out["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(
            (c["name"].as_str(), c.get("image")),
            (Some("web"), None),
            "{c}"
        );
    }

    #[test]
    fn directives_and_unmergeable_configurations_are_refused() {
        let live = apply(
            "Deployment",
            "apps/v1",
            None,
            &deploy(2, json!([{"name": "web"}])),
            "alice",
            false,
            "t",
        )
        .unwrap();
        let directive = json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "$patch": "delete"}]}}}});
        assert!(matches!(
            apply(
                "Deployment",
                "apps/v1",
                Some(&live),
                &directive,
                "alice",
                false,
                "t"
            ),
            Err(ApplyError::Invalid(_))
        ));
        let nameless = deploy(2, json!([{"image": "x"}]));
        assert!(matches!(
            apply(
                "Deployment",
                "apps/v1",
                Some(&live),
                &nameless,
                "alice",
                false,
                "t"
            ),
            Err(ApplyError::Invalid(_))
        ));
    }

    #[test]
    fn fields_a_manager_stops_applying_are_removed_unless_someone_else_owns_them() {
        let v1 = deploy(
            2,
            json!([{"name": "web", "image": "a"}, {"name": "side", "image": "s"}]),
        );
        let live = apply("Deployment", "apps/v1", None, &v1, "alice", false, "t").unwrap();
        let v2 = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
                        "spec": {"template": {"spec": {"containers": [{"name": "web", "image": "b"}]}}}});
        let out = apply(
            "Deployment",
            "apps/v1",
            Some(&live),
            &v2,
            "alice",
            false,
            "t",
        )
        .unwrap();
        assert!(
            out["spec"].get("replicas").is_none(),
            "no longer applied, owned by nobody else"
        );
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            json!([{"name": "web", "image": "b"}])
        );
        assert!(out["metadata"].get("labels").is_none());
    }
}
