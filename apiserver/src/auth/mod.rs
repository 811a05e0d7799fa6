//! Who a request is and what it may do, before any handler sees it ([`crate::http::guard`]
//! runs both steps on every request).
//!
//! - **Authentication** ([`Auth::authenticate`]), as kube-apiserver's union of authenticators:
//!   a client certificate the TLS layer verified against the cluster CA (CN = user, O =
//!   groups; [`PeerCertificate`]), else a bearer token from the static token file
//!   ([`token_file`]), a bootstrap token ([`bootstrap_token`]) or a ServiceAccount token
//!   ([`service_account`]), else — when allowed —
//!   `system:anonymous` in `system:unauthenticated`.
//!   A bearer token that matches nothing is a 401, never anonymous.
//! - **Authorization** ([`Auth::authorize`]) of the request's [`attributes::Attributes`]:
//!   `system:masters` may do anything; otherwise [`rbac`] decides (or everything is allowed
//!   with `--authorization-mode AlwaysAllow`). A denial is a 403 worded as Kubernetes words
//!   it.
//!
//! The user rides on the request as an extension ([`UserInfo`]) for the handlers that need it:
//! the access reviews ([`reviews`]) and the RBAC escalation check ([`rbac::escalation`]).

pub mod attributes;
pub mod bootstrap_token;
pub mod impersonation;
pub mod node;
pub mod rbac;
pub mod reviews;
pub mod service_account;
pub mod token_file;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::http::{HeaderMap, header};
use serde::Serialize;

use crate::errors::ApiError;
use attributes::Attributes;

/// The user every request without credentials is (when anonymous requests are allowed).
pub const ANONYMOUS: &str = "system:anonymous";
/// The group of requests without credentials.
pub const UNAUTHENTICATED: &str = "system:unauthenticated";
/// The group every authenticated user is in.
pub const AUTHENTICATED: &str = "system:authenticated";
/// The group that may do anything, whatever RBAC says.
pub const MASTERS: &str = "system:masters";
/// Who requests without credentials are on a plain-HTTP loopback server (`--insecure-http`),
/// as on kube-apiserver's old insecure port.
pub const UNSECURED: &str = "system:unsecured";

/// An authenticated (or anonymous) user, as authentication.k8s.io's UserInfo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct UserInfo {
    pub username: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// `system:anonymous` in `system:unauthenticated`.
    pub fn anonymous() -> UserInfo {
        UserInfo {
            username: ANONYMOUS.into(),
            groups: vec![UNAUTHENTICATED.into()],
            ..UserInfo::default()
        }
    }

    /// An authenticated user: `groups` and `system:authenticated`.
    pub fn authenticated(username: &str, uid: &str, groups: &[String]) -> UserInfo {
        let mut all: Vec<String> = groups.to_vec();
        if !all.iter().any(|g| g == AUTHENTICATED) {
            all.push(AUTHENTICATED.into());
        }
        UserInfo {
            username: username.into(),
            uid: uid.into(),
            groups: all,
            extra: BTreeMap::new(),
        }
    }

    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}

/// The user of the verified client certificate of the connection a request came on: read
/// once per connection by [`crate::http::serve`], on HTTPS connections that presented one.
#[derive(Debug, Clone)]
pub struct PeerCertificate(pub Arc<UserInfo>);

impl PeerCertificate {
    /// The user a certificate's subject names (CN the user, O the groups); None without a CN.
    pub fn of(subject: &capstan_pki::der::Subject) -> Option<PeerCertificate> {
        (!subject.common_name.is_empty()).then(|| {
            PeerCertificate(Arc::new(UserInfo::authenticated(
                &subject.common_name,
                "",
                &subject.organizations,
            )))
        })
    }
}

/// How requests are authorized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Role-based access control (the default).
    #[default]
    Rbac,
    /// Every authenticated request is allowed (kube-apiserver's `AlwaysAllow`).
    AlwaysAllow,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "RBAC" => Ok(Mode::Rbac),
            "AlwaysAllow" => Ok(Mode::AlwaysAllow),
            other => Err(format!(
                "unknown authorization mode {other:?}: RBAC or AlwaysAllow"
            )),
        }
    }
}

