//! One resource request from the HTTP layer to the verb that serves it: resolve the target, pick
//! the verb (kube-apiserver's RequestInfo verb rules), read the body, call [`crate::rest`], write
//! the response (objects, Tables, metadata views, watch streams) and record metrics.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::ApiServer;
use crate::body::{content_type, json_body, json_bytes, read_body};
use crate::errors::{ApiError, ApiResult};
use crate::object;
use crate::patch::is_apply;
use crate::request::{Params, Target, View, partial_metadata};
use crate::rest::field_validation::{duplicate_field_check, unknown_field_warnings};

use super::negotiate::{accepts_json, view, with_warnings};
use super::resolve::resolve;
use super::{json_response, raw_list_response};

type Q = Query<HashMap<String, String>>;

/// Pods' subresources: proxy is refused clearly (exec, attach and portforward have their own
/// routes),
/// the rest go the common way.
pub async fn pod_subresource(
    State(api): State<Arc<ApiServer>>,
    method: Method,
    Path((namespace, name, sub)): Path<(String, String, String)>,
    Query(q): Q,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if sub == "proxy" {
        return ApiError::bad_request(format!(
            "pods/{sub} is not supported by this API server; kubectl exec, attach, port-forward and logs are"
        ))
        .into_response();
    }
    let rest = format!("namespaces/{namespace}/pods/{name}/{sub}");
    dispatch(
        api,
        method,
        String::new(),
        "v1".into(),
        rest,
        q,
        headers,
        body,
    )
    .await
}

pub async fn core_dispatch(
    State(api): State<Arc<ApiServer>>,
    method: Method,
    Path(rest): Path<String>,
    Query(q): Q,
    headers: HeaderMap,
    body: Body,
) -> Response {
    dispatch(
        api,
        method,
        String::new(),
        "v1".into(),
        rest,
        q,
        headers,
        body,
    )
    .await
}

/// A named group's request: proxied to the extension API server of a remote APIService
/// ([`crate::aggregator`]), else served here.
pub async fn group_dispatch(
    State(api): State<Arc<ApiServer>>,
    Path((group, version, rest)): Path<(String, String, String)>,
    Query(q): Q,
    req: axum::extract::Request,
) -> Response {
    if let Some(remote) = api.aggregator.remote(&api, &group, &version) {
        return crate::aggregator::proxy::forward(api, remote, req).await;
    }
    let (parts, body) = req.into_parts();
    dispatch(
        api,
        parts.method,
        group,
        version,
        rest,
        q,
        parts.headers,
        body,
    )
    .await
}

/// Whether `sub` is a subresource that writes fields of the object (pods/ephemeralcontainers),
/// served like /status.
fn owns_fields(t: &Target, sub: &str) -> bool {
    t.info
        .strategy
        .subresource_fields()
        .iter()
        .any(|(name, _)| *name == sub)
}

#[allow(clippy::too_many_arguments)]
async fn dispatch(
    api: Arc<ApiServer>,
    method: Method,
    group: String,
    version: String,
    rest: String,
    q: HashMap<String, String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let target = match resolve(&api, &group, &version, &rest) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let agent_manager = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|ua| ua.split('/').next())
        .map(|m| m.trim().chars().take(128).collect::<String>())
        .filter(|m| !m.is_empty());
    let p = Params {
        query: q,
        user_agent_manager: agent_manager,
    };
    let watch = matches!(p.get("watch"), Some("true" | "1"));
    let verb = match (&method, target.name.is_some(), watch) {
        (&Method::GET, _, true) => "watch",
        (&Method::GET, true, _) => "get",
        (&Method::GET, false, _) => "list",
        (&Method::POST, _, _) => "create",
        (&Method::PUT, _, _) => "update",
        (&Method::PATCH, _, _) => "patch",
        (&Method::DELETE, true, _) => "delete",
        (&Method::DELETE, false, _) => "deletecollection",
        _ => "unknown",
    };
    let resource = match &target.subresource {
        Some(s) => format!("{}/{s}", target.info.plural),
        None => target.info.plural.to_string(),
    };
    // Admission's warnings (ValidatingAdmissionPolicy's Warn) ride on the response.
    // ...and its audit annotations on to the audit log.
    let (response, admission_warnings, audit) = crate::admission_policy::WARNINGS
        .scope(Default::default(), async {
            crate::admission_policy::AUDIT
                .scope(Default::default(), async {
                    let r = serve(&api, &method, &target, verb, &p, &headers, body).await;
                    let w = crate::admission_policy::WARNINGS.with(|w| w.take());
                    let a = crate::admission_policy::AUDIT.with(|a| a.take());
                    (r, w, a)
                })
                .await
        })
        .await;
    let mut response = match response {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    if !audit.0.is_empty() {
        response.extensions_mut().insert(audit);
    }
    if !admission_warnings.is_empty() {
        response = with_warnings(response, &admission_warnings);
    }
    if let Some(w) = &target.info.deprecation {
        response = with_warnings(response, std::slice::from_ref(w));
    }
    if let Some(m) = &api.metrics {
        m.total
            .with_label_values(&[
                verb,
                &target.info.group,
                &resource,
                response.status().as_str(),
            ])
            .inc();
        if verb != "watch" {
            m.duration
                .with_label_values(&[verb, &target.info.group, &resource])
                .observe(started.elapsed().as_secs_f64());
        }
    }
    tracing::debug!(verb, resource, code = response.status().as_u16(), elapsed = ?started.elapsed(), "request");
    response
}

