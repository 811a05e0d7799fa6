//! Cgroups for the process runtime's containers — what runc's libcontainer/cgroups does for
//! containerd (`fs` for v1 hierarchies, `fs2` for the unified v2 tree) under the pod cgroups
//! the kubelet's container manager (pkg/kubelet/cm) lays out: finding writable hierarchies,
//! creating `<pod cgroup>/capstan-<id>`, writing limits with runc's conversions, counting OOM
//! kills, removing the directories once empty.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::runtime::Resources;

/// The cgroup hierarchies limits are written to: `/sys/fs/cgroup` when it is a cgroup v2 tree
/// offering cpu and memory, else the v1 `cpu` and `memory` hierarchies under it (and
/// `cpuacct`, which counts CPU time, where it is mounted apart from `cpu`) — if this process
/// may write to them (root). Empty: limits cannot be applied here.
pub fn cgroup_roots() -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    let writable = |p: &Path| rustix::fs::access(p, rustix::fs::Access::WRITE_OK).is_ok();
    if let Ok(controllers) = std::fs::read_to_string(base.join("cgroup.controllers")) {
        let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
        return if has("cpu") && has("memory") && writable(base) {
            vec![base.to_path_buf()]
        } else {
            Vec::new()
        };
    }
    let (cpu, memory) = (base.join("cpu"), base.join("memory"));
    if cpu.join("cpu.shares").exists()
        && memory.join("memory.limit_in_bytes").exists()
        && writable(&cpu)
        && writable(&memory)
    {
        let mut roots = vec![cpu.clone(), memory];
        let cpuacct = base.join("cpuacct");
        let apart = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
            (Ok(a), Ok(b)) => a != b,
            _ => false,
        };
        if cpuacct.join("cpuacct.usage").exists() && writable(&cpuacct) && apart(&cpu, &cpuacct) {
            roots.push(cpuacct);
        }
        roots
    } else {
        Vec::new()
    }
}

/// Creates `dir` and its missing parents under the hierarchy `root`. On cgroup v2 the cpu and
/// memory controllers are enabled for the children of every level (a cgroup only gets what its
/// parent enables); v1 hierarchies need nothing more than the directories.
pub(super) fn ensure_cgroup(root: &Path, dir: &Path) -> std::io::Result<()> {
    let v2 = root.join("cgroup.controllers").exists();
    let rel = dir.strip_prefix(root).map_err(std::io::Error::other)?;
    let mut at = root.to_path_buf();
    for part in rel.components() {
        if v2 {
            let control = at.join("cgroup.subtree_control");
            let enabled = std::fs::read_to_string(&control).unwrap_or_default();
            for c in ["cpu", "memory"] {
                if !enabled.split_whitespace().any(|x| x == c) {
                    std::fs::write(&control, format!("+{c}"))?;
                }
            }
        }
        at.push(part);
        match std::fs::create_dir(&at) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// Writes a container's limits into one of its cgroup directories, in whichever interface the
/// directory offers (runc's conversions): v2 `cpu.weight`/`cpu.max`/`memory.max`, v1
/// `cpu.shares`/`cpu.cfs_quota_us`/`memory.limit_in_bytes`. Swap is capped so that going over
/// the memory limit is an OOM kill, as under the kubelet (which runs without swap).
pub(super) fn write_limits(dir: &Path, r: &Resources) -> std::io::Result<()> {
    let has = |f: &str| dir.join(f).exists();
    let write = |f: &str, v: String| std::fs::write(dir.join(f), v);
    let period = if r.cpu_period > 0 {
        r.cpu_period
    } else {
        100_000
    };
    if has("cpu.max") {
        if r.cpu_shares > 0 {
            // cpu.shares 2..262144 onto cpu.weight 1..10000.
            let shares = r.cpu_shares.clamp(2, 262_144);
            write(
                "cpu.weight",
                (1 + ((shares - 2) * 9999) / 262_142).to_string(),
            )?;
        }
        let quota = if r.cpu_quota > 0 {
            r.cpu_quota.to_string()
        } else {
            "max".to_string()
        };
        write("cpu.max", format!("{quota} {period}"))?;
    }
    if has("cpu.shares") {
        if r.cpu_shares > 0 {
            write("cpu.shares", r.cpu_shares.clamp(2, 262_144).to_string())?;
        }
        write("cpu.cfs_period_us", period.to_string())?;
        let quota = if r.cpu_quota > 0 { r.cpu_quota } else { -1 };
        write("cpu.cfs_quota_us", quota.to_string())?;
    }
    if r.memory_limit_in_bytes > 0 {
        let limit = r.memory_limit_in_bytes.to_string();
        if has("memory.max") {
            write("memory.max", limit.clone())?;
            if has("memory.swap.max") {
                write("memory.swap.max", "0".into())?;
            }
        }
        if has("memory.limit_in_bytes") {
            write("memory.limit_in_bytes", limit.clone())?;
            if has("memory.memsw.limit_in_bytes") {
                write("memory.memsw.limit_in_bytes", limit)?;
            }
        }
    }
    Ok(())
}

/// How many times the kernel OOM-killed in this cgroup (v2 `memory.events`, v1
/// `memory.oom_control`; 0 for a directory of another controller).
pub(super) fn oom_kills(dir: &Path) -> u64 {
    ["memory.events", "memory.oom_control"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(dir.join(f)).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|n| n.trim().parse::<u64>().ok())
        })
        .sum()
}

