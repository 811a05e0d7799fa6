//! events.k8s.io/v1 Events: the same objects as core/v1 Events (one store prefix, `events/`), seen
//! through kube-apiserver's field mapping — what kube-rs's and client-go's event recorders write
//! and `kubectl get events` / `kubectl describe` read back as core/v1. Objects are stored in the
//! core/v1 shape; [`to_core`] and [`from_core`] convert on the way in and out.

use serde_json::{Map, Value};

/// core/v1 Event field selectors, as kube-apiserver's AddFieldLabelConversionsForEvent lists
/// them (`metadata.name` and `metadata.namespace` come with every resource), with their place in
/// the stored object. `source` selects `source.component`, as the Event strategy does.
pub const CORE_FIELDS: &[(&str, &str)] = &[
    ("involvedObject.kind", "/involvedObject/kind"),
    ("involvedObject.namespace", "/involvedObject/namespace"),
    ("involvedObject.name", "/involvedObject/name"),
    ("involvedObject.uid", "/involvedObject/uid"),
    ("involvedObject.apiVersion", "/involvedObject/apiVersion"),
    (
        "involvedObject.resourceVersion",
        "/involvedObject/resourceVersion",
    ),
    ("involvedObject.fieldPath", "/involvedObject/fieldPath"),
    ("reason", "/reason"),
    ("reportingComponent", "/reportingComponent"),
    ("source", "/source/component"),
    ("type", "/type"),
];

/// events.k8s.io/v1 field selectors (kube-apiserver's events/v1 field label conversion): the
/// same fields under their events.k8s.io names. Selection sees objects as this version serves
/// them, so the paths are events.k8s.io's.
pub const V1_FIELDS: &[(&str, &str)] = &[
    ("regarding.kind", "/regarding/kind"),
    ("regarding.namespace", "/regarding/namespace"),
    ("regarding.name", "/regarding/name"),
    ("regarding.uid", "/regarding/uid"),
    ("regarding.apiVersion", "/regarding/apiVersion"),
    ("regarding.resourceVersion", "/regarding/resourceVersion"),
    ("regarding.fieldPath", "/regarding/fieldPath"),
    ("reason", "/reason"),
    ("reportingController", "/reportingController"),
    ("type", "/type"),
];

/// (events.k8s.io/v1 field, core/v1 field), as kube-apiserver converts them.
const RENAMES: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

fn rename(obj: &mut Value, from_to: impl Iterator<Item = (&'static str, &'static str)>) {
    let Some(m) = obj.as_object_mut() else { return };
    let mut moved = Map::new();
    for (from, to) in from_to {
        if let Some(v) = m.remove(from) {
            moved.insert(to.to_string(), v);
        }
    }
    m.extend(moved);
}

/// An events.k8s.io/v1 Event in its stored (core/v1) shape.
pub fn to_core(obj: &mut Value) {
    rename(obj, RENAMES.iter().copied());
    obj["apiVersion"] = Value::String("v1".into());
}

/// A stored (core/v1) Event as events.k8s.io/v1 shows it.
pub fn from_core(obj: &mut Value) {
    rename(obj, RENAMES.iter().map(|(a, b)| (*b, *a)));
    obj["apiVersion"] = Value::String("events.k8s.io/v1".into());
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_map_both_ways_and_round_trip() {
        let ev = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"},
            "regarding": {"kind": "Pod", "name": "web"}, "note": "pulled", "reason": "Pulled",
            "type": "Normal", "reportingController": "kubelet", "deprecatedCount": 3,
            "eventTime": "2026-11-24T10:00:00.000000Z", "action": "Pull"});
        let mut core = ev.clone();
        to_core(&mut core);
        assert_eq!(core["apiVersion"], "v1");
        assert_eq!(core["involvedObject"]["name"], "web");
        assert_eq!(core["message"], "pulled");
        assert_eq!(core["reportingComponent"], "kubelet");
        assert_eq!(core["count"], 3);
        assert_eq!(core["action"], "Pull");
        assert!(core.get("note").is_none() && core.get("regarding").is_none());
        let mut back = core;
        from_core(&mut back);
        assert_eq!(back, ev);
    }
}
