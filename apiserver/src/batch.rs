//! batch/v1 Jobs and CronJobs as kube-apiserver serves them (pkg/registry/batch and
//! pkg/apis/batch/validation): the Job's generated selector, validation of both kinds, the
//! fields an update may not change, and their Table columns.

use capstan_api::cron::Schedule;
use capstan_api::validation::FieldError;
use serde_json::{Value, json};

use crate::object::ObjectExt;
use crate::strategy::{invalid, required, validate_pod_spec, validate_selector};
use crate::table::{self, Table};

/// The label a Job's generated selector uses (its uid), and its legacy twin.
pub const CONTROLLER_UID: &str = "batch.kubernetes.io/controller-uid";
pub const JOB_NAME: &str = "batch.kubernetes.io/job-name";
/// Indexed Jobs: at most this many completions and this much parallelism.
const MAX_INDEXED: i64 = 100_000;

/// A new Job without `manualSelector: true` gets the selector kube-apiserver generates: its
/// uid, which the template's labels carry too (with the Job's name).
pub fn job_on_create(obj: &mut Value) {
    if obj["spec"]["manualSelector"] == true {
        return;
    }
    let uid = obj.meta_str("uid").unwrap_or_default().to_string();
    let name = obj.name().unwrap_or_default().to_string();
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    spec.insert(
        "selector".into(),
        json!({"matchLabels": {CONTROLLER_UID: uid}}),
    );
    let template = spec.entry("template").or_insert_with(|| json!({}));
    if !template["metadata"].is_object() {
        template["metadata"] = json!({});
    }
    if !template["metadata"]["labels"].is_object() {
        template["metadata"]["labels"] = json!({});
    }
    let labels = &mut template["metadata"]["labels"];
    labels[CONTROLLER_UID] = json!(uid);
    labels["controller-uid"] = json!(uid);
    labels[JOB_NAME] = json!(name);
    labels["job-name"] = json!(name);
}

fn non_negative(spec: &Value, key: &str, errs: &mut Vec<FieldError>) {
    if let Some(v) = spec[key].as_i64()
        && v < 0
    {
        errs.push(invalid(
            &format!("spec.{key}"),
            &v.to_string(),
            "must be greater than or equal to 0",
        ));
    }
}

