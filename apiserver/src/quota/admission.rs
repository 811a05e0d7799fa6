//! The ResourceQuota admission plugin (plugin/pkg/admission/resourcequota): every create of a
//! namespaced object is checked against the quotas of its namespace whose scopes select it,
//! after the mutating plugins (so LimitRange defaults count) and before the object is stored.
//!
//! - A quota limiting cpu or memory refuses pods whose containers do not state them:
//!   `failed quota: NAME: must specify limits.cpu for: c`.
//! - A quota whose status the controller has not computed yet refuses what it limits:
//!   `status unknown for quota: NAME, resources: pods`.
//! - What would pass `status.hard` is refused: `exceeded quota: NAME, requested: pods=1, used:
//!   pods=3, limited: pods=3`, a 403 as in Kubernetes.
//! - Otherwise the object is charged: the quota's `status.used` grows by what it uses, written
//!   with a compare-and-swap on the quota (re-read and re-checked when another write won), so
//!   concurrent creates can never pass a quota together. What is freed later (deletes, pods
//!   finishing) the resource-quota controller gives back.
//! - Charges to one quota go through one worker (kube-apiserver's quota evaluator does the
//!   same): it takes every charge waiting, checks them in arrival order against one read of
//!   the quota, and writes their sum once, so many clients creating in one namespace cost one
//!   quota write per batch instead of contending for it. A worker idle for a while stops.
//!
//! - Updates are charged what they add (a claim grown, a Service turned NodePort or
//!   LoadBalancer); what they free the controller gives back. As in kube-apiserver, an update
//!   retried after a lost race is charged again, and the controller's recalculation corrects
//!   the excess.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use capstan_api::quota::{self, Usage, format, parse_list, pretty};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::ApiServer;
use crate::errors::{ApiError, ApiResult};
use crate::object::ObjectExt;
use crate::registry::ResourceInfo;

/// How many times a batch re-reads a quota another write changed first.
const ATTEMPTS: usize = 20;
/// Charges checked against one read of a quota, at most.
const BATCH: usize = 512;
/// A worker with nothing to do for this long stops.
const IDLE: Duration = Duration::from_secs(30);

/// One write's charge to one quota.
struct Charge {
    relevant: Vec<String>,
    delta: Usage,
    dry_run: bool,
    reply: oneshot::Sender<Outcome>,
}

/// What became of a charge.
enum Outcome {
    Charged,
    /// Refused, with the reason (the 403's message after "is forbidden: ").
    Refused(String),
    Failed(ApiError),
}

type Workers = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Charge>>>>;

#[derive(Debug, Default)]
pub struct QuotaAdmission {
    api: OnceLock<Weak<ApiServer>>,
    workers: Workers,
}

impl std::fmt::Debug for Charge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Charge")
            .field("relevant", &self.relevant)
            .finish_non_exhaustive()
    }
}

fn forbidden(info: &ResourceInfo, obj: &Value, message: String) -> ApiError {
    ApiError::forbidden(
        &info.group,
        &info.plural,
        obj.name().unwrap_or_default(),
        &message,
    )
}

impl QuotaAdmission {
    pub fn attach(&self, api: Weak<ApiServer>) {
        let _ = self.api.set(api);
    }

    /// Checks `obj`, about to be created, against its namespace's quotas and charges it (only
    /// checks with `dry_run`).
    pub async fn admit_create(
        &self,
        info: &ResourceInfo,
        obj: &Value,
        dry_run: bool,
    ) -> ApiResult<()> {
        self.admit(info, obj, None, dry_run).await
    }

    /// Checks an update of `old` to `obj` and charges what it uses beyond `old` (a claim
    /// grown, a Service turned NodePort); what it uses less is the controller's to give back.
    pub async fn admit_update(
        &self,
        info: &ResourceInfo,
        old: &Value,
        obj: &Value,
        dry_run: bool,
    ) -> ApiResult<()> {
        self.admit(info, obj, Some(old), dry_run).await
    }

