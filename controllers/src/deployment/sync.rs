//! One sync of a Deployment (syncDeployment), as a pure function from the Deployment, the
//! ReplicaSets of its namespace and its old pods to a [`Plan`]. Each pass takes one step — create
//! the new ReplicaSet, scale up, scale down — and the next pass starts from what the informers
//! then show, as Kubernetes' controller does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::progress;
use super::util::{self, DESIRED_REPLICAS, MAX_REPLICAS, REVISION, TEMPLATE_HASH};
use crate::claims::{self, Claims};
use crate::podutil::controller_owner_ref;

/// A change of one ReplicaSet's size (with the annotations recording what it was sized for).
#[derive(Debug, Clone, PartialEq)]
pub struct Scale {
    pub name: String,
    pub from: i32,
    pub to: i32,
}

#[derive(Debug, Default)]
pub struct Plan {
    pub adopt: Vec<Arc<ReplicaSet>>,
    pub release: Vec<Arc<ReplicaSet>>,
    /// The new ReplicaSet to create.
    pub create: Option<ReplicaSet>,
    /// Annotations to set on the existing new ReplicaSet (its revision moved on).
    pub annotate: Option<(String, BTreeMap<String, String>)>,
    pub scale: Vec<Scale>,
    /// Old ReplicaSets beyond revisionHistoryLimit.
    pub delete: Vec<Arc<ReplicaSet>>,
    /// The Deployment's own revision annotation, when it must change.
    pub deployment_revision: Option<String>,
    pub status: Option<DeploymentStatus>,
    /// Look again after this long (progress deadline, minReadySeconds).
    pub requeue_after: Option<Duration>,
    /// Events to publish: (reason, message).
    pub events: Vec<(&'static str, String)>,
}

/// The ReplicaSets a Deployment controls after claiming its namespace's ReplicaSets.
pub fn claim(d: &Deployment, rss: &[Arc<ReplicaSet>]) -> Claims<ReplicaSet> {
    claims::claim(&d.metadata, d.spec.as_ref().map(|s| &s.selector), rss)
}

/// The working picture of one pass: the new ReplicaSet (if any), the old ones, and sizes as this
/// pass has decided them.
#[derive(Debug)]
pub struct Rollout<'a> {
    pub d: &'a Deployment,
    pub new: Option<ReplicaSet>,
    pub old: Vec<ReplicaSet>,
    pub plan: Plan,
    pub now: Timestamp,
}

impl Rollout<'_> {
    pub fn all(&self) -> Vec<&ReplicaSet> {
        self.old.iter().chain(self.new.iter()).collect()
    }

    /// Sets `rs`'s size (in this picture and in the plan), with an event like Kubernetes'.
    pub fn scale(&mut self, name: &str, to: i32) {
        let (surge, _) = util::surge_and_unavailable(self.d);
        let want = util::replicas(self.d);
        let target = self
            .new
            .iter_mut()
            .chain(self.old.iter_mut())
            .find(|r| r.metadata.name.as_deref() == Some(name));
        let Some(rs) = target else { return };
        let from = util::rs_replicas(rs);
        let annotated = util::annotation_i32(rs, DESIRED_REPLICAS) == Some(want)
            && util::annotation_i32(rs, MAX_REPLICAS) == Some(want + surge);
        if from == to && annotated {
            return;
        }
        if let Some(s) = rs.spec.as_mut() {
            s.replicas = Some(to);
        }
        let ann = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
        ann.insert(DESIRED_REPLICAS.into(), want.to_string());
        ann.insert(MAX_REPLICAS.into(), (want + surge).to_string());
        let first_from = self
            .plan
            .scale
            .iter()
            .find(|s| s.name == name)
            .map_or(from, |s| s.from);
        self.plan.scale.retain(|s| s.name != name);
        self.plan.scale.push(Scale {
            name: name.to_string(),
            from: first_from,
            to,
        });
        if from != to {
            let dir = if to > from { "up" } else { "down" };
            self.plan.events.push((
                "ScalingReplicaSet",
                format!("Scaled {dir} replica set {name} from {from} to {to}"),
            ));
        }
    }
}

