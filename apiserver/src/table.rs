//! Server-side printing for `kubectl get`: a `meta.k8s.io/v1 Table` with kubectl's usual columns
//! per kind (pods: NAME READY STATUS RESTARTS AGE ...). Columns with priority 1 show with `-o wide`.

use serde_json::{Value, json};

use crate::object::ObjectExt;

/// A row's cells after the name, computed from an object.
pub type RowFn = std::sync::Arc<dyn Fn(&Value) -> Vec<Value> + Send + Sync>;

/// One column of a Table.
#[derive(Clone, Debug, PartialEq)]
pub struct Column {
    pub name: String,
    /// string, integer, number, boolean or date.
    pub ty: String,
    /// Shown only with `-o wide` when > 0.
    pub priority: u8,
    pub description: String,
}

#[derive(Clone)]
pub struct Table {
    pub columns: Vec<Column>,
    pub row: RowFn,
    /// Whether the first cell is the object's name (every kind but Events, whose printer
    /// starts with LAST SEEN and keeps NAME as a wide column).
    pub name_first: bool,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("columns", &self.columns)
            .finish()
    }
}

impl Table {
    /// A table whose first column is the object's name.
    pub fn new(columns: Vec<Column>, row: RowFn) -> Table {
        let mut cols = vec![Column {
            name: "Name".into(),
            ty: "string".into(),
            priority: 0,
            description: "Name must be unique within a namespace.".into(),
        }];
        cols.extend(columns);
        Table {
            columns: cols,
            row,
            name_first: true,
        }
    }
}

pub(crate) fn table(
    columns: &[(&'static str, &'static str, u8)],
    row: fn(&Value) -> Vec<Value>,
) -> Table {
    Table::new(
        columns
            .iter()
            .map(|(name, ty, priority)| Column {
                name: name.to_string(),
                ty: ty.to_string(),
                priority: *priority,
                description: String::new(),
            })
            .collect(),
        std::sync::Arc::new(row),
    )
}

/// Renders objects as a Table. `include` is `includeObject`: None (default: partial metadata),
/// "Object" or "None".
pub fn render(
    t: &Table,
    objects: &[Value],
    include: Option<&str>,
    list_rv: &str,
    cont: Option<&str>,
) -> Value {
    let columns: Vec<Value> = t
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            json!({
                "name": c.name,
                "type": c.ty,
                "format": if i == 0 && t.name_first { "name" } else { "" },
                "description": c.description,
                "priority": c.priority,
            })
        })
        .collect();
    let rows: Vec<Value> = objects.iter().map(|o| row(t, o, include)).collect();
    let mut meta = json!({ "resourceVersion": list_rv });
    if let Some(c) = cont {
        meta["continue"] = json!(c);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": columns,
        "rows": rows,
    })
}

pub fn row(t: &Table, obj: &Value, include: Option<&str>) -> Value {
    let mut cells = Vec::new();
    if t.name_first {
        cells.push(json!(obj.name().unwrap_or_default()));
    }
    cells.extend((t.row)(obj));
    let mut row = json!({ "cells": cells });
    match include {
        Some("None") => {}
        Some("Object") => row["object"] = obj.clone(),
        _ => {
            row["object"] = json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
            })
        }
    }
    row
}

/// kubectl's HumanDuration: 45s, 5m, 3h, 2d, 1y.
pub fn age(obj: &Value) -> Value {
    let Some(ts) = obj.meta_str("creationTimestamp") else {
        return json!("<unknown>");
    };
    let Ok(t) = ts.parse::<jiff::Timestamp>() else {
        return json!("<invalid>");
    };
    let secs = (jiff::Timestamp::now().as_second() - t.as_second()).max(0);
    json!(human_duration(secs))
}

