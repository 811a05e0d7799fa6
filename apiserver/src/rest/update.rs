//! PUT, and the read-transform-validate-CAS loop every write shares (kube-apiserver's
//! GuaranteedUpdate): server-owned metadata kept, generation bumped on spec changes, finalizers
//! honoured, unchanged objects not rewritten.

use serde_json::{Value, json};

use crate::ApiServer;
use crate::errors::{ApiError, ApiResult, from_storage};
use crate::object::{self, ObjectExt};
use crate::request::{Params, Target};

use super::field_validation::strict_check;
use super::{
    Retry, check_type, encode_checked, name_of, namespace_finalizers_pending, resource_version_of,
    subresource_rules, too_many_writers, with_rv,
};

impl ApiServer {
    /// PUT (whole object, or its status with subresource "status").
    pub async fn update(&self, t: &Target, body: Value, p: &Params) -> ApiResult<Value> {
        let name = name_of(t).to_string();
        if body.name().is_some_and(|n| n != name) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                body.name().unwrap_or_default()
            )));
        }
        if let (Some(ns), Some(given)) = (&t.namespace, body.namespace())
            && t.info.namespaced
            && given != ns
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let precondition = resource_version_of(&t.info, &body)?;
        let sub = t.subresource.clone();
        self.guaranteed_update(t, precondition, p.dry_run()?, Some(p.manager()), |live| {
            let mut new = body.clone();
            check_type(&t.info, &mut new)?;
            strict_check(t, p, &new)?;
            Ok(subresource_rules(&t.info, live, new, sub.as_deref()))
        })
        .await
    }

    /// Read, transform, validate, compare-and-swap; retried on a lost race unless the client
    /// named the resourceVersion it expects.
    pub async fn guaranteed_update(
        &self,
        t: &Target,
        precondition: Option<i64>,
        dry_run: bool,
        manager: Option<&str>,
        transform: impl Fn(&Value) -> ApiResult<Value>,
    ) -> ApiResult<Value> {
        let name = name_of(t).to_string();
        let info = &t.info;
        let mut retry = Retry::new();
        loop {
            let (live, rev, stale) = self.live_stored(t).await?;
            if let Some(expected) = precondition
                && expected != rev
            {
                return Err(ApiError::conflict(
                    &info.group,
                    &info.plural,
                    &name,
                    "the object has been modified; please apply your changes to the latest version and try again",
                ));
            }
            let mut new = transform(&live)?;
            // The server owns apiVersion and kind: a write that drops them gets them back, one
            // that changes them is refused.
            check_type(info, &mut new)?;
            info.strategy.prune_unknown(&mut new);
            info.strategy.canonicalize(&mut new);
            preserve_meta(&live, &mut new)?;
            let hooks = info.hooks.clone();
            if let Some(h) = &hooks {
                h.begin_update(&live, &mut new, dry_run).await?;
            }
            let pass = Pass {
                t,
                name: &name,
                live: &live,
                rev,
                stale,
                dry_run,
                manager,
            };
            let step = self.write_update(&pass, &mut new).await;
            let hooks = hooks.filter(|_| !dry_run);
            match step {
                Step::Stored(stored) => {
                    if let Some(h) = &hooks {
                        h.after_update(&live, &stored).await;
                    }
                    return Ok(stored);
                }
                Step::Deleted(gone) => {
                    if let Some(h) = &hooks {
                        h.after_update(&live, &new).await;
                    }
                    self.after_delete(info, &new).await;
                    return Ok(gone);
                }
                Step::NotStored(outcome) => {
                    if let Some(h) = &hooks {
                        h.abort_update(&live, &new).await;
                    }
                    return outcome;
                }
                Step::Conflict(e) => {
                    if let Some(h) = &hooks {
                        h.abort_update(&live, &new).await;
                    }
                    if precondition.is_none() && retry.again().await {
                        continue;
                    }
                    if precondition.is_none() {
                        return Err(too_many_writers(info, &name));
                    }
                    return Err(from_storage(e, &info.group, &info.plural, &name));
                }
            }
        }
    }

    /// The rest of one pass of [`ApiServer::guaranteed_update`] once the hooks ran: managed
    /// fields, generation, validation, then the compare-and-swap (or the delete of an object
    /// whose last finalizer went).
    async fn write_update(&self, pass: &Pass<'_>, new: &mut Value) -> Step {
        let Pass {
            t,
            name,
            live,
            rev,
            stale,
            ..
        } = *pass;
        let info = &t.info;
        match self.prepare_update(pass, new).await {
            Err(e) => return Step::NotStored(Err(e)),
            Ok(Some(done)) => return Step::NotStored(Ok(done)),
            Ok(None) => {}
        }
        if let Err(e) = self.quota.admit_update(info, live, new, pass.dry_run).await {
            return Step::NotStored(Err(e));
        }
        let bytes = match self.stored_form(info, new).await {
            Ok(b) => b,
            Err(e) => return Step::NotStored(Err(e)),
        };
        // An object being deleted goes once its last finalizer is removed — unless it is
        // still in its grace period (a pod its node has not stopped yet: Kubernetes'
        // ShouldDeleteDuringUpdate).
        if new.is_deleting()
            && new.finalizers().is_empty()
            && !namespace_finalizers_pending(info, new)
            && new
                .meta()
                .and_then(|m| m.get("deletionGracePeriodSeconds"))
                .and_then(Value::as_i64)
                .is_none_or(|g| g == 0)
        {
            return match self.store.delete(&info.key_of(new), Some(rev)).await {
                Ok((_, del_rev)) => Step::Deleted(with_rv(new.clone(), del_rev)),
                Err(e @ capstan_storage::StorageError::Conflict { .. }) => Step::Conflict(e),
                Err(e) => Step::NotStored(Err(from_storage(e, &info.group, &info.plural, name))),
            };
        }
        let mut unchanged = live.clone();
        unchanged.remove_meta("resourceVersion");
        if *new == unchanged && !stale {
            return Step::NotStored(Ok(live.clone())); // nothing changed: no write, same resourceVersion
        }
        match self.store.update(&info.key_of(new), bytes, rev).await {
            Ok(kv) => Step::Stored(with_rv(new.clone(), kv.mod_revision)),
            Err(e @ capstan_storage::StorageError::Conflict { .. }) => Step::Conflict(e),
            Err(e) => Step::NotStored(Err(from_storage(e, &info.group, &info.plural, name))),
        }
    }

    /// Managed fields, generation and validation of an update; `Some` is a dry run's answer.
    async fn prepare_update(&self, pass: &Pass<'_>, new: &mut Value) -> ApiResult<Option<Value>> {
        let Pass {
            t,
            name,
            live,
            rev,
            dry_run,
            manager,
            ..
        } = *pass;
        let info = &t.info;
        *new = self
            .mutate(t, std::mem::take(new), Some(live), dry_run)
            .await?;
        if let Err(causes) = crate::patch::managed_fields::requested(Some(live), new) {
            return Err(self.invalid(t, name, causes));
        }
        if let Some(m) = manager {
            crate::patch::managed_fields::track_update(
                &info.kind,
                &info.api_version(),
                m,
                Some(live),
                new,
                &object::now(),
            );
        }
        if info.strategy.tracks_generation() {
            // The generation follows the spec: everything but metadata and, when a status
            // subresource owns it, status (so a custom resource without one bumps on
            // status changes too, as in Kubernetes).
            let generation = live["metadata"]["generation"].as_i64().unwrap_or(1);
            let changed = if info.status {
                object::spec_of(new) != object::spec_of(live)
            } else {
                new.get("status") != live.get("status")
                    || object::spec_of(new) != object::spec_of(live)
            };
            let generation = if changed { generation + 1 } else { generation };
            new.set_meta("generation", json!(generation));
        } else {
            new.remove_meta("generation");
        }
        info.strategy.prepare_for_update(new, live);
        crate::auth::rbac::escalation::check(self, info, new, Some(live))?;
        let errs = info.validate_update(new, live);
        if !errs.is_empty() {
            return Err(self.invalid(t, name, errs));
        }
        let admitted = crate::admission_policy::Attributes::write(
            info,
            t.subresource.as_deref(),
            "UPDATE",
            Some(new),
            Some(live),
            dry_run,
        );
        crate::admission_policy::validate_write(self, &admitted).await?;
        encode_checked(info, new)?;
        if dry_run {
            return Ok(Some(with_rv(new.clone(), rev)));
        }
        Ok(None)
    }
}