/// `ValidateJobSpec` on a Job's (or a CronJob's template's) spec under `path`.
fn validate_job_spec(path: &str, spec: &Value, errs: &mut Vec<FieldError>) {
    let at = |k: &str| format!("{path}.{k}");
    for key in [
        "parallelism",
        "completions",
        "activeDeadlineSeconds",
        "backoffLimit",
        "ttlSecondsAfterFinished",
        "backoffLimitPerIndex",
        "maxFailedIndexes",
    ] {
        let mut local = Vec::new();
        non_negative(spec, key, &mut local);
        for mut e in local {
            e.field = at(key);
            errs.push(e);
        }
    }
    let restart = spec["template"]["spec"]["restartPolicy"]
        .as_str()
        .unwrap_or_default();
    match restart {
        "OnFailure" | "Never" => {}
        "" => errs.push(FieldError {
            field: at("template.spec.restartPolicy"),
            value: String::new(),
            message: "Required value: valid values: \"OnFailure\", \"Never\"".into(),
        }),
        other => errs.push(FieldError {
            field: at("template.spec.restartPolicy"),
            value: String::new(),
            message: format!(
                "Unsupported value: \"{other}\": supported values: \"OnFailure\", \"Never\""
            ),
        }),
    }
    let mode = spec["completionMode"].as_str().unwrap_or("NonIndexed");
    let indexed = mode == "Indexed";
    if !matches!(mode, "NonIndexed" | "Indexed") {
        errs.push(FieldError {
            field: at("completionMode"),
            value: String::new(),
            message: format!(
                "Unsupported value: \"{mode}\": supported values: \"NonIndexed\", \"Indexed\""
            ),
        });
    }
    if indexed {
        match spec["completions"].as_i64() {
            None => errs.push(FieldError {
                field: at("completions"),
                value: String::new(),
                message: "Required value: when completion mode is Indexed".into(),
            }),
            Some(c) if c > MAX_INDEXED => errs.push(invalid(
                &at("completions"),
                &c.to_string(),
                format!(
                    "must be less than or equal to {MAX_INDEXED} when completion mode is Indexed"
                ),
            )),
            _ => {}
        }
        if let Some(p) = spec["parallelism"].as_i64()
            && p > MAX_INDEXED
        {
            errs.push(invalid(
                &at("parallelism"),
                &p.to_string(),
                format!(
                    "must be less than or equal to {MAX_INDEXED} when completion mode is Indexed"
                ),
            ));
        }
    }
    if !spec["backoffLimitPerIndex"].is_null() && !indexed {
        errs.push(FieldError {
            field: at("backoffLimitPerIndex"),
            value: String::new(),
            message: "Forbidden: requires indexed completion mode".into(),
        });
    }
    if !spec["maxFailedIndexes"].is_null() {
        if spec["backoffLimitPerIndex"].is_null() {
            errs.push(FieldError {
                field: at("backoffLimitPerIndex"),
                value: String::new(),
                message: "Required value: when maxFailedIndexes is specified".into(),
            });
        } else if let (Some(m), Some(c)) = (
            spec["maxFailedIndexes"].as_i64(),
            spec["completions"].as_i64(),
        ) && m > c
        {
            errs.push(invalid(
                &at("maxFailedIndexes"),
                &m.to_string(),
                "must be less than or equal to completions",
            ));
        }
    }
    let policy = &spec["podFailurePolicy"];
    if !policy.is_null() {
        if restart != "Never" && !restart.is_empty() {
            errs.push(FieldError {
                field: at("template.spec.restartPolicy"),
                value: String::new(),
                message: format!(
                    "Invalid value: \"{restart}\": only \"Never\" is supported when podFailurePolicy is specified"
                ),
            });
        }
        validate_failure_policy(&at("podFailurePolicy"), spec, indexed, errs);
    }
    let policy = spec["podReplacementPolicy"].as_str().unwrap_or_default();
    if !spec["podFailurePolicy"].is_null() && policy == "TerminatingOrFailed" {
        errs.push(FieldError {
            field: at("podReplacementPolicy"),
            value: String::new(),
            message: "Unsupported value: \"TerminatingOrFailed\": supported values: \"Failed\""
                .into(),
        });
    } else if !matches!(policy, "" | "Failed" | "TerminatingOrFailed") {
        errs.push(FieldError {
            field: at("podReplacementPolicy"),
            value: String::new(),
            message: format!(
                "Unsupported value: \"{policy}\": supported values: \"Failed\", \"TerminatingOrFailed\""
            ),
        });
    }
    validate_success_policy(&at("successPolicy"), spec, indexed, errs);
    if let Some(m) = spec["managedBy"].as_str() {
        let (domain, path) = m.split_once('/').unwrap_or(("", ""));
        if m.len() > 63 {
            errs.push(FieldError {
                field: at("managedBy"),
                value: String::new(),
                message: "Too long: may not be more than 63 bytes".into(),
            });
        } else if domain.is_empty()
            || path.is_empty()
            || capstan_api::validation::dns1123_subdomain(domain).is_err()
        {
            errs.push(invalid(
                &at("managedBy"),
                m,
                "must be a domain-prefixed path (such as \"acme.io/foo\")",
            ));
        }
    }
    errs.extend(validate_pod_spec(
        &at("template.spec"),
        &spec["template"]["spec"],
    ));
}

