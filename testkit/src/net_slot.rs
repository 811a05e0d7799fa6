//! Network slots for tests that put real networks on the host (bridges, pod and service CIDRs,
//! nftables tables): each cluster takes a slot no other running test holds, so two suites
//! running at once never share an address range or a rule table. A slot is an exclusive lock
//! on a file under the temp dir; the kernel drops it when its holder exits, even by kill -9,
//! so a crashed test never leaks one. (Random picks collided: two clusters with one pod CIDR
//! route each other's replies to the wrong bridge.)

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

/// How many slots there are: pod CIDRs 10.100.0.0/16 … 10.199.0.0/16.
pub const SLOTS: u16 = 100;

/// A slot held until dropped.
#[derive(Debug)]
pub struct NetSlot {
    pub index: u16,
    _lock: File,
}

impl NetSlot {
    /// The first free slot, starting at a random one (so a slot just released is not reused
    /// at once, while its leftovers may still be going); panics when all are held.
    pub fn take() -> NetSlot {
        NetSlot::take_in(&std::env::temp_dir().join("capstan-net-slots"))
    }

    fn take_in(dir: &Path) -> NetSlot {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let start = fastrand_u16() % SLOTS;
        for i in 0..SLOTS {
            let index = (start + i) % SLOTS;
            let path: PathBuf = dir.join(index.to_string());
            let Ok(file) = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
            else {
                continue;
            };
            if file.try_lock().is_ok() {
                return NetSlot { index, _lock: file };
            }
        }
        panic!("all {SLOTS} network slots under {} are held", dir.display());
    }

    /// The slot's pod CIDR, a /16 of 10.100.0.0 – 10.199.255.255.
    pub fn pod_cidr(&self) -> String {
        format!("10.{}.0.0/16", 100 + self.index)
    }

    /// Removes the CNI bridge plugin's masquerade rules for this slot's pods from the host's
    /// iptables `nat` table: the POSTROUTING jumps from a pod address of the slot's range and
    /// the `CNI-…` chains that accept the range. The plugin removes them on CNI DEL; a
    /// sandbox whose stop failed under load never had one. The range is the slot's own, so
    /// nothing of another test's or the host's is touched. Errors are ignored (no iptables:
    /// nothing to remove).
    pub fn remove_cni_masquerade(&self) {
        let prefix = format!("10.{}.", 100 + self.index);
        let cidr = self.pod_cidr();
        let run = |args: &[&str]| {
            std::process::Command::new("iptables")
                .args(args)
                .stderr(std::process::Stdio::null())
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        };
        // The jumps, by number, highest first (`num target prot opt source destination`).
        if let Some(listed) = run(&["-t", "nat", "-L", "POSTROUTING", "-n", "--line-numbers"]) {
            let mut numbers: Vec<u32> = listed
                .lines()
                .filter_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    let ours = f.len() > 4 && f[1].starts_with("CNI-") && f[4].starts_with(&prefix);
                    ours.then(|| f[0].parse().ok()).flatten()
                })
                .collect();
            numbers.sort_unstable_by(|a, b| b.cmp(a));
            for n in numbers {
                run(&["-t", "nat", "-D", "POSTROUTING", &n.to_string()]);
            }
        }
        // The chains that accept the slot's range, once nothing jumps to them.
        if let Some(rules) = run(&["-t", "nat", "-S"]) {
            let chains: std::collections::BTreeSet<&str> = rules
                .lines()
                .filter(|l| l.contains(&format!("-d {cidr} ")))
                .filter_map(|l| l.strip_prefix("-A "))
                .filter_map(|l| l.split_whitespace().next())
                .filter(|c| c.starts_with("CNI-"))
                .collect();
            for c in chains {
                run(&["-t", "nat", "-F", c]);
                run(&["-t", "nat", "-X", c]);
            }
        }
    }

    /// The slot's service CIDR, one of the 256 /20s of 10.96.0.0/12 (the default range, so a
    /// ClusterIP looks as users expect).
    pub fn service_cidr(&self) -> String {
        format!(
            "10.{}.{}.0/20",
            96 + (self.index >> 4),
            (self.index & 15) << 4
        )
    }

    /// A name for the slot's bridge, table or other host object: `prefix` and the index.
    pub fn name(&self, prefix: &str) -> String {
        format!("{prefix}{:04x}", self.index)
    }
}

