//! What a request asks to do, read from its method, path and query alone — kube-apiserver's
//! RequestInfoFactory — so it is authorized before anything else reads it.

use std::sync::Arc;

use super::UserInfo;

/// A request's authorization attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes {
    pub user: Arc<UserInfo>,
    /// get, list, watch, create, update, patch, delete, deletecollection; for non-resource
    /// requests the lower-cased method.
    pub verb: String,
    /// A request for a resource (below /api/v1 or /apis/GROUP/VERSION with a resource).
    pub resource_request: bool,
    pub api_group: String,
    pub api_version: String,
    pub namespace: String,
    pub resource: String,
    pub subresource: String,
    pub name: String,
    /// The URL path (what non-resource rules match).
    pub path: String,
}

/// Namespaces' own subresources (`/api/v1/namespaces/NAME/status`).
const NAMESPACE_SUBRESOURCES: &[&str] = &["status", "finalize"];

impl Attributes {
    /// The attributes of `method path?query` sent by `user`.
    pub fn of(user: Arc<UserInfo>, method: &str, path: &str, query: Option<&str>) -> Attributes {
        let mut a = Attributes {
            user,
            verb: method.to_ascii_lowercase(),
            resource_request: false,
            api_group: String::new(),
            api_version: String::new(),
            namespace: String::new(),
            resource: String::new(),
            subresource: String::new(),
            name: String::new(),
            path: path.to_string(),
        };
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let rest = match parts.as_slice() {
            ["api", version, rest @ ..] => {
                a.api_version = version.to_string();
                rest
            }
            ["apis", group, version, rest @ ..] => {
                a.api_group = group.to_string();
                a.api_version = version.to_string();
                rest
            }
            _ => return a,
        };
        if rest.is_empty() || rest.iter().any(|p| p.is_empty()) {
            return a; // discovery (/api/v1, /apis/G/V) or a malformed path
        }
        a.resource_request = true;
        let mut rest = rest;
        // The deprecated watch prefix: /api/v1/watch/...
        let mut watch_prefix = false;
        if rest[0] == "watch" && rest.len() > 1 {
            watch_prefix = true;
            rest = &rest[1..];
        }
        if rest[0] == "namespaces" && rest.len() >= 2 {
            a.namespace = rest[1].to_string();
            if rest.len() > 2 && !NAMESPACE_SUBRESOURCES.contains(&rest[2]) {
                rest = &rest[2..];
            }
        }
        a.resource = rest[0].to_string();
        if let Some(name) = rest.get(1) {
            a.name = name.to_string();
        }
        if let Some(sub) = rest.get(2) {
            a.subresource = sub.to_string();
        }
        let q: Vec<(String, String)> = query
            .and_then(|q| serde_urlencoded::from_str(q).ok())
            .unwrap_or_default();
        let param = |k: &str| q.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        a.verb = match method {
            "GET" | "HEAD" if watch_prefix || matches!(param("watch"), Some("true" | "1")) => {
                "watch"
            }
            "GET" | "HEAD" if a.name.is_empty() => "list",
            "GET" | "HEAD" => "get",
            "POST" => "create",
            "PUT" => "update",
            "PATCH" => "patch",
            "DELETE" if a.name.is_empty() => "deletecollection",
            "DELETE" => "delete",
            _ => "",
        }
        .to_string();
        if a.verb.is_empty() {
            a.verb = method.to_ascii_lowercase();
        }
        // A list or watch of one object by name is authorized as that object's.
        if matches!(a.verb.as_str(), "list" | "watch")
            && let Some(fs) = param("fieldSelector")
            && let Some(name) = fs.split(',').find_map(|t| t.strip_prefix("metadata.name="))
        {
            a.name = name.to_string();
        }
        a
    }

    /// The attributes of a request for `resource[/subresource]` in `group` (what reviews,
    /// impersonation and the escalation check ask about).
    pub fn resource(
        user: Arc<UserInfo>,
        verb: &str,
        group: &str,
        namespace: &str,
        resource: &str,
        subresource: &str,
        name: &str,
    ) -> Attributes {
        Attributes {
            user,
            verb: verb.into(),
            resource_request: true,
            api_group: group.into(),
            api_version: String::new(),
            namespace: namespace.into(),
            resource: resource.into(),
            subresource: subresource.into(),
            name: name.into(),
            path: String::new(),
        }
    }

    /// The attributes of a request for a path that is not a resource.
    pub fn non_resource(user: Arc<UserInfo>, verb: &str, path: &str) -> Attributes {
        let mut a = Attributes::resource(user, verb, "", "", "", "", "");
        a.resource_request = false;
        a.path = path.into();
        a
    }

