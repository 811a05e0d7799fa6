//! Per-resource behaviour, kube-apiserver's "strategy": how an object is validated, defaulted on
//! create, which fields selectors can use, and how it prints as a table row. Built-ins use
//! [`Builtin`], configured in `registry::builtins`; custom resources use
//! [`crate::crd::strategy::CustomStrategy`].

use std::sync::Arc;

use capstan_api::validation::{self, FieldError};
use serde_json::{Value, json};

use crate::errors::ApiResult;
use crate::object::ObjectExt;
use crate::table::Table;

pub use crate::object::NameRule;

pub trait Strategy: Send + Sync {
    /// Resource-specific validation of a whole object (after metadata checks).
    fn validate(&self, obj: &Value) -> Vec<FieldError>;
    /// Drops the fields the type does not know from a written object (what decoding into the
    /// Go type does in kube-apiserver). Runs before field ownership is computed, so nobody owns
    /// a field that is not there.
    fn prune_unknown(&self, _obj: &mut Value) {}
    /// Whether objects carry metadata.generation, bumped on spec changes (workloads, CRDs and
    /// custom resources do; ConfigMaps, Secrets, Namespaces and the like do not).
    fn tracks_generation(&self) -> bool {
        false
    }
    /// Extra rules for an update (immutable fields), given the live object.
    fn validate_update(&self, _new: &Value, _old: &Value) -> Vec<FieldError> {
        Vec::new()
    }
    /// Everything an update is validated with: the object's own rules and the update's.
    /// Custom resources replace it to ratchet (an unchanged invalid field passes) and to run
    /// transition rules against the old object.
    fn validate_on_update(&self, new: &Value, old: &Value) -> Vec<FieldError> {
        let mut errs = self.validate(new);
        errs.extend(self.validate_update(new, old));
        errs
    }
    /// Defaults and resets applied to a new object before it is stored.
    fn prepare_for_create(&self, _obj: &mut Value) {}
    /// What an update carries over from the live object or derives from the change (a
    /// DaemonSet's template generation), after the generation is settled.
    fn prepare_for_update(&self, _new: &mut Value, _old: &Value) {}
    /// Normalization applied to every object written and read: custom resources prune
    /// unknown fields and apply schema defaults here; built-ins apply update defaults.
    fn canonicalize(&self, _obj: &mut Value) {}
    fn name_rule(&self) -> NameRule {
        NameRule::Subdomain
    }
    /// The value of a selectable field (`metadata.name`, `spec.nodeName` ...). None: the field
    /// is not supported for selection (a 400 for the request).
    fn field(&self, obj: &Value, field: &str) -> Option<String>;
    /// Whether `field` can be used in a field selector.
    fn supports_field(&self, field: &str) -> bool;
    /// The JSON pointers of the selectable fields beyond metadata's name and namespace
    /// (`/spec/nodeName`): what the watch cache keeps unparsed for field selectors.
    fn selectable_pointers(&self) -> Vec<String> {
        Vec::new()
    }
    /// Columns and a row per object, for `kubectl get`.
    fn table(&self) -> Table;
    /// Whether create clears a user-given status (the status subresource owns it).
    fn reset_status_on_create(&self) -> bool {
        false
    }
    /// Paths of fields the type does not know (`spec.foo`), for fieldValidation.
    fn unknown_fields(&self, _obj: &Value) -> Vec<String> {
        Vec::new()
    }
    /// Fields only a subresource writes, besides status: `(subresource, path)`. The object's own
    /// endpoint keeps their live value; the subresource changes only them (pods'
    /// `ephemeralcontainers` and `spec.ephemeralContainers`).
    fn subresource_fields(&self) -> &'static [(&'static str, &'static [&'static str])] {
        &[]
    }
    /// Why the object may not be deleted (a 403), if it may not: the system namespaces.
    fn forbid_delete(&self, _obj: &Value) -> Option<String> {
        None
    }
    /// Whether DELETE on the collection is served (namespaces: no, a 405 as in Kubernetes).
    fn deletes_collections(&self) -> bool {
        true
    }
    /// The OpenAPI schema of the object (a `$ref` into the generator's definitions).
    fn openapi_schema(
        &self,
        _generator: &mut schemars::SchemaGenerator,
    ) -> Option<schemars::Schema> {
        None
    }
}

