//! `kubectl get` columns of the RBAC kinds: roles show when they were created; bindings their
//! role and (wide) their users, groups and ServiceAccounts.

use serde_json::{Value, json};

use crate::table::{Table, age, s, table};

/// kubectl get roles / clusterroles: NAME CREATED AT.
pub fn roles() -> Table {
    table(&[("Created At", "date", 0)], |o| {
        vec![json!(s(&o["metadata"]["creationTimestamp"]))]
    })
}

fn subjects(o: &Value, kind: &str) -> String {
    o["subjects"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|x| x["kind"] == kind)
        .map(|x| match (kind, x["namespace"].as_str()) {
            ("ServiceAccount", Some(ns)) => format!("{ns}/{}", s(&x["name"])),
            _ => s(&x["name"]),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// kubectl get rolebindings / clusterrolebindings: NAME ROLE AGE (wide: USERS GROUPS
/// SERVICEACCOUNTS).
pub fn bindings() -> Table {
    table(
        &[
            ("Role", "string", 0),
            ("Age", "string", 0),
            ("Users", "string", 1),
            ("Groups", "string", 1),
            ("ServiceAccounts", "string", 1),
        ],
        |o| {
            vec![
                json!(format!(
                    "{}/{}",
                    s(&o["roleRef"]["kind"]),
                    s(&o["roleRef"]["name"])
                )),
                age(o),
                json!(subjects(o, "User")),
                json!(subjects(o, "Group")),
                json!(subjects(o, "ServiceAccount")),
            ]
        },
    )
}