/// A random u16 without a dependency: the clock's nanoseconds mixed with the pid.
fn fastrand_u16() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    ((nanos ^ std::process::id().rotate_left(16)) % 65_521) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With two slots held, one's leftover masquerade (a chain and the jump to it) goes, the
    /// other's stays. Needs root and iptables.
    #[test]
    fn a_slots_cni_masquerade_leftovers_go_and_no_one_elses() {
        let iptables = |args: &[&str]| {
            std::process::Command::new("iptables")
                .args(["-t", "nat"])
                .args(args)
                .output()
                .is_ok_and(|o| o.status.success())
        };
        // The effective uid, from /proc/self/status's `Uid: real effective ...`.
        let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
                .unwrap_or(false)
        });
        if !root || !iptables(&["-S", "POSTROUTING"]) {
            eprintln!("SKIPPED: needs root and iptables");
            return;
        }
        let (a, b) = (NetSlot::take(), NetSlot::take());
        let leave = |s: &NetSlot| {
            let chain = format!("CNI-capstan-test-{}", s.index);
            let pod = format!("10.{}.0.9/32", 100 + s.index);
            assert!(iptables(&["-N", &chain]));
            assert!(iptables(&[
                "-A",
                &chain,
                "-d",
                &s.pod_cidr(),
                "-j",
                "ACCEPT"
            ]));
            assert!(iptables(&["-A", "POSTROUTING", "-s", &pod, "-j", &chain]));
            chain
        };
        let (ca, cb) = (leave(&a), leave(&b));
        a.remove_cni_masquerade();
        assert!(!iptables(&["-S", &ca]), "{ca} is still there");
        assert!(iptables(&["-S", &cb]), "{cb} went too");
        let jumps = std::process::Command::new("iptables")
            .args(["-t", "nat", "-S", "POSTROUTING"])
            .output()
            .unwrap();
        let jumps = String::from_utf8_lossy(&jumps.stdout);
        assert!(!jumps.contains(&ca) && jumps.contains(&cb), "{jumps}");
        b.remove_cni_masquerade();
        assert!(!iptables(&["-S", &cb]), "{cb} is still there");
    }

    #[test]
    fn held_slots_are_never_handed_out_twice_and_come_back_when_dropped() {
        // A directory of its own: the real slots belong to the clusters running meanwhile.
        let dir = tempfile::tempdir().unwrap();
        let take = || NetSlot::take_in(dir.path());
        let a = take();
        let b = take();
        assert_ne!(a.index, b.index);
        assert_ne!(a.pod_cidr(), b.pod_cidr());
        assert_ne!(a.service_cidr(), b.service_cidr());
        let index = a.index;
        drop(a);
        // Every other slot held: the one released is the only one left.
        let mut held = vec![b];
        let mut seen = None;
        for _ in 0..SLOTS {
            let s = take();
            if s.index == index {
                seen = Some(index);
            }
            held.push(s);
            if held.len() == SLOTS as usize {
                break;
            }
        }
        assert_eq!(seen, Some(index));
    }

    #[test]
    fn ranges_stay_inside_their_blocks() {
        let dir = tempfile::tempfile().unwrap();
        for index in [0, 15, 16, SLOTS - 1] {
            let s = NetSlot {
                index,
                _lock: dir.try_clone().unwrap(),
            };
            let (a, b) = (s.pod_cidr(), s.service_cidr());
            assert!(a.starts_with("10.1") && a.ends_with(".0.0/16"), "{a}");
            let second: u16 = b.split('.').nth(1).unwrap().parse().unwrap();
            assert!((96..112).contains(&second), "{b}");
        }
    }
}
