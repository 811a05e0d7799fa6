//! Every request is authenticated and authorized here before the router serves it (see
//! [`crate::auth`]): a 401 for bad credentials, a 403 naming user, verb and resource for a
//! denial, and otherwise the user rides on the request ([`UserInfo`] as an extension, and
//! [`REQUEST_USER`] for the handler's task) to the handler. Each request — refused or served —
//! is written to the audit log when there is one ([`crate::audit`]).

use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::ApiServer;
use crate::audit::{AuditAnnotations, Level, PeerAddr, Record};
use crate::auth::attributes::Attributes;
use crate::auth::rbac::escalation::REQUEST_USER;
use crate::auth::{PeerCertificate, UserInfo};
use crate::errors::ApiError;

use super::inflight;

/// The authentication and authorization layer of [`super::router`].
pub async fn guard(State(api): State<Arc<ApiServer>>, req: Request, next: Next) -> Response {
    let received = SystemTime::now();
    let authenticated = api
        .auth
        .authenticate(
            &*api,
            req.extensions().get::<PeerCertificate>(),
            req.headers(),
        )
        .await
        .and_then(|u| crate::auth::impersonation::apply(&api, u, req.headers()));
    let user = match authenticated {
        Ok(u) => u,
        Err(e) => {
            api.count_auth(if e.code == 401 {
                "unauthorized"
            } else {
                "forbidden"
            });
            // Audited as nobody in particular: who it claimed to be is unknown.
            let attrs = attributes(Arc::new(UserInfo::default()), &req);
            audit(&api, &attrs, &req, None, e.code, received, Level::Metadata);
            return e.into_response();
        }
    };
    let attrs = attributes(user.clone(), &req);
    let level = api
        .audit
        .as_ref()
        .map_or(Level::None, |a| a.policy.level(&attrs));
    let decision = api.auth.authorize(&api, &attrs);
    if !decision.allowed {
        api.count_auth("forbidden");
        tracing::debug!(user = %user.username, verb = %attrs.verb, resource = %attrs.full_resource(), path = %attrs.path, "forbidden");
        audit(&api, &attrs, &req, None, 403, received, level);
        let mut e = ApiError::denied(&attrs);
        // The node authorizer says why, as Kubernetes' does ("...: node 'n1' has no
        // relationship with ..."); RBAC denials carry no reason.
        if crate::auth::node::explains(&attrs, &decision) {
            e.message = format!("{}: {}", e.message, decision.reason);
        }
        return e.into_response();
    }
    // CertificateApproval: approving needs `approve` on the request's signer too.
    if let Err(e) = crate::certificates::check_approval(&api, &attrs) {
        api.count_auth("forbidden");
        audit(&api, &attrs, &req, None, 403, received, level);
        return e.into_response();
    }
    // The in-flight limits (long-running requests, health checks and system:masters —
    // exempt in API Priority and Fairness too — are not counted).
    let exempt = crate::audit::long_running(&attrs, req.uri().query())
        || (!attrs.resource_request && crate::auth::PUBLIC_PATHS.contains(&attrs.path.as_str()))
        || attrs.user.in_group(crate::auth::MASTERS);
    let seat = if exempt {
        None
    } else {
        match api
            .inflight
            .admit(&attrs.user.username, inflight::mutating(&attrs.verb))
        {
            Some(seat) => Some(seat),
            None => {
                api.count_auth("too_many_requests");
                audit(&api, &attrs, &req, None, 429, received, level);
                return ApiError::overloaded().into_response();
            }
        }
    };
    // At level Request the body is logged: read it here and hand it on.
    let (mut req, body) = if level >= Level::Request
        && matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH)
    {
        let (parts, body) = req.into_parts();
        match crate::body::read_body(body).await {
            Ok(bytes) => (
                Request::from_parts(parts, Body::from(bytes.clone())),
                Some(bytes),
            ),
            Err(e) => {
                let req = Request::from_parts(parts, Body::empty());
                audit(&api, &attrs, &req, None, e.code, received, level);
                return e.into_response();
            }
        }
    } else {
        (req, None)
    };
    req.extensions_mut().insert::<Arc<UserInfo>>(user.clone());
    // What the audit line needs of the request, taken before the handler consumes it.
    let seen = (level > Level::None).then(|| Seen::of(&req));
    let response = REQUEST_USER.scope(user, next.run(req)).await;
    if let Some(seen) = seen {
        let code = response.status().as_u16();
        let annotations = response.extensions().get::<AuditAnnotations>();
        record(
            &api,
            &attrs,
            &seen,
            body.as_deref(),
            code,
            received,
            (level, annotations),
        );
    }
    match seat {
        Some(seat) => response.map(|body| Body::new(super::serve::Holding { body, held: seat })),
        None => response,
    }
}

fn attributes(user: Arc<UserInfo>, req: &Request) -> Attributes {
    Attributes::of(
        user,
        req.method().as_str(),
        req.uri().path(),
        req.uri().query(),
    )
}

/// The parts of a request an audit line names.
struct Seen {
    uri: String,
    source: Option<std::net::SocketAddr>,
    user_agent: String,
    query: Option<String>,
}

impl Seen {
    fn of(req: &Request) -> Seen {
        Seen {
            uri: req.uri().to_string(),
            source: req.extensions().get::<PeerAddr>().map(|p| p.0),
            user_agent: req
                .headers()
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string(),
            query: req.uri().query().map(str::to_string),
        }
    }
}

/// Audits a request refused or failed before its handler.
fn audit(
    api: &ApiServer,
    attrs: &Attributes,
    req: &Request,
    body: Option<&[u8]>,
    code: u16,
    received: SystemTime,
    level: Level,
) {
    if api.audit.is_some() {
        record(
            api,
            attrs,
            &Seen::of(req),
            body,
            code,
            received,
            (level, None),
        );
    }
}

fn record(
    api: &ApiServer,
    attrs: &Attributes,
    seen: &Seen,
    body: Option<&[u8]>,
    code: u16,
    received: SystemTime,
    (level, annotations): (Level, Option<&AuditAnnotations>),
) {
    let Some(log) = &api.audit else { return };
    // A request refused before anyone was known is logged whatever the policy says.
    let level = if attrs.user.username.is_empty() {
        level.max(Level::Metadata)
    } else {
        level
    };
    log.record(&Record {
        attrs,
        level,
        uri: &seen.uri,
        source: seen.source,
        user_agent: &seen.user_agent,
        code,
        received,
        long_running: crate::audit::long_running(attrs, seen.query.as_deref()),
        body,
        annotations,
    });
}
