//! ServiceAccount tokens, as kube-apiserver issues and checks them (pkg/serviceaccount):
//! signed JWTs ([`capstan_pki::jwt`]) naming the account, bound to a Pod, Secret or Node, with
//! an audience and an expiry.
//!
//! - **Issuing** ([`ServiceAccountTokens::issue`]) is the TokenRequest API's work
//!   ([`crate::rest::token_request`]): `kubectl create token`, and the node agent for a pod's
//!   projected token.
//! - **Authenticating** ([`ServiceAccountTokens::authenticate`]): the signature, the issuer,
//!   an audience the API server accepts and the time window (60 s of clock skew allowed, as
//!   go-jose's default leeway) are checked, then the objects the token names must still be
//!   there with the same UIDs — the ServiceAccount, and the Pod, Secret or Node it is bound to
//!   (a pod being deleted for more than 60 s no longer counts). Deleting any of them revokes
//!   the token. The user is `system:serviceaccount:NS:NAME` in `system:serviceaccounts` and
//!   `system:serviceaccounts:NS`, with the pod's name and UID, the node's, and the token's id
//!   as extras.

use std::collections::BTreeMap;
use std::sync::Arc;

use capstan_pki::jwt::{JwtError, SigningKey, Verifier};
use serde_json::{Value, json};

use super::UserInfo;
use crate::object::ObjectExt;

/// The issuer kube-apiserver's `--service-account-issuer` usually names; also the default
/// audience.
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The group of every ServiceAccount.
pub const SERVICE_ACCOUNTS: &str = "system:serviceaccounts";
/// How far a token's times may be off this server's clock (go-jose's DefaultLeeway).
pub const LEEWAY_SECONDS: i64 = 60;

/// `system:serviceaccount:NS:NAME`.
pub fn username(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// Reads the objects a token names (the API server's watch caches; a map in tests).
pub trait Objects: Sync {
    /// The object of `resource` (group, version, plural) by namespace and name, if there is one.
    fn object(
        &self,
        resource: (&'static str, &'static str, &'static str),
        namespace: Option<&str>,
        name: &str,
    ) -> impl Future<Output = Option<Value>> + Send;
}

/// Through the watch caches, consistently ([`crate::ApiServer::get`]).
impl Objects for crate::ApiServer {
    async fn object(
        &self,
        (group, version, plural): (&'static str, &'static str, &'static str),
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let info = self.registry.get(group, version, plural)?;
        let target = crate::request::Target {
            info,
            namespace: namespace.map(str::to_string),
            name: Some(name.to_string()),
            subresource: None,
        };
        self.get(&target).await.ok()
    }
}

/// What a token is bound to besides its ServiceAccount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound {
    /// `Pod`, `Secret` or `Node`.
    pub kind: String,
    pub name: String,
    pub uid: String,
}

/// A token to issue.
#[derive(Debug, Clone)]
pub struct Issue<'a> {
    pub service_account: &'a Value,
    pub audiences: &'a [String],
    pub expiration_seconds: i64,
    pub bound: Option<Bound>,
    /// The node of a bound pod (name, uid), recorded in the token as Kubernetes does.
    pub node: Option<(String, String)>,
    pub now: i64,
}

/// The API server's ServiceAccount token settings (`--service-account-signing-key-file`,
/// `--service-account-issuer`, `--api-audiences`, `--service-account-max-token-expiration`).
#[derive(Clone)]
pub struct ServiceAccountTokens {
    key: Arc<SigningKey>,
    verifier: Verifier,
    pub issuer: String,
    pub audiences: Vec<String>,
    /// The longest a token may last (seconds); longer requests are cut to this.
    pub max_expiration: Option<i64>,
}

impl std::fmt::Debug for ServiceAccountTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountTokens")
            .field("issuer", &self.issuer)
            .field("audiences", &self.audiences)
            .finish_non_exhaustive()
    }
}

impl ServiceAccountTokens {
    /// Tokens signed by `key`, issued by [`DEFAULT_ISSUER`] for that audience.
    pub fn new(key: SigningKey) -> ServiceAccountTokens {
        ServiceAccountTokens {
            verifier: key.verifier(),
            key: Arc::new(key),
            issuer: DEFAULT_ISSUER.into(),
            audiences: vec![DEFAULT_ISSUER.into()],
            max_expiration: None,
        }
    }

    /// A signed token and when it expires (unix seconds).
    pub fn issue(&self, req: &Issue<'_>) -> Result<(String, i64), String> {
        let sa = req.service_account;
        let ns = sa.namespace().unwrap_or_default();
        let name = sa.name().unwrap_or_default();
        let exp = req.now + req.expiration_seconds;
        let mut private = json!({
            "namespace": ns,
            "serviceaccount": {"name": name, "uid": sa.meta_str("uid").unwrap_or_default()},
        });
        if let Some(b) = &req.bound {
            let key = b.kind.to_ascii_lowercase();
            private[key] = json!({"name": b.name, "uid": b.uid});
        }
        if let Some((node, uid)) = &req.node {
            private["node"] = json!({"name": node, "uid": uid});
        }
        let claims = json!({
            "aud": req.audiences,
            "exp": exp,
            "iat": req.now,
            "nbf": req.now,
            "iss": self.issuer,
            "jti": uuid::Uuid::new_v4().to_string(),
            "kubernetes.io": private,
            "sub": username(ns, name),
        });
        let token = self.key.sign(&claims).map_err(|e| e.to_string())?;
        Ok((token, exp))
    }

