//! `GitSync`: a git repository of manifests that the GitOps controller
//! (controllers/src/gitops/) keeps applied to the cluster. One kind where Flux has two
//! (GitRepository + Kustomization): where the manifests are (repo, ref, path, credentials) and
//! how they are kept applied (interval, prune, wait, dependsOn, force).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The duration pattern of the spec's fields (`30s`, `5m`, `1h30m`).
const DURATION: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

/// Where the manifests are and how to keep them applied.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "capstan.dev",
    version = "v1alpha1",
    kind = "GitSync",
    namespaced,
    status = "GitSyncStatus",
    shortname = "gs",
    category = "capstan",
    derive = "PartialEq",
    derive = "Default",
    printcolumn = r#"{"name":"Repo","type":"string","jsonPath":".spec.repo"}"#,
    printcolumn = r#"{"name":"Ref","type":"string","jsonPath":".status.ref"}"#,
    printcolumn = r#"{"name":"Commit","type":"string","jsonPath":".status.lastAppliedCommit"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Message","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    crates(
        kube_core = "::kube_core",
        k8s_openapi = "::k8s_openapi",
        schemars = "::schemars",
        serde = "::serde",
        serde_json = "::serde_json"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct GitSyncSpec {
    /// The repository: an https://, http://, ssh:// (or `user@host:path`), git:// or file://
    /// URL.
    #[schemars(length(min = 1))]
    #[schemars(regex(pattern = r"^(https?://|ssh://|git://|file://|[A-Za-z0-9._-]+@[^:/]+:).+"))]
    pub repo: String,
    /// What to check out; the remote's default branch when unset.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<GitRef>,
    /// A Secret of this namespace with the credentials: `username` + `password` or
    /// `bearerToken` for http(s); `identity` (a private key) + `known_hosts` for ssh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalRef>,
    /// The directory in the repository holding the manifests: its kustomization.yaml
    /// (`resources`, `namespace`) when it has one, else every *.yaml, *.yml and *.json under it.
    /// The repository root when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// How often to fetch and re-apply (which also reverts manual edits); 1m when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION))]
    pub interval: Option<String>,
    /// How soon to try again after a failure; `interval` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION))]
    pub retry_interval: Option<String>,
    /// The most a fetch, or a wait for health, may take; 60s when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION))]
    pub timeout: Option<String>,
    /// Delete objects this GitSync applied earlier that are no longer in the repository
    /// (never one annotated `capstan.dev/prune: disabled`).
    #[serde(default)]
    pub prune: bool,
    /// Stop syncing (nothing is deleted).
    #[serde(default)]
    pub suspend: bool,
    /// The namespace of every namespaced object that names none (and of those that name
    /// another); it must exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_namespace: Option<String>,
    /// GitSyncs that must be Ready before this one applies anything.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<Dependency>,
    /// Ready only once what was applied is healthy (Deployments rolled out, Jobs complete,
    /// CRDs Established, objects with a Ready condition Ready), within `timeout`.
    #[serde(default)]
    pub wait: bool,
    /// Delete and re-create an object whose update a field's immutability refuses.
    #[serde(default)]
    pub force: bool,
}

/// One of branch, tag, semver or commit (Flux's precedence when several are given:
/// commit, then semver, then tag, then branch).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GitRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// A semantic version range (`>=1.2.0, <2.0.0`, `^1.4`): the highest tag in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semver: Option<String>,
    /// A full commit SHA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-f]{40}([0-9a-f]{24})?$"))]
    pub commit: Option<String>,
}

/// An object of the same namespace, by name.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LocalRef {
    #[schemars(length(min = 1))]
    pub name: String,
}

/// Another GitSync (of this namespace unless named).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Dependency {
    #[schemars(length(min = 1))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// What was last fetched and applied.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GitSyncStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The ref followed, as git names it (`refs/heads/main`, `refs/tags/v1.2.0`, a commit).
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "ref")]
    pub git_ref: Option<String>,
    /// The commit last applied in full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied_commit: Option<String>,
    /// The commit of the last attempt (the same as `lastAppliedCommit` unless it failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempted_commit: Option<String>,
    /// When the last sync finished (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<String>,
    /// The objects the last good sync applied: what pruning compares against.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inventory: Vec<SyncedObject>,
    /// Ready (the last sync applied everything, and it is healthy when `wait`), Reconciling
    /// (a sync is under way) and Stalled (it cannot make progress without a change).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// One object a sync applied.
#[derive(
    Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
#[serde(rename_all = "camelCase")]
pub struct SyncedObject {
    pub api_version: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
}

impl std::fmt::Display for SyncedObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {}/{}", self.kind, ns, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}
