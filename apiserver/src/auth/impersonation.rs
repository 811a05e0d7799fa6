//! Impersonation (`kubectl --as USER --as-group GROUP`): the `Impersonate-User`,
//! `Impersonate-Group`, `Impersonate-Uid` and `Impersonate-Extra-KEY` headers make the request
//! someone else's, when its sender may `impersonate` each of them (users, groups,
//! serviceaccounts in the core group; uids and userextras/KEY in authentication.k8s.io), as
//! kube-apiserver's impersonation filter does.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::http::HeaderMap;

use super::attributes::Attributes;
use super::{ANONYMOUS, AUTHENTICATED, UserInfo};
use crate::ApiServer;
use crate::errors::ApiError;

const USER: &str = "impersonate-user";
const GROUP: &str = "impersonate-group";
const UID: &str = "impersonate-uid";
const EXTRA: &str = "impersonate-extra-";

fn check(
    api: &ApiServer,
    who: &Arc<UserInfo>,
    group: &str,
    resource: &str,
    sub: &str,
    namespace: &str,
    name: &str,
) -> Result<(), ApiError> {
    let a = Attributes::resource(
        who.clone(),
        "impersonate",
        group,
        namespace,
        resource,
        sub,
        name,
    );
    if api.auth.authorize(api, &a).allowed {
        Ok(())
    } else {
        Err(ApiError::denied(&a))
    }
}

fn text(v: &axum::http::HeaderValue) -> Result<String, ApiError> {
    v.to_str()
        .map(str::to_string)
        .map_err(|_| ApiError::bad_request("impersonation headers must be ASCII"))
}

/// The user `who` acts as: themselves without impersonation headers, else the impersonated
/// user once every part of it is allowed (403 naming the first that is not).
pub fn apply(
    api: &ApiServer,
    who: Arc<UserInfo>,
    headers: &HeaderMap,
) -> Result<Arc<UserInfo>, ApiError> {
    let user = headers.get(USER).map(text).transpose()?;
    let groups: Vec<String> = headers
        .get_all(GROUP)
        .iter()
        .map(text)
        .collect::<Result<_, _>>()?;
    let uid = headers.get(UID).map(text).transpose()?;
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in headers {
        if let Some(key) = k.as_str().strip_prefix(EXTRA) {
            extra.entry(key.to_string()).or_default().push(text(v)?);
        }
    }
    let Some(user) = user else {
        if !groups.is_empty() || uid.is_some() || !extra.is_empty() {
            return Err(ApiError::bad_request(
                "requested impersonation of groups, a uid or extras without impersonating a user",
            ));
        }
        return Ok(who);
    };
    if user.is_empty() {
        return Err(ApiError::bad_request("Impersonate-User must not be empty"));
    }
    let mut all_groups = groups.clone();
    match user
        .strip_prefix("system:serviceaccount:")
        .and_then(|r| r.split_once(':'))
    {
        Some((ns, name)) => {
            check(api, &who, "", "serviceaccounts", "", ns, name)?;
            for g in [
                "system:serviceaccounts".to_string(),
                format!("system:serviceaccounts:{ns}"),
            ] {
                if !all_groups.contains(&g) {
                    all_groups.push(g);
                }
            }
        }
        None => check(api, &who, "", "users", "", "", &user)?,
    }
    for g in &groups {
        check(api, &who, "", "groups", "", "", g)?;
    }
    if let Some(u) = &uid {
        check(api, &who, "authentication.k8s.io", "uids", "", "", u)?;
    }
    for (k, values) in &extra {
        for v in values {
            check(api, &who, "authentication.k8s.io", "userextras", k, "", v)?;
        }
    }
    if user != ANONYMOUS && !all_groups.iter().any(|g| g == AUTHENTICATED) {
        all_groups.push(AUTHENTICATED.into());
    }
    Ok(Arc::new(UserInfo {
        username: user,
        uid: uid.unwrap_or_default(),
        groups: all_groups,
        extra,
    }))
}