    async fn admit(
        &self,
        info: &ResourceInfo,
        obj: &Value,
        old: Option<&Value>,
        dry_run: bool,
    ) -> ApiResult<()> {
        if !info.namespaced {
            return Ok(());
        }
        let Some(api) = self.api.get().and_then(Weak::upgrade) else {
            return Ok(());
        };
        let Some(quota_info) = api.registry.get("", "v1", "resourcequotas") else {
            return Ok(());
        };
        let ns = obj.namespace().unwrap_or_default().to_string();
        let mut quotas = api
            .cacher(&quota_info)?
            .values(&quota_info.list_prefix(Some(&ns)))
            .0;
        if quotas.is_empty() {
            return Ok(());
        }
        let now = jiff::Timestamp::now();
        let mut delta = quota::usage(&info.group, &info.plural, obj, now);
        if let Some(old) = old {
            // Only what grows is charged (`SubtractWithNonNegativeResult`, zeros removed).
            let before = quota::usage(&info.group, &info.plural, old, now);
            delta.retain(|k, v| {
                *v -= before.get(k).copied().unwrap_or(0);
                *v > 0
            });
        }
        if delta.is_empty() {
            return Ok(());
        }
        quotas.sort_by(|a, b| a.name().cmp(&b.name()));
        let is_pod = info.group.is_empty() && info.plural == "pods";
        let mut charges = Vec::new();
        for q in quotas
            .iter()
            .filter(|q| quota::matches_scopes(q, &info.group, &info.plural, obj))
        {
            let hard = parse_list(&q["spec"]["hard"]);
            let name = q.name().unwrap_or_default().to_string();
            if is_pod && let Err(e) = quota::pod_constraints(&hard, obj) {
                return Err(forbidden(info, obj, format!("failed quota: {name}: {e}")));
            }
            let relevant: Vec<String> = delta
                .keys()
                .filter(|k| hard.contains_key(*k))
                .cloned()
                .collect();
            if !relevant.is_empty() {
                charges.push((name, relevant));
            }
        }
        for (name, relevant) in charges {
            let outcome = self
                .charge(
                    &api,
                    &quota_info,
                    &ns,
                    &name,
                    relevant,
                    delta.clone(),
                    dry_run,
                )
                .await;
            match outcome {
                Outcome::Charged => {}
                Outcome::Refused(why) => return Err(forbidden(info, obj, why)),
                Outcome::Failed(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Hands a charge to the quota's worker (started when there is none) and waits for it.
    #[allow(clippy::too_many_arguments)]
    async fn charge(
        &self,
        api: &Arc<ApiServer>,
        quota_info: &Arc<ResourceInfo>,
        ns: &str,
        name: &str,
        relevant: Vec<String>,
        delta: Usage,
        dry_run: bool,
    ) -> Outcome {
        let key = quota_info.key(Some(ns), name);
        let (tx, rx) = oneshot::channel();
        let mut charge = Charge {
            relevant,
            delta,
            dry_run,
            reply: tx,
        };
        // A worker that stopped between the lookup and the send hands the charge back.
        for _ in 0..3 {
            let sender = {
                let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
                workers
                    .entry(key.clone())
                    .or_insert_with(|| {
                        let (tx, rx) = mpsc::unbounded_channel();
                        tokio::spawn(worker(
                            Arc::downgrade(api),
                            quota_info.clone(),
                            key.clone(),
                            name.to_string(),
                            rx,
                            self.workers.clone(),
                        ));
                        tx
                    })
                    .clone()
            };
            match sender.send(charge) {
                Ok(()) => {
                    return rx.await.unwrap_or_else(|_| {
                        Outcome::Failed(ApiError::internal("the quota worker stopped"))
                    });
                }
                Err(mpsc::error::SendError(back)) => {
                    charge = back;
                    let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
                    if workers.get(&key).is_some_and(|s| s.same_channel(&sender)) {
                        workers.remove(&key);
                    }
                }
            }
        }
        Outcome::Failed(ApiError::internal(format!(
            "no quota worker for {name} would take the charge"
        )))
    }
}

/// The worker of one quota: batches of waiting charges, until idle.
async fn worker(
    api: Weak<ApiServer>,
    quota_info: Arc<ResourceInfo>,
    key: String,
    name: String,
    mut rx: mpsc::UnboundedReceiver<Charge>,
    workers: Workers,
) {
    loop {
        let first = match tokio::time::timeout(IDLE, rx.recv()).await {
            Ok(Some(c)) => c,
            Ok(None) => return,
            Err(_) => {
                let mut map = workers.lock().unwrap_or_else(|p| p.into_inner());
                if rx.is_empty() {
                    map.remove(&key);
                    return;
                }
                continue;
            }
        };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        let Some(api) = api.upgrade() else {
            return;
        };
        let outcomes = settle(&api, &quota_info, &key, &name, &batch).await;
        for (c, o) in batch.into_iter().zip(outcomes) {
            let _ = c.reply.send(o);
        }
    }
}

/// Checks a batch of charges in order against one read of the quota and writes the accepted
/// ones' sum with a compare-and-swap; on a lost race, reads and checks again.
async fn settle(
    api: &ApiServer,
    quota_info: &ResourceInfo,
    key: &str,
    name: &str,
    batch: &[Charge],
) -> Vec<Outcome> {
    let all = |o: fn() -> Outcome| batch.iter().map(|_| o()).collect::<Vec<_>>();
    for _ in 0..ATTEMPTS {
        let kv = match api.store.get(key).await {
            Ok(Some(kv)) => kv,
            Ok(None) => return all(|| Outcome::Charged), // deleted meanwhile: nothing to charge
            Err(e) => {
                let e = ApiError::internal(format!("reading quota {name}: {e}"));
                return batch.iter().map(|_| Outcome::Failed(e.clone())).collect();
            }
        };
        let Some(mut q) = quota_info.decode(&kv.value, kv.mod_revision) else {
            let e = ApiError::internal(format!("quota {name} is not readable"));
            return batch.iter().map(|_| Outcome::Failed(e.clone())).collect();
        };
        let hard = parse_list(&q["status"]["hard"]);
        let used = parse_list(&q["status"]["used"]);
        let mut after = used.clone();
        let mut outcomes = Vec::with_capacity(batch.len());
        for c in batch {
            outcomes.push(check(name, c, &hard, &mut after));
        }
        if after == used {
            return outcomes;
        }
        for (r, v) in &after {
            q["status"]["used"][r] = json!(format(r, *v));
        }
        let bytes = match crate::rest::encode_stored(quota_info, &q) {
            Ok(b) => b,
            Err(e) => return batch.iter().map(|_| Outcome::Failed(e.clone())).collect(),
        };
        match api.store.update(key, bytes, kv.mod_revision).await {
            Ok(_) => return outcomes,
            Err(capstan_storage::StorageError::Conflict { .. }) => continue,
            Err(capstan_storage::StorageError::NotFound { .. }) => {
                return all(|| Outcome::Charged);
            }
            Err(e) => {
                let e = ApiError::internal(format!("charging quota {name}: {e}"));
                return batch.iter().map(|_| Outcome::Failed(e.clone())).collect();
            }
        }
    }
    let e = ApiError::conflict(
        "",
        "resourcequotas",
        name,
        &format!(
            "the quota changed {ATTEMPTS} times while this request was charged to it; try again"
        ),
    );
    batch.iter().map(|_| Outcome::Failed(e.clone())).collect()
}

/// One charge against the quota's `hard` and the use so far (`after`, grown when it fits and
/// is no dry run).
fn check(name: &str, c: &Charge, hard: &Usage, after: &mut Usage) -> Outcome {
    let used_before = after.clone();
    let unknown: Vec<&str> = c
        .relevant
        .iter()
        .filter(|r| !hard.contains_key(*r) || !after.contains_key(*r))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        return Outcome::Refused(format!(
            "status unknown for quota: {name}, resources: {}",
            unknown.join(",")
        ));
    }
    let mut trial = after.clone();
    for r in &c.relevant {
        *trial.entry(r.clone()).or_default() += c.delta.get(r).copied().unwrap_or(0);
    }
    let exceeded: Vec<String> = c
        .relevant
        .iter()
        .filter(|r| trial[*r] > hard[*r])
        .cloned()
        .collect();
    if !exceeded.is_empty() {
        return Outcome::Refused(format!(
            "exceeded quota: {name}, requested: {}, used: {}, limited: {}",
            pretty(&c.delta, &exceeded),
            pretty(&used_before, &exceeded),
            pretty(hard, &exceeded)
        ));
    }
    if !c.dry_run {
        *after = trial;
    }
    Outcome::Charged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn charge(delta: &[(&str, i64)], dry_run: bool) -> Charge {
        Charge {
            relevant: delta.iter().map(|(k, _)| k.to_string()).collect(),
            delta: delta.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            dry_run,
            reply: oneshot::channel().0,
        }
    }

    #[test]
    fn a_batch_is_checked_in_order_against_the_running_total() {
        let hard = Usage::from([
            ("pods".to_string(), 3000),
            ("requests.cpu".to_string(), 1000),
        ]);
        let mut after = Usage::from([("pods".to_string(), 1000), ("requests.cpu".to_string(), 0)]);
        let outcomes: Vec<String> = [
            charge(&[("pods", 1000), ("requests.cpu", 600)], false),
            charge(&[("pods", 1000), ("requests.cpu", 600)], false),
            charge(&[("pods", 1000)], true),
            charge(&[("pods", 1000)], false),
            charge(&[("pods", 1000)], false),
        ]
        .iter()
        .map(|c| match check("q", c, &hard, &mut after) {
            Outcome::Charged => "ok".to_string(),
            Outcome::Refused(why) => why,
            Outcome::Failed(e) => e.message,
        })
        .collect();
        assert_eq!(
            outcomes,
            [
                "ok",
                "exceeded quota: q, requested: requests.cpu=600m, used: requests.cpu=600m, limited: requests.cpu=1",
                "ok",
                "ok",
                "exceeded quota: q, requested: pods=1, used: pods=3, limited: pods=3",
            ]
        );
        assert_eq!(after["pods"], 3000, "the dry run charged nothing");
        let mut blank = Usage::new();
        match check("q", &charge(&[("pods", 1000)], false), &hard, &mut blank) {
            Outcome::Refused(why) => {
                assert_eq!(why, "status unknown for quota: q, resources: pods")
            }
            _ => panic!("a quota without status refuses"),
        }
    }
}
