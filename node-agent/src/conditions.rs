//! The Node's conditions from the machine's own figures, as kubelet reports them:
//! MemoryPressure, DiskPressure and PIDPressure against the hard-eviction thresholds
//! (kubelet's defaults: memory.available < 100Mi, nodefs.available < 10%, nodefs.inodesFree <
//! 5%; kubelet sets no PID threshold by default, Capstan uses pid.available < 5% of pid_max),
//! and Ready from the container runtime (reachable, its network ready). A condition's
//! lastTransitionTime changes only when its status does; lastHeartbeatTime is every post.
//!
//! memory.available is the kernel's MemAvailable (kubelet computes capacity minus the root
//! cgroup's working set; both count reclaimable page cache as available).

use std::collections::HashMap;
use std::path::Path;

use serde_json::{Value, json};

/// The hard-eviction thresholds the pressure conditions are judged by.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub memory_available_bytes: u64,
    /// Of the filesystem holding the agent's root directory.
    pub nodefs_available: f64,
    pub nodefs_inodes_free: f64,
    pub pid_available: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            memory_available_bytes: 100 << 20,
            nodefs_available: 0.10,
            nodefs_inodes_free: 0.05,
            pid_available: 0.05,
        }
    }
}

impl Thresholds {
    /// The kubelet's `--eviction-hard` syntax: `memory.available<100Mi,nodefs.available<10%,
    /// nodefs.inodesFree<5%,pid.available<5%` (memory as a quantity, the others as
    /// percentages). Signals not named keep their defaults.
    pub fn parse(s: &str) -> Result<Thresholds, String> {
        let mut t = Thresholds::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (signal, value) = part.split_once('<').ok_or_else(|| {
                format!("{part:?}: expected SIGNAL<VALUE (e.g. nodefs.available<10%)")
            })?;
            let percent = || -> Result<f64, String> {
                let v = value
                    .strip_suffix('%')
                    .and_then(|p| p.parse::<f64>().ok())
                    .filter(|p| (0.0..=100.0).contains(p))
                    .ok_or_else(|| {
                        format!("{part:?}: {signal} takes a percentage from 0% to 100%")
                    })?;
                Ok(v / 100.0)
            };
            match signal {
                "memory.available" => {
                    let units = [
                        ("Ki", 1u64 << 10),
                        ("Mi", 1 << 20),
                        ("Gi", 1 << 30),
                        ("", 1),
                    ];
                    let (digits, unit) = units
                        .iter()
                        .find_map(|(suffix, unit)| Some((value.strip_suffix(suffix)?, *unit)))
                        .unwrap_or((value, 1));
                    let n: u64 = digits.parse().map_err(|_| {
                        format!("{part:?}: memory.available takes a quantity such as 100Mi")
                    })?;
                    t.memory_available_bytes = n.saturating_mul(unit);
                }
                "nodefs.available" => t.nodefs_available = percent()?,
                "nodefs.inodesFree" => t.nodefs_inodes_free = percent()?,
                "pid.available" => t.pid_available = percent()?,
                other => {
                    return Err(format!(
                        "unknown eviction signal {other:?}; known: memory.available, nodefs.available, nodefs.inodesFree, pid.available"
                    ));
                }
            }
        }
        Ok(t)
    }
}

/// The machine's figures at one moment; None where one could not be read.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Signals {
    pub memory_available_bytes: Option<u64>,
    /// (available, total) bytes and (free, total) inodes of the node filesystem.
    pub nodefs_bytes: Option<(u64, u64)>,
    pub nodefs_inodes: Option<(u64, u64)>,
    /// (processes and threads running, pid_max).
    pub pids: Option<(u64, u64)>,
}

