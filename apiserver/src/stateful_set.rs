//! apps/v1 StatefulSet (kubernetes/pkg/registry/apps/statefulset and
//! pkg/apis/apps/validation): validation, the defaults, and the Table columns. Only
//! `replicas`, `ordinals`, `template`, `updateStrategy`, `persistentVolumeClaimRetentionPolicy`,
//! `minReadySeconds` and `revisionHistoryLimit` change after creation.

use capstan_api::validation::FieldError;
use serde_json::{Value, json};

use crate::daemon_set::{cell, non_negative, non_zero};
use crate::pod_disruption_budget::int_or_percent;
use crate::strategy::invalid;
use crate::table::{self, Table, age, pod_template_cells};

/// `ValidateStatefulSet`.
pub fn validate(obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let spec = &obj["spec"];
    match spec["podManagementPolicy"].as_str() {
        None | Some("OrderedReady" | "Parallel") => {}
        Some(p) => errs.push(invalid(
            "spec.podManagementPolicy",
            p,
            "Unsupported value: supported values: \"OrderedReady\", \"Parallel\"",
        )),
    }
    let strategy = &spec["updateStrategy"];
    let at = "spec.updateStrategy.rollingUpdate";
    match strategy["type"].as_str().unwrap_or("RollingUpdate") {
        "OnDelete" => {
            if !strategy["rollingUpdate"].is_null() {
                errs.push(FieldError {
                    field: at.into(),
                    value: String::new(),
                    message: "Forbidden: only allowed for updateStrategy 'RollingUpdate'".into(),
                });
            }
        }
        "RollingUpdate" => {
            let rolling = &strategy["rollingUpdate"];
            if let Some(p) = rolling["partition"].as_i64()
                && p < 0
            {
                errs.push(invalid(
                    &format!("{at}.partition"),
                    &p.to_string(),
                    "must be greater than or equal to 0",
                ));
            }
            let max = &rolling["maxUnavailable"];
            int_or_percent(&format!("{at}.maxUnavailable"), max, &mut errs);
            if !max.is_null() && !non_zero(max) {
                errs.push(invalid(
                    &format!("{at}.maxUnavailable"),
                    &cell(max),
                    "must not be 0",
                ));
            }
        }
        other => errs.push(invalid(
            "spec.updateStrategy.type",
            other,
            "Unsupported value: supported values: \"OnDelete\", \"RollingUpdate\"",
        )),
    }
    let retention = &spec["persistentVolumeClaimRetentionPolicy"];
    for key in ["whenDeleted", "whenScaled"] {
        if let Some(v) = retention[key].as_str()
            && !matches!(v, "Retain" | "Delete")
        {
            errs.push(invalid(
                &format!("spec.persistentVolumeClaimRetentionPolicy.{key}"),
                v,
                "Unsupported value: supported values: \"Retain\", \"Delete\"",
            ));
        }
    }
    non_negative(spec, "replicas", &mut errs);
    non_negative(spec, "minReadySeconds", &mut errs);
    non_negative(spec, "revisionHistoryLimit", &mut errs);
    if let Some(start) = spec["ordinals"]["start"].as_i64()
        && start < 0
    {
        errs.push(invalid(
            "spec.ordinals.start",
            &start.to_string(),
            "must be greater than or equal to 0",
        ));
    }
    crate::daemon_set::validate_long_running(obj, "StatefulSet", &mut errs);
    let mut names = std::collections::BTreeSet::new();
    for (i, t) in spec["volumeClaimTemplates"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let path = format!("spec.volumeClaimTemplates[{i}]");
        let name = t["metadata"]["name"].as_str().unwrap_or_default();
        if let Err(m) = capstan_api::validation::dns1123_subdomain(name) {
            errs.push(invalid(&format!("{path}.metadata.name"), name, m));
        } else if !names.insert(name.to_string()) {
            errs.push(invalid(
                &format!("{path}.metadata.name"),
                name,
                "Duplicate value",
            ));
        }
        errs.extend(crate::volumes::claim::validate_spec(
            &format!("{path}.spec"),
            &t["spec"],
        ));
    }
    errs
}

