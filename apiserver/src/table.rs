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
        Table { columns: cols, row }
    }
}

fn table(columns: &[(&'static str, &'static str, u8)], row: fn(&Value) -> Vec<Value>) -> Table {
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
                "format": if i == 0 { "name" } else { "" },
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
    let mut cells = vec![json!(obj.name().unwrap_or_default())];
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

fn s(v: &Value) -> String {
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
            let node = o["spec"]["nodeName"]
                .as_str()
                .unwrap_or("<none>")
                .to_string();
            let ip = o["status"]["podIP"]
                .as_str()
                .unwrap_or("<none>")
                .to_string();
            vec![
                json!(format!("{ready}/{total}")),
                json!(status),
                json!(restarts.to_string()),
                age(o),
                json!(ip),
                json!(node),
            ]
        },
    )
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
        ],
        |o| {
            let st = &o["status"];
            let want = o["spec"]["replicas"].as_i64().unwrap_or(1);
            let containers = o["spec"]["template"]["spec"]["containers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let names: Vec<String> = containers.iter().map(|c| s(&c["name"])).collect();
            let images: Vec<String> = containers.iter().map(|c| s(&c["image"])).collect();
            vec![
                json!(format!("{}/{want}", i(&st["readyReplicas"]))),
                json!(i(&st["updatedReplicas"])),
                json!(i(&st["availableReplicas"])),
                age(o),
                json!(names.join(",")),
                json!(images.join(",")),
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
        ],
        |o| {
            let st = &o["status"];
            vec![
                json!(o["spec"]["replicas"].as_i64().unwrap_or(1)),
                json!(i(&st["replicas"])),
                json!(i(&st["readyReplicas"])),
                age(o),
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
            vec![
                json!(status),
                json!("<none>"),
                age(o),
                json!(s(&o["status"]["nodeInfo"]["kubeletVersion"])),
            ]
        },
    )
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

pub fn events() -> Table {
    table(
        &[
            ("Last Seen", "string", 0),
            ("Type", "string", 0),
            ("Reason", "string", 0),
            ("Object", "string", 0),
            ("Message", "string", 0),
        ],
        |o| {
            let obj = format!(
                "{}/{}",
                s(&o["involvedObject"]["kind"]).to_ascii_lowercase(),
                s(&o["involvedObject"]["name"])
            );
            vec![
                age(o),
                json!(s(&o["type"])),
                json!(s(&o["reason"])),
                json!(obj),
                json!(s(&o["message"])),
            ]
        },
    )
}

pub fn endpoints() -> Table {
    table(&[("Endpoints", "string", 0), ("Age", "string", 0)], |o| {
        let mut eps = Vec::new();
        for sub in o["subsets"].as_array().into_iter().flatten() {
            for a in sub["addresses"].as_array().into_iter().flatten() {
                for p in sub["ports"].as_array().into_iter().flatten() {
                    eps.push(format!("{}:{}", s(&a["ip"]), i(&p["port"])));
                }
            }
        }
        let text = if eps.is_empty() {
            "<none>".to_string()
        } else {
            eps.join(",")
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

pub fn hpas() -> Table {
    table(
        &[
            ("Reference", "string", 0),
            ("MinPods", "integer", 0),
            ("MaxPods", "integer", 0),
            ("Replicas", "integer", 0),
            ("Age", "string", 0),
        ],
        |o| {
            let r = &o["spec"]["scaleTargetRef"];
            vec![
                json!(format!("{}/{}", s(&r["kind"]), s(&r["name"]))),
                json!(o["spec"]["minReplicas"].as_i64().unwrap_or(1)),
                json!(i(&o["spec"]["maxReplicas"])),
                json!(i(&o["status"]["currentReplicas"])),
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
}