/// One pass of an update: what it read, and how it writes.
#[derive(Clone, Copy)]
struct Pass<'a> {
    t: &'a Target,
    name: &'a str,
    live: &'a Value,
    rev: i64,
    /// Stored at another version than the storage version: written even if unchanged.
    stale: bool,
    dry_run: bool,
    manager: Option<&'a str>,
}

/// How one pass of an update ended.
enum Step {
    Stored(Value),
    /// The last finalizer went: the object left the store.
    Deleted(Value),
    /// Nothing was written: refused, a dry run, or no change.
    NotStored(ApiResult<Value>),
    /// The compare-and-swap lost a race.
    Conflict(capstan_storage::StorageError),
}

/// Metadata the server owns survives every update: uid, creation time, deletion state, name
/// and namespace. A client-given uid that differs is a precondition failure.
fn preserve_meta(live: &Value, new: &mut Value) -> ApiResult<()> {
    if let (Some(given), Some(uid)) = (new.meta_str("uid"), live.meta_str("uid"))
        && !given.is_empty()
        && given != uid
    {
        return Err(ApiError::conflict(
            "",
            "",
            live.name().unwrap_or_default(),
            &format!(
                "Precondition failed: UID in precondition: {given}, UID in object meta: {uid}"
            ),
        ));
    }
    for field in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "name",
        "namespace",
    ] {
        match live.meta().and_then(|m| m.get(field)) {
            Some(v) => new.set_meta(field, v.clone()),
            None => new.remove_meta(field),
        }
    }
    // Finalizers can only be removed once deletion started, never added back.
    if live.is_deleting() {
        let allowed = live.finalizers();
        let kept: Vec<String> = new
            .finalizers()
            .into_iter()
            .filter(|f| allowed.contains(f))
            .collect();
        new.set_meta("finalizers", json!(kept));
    }
    new.remove_meta("resourceVersion");
    Ok(())
}