/// Work a resource needs around the generic store write — kube-apiserver's BeginCreate /
/// BeginUpdate / AfterDelete decorators on a resource's REST storage. A Service's ClusterIP
/// ([`crate::service::ServiceHooks`]) is the example: claimed before the object is stored,
/// released when the write fails or the object is gone. Resources without hooks skip all of it.
#[async_trait::async_trait]
pub trait StorageHooks: Send + Sync + std::fmt::Debug {
    /// Before a new object (named, validated) is stored: claims what it needs and records it
    /// in the object. The create runs to completion in its own task once this is called, so a
    /// client going away cannot leave a claim behind. With `dry_run` it records what it would
    /// claim and claims nothing (and no other hook follows).
    async fn begin_create(&self, obj: &mut Value, dry_run: bool) -> ApiResult<()>;
    /// The store refused the object after [`StorageHooks::begin_create`] succeeded: releases
    /// what it claimed.
    /// (Admission plugins that only change or check objects claim nothing: the release steps
    /// default to doing nothing.)
    async fn abort_create(&self, _obj: &Value) {}
    /// Before an update is validated: carries over, or refuses changes to, what the live object
    /// holds, and claims what the new one needs besides (nothing with `dry_run`). Exactly one
    /// of [`StorageHooks::abort_update`] and [`StorageHooks::after_update`] follows unless it
    /// fails (when it has released what it claimed) or `dry_run` is set.
    async fn begin_update(&self, _live: &Value, _new: &mut Value, _dry_run: bool) -> ApiResult<()> {
        Ok(())
    }
    /// The update after [`StorageHooks::begin_update`] was not stored (refused, lost a race,
    /// unchanged): releases what `new` holds that `live` does not.
    async fn abort_update(&self, _live: &Value, _new: &Value) {}
    /// The update was stored: releases what `live` held that `stored` does not.
    async fn after_update(&self, _live: &Value, _stored: &Value) {}
    /// After the object left the store: releases what it held.
    async fn after_delete(&self, _obj: &Value) {}
}

type Check = fn(&Value) -> Vec<FieldError>;

/// A built-in resource's strategy.
#[derive(Debug)]
pub struct Builtin {
    typed: fn(&Value) -> Result<(), String>,
    roundtrip: fn(&Value) -> Option<Value>,
    schema: fn(&mut schemars::SchemaGenerator) -> schemars::Schema,
    extra: Option<Check>,
    on_create: Option<fn(&mut Value)>,
    defaults: Option<fn(&mut Value)>,
    on_update: Option<fn(&mut Value)>,
    prepare_update: Option<fn(&mut Value, &Value)>,
    update_rules: Option<fn(&Value, &Value) -> Vec<FieldError>>,
    fields: &'static [(&'static str, &'static str)],
    /// Each selectable field's value when the object leaves it unset: its type's zero value
    /// (`""`, `"false"`, `"0"`), as Kubernetes' field sets are built from typed Go structs.
    field_zeros: Vec<&'static str>,
    subresource_fields: &'static [(&'static str, &'static [&'static str])],
    names: NameRule,
    table: Table,
    reset_status: bool,
    generation: bool,
    forbid_delete: Option<fn(&Value) -> Option<String>>,
    no_delete_collection: bool,
}

