//! apps/v1 DaemonSet (kubernetes/pkg/registry/apps/daemonset and pkg/apis/apps/validation):
//! validation, the template generation the API server keeps in the
//! `deprecated.daemonset.template.generation` annotation (1 on create, one more on every
//! template change; the controller labels pods with it), and the Table columns.

use capstan_api::validation::FieldError;
use serde_json::{Value, json};

use crate::pod_disruption_budget::int_or_percent;
use crate::strategy::{invalid, required, validate_pod_spec, validate_selector};
use crate::table::{self, Table, age, label_selector, pod_template_cells};

/// The annotation holding apps/v1's template generation.
pub const TEMPLATE_GENERATION: &str = "deprecated.daemonset.template.generation";

/// A new DaemonSet's template is generation 1.
pub fn on_create(obj: &mut Value) {
    set_template_generation(obj, 1);
}

/// An update keeps the live template generation, one more when the template changed
/// (`PrepareForUpdate`): clients never set it.
pub fn prepare_update(new: &mut Value, old: &Value) {
    let live = template_generation(old).unwrap_or(1);
    let changed = new["spec"]["template"] != old["spec"]["template"];
    set_template_generation(new, if changed { live + 1 } else { live });
}

fn template_generation(obj: &Value) -> Option<i64> {
    obj["metadata"]["annotations"][TEMPLATE_GENERATION]
        .as_str()?
        .parse()
        .ok()
}

fn set_template_generation(obj: &mut Value, generation: i64) {
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    let annotations = meta.entry("annotations").or_insert_with(|| json!({}));
    if !annotations.is_object() {
        *annotations = json!({});
    }
    annotations[TEMPLATE_GENERATION] = json!(generation.to_string());
}

/// `ValidateDaemonSet`: a selector matching the template, a template whose pods restart
/// Always and have no active deadline, an update strategy with exactly one of maxUnavailable
/// and maxSurge non-zero, non-negative minReadySeconds and revisionHistoryLimit.
pub fn validate(obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let spec = &obj["spec"];
    validate_long_running(obj, "DaemonSet", &mut errs);
    non_negative(spec, "minReadySeconds", &mut errs);
    non_negative(spec, "revisionHistoryLimit", &mut errs);
    let strategy = &spec["updateStrategy"];
    match strategy["type"].as_str().unwrap_or("RollingUpdate") {
        "OnDelete" => {}
        "RollingUpdate" => {
            let rolling = &strategy["rollingUpdate"];
            let (unavailable, surge) = (&rolling["maxUnavailable"], &rolling["maxSurge"]);
            let at = "spec.updateStrategy.rollingUpdate";
            int_or_percent(&format!("{at}.maxUnavailable"), unavailable, &mut errs);
            int_or_percent(&format!("{at}.maxSurge"), surge, &mut errs);
            match (non_zero(unavailable), non_zero(surge)) {
                (true, true) => errs.push(invalid(
                    &format!("{at}.maxSurge"),
                    &cell(surge),
                    "may not be set when maxUnavailable is non-zero",
                )),
                (false, false) => errs.push(FieldError {
                    field: format!("{at}.maxUnavailable"),
                    value: String::new(),
                    message: "Required value: cannot be 0 when maxSurge is 0".into(),
                }),
                _ => {}
            }
        }
        other => errs.push(invalid(
            "spec.updateStrategy.type",
            other,
            "Unsupported value: supported values: \"OnDelete\", \"RollingUpdate\"",
        )),
    }
    errs
}

/// What DaemonSets and StatefulSets ask of their selector and pods: a selector matching the
/// template, pods that restart Always and have no active deadline.
pub(crate) fn validate_long_running(obj: &Value, kind: &str, errs: &mut Vec<FieldError>) {
    let spec = &obj["spec"];
    if spec["selector"].is_null() {
        errs.push(required("spec.selector"));
    } else {
        validate_selector(obj, &kind.to_ascii_lowercase(), errs);
    }
    let pod = &spec["template"]["spec"];
    errs.extend(validate_pod_spec("spec.template.spec", pod));
    if let Some(p) = pod["restartPolicy"].as_str()
        && p != "Always"
    {
        errs.push(invalid(
            "spec.template.spec.restartPolicy",
            p,
            "Unsupported value: supported values: \"Always\"",
        ));
    }
    if !pod["activeDeadlineSeconds"].is_null() {
        errs.push(FieldError {
            field: "spec.template.spec.activeDeadlineSeconds".into(),
            value: String::new(),
            message: format!("Forbidden: activeDeadlineSeconds in {kind} is not Supported"),
        });
    }
}

/// The selector is immutable.
pub fn validate_update(new: &Value, old: &Value) -> Vec<FieldError> {
    if new["spec"]["selector"] != old["spec"]["selector"] {
        return vec![FieldError {
            field: "spec.selector".into(),
            value: String::new(),
            message: format!(
                "Invalid value: {}: field is immutable",
                new["spec"]["selector"]
            ),
        }];
    }
    Vec::new()
}

pub(crate) fn non_negative(spec: &Value, key: &str, errs: &mut Vec<FieldError>) {
    if let Some(n) = spec[key].as_i64()
        && n < 0
    {
        errs.push(invalid(
            &format!("spec.{key}"),
            &n.to_string(),
            "must be greater than or equal to 0",
        ));
    }
}

/// An int-or-percent that is not 0 (nor "0%"); unset counts as 0.
pub(crate) fn non_zero(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.as_i64() != Some(0),
        Value::String(s) => s.trim_end_matches('%').parse::<i64>() != Ok(0),
        _ => false,
    }
}