/// What may change after creation (`ValidateStatefulSetUpdate`).
pub fn validate_update(new: &Value, old: &Value) -> Vec<FieldError> {
    const MUTABLE: &[&str] = &[
        "replicas",
        "ordinals",
        "template",
        "updateStrategy",
        "persistentVolumeClaimRetentionPolicy",
        "minReadySeconds",
        "revisionHistoryLimit",
    ];
    let strip = |v: &Value| {
        let mut v = v["spec"].clone();
        if let Some(m) = v.as_object_mut() {
            for k in MUTABLE {
                m.remove(*k);
            }
        }
        v
    };
    if strip(new) != strip(old) {
        return vec![FieldError {
            field: "spec".into(),
            value: String::new(),
            message: "Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden".into(),
        }];
    }
    Vec::new()
}

/// `kubectl get sts`: NAME READY AGE, and CONTAINERS IMAGES with `-o wide`.
pub fn table() -> Table {
    table::table(
        &[
            ("Ready", "string", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
        ],
        |o| {
            let (names, images) = pod_template_cells(&o["spec"]["template"]);
            vec![
                json!(format!(
                    "{}/{}",
                    o["status"]["readyReplicas"].as_i64().unwrap_or(0),
                    o["spec"]["replicas"].as_i64().unwrap_or(0)
                )),
                age(o),
                json!(names),
                json!(images),
            ]
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sts() -> Value {
        let mut s = json!({"metadata": {"name": "web"}, "spec": {
            "serviceName": "web",
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}}}}]}});
        capstan_api::defaults::apps::stateful_set(&mut s);
        s
    }

    fn msgs(errs: &[FieldError]) -> Vec<String> {
        errs.iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect()
    }

    #[test]
    fn defaults_are_kubernetes_defaults() {
        let s = sts();
        let spec = &s["spec"];
        assert_eq!(spec["podManagementPolicy"], "OrderedReady");
        assert_eq!(
            spec["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}})
        );
        assert_eq!(
            spec["persistentVolumeClaimRetentionPolicy"],
            json!({"whenDeleted": "Retain", "whenScaled": "Retain"})
        );
        assert_eq!(spec["replicas"], 1);
        assert_eq!(spec["revisionHistoryLimit"], 10);
        assert_eq!(
            spec["volumeClaimTemplates"][0]["status"]["phase"],
            "Pending"
        );
        assert_eq!(spec["template"]["spec"]["restartPolicy"], "Always");
        assert!(validate(&s).is_empty(), "{:?}", msgs(&validate(&s)));
    }

    #[test]
    fn bad_specs_are_refused_with_kubernetes_messages() {
        let mut s = sts();
        s["spec"]["podManagementPolicy"] = json!("Random");
        s["spec"]["updateStrategy"]["rollingUpdate"]["partition"] = json!(-1);
        s["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] = json!(0);
        s["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"] = json!("Keep");
        s["spec"]["volumeClaimTemplates"][0]["spec"]["accessModes"] = json!([]);
        let got = msgs(&validate(&s));
        for want in [
            "spec.podManagementPolicy: Unsupported value",
            "spec.updateStrategy.rollingUpdate.partition: must be greater than or equal to 0",
            "spec.updateStrategy.rollingUpdate.maxUnavailable: must not be 0",
            "spec.persistentVolumeClaimRetentionPolicy.whenScaled: Unsupported value",
            "spec.volumeClaimTemplates[0].spec.accessModes: Required value",
        ] {
            assert!(got.iter().any(|g| g.starts_with(want)), "{want}: {got:?}");
        }
        let mut on_delete = sts();
        on_delete["spec"]["updateStrategy"]["type"] = json!("OnDelete");
        assert_eq!(
            msgs(&validate(&on_delete)),
            [
                "spec.updateStrategy.rollingUpdate: Forbidden: only allowed for updateStrategy 'RollingUpdate'"
            ]
        );
    }

    #[test]
    fn only_the_listed_fields_change_after_creation() {
        let old = sts();
        let mut new = old.clone();
        new["spec"]["replicas"] = json!(5);
        new["spec"]["template"]["spec"]["containers"][0]["image"] = json!("busybox:2");
        new["spec"]["updateStrategy"] = json!({"type": "OnDelete"});
        assert!(validate_update(&new, &old).is_empty());
        new["spec"]["serviceName"] = json!("other");
        assert!(
            msgs(&validate_update(&new, &old))[0]
                .starts_with("spec: Forbidden: updates to statefulset spec")
        );
    }
}
