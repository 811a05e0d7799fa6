//! What to do next for one pod (kubelet's computePodActions), pure: from the pod's spec, what
//! the runtime has for it, and the restart back-offs, decide which sandbox to create, which
//! container to start, what to kill. The worker applies the plan and asks again.

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;

use crate::runtime::{Container, ContainerState, Sandbox, SandboxState};

/// Kubernetes' container restart back-off: 10 s doubling to 5 min, forgotten after a container
/// ran 10 min without exiting.
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(10);
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
pub const BACKOFF_RESET: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    Always,
    OnFailure,
    Never,
}

impl Restart {
    pub fn of(pod: &Pod) -> Restart {
        match pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) {
            Some("OnFailure") => Restart::OnFailure,
            Some("Never") => Restart::Never,
            _ => Restart::Always,
        }
    }

    fn restarts(self, exit_code: i32) -> bool {
        match self {
            Restart::Always => true,
            Restart::OnFailure => exit_code != 0,
            Restart::Never => false,
        }
    }
}

/// What the runtime has for one pod: its sandboxes (newest last) and the containers of its
/// newest sandbox.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub sandboxes: Vec<Sandbox>,
    pub containers: Vec<Container>,
}

impl Observed {
    pub fn sandbox(&self) -> Option<&Sandbox> {
        self.sandboxes.last()
    }

    /// The newest container named `name` in the current sandbox.
    pub fn latest(&self, name: &str) -> Option<&Container> {
        let sb = self.sandbox()?;
        self.containers
            .iter()
            .filter(|c| c.sandbox_id == sb.id && c.config.name == name)
            .max_by_key(|c| (c.config.attempt, c.created_at))
    }