impl Builtin {
    /// The strategy of the k8s-openapi type `T`.
    pub fn of<T>() -> Builtin
    where
        T: serde::de::DeserializeOwned + serde::Serialize + schemars::JsonSchema,
    {
        Builtin {
            typed: typed::<T>,
            roundtrip: roundtrip::<T>,
            schema: |g| g.subschema_for::<T>(),
            extra: None,
            on_create: None,
            defaults: None,
            on_update: None,
            prepare_update: None,
            update_rules: None,
            fields: &[],
            field_zeros: Vec::new(),
            subresource_fields: &[],
            names: NameRule::Subdomain,
            table: crate::table::default_table(),
            reset_status: false,
            generation: false,
            forbid_delete: None,
            no_delete_collection: false,
        }
    }
    /// Selectable fields beyond metadata.name/namespace: (selector name, JSON pointer).
    pub fn fields(mut self, f: &'static [(&'static str, &'static str)]) -> Self {
        let mut generator = schemars::SchemaGenerator::default();
        let root = (self.schema)(&mut generator);
        self.field_zeros = f
            .iter()
            .map(|(_, ptr)| zero_value(root.as_value(), generator.definitions(), ptr))
            .collect();
        self.fields = f;
        self
    }
    pub fn validate_with(mut self, f: Check) -> Self {
        self.extra = Some(f);
        self
    }
    pub fn on_create(mut self, f: fn(&mut Value)) -> Self {
        self.on_create = Some(f);
        self
    }
    /// Rules checked on updates only (new, old): immutable fields.
    pub fn validate_update_with(mut self, f: fn(&Value, &Value) -> Vec<FieldError>) -> Self {
        self.update_rules = Some(f);
        self
    }
    /// Kubernetes' defaulting of the type (`capstan_api::defaults`): applied to every write
    /// (after the body is decoded, before validation) and every read, as kube-apiserver defaults
    /// whatever it decodes, from a request or from etcd; before [`Builtin::on_update`].
    pub fn defaults(mut self, f: fn(&mut Value)) -> Self {
        self.defaults = Some(f);
        self
    }
    /// Defaults applied to every write (after the body is decoded, before validation).
    pub fn on_update(mut self, f: fn(&mut Value)) -> Self {
        self.on_update = Some(f);
        self
    }
    /// What an update derives from the live object (see [`Strategy::prepare_for_update`]).
    pub fn prepare_update(mut self, f: fn(&mut Value, &Value)) -> Self {
        self.prepare_update = Some(f);
        self
    }
    /// Fields written only through a subresource (see [`Strategy::subresource_fields`]).
    pub fn subresource_fields(
        mut self,
        owned: &'static [(&'static str, &'static [&'static str])],
    ) -> Self {
        self.subresource_fields = owned;
        self
    }
    pub fn names(mut self, rule: NameRule) -> Self {
        self.names = rule;
        self
    }
    pub fn table(mut self, t: fn() -> Table) -> Self {
        self.table = t();
        self
    }
    /// Objects carry metadata.generation (bumped on spec changes).
    pub fn generation(mut self) -> Self {
        self.generation = true;
        self
    }
    /// Objects `f` names a reason for may not be deleted (403).
    pub fn forbid_delete(mut self, f: fn(&Value) -> Option<String>) -> Self {
        self.forbid_delete = Some(f);
        self
    }
    /// DELETE on the collection is not served (405).
    pub fn no_delete_collection(mut self) -> Self {
        self.no_delete_collection = true;
        self
    }
    pub fn reset_status_on_create(mut self) -> Self {
        self.reset_status = true;
        self
    }
    pub fn arc(self) -> Arc<dyn Strategy> {
        Arc::new(self)
    }
}

/// The object decoded as `T` and encoded again: what `T` knows of it.
/// The zero value of the field at JSON pointer `ptr` in a type's schema (following `$ref`s into
/// `definitions`): `"false"` for booleans, `"0"` for numbers, `""` for anything else.
fn zero_value(
    root: &Value,
    definitions: &serde_json::Map<String, Value>,
    ptr: &str,
) -> &'static str {
    fn resolve<'a>(mut s: &'a Value, definitions: &'a serde_json::Map<String, Value>) -> &'a Value {
        for _ in 0..32 {
            let Some(name) = s
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.rsplit('/').next())
            else {
                break;
            };
            match definitions.get(name) {
                Some(def) => s = def,
                None => break,
            }
        }
        s
    }
    let mut node = resolve(root, definitions);
    for step in ptr.split('/').skip(1) {
        match node.get("properties").and_then(|p| p.get(step)) {
            Some(next) => node = resolve(next, definitions),
            None => return "",
        }
    }
    let ty = match node.get("type") {
        Some(Value::Array(types)) => types.iter().find(|t| *t != "null").cloned(),
        other => other.cloned(),
    };
    match ty.as_ref().and_then(Value::as_str) {
        Some("boolean") => "false",
        Some("integer" | "number") => "0",
        _ => "",
    }
}

fn roundtrip<T: serde::de::DeserializeOwned + serde::Serialize>(obj: &Value) -> Option<Value> {
    serde_json::to_value(T::deserialize(obj).ok()?).ok()
}