pub(crate) fn cell(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

/// `kubectl get ds`: NAME DESIRED CURRENT READY UP-TO-DATE AVAILABLE NODE SELECTOR AGE, and
/// CONTAINERS IMAGES SELECTOR with `-o wide`.
pub fn table() -> Table {
    table::table(
        &[
            ("Desired", "integer", 0),
            ("Current", "integer", 0),
            ("Ready", "integer", 0),
            ("Up-to-date", "integer", 0),
            ("Available", "integer", 0),
            ("Node Selector", "string", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        |o| {
            let st = &o["status"];
            let n = |k: &str| json!(st[k].as_i64().unwrap_or(0));
            let (names, images) = pod_template_cells(&o["spec"]["template"]);
            vec![
                n("desiredNumberScheduled"),
                n("currentNumberScheduled"),
                n("numberReady"),
                n("updatedNumberScheduled"),
                n("numberAvailable"),
                json!(node_selector(
                    &o["spec"]["template"]["spec"]["nodeSelector"]
                )),
                age(o),
                json!(names),
                json!(images),
                json!(label_selector(&o["spec"]["selector"])),
            ]
        },
    )
}

/// `labels.FormatLabels`: `k=v,...` sorted, `<none>` when empty.
fn node_selector(sel: &Value) -> String {
    let pairs: Vec<String> = sel
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    if pairs.is_empty() {
        "<none>".into()
    } else {
        pairs.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds(strategy: Value) -> Value {
        json!({"metadata": {"name": "agent"}, "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "updateStrategy": strategy,
            "template": {"metadata": {"labels": {"app": "agent"}},
                "spec": {"restartPolicy": "Always",
                    "containers": [{"name": "c", "image": "busybox"}]}}}})
    }

    fn fields(errs: &[FieldError]) -> Vec<String> {
        errs.iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect()
    }

    #[test]
    fn a_daemon_set_rolls_with_exactly_one_of_max_unavailable_and_max_surge() {
        let ok = |s: Value| assert!(validate(&ds(s.clone())).is_empty(), "{s}");
        ok(json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}));
        ok(
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "20%"}}),
        );
        ok(json!({"type": "OnDelete"}));
        let bad = |s: Value, want: &str| {
            let got = fields(&validate(&ds(s.clone())));
            assert!(got.iter().any(|g| g.contains(want)), "{s}: {got:?}");
        };
        bad(
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 1}}),
            "spec.updateStrategy.rollingUpdate.maxSurge: may not be set when maxUnavailable is non-zero",
        );
        bad(
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "0%", "maxSurge": 0}}),
            "maxUnavailable: Required value: cannot be 0 when maxSurge is 0",
        );
        bad(
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "120%", "maxSurge": 0}}),
            "must not be greater than 100%",
        );
        bad(
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": -1, "maxSurge": 0}}),
            "must be greater than or equal to 0",
        );
        bad(
            json!({"type": "Sometimes"}),
            "spec.updateStrategy.type: Unsupported value",
        );
    }

    #[test]
    fn daemon_pods_restart_always_and_have_no_deadline() {
        let mut d = ds(json!({"type": "OnDelete"}));
        d["spec"]["template"]["spec"]["restartPolicy"] = json!("Never");
        d["spec"]["template"]["spec"]["activeDeadlineSeconds"] = json!(5);
        let got = fields(&validate(&d));
        assert!(
            got.iter()
                .any(|g| g.starts_with("spec.template.spec.restartPolicy: Unsupported")),
            "{got:?}"
        );
        assert!(
            got.iter()
                .any(|g| g.starts_with("spec.template.spec.activeDeadlineSeconds: Forbidden")),
            "{got:?}"
        );
        let mut unmatched = ds(json!({"type": "OnDelete"}));
        unmatched["spec"]["selector"] = json!({"matchLabels": {"app": "other"}});
        assert!(!validate(&unmatched).is_empty());
        let mut none = ds(json!({"type": "OnDelete"}));
        none["spec"].as_object_mut().unwrap().remove("selector");
        assert_eq!(fields(&validate(&none)), ["spec.selector: Required value"]);
    }

    #[test]
    fn the_template_generation_moves_with_the_template_only() {
        let mut d = ds(json!({"type": "OnDelete"}));
        on_create(&mut d);
        assert_eq!(template_generation(&d), Some(1));
        let mut same = d.clone();
        same["spec"]["minReadySeconds"] = json!(5);
        same["metadata"]["annotations"][TEMPLATE_GENERATION] = json!("7");
        prepare_update(&mut same, &d);
        assert_eq!(
            template_generation(&same),
            Some(1),
            "a client cannot set it"
        );
        let mut changed = same.clone();
        changed["spec"]["template"]["spec"]["containers"][0]["image"] = json!("busybox:2");
        prepare_update(&mut changed, &same);
        assert_eq!(template_generation(&changed), Some(2));
        assert!(validate_update(&changed, &same).is_empty());
        let mut moved = changed.clone();
        moved["spec"]["selector"] = json!({"matchLabels": {"app": "agent", "x": "y"}});
        assert_eq!(
            fields(&validate_update(&moved, &changed))[0],
            "spec.selector: Invalid value: {\"matchLabels\":{\"app\":\"agent\",\"x\":\"y\"}}: field is immutable"
        );
    }

    #[test]
    fn the_node_selector_column_lists_pairs_or_none() {
        assert_eq!(node_selector(&json!(null)), "<none>");
        assert_eq!(
            node_selector(&json!({"kubernetes.io/os": "linux", "a": "b"})),
            "a=b,kubernetes.io/os=linux"
        );
    }
}
