//! The EndpointSlice reconciler: desired endpoints + the slices that exist → which slices to
//! create, update and delete, writing as little as possible (kubernetes/staging/src/k8s.io/
//! endpointslice/reconciler.go, reconcileByPortMapping and finalize). Pure; shared by the
//! EndpointSlice controller and the mirroring controller.
//!
//! Endpoints are grouped by (address type, port set); within a group:
//! 1. every existing slice keeps the endpoints that are still desired, in place (an endpoint whose
//!    content changed is rewritten where it is), and drops the rest; a slice whose content or
//!    labels changed is updated, one left empty is deleted, the others are not written at all;
//! 2. endpoints not yet placed first fill the slices that are being updated anyway (fullest
//!    first), then go into new slices of `max` endpoints; a last part smaller than `max` goes
//!    into the unchanged slice that fits it most tightly, if any does, else into a new slice;
//! 3. finally a slice to create and a slice to delete (same owner, same address type) become one
//!    update of the slice that would have been deleted.
//!
//! Worked example, max 100: slices A(100) B(100) C(50).
//! - one pod added → C gets it: one update, A and B untouched;
//! - one pod of A removed → A updated to 99, B and C untouched (nothing is reshuffled);
//! - 60 pods added → C is unchanged and cannot hold 60, so a new slice D(60) is created.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

/// Desired endpoints sharing one address type and one port set.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub address_type: String,
    /// Canonically sorted ([`sort_ports`]).
    pub ports: Vec<EndpointPort>,
    pub endpoints: Vec<Endpoint>,
}

/// The metadata every slice of one owner carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pub namespace: String,
    pub generate_name: String,
    pub labels: BTreeMap<String, String>,
    /// Compared and written when Some (the mirroring controller copies the Endpoints'
    /// annotations); left as they are when None.
    pub annotations: Option<BTreeMap<String, String>>,
    /// The controller reference to the owner; slices controlled by another uid (an older
    /// object of the same name) are deleted.
    pub owner: OwnerReference,
}

#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// New slices (named by generateName).
    pub create: Vec<EndpointSlice>,
    /// Existing slices, rewritten; each carries the resourceVersion it was read at.
    pub update: Vec<EndpointSlice>,
    pub delete: Vec<Arc<EndpointSlice>>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.update.is_empty() && self.delete.is_empty()
    }
}

/// Sorts ports into the canonical order slices are compared in.
pub fn sort_ports(ports: &mut [EndpointPort]) {
    ports.sort_by(|a, b| port_tuple(a).cmp(&port_tuple(b)));
}

fn port_tuple(p: &EndpointPort) -> (&str, &str, i32, &str) {
    (
        p.name.as_deref().unwrap_or(""),
        p.protocol.as_deref().unwrap_or("TCP"),
        p.port.unwrap_or(0),
        p.app_protocol.as_deref().unwrap_or(""),
    )
}

