//! The audit log (`--audit-log-path`, `--audit-policy-file`): one JSON line per request, in
//! kube-apiserver's `audit.k8s.io/v1` Event form — who (user, groups, source address, user
//! agent), what (verb, URI, objectRef: resource, namespace, name, group, subresource), the
//! response code, when it arrived and when it was answered (and the latency in an
//! annotation). Long-running requests (watch, exec, attach, port-forward, following logs) are
//! logged when their response starts (stage ResponseStarted); the others when answered.
//!
//! The policy is kube-apiserver's (`audit.k8s.io/v1` Policy): the first rule that matches a
//! request (users, userGroups, verbs, resources with group and resourceNames, namespaces,
//! nonResourceURLs) gives its level — None (not logged), Metadata, Request (with the request
//! body; RequestResponse is treated as Request). Without a policy file every request is logged
//! at Metadata. Secrets' bodies are never logged: a request for secrets is at most Metadata.
//!
//! Lines go through a bounded queue to a writer task, so a slow disk never holds a request;
//! when the queue is full, events are dropped and counted (`apiserver_audit_event_dropped_total`).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Deserialize;
use serde_json::{Value, json};
use std::io::Write;

use crate::auth::attributes::Attributes;

/// How much of a request is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub enum Level {
    None,
    Metadata,
    Request,
    RequestResponse,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GroupResources {
    #[serde(default)]
    group: String,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    resource_names: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    level: Level,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    user_groups: Vec<String>,
    #[serde(default)]
    verbs: Vec<String>,
    #[serde(default)]
    resources: Vec<GroupResources>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default, rename = "nonResourceURLs")]
    non_resource_urls: Vec<String>,
    #[serde(default)]
    #[allow(dead_code)]
    omit_stages: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PolicyFile {
    api_version: String,
    kind: String,
    #[serde(default)]
    rules: Vec<Rule>,
}

/// An audit policy: rules in order, the first match decides.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    rules: Vec<Rule>,
}

impl Policy {
    /// Parses an `audit.k8s.io/v1` Policy (YAML or JSON).
    pub fn parse(text: &str) -> Result<Policy, String> {
        let f: PolicyFile =
            serde_yaml::from_str(text).map_err(|e| format!("not an audit Policy: {e}"))?;
        if f.api_version != "audit.k8s.io/v1" || f.kind != "Policy" {
            return Err(format!(
                "want apiVersion audit.k8s.io/v1, kind Policy; got {}, {}",
                f.api_version, f.kind
            ));
        }
        Ok(Policy { rules: f.rules })
    }

    /// The level of a request (Metadata without rules; None when no rule matches).
    pub fn level(&self, a: &Attributes) -> Level {
        if self.rules.is_empty() {
            return Level::Metadata;
        }
        let level = self
            .rules
            .iter()
            .find(|r| matches(r, a))
            .map_or(Level::None, |r| r.level);
        if a.resource_request && a.api_group.is_empty() && a.resource == "secrets" {
            return level.min(Level::Metadata);
        }
        level
    }
}

fn matches(r: &Rule, a: &Attributes) -> bool {
    let any = |list: &[String], v: &str| list.is_empty() || list.iter().any(|x| x == v);
    if !any(&r.users, &a.user.username) {
        return false;
    }
    if !r.user_groups.is_empty() && !a.user.groups.iter().any(|g| r.user_groups.contains(g)) {
        return false;
    }
    if !any(&r.verbs, &a.verb) {
        return false;
    }
    if !a.resource_request {
        // A rule about resources or namespaces is not about paths.
        if !r.resources.is_empty() || !r.namespaces.is_empty() {
            return false;
        }
        return r.non_resource_urls.is_empty()
            || r.non_resource_urls.iter().any(|u| {
                u == &a.path || u.strip_suffix('*').is_some_and(|p| a.path.starts_with(p))
            });
    }
    if !r.non_resource_urls.is_empty() {
        return false;
    }
    if !r.namespaces.is_empty() && !r.namespaces.contains(&a.namespace) {
        return false;
    }
    r.resources.is_empty()
        || r.resources.iter().any(|g| {
            g.group == a.api_group
                && (g.resources.is_empty()
                    || g.resources.iter().any(|x| {
                        x == "*"
                            || *x == a.full_resource()
                            || (a.subresource.is_empty() && *x == a.resource)
                            || x.strip_prefix("*/") == Some(a.subresource.as_str())
                    }))
                && (g.resource_names.is_empty() || g.resource_names.contains(&a.name))
        })
}

/// What the log says about one request.
#[derive(Debug)]
pub struct Record<'a> {
    pub attrs: &'a Attributes,
    pub level: Level,
    pub uri: &'a str,
    pub source: Option<std::net::SocketAddr>,
    pub user_agent: &'a str,
    pub code: u16,
    pub received: SystemTime,
    pub long_running: bool,
    pub body: Option<&'a [u8]>,
    /// What admission added to the request's event (policies' auditAnnotations and Audit
    /// failures, webhooks' auditAnnotations).
    pub annotations: Option<&'a AuditAnnotations>,
}

