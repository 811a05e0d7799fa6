//! Every request is authenticated and authorized here before the router serves it (see
//! [`crate::auth`]): a 401 for bad credentials, a 403 naming user, verb and resource for a
//! denial, and otherwise the user rides on the request ([`UserInfo`] as an extension, and
//! [`REQUEST_USER`] for the handler's task) to the handler.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::ApiServer;
use crate::auth::attributes::Attributes;
use crate::auth::rbac::escalation::REQUEST_USER;
use crate::auth::{PeerCertificate, UserInfo};
use crate::errors::ApiError;

/// The authentication and authorization layer of [`super::router`].
pub async fn guard(State(api): State<Arc<ApiServer>>, mut req: Request, next: Next) -> Response {
    let user = match api
        .auth
        .authenticate(req.extensions().get::<PeerCertificate>(), req.headers())
    {
        Ok(u) => Arc::new(u),
        Err(e) => {
            api.count_auth("unauthorized");
            return e.into_response();
        }
    };
    let user = match crate::auth::impersonation::apply(&api, user, req.headers()) {
        Ok(u) => u,
        Err(e) => {
            api.count_auth("forbidden");
            return e.into_response();
        }
    };
    let attrs = Attributes::of(
        user.clone(),
        req.method().as_str(),
        req.uri().path(),
        req.uri().query(),
    );
    let decision = api.auth.authorize(&api, &attrs);
    if !decision.allowed {
        api.count_auth("forbidden");
        tracing::debug!(user = %user.username, verb = %attrs.verb, resource = %attrs.full_resource(), path = %attrs.path, "forbidden");
        return ApiError::denied(&attrs).into_response();
    }
    req.extensions_mut().insert::<Arc<UserInfo>>(user.clone());
    REQUEST_USER.scope(user, next.run(req)).await
}