/// The authentication and authorization settings (`--token-auth-file`, `--anonymous-auth`,
/// `--authorization-mode`).
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub anonymous: bool,
    /// Requests without credentials are [`UNSECURED`] in `system:masters` (plain HTTP on
    /// loopback only: `--insecure-http`; kubectl sends no credentials over plain HTTP).
    pub unsecured: bool,
    pub tokens: token_file::TokenFile,
    /// ServiceAccount tokens: issued through TokenRequest and accepted (none without a key).
    pub service_accounts: Option<service_account::ServiceAccountTokens>,
    pub mode: Mode,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            anonymous: true,
            unsecured: false,
            tokens: token_file::TokenFile::default(),
            service_accounts: None,
            mode: Mode::Rbac,
        }
    }
}

/// What anonymous requests may reach whatever RBAC says: the health and version endpoints
/// (Kubernetes grants them through the system:public-info-viewer role; here they are fixed).
pub const PUBLIC_PATHS: &[&str] = &["/healthz", "/livez", "/readyz", "/version"];

/// The server's authenticator and authorizer.
#[derive(Debug)]
pub struct Auth {
    pub config: AuthConfig,
    pub rbac: rbac::Rbac,
    /// Who requests without credentials are (anonymous, or unsecured on `--insecure-http`).
    nobody: Arc<UserInfo>,
}

/// An authorization decision and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: String,
}

impl Auth {
    pub fn new(config: AuthConfig) -> Auth {
        let nobody = Arc::new(if config.unsecured {
            UserInfo::authenticated(UNSECURED, "", &[MASTERS.into()])
        } else {
            UserInfo::anonymous()
        });
        Auth {
            config,
            rbac: rbac::Rbac::default(),
            nobody,
        }
    }

    /// Who sent the request: its client certificate, else its bearer token (the token file's,
    /// then a ServiceAccount's), else anonymous (when allowed). A token that matches nothing,
    /// or no credentials with anonymous requests refused, is a 401.
    pub async fn authenticate(
        &self,
        objects: &impl service_account::Objects,
        peer: Option<&PeerCertificate>,
        headers: &HeaderMap,
    ) -> Result<Arc<UserInfo>, ApiError> {
        if let Some(PeerCertificate(user)) = peer {
            return Ok(user.clone());
        }
        if let Some(token) = bearer_token(headers)? {
            return self.token_user(objects, token).await;
        }
        if self.config.unsecured || self.config.anonymous {
            Ok(self.nobody.clone())
        } else {
            Err(ApiError::unauthorized())
        }
    }

