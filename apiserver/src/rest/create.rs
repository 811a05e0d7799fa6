//! POST: a new object (generateName, namespace checks, managedFields, uid, generation, the
//! strategy's create rules, validation), stored with create-if-absent.

use capstan_api::validation::FieldError;
use serde_json::{Value, json};

use crate::ApiServer;
use crate::admission_policy::Attributes;
use crate::errors::{ApiError, ApiResult, from_storage};
use crate::object::{self, ObjectExt};
use crate::request::{Params, Target};

use super::field_validation::strict_check;
use super::{check_type, encode_checked, with_rv};

impl ApiServer {
    /// Creates a cluster-scoped object the server bootstraps (the system PriorityClasses,
    /// `capstan up`'s StorageClass) unless one of that name exists; unknown kinds are skipped.
    pub async fn create_if_missing(
        &self,
        (group, version, plural): (&str, &str, &str),
        obj: Value,
    ) -> ApiResult<()> {
        let Some(info) = self.registry.get(group, version, plural) else {
            return Ok(());
        };
        let target = Target {
            info,
            namespace: None,
            name: None,
            subresource: None,
        };
        match self.create(&target, obj, &Params::default()).await {
            Err(e) if e.reason != "AlreadyExists" => Err(e),
            _ => Ok(()),
        }
    }

    /// Creates an object; `dry_run` validates and returns it without storing.
    pub async fn create(&self, t: &Target, obj: Value, p: &Params) -> ApiResult<Value> {
        self.create_object(t, obj, p, false).await
    }

    /// Creates an object server-side apply built: its managedFields are the apply's own.
    pub(super) async fn create_applied(
        &self,
        t: &Target,
        obj: Value,
        p: &Params,
    ) -> ApiResult<Value> {
        self.create_object(t, obj, p, true).await
    }