/// The whole decision for one Deployment.
pub fn plan(
    d: &Deployment,
    rss: &[Arc<ReplicaSet>],
    old_pods: &[Arc<Pod>],
    now: Timestamp,
) -> Plan {
    let Claims {
        owned,
        adopt,
        release,
    } = claim(d, rss);
    let mut r = Rollout {
        d,
        new: None,
        old: vec![],
        plan: Plan {
            adopt,
            release,
            ..Plan::default()
        },
        now,
    };
    // Oldest first: the first matching template is the new ReplicaSet.
    let mut owned: Vec<ReplicaSet> = owned.iter().map(|r| (**r).clone()).collect();
    owned.sort_by_key(|r| (util::created(r), r.metadata.name.clone()));
    for rs in owned {
        if r.new.is_none() && util::same_template(d, &rs) {
            r.new = Some(rs);
        } else {
            r.old.push(rs);
        }
    }
    let paused = d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
    if d.metadata.deletion_timestamp.is_some() {
        finish(&mut r, false);
        return r.plan;
    }
    sync_revision(&mut r);
    if paused || is_scaling_event(&r) {
        super::scale::scale(&mut r);
        finish(&mut r, paused);
        return r.plan;
    }
    if util::is_recreate(d) {
        super::recreate::rollout(&mut r, old_pods);
    } else {
        super::rolling::rollout(&mut r);
    }
    r.plan
}

/// Status, progress and (when the rollout is complete or paused) history cleanup.
pub fn finish(r: &mut Rollout<'_>, cleanup: bool) {
    let status = progress::status(r);
    let complete = progress::complete(r.d, &status);
    if cleanup || complete {
        cleanup_history(r);
    }
    r.plan.requeue_after = progress::requeue_after(r, &status);
    if r.d.status.as_ref() != Some(&status) {
        r.plan.status = Some(status);
    }
}

/// The new ReplicaSet carries max(old revisions)+1, and the Deployment shows it.
fn sync_revision(r: &mut Rollout<'_>) {
    let max_old = r.old.iter().map(util::revision).max().unwrap_or(0);
    let Some(new) = r.new.as_mut() else { return };
    let want = max_old + 1;
    let current = util::revision(new);
    let mut ann = new.metadata.annotations.clone().unwrap_or_default();
    let mut changed = false;
    if current < want {
        ann.insert(REVISION.into(), want.to_string());
        changed = true;
    }
    for (k, v) in util::inherited_annotations(r.d) {
        if ann.get(&k) != Some(&v) {
            ann.insert(k, v);
            changed = true;
        }
    }
    if changed {
        new.metadata.annotations = Some(ann.clone());
        r.plan.annotate = Some((new.metadata.name.clone().unwrap_or_default(), ann));
    }
    let rev = util::revision(new).to_string();
    deployment_revision(r, rev);
}

fn deployment_revision(r: &mut Rollout<'_>, rev: String) {
    let current =
        r.d.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(REVISION));
    if current != Some(&rev) {
        r.plan.deployment_revision = Some(rev);
    }
}

/// The Deployment's size changed while no template change is under way: some active
/// ReplicaSet was sized for another replica count.
fn is_scaling_event(r: &Rollout<'_>) -> bool {
    let want = util::replicas(r.d);
    r.all().into_iter().any(|rs| {
        util::rs_replicas(rs) > 0
            && util::annotation_i32(rs, DESIRED_REPLICAS).is_some_and(|n| n != want)
    })
}

/// Creates the new ReplicaSet at `replicas` (in the plan); the picture then includes it.
pub fn create_new(r: &mut Rollout<'_>, replicas: i32) {
    let d = r.d;
    let spec = d.spec.clone().unwrap_or_default();
    let collisions = d.status.as_ref().and_then(|s| s.collision_count);
    let hash = util::template_hash(&spec.template, collisions);
    let name = format!("{}-{hash}", d.metadata.name.as_deref().unwrap_or(""));
    let mut template = spec.template.clone();
    template
        .metadata
        .get_or_insert_with(Default::default)
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(TEMPLATE_HASH.into(), hash.clone());
    let mut selector = spec.selector.clone();
    selector
        .match_labels
        .get_or_insert_with(BTreeMap::new)
        .insert(TEMPLATE_HASH.into(), hash.clone());
    let mut labels = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.insert(TEMPLATE_HASH.into(), hash);
    let (surge, _) = util::surge_and_unavailable(d);
    let want = util::replicas(d);
    let revision = r.old.iter().map(util::revision).max().unwrap_or(0) + 1;
    let mut annotations = util::inherited_annotations(d);
    annotations.insert(REVISION.into(), revision.to_string());
    annotations.insert(DESIRED_REPLICAS.into(), want.to_string());
    annotations.insert(MAX_REPLICAS.into(), (want + surge).to_string());
    let rs = ReplicaSet {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: d.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![controller_owner_ref(d)]),
            ..Default::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(replicas),
            min_ready_seconds: spec.min_ready_seconds,
            selector,
            template: Some(template),
        }),
        status: None,
    };
    r.plan.events.push((
        "ScalingReplicaSet",
        format!("Scaled up replica set {name} from 0 to {replicas}"),
    ));
    r.plan.create = Some(rs.clone());
    deployment_revision(r, revision.to_string());
    r.new = Some(rs);
}