impl Signals {
    /// Reads them from /proc and the filesystem of `root_dir`.
    pub fn sample(root_dir: &Path) -> Signals {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_available_bytes = crate::stats::meminfo_bytes(&meminfo, "MemAvailable");
        let fs = rustix::fs::statvfs(root_dir).ok();
        // /proc/loadavg's fourth field: runnable/total scheduling entities (threads).
        let running = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().nth(3)?.split_once('/')?.1.parse().ok());
        let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .ok()
            .and_then(|v| v.trim().parse().ok());
        Signals {
            memory_available_bytes,
            nodefs_bytes: fs
                .as_ref()
                .map(|s| (s.f_bavail * s.f_frsize, s.f_blocks * s.f_frsize)),
            nodefs_inodes: fs.as_ref().map(|s| (s.f_favail, s.f_files)),
            pids: running.zip(pid_max),
        }
    }
}

/// One condition as kubelet words it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

/// Whether `available` of `total` is below the fraction `min` (never with no total).
fn below(available: u64, total: u64, min: f64) -> bool {
    total > 0 && (available as f64) < (total as f64) * min
}

/// The four conditions from the figures and the runtime's health (Err: why it is not ready).
pub fn evaluate(s: &Signals, t: &Thresholds, runtime: &Result<(), String>) -> Vec<Condition> {
    let memory = s
        .memory_available_bytes
        .is_some_and(|m| m < t.memory_available_bytes);
    let disk = s
        .nodefs_bytes
        .is_some_and(|(a, total)| below(a, total, t.nodefs_available))
        || s.nodefs_inodes
            .is_some_and(|(f, total)| below(f, total, t.nodefs_inodes_free));
    let pid = s
        .pids
        .is_some_and(|(used, max)| below(max.saturating_sub(used), max, t.pid_available));
    let pair = |ty, on: bool, yes: (&'static str, &str), no: (&'static str, &str)| {
        let (reason, message) = if on { yes } else { no };
        Condition {
            type_: ty,
            status: on,
            reason,
            message: message.to_string(),
        }
    };
    vec![
        pair(
            "MemoryPressure",
            memory,
            (
                "KubeletHasInsufficientMemory",
                "kubelet has insufficient memory available",
            ),
            (
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            ),
        ),
        pair(
            "DiskPressure",
            disk,
            ("KubeletHasDiskPressure", "kubelet has disk pressure"),
            ("KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        ),
        pair(
            "PIDPressure",
            pid,
            (
                "KubeletHasInsufficientPID",
                "kubelet has insufficient PID available",
            ),
            (
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            ),
        ),
        match runtime {
            Ok(()) => Condition {
                type_: "Ready",
                status: true,
                reason: "KubeletReady",
                message: "kubelet is posting ready status".into(),
            },
            Err(why) => Condition {
                type_: "Ready",
                status: false,
                reason: "KubeletNotReady",
                message: why.clone(),
            },
        },
    ]
}

/// The conditions as posted, remembering when each last changed.
#[derive(Debug, Default)]
pub struct Tracker {
    last: HashMap<&'static str, (Condition, jiff::Timestamp)>,
}

impl Tracker {
    /// Forgets what was posted: the next render is a change, with every transition time now
    /// (someone else — the node-lifecycle controller — changed the conditions meanwhile).
    pub fn reset(&mut self) {
        self.last.clear();
    }

    /// The status's `conditions` for `now`, and whether any changed since the last call.
    pub fn render(&mut self, conditions: &[Condition], now: jiff::Timestamp) -> (Value, bool) {
        let mut changed = self.last.len() != conditions.len();
        let mut out = Vec::with_capacity(conditions.len());
        for c in conditions {
            let since = match self.last.get(c.type_) {
                Some((before, at)) if before.status == c.status => {
                    changed |= before != c;
                    *at
                }
                _ => {
                    changed = true;
                    now
                }
            };
            self.last.insert(c.type_, (c.clone(), since));
            out.push(json!({
                "type": c.type_,
                "status": if c.status { "True" } else { "False" },
                "reason": c.reason,
                "message": c.message,
                "lastHeartbeatTime": now.to_string(),
                "lastTransitionTime": since.to_string(),
            }));
        }
        (Value::Array(out), changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> Signals {
        Signals {
            memory_available_bytes: Some(8 << 30),
            nodefs_bytes: Some((50 << 30, 100 << 30)),
            nodefs_inodes: Some((900, 1000)),
            pids: Some((500, 4_194_304)),
        }
    }

    fn statuses(c: &[Condition]) -> Vec<(&str, bool)> {
        c.iter().map(|c| (c.type_, c.status)).collect()
    }

    #[test]
    fn pressure_follows_kubelets_hard_eviction_thresholds() {
        let t = Thresholds::default();
        let ok = evaluate(&healthy(), &t, &Ok(()));
        assert_eq!(
            statuses(&ok),
            [
                ("MemoryPressure", false),
                ("DiskPressure", false),
                ("PIDPressure", false),
                ("Ready", true)
            ]
        );
        assert_eq!(ok[3].reason, "KubeletReady");
        let mut s = healthy();
        s.memory_available_bytes = Some(99 << 20);
        assert!(evaluate(&s, &t, &Ok(()))[0].status);
        let mut s = healthy();
        s.nodefs_bytes = Some((9 << 30, 100 << 30));
        let c = evaluate(&s, &t, &Ok(()));
        assert_eq!((c[1].status, c[1].reason), (true, "KubeletHasDiskPressure"));
        let mut s = healthy();
        s.nodefs_inodes = Some((40, 1000));
        assert!(evaluate(&s, &t, &Ok(()))[1].status, "inodes count too");
        let mut s = healthy();
        s.pids = Some((4_000_000, 4_194_304));
        assert!(evaluate(&s, &t, &Ok(()))[2].status);
        // Figures that cannot be read are no pressure.
        assert_eq!(
            statuses(&evaluate(&Signals::default(), &t, &Ok(())))[..3],
            [
                ("MemoryPressure", false),
                ("DiskPressure", false),
                ("PIDPressure", false)
            ]
        );
    }

    #[test]
    fn an_unready_runtime_makes_the_node_not_ready_with_why() {
        let c = evaluate(
            &healthy(),
            &Thresholds::default(),
            &Err("container runtime network not ready: NetworkReady=false".into()),
        );
        assert_eq!(
            (c[3].status, c[3].reason, c[3].message.as_str()),
            (
                false,
                "KubeletNotReady",
                "container runtime network not ready: NetworkReady=false"
            )
        );
    }

    #[test]
    fn transition_times_move_only_when_a_status_changes() {
        let t = Thresholds::default();
        let mut tracker = Tracker::default();
        let t0 = jiff::Timestamp::from_second(1_000).unwrap();
        let t1 = jiff::Timestamp::from_second(1_010).unwrap();
        let t2 = jiff::Timestamp::from_second(1_020).unwrap();
        let (first, changed) = tracker.render(&evaluate(&healthy(), &t, &Ok(())), t0);
        assert!(changed);
        assert_eq!(first[0]["lastTransitionTime"], t0.to_string());
        let (same, changed) = tracker.render(&evaluate(&healthy(), &t, &Ok(())), t1);
        assert!(!changed);
        assert_eq!(same[0]["lastTransitionTime"], t0.to_string());
        assert_eq!(same[0]["lastHeartbeatTime"], t1.to_string());
        let mut s = healthy();
        s.memory_available_bytes = Some(1 << 20);
        let (pressed, changed) = tracker.render(&evaluate(&s, &t, &Ok(())), t2);
        assert!(changed);
        assert_eq!(pressed[0]["status"], "True");
        assert_eq!(pressed[0]["lastTransitionTime"], t2.to_string());
        assert_eq!(
            pressed[1]["lastTransitionTime"],
            t0.to_string(),
            "the others keep theirs"
        );
    }

    #[test]
    fn eviction_thresholds_parse_in_the_kubelets_syntax() {
        let t = Thresholds::parse("memory.available<1Gi, nodefs.available<1%").unwrap();
        assert_eq!(t.memory_available_bytes, 1 << 30);
        assert_eq!(t.nodefs_available, 0.01);
        assert_eq!(t.pid_available, Thresholds::default().pid_available);
        assert_eq!(Thresholds::parse("").unwrap(), Thresholds::default());
        for bad in [
            "nodefs.available<x",
            "disk<1%",
            "nodefs.available=1%",
            "pid.available<200%",
        ] {
            assert!(Thresholds::parse(bad).is_err(), "{bad}");
        }
    }
}
