//! The Helm chart's generated parts against their sources (no cluster): each controller's
//! RBAC rules (charts/capstan/files/controller-rules.json, from the API server's roles for its
//! own controllers), the controllers values.schema.json allows (the binary's list), and the
//! version the chart runs. `CAPSTAN_WRITE_CHART_FILES=1` rewrites the rules (`make crds`).
//! The chart's CRDs are checked beside manifests/crds (capstan-api's tests).

use std::collections::BTreeMap;
use std::path::PathBuf;

fn chart() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/capstan")
}

fn rules_json() -> String {
    let rules: BTreeMap<&str, Vec<serde_json::Value>> =
        capstan_apiserver::auth::rbac::controller_roles::controller_rules()
            .into_iter()
            .collect();
    serde_json::to_string_pretty(&rules).unwrap() + "\n"
}

#[test]
fn the_charts_controller_rules_are_the_api_servers() {
    let path = chart().join("files/controller-rules.json");
    let want = rules_json();
    if std::env::var_os("CAPSTAN_WRITE_CHART_FILES").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "charts/capstan/files/controller-rules.json is stale: run `make crds`"
    );
    // Every controller the binary runs has its rules there.
    let rules: BTreeMap<String, serde_json::Value> = serde_json::from_str(&have).unwrap();
    for name in capstan_controllers::ALL {
        assert!(
            rules.contains_key(*name),
            "no rules for the controller {name}"
        );
    }
}

#[test]
fn the_values_schema_allows_exactly_the_binarys_controllers() {
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(chart().join("values.schema.json")).unwrap())
            .unwrap();
    let mut allowed: Vec<String> = schema["properties"]["controllers"]["items"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    allowed.sort();
    let mut known: Vec<String> = capstan_controllers::ALL
        .iter()
        .map(|s| s.to_string())
        .collect();
    known.sort();
    assert_eq!(allowed, known, "values.schema.json's controllers enum");
}

#[test]
fn the_chart_runs_this_version() {
    let chart_yaml = std::fs::read_to_string(chart().join("Chart.yaml")).unwrap();
    let app_version = chart_yaml
        .lines()
        .find_map(|l| l.strip_prefix("appVersion:"))
        .map(|v| v.trim().trim_matches('"').to_string());
    assert_eq!(
        app_version.as_deref(),
        Some(env!("CARGO_PKG_VERSION")),
        "Chart.yaml's appVersion is not the workspace's version"
    );
}