/// The CPU time (ns) counted in a container's cgroup directories: v2 `cpu.stat`'s usage_usec,
/// v1 `cpuacct.usage`. None when none of them counts it.
pub(super) fn cpu_usage_ns(dirs: &[PathBuf]) -> Option<u64> {
    dirs.iter().find_map(|dir| {
        if let Ok(v) = std::fs::read_to_string(dir.join("cpuacct.usage")) {
            return v.trim().parse::<u64>().ok();
        }
        let stat = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
        stat_field(&stat, "usage_usec").map(|us| us.saturating_mul(1000))
    })
}

/// The memory working set of a container's cgroup, as the kubelet (cAdvisor) reckons it: usage
/// less inactive file pages (v2 `memory.current` and `inactive_file`, v1 `memory.usage_in_bytes`
/// and `total_inactive_file`), never below zero.
pub(super) fn memory_working_set(dirs: &[PathBuf]) -> Option<u64> {
    dirs.iter().find_map(|dir| {
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
        let (usage, inactive) = match read("memory.current") {
            Some(current) => (current, "inactive_file"),
            None => (read("memory.usage_in_bytes")?, "total_inactive_file"),
        };
        let usage = usage.trim().parse::<u64>().ok()?;
        let inactive = read("memory.stat")
            .and_then(|s| stat_field(&s, inactive))
            .unwrap_or(0);
        Some(usage.saturating_sub(inactive))
    })
}

/// The value of `key` in a flat-keyed cgroup file (`key value` lines).
fn stat_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Removes an empty cgroup (its processes gone); a busy one is retried briefly, since the
/// kernel releases a cgroup a moment after its last process is reaped.
pub(super) fn remove_cgroup(dir: &Path) {
    for _ in 0..50 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    tracing::warn!(dir = %dir.display(), "a container cgroup could not be removed");
}