/// Removes from `given` what is absent from `known` (its typed round trip): the mutating twin of
/// [`unknown_paths`]. Nulls are left alone (a typed round trip drops them for known fields too).
pub fn prune_unknown_values(given: &mut Value, known: &Value) {
    match (given, known) {
        (Value::Object(g), Value::Object(k)) => {
            g.retain(|key, v| k.contains_key(key) || v.is_null());
            for (key, v) in g.iter_mut() {
                if let Some(kv) = k.get(key) {
                    prune_unknown_values(v, kv);
                }
            }
        }
        (Value::Array(g), Value::Array(k)) => {
            for (gv, kv) in g.iter_mut().zip(k) {
                prune_unknown_values(gv, kv);
            }
        }
        _ => {}
    }
}

/// Paths present (and not null) in `given` but absent from `known`.
pub fn unknown_paths(given: &Value, known: &Value, path: &str, out: &mut Vec<String>) {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match (given, known) {
        (Value::Object(g), Value::Object(k)) => {
            for (key, v) in g {
                if v.is_null() {
                    continue;
                }
                match k.get(key) {
                    None => out.push(join(key)),
                    Some(kv) => unknown_paths(v, kv, &join(key), out),
                }
            }
        }
        (Value::Array(g), Value::Array(k)) => {
            for (i, (gv, kv)) in g.iter().zip(k).enumerate() {
                unknown_paths(gv, kv, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Checks that an object decodes as its typed k8s-openapi struct (types, required fields).
pub fn typed<T: serde::de::DeserializeOwned>(obj: &Value) -> Result<(), String> {
    T::deserialize(obj).map(|_| ()).map_err(|e| e.to_string())
}

impl Strategy for Builtin {
    fn validate(&self, obj: &Value) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if let Err(e) = (self.typed)(obj) {
            errs.push(FieldError {
                field: "<body>".into(),
                value: String::new(),
                message: format!("Invalid value: {e}"),
            });
            return errs;
        }
        if let Some(extra) = self.extra {
            errs.extend(extra(obj));
        }
        errs
    }

    fn prepare_for_create(&self, obj: &mut Value) {
        if self.reset_status
            && let Some(m) = obj.as_object_mut()
        {
            m.remove("status");
        }
        if let Some(f) = self.on_create {
            f(obj);
        }
    }

    fn prepare_for_update(&self, new: &mut Value, old: &Value) {
        if let Some(f) = self.prepare_update {
            f(new, old);
        }
    }

    fn name_rule(&self) -> NameRule {
        self.names
    }

    fn canonicalize(&self, obj: &mut Value) {
        if let Some(f) = self.defaults {
            f(obj);
        }
        if let Some(f) = self.on_update {
            f(obj);
        }
    }

    fn tracks_generation(&self) -> bool {
        self.generation
    }

    fn prune_unknown(&self, obj: &mut Value) {
        if let Some(known) = (self.roundtrip)(obj) {
            prune_unknown_values(obj, &known);
        }
    }

    fn validate_update(&self, new: &Value, old: &Value) -> Vec<FieldError> {
        self.update_rules.map(|f| f(new, old)).unwrap_or_default()
    }

    fn field(&self, obj: &Value, field: &str) -> Option<String> {
        match field {
            "metadata.name" => return Some(obj.name().unwrap_or_default().to_string()),
            "metadata.namespace" => return Some(obj.namespace().unwrap_or_default().to_string()),
            _ => {}
        }
        let i = self.fields.iter().position(|(f, _)| *f == field)?;
        Some(match obj.pointer(self.fields[i].1) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Bool(b)) => b.to_string(),
            Some(Value::Number(n)) => n.to_string(),
            _ => self
                .field_zeros
                .get(i)
                .copied()
                .unwrap_or_default()
                .to_string(),
        })
    }

    fn supports_field(&self, field: &str) -> bool {
        matches!(field, "metadata.name" | "metadata.namespace")
            || self.fields.iter().any(|(f, _)| *f == field)
    }

    fn selectable_pointers(&self) -> Vec<String> {
        self.fields.iter().map(|(_, p)| p.to_string()).collect()
    }

    fn table(&self) -> Table {
        self.table.clone()
    }

    fn forbid_delete(&self, obj: &Value) -> Option<String> {
        self.forbid_delete.and_then(|f| f(obj))
    }

    fn deletes_collections(&self) -> bool {
        !self.no_delete_collection
    }

    fn reset_status_on_create(&self) -> bool {
        self.reset_status
    }

    fn subresource_fields(&self) -> &'static [(&'static str, &'static [&'static str])] {
        self.subresource_fields
    }

    fn unknown_fields(&self, obj: &Value) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(known) = (self.roundtrip)(obj) {
            unknown_paths(obj, &known, "", &mut out);
        }
        out
    }

    fn openapi_schema(
        &self,
        generator: &mut schemars::SchemaGenerator,
    ) -> Option<schemars::Schema> {
        Some((self.schema)(generator))
    }
}