/// Annotations admission adds to a request's audit event, carried to the audit log in the
/// response's extensions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditAnnotations(pub std::collections::BTreeMap<String, String>);

fn rfc3339(t: SystemTime) -> String {
    jiff::Timestamp::try_from(t)
        .map(|t| format!("{t:.6}"))
        .unwrap_or_default()
}

impl Record<'_> {
    /// The audit.k8s.io/v1 Event.
    pub fn event(&self) -> Value {
        let a = self.attrs;
        let now = SystemTime::now();
        let latency = now.duration_since(self.received).unwrap_or_default();
        let mut e = json!({
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "level": format!("{:?}", self.level.min(Level::Request)),
            "auditID": uuid::Uuid::new_v4().to_string(),
            "stage": if self.long_running { "ResponseStarted" } else { "ResponseComplete" },
            "requestURI": self.uri,
            "verb": a.verb,
            "user": {"username": a.user.username, "groups": a.user.groups},
            "sourceIPs": self.source.map(|s| vec![s.ip().to_string()]).unwrap_or_default(),
            "userAgent": self.user_agent,
            "responseStatus": {"metadata": {}, "code": self.code},
            "requestReceivedTimestamp": rfc3339(self.received),
            "stageTimestamp": rfc3339(now),
            "annotations": {"capstan.dev/latency": format!("{:.3}ms", latency.as_secs_f64() * 1000.0)},
        });
        for (k, v) in self.annotations.iter().flat_map(|a| &a.0) {
            e["annotations"][k] = json!(v);
        }
        if !a.user.uid.is_empty() {
            e["user"]["uid"] = json!(a.user.uid);
        }
        if a.resource_request {
            let mut r = json!({"resource": a.resource, "apiVersion": a.api_version});
            for (k, v) in [
                ("namespace", &a.namespace),
                ("name", &a.name),
                ("apiGroup", &a.api_group),
                ("subresource", &a.subresource),
            ] {
                if !v.is_empty() {
                    r[k] = json!(v);
                }
            }
            e["objectRef"] = r;
        }
        if self.level >= Level::Request
            && let Some(body) = self.body.filter(|b| !b.is_empty())
        {
            e["requestObject"] = serde_json::from_slice(body)
                .unwrap_or_else(|_| json!({"capstan.dev/unreadable": body.len()}));
        }
        e
    }
}

/// What `--audit-log-path` and `--audit-policy-file` configure.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// A file appended to, or `-` for stdout.
    pub path: PathBuf,
    pub policy: Policy,
}

/// The address a request came from (set per connection by [`crate::http::serve`]).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// Whether a request stays open after its response starts (watch, exec, attach,
/// port-forward, following logs): audited when its response starts.
pub fn long_running(a: &Attributes, query: Option<&str>) -> bool {
    a.verb == "watch"
        || matches!(
            a.subresource.as_str(),
            "exec" | "attach" | "portforward" | "proxy"
        )
        || (a.subresource == "log"
            && query.is_some_and(|q| {
                q.split('&')
                    .any(|kv| kv == "follow=true" || kv == "follow=1")
            }))
}

/// Where audit events go (a file, or `-` for stdout) and the policy choosing them.
#[derive(Debug)]
pub struct AuditLog {
    pub policy: Policy,
    tx: std::sync::mpsc::SyncSender<Vec<u8>>,
    dropped: prometheus::IntCounter,
}

/// Events waiting for the writer at most; more are dropped and counted.
pub const QUEUE: usize = 10_000;

