//! A pod's status as the kubelet writes it (pure): phase, conditions, container statuses with
//! state / lastState / restartCount, IPs, start time and QoS class, from what the runtime has.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{
    Container as ContainerSpec, ContainerState as K8sState, ContainerStateRunning,
    ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, Pod, PodCondition, PodIP,
    PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::plan::{Observed, Restart, finished};
use super::probe::Health;
use crate::runtime::{Container, ContainerState};

/// Why a container is waiting, when the worker knows better than the runtime (a failed
/// create, a back-off).
pub type Waiting = HashMap<String, (String, String)>;

fn terminated(c: &Container, runtime: &str) -> ContainerStateTerminated {
    ContainerStateTerminated {
        exit_code: c.exit_code.unwrap_or(137),
        reason: c.reason.clone().or(Some(if c.exit_code == Some(0) {
            "Completed".into()
        } else {
            "Error".into()
        })),
        message: c.message.clone(),
        started_at: c.started_at.map(Time),
        finished_at: c.finished_at.map(Time),
        container_id: Some(format!("{runtime}://{}", c.id)),
        signal: None,
    }
}

fn container_status(
    spec: &ContainerSpec,
    obs: &Observed,
    waiting: &Waiting,
    health: &HashMap<String, Health>,
    runtime: &str,
    has_inits: bool,
) -> ContainerStatus {
    // Not created yet: kubelet says PodInitializing in pods with init containers.
    let creating = if has_inits {
        "PodInitializing"
    } else {
        "ContainerCreating"
    };
    let latest = obs.latest(&spec.name);
    let previous = latest.and_then(|l| {
        obs.containers
            .iter()
            .filter(|c| {
                c.config.name == spec.name
                    && c.sandbox_id == l.sandbox_id
                    && c.config.attempt < l.config.attempt
            })
            .max_by_key(|c| c.config.attempt)
    });
    let state = match (waiting.get(&spec.name), latest) {
        (Some((reason, message)), Some(c)) if c.state != ContainerState::Running => {
            wait(reason, message)
        }
        (Some((reason, message)), None) => wait(reason, message),
        (_, Some(c)) => match c.state {
            ContainerState::Running => K8sState {
                running: Some(ContainerStateRunning {
                    started_at: c.started_at.map(Time),
                }),
                ..Default::default()
            },
            ContainerState::Exited | ContainerState::Unknown => K8sState {
                terminated: Some(terminated(c, runtime)),
                ..Default::default()
            },
            ContainerState::Created => wait("ContainerCreating", ""),
        },
        (None, None) => wait(creating, ""),
    };
    let running = latest.is_some_and(|c| c.state == ContainerState::Running);
    // Containers without probes are ready and started while they run.
    let h = latest.and_then(|c| health.get(&c.id));
    ContainerStatus {
        name: spec.name.clone(),
        image: spec.image.clone().unwrap_or_default(),
        image_id: latest
            .map(|c| c.image_ref.clone())
            .filter(|r| !r.is_empty())
            .unwrap_or_default(),
        container_id: latest.map(|c| format!("{runtime}://{}", c.id)),
        restart_count: latest.map_or(0, |c| c.config.attempt as i32),
        ready: running && h.is_none_or(|h| h.ready),
        started: Some(running && h.is_none_or(|h| h.started)),
        state: Some(state),
        last_state: Some(match previous {
            Some(p) if matches!(p.state, ContainerState::Exited | ContainerState::Unknown) => {
                K8sState {
                    terminated: Some(terminated(p, runtime)),
                    ..Default::default()
                }
            }
            _ => K8sState::default(),
        }),
        ..Default::default()
    }
}

fn wait(reason: &str, message: &str) -> K8sState {
    K8sState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.to_string()),
            message: (!message.is_empty()).then(|| message.to_string()),
        }),
        ..Default::default()
    }
}

fn condition(
    old: Option<&PodStatus>,
    type_: &str,
    ok: bool,
    reason: Option<&str>,
    now: Time,
) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    // Keep the transition time of a condition whose status did not change.
    let since = old
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == type_ && c.status == status))
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or(now);
    PodCondition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.map(str::to_string),
        last_transition_time: Some(since),
        ..Default::default()
    }
}