/// `successPolicy` (Indexed Jobs only): 1 to 20 rules, each with succeededIndexes (an
/// ordered, non-overlapping interval list within completions) and/or a succeededCount no
/// larger than completions nor than the indexes it names.
fn validate_success_policy(path: &str, spec: &Value, indexed: bool, errs: &mut Vec<FieldError>) {
    let policy = &spec["successPolicy"];
    if policy.is_null() {
        return;
    }
    if !indexed {
        errs.push(FieldError {
            field: path.into(),
            value: String::new(),
            message: "Invalid value: requires indexed completion mode".into(),
        });
        return;
    }
    let rules = policy["rules"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if rules.is_empty() {
        errs.push(required(&format!("{path}.rules")));
    } else if rules.len() > 20 {
        errs.push(FieldError {
            field: format!("{path}.rules"),
            value: String::new(),
            message: format!("Too many: {}: must have at most 20 items", rules.len()),
        });
    }
    let completions = spec["completions"].as_i64().unwrap_or(0);
    for (i, rule) in rules.iter().enumerate() {
        let at = format!("{path}.rules[{i}]");
        let (indexes, count) = (&rule["succeededIndexes"], &rule["succeededCount"]);
        if indexes.is_null() && count.is_null() {
            errs.push(FieldError {
                field: at.clone(),
                value: String::new(),
                message: "Required value: at least one of succeededCount or succeededIndexes must be specified".into(),
            });
            continue;
        }
        let mut named: Option<i64> = None;
        if let Some(text) = indexes.as_str() {
            match interval_count(text, completions) {
                Ok(n) => named = Some(n),
                Err(m) => errs.push(invalid(
                    &format!("{at}.succeededIndexes"),
                    text,
                    format!("error parsing succeededIndexes: {m}"),
                )),
            }
        }
        if let Some(n) = count.as_i64() {
            let f = format!("{at}.succeededCount");
            if n < 0 {
                errs.push(invalid(
                    &f,
                    &n.to_string(),
                    "must be greater than or equal to 0",
                ));
            } else if n > completions {
                errs.push(invalid(
                    &f,
                    &n.to_string(),
                    format!("must be less than or equal to {completions} (the number of specified completions)"),
                ));
            } else if let Some(k) = named.filter(|k| n > *k) {
                errs.push(invalid(
                    &f,
                    &n.to_string(),
                    format!("must be less than or equal to {k} (the number of indexes in the specified succeededIndexes field)"),
                ));
            }
        }
    }
}

/// How many indexes an interval list (`1,3-5`) names, each below `completions`, in order and
/// without overlaps (`parseIndexesFromString`'s rules).
fn interval_count(text: &str, completions: i64) -> Result<i64, String> {
    let mut total = 0;
    let mut last = -1i64;
    for part in text.split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let num = |s: &str| {
            s.parse::<i64>()
                .map_err(|_| format!("cannot convert string to integer for index: {s:?}"))
        };
        let (a, b) = (num(a)?, num(b)?);
        if a > b {
            return Err(format!("non-increasing order, previous: {a}, current: {b}"));
        }
        if a <= last {
            return Err(format!(
                "overlapping intervals or non-increasing order: {part}"
            ));
        }
        if b >= completions {
            return Err(format!("too large index: {b}"));
        }
        total += b - a + 1;
        last = b;
    }
    Ok(total)
}

fn validate_failure_policy(path: &str, spec: &Value, indexed: bool, errs: &mut Vec<FieldError>) {
    let containers: Vec<&str> = ["containers", "initContainers"]
        .iter()
        .flat_map(|k| {
            spec["template"]["spec"][k]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["name"].as_str())
        })
        .collect();
    let rules = spec["podFailurePolicy"]["rules"].as_array();
    for (i, rule) in rules.into_iter().flatten().enumerate() {
        let at = format!("{path}.rules[{i}]");
        let action = rule["action"].as_str().unwrap_or_default();
        let mut allowed = vec!["Count", "FailJob", "Ignore"];
        if indexed && !spec["backoffLimitPerIndex"].is_null() {
            allowed.push("FailIndex");
        }
        if !allowed.contains(&action) {
            let list: Vec<String> = allowed.iter().map(|a| format!("\"{a}\"")).collect();
            errs.push(FieldError {
                field: format!("{at}.action"),
                value: String::new(),
                message: format!(
                    "Unsupported value: \"{action}\": supported values: {}",
                    list.join(", ")
                ),
            });
        }
        let codes = &rule["onExitCodes"];
        let conditions = &rule["onPodConditions"];
        match (codes.is_null(), conditions.is_null()) {
            (false, false) => errs.push(FieldError {
                field: at.clone(),
                value: String::new(),
                message: "Invalid value: specifying both OnExitCodes and OnPodConditions is not supported"
                    .into(),
            }),
            (true, true) => errs.push(FieldError {
                field: at.clone(),
                value: String::new(),
                message: "Invalid value: specifying one of OnExitCodes and OnPodConditions is required"
                    .into(),
            }),
            _ => {}
        }
        if !codes.is_null() {
            let op = codes["operator"].as_str().unwrap_or_default();
            if !matches!(op, "In" | "NotIn") {
                errs.push(FieldError {
                    field: format!("{at}.onExitCodes.operator"),
                    value: String::new(),
                    message: format!(
                        "Unsupported value: \"{op}\": supported values: \"In\", \"NotIn\""
                    ),
                });
            }
            if let Some(name) = codes["containerName"].as_str()
                && !containers.contains(&name)
            {
                errs.push(invalid(
                    &format!("{at}.onExitCodes.containerName"),
                    name,
                    "must be one of the container or initContainer names in the pod template",
                ));
            }
            let values: Vec<i64> = codes["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_i64)
                .collect();
            if values.is_empty() {
                errs.push(FieldError {
                    field: format!("{at}.onExitCodes.values"),
                    value: String::new(),
                    message: "Invalid value: at least one value is required".into(),
                });
            }
            for (j, v) in values.iter().enumerate() {
                if values[..j].contains(v) {
                    errs.push(FieldError {
                        field: format!("{at}.onExitCodes.values[{j}]"),
                        value: String::new(),
                        message: format!("Duplicate value: {v}"),
                    });
                }
                if op == "In" && *v == 0 {
                    errs.push(invalid(
                        &format!("{at}.onExitCodes.values[{j}]"),
                        "0",
                        "must not be 0 for the In operator",
                    ));
                }
            }
        }
        for (j, c) in conditions.as_array().into_iter().flatten().enumerate() {
            if c["type"].as_str().is_none_or(str::is_empty) {
                errs.push(required(&format!("{at}.onPodConditions[{j}].type")));
            }
            let status = c["status"].as_str().unwrap_or("True");
            if !matches!(status, "True" | "False" | "Unknown") {
                errs.push(FieldError {
                    field: format!("{at}.onPodConditions[{j}].status"),
                    value: String::new(),
                    message: format!(
                        "Unsupported value: \"{status}\": supported values: \"True\", \"False\", \"Unknown\""
                    ),
                });
            }
        }
    }
}

