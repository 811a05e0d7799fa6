//! core/v1 LimitRange and the LimitRanger admission plugin (plugin/pkg/admission/limitranger):
//! defaults for containers that state no requests or limits, and bounds (min, max,
//! maxLimitRequestRatio) per container and per pod. A pod is defaulted when created (the
//! `kubernetes.io/limit-ranger` annotation says what was set), then refused with a 403 when it
//! breaks a bound, with Kubernetes' words.

use std::sync::{OnceLock, Weak};

use capstan_api::quota::{Usage, format, parse_list};
use capstan_api::validation::FieldError;
use serde_json::{Map, Value, json};

use crate::ApiServer;
use crate::errors::{ApiError, ApiResult};
use crate::object::ObjectExt;
use crate::strategy::{StorageHooks, invalid};
use crate::table::{self, Table};

/// The annotation naming what the plugin set.
pub const ANNOTATION: &str = "kubernetes.io/limit-ranger";

/// `SetDefaults_LimitRangeItem`: for containers, a default limit from max, a default request
/// from the default limit, else from min.
pub fn defaults(obj: &mut Value) {
    let Some(items) = obj
        .pointer_mut("/spec/limits")
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    for item in items.iter_mut().filter(|i| i["type"] == "Container") {
        let Some(m) = item.as_object_mut() else {
            continue;
        };
        let copy = |m: &mut Map<String, Value>, from: &str, to: &str| {
            let source = m
                .get(from)
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            let target = m.entry(to).or_insert_with(|| json!({}));
            if !target.is_object() {
                *target = json!({});
            }
            for (k, v) in source {
                if target.get(&k).is_none() {
                    target[&k] = v;
                }
            }
        };
        copy(m, "max", "default");
        copy(m, "default", "defaultRequest");
        copy(m, "min", "defaultRequest");
    }
}

pub fn validate(obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (i, item) in obj["spec"]["limits"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let at = format!("spec.limits[{i}]");
        let ty = item["type"].as_str().unwrap_or("");
        if !matches!(ty, "Pod" | "Container" | "PersistentVolumeClaim") {
            errs.push(invalid(
                &format!("{at}.type"),
                ty,
                "Unsupported value: supported values: \"Container\", \"PersistentVolumeClaim\", \"Pod\"",
            ));
        }
        let list = |k: &str| parse_list(&item[k]);
        let (min, max, default, request) = (
            list("min"),
            list("max"),
            list("default"),
            list("defaultRequest"),
        );
        if ty == "Pod" {
            for k in ["default", "defaultRequest"] {
                if item[k].as_object().is_some_and(|m| !m.is_empty()) {
                    errs.push(invalid(
                        &format!("{at}.{k}"),
                        "",
                        "Forbidden: may not be specified when `type` is 'Pod'",
                    ));
                }
            }
        }
        for k in [
            "min",
            "max",
            "default",
            "defaultRequest",
            "maxLimitRequestRatio",
        ] {
            for (r, v) in item[k].as_object().into_iter().flatten() {
                match parse_list(&json!({r.clone(): v})).get(r) {
                    None => errs.push(invalid(
                        &format!("{at}.{k}[{r}]"),
                        &v.to_string(),
                        "must be a quantity",
                    )),
                    Some(n) if *n < 0 => errs.push(invalid(
                        &format!("{at}.{k}[{r}]"),
                        v.as_str().unwrap_or_default(),
                        "must be greater than or equal to 0",
                    )),
                    Some(_) => {}
                }
            }
        }
        let show = |r: &str, v: i64| format(r, v);
        let mut pair = |field: &str, r: &str, lo: i64, hi: i64, words: &str| {
            if lo > hi {
                let value = if field.ends_with("min") { lo } else { hi };
                errs.push(invalid(
                    &format!("{at}.{field}[{r}]"),
                    &show(r, value),
                    words
                        .replace("{lo}", &show(r, lo))
                        .replace("{hi}", &show(r, hi)),
                ));
            }
        };
        for (r, lo) in &min {
            if let Some(hi) = max.get(r) {
                pair(
                    "min",
                    r,
                    *lo,
                    *hi,
                    "min value {lo} is greater than max value {hi}",
                );
            }
            if let Some(hi) = request.get(r) {
                pair(
                    "defaultRequest",
                    r,
                    *lo,
                    *hi,
                    "min value {lo} is greater than default request value {hi}",
                );
            }
        }
        for (r, lo) in &request {
            if let Some(hi) = default.get(r) {
                pair(
                    "defaultRequest",
                    r,
                    *lo,
                    *hi,
                    "default request value {lo} is greater than default limit value {hi}",
                );
            }
            if let Some(hi) = max.get(r) {
                pair(
                    "defaultRequest",
                    r,
                    *lo,
                    *hi,
                    "default request value {lo} is greater than max value {hi}",
                );
            }
        }
        for (r, lo) in &default {
            if let Some(hi) = max.get(r) {
                pair(
                    "default",
                    r,
                    *lo,
                    *hi,
                    "default value {lo} is greater than max value {hi}",
                );
            }
        }
        for (r, ratio) in list("maxLimitRequestRatio") {
            if ratio < 1000 {
                errs.push(invalid(
                    &format!("{at}.maxLimitRequestRatio[{r}]"),
                    &show(&r, ratio),
                    format!("ratio {} is less than 1", show(&r, ratio)),
                ));
            }
        }
    }
    errs
}