    /// The user of a ServiceAccount token. `Ok(None)`: not a JWT, so not this authenticator's;
    /// `Err(why)`: a JWT this server does not accept (a 401; `why` is logged, not sent).
    pub async fn authenticate(
        &self,
        objects: &impl Objects,
        token: &str,
        now: i64,
    ) -> Result<Option<UserInfo>, String> {
        let claims = match self.verifier.verify(token) {
            Ok(c) => c,
            Err(JwtError::Malformed) => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        if claims["iss"] != self.issuer.as_str() {
            return Err(format!("issuer {} is not {}", claims["iss"], self.issuer));
        }
        let audiences: Vec<&str> = match &claims["aud"] {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        if !audiences
            .iter()
            .any(|a| self.audiences.iter().any(|b| b == a))
        {
            return Err("token audiences are not this server's".into());
        }
        let (Some(exp), nbf) = (claims["exp"].as_i64(), claims["nbf"].as_i64()) else {
            return Err("no expiry".into());
        };
        if now > exp + LEEWAY_SECONDS {
            return Err("token has expired".into());
        }
        if nbf.is_some_and(|nbf| now + LEEWAY_SECONDS < nbf) {
            return Err("token is not valid yet".into());
        }
        let private = &claims["kubernetes.io"];
        let ns = private["namespace"].as_str().unwrap_or_default();
        let sa_name = private["serviceaccount"]["name"]
            .as_str()
            .unwrap_or_default();
        let sa_uid = private["serviceaccount"]["uid"]
            .as_str()
            .unwrap_or_default();
        if ns.is_empty() || sa_name.is_empty() || claims["sub"] != username(ns, sa_name).as_str() {
            return Err("not a service account token".into());
        }
        let sa = objects
            .object(("", "v1", "serviceaccounts"), Some(ns), sa_name)
            .await
            .ok_or_else(|| format!("service account {ns}/{sa_name} has been deleted"))?;
        if sa.meta_str("uid").unwrap_or_default() != sa_uid {
            return Err(format!(
                "service account UID ({sa_uid}) does not match the current one"
            ));
        }
        let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (kind, resource, namespace) in [
            ("pod", ("", "v1", "pods"), Some(ns)),
            ("secret", ("", "v1", "secrets"), Some(ns)),
            ("node", ("", "v1", "nodes"), None),
        ] {
            let Some(name) = private[kind]["name"].as_str() else {
                continue;
            };
            let uid = private[kind]["uid"].as_str().unwrap_or_default();
            let live = objects.object(resource, namespace, name).await;
            let current = live.as_ref().filter(|o| o.meta_str("uid") == Some(uid));
            // The node is informational for a pod-bound token; it must match only when the
            // token is bound to the node itself.
            let required = kind != "node" || private["pod"].is_null();
            match current {
                None if required => {
                    return Err(format!("the {kind} {name} the token is bound to is gone"));
                }
                Some(o) if kind == "pod" && deleted_long_ago(o, now) => {
                    return Err(format!("the pod {name} the token is bound to was deleted"));
                }
                _ => {}
            }
            extra.insert(
                format!("authentication.kubernetes.io/{kind}-name"),
                vec![name.into()],
            );
            extra.insert(
                format!("authentication.kubernetes.io/{kind}-uid"),
                vec![uid.into()],
            );
        }
        extra.remove("authentication.kubernetes.io/secret-name");
        extra.remove("authentication.kubernetes.io/secret-uid");
        if let Some(jti) = claims["jti"].as_str() {
            extra.insert(
                "authentication.kubernetes.io/credential-id".into(),
                vec![format!("JTI={jti}")],
            );
        }
        let mut user = UserInfo::authenticated(
            &username(ns, sa_name),
            sa_uid,
            &[SERVICE_ACCOUNTS.into(), format!("{SERVICE_ACCOUNTS}:{ns}")],
        );
        user.extra = extra;
        Ok(Some(user))
    }
}

/// A pod whose deletion began more than a minute ago no longer vouches for its tokens.
fn deleted_long_ago(pod: &Value, now: i64) -> bool {
    pod["metadata"]["deletionTimestamp"]
        .as_str()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .is_some_and(|t| t.as_second() + LEEWAY_SECONDS < now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Map(Mutex<BTreeMap<String, Value>>);

    impl Map {
        fn put(&self, plural: &str, obj: Value) {
            let key = format!(
                "{plural}/{}/{}",
                obj.namespace().unwrap_or_default(),
                obj.name().unwrap_or_default()
            );
            self.0.lock().unwrap().insert(key, obj);
        }
        fn remove(&self, plural: &str, ns: &str, name: &str) {
            self.0
                .lock()
                .unwrap()
                .remove(&format!("{plural}/{ns}/{name}"));
        }
    }

    impl Objects for Map {
        async fn object(
            &self,
            (_, _, plural): (&'static str, &'static str, &'static str),
            namespace: Option<&str>,
            name: &str,
        ) -> Option<Value> {
            let key = format!("{plural}/{}/{name}", namespace.unwrap_or_default());
            self.0.lock().unwrap().get(&key).cloned()
        }
    }

    fn tokens() -> ServiceAccountTokens {
        ServiceAccountTokens::new(
            SigningKey::from_pem(&SigningKey::generate_pem().unwrap()).unwrap(),
        )
    }

    fn sa() -> Value {
        json!({"metadata": {"name": "reader", "namespace": "ns", "uid": "sa-1"}})
    }

    fn pod(uid: &str) -> Value {
        json!({"metadata": {"name": "web", "namespace": "ns", "uid": uid}, "spec": {"nodeName": "n1"}})
    }

    const NOW: i64 = 1_800_000_000;

    fn issue(t: &ServiceAccountTokens, bound: Option<Bound>, lasts: i64) -> String {
        let sa = sa();
        let node = bound
            .as_ref()
            .filter(|b| b.kind == "Pod")
            .map(|_| ("n1".to_string(), "node-1".to_string()));
        t.issue(&Issue {
            service_account: &sa,
            audiences: &t.audiences,
            expiration_seconds: lasts,
            bound,
            node,
            now: NOW,
        })
        .unwrap()
        .0
    }

    fn pod_bound(uid: &str) -> Option<Bound> {
        Some(Bound {
            kind: "Pod".into(),
            name: "web".into(),
            uid: uid.into(),
        })
    }

    #[tokio::test]
    async fn a_pod_bound_token_is_the_account_until_the_pod_goes() {
        let t = tokens();
        let objects = Map::default();
        objects.put("serviceaccounts", sa());
        objects.put("pods", pod("pod-1"));
        let token = issue(&t, pod_bound("pod-1"), 3600);
        let user = t
            .authenticate(&objects, &token, NOW + 10)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(user.username, "system:serviceaccount:ns:reader");
        assert_eq!(user.uid, "sa-1");
        assert_eq!(
            user.groups,
            [
                "system:serviceaccounts",
                "system:serviceaccounts:ns",
                "system:authenticated"
            ]
        );
        assert_eq!(user.extra["authentication.kubernetes.io/pod-name"], ["web"]);
        assert_eq!(
            user.extra["authentication.kubernetes.io/pod-uid"],
            ["pod-1"]
        );
        // The node is recorded, though no Node object is needed for a pod-bound token.
        assert_eq!(user.extra["authentication.kubernetes.io/node-name"], ["n1"]);
        assert!(user.extra["authentication.kubernetes.io/credential-id"][0].starts_with("JTI="));

        // Expired (past the leeway), not yet valid, another audience: refused.
        assert!(
            t.authenticate(&objects, &token, NOW + 3600 + 61)
                .await
                .is_err()
        );
        assert!(
            t.authenticate(&objects, &token, NOW + 3600 + 59)
                .await
                .is_ok()
        );
        assert!(t.authenticate(&objects, &token, NOW - 61).await.is_err());
        let mut other = t.clone();
        other.audiences = vec!["https://elsewhere".into()];
        assert!(other.authenticate(&objects, &token, NOW).await.is_err());
        let mut other = t.clone();
        other.issuer = "https://elsewhere".into();
        assert!(other.authenticate(&objects, &token, NOW).await.is_err());

        // A pod recreated under the same name has another UID: the token is revoked.
        objects.put("pods", pod("pod-2"));
        let e = t.authenticate(&objects, &token, NOW).await.unwrap_err();
        assert!(e.contains("pod web"), "{e}");
        // A pod deleted more than a minute ago no longer vouches for it either.
        let mut deleting = pod("pod-1");
        deleting["metadata"]["deletionTimestamp"] = json!("2027-01-15T08:00:00Z");
        objects.put("pods", deleting);
        let at = "2027-01-15T08:00:00Z"
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_second();
        assert!(t.authenticate(&objects, &token, at + 30).await.is_ok());
        assert!(t.authenticate(&objects, &token, at + 61).await.is_err());
        // Nor does a deleted account.
        objects.put("pods", pod("pod-1"));
        objects.remove("serviceaccounts", "ns", "reader");
        assert!(t.authenticate(&objects, &token, NOW).await.is_err());
    }

    #[tokio::test]
    async fn other_tokens_are_not_this_authenticators() {
        let t = tokens();
        let objects = Map::default();
        objects.put("serviceaccounts", sa());
        assert_eq!(t.authenticate(&objects, "t0ken", NOW).await, Ok(None));
        // A JWT from another signer is refused, not passed on.
        let token = issue(&tokens(), None, 3600);
        assert!(t.authenticate(&objects, &token, NOW).await.is_err());
        // An unbound token is the account's while the account lives.
        let token = issue(&t, None, 3600);
        let user = t
            .authenticate(&objects, &token, NOW)
            .await
            .unwrap()
            .unwrap();
        assert!(
            !user
                .extra
                .contains_key("authentication.kubernetes.io/pod-name")
        );
    }
}