/// A pod's cgroup directories (one per hierarchy in `roots`) for the cgroupfs path `parent`
/// (`/kubepods/burstable/pod<uid>`); none when `parent` is empty or would leave the roots.
pub(super) fn pod_cgroups(roots: &[PathBuf], parent: &str) -> Vec<PathBuf> {
    let rel = parent.trim_start_matches('/');
    if rel.is_empty()
        || rel
            .split('/')
            .any(|p| p == ".." || p == "." || p.is_empty())
    {
        return Vec::new();
    }
    roots.iter().map(|root| root.join(rel)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_read_from_whichever_interface_the_directory_offers() {
        let v1 = tempfile::tempdir().unwrap();
        let (cpu, mem) = (v1.path().join("cpuacct"), v1.path().join("memory"));
        std::fs::create_dir_all(&cpu).unwrap();
        std::fs::create_dir_all(&mem).unwrap();
        std::fs::write(cpu.join("cpuacct.usage"), "1234567\n").unwrap();
        std::fs::write(mem.join("memory.usage_in_bytes"), "10000\n").unwrap();
        std::fs::write(
            mem.join("memory.stat"),
            "cache 5000\ninactive_file 99\ntotal_inactive_file 4000\n",
        )
        .unwrap();
        let dirs = [mem.clone(), cpu.clone()];
        assert_eq!(cpu_usage_ns(&dirs), Some(1_234_567));
        assert_eq!(memory_working_set(&dirs), Some(6000));

        let v2 = tempfile::tempdir().unwrap();
        let dir = v2.path().to_path_buf();
        std::fs::write(dir.join("cpu.stat"), "usage_usec 250\nuser_usec 200\n").unwrap();
        std::fs::write(dir.join("memory.current"), "3000\n").unwrap();
        std::fs::write(dir.join("memory.stat"), "anon 1\ninactive_file 5000\n").unwrap();
        let dirs = [dir];
        assert_eq!(cpu_usage_ns(&dirs), Some(250_000));
        assert_eq!(memory_working_set(&dirs), Some(0), "never below zero");
        assert_eq!(cpu_usage_ns(&[]), None);
        assert_eq!(memory_working_set(&[v1.path().to_path_buf()]), None);
    }

    #[test]
    fn pod_cgroups_stay_under_the_root() {
        let roots = [
            PathBuf::from("/sys/fs/cgroup/cpu"),
            PathBuf::from("/sys/fs/cgroup/memory"),
        ];
        assert_eq!(
            pod_cgroups(&roots, "/kubepods/burstable/podu1"),
            [
                PathBuf::from("/sys/fs/cgroup/cpu/kubepods/burstable/podu1"),
                PathBuf::from("/sys/fs/cgroup/memory/kubepods/burstable/podu1"),
            ]
        );
        assert!(pod_cgroups(&roots, "").is_empty());
        assert!(pod_cgroups(&roots, "/kubepods/../../etc").is_empty());
        assert!(pod_cgroups(&roots, "/kubepods//x").is_empty());
        assert!(pod_cgroups(&[], "/kubepods/podu1").is_empty());
    }

    #[test]
    fn limits_are_written_as_runc_converts_them_for_cgroup_v2() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["cpu.max", "memory.max", "memory.swap.max"] {
            std::fs::write(dir.path().join(f), "max").unwrap();
        }
        let r = Resources {
            cpu_shares: 512,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            memory_limit_in_bytes: 64 << 20,
            oom_score_adj: -997,
        };
        write_limits(dir.path(), &r).unwrap();
        let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
        assert_eq!(read("cpu.weight"), "20"); // 1 + (510 * 9999) / 262142
        assert_eq!(read("cpu.max"), "50000 100000");
        assert_eq!(read("memory.max"), (64u64 << 20).to_string());
        assert_eq!(read("memory.swap.max"), "0");
        // No limits: an unlimited quota, nothing else written.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cpu.max"), "x").unwrap();
        write_limits(dir.path(), &Resources::default()).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("cpu.max")).unwrap(),
            "max 100000"
        );
        assert!(!dir.path().join("memory.max").exists());
        assert!(!dir.path().join("cpu.weight").exists());
    }

    #[test]
    fn limits_are_written_to_cgroup_v1_hierarchies() {
        let r = Resources {
            cpu_shares: 512,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            memory_limit_in_bytes: 64 << 20,
            oom_score_adj: 0,
        };
        let cpu = tempfile::tempdir().unwrap();
        for f in ["cpu.shares", "cpu.cfs_quota_us", "cpu.cfs_period_us"] {
            std::fs::write(cpu.path().join(f), "0").unwrap();
        }
        write_limits(cpu.path(), &r).unwrap();
        let read = |d: &Path, f: &str| std::fs::read_to_string(d.join(f)).unwrap();
        assert_eq!(read(cpu.path(), "cpu.shares"), "512");
        assert_eq!(read(cpu.path(), "cpu.cfs_quota_us"), "50000");
        assert_eq!(read(cpu.path(), "cpu.cfs_period_us"), "100000");
        assert!(!cpu.path().join("memory.limit_in_bytes").exists());
        let memory = tempfile::tempdir().unwrap();
        for f in ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"] {
            std::fs::write(memory.path().join(f), "0").unwrap();
        }
        write_limits(memory.path(), &r).unwrap();
        assert_eq!(
            read(memory.path(), "memory.limit_in_bytes"),
            (64u64 << 20).to_string()
        );
        assert_eq!(
            read(memory.path(), "memory.memsw.limit_in_bytes"),
            (64u64 << 20).to_string()
        );
        assert!(!memory.path().join("cpu.shares").exists());
    }

    #[test]
    fn oom_kills_are_read_from_memory_events() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(oom_kills(dir.path()), 0);
        std::fs::write(
            dir.path().join("memory.events"),
            "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n",
        )
        .unwrap();
        assert_eq!(oom_kills(dir.path()), 1);
        let v1 = tempfile::tempdir().unwrap();
        std::fs::write(
            v1.path().join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        assert_eq!(oom_kills(v1.path()), 2);
    }
}