    /// What the PLEG compares between relists: each sandbox's and container's state (and
    /// exit reason: the runtime may amend one, such as a late OOMKilled), in id order.
    pub fn fingerprint(&self) -> String {
        let mut sandboxes: Vec<&Sandbox> = self.sandboxes.iter().collect();
        sandboxes.sort_by(|a, b| a.id.cmp(&b.id));
        let mut containers: Vec<&Container> = self.containers.iter().collect();
        containers.sort_by(|a, b| a.id.cmp(&b.id));
        let mut out = String::new();
        for sb in sandboxes {
            out.push_str(&format!("{}:{:?};", sb.id, sb.state));
        }
        for c in containers {
            out.push_str(&format!("{}:{:?}:{:?};", c.id, c.state, c.reason));
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Init,
    App,
    /// `kubectl debug`: started once, never restarted, even before the pod is initialized.
    Ephemeral,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Stop everything (gracefully) and the sandbox: the pod is deleted, finished, or needs a
    /// new sandbox.
    KillPod,
    CreateSandbox {
        attempt: u32,
    },
    Start {
        kind: Kind,
        name: String,
        attempt: u32,
    },
    /// A container waits out its restart back-off (CrashLoopBackOff) for this long.
    BackOff {
        name: String,
        remaining: Duration,
    },
    /// Exited attempts no longer needed (older than the last one per container).
    Remove {
        id: String,
    },
    /// A stopped sandbox that is not the pod's newest (a failed or replaced one).
    RemoveSandbox {
        id: String,
    },
}

/// Restart back-off per container name: how many back-offs it has had. A container that
/// exited waits `backoff_for(n)` from its finish before its next start (kubelet's
/// IsInBackOffSince on the container's finishedAt).
pub type Backoffs = HashMap<String, u32>;

/// The back-off after the `n`th restart: 10 s, 20 s, 40 s, ... 5 min.
pub fn backoff_for(n: u32) -> Duration {
    BACKOFF_INITIAL
        .saturating_mul(1u32 << n.min(10))
        .min(BACKOFF_MAX)
}

/// The plan for `pod` given what the runtime has (`obs`), the back-offs, and the time.
pub fn plan(pod: &Pod, obs: &Observed, backoffs: &Backoffs, now: jiff::Timestamp) -> Vec<Action> {
    let spec = pod.spec.clone().unwrap_or_default();
    let restart = Restart::of(pod);
    let mut actions = Vec::new();
    // Garbage: stopped sandboxes older than the newest (their containers go with them).
    let newest = obs.sandbox().map(|sb| sb.id.as_str());
    for sb in &obs.sandboxes {
        if sb.state == SandboxState::NotReady && Some(sb.id.as_str()) != newest {
            actions.push(Action::RemoveSandbox { id: sb.id.clone() });
        }
    }
    // Garbage: exited attempts older than the two newest of their container (the newest is
    // the state, the one before it the lastState).
    if let Some(sb) = obs.sandbox() {
        let mut by_name: HashMap<&str, Vec<&Container>> = HashMap::new();
        for c in obs.containers.iter().filter(|c| c.sandbox_id == sb.id) {
            by_name.entry(c.config.name.as_str()).or_default().push(c);
        }
        let mut names: Vec<_> = by_name.keys().copied().collect();
        names.sort();
        for name in names {
            let mut all = by_name.remove(name).unwrap_or_default();
            all.sort_by_key(|c| std::cmp::Reverse((c.config.attempt, c.created_at)));
            for c in all.iter().skip(2) {
                if c.state == ContainerState::Exited {
                    actions.push(Action::Remove { id: c.id.clone() });
                }
            }
        }
    }
    if pod.metadata.deletion_timestamp.is_some() {
        if obs
            .sandbox()
            .is_some_and(|sb| sb.state == SandboxState::Ready)
        {
            actions.push(Action::KillPod);
        }
        return actions;
    }
    let inits = spec.init_containers.clone().unwrap_or_default();
    let apps = spec.containers.clone();

    // A sandbox: create one when there is none ready, unless the pod is done for good.
    let ready = obs.sandbox().filter(|sb| sb.state == SandboxState::Ready);
    let Some(_) = ready else {
        let ran_before = obs.sandbox().is_some();
        if ran_before && restart == Restart::Never {
            return actions; // a Never pod whose sandbox died does not come back
        }
        if finished(pod, obs, restart) {
            return actions;
        }
        let attempt = obs.sandboxes.len() as u32;
        actions.push(Action::CreateSandbox { attempt });
        match inits.first() {
            Some(first) => actions.push(Action::Start {
                kind: Kind::Init,
                name: first.name.clone(),
                attempt: 0,
            }),
            None => actions.extend(apps.iter().map(|c| Action::Start {
                kind: Kind::App,
                name: c.name.clone(),
                attempt: 0,
            })),
        }
        return actions;
    };

    // Ephemeral containers: each started once (kubelet starts them even while init
    // containers run).
    for e in spec.ephemeral_containers.iter().flatten() {
        if obs.latest(&e.name).is_none() {
            actions.push(Action::Start {
                kind: Kind::Ephemeral,
                name: e.name.clone(),
                attempt: 0,
            });
        }
    }

    // Init containers, one at a time, in order.
    for init in &inits {
        match obs.latest(&init.name) {
            None => {
                actions.push(Action::Start {
                    kind: Kind::Init,
                    name: init.name.clone(),
                    attempt: 0,
                });
                return actions;
            }
            Some(c) if c.state == ContainerState::Exited && c.exit_code == Some(0) => continue,
            Some(c) if c.state == ContainerState::Exited || c.state == ContainerState::Unknown => {
                // A failed init container: the pod fails (Never), or it is retried.
                if restart == Restart::Never {
                    actions.push(Action::KillPod);
                } else {
                    restart_or_wait(&mut actions, Kind::Init, c, backoffs, now);
                }
                return actions;
            }
            Some(_) => return actions, // created or running: wait for it
        }
    }

    // App containers, all at once.
    let all_done = finished(pod, obs, restart);
    for app in &apps {
        match obs.latest(&app.name) {
            None => actions.push(Action::Start {
                kind: Kind::App,
                name: app.name.clone(),
                attempt: 0,
            }),
            Some(c) if matches!(c.state, ContainerState::Exited | ContainerState::Unknown) => {
                if restart.restarts(c.exit_code.unwrap_or(137)) {
                    restart_or_wait(&mut actions, Kind::App, c, backoffs, now);
                }
            }
            Some(_) => {}
        }
    }
    if all_done {
        // Every container finished and none restarts: release the sandbox (the pod keeps its
        // statuses; Kubernetes stops the sandbox of a finished pod too).
        actions.push(Action::KillPod);
    }
    actions
}

fn restart_or_wait(
    actions: &mut Vec<Action>,
    kind: Kind,
    c: &Container,
    backoffs: &Backoffs,
    now: jiff::Timestamp,
) {
    let name = c.config.name.clone();
    // A container that ran for 10 minutes restarts at once (kubelet's back-off entry has
    // expired by then); its next crash backs off from 10 s again (record_restart).
    if let (Some(n), Some(finished)) = (backoffs.get(&name), c.finished_at)
        && ran(c) < BACKOFF_RESET
    {
        let delay = jiff::SignedDuration::try_from(backoff_for(*n)).unwrap_or_default();
        let not_before = finished.checked_add(delay).unwrap_or(finished);
        if not_before > now {
            let remaining = not_before.duration_since(now).unsigned_abs();
            actions.push(Action::BackOff { name, remaining });
            return;
        }
    }
    actions.push(Action::Start {
        kind,
        name,
        attempt: c.config.attempt + 1,
    });
}

/// Whether every app container has exited and none will restart (the pod is Succeeded or
/// Failed).
pub fn finished(pod: &Pod, obs: &Observed, restart: Restart) -> bool {
    if restart == Restart::Always {
        return false;
    }
    let apps = pod
        .spec
        .as_ref()
        .map(|s| s.containers.clone())
        .unwrap_or_default();
    !apps.is_empty()
        && apps.iter().all(|app| {
            obs.latest(&app.name).is_some_and(|c| {
                matches!(c.state, ContainerState::Exited | ContainerState::Unknown)
                    && !restart.restarts(c.exit_code.unwrap_or(137))
            })
        })
}

/// How long an exited container ran.
fn ran(c: &Container) -> Duration {
    match (c.started_at, c.finished_at) {
        (Some(s), Some(f)) => f.duration_since(s).unsigned_abs(),
        _ => Duration::ZERO,
    }
}

/// Records a restart of container `c` (it exited and is started again): its next restart
/// waits twice as long, unless it ran long enough (10 min) for the back-off to be forgotten.
pub fn record_restart(backoffs: &mut Backoffs, c: &Container) {
    let n = match backoffs.get(&c.config.name) {
        Some(n) if ran(c) < BACKOFF_RESET => n + 1,
        _ => 0,
    };
    backoffs.insert(c.config.name.clone(), n);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{ContainerConfig, SandboxConfig};
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p", "uid": "u1"}, "spec": spec}))
            .unwrap()
    }

    fn two_apps(restart: &str) -> Pod {
        pod(json!({"restartPolicy": restart, "containers": [{"name": "a"}, {"name": "b"}]}))
    }

    fn sandbox(id: &str, state: SandboxState) -> Sandbox {
        Sandbox {
            id: id.into(),
            config: SandboxConfig::default(),
            state,
            created_at: jiff::Timestamp::UNIX_EPOCH,
            ip: None,
        }
    }

    fn container(name: &str, attempt: u32, state: ContainerState, exit: Option<i32>) -> Container {
        Container {
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
            reason: None,
            message: None,
            image_ref: String::new(),
        }
    }

    fn start(kind: Kind, name: &str, attempt: u32) -> Action {
        Action::Start {
            kind,
            name: name.into(),
            attempt,
        }
    }

    fn now() -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_000).unwrap()
    }

    #[test]
    fn a_new_pod_gets_a_sandbox_and_all_its_app_containers() {
        let actions = plan(
            &two_apps("Always"),
            &Observed::default(),
            &Backoffs::new(),
            now(),
        );
        assert_eq!(
            actions,
            [
                Action::CreateSandbox { attempt: 0 },
                start(Kind::App, "a", 0),
                start(Kind::App, "b", 0)
            ]
        );
    }

    #[test]
    fn ephemeral_containers_start_once_even_during_init_and_never_restart() {
        let p = pod(json!({
            "initContainers": [{"name": "i1"}], "containers": [{"name": "a"}],
            "ephemeralContainers": [{"name": "debugger", "targetContainerName": "a"}],
        }));
        let mut obs = Observed::default();
        obs.sandboxes.push(sandbox("s1", SandboxState::Ready));
        obs.containers
            .push(container("i1", 0, ContainerState::Running, None));
        assert_eq!(
            plan(&p, &obs, &Backoffs::new(), now()),
            [start(Kind::Ephemeral, "debugger", 0)],
            "started while the init container runs"
        );
        obs.containers
            .push(container("debugger", 0, ContainerState::Exited, Some(1)));
        assert_eq!(plan(&p, &obs, &Backoffs::new(), now()), []);
    }

    #[test]
    fn stopped_sandboxes_older_than_the_newest_are_removed() {
        let obs = Observed {
            sandboxes: vec![
                sandbox("old", SandboxState::NotReady),
                sandbox("new", SandboxState::NotReady),
            ],
            containers: vec![],
        };
        let actions = plan(&two_apps("Always"), &obs, &Backoffs::new(), now());
        assert_eq!(actions[0], Action::RemoveSandbox { id: "old".into() });
        assert!(
            !actions.contains(&Action::RemoveSandbox { id: "new".into() }),
            "the newest stays: it carries the pod's last state"
        );
        assert!(actions.contains(&Action::CreateSandbox { attempt: 2 }));
    }

    #[test]
    fn init_containers_run_one_at_a_time_before_the_apps() {
        let p = pod(
            json!({"initContainers": [{"name": "i1"}, {"name": "i2"}], "containers": [{"name": "a"}]}),
        );
        let mut obs = Observed::default();
        assert_eq!(
            plan(&p, &obs, &Backoffs::new(), now()),
            [
                Action::CreateSandbox { attempt: 0 },
                start(Kind::Init, "i1", 0)
            ]
        );
        obs.sandboxes.push(sandbox("s1", SandboxState::Ready));
        obs.containers
            .push(container("i1", 0, ContainerState::Running, None));
        assert_eq!(plan(&p, &obs, &Backoffs::new(), now()), [], "waits for i1");
        obs.containers[0] = container("i1", 0, ContainerState::Exited, Some(0));
        assert_eq!(
            plan(&p, &obs, &Backoffs::new(), now()),
            [start(Kind::Init, "i2", 0)]
        );
        obs.containers
            .push(container("i2", 0, ContainerState::Exited, Some(0)));
        assert_eq!(
            plan(&p, &obs, &Backoffs::new(), now()),
            [start(Kind::App, "a", 0)]
        );
    }

    #[test]
    fn a_failed_init_container_fails_a_never_pod_and_is_retried_otherwise() {
        let spec = |r: &str| {
            pod(
                json!({"restartPolicy": r, "initContainers": [{"name": "i"}], "containers": [{"name": "a"}]}),
            )
        };
        let obs = Observed {
            sandboxes: vec![sandbox("s1", SandboxState::Ready)],
            containers: vec![container("i", 0, ContainerState::Exited, Some(1))],
        };
        assert_eq!(
            plan(&spec("Never"), &obs, &Backoffs::new(), now()),
            [Action::KillPod]
        );
        assert_eq!(
            plan(&spec("OnFailure"), &obs, &Backoffs::new(), now()),
            [start(Kind::Init, "i", 1)]
        );
    }

    #[test]
    fn restart_policies_decide_which_exits_restart() {
        let obs = Observed {
            sandboxes: vec![sandbox("s1", SandboxState::Ready)],
            containers: vec![
                container("a", 0, ContainerState::Exited, Some(0)),
                container("b", 0, ContainerState::Exited, Some(2)),
            ],
        };
        let b = Backoffs::new();
        assert_eq!(
            plan(&two_apps("Always"), &obs, &b, now()),
            [start(Kind::App, "a", 1), start(Kind::App, "b", 1)]
        );
        assert_eq!(
            plan(&two_apps("OnFailure"), &obs, &b, now()),
            [start(Kind::App, "b", 1)]
        );
        // Never: both done, the sandbox is released.
        assert_eq!(plan(&two_apps("Never"), &obs, &b, now()), [Action::KillPod]);
    }

    #[test]
    fn restarts_back_off_10s_doubling_to_5_minutes_and_reset_after_10_minutes_of_running() {
        assert_eq!(backoff_for(0), Duration::from_secs(10));
        assert_eq!(backoff_for(1), Duration::from_secs(20));
        assert_eq!(backoff_for(4), Duration::from_secs(160));
        assert_eq!(backoff_for(5), Duration::from_secs(300));
        assert_eq!(backoff_for(30), Duration::from_secs(300));
        let mut b = Backoffs::new();
        let mut c = container("a", 0, ContainerState::Exited, Some(1));
        let p = pod(json!({"containers": [{"name": "a"}]}));
        let obs = |c: &Container| Observed {
            sandboxes: vec![sandbox("s1", SandboxState::Ready)],
            containers: vec![c.clone()],
        };
        let finished = c.finished_at.unwrap();
        let at = |secs| {
            finished
                .checked_add(jiff::SignedDuration::from_secs(secs))
                .unwrap()
        };
        // The first restart is immediate.
        assert_eq!(plan(&p, &obs(&c), &b, at(0)), [start(Kind::App, "a", 1)]);
        record_restart(&mut b, &c);
        assert_eq!(b["a"], 0);
        // The next exit waits 10 s from its finish: CrashLoopBackOff meanwhile.
        assert_eq!(
            plan(&p, &obs(&c), &b, at(4)),
            [Action::BackOff {
                name: "a".into(),
                remaining: Duration::from_secs(6)
            }]
        );
        assert_eq!(plan(&p, &obs(&c), &b, at(10)), [start(Kind::App, "a", 1)]);
        record_restart(&mut b, &c);
        assert_eq!(b["a"], 1, "then 20 s");
        // Ten minutes of running forgives the past.
        c.finished_at = Some(
            c.started_at
                .unwrap()
                .checked_add(jiff::SignedDuration::from_secs(601))
                .unwrap(),
        );
        record_restart(&mut b, &c);
        assert_eq!(b["a"], 0);
    }

    #[test]
    fn deletion_kills_the_pod_and_a_dead_sandbox_is_replaced_unless_never() {
        let mut p = two_apps("Always");
        let obs = Observed {
            sandboxes: vec![sandbox("s1", SandboxState::NotReady)],
            containers: vec![container("a", 0, ContainerState::Exited, Some(137))],
        };
        let actions = plan(&p, &obs, &Backoffs::new(), now());
        assert_eq!(actions[0], Action::CreateSandbox { attempt: 1 });
        assert_eq!(plan(&two_apps("Never"), &obs, &Backoffs::new(), now()), []);
        p.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now()));
        assert_eq!(
            plan(&p, &obs, &Backoffs::new(), now()),
            [],
            "already stopped"
        );
        let running = Observed {
            sandboxes: vec![sandbox("s1", SandboxState::Ready)],
            containers: vec![container("a", 0, ContainerState::Running, None)],
        };
        assert_eq!(
            plan(&p, &running, &Backoffs::new(), now()),
            [Action::KillPod]
        );
    }

    #[test]
    fn exited_attempts_older_than_the_last_state_are_removed() {
        let obs = Observed {
            sandboxes: vec![sandbox("s1", SandboxState::Ready)],
            containers: vec![
                container("a", 0, ContainerState::Exited, Some(1)),
                container("a", 1, ContainerState::Exited, Some(1)),
                container("a", 2, ContainerState::Running, None),
            ],
        };
        let p = pod(json!({"containers": [{"name": "a"}]}));
        assert_eq!(
            plan(&p, &obs, &Backoffs::new(), now()),
            [Action::Remove { id: "a-0".into() }]
        );
    }
}
