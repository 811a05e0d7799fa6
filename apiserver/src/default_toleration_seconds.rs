//! The DefaultTolerationSeconds admission plugin (kubernetes/plugin/pkg/admission/
//! defaulttolerationseconds): every new pod that does not already tolerate the
//! `node.kubernetes.io/not-ready` and `unreachable` NoExecute taints gets a toleration of each
//! for `--default-not-ready-toleration-seconds` / `--default-unreachable-toleration-seconds`
//! (300 s), so its pods leave a failed node five minutes after it is tainted, not at once.
//! Served as the pods' storage hook, before the create is stored.

use serde_json::{Value, json};

use crate::errors::ApiResult;
use crate::strategy::StorageHooks;

const NOT_READY: &str = "node.kubernetes.io/not-ready";
const UNREACHABLE: &str = "node.kubernetes.io/unreachable";

/// The two defaults, in seconds.
#[derive(Debug, Clone, Copy)]
pub struct DefaultTolerationSeconds {
    pub not_ready: i64,
    pub unreachable: i64,
}

impl Default for DefaultTolerationSeconds {
    fn default() -> Self {
        DefaultTolerationSeconds {
            not_ready: 300,
            unreachable: 300,
        }
    }
}

/// Whether `tol` tolerates a NoExecute taint of `key` (with no value).
fn tolerates(tol: &Value, key: &str) -> bool {
    let effect = tol["effect"].as_str().unwrap_or("");
    if !effect.is_empty() && effect != "NoExecute" {
        return false;
    }
    let tkey = tol["key"].as_str().unwrap_or("");
    match tol["operator"].as_str().unwrap_or("Equal") {
        "Exists" => tkey.is_empty() || tkey == key,
        _ => tkey == key && tol["value"].as_str().unwrap_or("").is_empty(),
    }
}

impl DefaultTolerationSeconds {
    /// Adds the missing default tolerations to a pod.
    pub fn admit(&self, pod: &mut Value) {
        let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
            return;
        };
        let tols = spec.entry("tolerations").or_insert_with(|| json!([]));
        if tols.is_null() {
            *tols = json!([]);
        }
        let Some(list) = tols.as_array_mut() else {
            return;
        };
        for (key, secs) in [(NOT_READY, self.not_ready), (UNREACHABLE, self.unreachable)] {
            if !list.iter().any(|t| tolerates(t, key)) {
                list.push(
                    json!({"key": key, "operator": "Exists", "effect": "NoExecute",
                                 "tolerationSeconds": secs}),
                );
            }
        }
    }
}

#[async_trait::async_trait]
impl StorageHooks for DefaultTolerationSeconds {
    async fn begin_create(&self, obj: &mut Value, _dry_run: bool) -> ApiResult<()> {
        self.admit(obj);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tolerations_are_added_and_given_ones_kept() {
        let d = DefaultTolerationSeconds::default();
        let mut pod = json!({"spec": {"containers": []}});
        d.admit(&mut pod);
        let tols = pod["spec"]["tolerations"].as_array().unwrap();
        assert_eq!(tols.len(), 2);
        assert_eq!(tols[0]["key"], NOT_READY);
        assert_eq!(tols[1]["tolerationSeconds"], 300);

        let mut own = json!({"spec": {"tolerations": [
            {"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 2}
        ]}});
        d.admit(&mut own);
        let tols = own["spec"]["tolerations"].as_array().unwrap();
        assert_eq!(tols.len(), 2, "{tols:?}");
        assert_eq!(tols[0]["tolerationSeconds"], 2, "the pod's own stays");
        assert_eq!(tols[1]["key"], NOT_READY);

        // Tolerating everything (operator Exists, no key) covers both.
        let mut all = json!({"spec": {"tolerations": [{"operator": "Exists"}]}});
        d.admit(&mut all);
        assert_eq!(all["spec"]["tolerations"].as_array().unwrap().len(), 1);
        // A NoSchedule toleration does not.
        let mut ns =
            json!({"spec": {"tolerations": [{"operator": "Exists", "effect": "NoSchedule"}]}});
        d.admit(&mut ns);
        assert_eq!(ns["spec"]["tolerations"].as_array().unwrap().len(), 3);
    }
}