pub fn human_duration(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => {
            let (m, r) = (s / 60, s % 60);
            if r == 0 {
                format!("{m}m")
            } else {
                format!("{m}m{r}s")
            }
        }
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 8 * 3600 => {
            let (h, m) = (s / 3600, (s % 3600) / 60);
            if m == 0 {
                format!("{h}h")
            } else {
                format!("{h}h{m}m")
            }
        }
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s if s < 8 * 86400 => {
            let (d, h) = (s / 86400, (s % 86400) / 3600);
            if h == 0 {
                format!("{d}d")
            } else {
                format!("{d}d{h}h")
            }
        }
        s if s < 2 * 365 * 86400 => format!("{}d", s / 86400),
        s => format!("{}y", s / (365 * 86400)),
    }
}

fn len(v: &Value) -> usize {
    v.as_object()
        .map(|m| m.len())
        .or(v.as_array().map(Vec::len))
        .unwrap_or(0)
}

fn i(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

pub(crate) fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

pub fn default_table() -> Table {
    table(&[("Age", "string", 0)], |o| vec![age(o)])
}

pub fn pods() -> Table {
    table(
        &[
            ("Ready", "string", 0),
            ("Status", "string", 0),
            ("Restarts", "string", 0),
            ("Age", "string", 0),
            ("IP", "string", 1),
            ("Node", "string", 1),
            ("Nominated Node", "string", 1),
            ("Readiness Gates", "string", 1),
        ],
        |o| {
            let statuses = o["status"]["containerStatuses"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let total = o["spec"]["containers"].as_array().map_or(0, Vec::len);
            let ready = statuses
                .iter()
                .filter(|c| c["ready"] == json!(true))
                .count();
            let restarts: i64 = statuses.iter().map(|c| i(&c["restartCount"])).sum();
            let mut status = s(&o["status"]["phase"]);
            for c in &statuses {
                if let Some(r) = c["state"]["waiting"]["reason"].as_str() {
                    status = r.to_string();
                } else if let Some(r) = c["state"]["terminated"]["reason"].as_str() {
                    status = r.to_string();
                }
            }
            if o.is_deleting() {
                status = "Terminating".into();
            }
            let ip = o["status"]["podIPs"][0]["ip"]
                .as_str()
                .or(o["status"]["podIP"].as_str());
            vec![
                json!(format!("{ready}/{total}")),
                json!(status),
                json!(restarts.to_string()),
                age(o),
                json!(or_none(ip)),
                json!(or_none(o["spec"]["nodeName"].as_str())),
                json!(or_none(o["status"]["nominatedNodeName"].as_str())),
                json!(readiness_gates(o)),
            ]
        },
    )
}

/// kubectl's value for an empty cell.
fn or_none(v: Option<&str>) -> String {
    match v {
        Some(v) if !v.is_empty() => v.to_string(),
        _ => "<none>".into(),
    }
}

/// READINESS GATES: how many of the pod's gates have a True condition, "<none>" without gates.
fn readiness_gates(pod: &Value) -> String {
    let Some(gates) = pod["spec"]["readinessGates"]
        .as_array()
        .filter(|g| !g.is_empty())
    else {
        return "<none>".into();
    };
    let conditions = pod["status"]["conditions"].as_array();
    let met = gates
        .iter()
        .filter(|g| {
            conditions
                .into_iter()
                .flatten()
                .find(|c| c["type"] == g["conditionType"])
                .is_some_and(|c| c["status"] == "True")
        })
        .count();
    format!("{met}/{}", gates.len())
}

/// A workload's CONTAINERS and IMAGES cells: names and images of its pod template, comma-joined.
fn template_containers(workload: &Value) -> (String, String) {
    pod_template_cells(&workload["spec"]["template"])
}

/// CONTAINERS and IMAGES of a pod template.
pub(crate) fn pod_template_cells(template: &Value) -> (String, String) {
    let containers = template["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let names: Vec<String> = containers.iter().map(|c| s(&c["name"])).collect();
    let images: Vec<String> = containers.iter().map(|c| s(&c["image"])).collect();
    (names.join(","), images.join(","))
}

/// A metav1.LabelSelector as kubectl prints it (labels.Selector's String): requirements sorted
/// by key, `k=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`; empty for an empty selector.
pub fn label_selector(sel: &Value) -> String {
    let mut reqs: Vec<(String, String)> = Vec::new();
    for (k, v) in sel["matchLabels"].as_object().into_iter().flatten() {
        reqs.push((k.clone(), format!("{k}={}", s(v))));
    }
    for e in sel["matchExpressions"].as_array().into_iter().flatten() {
        let k = s(&e["key"]);
        let mut values: Vec<String> = e["values"]
            .as_array()
            .into_iter()
            .flatten()
            .map(s)
            .collect();
        values.sort();
        let text = match e["operator"].as_str().unwrap_or_default() {
            "In" => format!("{k} in ({})", values.join(",")),
            "NotIn" => format!("{k} notin ({})", values.join(",")),
            "Exists" => k.clone(),
            "DoesNotExist" => format!("!{k}"),
            other => format!("{k} {other}"),
        };
        reqs.push((k, text));
    }
    reqs.sort();
    reqs.into_iter()
        .map(|(_, t)| t)
        .collect::<Vec<_>>()
        .join(",")
}

/// A label map as kubectl's labels.FormatLabels prints it: sorted `k=v` pairs, "<none>" if empty.
fn format_labels(m: &Value) -> String {
    let mut pairs: Vec<String> = m
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", s(v)))
        .collect();
    pairs.sort();
    if pairs.is_empty() {
        "<none>".into()
    } else {
        pairs.join(",")
    }
}

pub fn deployments() -> Table {
    table(
        &[
            ("Ready", "string", 0),
            ("Up-to-date", "integer", 0),
            ("Available", "integer", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        |o| {
            let st = &o["status"];
            let want = o["spec"]["replicas"].as_i64().unwrap_or(1);
            let (names, images) = template_containers(o);
            vec![
                json!(format!("{}/{want}", i(&st["readyReplicas"]))),
                json!(i(&st["updatedReplicas"])),
                json!(i(&st["availableReplicas"])),
                age(o),
                json!(names),
                json!(images),
                json!(label_selector(&o["spec"]["selector"])),
            ]
        },
    )
}

pub fn replicasets() -> Table {
    table(
        &[
            ("Desired", "integer", 0),
            ("Current", "integer", 0),
            ("Ready", "integer", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        |o| {
            let st = &o["status"];
            let (names, images) = template_containers(o);
            vec![
                json!(o["spec"]["replicas"].as_i64().unwrap_or(1)),
                json!(i(&st["replicas"])),
                json!(i(&st["readyReplicas"])),
                age(o),
                json!(names),
                json!(images),
                json!(label_selector(&o["spec"]["selector"])),
            ]
        },
    )
}

pub fn services() -> Table {
    table(
        &[
            ("Type", "string", 0),
            ("Cluster-IP", "string", 0),
            ("External-IP", "string", 0),
            ("Port(s)", "string", 0),
            ("Age", "string", 0),
            ("Selector", "string", 1),
        ],
        |o| {
            let ports: Vec<String> = o["spec"]["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    let proto = p["protocol"].as_str().unwrap_or("TCP");
                    match p["nodePort"].as_i64() {
                        Some(np) => format!("{}:{np}/{proto}", i(&p["port"])),
                        None => format!("{}/{proto}", i(&p["port"])),
                    }
                })
                .collect();
            let ports = if ports.is_empty() {
                "<none>".to_string()
            } else {
                ports.join(",")
            };
            vec![
                json!(o["spec"]["type"].as_str().unwrap_or("ClusterIP")),
                json!(o["spec"]["clusterIP"].as_str().unwrap_or("<none>")),
                json!("<none>"),
                json!(ports),
                age(o),
                json!(format_labels(&o["spec"]["selector"])),
            ]
        },
    )
}

pub fn namespaces() -> Table {
    table(&[("Status", "string", 0), ("Age", "string", 0)], |o| {
        vec![json!(s(&o["status"]["phase"])), age(o)]
    })
}

pub fn nodes() -> Table {
    table(
        &[
            ("Status", "string", 0),
            ("Roles", "string", 0),
            ("Age", "string", 0),
            ("Version", "string", 0),
            ("Internal-IP", "string", 1),
            ("External-IP", "string", 1),
            ("OS-Image", "string", 1),
            ("Kernel-Version", "string", 1),
            ("Container-Runtime", "string", 1),
        ],
        |o| {
            let ready = o["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Ready")
                .map(|c| {
                    if c["status"] == "True" {
                        "Ready"
                    } else {
                        "NotReady"
                    }
                })
                .unwrap_or("Unknown");
            let status = if o["spec"]["unschedulable"] == json!(true) {
                format!("{ready},SchedulingDisabled")
            } else {
                ready.to_string()
            };
            let address = |ty: &str| {
                let a = o["status"]["addresses"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|a| a["type"] == ty);
                or_none(a.and_then(|a| a["address"].as_str()))
            };
            let info = &o["status"]["nodeInfo"];
            let unknown = |v: &Value| match v.as_str() {
                Some(v) if !v.is_empty() => v.to_string(),
                _ => "<unknown>".to_string(),
            };
            vec![
                json!(status),
                json!(node_roles(o)),
                age(o),
                json!(s(&info["kubeletVersion"])),
                json!(address("InternalIP")),
                json!(address("ExternalIP")),
                json!(unknown(&info["osImage"])),
                json!(unknown(&info["kernelVersion"])),
                json!(unknown(&info["containerRuntimeVersion"])),
            ]
        },
    )
}

/// ROLES: the `node-role.kubernetes.io/ROLE` labels and `kubernetes.io/role`, sorted.
fn node_roles(node: &Value) -> String {
    let mut roles: Vec<String> = Vec::new();
    for (k, v) in node["metadata"]["labels"].as_object().into_iter().flatten() {
        if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
            if !role.is_empty() {
                roles.push(role.to_string());
            }
        } else if k == "kubernetes.io/role" && !s(v).is_empty() {
            roles.push(s(v));
        }
    }
    roles.sort();
    roles.dedup();
    if roles.is_empty() {
        "<none>".into()
    } else {
        roles.join(",")
    }
}

pub fn configmaps() -> Table {
    table(&[("Data", "integer", 0), ("Age", "string", 0)], |o| {
        vec![json!(len(&o["data"]) + len(&o["binaryData"])), age(o)]
    })
}

pub fn secrets() -> Table {
    table(
        &[
            ("Type", "string", 0),
            ("Data", "integer", 0),
            ("Age", "string", 0),
        ],
        |o| {
            vec![
                json!(o["type"].as_str().unwrap_or("Opaque")),
                json!(len(&o["data"])),
                age(o),
            ]
        },
    )
}

/// kubectl's event printer: LAST SEEN TYPE REASON OBJECT MESSAGE, and with `-o wide` SUBOBJECT,
/// SOURCE, FIRST SEEN, COUNT and NAME. The name is a wide column, not the first one.
pub fn events() -> Table {
    let columns = [
        ("Last Seen", 0),
        ("Type", 0),
        ("Reason", 0),
        ("Object", 0),
        ("Subobject", 1),
        ("Source", 1),
        ("Message", 0),
        ("First Seen", 1),
        ("Count", 1),
        ("Name", 1),
    ];
    Table {
        columns: columns
            .iter()
            .map(|(name, priority)| Column {
                name: name.to_string(),
                ty: "string".into(),
                priority: *priority,
                description: String::new(),
            })
            .collect(),
        row: std::sync::Arc::new(event_cells),
        name_first: false,
    }
}

/// events.k8s.io/v1 Events print as core/v1 ones do (kube-apiserver converts both to one internal
/// Event before printing).
pub fn events_v1() -> Table {
    Table {
        row: std::sync::Arc::new(|o: &Value| {
            let mut core = o.clone();
            crate::events::to_core(&mut core);
            event_cells(&core)
        }),
        ..events()
    }
}

/// The cells of one Event (core/v1 shape), as kubectl's printEvent computes them.
fn event_cells(o: &Value) -> Vec<Value> {
    let since = |ts: &Value| match ts.as_str().map(str::parse::<jiff::Timestamp>) {
        Some(Ok(t)) => Some(human_duration(
            (jiff::Timestamp::now().as_second() - t.as_second()).max(0),
        )),
        _ => None,
    };
    let first = since(&o["firstTimestamp"])
        .or_else(|| since(&o["eventTime"]))
        .unwrap_or_else(|| "<unknown>".into());
    let mut last = since(&o["lastTimestamp"]).unwrap_or_else(|| first.clone());
    let mut count = i(&o["count"]);
    if o["series"].is_object() {
        last = since(&o["series"]["lastObservedTime"]).unwrap_or_else(|| "<unknown>".into());
        count = i(&o["series"]["count"]);
    } else if count == 0 {
        count = 1;
    }
    let inv = &o["involvedObject"];
    let kind = s(&inv["kind"]).to_ascii_lowercase();
    let target = match inv["name"].as_str() {
        Some(n) if !n.is_empty() => format!("{kind}/{n}"),
        _ => kind,
    };
    let first_non_empty = |a: &Value, b: &Value| {
        let a = s(a);
        if a.is_empty() { s(b) } else { a }
    };
    let component = first_non_empty(&o["source"]["component"], &o["reportingComponent"]);
    let host = first_non_empty(&o["source"]["host"], &o["reportingInstance"]);
    let source = if host.is_empty() {
        component
    } else {
        format!("{component}, {host}")
    };
    vec![
        json!(last),
        json!(s(&o["type"])),
        json!(s(&o["reason"])),
        json!(target),
        json!(s(&inv["fieldPath"])),
        json!(source),
        json!(s(&o["message"]).trim()),
        json!(first),
        json!(count),
        json!(o.name().unwrap_or_default()),
    ]
}

/// kubectl's ENDPOINTS cell: `ip:port` for every address and port, at most three, then
/// "+ N more..."; addresses alone for a subset without ports; "<none>" when empty.
pub fn endpoints() -> Table {
    table(&[("Endpoints", "string", 0), ("Age", "string", 0)], |o| {
        const MAX: usize = 3;
        let mut list = Vec::new();
        let mut count = 0;
        for sub in o["subsets"].as_array().into_iter().flatten() {
            let addrs: Vec<String> = sub["addresses"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| s(&a["ip"]))
                .collect();
            let ports: Vec<i64> = sub["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| i(&p["port"]))
                .collect();
            let mut add = |text: String| {
                if list.len() < MAX {
                    list.push(text);
                }
                count += 1;
            };
            if ports.is_empty() {
                addrs.iter().for_each(|a| add(a.clone()));
            }
            for p in &ports {
                for a in &addrs {
                    add(if a.contains(':') {
                        format!("[{a}]:{p}")
                    } else {
                        format!("{a}:{p}")
                    });
                }
            }
        }
        let text = if count > MAX {
            format!("{} + {} more...", list.join(","), count - MAX)
        } else if list.is_empty() {
            "<none>".to_string()
        } else {
            list.join(",")
        };
        vec![json!(text), age(o)]
    })
}

pub fn endpointslices() -> Table {
    table(
        &[
            ("AddressType", "string", 0),
            ("Ports", "string", 0),
            ("Endpoints", "string", 0),
            ("Age", "string", 0),
        ],
        |o| {
            let ports: Vec<String> = o["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| i(&p["port"]).to_string())
                .collect();
            let addrs: Vec<String> = o["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
                .map(|a| s(&a))
                .collect();
            vec![
                json!(s(&o["addressType"])),
                json!(ports.join(",")),
                json!(addrs.join(",")),
                age(o),
            ]
        },
    )
}

pub fn serviceaccounts() -> Table {
    table(&[("Secrets", "integer", 0), ("Age", "string", 0)], |o| {
        vec![json!(len(&o["secrets"])), age(o)]
    })
}

pub fn leases() -> Table {
    table(&[("Holder", "string", 0), ("Age", "string", 0)], |o| {
        vec![json!(s(&o["spec"]["holderIdentity"])), age(o)]
    })
}

/// kubectl get apiservices: NAME SERVICE AVAILABLE AGE.
pub fn apiservices() -> Table {
    table(
        &[
            ("Service", "string", 0),
            ("Available", "string", 0),
            ("Age", "string", 0),
        ],
        |o| {
            let service = match o["spec"]["service"].as_object() {
                Some(svc) => format!("{}/{}", s(&svc["namespace"]), s(&svc["name"])),
                None => "Local".into(),
            };
            let available = o["status"]["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Available"))
                .map(|c| match c["status"].as_str() {
                    Some("True") => "True".to_string(),
                    other => format!("{} ({})", other.unwrap_or("Unknown"), s(&c["reason"])),
                })
                .unwrap_or_else(|| "Unknown".into());
            vec![json!(service), json!(available), age(o)]
        },
    )
}

/// Validating and mutating webhook configurations: NAME, WEBHOOKS, AGE.
pub fn webhook_configurations() -> Table {
    table(&[("Webhooks", "integer", 0), ("Age", "string", 0)], |o| {
        let n = o["webhooks"].as_array().map_or(0, Vec::len);
        vec![json!(n), age(o)]
    })
}

/// kubectl's TARGETS of an autoscaler (`formatHPAMetrics`): `cpu: 65%/50%` per metric, the
/// first two, then `+ N more...`.
fn hpa_targets(o: &Value) -> String {
    let specs = o["spec"]["metrics"].as_array().cloned().unwrap_or_default();
    if specs.is_empty() {
        return "<none>".into();
    }
    let statuses = o["status"]["currentMetrics"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let unknown = || "<unknown>".to_string();
    let text = |v: &Value| v.as_str().map(str::to_string);
    let pct = |v: &Value| v.as_i64().map(|p| format!("{p}%"));
    let list: Vec<String> = specs
        .iter()
        .enumerate()
        .map(|(n, spec)| {
            let st = statuses.get(n).cloned().unwrap_or(Value::Null);
            let field = match s(&spec["type"]).as_str() {
                "Resource" => "resource",
                "ContainerResource" => "containerResource",
                "Pods" => "pods",
                "Object" => "object",
                "External" => "external",
                _ => return "<unknown type>".into(),
            };
            let (spec, cur) = (&spec[field], &st[field]["current"]);
            let target = &spec["target"];
            match field {
                "resource" | "containerResource" => {
                    let name = s(&spec["name"]);
                    if target["averageValue"].is_string() {
                        let current = text(&cur["averageValue"]).unwrap_or_else(unknown);
                        format!("{name}: {current}/{}", s(&target["averageValue"]))
                    } else {
                        let current = pct(&cur["averageUtilization"]).unwrap_or_else(unknown);
                        let goal = pct(&target["averageUtilization"]).unwrap_or("<auto>".into());
                        format!("{name}: {current}/{goal}")
                    }
                }
                "pods" => format!(
                    "{}/{}",
                    text(&cur["averageValue"]).unwrap_or_else(unknown),
                    s(&target["averageValue"])
                ),
                _ => {
                    if target["averageValue"].is_string() {
                        format!(
                            "{}/{} (avg)",
                            text(&cur["averageValue"]).unwrap_or_else(unknown),
                            s(&target["averageValue"])
                        )
                    } else {
                        format!(
                            "{}/{}",
                            text(&cur["value"]).unwrap_or_else(unknown),
                            s(&target["value"])
                        )
                    }
                }
            }
        })
        .collect();
    if list.len() > 2 {
        format!("{} + {} more...", list[..2].join(", "), list.len() - 2)
    } else {
        list.join(", ")
    }
}

pub fn hpas() -> Table {
    table(
        &[
            ("Reference", "string", 0),
            ("Targets", "string", 0),
            ("MinPods", "integer", 0),
            ("MaxPods", "integer", 0),
            ("Replicas", "integer", 0),
            ("Age", "string", 0),
        ],
        |o| {
            let r = &o["spec"]["scaleTargetRef"];
            vec![
                json!(format!("{}/{}", s(&r["kind"]), s(&r["name"]))),
                json!(hpa_targets(o)),
                json!(o["spec"]["minReplicas"].as_i64().unwrap_or(1)),
                json!(i(&o["spec"]["maxReplicas"])),
                json!(i(&o["status"]["currentReplicas"])),
                age(o),
            ]
        },
    )
}

/// `kubectl get pdb`: N/A for the bound that is not set.
pub fn pod_disruption_budgets() -> Table {
    table(
        &[
            ("Min Available", "string", 0),
            ("Max Unavailable", "string", 0),
            ("Allowed Disruptions", "integer", 0),
            ("Age", "string", 0),
        ],
        |o| {
            let bound = |v: &Value| match v {
                Value::Null => "N/A".to_string(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            vec![
                json!(bound(&o["spec"]["minAvailable"])),
                json!(bound(&o["spec"]["maxUnavailable"])),
                json!(i(&o["status"]["disruptionsAllowed"])),
                age(o),
            ]
        },
    )
}

pub fn crds() -> Table {
    table(&[("Created At", "date", 0)], |o| {
        vec![json!(o.meta_str("creationTimestamp").unwrap_or_default())]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(150), "2m30s");
        assert_eq!(human_duration(3600), "60m");
        assert_eq!(human_duration(4 * 3600 + 600), "4h10m");
        assert_eq!(human_duration(3 * 86400), "3d");
        assert_eq!(human_duration(800 * 86400), "2y");
    }

    #[test]
    fn a_pod_row_shows_readiness_status_and_restarts() {
        let pod = json!({"metadata":{"name":"web"},"spec":{"containers":[{"name":"a"},{"name":"b"}]},
            "status":{"phase":"Running","containerStatuses":[{"ready":true,"restartCount":2,"state":{"running":{}}},{"ready":false,"restartCount":1,"state":{"waiting":{"reason":"CrashLoopBackOff"}}}]}});
        let r = row(&pods(), &pod, Some("None"));
        assert_eq!(r["cells"][0], "web");
        assert_eq!(r["cells"][1], "1/2");
        assert_eq!(r["cells"][2], "CrashLoopBackOff");
        assert_eq!(r["cells"][3], "3");
    }

    #[test]
    fn autoscaler_targets_read_as_kubectl_prints_them() {
        let hpa = json!({"metadata": {"name": "web"}, "spec": {
        "scaleTargetRef": {"kind": "Deployment", "name": "web"}, "minReplicas": 2, "maxReplicas": 9,
        "metrics": [
            {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}},
            {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "100Mi"}}},
            {"type": "External", "external": {"metric": {"name": "q"}, "target": {"type": "Value", "value": "10"}}},
        ]},
        "status": {"currentReplicas": 3, "currentMetrics": [
            {"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 65, "averageValue": "130m"}}},
        ]}});
        let r = row(&hpas(), &hpa, None);
        assert_eq!(r["cells"][1], "Deployment/web");
        assert_eq!(
            r["cells"][2],
            "cpu: 65%/50%, memory: <unknown>/100Mi + 1 more..."
        );
        assert_eq!(r["cells"][3], 2);
        assert_eq!(r["cells"][5], 3);
        let none = json!({"spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 1}});
        assert_eq!(row(&hpas(), &none, None)["cells"][2], "<none>");
    }
}

#[cfg(test)]
#[path = "table_wide_tests.rs"]
mod wide_tests;