pub(crate) fn required(field: &str) -> FieldError {
    FieldError {
        field: field.into(),
        value: String::new(),
        message: "Required value".into(),
    }
}

pub(crate) fn invalid(field: &str, value: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        value: value.into(),
        message: message.into(),
    }
}

fn validate_containers(path: &str, list: Option<&Value>, need_one: bool) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let empty = Vec::new();
    let list = list.and_then(Value::as_array).unwrap_or(&empty);
    if need_one && list.is_empty() {
        errs.push(required(path));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, c) in list.iter().enumerate() {
        let name = c["name"].as_str().unwrap_or_default();
        if let Err(m) = validation::dns1123_label(name) {
            errs.push(invalid(&format!("{path}[{i}].name"), name, m));
        } else if !seen.insert(name.to_string()) {
            errs.push(FieldError {
                field: format!("{path}[{i}].name"),
                value: name.into(),
                message: "Duplicate value".into(),
            });
        }
        if c["image"].as_str().is_none_or(str::is_empty) {
            errs.push(required(&format!("{path}[{i}].image")));
        }
    }
    errs
}

pub(crate) fn validate_pod_spec(path: &str, spec: &Value) -> Vec<FieldError> {
    let mut errs = validate_containers(&format!("{path}.containers"), spec.get("containers"), true);
    errs.extend(validate_containers(
        &format!("{path}.initContainers"),
        spec.get("initContainers"),
        false,
    ));
    if let Some(p) = spec["restartPolicy"].as_str()
        && !matches!(p, "Always" | "OnFailure" | "Never")
    {
        errs.push(invalid(
            &format!("{path}.restartPolicy"),
            p,
            "Unsupported value: supported values: \"Always\", \"OnFailure\", \"Never\"",
        ));
    }
    errs
}

pub fn validate_pod(obj: &Value) -> Vec<FieldError> {
    let mut errs = validate_pod_spec("spec", &obj["spec"]);
    errs.extend(crate::ephemeral_containers::validate(&obj["spec"]));
    errs
}

/// Deployments and ReplicaSets: replicas ≥ 0, a non-empty selector that matches the template's
/// labels, a valid pod template; a Recreate Deployment has no rollingUpdate (which defaulting
/// gave it while it rolled: a switch to Recreate clears it, as in Kubernetes).
pub fn validate_workload(obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let spec = &obj["spec"];
    if spec["strategy"]["type"] == "Recreate" && !spec["strategy"]["rollingUpdate"].is_null() {
        errs.push(FieldError {
            field: "spec.strategy.rollingUpdate".into(),
            value: String::new(),
            message: "Forbidden: may not be specified when strategy `type` is 'Recreate'".into(),
        });
    }
    if let Some(r) = spec["replicas"].as_i64()
        && r < 0
    {
        errs.push(invalid(
            "spec.replicas",
            &r.to_string(),
            "must be greater than or equal to 0",
        ));
    }
    validate_selector(obj, "deployment", &mut errs);
    errs.extend(validate_pod_spec(
        "spec.template.spec",
        &spec["template"]["spec"],
    ));
    errs
}

