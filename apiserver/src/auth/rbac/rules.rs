//! PolicyRule matching, as Kubernetes' RBAC evaluates it: a rule allows a resource request
//! when its verbs, API groups, resources (`resource`, `resource/sub`, `*`, `*/sub`) and
//! resourceNames (none listed: any) all match; a non-resource request when its verbs and
//! nonResourceURLs (`/path` exactly, or a prefix ending in `*`) match. [`covers`] is the
//! escalation check's question: does one set of rules grant everything another does?

use k8s_openapi::api::rbac::v1::PolicyRule;

use crate::auth::attributes::Attributes;

fn has(list: &[String], want: &str) -> bool {
    list.iter().any(|v| v == "*" || v == want)
}

fn resource_matches(rule: &PolicyRule, resource: &str, sub: &str) -> bool {
    let Some(resources) = &rule.resources else {
        return false;
    };
    resources.iter().any(|r| {
        if r == "*" {
            return true;
        }
        if sub.is_empty() {
            return r == resource;
        }
        match r.split_once('/') {
            Some((res, s)) => s == sub && (res == resource || res == "*"),
            None => false,
        }
    })
}

fn name_matches(rule: &PolicyRule, name: &str) -> bool {
    match &rule.resource_names {
        None => true,
        Some(names) if names.is_empty() => true,
        Some(names) => !name.is_empty() && names.iter().any(|n| n == name),
    }
}

fn url_matches(urls: &[String], path: &str) -> bool {
    urls.iter().any(|u| {
        u == "*"
            || u == path
            || u.strip_suffix('*')
                .is_some_and(|prefix| path.starts_with(prefix))
    })
}

/// Whether `rule` allows `a`.
pub fn allows(rule: &PolicyRule, a: &Attributes) -> bool {
    if !has(&rule.verbs, &a.verb) {
        return false;
    }
    if a.resource_request {
        rule.api_groups
            .as_deref()
            .is_some_and(|g| has(g, &a.api_group))
            && resource_matches(rule, &a.resource, &a.subresource)
            && name_matches(rule, &a.name)
    } else {
        rule.non_resource_urls
            .as_deref()
            .is_some_and(|u| url_matches(u, &a.path))
    }
}

