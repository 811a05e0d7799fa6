//! The path below `/api/v1` or `/apis/{group}/{version}` resolved to a [`Target`]
//! (kube-apiserver's RequestInfo rules).

use crate::ApiServer;
use crate::errors::ApiResult;
use crate::request::Target;

/// Resolves the path below /api/v1 or /apis/G/V to a resource target (kube's RequestInfo rules:
/// `namespaces/NS/RESOURCE[/NAME[/SUB]]`, else `RESOURCE[/NAME[/SUB]]`; `namespaces/NAME/status`
/// and `/finalize` are the namespace's own subresources).
pub fn resolve(api: &ApiServer, group: &str, version: &str, rest: &str) -> ApiResult<Target> {
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    let (namespace, parts) = match parts.as_slice() {
        ["namespaces", _, sub] if group.is_empty() && matches!(*sub, "status" | "finalize") => {
            (None, &parts[..])
        }
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, &parts[..]),
    };
    let (resource, name, sub) = match parts {
        [r] => (*r, None, None),
        [r, n] => (*r, Some(n.to_string()), None),
        [r, n, s] => (*r, Some(n.to_string()), Some(s.to_string())),
        _ => return Err(crate::errors::route_not_found()),
    };
    let info = api
        .registry
        .get(group, version, resource)
        .ok_or_else(crate::errors::route_not_found)?;
    if namespace.is_some() && !info.namespaced {
        return Err(crate::errors::route_not_found());
    }
    if let Some(s) = &sub {
        let known = match s.as_str() {
            "status" => info.status,
            "scale" => info.scale.is_some(),
            "binding" | "log" | "eviction" => info.group.is_empty() && info.plural == "pods",
            "finalize" => info.group.is_empty() && info.plural == "namespaces",
            "token" => info.group.is_empty() && info.plural == "serviceaccounts",
            other => info
                .strategy
                .subresource_fields()
                .iter()
                .any(|(name, _)| *name == other),
        };
        if !known {
            return Err(crate::errors::route_not_found());
        }
    }
    Ok(Target {
        info,
        namespace,
        name,
        subresource: sub,
    })
}