    async fn create_object(
        &self,
        t: &Target,
        mut obj: Value,
        p: &Params,
        applied: bool,
    ) -> ApiResult<Value> {
        let dry_run = p.dry_run()?;
        let info = &t.info;
        if info.terminating {
            return Err(ApiError::method_not_allowed(format!(
                "create not allowed while custom resource definition is terminating: {}",
                crate::errors::qualified(&info.group, &info.plural)
            )));
        }
        check_type(info, &mut obj)?;
        strict_check(t, p, &obj)?;
        info.strategy.prune_unknown(&mut obj);
        info.strategy.canonicalize(&mut obj);
        if info.namespaced {
            let ns = t
                .namespace
                .clone()
                .ok_or_else(|| ApiError::method_not_allowed("namespaced resources are created in a namespace: POST /.../namespaces/{namespace}/{resource}"))?;
            match obj.namespace() {
                Some(given) if given != ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => obj.set_meta("namespace", json!(ns)),
            }
        } else {
            obj.remove_meta("namespace");
        }
        if obj.name().is_none() {
            match obj.meta_str("generateName").filter(|g| !g.is_empty()) {
                Some(prefix) => {
                    let name = object::generate_name(prefix);
                    obj.set_meta("name", json!(name));
                }
                None => {
                    return Err(self.invalid(
                        t,
                        "",
                        vec![FieldError {
                            field: "metadata.name".into(),
                            value: String::new(),
                            message: "Required value: name or generateName is required".into(),
                        }],
                    ));
                }
            }
        }
        let mut obj = self.mutate(t, obj, None, dry_run).await?;
        let name = obj.name().unwrap_or_default().to_string();
        for field in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            obj.remove_meta(field);
        }
        // Given managedFields are checked and rebuilt, never stored as sent.
        if !applied {
            if let Err(causes) = crate::patch::managed_fields::requested(None, &obj) {
                return Err(self.invalid(t, &name, causes));
            }
            crate::patch::managed_fields::track_update(
                &info.kind,
                &info.api_version(),
                p.manager(),
                None,
                &mut obj,
                &object::now(),
            );
        }
        obj.set_meta("uid", json!(uuid::Uuid::new_v4().to_string()));
        obj.set_meta("creationTimestamp", json!(object::now()));
        if info.strategy.tracks_generation() {
            obj.set_meta("generation", json!(1));
        } else {
            obj.remove_meta("generation");
        }
        info.strategy.prepare_for_create(&mut obj);
        crate::auth::rbac::escalation::check(self, info, &obj, None)?;
        crate::auth::node::admit_create(info, &obj)?;
        let errs = info.validate(&obj);
        if !errs.is_empty() {
            return Err(self.invalid(t, &name, errs));
        }
        let admitted = Attributes::write(info, None, "CREATE", Some(&obj), None, dry_run);
        crate::admission_policy::validate_write(self, &admitted).await?;
        if info.namespaced {
            self.check_namespace(obj.namespace().unwrap_or_default())
                .await?;
        }
        let bytes = self.stored_form(info, &obj).await?;
        if dry_run {
            // What the hooks would claim is shown (a ClusterIP free now), nothing is claimed.
            if let Some(hooks) = &info.hooks {
                hooks.begin_create(&mut obj, true).await?;
            }
            self.quota.admit_create(info, &obj, true).await?;
            return Ok(obj);
        }
        let key = info.key_of(&obj);
        if let Some(hooks) = info.hooks.clone() {
            // The hooks' claim, the quota charge and the store write run to completion in
            // their own task: a client that disconnects in between must not leave a claim
            // behind.
            let (store, info, quota) = (self.store.clone(), info.clone(), self.quota.clone());
            let task = tokio::spawn(async move {
                hooks.begin_create(&mut obj, false).await?;
                if let Err(e) = quota.admit_create(&info, &obj, false).await {
                    hooks.abort_create(&obj).await;
                    return Err(e);
                }
                let stored = match encode_checked(&info, &obj) {
                    Ok(bytes) => store
                        .create(&key, bytes)
                        .await
                        .map_err(|e| from_storage(e, &info.group, &info.plural, &name)),
                    Err(e) => Err(e),
                };
                match stored {
                    Ok(kv) => Ok(with_rv(obj, kv.mod_revision)),
                    Err(e) => {
                        hooks.abort_create(&obj).await;
                        Err(e)
                    }
                }
            });
            return task
                .await
                .map_err(|e| ApiError::internal(format!("create task failed: {e}")))?;
        }
        self.quota.admit_create(info, &obj, false).await?;
        let kv = self
            .store
            .create(&key, bytes)
            .await
            .map_err(|e| from_storage(e, &info.group, &info.plural, &name))?;
        Ok(with_rv(obj, kv.mod_revision))
    }

    /// The mutating admission webhooks of a create (`old`: None) or an update: the object as
    /// they leave it, checked again as the request's was — they may not change its kind, name
    /// or namespace, and fields its schema does not know are dropped.
    pub(super) async fn mutate(
        &self,
        t: &Target,
        obj: Value,
        old: Option<&Value>,
        dry_run: bool,
    ) -> ApiResult<Value> {
        let info = &t.info;
        let (operation, subresource) = match old {
            None => ("CREATE", None),
            Some(_) => ("UPDATE", t.subresource.as_deref()),
        };
        let before = (
            obj.name().map(str::to_string),
            obj.namespace().map(str::to_string),
        );
        let admitted = Attributes::write(info, subresource, operation, None, old, dry_run);
        let admitted = Attributes {
            name: before.0.as_deref().unwrap_or_default(),
            namespace: before.1.as_deref(),
            ..admitted
        };
        let mut mutated = Some(obj);
        let changed = self.webhooks.mutate(self, &admitted, &mut mutated).await?;
        let mut obj = mutated.ok_or_else(|| ApiError::internal("a webhook lost the object"))?;
        if !changed {
            return Ok(obj);
        }
        if (
            obj.name().map(str::to_string),
            obj.namespace().map(str::to_string),
        ) != before
        {
            return Err(ApiError::bad_request(
                "a mutating admission webhook changed the object's name or namespace",
            ));
        }
        check_type(info, &mut obj)?;
        info.strategy.prune_unknown(&mut obj);
        info.strategy.canonicalize(&mut obj);
        Ok(obj)
    }

    /// Namespaced objects are created only in namespaces that exist and are not terminating.
    async fn check_namespace(&self, ns: &str) -> ApiResult<()> {
        let key = format!("namespaces/{ns}");
        let cached = self
            .registry
            .get("", "v1", "namespaces")
            .and_then(|info| self.cacher(&info).ok())
            .and_then(|c| c.get(&key));
        let ns_obj = match cached {
            Some(o) => Some(o.value()),
            None => self
                .store
                .get(&key)
                .await
                .map_err(|e| from_storage(e, "", "namespaces", ns))?
                .and_then(|kv| object::decode(&kv.value, kv.mod_revision)),
        };
        match ns_obj {
            None => Err(ApiError::not_found("", "namespaces", ns)),
            Some(o) if o.is_deleting() => Err(ApiError {
                code: 403,
                reason: "Forbidden",
                message: format!(
                    "unable to create new content in namespace {ns} because it is being terminated"
                ),
                details: None,
            }),
            Some(_) => Ok(()),
        }
    }
}