/// Guaranteed (every container has equal cpu and memory requests and limits), BestEffort (none
/// has any), else Burstable.
pub fn qos_class(pod: &Pod) -> &'static str {
    let Some(spec) = pod.spec.as_ref() else {
        return "BestEffort";
    };
    let all: Vec<&ContainerSpec> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &all {
        let r = c.resources.clone().unwrap_or_default();
        let (req, lim) = (r.requests.unwrap_or_default(), r.limits.unwrap_or_default());
        any |= !req.is_empty() || !lim.is_empty();
        for res in ["cpu", "memory"] {
            let l = lim.get(res);
            let q = req.get(res).or(l);
            if l.is_none() || q != l {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

/// The status to write for `pod`.
pub fn pod_status(
    pod: &Pod,
    obs: &Observed,
    waiting: &Waiting,
    health: &HashMap<String, Health>,
    host_ip: &str,
    runtime: &str,
    now: jiff::Timestamp,
) -> PodStatus {
    let old = pod.status.as_ref();
    let now_t = Time(now);
    let spec = pod.spec.clone().unwrap_or_default();
    let inits = spec.init_containers.clone().unwrap_or_default();
    let init_statuses: Vec<ContainerStatus> = inits
        .iter()
        .map(|c| container_status(c, obs, waiting, health, runtime, !inits.is_empty()))
        .collect();
    let statuses: Vec<ContainerStatus> = spec
        .containers
        .iter()
        .map(|c| container_status(c, obs, waiting, health, runtime, !inits.is_empty()))
        .collect();
    // Ephemeral containers are reported, never ready, and count for nothing else.
    let ephemeral: Vec<ContainerStatus> = spec
        .ephemeral_containers
        .iter()
        .flatten()
        .filter_map(super::as_container)
        .map(|c| ContainerStatus {
            ready: false,
            ..container_status(&c, obs, waiting, health, runtime, false)
        })
        .collect();
    let initialized = init_statuses.iter().all(|s| {
        s.state
            .as_ref()
            .and_then(|st| st.terminated.as_ref())
            .is_some_and(|t| t.exit_code == 0)
    });
    let restart = Restart::of(pod);
    fn exited(s: &ContainerStatus) -> Option<&ContainerStateTerminated> {
        s.state.as_ref().and_then(|st| st.terminated.as_ref())
    }
    let init_failed = restart == Restart::Never
        && init_statuses
            .iter()
            .any(|s| exited(s).is_some_and(|t| t.exit_code != 0));
    let phase = if init_failed {
        "Failed"
    } else if finished(pod, obs, restart) {
        if statuses
            .iter()
            .all(|s| exited(s).is_some_and(|t| t.exit_code == 0))
        {
            "Succeeded"
        } else {
            "Failed"
        }
    } else if initialized
        && !statuses.is_empty()
        && statuses.iter().all(|s| s.container_id.is_some())
        && statuses.iter().any(|s| {
            s.state.as_ref().is_some_and(|st| st.running.is_some()) || restart != Restart::Never
        })
    {
        "Running"
    } else {
        "Pending"
    };
    let ready = phase == "Running" && statuses.iter().all(|s| s.ready);
    let not_ready_reason = (!ready).then_some(if phase == "Running" || phase == "Pending" {
        "ContainersNotReady"
    } else {
        "PodCompleted"
    });
    let scheduled = old
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled").cloned())
        .unwrap_or_else(|| condition(None, "PodScheduled", true, None, now_t.clone()));
    let conditions = vec![
        condition(
            old,
            "Initialized",
            initialized,
            (!initialized).then_some("ContainersNotInitialized"),
            now_t.clone(),
        ),
        condition(old, "Ready", ready, not_ready_reason, now_t.clone()),
        condition(
            old,
            "ContainersReady",
            ready,
            not_ready_reason,
            now_t.clone(),
        ),
        scheduled,
    ];
    let pod_ip = obs.sandbox().and_then(|sb| sb.ip.clone());
    PodStatus {
        phase: Some(phase.to_string()),
        conditions: Some(conditions),
        host_ip: Some(host_ip.to_string()),
        host_ips: Some(vec![k8s_openapi::api::core::v1::HostIP {
            ip: host_ip.to_string(),
        }]),
        pod_ip: pod_ip.clone(),
        pod_ips: pod_ip.map(|ip| vec![PodIP { ip }]),
        start_time: old.and_then(|s| s.start_time.clone()).or(Some(now_t)),
        qos_class: Some(qos_class(pod).to_string()),
        container_statuses: Some(statuses),
        init_container_statuses: (!init_statuses.is_empty()).then_some(init_statuses),
        ephemeral_container_statuses: (!ephemeral.is_empty()).then_some(ephemeral),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{ContainerConfig, Sandbox, SandboxConfig, SandboxState};
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p", "uid": "u1"}, "spec": spec}))
            .unwrap()
    }

    fn obs(containers: Vec<(&str, u32, ContainerState, Option<i32>)>) -> Observed {
        Observed {
            sandboxes: vec![Sandbox {
                id: "s1".into(),
                config: SandboxConfig::default(),
                state: SandboxState::Ready,
                created_at: jiff::Timestamp::UNIX_EPOCH,
                ip: Some("10.88.0.5".into()),
            }],
            containers: containers
                .into_iter()
                .map(|(name, attempt, state, exit)| Container {
                    id: format!("{name}-{attempt}"),
                    sandbox_id: "s1".into(),
                    config: ContainerConfig {
                        name: name.into(),
                        attempt,
                        ..Default::default()
                    },
                    state,
                    created_at: jiff::Timestamp::UNIX_EPOCH,
                    started_at: Some(jiff::Timestamp::UNIX_EPOCH),
                    finished_at: exit.map(|_| jiff::Timestamp::UNIX_EPOCH),
                    exit_code: exit,
                    reason: exit.map(|c| if c == 0 { "Completed" } else { "Error" }.to_string()),
                    message: None,
                    image_ref: String::new(),
                })
                .collect(),
        }
    }

    fn status(p: &Pod, o: &Observed, w: &Waiting) -> PodStatus {
        pod_status(
            p,
            o,
            w,
            &HashMap::new(),
            "192.168.1.10",
            "process",
            jiff::Timestamp::from_second(5).unwrap(),
        )
    }

    fn cond(s: &PodStatus, t: &str) -> String {
        s.conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == t)
            .unwrap()
            .status
            .clone()
    }

    #[test]
    fn ephemeral_containers_are_reported_never_ready_and_leave_the_pod_alone() {
        let p = pod(json!({
            "containers": [{"name": "a", "image": "busybox"}],
            "ephemeralContainers": [
                {"name": "dbg", "image": "busybox", "targetContainerName": "a"},
                {"name": "later", "image": "busybox"},
            ],
        }));
        let o = obs(vec![
            ("a", 0, ContainerState::Running, None),
            ("dbg", 0, ContainerState::Exited, Some(3)),
        ]);
        let s = status(&p, &o, &Waiting::new());
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(cond(&s, "Ready"), "True");
        let e = s.ephemeral_container_statuses.as_ref().unwrap();
        assert_eq!(e.len(), 2);
        let dbg = e[0].state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!((dbg.exit_code, e[0].ready), (3, false));
        let later = e[1].state.as_ref().unwrap().waiting.as_ref().unwrap();
        assert_eq!(later.reason.as_deref(), Some("ContainerCreating"));
    }

    #[test]
    fn a_running_pod_is_ready_with_ips_restart_counts_and_last_state() {
        let p = pod(json!({"containers": [{"name": "a", "image": "busybox"}]}));
        let o = obs(vec![
            ("a", 0, ContainerState::Exited, Some(1)),
            ("a", 1, ContainerState::Running, None),
        ]);
        let s = status(&p, &o, &Waiting::new());
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(s.pod_ip.as_deref(), Some("10.88.0.5"));
        assert_eq!(s.host_ip.as_deref(), Some("192.168.1.10"));
        assert_eq!(cond(&s, "Ready"), "True");
        assert_eq!(cond(&s, "Initialized"), "True");
        let c = &s.container_statuses.as_ref().unwrap()[0];
        assert_eq!(c.restart_count, 1);
        assert!(c.ready);
        assert!(c.state.as_ref().unwrap().running.is_some());
        let last = c.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!(last.exit_code, 1);
        assert_eq!(last.reason.as_deref(), Some("Error"));
        assert_eq!(c.container_id.as_deref(), Some("process://a-1"));
        assert_eq!(s.qos_class.as_deref(), Some("BestEffort"));
    }

    #[test]
    fn phases_follow_restart_policy_and_exit_codes() {
        let never = |code| {
            let p = pod(json!({"restartPolicy": "Never", "containers": [{"name": "a"}]}));
            status(
                &p,
                &obs(vec![("a", 0, ContainerState::Exited, Some(code))]),
                &Waiting::new(),
            )
            .phase
            .unwrap()
        };
        assert_eq!(never(0), "Succeeded");
        assert_eq!(never(3), "Failed");
        // Always: an exited container is about to restart; the pod stays Running, not Ready.
        let p = pod(json!({"containers": [{"name": "a"}]}));
        let mut w = Waiting::new();
        w.insert(
            "a".into(),
            (
                "CrashLoopBackOff".into(),
                "back-off 10s restarting failed container".into(),
            ),
        );
        let s = status(
            &p,
            &obs(vec![("a", 0, ContainerState::Exited, Some(1))]),
            &w,
        );
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(cond(&s, "Ready"), "False");
        let st = s.container_statuses.unwrap()[0].state.clone().unwrap();
        assert_eq!(
            st.waiting.unwrap().reason.as_deref(),
            Some("CrashLoopBackOff")
        );
        // Nothing started yet: Pending, ContainerCreating.
        let s = status(&p, &obs(vec![]), &Waiting::new());
        assert_eq!(s.phase.as_deref(), Some("Pending"));
    }

    #[test]
    fn init_containers_gate_initialized_and_fail_a_never_pod() {
        let p = pod(
            json!({"restartPolicy": "Never", "initContainers": [{"name": "i"}], "containers": [{"name": "a"}]}),
        );
        let s = status(
            &p,
            &obs(vec![("i", 0, ContainerState::Running, None)]),
            &Waiting::new(),
        );
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        assert_eq!(cond(&s, "Initialized"), "False");
        let s = status(
            &p,
            &obs(vec![("i", 0, ContainerState::Exited, Some(1))]),
            &Waiting::new(),
        );
        assert_eq!(s.phase.as_deref(), Some("Failed"));
    }

    #[test]
    fn qos_classes() {
        let g = pod(
            json!({"containers": [{"name": "a", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}),
        );
        assert_eq!(qos_class(&g), "Guaranteed");
        let b =
            pod(json!({"containers": [{"name": "a", "resources": {"requests": {"cpu": "1"}}}]}));
        assert_eq!(qos_class(&b), "Burstable");
        assert_eq!(
            qos_class(&pod(json!({"containers": [{"name": "a"}]}))),
            "BestEffort"
        );
    }
}