/// A Job on create and update.
pub fn validate_job(obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if obj["spec"]["selector"].is_null() {
        errs.push(required("spec.selector"));
    } else {
        validate_selector(obj, "job", &mut errs);
    }
    validate_job_spec("spec", &obj["spec"], &mut errs);
    errs
}

/// What an update may not change (`ValidateJobSpecUpdate`): the selector, the template
/// (unless the Job is suspended and has never started), the completion mode, the failure and
/// success policies, per-index limits and `managedBy`; completions only for an Indexed Job scaled with its
/// parallelism (elastic Indexed Jobs).
pub fn validate_job_update(new: &Value, old: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let (n, o) = (&new["spec"], &old["spec"]);
    let immutable = |errs: &mut Vec<FieldError>, key: &str| {
        if n[key] != o[key] {
            errs.push(FieldError {
                field: format!("spec.{key}"),
                value: String::new(),
                message: format!("Invalid value: {}: field is immutable", n[key]),
            });
        }
    };
    for key in [
        "selector",
        "completionMode",
        "podFailurePolicy",
        "successPolicy",
        "backoffLimitPerIndex",
        "manualSelector",
        "managedBy",
    ] {
        immutable(&mut errs, key);
    }
    let never_started = old["status"]["startTime"].is_null() && o["suspend"] == true;
    if !never_started {
        immutable(&mut errs, "template");
    }
    if n["completions"] != o["completions"] {
        let elastic = n["completionMode"] == "Indexed"
            && n["completions"] == n["parallelism"]
            && o["completions"] == o["parallelism"];
        if !elastic {
            errs.push(FieldError {
                field: "spec.completions".into(),
                value: String::new(),
                message: format!("Invalid value: {}: field is immutable", n["completions"]),
            });
        }
    }
    errs
}

