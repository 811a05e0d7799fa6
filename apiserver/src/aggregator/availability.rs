//! The APIServices' `Available` condition (kube-aggregator's availability controller): a local
//! APIService is always available; a remote one when its Service exists, listens on the port,
//! has a ready endpoint and answers its discovery document (`GET /apis/GROUP/VERSION`) with a
//! success within 5 s. Checked every 10 s, and within a second of a change to an APIService,
//! Service or EndpointSlice. The condition is written only when it changes.

use std::sync::{Arc, Weak};
use std::time::Duration;

use serde_json::{Value, json};

use super::Remote;
use super::proxy;
use crate::ApiServer;
use crate::object::ObjectExt;
use crate::request::{Params, Target};

const EVERY: Duration = Duration::from_secs(10);
const TICK: Duration = Duration::from_secs(1);
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(5);
const WATCHED: &[(&str, &str)] = &[
    ("apiregistration.k8s.io", "apiservices"),
    ("", "services"),
    ("discovery.k8s.io", "endpointslices"),
];

/// (status, reason, message) of the Available condition.
type Verdict = (&'static str, &'static str, String);

/// Whether `remote` can serve now; its discovery document when it can.
async fn check(api: &ApiServer, remote: &Remote) -> (Verdict, Option<Value>) {
    let (_, endpoints) = match crate::webhook::client::ready_endpoints(
        api,
        &remote.namespace,
        &remote.service,
        remote.port,
    ) {
        Ok(found) => found,
        Err(e) => {
            let reason = if e.contains("not listening") {
                "ServicePortError"
            } else {
                "ServiceNotFound"
            };
            return (("False", reason, e), None);
        }
    };
    if endpoints.is_empty() {
        return (
            (
                "False",
                "MissingEndpoints",
                format!(
                    "endpoints for service/{} in {:?} have no ready addresses for port {}",
                    remote.service, remote.namespace, remote.port
                ),
            ),
            None,
        );
    }
    let path = format!("/apis/{}/{}", remote.group, remote.version);
    let failing = |why: String| {
        (
            (
                "False",
                "FailedDiscoveryCheck",
                format!(
                    "failing or missing response from https://{}{path}: {why}",
                    remote.server_name()
                ),
            ),
            None,
        )
    };
    match proxy::get(api, remote, &path, DISCOVERY_TIMEOUT).await {
        Ok((status, body)) if (200..300).contains(&status) => {
            match serde_json::from_slice::<Value>(&body) {
                Ok(doc) if doc["resources"].is_array() => (
                    ("True", "Passed", "all checks passed".to_string()),
                    Some(doc),
                ),
                _ => failing("the response is not an APIResourceList".into()),
            }
        }
        Ok((status, _)) => failing(format!("bad status: {status}")),
        Err(e) => failing(e),
    }
}

fn condition_of(status: &Value) -> Option<(&str, &str, &str)> {
    let c = status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Available")?;
    Some((
        c["status"].as_str().unwrap_or_default(),
        c["reason"].as_str().unwrap_or_default(),
        c["message"].as_str().unwrap_or_default(),
    ))
}

/// The APIServices' registration and watch cache.
fn apiservices(
    api: &ApiServer,
) -> Option<(
    Arc<crate::registry::ResourceInfo>,
    Arc<crate::watch_cache::Cacher>,
)> {
    let info = api
        .registry
        .get("apiregistration.k8s.io", "v1", "apiservices")?;
    let cache = api.cacher(&info).ok()?;
    Some((info, cache))
}

/// Writes the Available condition of APIService `name` when it differs.
async fn record(api: &ApiServer, name: &str, (status, reason, message): Verdict) {
    let Some((info, cache)) = apiservices(api) else {
        return;
    };
    let Some(live) = cache.get_value(&info.key(None, name)) else {
        return;
    };
    let before = condition_of(&live["status"]);
    if before == Some((status, reason, message.as_str())) || live.is_deleting() {
        return;
    }
    let since = match before {
        Some((s, _, _)) if s == status => live["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Available"))
            .map(|c| c["lastTransitionTime"].clone())
            .unwrap_or_else(|| json!(crate::object::now())),
        _ => json!(crate::object::now()),
    };
    let mut obj = (*live).clone();
    obj["status"] = json!({"conditions": [{
        "type": "Available", "status": status, "reason": reason, "message": message,
        "lastTransitionTime": since,
    }]});
    let target = Target {
        info,
        namespace: None,
        name: Some(name.into()),
        subresource: Some("status".into()),
    };
    let params = Params {
        user_agent_manager: Some("capstan-apiservice-availability".into()),
        ..Params::default()
    };
    match api.update(&target, obj, &params).await {
        Ok(_) => {
            tracing::info!(apiservice = name, status, reason, %message, "APIService availability")
        }
        // A conflict or a deletion: the next pass sees the new object.
        Err(e) => tracing::debug!(apiservice = name, error = %e.message, "recording availability"),
    }
}

/// One pass over every APIService.
pub async fn check_all(api: &ApiServer) {
    let Some((_, cache)) = apiservices(api) else {
        return;
    };
    let remotes = api.aggregator.all(api);
    for obj in cache.values("").0 {
        let Some(name) = obj.name() else { continue };
        match remotes.iter().find(|r| r.name == name) {
            Some(remote) => {
                let (verdict, doc) = check(api, remote).await;
                api.aggregator.remember(name, doc);
                record(api, name, verdict).await;
            }
            None if obj["spec"]["service"].is_object() => {
                // Written before its TLS settings were checked: it cannot be reached.
                api.aggregator.remember(name, None);
                let verdict = (
                    "False",
                    "FailedDiscoveryCheck",
                    "the APIService's caBundle holds no usable certificate".to_string(),
                );
                record(api, name, verdict).await;
            }
            None => {
                api.aggregator.remember(name, None);
                let verdict = (
                    "True",
                    "Local",
                    "Local APIServices are always available".to_string(),
                );
                record(api, name, verdict).await;
            }
        }
    }
}

/// Runs the checks for as long as the server lives.
pub fn spawn(api: &Arc<ApiServer>) {
    let weak: Weak<ApiServer> = Arc::downgrade(api);
    tokio::spawn(async move {
        let mut seen: Vec<u64> = Vec::new();
        let mut last = tokio::time::Instant::now() - EVERY;
        loop {
            let Some(api) = weak.upgrade() else {
                return;
            };
            let changes: Vec<u64> = WATCHED
                .iter()
                .filter_map(|(group, plural)| {
                    let info = api.registry.get(group, "v1", plural)?;
                    api.cacher(&info).ok().map(|c| c.changes())
                })
                .collect();
            if changes != seen || last.elapsed() >= EVERY {
                seen = changes;
                last = tokio::time::Instant::now();
                check_all(&api).await;
            }
            drop(api);
            tokio::time::sleep(TICK).await;
        }
    });
}