/// A workload's `spec.selector`: not empty, parseable, and matching the template's labels.
pub(crate) fn validate_selector(obj: &Value, kind: &str, errs: &mut Vec<FieldError>) {
    let spec = &obj["spec"];
    let selector = &spec["selector"];
    let empty = selector["matchLabels"]
        .as_object()
        .is_none_or(|m| m.is_empty())
        && selector["matchExpressions"]
            .as_array()
            .is_none_or(|m| m.is_empty());
    if empty {
        errs.push(invalid(
            "spec.selector",
            "",
            format!("Invalid value: empty selector is invalid for {kind}"),
        ));
    } else {
        let parsed = serde_json::from_value(selector.clone())
            .map_err(|e| e.to_string())
            .and_then(|ls| {
                capstan_api::Selector::from_label_selector(&ls).map_err(|e| e.to_string())
            });
        match parsed {
            Err(e) => errs.push(invalid("spec.selector", "", e)),
            Ok(sel) => {
                let labels = obj.pointer("/spec/template/metadata/labels");
                let matches = sel.matches(|k| {
                    labels
                        .and_then(|l| l.get(k))
                        .and_then(Value::as_str)
                        .map(str::to_string)
                });
                if !matches {
                    errs.push(invalid(
                        "spec.template.metadata.labels",
                        &labels.map(Value::to_string).unwrap_or_default(),
                        "`selector` does not match template `labels`",
                    ));
                }
            }
        }
    }
}

/// A new pod starts Pending, with its QoS class (as kube-apiserver's pod strategy sets them).
pub fn pod_on_create(obj: &mut Value) {
    let qos = qos_class(&obj["spec"]);
    obj["status"] = json!({ "phase": "Pending", "qosClass": qos });
}

/// Guaranteed when every container has cpu and memory limits equal to requests; BestEffort when
/// none has any; Burstable otherwise.
pub fn qos_class(spec: &Value) -> &'static str {
    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .flat_map(|k| spec[*k].as_array().into_iter().flatten())
        .collect();
    let mut any = false;
    let mut guaranteed = !containers.is_empty();
    for c in &containers {
        let req = &c["resources"]["requests"];
        let lim = &c["resources"]["limits"];
        for r in ["cpu", "memory"] {
            let (rq, lm) = (req.get(r), lim.get(r));
            any |= rq.is_some() || lm.is_some();
            let req_eff = rq.or(lm);
            if lm.is_none() || req_eff != lm {
                guaranteed = false;
            }
        }
    }
    if guaranteed {
        "Guaranteed"
    } else if any {
        "Burstable"
    } else {
        "BestEffort"
    }
}

/// What kube-apiserver's Service storage settles on create besides defaulting
/// (`initIPFamilyFields`, on this single-stack IPv4 cluster): an ExternalName Service has no IP
/// families; a headless Service without a selector is RequireDualStack over IPv4 and IPv6 (it
/// needs no IPs); any other is SingleStack IPv4. Given values are kept. (The ClusterIP allocator
/// sets them again for the Services it gives an IP.)
pub fn service_on_create(obj: &mut Value) {
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    if spec.get("type").and_then(Value::as_str) == Some("ExternalName") {
        return;
    }
    let headless_selectorless = spec.get("clusterIP").and_then(Value::as_str) == Some("None")
        && spec
            .get("selector")
            .and_then(Value::as_object)
            .is_none_or(|s| s.is_empty());
    if spec.get("ipFamilyPolicy").is_none_or(Value::is_null) {
        let policy = if headless_selectorless {
            "RequireDualStack"
        } else {
            "SingleStack"
        };
        spec.insert("ipFamilyPolicy".into(), json!(policy));
    }
    let mut families: Vec<Value> = spec
        .get("ipFamilies")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if families.is_empty() {
        families.push(json!("IPv4"));
    }
    if headless_selectorless && families.len() < 2 && spec["ipFamilyPolicy"] != "SingleStack" {
        let other = if families[0] == "IPv6" {
            "IPv4"
        } else {
            "IPv6"
        };
        families.push(json!(other));
    }
    spec.insert("ipFamilies".into(), Value::Array(families));
}

/// A new namespace is Active and carries the `kubernetes` finalizer, which the namespace
/// controller removes once the namespace's content is gone.
pub fn namespace_on_create(obj: &mut Value) {
    obj["status"] = json!({ "phase": "Active" });
    obj["spec"] = json!({ "finalizers": ["kubernetes"] });
    // Named only now when it came with generateName: label it with its name.
    capstan_api::defaults::core::namespace(obj);
}