/// A CronJob: its schedule (five fields or a macro, never `TZ=`), a time zone the machine
/// knows, concurrencyPolicy, non-negative deadlines and limits, and the Job template.
pub fn validate_cron_job(obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let spec = &obj["spec"];
    match spec["schedule"].as_str() {
        None | Some("") => errs.push(required("spec.schedule")),
        Some(s) if s.contains("TZ") => errs.push(invalid(
            "spec.schedule",
            s,
            "cannot use TZ or CRON_TZ in schedule, use timeZone field instead",
        )),
        Some(s) => {
            if let Err(e) = Schedule::parse(s) {
                errs.push(invalid("spec.schedule", s, e));
            }
        }
    }
    if let Some(tz) = spec["timeZone"].as_str() {
        let bad = tz.is_empty()
            || tz.eq_ignore_ascii_case("local")
            || tz.contains(char::is_whitespace)
            || jiff::tz::TimeZone::get(tz).is_err();
        if bad {
            errs.push(invalid("spec.timeZone", tz, "unknown time zone"));
        }
    }
    let policy = spec["concurrencyPolicy"].as_str().unwrap_or("Allow");
    if !matches!(policy, "Allow" | "Forbid" | "Replace") {
        errs.push(FieldError {
            field: "spec.concurrencyPolicy".into(),
            value: String::new(),
            message: format!(
                "Unsupported value: \"{policy}\": supported values: \"Allow\", \"Forbid\", \"Replace\""
            ),
        });
    }
    for key in [
        "startingDeadlineSeconds",
        "successfulJobsHistoryLimit",
        "failedJobsHistoryLimit",
    ] {
        non_negative(spec, key, &mut errs);
    }
    let name = obj.name().unwrap_or_default();
    // Job names are the CronJob's plus 11 characters, and must be labels (63).
    if name.len() > 52 {
        errs.push(invalid(
            "metadata.name",
            name,
            "must be no more than 52 characters",
        ));
    }
    let job_spec = &spec["jobTemplate"]["spec"];
    if job_spec["selector"].is_object() {
        validate_selector(&json!({"spec": job_spec}), "job", &mut errs);
    }
    validate_job_spec("spec.jobTemplate.spec", job_spec, &mut errs);
    errs
}

/// The STATUS column: Complete, Failed, Terminating, Suspended, FailureTarget,
/// SuccessCriteriaMet or Running (kubectl's printJob order).
fn job_status(o: &Value) -> &'static str {
    let has = |ty: &str| {
        o["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == ty && c["status"] == "True")
    };
    if has("Complete") {
        "Complete"
    } else if has("Failed") {
        "Failed"
    } else if o.is_deleting() {
        "Terminating"
    } else if has("Suspended") {
        "Suspended"
    } else if has("FailureTarget") {
        "FailureTarget"
    } else if has("SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else {
        "Running"
    }
}

fn seconds(v: &Value) -> Option<i64> {
    v.as_str()?
        .parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_second())
}