impl AuditLog {
    /// Opens `path` for appending (created 0600) and starts its writer thread.
    pub fn open(
        path: &Path,
        policy: Policy,
        metrics: &prometheus::Registry,
    ) -> Result<AuditLog, String> {
        let dropped = prometheus::IntCounter::new(
            "apiserver_audit_event_dropped_total",
            "Audit events dropped because the writer fell behind.",
        )
        .map_err(|e| e.to_string())?;
        metrics
            .register(Box::new(dropped.clone()))
            .map_err(|e| e.to_string())?;
        let out: Box<dyn Write + Send> = if path == Path::new("-") {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode_0600()
                    .open(path)
                    .map_err(|e| format!("opening the audit log {}: {e}", path.display()))?,
            )
        };
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(QUEUE);
        let where_: PathBuf = path.to_path_buf();
        std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || {
                let mut out = std::io::BufWriter::new(out);
                while let Ok(line) = rx.recv() {
                    let mut ok = out.write_all(&line).is_ok();
                    // Batch what is queued, then flush: lines reach the file promptly.
                    while let Ok(more) = rx.try_recv() {
                        ok &= out.write_all(&more).is_ok();
                    }
                    ok &= out.flush().is_ok();
                    if !ok {
                        tracing::error!(path = %where_.display(), "writing the audit log failed");
                    }
                }
            })
            .map_err(|e| format!("starting the audit log writer: {e}"))?;
        Ok(AuditLog {
            policy,
            tx,
            dropped,
        })
    }

    /// Queues the event of `r` (nothing at level None).
    pub fn record(&self, r: &Record<'_>) {
        if r.level == Level::None {
            return;
        }
        let mut line = serde_json::to_vec(&r.event()).unwrap_or_default();
        line.push(b'\n');
        if self.tx.try_send(line).is_err() {
            self.dropped.inc();
        }
    }
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::UserInfo;
    use std::sync::Arc;

    fn attrs(user: &str, groups: &[&str], method: &str, path: &str) -> Attributes {
        let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        Attributes::of(
            Arc::new(UserInfo::authenticated(user, "", &groups)),
            method,
            path,
            None,
        )
    }

    #[test]
    fn the_first_matching_rule_decides_and_secrets_stay_metadata() {
        let p = Policy::parse(
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n\
             - level: None\n  users: [system:kube-controller-manager]\n\
             - level: None\n  nonResourceURLs: [/healthz, /readyz]\n\
             - level: Request\n  resources: [{group: '', resources: [configmaps, secrets]}]\n\
             - level: Metadata\n  namespaces: [kube-system]\n\
             - level: RequestResponse\n  verbs: [create]\n",
        )
        .unwrap();
        let l = |a: Attributes| p.level(&a);
        assert_eq!(
            l(attrs(
                "system:kube-controller-manager",
                &[],
                "GET",
                "/api/v1/pods"
            )),
            Level::None
        );
        assert_eq!(l(attrs("jane", &[], "GET", "/readyz")), Level::None);
        assert_eq!(
            l(attrs(
                "jane",
                &[],
                "PUT",
                "/api/v1/namespaces/d/configmaps/c"
            )),
            Level::Request
        );
        assert_eq!(
            l(attrs("jane", &[], "POST", "/api/v1/namespaces/d/secrets")),
            Level::Metadata,
            "secrets: never the body"
        );
        assert_eq!(
            l(attrs(
                "jane",
                &[],
                "DELETE",
                "/api/v1/namespaces/kube-system/pods/p"
            )),
            Level::Metadata
        );
        assert_eq!(
            l(attrs(
                "jane",
                &[],
                "POST",
                "/apis/apps/v1/namespaces/d/deployments"
            )),
            Level::RequestResponse
        );
        assert_eq!(
            l(attrs(
                "jane",
                &[],
                "GET",
                "/apis/apps/v1/namespaces/d/deployments"
            )),
            Level::None
        );
        assert_eq!(
            Policy::default().level(&attrs("jane", &[], "GET", "/api/v1/pods")),
            Level::Metadata
        );
        assert!(Policy::parse("apiVersion: v1\nkind: Policy\n").is_err());
        assert!(
            Policy::parse("apiVersion: audit.k8s.io/v1\nkind: Policy\nrules: [{level: Loud}]\n")
                .is_err()
        );
    }

    #[test]
    fn an_event_names_who_what_and_how_it_ended() {
        let a = attrs("jane", &["dev"], "POST", "/api/v1/namespaces/d/configmaps");
        let r = Record {
            attrs: &a,
            level: Level::Request,
            uri: "/api/v1/namespaces/d/configmaps?fieldManager=x",
            source: Some("10.0.0.7:5555".parse().unwrap()),
            user_agent: "kubectl/v1.32",
            code: 201,
            received: SystemTime::now(),
            long_running: false,
            body: Some(br#"{"metadata":{"name":"c"}}"#),
            annotations: Some(&AuditAnnotations(
                [("p/reason".to_string(), "too big".to_string())].into(),
            )),
        };
        let e = r.event();
        assert_eq!(
            e["user"],
            json!({"username": "jane", "groups": ["dev", "system:authenticated"]})
        );
        assert_eq!(e["verb"], "create");
        assert_eq!(
            e["objectRef"],
            json!({"resource": "configmaps", "apiVersion": "v1", "namespace": "d"})
        );
        assert_eq!(e["responseStatus"]["code"], 201);
        assert_eq!(e["sourceIPs"], json!(["10.0.0.7"]));
        assert_eq!(e["requestObject"]["metadata"]["name"], "c");
        assert_eq!(e["stage"], "ResponseComplete");
        assert_eq!(e["annotations"]["p/reason"], "too big");
        assert!(
            e["annotations"]["capstan.dev/latency"]
                .as_str()
                .unwrap()
                .ends_with("ms")
        );
        let meta = Record {
            level: Level::Metadata,
            ..r
        };
        assert!(meta.event().get("requestObject").is_none());
    }
}