/// The namespaces every cluster starts with may not be deleted (kube-apiserver's namespace
/// lifecycle admission).
pub fn namespace_forbid_delete(obj: &Value) -> Option<String> {
    obj.name()
        .filter(|n| crate::SYSTEM_NAMESPACES.contains(n))
        .map(|_| "this namespace may not be deleted".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_found_by_a_typed_round_trip() {
        use k8s_openapi::api::apps::v1::Deployment;
        let s = Builtin::of::<Deployment>();
        let d = json!({"metadata": {"name": "x", "bogus": 1, "labels": null}, "spec": {"replicaz": 2,
            "selector": {}, "template": {"spec": {"containers": [{"name": "c", "imagee": "i"}]}}}});
        assert_eq!(
            s.unknown_fields(&d),
            [
                "metadata.bogus",
                "spec.replicaz",
                "spec.template.spec.containers[0].imagee"
            ]
        );
    }

    #[test]
    fn unset_selectable_fields_read_as_their_zero_value() {
        let nodes = Builtin::of::<k8s_openapi::api::core::v1::Node>()
            .fields(&[("spec.unschedulable", "/spec/unschedulable")]);
        let never_set = json!({"metadata": {"name": "a"}, "spec": {}});
        assert_eq!(
            nodes.field(&never_set, "spec.unschedulable").as_deref(),
            Some("false")
        );
        let cordoned = json!({"metadata": {"name": "b"}, "spec": {"unschedulable": true}});
        assert_eq!(
            nodes.field(&cordoned, "spec.unschedulable").as_deref(),
            Some("true")
        );
        let pods = Builtin::of::<k8s_openapi::api::core::v1::Pod>().fields(&[
            ("spec.nodeName", "/spec/nodeName"),
            ("spec.priority", "/spec/priority"),
        ]);
        assert_eq!(pods.field(&never_set, "spec.nodeName").as_deref(), Some(""));
        assert_eq!(
            pods.field(&never_set, "spec.priority").as_deref(),
            Some("0")
        );
    }

    #[test]
    fn a_new_services_ip_families_follow_its_kind() {
        // (spec, ipFamilyPolicy, ipFamilies); None: not set.
        let cases = [
            (
                json!({"type": "ClusterIP"}),
                Some("SingleStack"),
                json!(["IPv4"]),
            ),
            (
                json!({"type": "ClusterIP", "clusterIP": "None", "selector": {"app": "a"}}),
                Some("SingleStack"),
                json!(["IPv4"]),
            ),
            (
                json!({"type": "ClusterIP", "clusterIP": "None"}),
                Some("RequireDualStack"),
                json!(["IPv4", "IPv6"]),
            ),
            (
                json!({"type": "ClusterIP", "clusterIP": "None", "ipFamilyPolicy": "SingleStack"}),
                Some("SingleStack"),
                json!(["IPv4"]),
            ),
            (
                json!({"type": "NodePort", "ipFamilyPolicy": "PreferDualStack"}),
                Some("PreferDualStack"),
                json!(["IPv4"]),
            ),
            (json!({"type": "ExternalName"}), None, Value::Null),
        ];
        for (spec, policy, families) in cases {
            let mut svc = json!({ "spec": spec.clone() });
            service_on_create(&mut svc);
            assert_eq!(svc["spec"]["ipFamilyPolicy"].as_str(), policy, "{spec}");
            assert_eq!(svc["spec"]["ipFamilies"], families, "{spec}");
        }
    }

    #[test]
    fn qos_follows_requests_and_limits() {
        let g = json!({"containers":[{"resources":{"limits":{"cpu":"1","memory":"1Gi"}}}]});
        assert_eq!(qos_class(&g), "Guaranteed");
        let b = json!({"containers":[{"resources":{"requests":{"cpu":"1"}}}]});
        assert_eq!(qos_class(&b), "Burstable");
        let be = json!({"containers":[{"name":"a"}]});
        assert_eq!(qos_class(&be), "BestEffort");
    }

    #[test]
    fn a_workload_whose_selector_misses_its_template_is_invalid() {
        let d = json!({"spec":{"replicas":-1,"selector":{"matchLabels":{"app":"a"}},
            "strategy":{"type":"Recreate","rollingUpdate":{"maxSurge":"25%"}},
            "template":{"metadata":{"labels":{"app":"b"}},"spec":{"containers":[{"name":"c"}]}}}});
        let fields: Vec<_> = validate_workload(&d).into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            [
                "spec.strategy.rollingUpdate",
                "spec.replicas",
                "spec.template.metadata.labels",
                "spec.template.spec.containers[0].image"
            ]
        );
    }
}