/// Whether `owner`'s rules grant everything `rule` grants (kube's `Covers`): every verb ×
/// group × resource × name (or verb × URL) of `rule`, taken literally (`*` is covered only
/// by `*`), is allowed by some rule of `owner`.
pub fn covers(owner: &[&PolicyRule], rule: &PolicyRule) -> bool {
    let one = |f: &dyn Fn(&PolicyRule) -> bool| owner.iter().any(|o| f(o));
    for verb in &rule.verbs {
        let verb_ok = |o: &PolicyRule| o.verbs.iter().any(|v| v == "*" || v == verb);
        if let Some(urls) = &rule.non_resource_urls {
            for url in urls {
                let ok = one(&|o| {
                    verb_ok(o)
                        && o.non_resource_urls.as_deref().is_some_and(|u| {
                            u.iter().any(|p| {
                                p == "*"
                                    || p == url
                                    || p.strip_suffix('*').is_some_and(|pre| {
                                        url.strip_suffix('*').unwrap_or(url).starts_with(pre)
                                    })
                            })
                        })
                });
                if !ok {
                    return false;
                }
            }
        }
        let groups = rule.api_groups.as_deref().unwrap_or_default();
        let resources = rule.resources.as_deref().unwrap_or_default();
        let names: Vec<&str> = match &rule.resource_names {
            Some(n) if !n.is_empty() => n.iter().map(String::as_str).collect(),
            _ => vec![""],
        };
        for group in groups {
            for resource in resources {
                let sub = resource.split_once('/').map_or("", |(_, s)| s);
                for name in &names {
                    let ok = one(&|o| {
                        verb_ok(o)
                            && o.api_groups
                                .as_deref()
                                .is_some_and(|g| g.iter().any(|x| x == "*" || x == group))
                            && o.resources.as_deref().is_some_and(|rs| {
                                rs.iter().any(|r| {
                                    r == "*"
                                        || r == resource
                                        || (!sub.is_empty() && r.strip_prefix("*/") == Some(sub))
                                })
                            })
                            && match &o.resource_names {
                                Some(n) if !n.is_empty() => {
                                    !name.is_empty() && n.iter().any(|x| x == name)
                                }
                                _ => true,
                            }
                    });
                    if !ok {
                        return false;
                    }
                }
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn rule(verbs: &[&str], groups: &[&str], resources: &[&str], names: &[&str]) -> PolicyRule {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        PolicyRule {
            verbs: v(verbs),
            api_groups: Some(v(groups)),
            resources: Some(v(resources)),
            resource_names: (!names.is_empty()).then(|| v(names)),
            non_resource_urls: None,
        }
    }

    fn url_rule(verbs: &[&str], urls: &[&str]) -> PolicyRule {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        PolicyRule {
            verbs: v(verbs),
            non_resource_urls: Some(v(urls)),
            ..PolicyRule::default()
        }
    }

    fn req(method: &str, path: &str) -> Attributes {
        Attributes::of(
            Arc::new(crate::auth::UserInfo::anonymous()),
            method,
            path,
            None,
        )
    }

    #[test]
    fn rules_match_verbs_groups_resources_subresources_and_names() {
        let pods = rule(&["get", "list"], &[""], &["pods"], &[]);
        assert!(allows(&pods, &req("GET", "/api/v1/namespaces/d/pods")));
        assert!(allows(&pods, &req("GET", "/api/v1/namespaces/d/pods/p")));
        assert!(!allows(
            &pods,
            &req("GET", "/api/v1/namespaces/d/pods/p/log")
        ));
        assert!(!allows(
            &pods,
            &req("DELETE", "/api/v1/namespaces/d/pods/p")
        ));
        assert!(!allows(
            &pods,
            &req("GET", "/apis/apps/v1/namespaces/d/deployments")
        ));
        let logs = rule(&["get"], &[""], &["pods/log"], &[]);
        assert!(allows(
            &logs,
            &req("GET", "/api/v1/namespaces/d/pods/p/log")
        ));
        assert!(!allows(&logs, &req("GET", "/api/v1/namespaces/d/pods/p")));
        let any_status = rule(&["update"], &["*"], &["*/status"], &[]);
        assert!(allows(
            &any_status,
            &req("PUT", "/apis/apps/v1/namespaces/d/deployments/x/status")
        ));
        assert!(!allows(
            &any_status,
            &req("PUT", "/apis/apps/v1/namespaces/d/deployments/x")
        ));
        let named = rule(&["get", "list"], &[""], &["configmaps"], &["one"]);
        assert!(allows(
            &named,
            &req("GET", "/api/v1/namespaces/d/configmaps/one")
        ));
        assert!(!allows(
            &named,
            &req("GET", "/api/v1/namespaces/d/configmaps/two")
        ));
        assert!(
            !allows(&named, &req("GET", "/api/v1/namespaces/d/configmaps")),
            "a list names nothing"
        );
        let urls = url_rule(&["get"], &["/healthz", "/apis/*"]);
        assert!(allows(&urls, &req("GET", "/healthz")));
        assert!(allows(&urls, &req("GET", "/apis/apps/v1")));
        assert!(!allows(&urls, &req("GET", "/metrics")));
        assert!(
            !allows(&urls, &req("GET", "/api/v1/namespaces/d/pods")),
            "URLs never grant resources"
        );
    }

    #[test]
    fn covering_takes_the_asked_rule_literally() {
        let admin = rule(&["*"], &["*"], &["*"], &[]);
        let view = rule(
            &["get", "list", "watch"],
            &["", "apps"],
            &["pods", "deployments"],
            &[],
        );
        let edit_pods = rule(&["create", "delete"], &[""], &["pods"], &[]);
        assert!(covers(&[&admin], &edit_pods));
        assert!(covers(
            &[&view],
            &rule(&["get"], &["apps"], &["deployments"], &[])
        ));
        assert!(!covers(&[&view], &edit_pods));
        assert!(
            !covers(&[&view], &rule(&["get"], &["*"], &["pods"], &[])),
            "* needs *"
        );
        assert!(covers(
            &[&view, &edit_pods],
            &rule(&["get", "create"], &[""], &["pods"], &[])
        ));
        let one = rule(&["get"], &[""], &["secrets"], &["a"]);
        assert!(covers(
            &[&one],
            &rule(&["get"], &[""], &["secrets"], &["a"])
        ));
        assert!(!covers(&[&one], &rule(&["get"], &[""], &["secrets"], &[])));
        let subs = rule(&["get"], &[""], &["*/status"], &[]);
        assert!(covers(
            &[&subs],
            &rule(&["get"], &[""], &["pods/status"], &[])
        ));
        assert!(!covers(&[&subs], &rule(&["get"], &[""], &["pods"], &[])));
        let urls = url_rule(&["get"], &["/apis/*"]);
        assert!(covers(&[&urls], &url_rule(&["get"], &["/apis/apps"])));
        assert!(covers(&[&urls], &url_rule(&["get"], &["/apis/x/*"])));
        assert!(!covers(&[&urls], &url_rule(&["get"], &["/metrics"])));
        assert!(!covers(&[&urls], &url_rule(&["post"], &["/apis/apps"])));
    }
}