    /// The user of a bearer token (a request's, or a TokenReview's).
    pub async fn token_user(
        &self,
        objects: &impl service_account::Objects,
        token: &str,
    ) -> Result<Arc<UserInfo>, ApiError> {
        if let Some(user) = self.config.tokens.user(token) {
            return Ok(user);
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default();
        match bootstrap_token::authenticate(objects, token, now).await {
            Ok(Some(user)) => return Ok(Arc::new(user)),
            Ok(None) => {}
            Err(why) => {
                tracing::debug!(%why, "a bootstrap token was refused");
                return Err(ApiError::unauthorized());
            }
        }
        let Some(sa) = &self.config.service_accounts else {
            return Err(ApiError::unauthorized());
        };
        match sa.authenticate(objects, token, now).await {
            Ok(Some(user)) => Ok(Arc::new(user)),
            Ok(None) => Err(ApiError::unauthorized()),
            Err(why) => {
                tracing::debug!(%why, "a service account token was refused");
                Err(ApiError::unauthorized())
            }
        }
    }

    /// Whether `attrs` is allowed, and why.
    pub fn authorize(&self, api: &crate::ApiServer, attrs: &Attributes) -> Decision {
        if attrs.user.in_group(MASTERS) {
            return Decision {
                allowed: true,
                reason: format!("{MASTERS} may do anything"),
            };
        }
        if !attrs.resource_request && PUBLIC_PATHS.contains(&attrs.path.as_str()) {
            return Decision {
                allowed: true,
                reason: "a public endpoint".into(),
            };
        }
        if self.config.mode == Mode::Rbac
            && let Some(d) = node::decide(api, attrs)
        {
            return d;
        }
        match self.config.mode {
            Mode::AlwaysAllow => Decision {
                allowed: true,
                reason: "the AlwaysAllow authorization mode".into(),
            },
            Mode::Rbac => self.rbac.authorize(api, attrs),
        }
    }
}

/// The bearer token in an Authorization header; None without one (or with another scheme,
/// which Kubernetes ignores); a 401 for a malformed bearer header.
fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::unauthorized());
    }
    let Ok(text) = value.to_str() else {
        return Err(ApiError::unauthorized());
    };
    let mut parts = text.trim().splitn(2, ' ');
    let scheme = parts.next().unwrap_or_default();
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    let token = parts.next().unwrap_or_default().trim();
    if token.is_empty() || token.contains(char::is_whitespace) {
        return Err(ApiError::unauthorized());
    }
    Ok(Some(token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(auth: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for a in auth {
            if let Ok(v) = HeaderValue::from_bytes(a) {
                h.append(header::AUTHORIZATION, v);
            }
        }
        h
    }

    fn auth(anonymous: bool) -> Auth {
        let tokens =
            token_file::TokenFile::parse("t0ken,jane,u-1,\"dev,ops\"\nother,bob,u-2\n").unwrap();
        Auth::new(AuthConfig {
            anonymous,
            unsecured: false,
            tokens,
            service_accounts: None,
            mode: Mode::Rbac,
        })
    }

    /// No objects: no ServiceAccount token can name one.
    struct NoObjects;
    impl service_account::Objects for NoObjects {
        async fn object(
            &self,
            _: (&'static str, &'static str, &'static str),
            _: Option<&str>,
            _: &str,
        ) -> Option<serde_json::Value> {
            None
        }
    }

    #[tokio::test]
    async fn credentials_in_order_certificate_token_anonymous() {
        let a = auth(true);
        let cert = PeerCertificate::of(&capstan_pki::der::Subject {
            common_name: "alice".into(),
            organizations: vec!["admins".into()],
        })
        .unwrap();
        assert!(PeerCertificate::of(&capstan_pki::der::Subject::default()).is_none());
        let u = a
            .authenticate(&NoObjects, Some(&cert), &headers(&[b"Bearer nope"]))
            .await
            .unwrap();
        assert_eq!(u.username, "alice");
        assert_eq!(u.groups, vec!["admins", AUTHENTICATED]);
        let u = a
            .authenticate(&NoObjects, None, &headers(&[b"Bearer t0ken"]))
            .await
            .unwrap();
        assert_eq!((u.username.as_str(), u.uid.as_str()), ("jane", "u-1"));
        assert_eq!(u.groups, vec!["dev", "ops", AUTHENTICATED]);
        assert_eq!(
            *a.authenticate(&NoObjects, None, &headers(&[]))
                .await
                .unwrap(),
            UserInfo::anonymous()
        );
        // Another scheme is ignored, as Kubernetes does.
        assert_eq!(
            *a.authenticate(&NoObjects, None, &headers(&[b"Basic YTpi"]))
                .await
                .unwrap(),
            UserInfo::anonymous()
        );
        for bad in [
            &b"Bearer nope"[..],
            b"Bearer ",
            b"bearer a b",
            b"Bearer \xff\xfe",
        ] {
            let e = a
                .authenticate(&NoObjects, None, &headers(&[bad]))
                .await
                .unwrap_err();
            assert_eq!((e.code, e.reason), (401, "Unauthorized"), "{bad:?}");
        }
        let e = a
            .authenticate(
                &NoObjects,
                None,
                &headers(&[b"Bearer t0ken", b"Bearer other"]),
            )
            .await
            .unwrap_err();
        assert_eq!(e.code, 401);
        let e = auth(false)
            .authenticate(&NoObjects, None, &headers(&[]))
            .await
            .unwrap_err();
        assert_eq!(e.code, 401);
    }

    #[tokio::test]
    async fn fuzzed_authorization_headers_never_panic() {
        let a = auth(true);
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            let len = (seed % 24) as usize;
            let mut bytes = b"Bearer ".to_vec();
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                bytes.push((seed >> 24) as u8);
            }
            let start = (seed % 8) as usize;
            let _ = a
                .authenticate(
                    &NoObjects,
                    None,
                    &headers(&[&bytes[start.min(bytes.len())..]]),
                )
                .await;
        }
    }
}