/// `kubectl get limits`: NAME CREATED AT.
pub fn table() -> Table {
    table::table(&[("Created At", "date", 0)], |o| {
        vec![o["metadata"]["creationTimestamp"].clone()]
    })
}

/// Sets a container's unstated requests and limits from the defaults; what was set, for the
/// annotation.
fn default_container(c: &mut Value, request: &Value, limit: &Value, what: &str) -> Vec<String> {
    let name = c["name"].as_str().unwrap_or("").to_string();
    let mut notes = Vec::new();
    for (kind, defaults, word) in [("requests", request, "request"), ("limits", limit, "limit")] {
        let mut set: Vec<String> = Vec::new();
        for (r, v) in defaults.as_object().into_iter().flatten() {
            if c["resources"][kind][r].is_null() {
                if !c["resources"].is_object() {
                    c["resources"] = json!({});
                }
                if !c["resources"][kind].is_object() {
                    c["resources"][kind] = json!({});
                }
                c["resources"][kind][r] = v.clone();
                set.push(r.clone());
            }
        }
        if !set.is_empty() {
            set.sort();
            notes.push(format!("{} {word} for {what} {name}", set.join(", ")));
        }
    }
    notes
}

/// `minConstraint` / `maxConstraint` / `limitRequestRatioConstraint` for one resource.
fn check(scope: &str, item: &Value, requests: &Usage, limits: &Usage, errors: &mut Vec<String>) {
    let req = |r: &str| requests.get(r).copied();
    let lim = |r: &str| limits.get(r).copied();
    for (r, enforced) in parse_list(&item["min"]) {
        let e = format(&r, enforced);
        match req(&r) {
            None => errors.push(format!(
                "minimum {r} usage per {scope} is {e}.  No request is specified"
            )),
            Some(v) if v < enforced => errors.push(format!(
                "minimum {r} usage per {scope} is {e}, but request is {}",
                format(&r, v)
            )),
            _ => {
                if let Some(l) = lim(&r).filter(|l| *l < enforced) {
                    errors.push(format!(
                        "minimum {r} usage per {scope} is {e}, but limit is {}",
                        format(&r, l)
                    ));
                }
            }
        }
    }
    for (r, enforced) in parse_list(&item["max"]) {
        let e = format(&r, enforced);
        match lim(&r) {
            None => errors.push(format!(
                "maximum {r} usage per {scope} is {e}.  No limit is specified"
            )),
            Some(v) if v > enforced => errors.push(format!(
                "maximum {r} usage per {scope} is {e}, but limit is {}",
                format(&r, v)
            )),
            _ => {
                if let Some(q) = req(&r).filter(|q| *q > enforced) {
                    errors.push(format!(
                        "maximum {r} usage per {scope} is {e}, but request is {}",
                        format(&r, q)
                    ));
                }
            }
        }
    }
    for (r, ratio) in parse_list(&item["maxLimitRequestRatio"]) {
        let e = format(&r, ratio);
        let (q, l) = (req(&r).unwrap_or(0), lim(&r).unwrap_or(0));
        if q == 0 {
            errors.push(format!(
                "{r} max limit to request ratio per {scope} is {e}, but no request is specified or request is 0"
            ));
        } else if l as f64 / q as f64 > ratio as f64 / 1000.0 {
            errors.push(format!(
                "{r} max limit to request ratio per {scope} is {e}, but provided ratio is {:.6}",
                l as f64 / q as f64
            ));
        }
    }
}

