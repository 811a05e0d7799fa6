//! DELETE and deletecollection: immediate, or marked with deletionTimestamp and left for
//! finalizers (the garbage collector's propagation policies, a pod's grace period, a namespace's
//! content) to clear.

use bytes::Bytes;
use serde_json::{Value, json};

use crate::ApiServer;
use crate::body::parse_body;
use crate::errors::{ApiError, ApiResult, from_storage};
use crate::object::{self, ObjectExt};
use crate::request::{Params, Target};

use super::{Retry, encode, name_of, namespace_finalizers_pending, too_many_writers, with_rv};

impl ApiServer {
    /// DELETE: immediate, or — with finalizers, a propagation policy that needs the garbage
    /// collector, a pod still bound to a node, or a namespace — marked with deletionTimestamp and
    /// left for its finalizers to clear.
    pub async fn delete(&self, t: &Target, body: &Bytes, p: &Params) -> ApiResult<Value> {
        let opts: Value = if body.is_empty() {
            json!({})
        } else {
            parse_body(body)?
        };
        let dry_run = p.dry_run()?
            || opts["dryRun"]
                .as_array()
                .is_some_and(|a| a.iter().any(|v| v == "All"));
        let policy = p
            .get("propagationPolicy")
            .map(str::to_string)
            .or_else(|| opts["propagationPolicy"].as_str().map(str::to_string));
        let finalizer = match policy.as_deref() {
            None | Some("Background") => None,
            Some("Foreground") => Some("foregroundDeletion"),
            Some("Orphan") => Some("orphan"),
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "invalid propagationPolicy {other:?}: supported values are Background, Foreground and Orphan"
                )));
            }
        };
        let grace = match p.int("gracePeriodSeconds")? {
            Some(g) => Some(g),
            None => opts["gracePeriodSeconds"].as_i64(),
        };
        let name = name_of(t).to_string();
        let info = &t.info;
        let mut retry = Retry::new();
        loop {
            let (live, rev) = self.live(t).await?;
            if let Some(why) = info.strategy.forbid_delete(&live) {
                return Err(ApiError::forbidden(&info.group, &info.plural, &name, &why));
            }
            if let Some(uid) = opts.pointer("/preconditions/uid").and_then(Value::as_str)
                && live.meta_str("uid") != Some(uid)
            {
                return Err(ApiError::conflict(
                    &info.group,
                    &info.plural,
                    &name,
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        live.meta_str("uid").unwrap_or_default()
                    ),
                ));
            }
            if let Some(want) = opts
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str)
                && want != rev.to_string()
            {
                return Err(ApiError::conflict(
                    &info.group,
                    &info.plural,
                    &name,
                    &format!(
                        "Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in object meta: {rev}"
                    ),
                ));
            }
            let admitted = crate::admission_policy::Attributes::write(
                info,
                None,
                "DELETE",
                None,
                Some(&live),
                dry_run,
            );
            self.webhooks.mutate(self, &admitted, &mut None).await?;
            crate::admission_policy::validate_write(self, &admitted).await?;
            let mut finalizers = live.finalizers();
            // The garbage collector's finalizers follow the policy: added on a first delete;
            // on a later delete that names a policy, switched to it (Kubernetes lets a user
            // turn a foreground deletion into an orphaning one, or release it).
            if policy.is_some() || !live.is_deleting() {
                if policy.is_some() {
                    finalizers.retain(|x| {
                        !matches!(x.as_str(), "foregroundDeletion" | "orphan")
                            || Some(x.as_str()) == finalizer
                    });
                }
                if let Some(f) = finalizer
                    && !finalizers.iter().any(|x| x == f)
                {
                    finalizers.push(f.to_string());
                }
            }
            let pod_grace = (info.group.is_empty()
                && info.plural == "pods"
                && live["spec"]["nodeName"]
                    .as_str()
                    .is_some_and(|n| !n.is_empty()))
            .then(|| {
                grace
                    .or(live["spec"]["terminationGracePeriodSeconds"].as_i64())
                    .unwrap_or(30)
            })
            .filter(|g| *g > 0);
            let namespace_pending = namespace_finalizers_pending(info, &live);
            if finalizers.is_empty() && pod_grace.is_none() && !namespace_pending {
                if dry_run {
                    return Ok(live);
                }
                match self.store.delete(&info.key_of(&live), Some(rev)).await {
                    Ok((_, del_rev)) => {
                        self.after_delete(info, &live).await;
                        return Ok(with_rv(live, del_rev));
                    }
                    Err(capstan_storage::StorageError::Conflict { .. }) if retry.again().await => {
                        continue;
                    }
                    Err(capstan_storage::StorageError::Conflict { .. }) => {
                        return Err(too_many_writers(info, &name));
                    }
                    Err(e) => return Err(from_storage(e, &info.group, &info.plural, &name)),
                }
            }
            if live.is_deleting() && finalizers == live.finalizers() {
                return Ok(live); // already being deleted
            }
            let mut marked = live.clone();
            marked.set_meta("finalizers", json!(finalizers));
            if !live.is_deleting() {
                marked.set_meta("deletionTimestamp", json!(object::now()));
                marked.set_meta("deletionGracePeriodSeconds", json!(pod_grace.unwrap_or(0)));
                if namespace_pending {
                    object::set_path(&mut marked, &["status", "phase"], json!("Terminating"));
                }
            }
            if dry_run {
                return Ok(marked);
            }
            match self
                .store
                .update(&info.key_of(&marked), encode(info, &marked)?, rev)
                .await
            {
                Ok(kv) => return Ok(with_rv(marked, kv.mod_revision)),
                Err(capstan_storage::StorageError::Conflict { .. }) if retry.again().await => {
                    continue;
                }
                Err(capstan_storage::StorageError::Conflict { .. }) => {
                    return Err(too_many_writers(info, &name));
                }
                Err(e) => return Err(from_storage(e, &info.group, &info.plural, &name)),
            }
        }
    }

    /// DELETE on a collection: every object matching the selectors, one by one.
    pub async fn delete_collection(
        &self,
        t: &Target,
        body: &Bytes,
        p: &Params,
    ) -> ApiResult<Value> {
        if !t.info.strategy.deletes_collections() {
            return Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource: deletecollection of {}",
                crate::errors::qualified(&t.info.group, &t.info.plural)
            )));
        }
        let (items, _, _) = self.list(t, p).await?;
        let mut deleted = Vec::new();
        for obj in items {
            let one = Target {
                info: t.info.clone(),
                namespace: obj.namespace().map(str::to_string),
                name: obj.name().map(str::to_string),
                subresource: None,
            };
            match self.delete(&one, body, p).await {
                Ok(o) => deleted.push(o),
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(json!({
            "kind": t.info.list_kind,
            "apiVersion": t.info.api_version(),
            "metadata": {},
            "items": deleted,
        }))
    }
}
