//! The kernel's OOM kills as Node Events: the agent reads the kernel log (`/dev/kmsg`, root
//! only) from its end, as kubelet's OOM watcher and node-problem-detector's kernel monitor
//! do. Each kill is `OOMKilling` with the kernel's own line ("Memory cgroup out of memory:
//! Killed process 1234 (tail) total-vm:…", node-problem-detector's event); a kill outside any
//! cgroup's limit is also kubelet's `SystemOOM` ("System OOM encountered, victim process:
//! tail, pid: 1234"). A container killed for its limit is also OOMKilled in its status (the
//! runtime reports that).

use crate::events::{EventType, Recorder, reason};

/// What one kernel log record says about an OOM kill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// `oom-kill:constraint=…,task_memcg=…,task=…,pid=…`: the kill's context.
    Context { system: bool },
    /// `… Killed process PID (NAME) …`: the kill itself.
    Killed {
        message: String,
        pid: u32,
        process: String,
    },
}

/// Reads one `/dev/kmsg` record (`PRIO,SEQ,TS,FLAGS;MESSAGE`).
pub fn parse(record: &str) -> Option<Line> {
    let message = record.split_once(';').map_or(record, |(_, m)| m).trim();
    let message = message.lines().next().unwrap_or_default();
    if let Some(ctx) = message.strip_prefix("oom-kill:") {
        let field = |k: &str| {
            ctx.split(',')
                .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
        };
        let system = field("constraint") == Some("CONSTRAINT_NONE")
            || field("task_memcg").is_some_and(|m| m == "/");
        return Some(Line::Context { system });
    }
    let at = message.find("Killed process ")?;
    let rest = &message[at + "Killed process ".len()..];
    let (pid, rest) = rest.split_once(' ')?;
    let process = rest.strip_prefix('(')?.split_once(')')?.0;
    Some(Line::Killed {
        message: message.to_string(),
        pid: pid.parse().ok()?,
        process: process.to_string(),
    })
}