async fn serve(
    api: &Arc<ApiServer>,
    method: &Method,
    t: &Target,
    verb: &str,
    p: &Params,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    if t.subresource.as_deref() == Some("log") {
        if verb != "get" {
            return Err(ApiError::method_not_allowed(format!(
                "{method} is not supported on pods/log"
            )));
        }
        return api.pod_log(t, p).await;
    }
    let view = view(headers);
    if !accepts_json(headers) && view != View::Table {
        return Err(ApiError::not_acceptable(
            "only application/json is served (and Tables for kubectl get)",
        ));
    }
    let table = view == View::Table;
    let include = p.get("includeObject");
    let sub = t.subresource.as_deref();
    if matches!(verb, "update" | "patch") && t.name.is_none() {
        return Err(ApiError::method_not_allowed(format!(
            "{method} is not supported on a collection of {}: name the object",
            &t.info.plural
        )));
    }
    if matches!(verb, "create" | "update" | "patch") {
        p.check_write_options(verb, is_apply(&content_type(headers)))?;
    }
    let ok = |v: Value| -> ApiResult<Response> {
        let is_object = v.get("kind").and_then(Value::as_str) == Some(&t.info.kind);
        let v = match view {
            View::Table if is_object => crate::table::render(
                &t.info.strategy.table(),
                std::slice::from_ref(&v),
                include,
                v["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default(),
                None,
            ),
            View::Metadata if is_object => partial_metadata(&v),
            _ => v,
        };
        Ok(json_response(StatusCode::OK, &v))
    };
    match (verb, sub) {
        ("watch", None) => {
            let stream = match api.watch(t, p, view).await {
                Ok(s) => s,
                // An expired resourceVersion is 200, then one ERROR event carrying the 410
                // Status: what client-go's reflector and kube-rs's watcher expect.
                Err(e) if e.code == 410 => {
                    let line = crate::rest::watch::event_line("ERROR", &e.status());
                    return Ok((
                        StatusCode::OK,
                        [(header::CONTENT_TYPE, "application/json")],
                        line,
                    )
                        .into_response());
                }
                Err(e) => return Err(e),
            };
            Ok(Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::TRANSFER_ENCODING, "chunked")
                .body(Body::from_stream(stream))
                .map_err(|e| ApiError::internal(e.to_string()))?)
        }
        ("get", None | Some("status")) => ok(api.get_at(t, p).await?),
        ("get", Some(s)) if owns_fields(t, s) => ok(api.get_at(t, p).await?),
        ("get", Some("scale")) => ok(api.get_scale(t).await?),
        ("list", None) => {
            let (items, rv, cont) = match api.list_objects(t, p).await? {
                crate::rest::list::Listed::Cache(items, rv) if !table && view == View::Object => {
                    return Ok(raw_list_response(t, items, rv));
                }
                listed => listed.into_values(),
            };
            if table {
                return Ok(json_response(
                    StatusCode::OK,
                    &crate::table::render(
                        &t.info.strategy.table(),
                        &items,
                        include,
                        &rv.to_string(),
                        cont.as_deref(),
                    ),
                ));
            }
            let mut meta = json!({"resourceVersion": rv.to_string()});
            if let Some(c) = cont {
                meta["continue"] = json!(c);
            }
            if view == View::Metadata {
                let items: Vec<Value> = items.iter().map(partial_metadata).collect();
                return Ok(json_response(
                    StatusCode::OK,
                    &json!({
                        "kind": "PartialObjectMetadataList",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": meta,
                        "items": items,
                    }),
                ));
            }
            Ok(json_response(
                StatusCode::OK,
                &json!({
                    "kind": t.info.list_kind,
                    "apiVersion": t.info.api_version(),
                    "metadata": meta,
                    "items": items,
                }),
            ))
        }
        ("create", None) if t.name.is_none() => {
            let body = read_body(body).await?;
            let obj = json_body(headers, &body, &t.info.api_version(), &t.info.kind)?;
            let mut warnings = duplicate_field_check(t, p, &body)?;
            warnings.extend(unknown_field_warnings(t, p, &obj)?);
            let created = api.create(t, obj, p).await?;
            Ok(with_warnings(
                json_response(StatusCode::CREATED, &created),
                &warnings,
            ))
        }
        ("create", Some("binding")) => {
            let body = read_body(body).await?;
            let status = api
                .bind(t, json_body(headers, &body, "v1", "Binding")?, p)
                .await?;
            Ok(json_response(StatusCode::CREATED, &status))
        }
        ("create", Some("token")) => {
            let body = read_body(body).await?;
            let request = json_body(headers, &body, "authentication.k8s.io/v1", "TokenRequest")?;
            let issued = api.request_token(t, request, p).await?;
            Ok(json_response(StatusCode::CREATED, &issued))
        }
        ("create", Some("eviction")) => {
            let body = read_body(body).await?;
            let eviction: Value = serde_json::from_slice(&body)
                .map_err(|e| ApiError::bad_request(format!("the Eviction does not parse: {e}")))?;
            if eviction["kind"] != "Eviction"
                || !matches!(
                    eviction["apiVersion"].as_str(),
                    Some("policy/v1" | "policy/v1beta1")
                )
            {
                return Err(ApiError::bad_request(format!(
                    "pods/eviction takes a policy/v1 Eviction, not {} {}",
                    eviction["apiVersion"], eviction["kind"]
                )));
            }
            let status = api.evict(t, eviction, p).await?;
            Ok(json_response(StatusCode::CREATED, &status))
        }
        ("update", sub)
            if sub.is_none_or(|s| matches!(s, "status" | "finalize") || owns_fields(t, s)) =>
        {
            let body = read_body(body).await?;
            let mut obj = json_body(headers, &body, &t.info.api_version(), &t.info.kind)?;
            if sub == Some("finalize") {
                // /finalize changes spec.finalizers only (the namespace controller's last step),
                // guarded by the resourceVersion sent, as any update.
                let finalizers = obj["spec"]["finalizers"].clone();
                let precondition = crate::rest::resource_version_of(&t.info, &obj)?;
                let updated = api
                    .guaranteed_update(t, precondition, p.dry_run()?, Some(p.manager()), |live| {
                        let mut new = live.clone();
                        let finalizers = if finalizers.is_null() {
                            json!([])
                        } else {
                            finalizers.clone()
                        };
                        object::set_path(&mut new, &["spec", "finalizers"], finalizers);
                        Ok(new)
                    })
                    .await?;
                return ok(updated);
            }
            if obj.get("metadata").is_none() {
                obj["metadata"] = json!({});
            }
            let mut warnings = duplicate_field_check(t, p, &body)?;
            warnings.extend(unknown_field_warnings(t, p, &obj)?);
            Ok(with_warnings(ok(api.update(t, obj, p).await?)?, &warnings))
        }
        ("update", Some("scale")) => {
            let body = json_bytes(headers, read_body(body).await?, "autoscaling/v1", "Scale")?;
            ok(api.update_scale(t, None, body, p).await?)
        }
        ("patch", None) if is_apply(&content_type(headers)) => {
            let body = read_body(body).await?;
            let (created, obj, warnings) = api.server_side_apply(t, &body, p).await?;
            let resp = if created {
                json_response(StatusCode::CREATED, &obj)
            } else {
                ok(obj)?
            };
            Ok(with_warnings(resp, &warnings))
        }
        ("patch", sub) if sub.is_none_or(|s| s == "status" || owns_fields(t, s)) => {
            let body = read_body(body).await?;
            let (patched, warnings) = api
                .patch_with_warnings(t, &content_type(headers), body, p)
                .await?;
            Ok(with_warnings(ok(patched)?, &warnings))
        }
        ("patch", Some("scale")) => {
            let body = read_body(body).await?;
            ok(api
                .update_scale(t, Some(&content_type(headers)), body, p)
                .await?)
        }
        ("delete", None) => {
            let body = json_bytes(headers, read_body(body).await?, "v1", "DeleteOptions")?;
            ok(api.delete(t, &body, p).await?)
        }
        ("deletecollection", None) => {
            let body = json_bytes(headers, read_body(body).await?, "v1", "DeleteOptions")?;
            ok(api.delete_collection(t, &body, p).await?)
        }
        _ => Err(ApiError::method_not_allowed(format!(
            "{method} is not supported on {}{}{}",
            &t.info.plural,
            if t.name.is_some() { "/NAME" } else { "" },
            sub.map(|s| format!("/{s}")).unwrap_or_default()
        ))),
    }
}
