//! LIST: from the watch cache when it is current; from the store (snapshot pages, continue
//! tokens, `resourceVersionMatch=Exact`) when paginating or asked for an exact revision.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::ApiServer;
use crate::errors::{ApiError, ApiResult, from_storage};
use crate::request::{Params, Target};
use crate::watch_cache::Cached;

use super::continue_token;
use super::filter::Filter;

/// What a list found: the watch cache's objects as it holds them (serialized), or objects read
/// from the store (with a continue token when there are more).
#[derive(Debug)]
pub enum Listed {
    Cache(Vec<Arc<Cached>>, i64),
    Store(Vec<Value>, i64, Option<String>),
}

impl Listed {
    /// The objects parsed, the revision, the continue token.
    pub fn into_values(self) -> (Vec<Value>, i64, Option<String>) {
        match self {
            Listed::Cache(items, rv) => (items.iter().map(|o| o.value()).collect(), rv, None),
            Listed::Store(items, rv, cont) => (items, rv, cont),
        }
    }
}

impl ApiServer {
    /// A list: from the watch cache when it is current, else (or when paginating) from the store.
    pub async fn list(
        &self,
        t: &Target,
        p: &Params,
    ) -> ApiResult<(Vec<Value>, i64, Option<String>)> {
        Ok(self.list_objects(t, p).await?.into_values())
    }

    /// [`ApiServer::list`], leaving the cache's objects serialized: a plain JSON list writes
    /// them as they are, without parsing 50,000 pods to serialize them again.
    pub async fn list_objects(&self, t: &Target, p: &Params) -> ApiResult<Listed> {
        let filter = Filter::from_params(&t.info, p)?;
        let limit = p.int("limit")?.filter(|l| *l > 0).map(|l| l as usize);
        let cont = p.get("continue");
        let rv = p.resource_version()?;
        // Exact when asked for, and — Kubernetes' legacy rule — for a paginated list naming a
        // resourceVersion without a match mode.
        let exact = p.get("resourceVersionMatch") == Some("Exact")
            || (limit.is_some()
                && cont.is_none()
                && rv.is_some()
                && p.get("resourceVersionMatch").is_none());
        if let Some(m) = p.get("resourceVersionMatch")
            && !matches!(m, "Exact" | "NotOlderThan")
        {
            return Err(ApiError::bad_request(format!(
                "invalid resourceVersionMatch {m:?}: supported values are \"Exact\" and \"NotOlderThan\""
            )));
        }
        if exact && rv.is_none() {
            return Err(ApiError::bad_request(
                "resourceVersionMatch=Exact requires a non-zero resourceVersion",
            ));
        }
        // A resourceVersion the store has not reached is waited for, paginated or not, exact
        // or not (a continue token carries its own snapshot).
        if let Some(r) = rv
            && cont.is_none()
        {
            self.wait_for_revision(&t.info, r).await?;
        }
        let prefix = t.info.list_prefix(t.namespace.as_deref());
        if limit.is_none() && cont.is_none() && !exact && t.info.watch_cached() {
            let cacher = self.cacher(&t.info)?;
            // resourceVersion "0": any state is fine. Unset: at least the store's current one.
            let needed = match (p.get("resourceVersion"), rv) {
                (Some("0"), _) => 0,
                (_, Some(r)) => r,
                (None, None) => match self.store.revision_hint() {
                    Some(r) => r,
                    None => self
                        .store
                        .current_revision()
                        .await
                        .map_err(|e| from_storage(e, &t.info.group, &t.info.plural, ""))?,
                },
                (Some(_), None) => 0,
            };
            // The embedded store reports progress at once; a cache that is still behind after
            // 50 ms (etcd sends progress rarely) is bypassed for a read from the store.
            if cacher.wait_for(needed, Duration::from_millis(50)).await {
                let (mut items, rev) = cacher.list(&prefix);
                if !filter.is_empty() {
                    items.retain(|o| filter.matches(&t.info, &o.index()));
                }
                return Ok(Listed::Cache(items, rev));
            }
            // A resourceVersion newer than the store: wait for it (3 s, as Kubernetes does),
            // never answer with an older state.
            if let Some(r) = rv {
                let current = self
                    .store
                    .current_revision()
                    .await
                    .map_err(|e| from_storage(e, &t.info.group, &t.info.plural, ""))?;
                if r > current {
                    if !cacher.wait_for(r, Duration::from_secs(3)).await {
                        return Err(ApiError::too_large_resource_version(r, current));
                    }
                    let (mut items, rev) = cacher.list(&prefix);
                    if !filter.is_empty() {
                        items.retain(|o| filter.matches(&t.info, &o.index()));
                    }
                    return Ok(Listed::Cache(items, rev));
                }
            }
        }
        let (items, rv, cont) = self
            .list_from_store(
                t,
                &prefix,
                &filter,
                limit,
                cont,
                if exact { rv } else { None },
            )
            .await?;
        Ok(Listed::Store(items, rv, cont))
    }

    /// Pages through the store, filtering, until `limit` matches; the continue token carries the
    /// snapshot revision and the last key examined, so every page reads the same snapshot.
    async fn list_from_store(
        &self,
        t: &Target,
        prefix: &str,
        filter: &Filter,
        limit: Option<usize>,
        cont: Option<&str>,
        exact: Option<i64>,
    ) -> ApiResult<(Vec<Value>, i64, Option<String>)> {
        let (mut revision, mut start_after) = match cont {
            Some(token) => {
                let (rev, key) = continue_token::decode(token)?;
                if !key.starts_with(prefix) {
                    return Err(ApiError::bad_request(
                        "continue key is not valid: wrong resource",
                    ));
                }
                (Some(rev), Some(key))
            }
            None => (exact, None),
        };
        let mut items = Vec::new();
        loop {
            let want = limit.map(|l| (l - items.len()).max(50));
            let page = self
                .store
                .list(
                    prefix,
                    capstan_storage::ListOptions {
                        revision,
                        limit: want,
                        start_after: start_after.clone(),
                    },
                )
                .await
                .map_err(|e| match e {
                    capstan_storage::StorageError::Compacted { .. } if cont.is_some() => {
                        ApiError::gone("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.")
                    }
                    e => from_storage(e, &t.info.group, &t.info.plural, ""),
                })?;
            revision = Some(page.revision);
            let decoded: Vec<(usize, Value)> = (page.items.iter().enumerate())
                .filter_map(|(i, kv)| Some((i, t.info.decode(&kv.value, kv.mod_revision)?)))
                .collect();
            let (positions, objects): (Vec<usize>, Vec<Value>) = decoded.into_iter().unzip();
            let objects = crate::crd::conversion::convert_all(self, &t.info, objects).await?;
            for (i, obj) in positions.into_iter().zip(objects) {
                let kv = &page.items[i];
                if filter.matches(&t.info, &obj) {
                    items.push(obj);
                    if limit == Some(items.len()) {
                        let more = page.more || i + 1 < page.items.len();
                        let token = more.then(|| continue_token::encode(page.revision, &kv.key));
                        return Ok((items, page.revision, token));
                    }
                }
            }
            if !page.more {
                return Ok((items, page.revision, None));
            }
            start_after = page.items.last().map(|kv| kv.key.clone());
        }
    }
}