/// LimitRanger on a new pod, given the namespace's LimitRanges: defaults set (and the
/// annotation), then every bound checked; the violations, if any.
pub fn admit_pod(pod: &mut Value, ranges: &[&Value]) -> Result<(), Vec<String>> {
    let items: Vec<&Value> = ranges
        .iter()
        .flat_map(|r| r["spec"]["limits"].as_array().into_iter().flatten())
        .collect();
    if items.is_empty() {
        return Ok(());
    }
    let mut notes = Vec::new();
    for item in items.iter().filter(|i| i["type"] == "Container") {
        for (list, what) in [
            ("containers", "container"),
            ("initContainers", "init container"),
        ] {
            if let Some(cs) = pod["spec"][list].as_array_mut() {
                for c in cs {
                    notes.extend(default_container(
                        c,
                        &item["defaultRequest"],
                        &item["default"],
                        what,
                    ));
                }
            }
        }
    }
    if !notes.is_empty() {
        let annotations = pod
            .meta_mut()
            .entry("annotations")
            .or_insert_with(|| json!({}));
        if !annotations.is_object() {
            *annotations = json!({});
        }
        annotations[ANNOTATION] = json!(format!("LimitRanger plugin set: {}", notes.join("; ")));
    }
    let mut errors = Vec::new();
    for item in &items {
        match item["type"].as_str() {
            Some("Container") => {
                for list in ["containers", "initContainers"] {
                    for c in pod["spec"][list].as_array().into_iter().flatten() {
                        let requests = parse_list(&c["resources"]["requests"]);
                        let limits = parse_list(&c["resources"]["limits"]);
                        check("Container", item, &requests, &limits, &mut errors);
                    }
                }
            }
            Some("Pod") => {
                let u = capstan_api::quota::pod_usage(pod);
                let strip = |prefix: &str| -> Usage {
                    u.iter()
                        .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.to_string(), *v)))
                        .collect()
                };
                check(
                    "Pod",
                    item,
                    &strip("requests."),
                    &strip("limits."),
                    &mut errors,
                );
            }
            _ => {}
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// LimitRanger on a new claim (`PersistentVolumeClaimValidateLimitFunc`): `min` and `max`
/// of `storage` against its request; the violations, if any.
pub fn admit_claim(claim: &Value, ranges: &[&Value]) -> Result<(), Vec<String>> {
    let mut errors = Vec::new();
    let requests = parse_list(&claim["spec"]["resources"]["requests"]);
    for item in ranges
        .iter()
        .flat_map(|r| r["spec"]["limits"].as_array().into_iter().flatten())
        .filter(|i| i["type"] == "PersistentVolumeClaim")
    {
        // `minConstraint` with no limits, `maxRequestConstraint`: both against the request.
        let min = json!({"min": item["min"]});
        check(
            "PersistentVolumeClaim",
            &min,
            &requests,
            &Usage::new(),
            &mut errors,
        );
        for (r, enforced) in parse_list(&item["max"]) {
            let e = format(&r, enforced);
            match requests.get(&r) {
                None => errors.push(format!(
                    "maximum {r} usage per PersistentVolumeClaim is {e}.  No request is specified"
                )),
                Some(v) if *v > enforced => errors.push(format!(
                    "maximum {r} usage per PersistentVolumeClaim is {e}, but request is {}",
                    format(&r, *v)
                )),
                _ => {}
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// The pods' LimitRanger hook; [`LimitRanger::attach`] gives it the server whose LimitRanges
/// it reads.
#[derive(Debug, Default)]
pub struct LimitRanger {
    api: OnceLock<Weak<ApiServer>>,
}

impl LimitRanger {
    pub fn attach(&self, api: Weak<ApiServer>) {
        let _ = self.api.set(api);
    }
}

impl LimitRanger {
    /// The LimitRanges of `ns`.
    fn ranges(&self, ns: &str) -> ApiResult<Vec<std::sync::Arc<Value>>> {
        let api = self
            .api
            .get()
            .and_then(Weak::upgrade)
            .ok_or_else(|| ApiError::internal("the LimitRanger has no server"))?;
        let info = api
            .registry
            .get("", "v1", "limitranges")
            .ok_or_else(|| ApiError::internal("LimitRanges are not registered"))?;
        Ok(api.cacher(&info)?.values(&info.list_prefix(Some(ns))).0)
    }
}

/// Kubernetes' 403 for LimitRanger's violations.
fn refused(plural: &str, obj: &Value, errors: Vec<String>) -> ApiError {
    let message = if errors.len() == 1 {
        errors[0].clone()
    } else {
        format!("[{}]", errors.join(", "))
    };
    ApiError::forbidden("", plural, obj.name().unwrap_or_default(), &message)
}

#[async_trait::async_trait]
impl StorageHooks for LimitRanger {
    async fn begin_create(&self, pod: &mut Value, _dry_run: bool) -> ApiResult<()> {
        let ranges = self.ranges(pod.namespace().unwrap_or_default())?;
        let refs: Vec<&Value> = ranges.iter().map(|r| &**r).collect();
        admit_pod(pod, &refs).map_err(|errors| refused("pods", pod, errors))
    }
}

/// The claims' LimitRanger hook.
#[derive(Debug)]
pub struct ClaimLimits(pub std::sync::Arc<LimitRanger>);

#[async_trait::async_trait]
impl StorageHooks for ClaimLimits {
    async fn begin_create(&self, claim: &mut Value, _dry_run: bool) -> ApiResult<()> {
        let ranges = self.0.ranges(claim.namespace().unwrap_or_default())?;
        let refs: Vec<&Value> = ranges.iter().map(|r| &**r).collect();
        admit_claim(claim, &refs).map_err(|errors| refused("persistentvolumeclaims", claim, errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(items: Value) -> Value {
        let mut r = json!({"spec": {"limits": items}});
        defaults(&mut r);
        r
    }

    #[test]
    fn container_defaults_follow_max_then_default_then_min() {
        let r =
            range(json!([{"type": "Container", "max": {"cpu": "1"}, "min": {"memory": "64Mi"}}]));
        let item = &r["spec"]["limits"][0];
        assert_eq!(item["default"], json!({"cpu": "1"}));
        assert_eq!(
            item["defaultRequest"],
            json!({"cpu": "1", "memory": "64Mi"})
        );
        assert!(validate(&r).is_empty());
        let bad = range(
            json!([{"type": "Container", "min": {"cpu": "2"}, "max": {"cpu": "1"},
            "maxLimitRequestRatio": {"cpu": "500m"}},
            {"type": "Pod", "default": {"cpu": "1"}}]),
        );
        let msgs: Vec<String> = validate(&bad)
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect();
        assert!(
            msgs.contains(
                &"spec.limits[0].min[cpu]: min value 2 is greater than max value 1".into()
            ),
            "{msgs:?}"
        );
        assert!(
            msgs.contains(
                &"spec.limits[0].maxLimitRequestRatio[cpu]: ratio 500m is less than 1".into()
            ),
            "{msgs:?}"
        );
        assert!(
            msgs.contains(
                &"spec.limits[1].default: Forbidden: may not be specified when `type` is 'Pod'"
                    .into()
            ),
            "{msgs:?}"
        );
    }

    #[test]
    fn a_pod_gets_the_defaults_and_the_annotation_saying_so() {
        let r = range(
            json!([{"type": "Container", "default": {"cpu": "500m", "memory": "128Mi"},
            "defaultRequest": {"cpu": "100m"}}]),
        );
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "a"},
            {"name": "b", "resources": {"limits": {"cpu": "200m"}}}]}});
        admit_pod(&mut pod, &[&r]).unwrap();
        assert_eq!(
            pod["spec"]["containers"][0]["resources"],
            json!({"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "500m", "memory": "128Mi"}})
        );
        assert_eq!(
            pod["spec"]["containers"][1]["resources"]["limits"],
            json!({"cpu": "200m", "memory": "128Mi"})
        );
        assert_eq!(
            pod["metadata"]["annotations"][ANNOTATION],
            "LimitRanger plugin set: cpu, memory request for container a; cpu, memory limit for container a; cpu, memory request for container b; memory limit for container b"
        );
    }

    #[test]
    fn claims_are_bounded_by_their_storage_request() {
        let r = range(json!([{"type": "PersistentVolumeClaim",
            "min": {"storage": "1Gi"}, "max": {"storage": "10Gi"}}]));
        let claim = |size: &str| json!({"metadata": {"name": "c"}, "spec": {"resources": {"requests": {"storage": size}}}});
        assert!(admit_claim(&claim("5Gi"), &[&r]).is_ok());
        assert_eq!(
            admit_claim(&claim("500Mi"), &[&r]).unwrap_err(),
            ["minimum storage usage per PersistentVolumeClaim is 1Gi, but request is 500Mi"]
        );
        assert_eq!(
            admit_claim(&claim("20Gi"), &[&r]).unwrap_err(),
            ["maximum storage usage per PersistentVolumeClaim is 10Gi, but request is 20Gi"]
        );
    }

    #[test]
    fn bounds_refuse_pods_in_kubernetes_words() {
        let r = range(json!([
            {"type": "Container", "min": {"cpu": "100m"}, "max": {"cpu": "1"}, "default": {"cpu": "500m"},
                "maxLimitRequestRatio": {"cpu": "4"}},
            {"type": "Pod", "max": {"memory": "1Gi"}}]));
        let mut greedy = json!({"spec": {"containers": [
            {"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "2Gi"}}}]}});
        let errs = admit_pod(&mut greedy, &[&r]).unwrap_err();
        assert_eq!(
            errs,
            [
                "maximum cpu usage per Container is 1, but limit is 2",
                "cpu max limit to request ratio per Container is 4, but provided ratio is 20.000000",
                "maximum memory usage per Pod is 1Gi, but limit is 2Gi"
            ]
        );
        let mut small = json!({"spec": {"containers": [{"name": "a", "resources": {"requests": {"cpu": "50m"}}}]}});
        let errs = admit_pod(&mut small, &[&r]).unwrap_err();
        assert!(
            errs.contains(
                &"minimum cpu usage per Container is 100m, but request is 50m".to_string()
            ),
            "{errs:?}"
        );
        assert!(
            errs.contains(
                &"maximum memory usage per Pod is 1Gi.  No limit is specified".to_string()
            ),
            "{errs:?}"
        );
    }
}