/// A string naming a port set (order-insensitive once the ports are sorted).
pub fn ports_key(ports: &[EndpointPort]) -> String {
    let mut sorted = ports.to_vec();
    sort_ports(&mut sorted);
    sorted
        .iter()
        .map(|p| {
            let (n, proto, port, app) = port_tuple(p);
            format!("{n}/{proto}/{port}/{app}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// An endpoint's identity: its addresses and what it points at. Everything else (conditions,
/// node, zone, hostname) is content that may change in place.
pub fn endpoint_key(ep: &Endpoint) -> String {
    let target = ep
        .target_ref
        .as_ref()
        .map(|r| {
            format!(
                "{}/{}/{}/{}",
                r.kind.as_deref().unwrap_or(""),
                r.namespace.as_deref().unwrap_or(""),
                r.name.as_deref().unwrap_or(""),
                r.uid.as_deref().unwrap_or("")
            )
        })
        .unwrap_or_default();
    format!("{}|{target}", ep.addresses.join(","))
}

type GroupKey = (String, String);

fn group_key_of(slice: &EndpointSlice) -> GroupKey {
    (
        slice.address_type.clone(),
        ports_key(slice.ports.as_deref().unwrap_or(&[])),
    )
}

fn owned_by(slice: &EndpointSlice, owner: &OwnerReference) -> bool {
    slice
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && r.uid == owner.uid)
}

struct Wanted {
    address_type: String,
    ports: Vec<EndpointPort>,
    /// Not yet placed, by identity (a BTreeMap so placement is deterministic).
    endpoints: BTreeMap<String, Endpoint>,
}

/// The whole decision for one owner. `existing` holds the slices this controller manages for
/// it (by label); `max` is the most endpoints one slice holds (at least 1). With `placeholder`,
/// an owner without endpoints keeps one empty slice, as Kubernetes' EndpointSlice controller
/// does, so clients can tell "no endpoints" from "not processed yet".
pub fn reconcile(
    t: &Template,
    desired: Vec<Group>,
    existing: &[Arc<EndpointSlice>],
    max: usize,
    placeholder: bool,
) -> Plan {
    let max = max.max(1);
    let mut want: BTreeMap<GroupKey, Wanted> = BTreeMap::new();
    for g in desired {
        let key = (g.address_type.clone(), ports_key(&g.ports));
        let w = want.entry(key).or_insert_with(|| Wanted {
            address_type: g.address_type,
            ports: g.ports,
            endpoints: BTreeMap::new(),
        });
        for ep in g.endpoints {
            w.endpoints.entry(endpoint_key(&ep)).or_insert(ep);
        }
    }
    let needs_placeholder = placeholder && want.values().all(|w| w.endpoints.is_empty());
    want.retain(|_, w| !w.endpoints.is_empty());
    let placeholder_key: GroupKey = ("IPv4".into(), String::new());

    let mut sorted: Vec<&Arc<EndpointSlice>> = existing.iter().collect();
    sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut plan = Plan::default();
    // Per group: slices to update (with their new endpoints) and unchanged slices.
    let mut updating: BTreeMap<GroupKey, Vec<EndpointSlice>> = BTreeMap::new();
    let mut unchanged: BTreeMap<GroupKey, Vec<Arc<EndpointSlice>>> = BTreeMap::new();
    let mut kept_placeholder = false;
    for slice in sorted {
        let key = group_key_of(slice);
        let meta_changed = metadata_changed(t, slice);
        if !owned_by(slice, &t.owner) {
            plan.delete.push(slice.clone());
            continue;
        }
        if needs_placeholder
            && !kept_placeholder
            && key == placeholder_key
            && slice.endpoints.is_empty()
        {
            kept_placeholder = true;
            if meta_changed {
                plan.update.push(rewrite(t, slice, Vec::new()));
            }
            continue;
        }
        let Some(w) = want.get_mut(&key) else {
            plan.delete.push(slice.clone());
            continue;
        };
        let mut changed = false;
        let mut endpoints = Vec::with_capacity(slice.endpoints.len());
        for ep in &slice.endpoints {
            match w.endpoints.remove(&endpoint_key(ep)) {
                Some(d) => {
                    changed |= d != *ep;
                    endpoints.push(d);
                }
                None => changed = true, // no longer desired (or a duplicate)
            }
        }
        if endpoints.is_empty() {
            plan.delete.push(slice.clone());
        } else if changed || meta_changed {
            updating
                .entry(key)
                .or_default()
                .push(rewrite(t, slice, endpoints));
        } else {
            unchanged.entry(key).or_default().push(slice.clone());
        }
    }

    for (key, w) in want {
        let mut rest: Vec<Endpoint> = w.endpoints.into_values().collect();
        rest.reverse(); // pop() takes them in key order
        // Fill the slices written anyway, fullest first.
        if let Some(slices) = updating.get_mut(&key) {
            slices.sort_by_key(|s| std::cmp::Reverse(s.endpoints.len()));
            for s in slices.iter_mut() {
                while s.endpoints.len() < max {
                    let Some(ep) = rest.pop() else { break };
                    s.endpoints.push(ep);
                }
            }
        }
        while rest.len() >= max {
            let chunk = rest.split_off(rest.len() - max);
            plan.create
                .push(new_slice(t, &w.address_type, &w.ports, rev(chunk)));
        }
        if rest.is_empty() {
            continue;
        }
        // The tightest unchanged slice that takes all of the rest, else a new slice.
        let fit = unchanged.get_mut(&key).and_then(|slices| {
            let i = slices
                .iter()
                .enumerate()
                .filter(|(_, s)| s.endpoints.len() + rest.len() <= max)
                .max_by_key(|(_, s)| s.endpoints.len())
                .map(|(i, _)| i)?;
            Some(slices.remove(i))
        });
        match fit {
            Some(slice) => {
                let mut endpoints = slice.endpoints.clone();
                endpoints.extend(rev(rest));
                updating
                    .entry(key)
                    .or_default()
                    .push(rewrite(t, &slice, endpoints));
            }
            None => plan
                .create
                .push(new_slice(t, &w.address_type, &w.ports, rev(rest))),
        }
    }
    plan.update.extend(updating.into_values().flatten());
    if needs_placeholder && !kept_placeholder {
        plan.create
            .push(new_slice(t, &placeholder_key.0, &[], Vec::new()));
    }

    // A create and a delete of the same kind of slice become one update.
    let mut i = 0;
    while i < plan.delete.len() && !plan.create.is_empty() {
        let old = &plan.delete[i];
        let Some(j) = plan
            .create
            .iter()
            .rposition(|c| c.address_type == old.address_type)
            .filter(|_| owned_by(old, &t.owner))
        else {
            i += 1;
            continue;
        };
        let new = plan.create.remove(j);
        let old = plan.delete.remove(i);
        let mut slice = rewrite(t, &old, new.endpoints);
        slice.ports = new.ports;
        plan.update.push(slice);
    }
    plan
}

fn rev(mut v: Vec<Endpoint>) -> Vec<Endpoint> {
    v.reverse();
    v
}

fn metadata_changed(t: &Template, slice: &EndpointSlice) -> bool {
    let empty = BTreeMap::new();
    let labels = slice.metadata.labels.as_ref().unwrap_or(&empty);
    if *labels != t.labels {
        return true;
    }
    match &t.annotations {
        Some(want) => slice.metadata.annotations.as_ref().unwrap_or(&empty) != want,
        None => false,
    }
}

/// `slice` with new endpoints and the template's labels (and annotations), keeping its name,
/// resourceVersion and everything else.
fn rewrite(t: &Template, slice: &EndpointSlice, endpoints: Vec<Endpoint>) -> EndpointSlice {
    let mut s = slice.clone();
    s.endpoints = endpoints;
    s.metadata.labels = Some(t.labels.clone());
    if let Some(a) = &t.annotations {
        s.metadata.annotations = (!a.is_empty()).then(|| a.clone());
    }
    s
}

fn new_slice(
    t: &Template,
    address_type: &str,
    ports: &[EndpointPort],
    endpoints: Vec<Endpoint>,
) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            generate_name: Some(t.generate_name.clone()),
            namespace: Some(t.namespace.clone()),
            labels: Some(t.labels.clone()),
            annotations: t.annotations.clone().filter(|a| !a.is_empty()),
            owner_references: Some(vec![t.owner.clone()]),
            ..Default::default()
        },
        address_type: address_type.to_string(),
        endpoints,
        ports: Some(ports.to_vec()),
    }
}

#[cfg(test)]
mod tests;