/// Watches the kernel log until the task is dropped (aborted); None (and a debug line) where
/// `/dev/kmsg` cannot be read. A thread reads the log (one record per read, blocking: the
/// kernel log is no pipe, and readiness-based reading would lose records that arrive
/// together) and hands the records to the task, which records the Events; once the task is
/// gone the thread ends at the next record.
pub fn watch(recorder: Recorder, node: String) -> Option<tokio::task::JoinHandle<()>> {
    let mut kmsg = match std::fs::File::open("/dev/kmsg") {
        Ok(f) => f,
        Err(e) => {
            tracing::debug!(error = %e, "no kernel log: OOM kills are not reported as Events");
            return None;
        }
    };
    // From now on: what the kernel said before the agent started is not news.
    if let Err(e) = rustix::fs::seek(&kmsg, rustix::fs::SeekFrom::End(0)) {
        tracing::debug!(error = %e, "cannot seek the kernel log");
        return None;
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Line>(64);
    let reader = std::thread::Builder::new()
        .name("kernel-log".into())
        .spawn(move || {
            use std::io::Read;
            // One record per read; the kernel's limit is 8 KiB.
            let mut buf = vec![0u8; 8192];
            loop {
                let n = match kmsg.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => n,
                    // Records overwritten before we read them: go on from the next one.
                    Err(e) if e.raw_os_error() == Some(rustix::io::Errno::PIPE.raw_os_error()) => {
                        continue;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the kernel log failed; OOM kills go unreported");
                        return;
                    }
                };
                if let Some(line) = parse(&String::from_utf8_lossy(&buf[..n]))
                    && tx.blocking_send(line).is_err()
                {
                    return;
                }
            }
        });
    if let Err(e) = reader {
        tracing::warn!(error = %e, "cannot start the kernel log reader");
        return None;
    }
    Some(tokio::spawn(async move {
        let mut system = false;
        while let Some(line) = rx.recv().await {
            match line {
                Line::Context { system: s } => system = s,
                Line::Killed {
                    message,
                    pid,
                    process,
                } => {
                    tracing::info!(%process, pid, "the kernel killed a process for memory");
                    recorder.node_event(&node, EventType::Warning, reason::OOM_KILLING, message);
                    if system {
                        recorder.node_event(
                            &node,
                            EventType::Warning,
                            reason::SYSTEM_OOM,
                            format!(
                                "System OOM encountered, victim process: {process}, pid: {pid}"
                            ),
                        );
                    }
                    system = false;
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_lines_of_a_cgroup_kill_and_a_system_kill() {
        let ctx = "6,1234,5678901,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=abc,mems_allowed=0,oom_memcg=/kubepods/burstable/podu1/capstan-c1,task_memcg=/kubepods/burstable/podu1/capstan-c1,task=tail,pid=4242,uid=0";
        assert_eq!(parse(ctx), Some(Line::Context { system: false }));
        let killed = "3,1235,5678902,-;Memory cgroup out of memory: Killed process 4242 (tail) total-vm:1560kB, anon-rss:20480kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:44kB oom_score_adj:1000";
        assert_eq!(
            parse(killed),
            Some(Line::Killed {
                message: "Memory cgroup out of memory: Killed process 4242 (tail) total-vm:1560kB, anon-rss:20480kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:44kB oom_score_adj:1000".into(),
                pid: 4242,
                process: "tail".into(),
            })
        );
        let sys = "6,9,9,-;oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,global_oom,task_memcg=/,task=java,pid=77,uid=0";
        assert_eq!(parse(sys), Some(Line::Context { system: true }));
        assert_eq!(parse("6,1,1,-;eth0: link up"), None);
        assert_eq!(parse("garbage"), None);
        assert_eq!(parse("3,1,1,-;Killed process x (y)"), None);
    }

    /// Every Event written, as (reason, message).
    struct Sink(tokio::sync::mpsc::UnboundedSender<(String, String)>);

    impl crate::events::EventSink for Sink {
        async fn create(&self, ev: &k8s_openapi::api::core::v1::Event) -> Result<(), String> {
            let _ = self.0.send((
                ev.reason.clone().unwrap_or_default(),
                ev.message.clone().unwrap_or_default(),
            ));
            Ok(())
        }
        async fn patch(&self, _: &str, _: &str, _: &serde_json::Value) -> Result<bool, String> {
            Ok(false)
        }
    }

    /// Lines written into the kernel log (root may) come back as the Node's Events.
    #[tokio::test]
    async fn kills_in_the_kernel_log_become_node_events() {
        if !rustix::process::geteuid().is_root() {
            assert!(
                std::env::var_os("CAPSTAN_REQUIRE_CONTAINERD").is_none(),
                "CI runs this as root"
            );
            eprintln!("skipped: writing the kernel log needs root");
            return;
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let recorder = Recorder::spawn("n1", Sink(tx), std::sync::Arc::new(jiff::Timestamp::now));
        let _watch = watch(recorder, "n1".into()).expect("the kernel log opens");
        let marker = format!("capstan-oom-{}", std::process::id());
        // Whole lines: the kernel holds a record without its newline until the next write.
        let write = |line: &str| std::fs::write("/dev/kmsg", format!("{line}\n")).unwrap();
        write(
            "oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,global_oom,task_memcg=/,task=x,pid=1,uid=0",
        );
        write(&format!(
            "Out of memory: Killed process 4321 ({marker}) total-vm:1kB, anon-rss:1kB, file-rss:0kB"
        ));
        let mut got = Vec::new();
        while got.len() < 2 {
            let ev = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
                .await
                .expect("events within 10 s")
                .unwrap();
            if ev.1.contains(&marker) {
                got.push(ev);
            }
        }
        got.sort();
        assert_eq!(got[0].0, "OOMKilling");
        assert!(
            got[0].1.starts_with("Out of memory: Killed process 4321"),
            "{got:?}"
        );
        assert_eq!(
            got[1],
            (
                "SystemOOM".to_string(),
                format!("System OOM encountered, victim process: {marker}, pid: 4321")
            )
        );
    }
}