/// Deletes the oldest fully scaled-down old ReplicaSets beyond revisionHistoryLimit.
fn cleanup_history(r: &mut Rollout<'_>) {
    let limit =
        r.d.spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .unwrap_or(10)
            .max(0) as usize;
    let alive: Vec<&ReplicaSet> = r
        .old
        .iter()
        .filter(|rs| rs.metadata.deletion_timestamp.is_none())
        .collect();
    if alive.len() <= limit {
        return;
    }
    let mut cleanable: Vec<&ReplicaSet> = alive
        .iter()
        .copied()
        .filter(|rs| {
            util::rs_replicas(rs) == 0 && rs.status.as_ref().is_none_or(|s| s.replicas == 0)
        })
        .collect();
    cleanable.sort_by_key(|rs| (util::revision(rs), util::created(rs)));
    let n = alive.len() - limit;
    r.plan.delete = cleanable
        .into_iter()
        .take(n)
        .map(|rs| Arc::new(rs.clone()))
        .collect();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::podutil::fixtures::at;
    use k8s_openapi::api::apps::v1::{DeploymentSpec, ReplicaSetStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;

    fn deployment(replicas: i32, surge: i32, unavailable: i32, image: &str) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "uid-web", "generation": 1},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": image}]}}}
        }))
        .unwrap()
    }

    /// Plays the world: applies each plan (creates and scales), lets `ready_per_step` new pods
    /// per ReplicaSet become available per step (old ones stay available), and checks the
    /// rollout's bounds at every step. Returns the number of steps to converge.
    fn simulate(mut d: Deployment, mut rss: Vec<ReplicaSet>, ready_per_step: i32) -> usize {
        let want = util::replicas(&d);
        let (surge, unavailable) = util::surge_and_unavailable(&d);
        let mut clock = 0;
        for step in 0..500 {
            clock += 1;
            let arcs: Vec<Arc<ReplicaSet>> = rss.iter().cloned().map(Arc::new).collect();
            let plan = plan(&d, &arcs, &[], at(clock));
            if let Some(mut rs) = plan.create {
                rs.metadata.uid = Some(format!("uid-{step}"));
                rs.metadata.creation_timestamp = Some(Time(at(clock)));
                rss.push(rs);
            }
            for s in &plan.scale {
                let rs = rss
                    .iter_mut()
                    .find(|r| r.metadata.name.as_deref() == Some(s.name.as_str()))
                    .unwrap();
                rs.spec.as_mut().unwrap().replicas = Some(s.to);
                let ann = rs.metadata.annotations.get_or_insert_with(Default::default);
                ann.insert(DESIRED_REPLICAS.into(), want.to_string());
                ann.insert(MAX_REPLICAS.into(), (want + surge).to_string());
            }
            if let Some((name, ann)) = plan.annotate {
                let rs = rss
                    .iter_mut()
                    .find(|r| r.metadata.name.as_deref() == Some(name.as_str()))
                    .unwrap();
                rs.metadata.annotations = Some(ann);
            }
            let total: i32 = rss.iter().map(util::rs_replicas).sum();
            assert!(
                total <= want + surge,
                "step {step}: {total} pods > {want} + {surge}"
            );
            // Pods: scale-downs are immediate, new pods become available gradually.
            for rs in rss.iter_mut() {
                let spec = util::rs_replicas(rs);
                let st = rs.status.get_or_insert_with(ReplicaSetStatus::default);
                let avail = st.available_replicas.unwrap_or(0);
                let next = if spec <= avail {
                    spec
                } else {
                    (avail + ready_per_step).min(spec)
                };
                st.replicas = spec;
                st.ready_replicas = Some(next);
                st.available_replicas = Some(next);
            }
            let available: i32 = rss.iter().map(util::rs_available).sum();
            assert!(
                available >= want - unavailable,
                "step {step}: only {available} available"
            );
            if let Some(s) = plan.status {
                d.status = Some(s);
            }
            let done = d.status.as_ref().is_some_and(|s| progress::complete(&d, s))
                && rss
                    .iter()
                    .filter(|r| !util::same_template(&d, r))
                    .all(|r| util::rs_replicas(r) == 0);
            if done {
                return step;
            }
        }
        panic!("did not converge: {rss:#?}");
    }

    fn settled(d: &Deployment) -> Vec<ReplicaSet> {
        // Run a fresh deployment to completion and hand back its ReplicaSets.
        let mut rss = Vec::new();
        let mut d = d.clone();
        for step in 0..100 {
            let arcs: Vec<Arc<ReplicaSet>> = rss.iter().cloned().map(Arc::new).collect();
            let p = plan(&d, &arcs, &[], at(step));
            if let Some(mut rs) = p.create {
                rs.metadata.uid = Some("uid-old".into());
                rs.metadata.creation_timestamp = Some(Time(at(0)));
                let n = util::rs_replicas(&rs);
                rs.status = Some(ReplicaSetStatus {
                    replicas: n,
                    ready_replicas: Some(n),
                    available_replicas: Some(n),
                    ..Default::default()
                });
                rss.push(rs);
            }
            for s in &p.scale {
                let rs = rss
                    .iter_mut()
                    .find(|r| r.metadata.name.as_deref() == Some(s.name.as_str()))
                    .unwrap();
                rs.spec.as_mut().unwrap().replicas = Some(s.to);
                rs.status = Some(ReplicaSetStatus {
                    replicas: s.to,
                    ready_replicas: Some(s.to),
                    available_replicas: Some(s.to),
                    ..Default::default()
                });
            }
            if let Some(s) = p.status {
                d.status = Some(s);
            }
            if d.status.as_ref().is_some_and(|s| progress::complete(&d, s)) {
                return rss;
            }
        }
        panic!("first rollout did not settle");
    }

    #[test]
    fn rolling_update_never_exceeds_max_surge_nor_max_unavailable() {
        for (replicas, surge, unavailable) in
            [(10, 3, 2), (3, 1, 0), (5, 0, 1), (1, 1, 0), (7, 2, 3)]
        {
            let v1 = deployment(replicas, surge, unavailable, "img:1");
            let rss = settled(&v1);
            let mut v2 = deployment(replicas, surge, unavailable, "img:2");
            v2.status = None;
            for ready_per_step in [1, 100] {
                simulate(v2.clone(), rss.clone(), ready_per_step);
            }
        }
    }

    #[test]
    fn a_new_template_creates_the_next_revision_and_the_deployment_records_it() {
        let v1 = deployment(3, 1, 0, "img:1");
        let rss: Vec<Arc<ReplicaSet>> = settled(&v1).into_iter().map(Arc::new).collect();
        assert_eq!(util::revision(&rss[0]), 1);
        let v2 = deployment(3, 1, 0, "img:2");
        let p = plan(&v2, &rss, &[], at(100));
        let new = p.create.expect("a new ReplicaSet");
        assert_eq!(util::revision(&new), 2);
        assert_eq!(
            util::rs_replicas(&new),
            1,
            "maxSurge 1 lets one new pod start"
        );
        assert_eq!(p.deployment_revision.as_deref(), Some("2"));
        let hash = &new.metadata.labels.as_ref().unwrap()[TEMPLATE_HASH];
        assert_eq!(
            new.spec
                .as_ref()
                .unwrap()
                .selector
                .match_labels
                .as_ref()
                .unwrap()[TEMPLATE_HASH],
            *hash
        );
        assert!(new.metadata.name.as_ref().unwrap().ends_with(hash.as_str()));
    }

    #[test]
    fn history_beyond_the_limit_is_cleaned_oldest_first() {
        let mut d = deployment(1, 1, 0, "img:9");
        d.spec.as_mut().unwrap().revision_history_limit = Some(1);
        let mut rss = Vec::new();
        for rev in 1..=3 {
            let mut old = deployment(1, 1, 0, &format!("img:{rev}"));
            old.metadata.uid = Some("uid-web".into());
            let mut r = Rollout {
                d: &old,
                new: None,
                old: vec![],
                plan: Plan::default(),
                now: at(0),
            };
            create_new(&mut r, 0);
            let mut rs = r.plan.create.unwrap();
            rs.metadata
                .annotations
                .as_mut()
                .unwrap()
                .insert(REVISION.into(), rev.to_string());
            rs.metadata.creation_timestamp = Some(Time(at(rev)));
            rs.status = Some(ReplicaSetStatus::default());
            rss.push(Arc::new(rs));
        }
        let mut current = deployment(1, 1, 0, "img:9");
        current.spec.as_mut().unwrap().revision_history_limit = Some(1);
        let mut r = Rollout {
            d: &current,
            new: None,
            old: vec![],
            plan: Plan::default(),
            now: at(5),
        };
        create_new(&mut r, 1);
        let mut new = r.plan.create.unwrap();
        new.metadata.creation_timestamp = Some(Time(at(4)));
        new.status = Some(ReplicaSetStatus {
            replicas: 1,
            ready_replicas: Some(1),
            available_replicas: Some(1),
            ..Default::default()
        });
        rss.push(Arc::new(new));
        current.status = Some(DeploymentStatus {
            replicas: Some(1),
            updated_replicas: Some(1),
            available_replicas: Some(1),
            observed_generation: Some(1),
            ..Default::default()
        });
        let p = plan(&current, &rss, &[], at(6));
        let deleted: Vec<i64> = p.delete.iter().map(|r| util::revision(r)).collect();
        assert_eq!(deleted, vec![1, 2]);
        let _ = DeploymentSpec::default();
    }
}