pub fn jobs() -> Table {
    table::table(
        &[
            ("Status", "string", 0),
            ("Completions", "string", 0),
            ("Duration", "string", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        |o| {
            let spec = &o["spec"];
            let succeeded = o["status"]["succeeded"].as_i64().unwrap_or(0);
            let completions = match spec["completions"].as_i64() {
                Some(c) => format!("{succeeded}/{c}"),
                None => match spec["parallelism"].as_i64().unwrap_or(0) {
                    p if p > 1 => format!("{succeeded}/1 of {p}"),
                    _ => format!("{succeeded}/1"),
                },
            };
            let duration = match seconds(&o["status"]["startTime"]) {
                None => String::new(),
                Some(start) => {
                    let end = seconds(&o["status"]["completionTime"])
                        .unwrap_or_else(|| jiff::Timestamp::now().as_second());
                    table::human_duration(end - start)
                }
            };
            let (names, images) = table::pod_template_cells(&spec["template"]);
            vec![
                json!(job_status(o)),
                json!(completions),
                json!(duration),
                table::age(o),
                json!(names),
                json!(images),
                json!(table::label_selector(&spec["selector"])),
            ]
        },
    )
}

pub fn cron_jobs() -> Table {
    table::table(
        &[
            ("Schedule", "string", 0),
            ("Timezone", "string", 0),
            ("Suspend", "boolean", 0),
            ("Active", "integer", 0),
            ("Last Schedule", "string", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        |o| {
            let spec = &o["spec"];
            let last = match seconds(&o["status"]["lastScheduleTime"]) {
                Some(t) => table::human_duration(jiff::Timestamp::now().as_second() - t),
                None => "<none>".into(),
            };
            let job_spec = &spec["jobTemplate"]["spec"];
            let (names, images) = table::pod_template_cells(&job_spec["template"]);
            vec![
                json!(table::s(&spec["schedule"])),
                json!(spec["timeZone"].as_str().unwrap_or("<none>")),
                json!(spec["suspend"].as_bool().unwrap_or(false)),
                json!(o["status"]["active"].as_array().map_or(0, Vec::len)),
                json!(last),
                table::age(o),
                json!(names),
                json!(images),
                json!(table::label_selector(&job_spec["selector"])),
            ]
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Value {
        let mut j = json!({"metadata": {"name": "pi", "uid": "u-1"}, "spec": {
            "template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "pi", "image": "perl"}]}}}});
        capstan_api::defaults::batch::job(&mut j);
        job_on_create(&mut j);
        j
    }

    fn messages(errs: &[FieldError]) -> Vec<String> {
        errs.iter()
            .map(|e| {
                if e.value.is_empty() {
                    format!("{}: {}", e.field, e.message)
                } else {
                    format!("{}: Invalid value: \"{}\": {}", e.field, e.value, e.message)
                }
            })
            .collect()
    }

    #[test]
    fn a_new_job_selects_its_pods_by_its_uid() {
        let j = job();
        assert_eq!(
            j["spec"]["selector"],
            json!({"matchLabels": {CONTROLLER_UID: "u-1"}})
        );
        let labels = &j["spec"]["template"]["metadata"]["labels"];
        assert_eq!(labels[JOB_NAME], "pi");
        assert_eq!(labels["controller-uid"], "u-1");
        assert_eq!(validate_job(&j), Vec::new());
    }

    #[test]
    fn bad_jobs_list_every_problem() {
        let mut j = job();
        j["spec"]["template"]["spec"]["restartPolicy"] = json!("Always");
        j["spec"]["completionMode"] = json!("Indexed");
        j["spec"]["completions"] = json!(null);
        j["spec"]["parallelism"] = json!(-1);
        j["spec"]["backoffLimitPerIndex"] = json!(1);
        let got = messages(&validate_job(&j));
        for expected in [
            "spec.parallelism: Invalid value: \"-1\": must be greater than or equal to 0",
            "spec.template.spec.restartPolicy: Unsupported value: \"Always\": supported values: \"OnFailure\", \"Never\"",
            "spec.completions: Required value: when completion mode is Indexed",
        ] {
            assert!(got.iter().any(|m| m == expected), "{expected} in {got:?}");
        }
        let mut j = job();
        j["spec"]["podFailurePolicy"] = json!({"rules": [
            {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [0, 3, 3], "containerName": "nope"}},
            {"action": "Explode", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            {"action": "Ignore"}]});
        j["spec"]["podReplacementPolicy"] = json!("Failed");
        let got = messages(&validate_job(&j));
        for expected in [
            "spec.podFailurePolicy.rules[0].onExitCodes.containerName: Invalid value: \"nope\": must be one of the container or initContainer names in the pod template",
            "spec.podFailurePolicy.rules[0].onExitCodes.values[0]: Invalid value: \"0\": must not be 0 for the In operator",
            "spec.podFailurePolicy.rules[0].onExitCodes.values[2]: Duplicate value: 3",
            "spec.podFailurePolicy.rules[1].action: Unsupported value: \"Explode\": supported values: \"Count\", \"FailJob\", \"Ignore\"",
            "spec.podFailurePolicy.rules[2]: Invalid value: specifying one of OnExitCodes and OnPodConditions is required",
        ] {
            assert!(got.iter().any(|m| m == expected), "{expected} in {got:?}");
        }
    }

    #[test]
    fn success_policies_and_managed_by_are_checked() {
        let mut j = job();
        j["spec"]["completionMode"] = json!("Indexed");
        j["spec"]["completions"] = json!(5);
        j["spec"]["successPolicy"] = json!({"rules": [
            {"succeededIndexes": "0,2-3", "succeededCount": 2},
            {"succeededCount": 5}]});
        j["spec"]["managedBy"] = json!("example.com/batch");
        assert!(
            validate_job(&j).is_empty(),
            "{:?}",
            messages(&validate_job(&j))
        );
        j["spec"]["successPolicy"] = json!({"rules": [
            {},
            {"succeededIndexes": "3-1"},
            {"succeededIndexes": "1,1"},
            {"succeededIndexes": "9"},
            {"succeededIndexes": "1-2", "succeededCount": 3},
            {"succeededCount": 6}]});
        j["spec"]["managedBy"] = json!("no-domain");
        let got = messages(&validate_job(&j));
        for expected in [
            "spec.successPolicy.rules[0]: Required value: at least one of succeededCount or succeededIndexes must be specified",
            "spec.successPolicy.rules[1].succeededIndexes: Invalid value: \"3-1\": error parsing succeededIndexes: non-increasing order, previous: 3, current: 1",
            "spec.successPolicy.rules[2].succeededIndexes: Invalid value: \"1,1\": error parsing succeededIndexes: overlapping intervals or non-increasing order: 1",
            "spec.successPolicy.rules[3].succeededIndexes: Invalid value: \"9\": error parsing succeededIndexes: too large index: 9",
            "spec.successPolicy.rules[4].succeededCount: Invalid value: \"3\": must be less than or equal to 2 (the number of indexes in the specified succeededIndexes field)",
            "spec.successPolicy.rules[5].succeededCount: Invalid value: \"6\": must be less than or equal to 5 (the number of specified completions)",
            "spec.managedBy: Invalid value: \"no-domain\": must be a domain-prefixed path (such as \"acme.io/foo\")",
        ] {
            assert!(got.iter().any(|m| m == expected), "{expected} in {got:?}");
        }
        let mut plain = job();
        plain["spec"]["successPolicy"] = json!({"rules": [{"succeededCount": 1}]});
        assert_eq!(
            messages(&validate_job(&plain)),
            ["spec.successPolicy: Invalid value: requires indexed completion mode"]
        );
    }

    #[test]
    fn a_running_job_keeps_its_template_and_selector() {
        let old = job();
        let mut new = old.clone();
        new["spec"]["template"]["spec"]["containers"][0]["image"] = json!("perl:2");
        new["spec"]["selector"] = json!({"matchLabels": {"x": "y"}});
        new["spec"]["parallelism"] = json!(4);
        let got = messages(&validate_job_update(&new, &old));
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(
            got[0].starts_with("spec.selector: Invalid value: "),
            "{got:?}"
        );
        assert!(
            got[1].starts_with("spec.template: Invalid value: "),
            "{got:?}"
        );
        // Suspended and never started: the template may change (Kueue's way).
        let mut old = job();
        old["spec"]["suspend"] = json!(true);
        let mut new = old.clone();
        new["spec"]["template"]["spec"]["nodeSelector"] = json!({"zone": "a"});
        assert_eq!(validate_job_update(&new, &old), Vec::new());
    }

    #[test]
    fn cron_jobs_check_schedule_zone_and_name() {
        let mut c = json!({"metadata": {"name": "every-minute"}, "spec": {"schedule": "*/1 * * * *",
            "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "OnFailure",
                "containers": [{"name": "c", "image": "busybox"}]}}}}}});
        capstan_api::defaults::batch::cron_job(&mut c);
        assert_eq!(validate_cron_job(&c), Vec::new());
        c["spec"]["schedule"] = json!("61 * * * *");
        c["spec"]["timeZone"] = json!("Mars/Olympus");
        c["spec"]["concurrencyPolicy"] = json!("Sometimes");
        c["metadata"]["name"] = json!("x".repeat(53));
        let got = messages(&validate_cron_job(&c));
        for expected in [
            "spec.schedule: Invalid value: \"61 * * * *\": minute value 61 out of range (0-59)",
            "spec.timeZone: Invalid value: \"Mars/Olympus\": unknown time zone",
            "spec.concurrencyPolicy: Unsupported value: \"Sometimes\": supported values: \"Allow\", \"Forbid\", \"Replace\"",
        ] {
            assert!(got.iter().any(|m| m == expected), "{expected} in {got:?}");
        }
        assert!(
            got.iter()
                .any(|m| m.ends_with("must be no more than 52 characters"))
        );
        c["spec"]["schedule"] = json!("CRON_TZ=UTC 0 * * * *");
        let got = messages(&validate_cron_job(&c));
        assert!(
            got.iter()
                .any(|m| m.contains("cannot use TZ or CRON_TZ in schedule"))
        );
    }

    #[test]
    fn tables_show_what_kubectl_shows() {
        let mut j = job();
        j["spec"]["completions"] = json!(5);
        j["status"] = json!({"succeeded": 2, "startTime": "2026-12-04T10:00:00Z",
            "completionTime": "2026-12-04T10:01:30Z",
            "conditions": [{"type": "Complete", "status": "True"}]});
        let row = (jobs().row)(&j);
        assert_eq!(row[0], "Complete");
        assert_eq!(row[1], "2/5");
        assert_eq!(row[2], "90s");
        let mut queue = job();
        queue["spec"]["completions"] = json!(null);
        queue["spec"]["parallelism"] = json!(3);
        assert_eq!((jobs().row)(&queue)[1], "0/1 of 3");
        assert_eq!((jobs().row)(&queue)[0], "Running");
    }
}
