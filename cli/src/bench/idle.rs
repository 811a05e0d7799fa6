//! `capstan bench idle`: what an idle all-in-one holds. `capstan up` on a fresh data dir in
//! three shapes — the API server alone (`--controllers none --runtime none`), with every
//! controller, and with the node agent too (`--runtime process`) — each with the allocator's
//! arenas committed lazily (the default of the long-running commands) and eagerly (mimalloc's
//! own default, `MIMALLOC_ARENA_EAGER_COMMIT=1`), interleaved, `--rounds` times. Read after
//! `--idle-seconds` with no workload: VmRSS, and from smaps_rollup the anonymous memory, the
//! huge pages among it, and the file-backed rest (the binary's pages mapped in).

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use tokio::io::AsyncBufReadExt;

#[derive(Debug, Args)]
pub struct IdleBench {
    /// How long each `capstan up` idles before it is read.
    #[arg(long, default_value_t = 15)]
    idle_seconds: u64,
    /// Runs of each shape and allocator setting.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Where the data dirs go.
    #[arg(long, default_value = "/tmp")]
    scratch: std::path::PathBuf,
}

/// Memory of one process, in KiB.
#[derive(Clone, Copy, Debug, Default)]
struct Memory {
    rss: u64,
    anon: u64,
    huge: u64,
}

fn memory(pid: u32) -> Memory {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        rollup
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Memory {
        rss: super::rss_kib(pid),
        anon: field("Anonymous:"),
        huge: field("AnonHugePages:"),
    }
}

const SHAPES: &[(&str, &[&str])] = &[
    (
        "API server alone",
        &["--controllers", "none", "--runtime", "none"],
    ),
    ("+ every controller", &["--runtime", "none"]),
    ("+ node agent (process runtime)", &["--runtime", "process"]),
];

async fn one(b: &IdleBench, args: &[&str], eager: bool) -> Result<Memory> {
    let dir = tempfile::Builder::new()
        .prefix("capstan-idle-")
        .tempdir_in(&b.scratch)?;
    let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
    cmd.args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(args)
        .env("MIMALLOC_ARENA_EAGER_COMMIT", if eager { "1" } else { "0" })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().context("stdout")?).lines();
    tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await??
        .context("capstan up exited")?;
    // Idle: a measurement after a quiet period, not synchronisation.
    tokio::time::sleep(Duration::from_secs(b.idle_seconds)).await;
    let pid = child.id().context("no pid")?;
    let m = memory(pid);
    stop(&mut child).await;
    Ok(m)
}

/// SIGTERM (the agent removes its nftables tables on the way out), -9 after 20 s.
async fn stop(child: &mut tokio::process::Child) {
    use rustix::process::{Pid, Signal, kill_process};
    if let Some(pid) = child.id().and_then(|p| Pid::from_raw(p as i32)) {
        let _ = kill_process(pid, Signal::TERM);
    }
    if tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

pub async fn run(b: IdleBench) -> Result<()> {
    let mut rows: Vec<(String, Vec<Memory>, Vec<Memory>)> = SHAPES
        .iter()
        .map(|(name, _)| (name.to_string(), Vec::new(), Vec::new()))
        .collect();
    for _ in 0..b.rounds {
        for (i, (_, args)) in SHAPES.iter().enumerate() {
            rows[i].1.push(one(&b, args, false).await?);
            rows[i].2.push(one(&b, args, true).await?);
        }
    }
    let mib = |k: u64| k as f64 / 1024.0;
    let cell = |ms: &[Memory], f: &dyn Fn(&Memory) -> u64| {
        ms.iter()
            .map(|m| format!("{:.1}", mib(f(m))))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "## Idle `capstan up` (no workload, {} s after ready, {} rounds; MiB)\n",
        b.idle_seconds, b.rounds
    );
    println!("| shape | arenas | VmRSS | anonymous | of it huge pages | file-backed |");
    println!("|---|---|---|---|---|---|");
    for (name, lazy, eager) in &rows {
        for (how, ms) in [("lazy (default)", lazy), ("eager", eager)] {
            println!(
                "| {name} | {how} | {} | {} | {} | {} |",
                cell(ms, &|m| m.rss),
                cell(ms, &|m| m.anon),
                cell(ms, &|m| m.huge),
                cell(ms, &|m| m.rss.saturating_sub(m.anon)),
            );
        }
    }
    Ok(())
}