    /// `resource` or `resource/subresource`.
    pub fn full_resource(&self) -> String {
        if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        }
    }

    /// Kubernetes' wording of a denial: `User "jane" cannot list resource "pods" in API group
    /// "" in the namespace "default"`.
    pub fn denial(&self) -> String {
        let who = format!("User \"{}\"", self.user.username);
        if !self.resource_request {
            return format!("{who} cannot {} path \"{}\"", self.verb, self.path);
        }
        let mut s = format!(
            "{who} cannot {} resource \"{}\" in API group \"{}\"",
            self.verb,
            self.full_resource(),
            self.api_group
        );
        if self.namespace.is_empty() {
            s.push_str(" at the cluster scope");
        } else {
            s.push_str(&format!(" in the namespace \"{}\"", self.namespace));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(method: &str, path: &str, query: Option<&str>) -> Attributes {
        Attributes::of(Arc::new(UserInfo::anonymous()), method, path, query)
    }

    #[test]
    fn paths_read_as_kube_apiserver_reads_them() {
        type Want<'a> = (&'a str, &'a str, &'a str, &'a str, &'a str, &'a str);
        type Case<'a> = (&'a str, &'a str, Option<&'a str>, Want<'a>);
        let cases: &[Case] = &[
            (
                "GET",
                "/api/v1/namespaces/d/pods",
                None,
                ("list", "", "d", "pods", "", ""),
            ),
            (
                "GET",
                "/api/v1/namespaces/d/pods",
                Some("watch=true"),
                ("watch", "", "d", "pods", "", ""),
            ),
            (
                "GET",
                "/api/v1/watch/namespaces/d/pods/p",
                None,
                ("watch", "", "d", "pods", "p", ""),
            ),
            (
                "GET",
                "/api/v1/namespaces/d/pods/p/log",
                None,
                ("get", "", "d", "pods", "p", "log"),
            ),
            (
                "POST",
                "/apis/apps/v1/namespaces/d/deployments",
                None,
                ("create", "apps", "d", "deployments", "", ""),
            ),
            (
                "PUT",
                "/apis/apps/v1/namespaces/d/deployments/x/scale",
                None,
                ("update", "apps", "d", "deployments", "x", "scale"),
            ),
            (
                "DELETE",
                "/api/v1/namespaces/d/pods",
                None,
                ("deletecollection", "", "d", "pods", "", ""),
            ),
            (
                "GET",
                "/api/v1/namespaces/d",
                None,
                ("get", "", "d", "namespaces", "d", ""),
            ),
            (
                "PUT",
                "/api/v1/namespaces/d/finalize",
                None,
                ("update", "", "d", "namespaces", "d", "finalize"),
            ),
            (
                "GET",
                "/api/v1/nodes",
                Some("fieldSelector=metadata.name%3Dn1"),
                ("list", "", "", "nodes", "n1", ""),
            ),
            (
                "PATCH",
                "/apis/rbac.authorization.k8s.io/v1/clusterroles/admin",
                None,
                (
                    "patch",
                    "rbac.authorization.k8s.io",
                    "",
                    "clusterroles",
                    "admin",
                    "",
                ),
            ),
        ];
        for (m, p, q, (verb, group, ns, res, name, sub)) in cases {
            let a = of(m, p, *q);
            assert!(a.resource_request, "{p}");
            assert_eq!(
                (
                    a.verb.as_str(),
                    a.api_group.as_str(),
                    a.namespace.as_str(),
                    a.resource.as_str(),
                    a.name.as_str(),
                    a.subresource.as_str()
                ),
                (*verb, *group, *ns, *res, *name, *sub),
                "{m} {p}"
            );
        }
        for p in [
            "/healthz",
            "/api",
            "/apis",
            "/api/v1",
            "/apis/apps/v1",
            "/openapi/v3/apis/apps/v1",
            "/api/v1//pods",
        ] {
            let a = of("GET", p, None);
            assert!(!a.resource_request, "{p}");
            assert_eq!(a.verb, "get");
        }
    }

    #[test]
    fn denials_are_worded_as_kubernetes_words_them() {
        let mut a = of("GET", "/api/v1/namespaces/default/pods", None);
        a.user = Arc::new(UserInfo::authenticated("jane", "", &[]));
        assert_eq!(
            a.denial(),
            "User \"jane\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
        );
        let n = of("GET", "/apis/apps/v1/deployments", None);
        assert!(
            n.denial()
                .ends_with("resource \"deployments\" in API group \"apps\" at the cluster scope")
        );
        let p = of("GET", "/metrics", None);
        assert_eq!(
            p.denial(),
            "User \"system:anonymous\" cannot get path \"/metrics\""
        );
    }
}
