//! `capstan bench multinode`: pod-to-pod latency across machines against the same ping between
//! the machines themselves. Two "machines" of [`capstan_testkit::machines`] (network namespaces
//! on one host bridge: `capstan up --allocate-node-cidrs=true` in one, a joined `capstan agent`
//! with its own containerd in the other); a pod on each; busybox's `ping` from the pod on
//! machine a to the pod on machine b (bridge, host-gw route, veth, bridge), and the same
//! busybox `ping` from machine a's namespace to machine b's address (veth, bridge, veth), in
//! alternating rounds of the same run. Needs root, containerd, runc and the CNI plugins.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use capstan_testkit::machines::Machines;
use clap::Args;

#[derive(Debug, Args)]
pub struct MultinodeBench {
    /// Echo requests per round (sent 10 ms apart).
    #[arg(long, default_value_t = 200)]
    count: u32,
    /// Rounds of each path, alternating.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// The busybox and pause OCI archives; built with e2e/images/build.sh when absent (run
    /// from the repository root).
    #[arg(long)]
    image_dir: Option<PathBuf>,
    #[arg(long, default_value = "/tmp")]
    scratch: PathBuf,
}

/// One ping's summary: min / avg / max in milliseconds, and the loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rtt {
    pub min: f64,
    pub avg: f64,
    pub max: f64,
    pub lost: u32,
}

/// Reads busybox ping's last lines (`N packets transmitted, M packets received` and
/// `round-trip min/avg/max = a/b/c ms`).
pub fn parse_ping(out: &str) -> Option<Rtt> {
    let counts = out.lines().find(|l| l.contains("packets transmitted"))?;
    let num = |word: &str| -> Option<u32> {
        let i = counts.find(word)?;
        counts[..i].split_whitespace().last()?.parse().ok()
    };
    let (sent, got) = (num("packets transmitted")?, num("packets received")?);
    let rtt = out.lines().find_map(|l| l.split_once("min/avg/max = "))?.1;
    let mut v = rtt
        .trim_end_matches(" ms")
        .split('/')
        .map(|x| x.trim().parse::<f64>());
    Some(Rtt {
        min: v.next()?.ok()?,
        avg: v.next()?.ok()?,
        max: v.next()?.ok()?,
        lost: sent.saturating_sub(got),
    })
}

fn pod(name: &str, node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {{name: c, image: localhost/busybox:1, command: [sleep, '3600']}}\n"
    )
}

pub async fn run(b: MultinodeBench) -> Result<()> {
    tokio::task::block_in_place(|| run_blocking(b))
}

fn run_blocking(b: MultinodeBench) -> Result<()> {
    if !rustix::process::geteuid().is_root() || !capstan_node_agent::containerd::available() {
        bail!("bench multinode needs root, containerd, runc and the CNI plugins");
    }
    let scratch = tempfile::Builder::new()
        .prefix("capstan-bench-mn-")
        .tempdir_in(&b.scratch)?;
    let built = super::test_images(b.image_dir.as_deref(), scratch.path())?;
    // The agents import busybox; the sandbox image is their own.
    let images = scratch.path().join("busybox-only");
    std::fs::create_dir_all(&images)?;
    std::fs::copy(built.join("busybox.tar"), images.join("busybox.tar"))
        .context("copying busybox.tar")?;
    let me = std::env::current_exe()?;
    let m = Machines::start(&me, &["a", "b"], &images)?;
    m.ready_ranges(Duration::from_secs(120))?;
    let (a, bn) = (&m.machines[0], &m.machines[1]);
    m.ok(
        &["apply", "-f", "-"],
        Some(&format!(
            "{}---\n{}",
            pod("ping-a", &a.name),
            pod("ping-b", &bn.name)
        )),
    );
    let mut target = String::new();
    capstan_testkit::eventually(Duration::from_secs(120), "both pods Running", || {
        let running = |p: &str| {
            m.json(&["get", "pod", p])
                .filter(|v| v["status"]["phase"] == "Running")
                .and_then(|v| v["status"]["podIP"].as_str().map(str::to_string))
        };
        match (running("ping-a"), running("ping-b")) {
            (Some(_), Some(ip)) => {
                target = ip;
                true
            }
            _ => false,
        }
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", m.logs()))?;
    let count = b.count.to_string();
    let ping = ["ping", "-q", "-c", &count, "-i", "0.01"];
    let pods_ping = || -> Result<Rtt> {
        let mut args = ping.to_vec();
        args.push(&target);
        let out = m
            .exec("ping-a", &args)
            .map_err(|e| anyhow::anyhow!("ping in ping-a: {e}"))?;
        parse_ping(&out).with_context(|| format!("busybox ping said {out:?}"))
    };
    let hosts_ping = || -> Result<Rtt> {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &a.netns, "busybox"])
            .args(ping)
            .arg(&bn.addr)
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        parse_ping(&text).with_context(|| format!("busybox ping said {text:?}"))
    };
    // One round of each unmeasured: ARP and route caches, the exec path.
    pods_ping()?;
    hosts_ping()?;
    let (mut pods, mut hosts) = (Vec::new(), Vec::new());
    for _ in 0..b.rounds {
        pods.push(pods_ping()?);
        hosts.push(hosts_ping()?);
    }
    println!("# capstan bench multinode\n");
    println!(
        "`capstan bench multinode --count {} --rounds {}`: busybox ping, {} echo requests 10 ms apart per round; pod on machine a → pod on machine b (bridge, host-gw route, veth, host bridge, veth, bridge) against machine a → machine b (veth, host bridge, veth); network namespaces on one host, 2 cores.\n",
        b.count, b.rounds, b.count
    );
    println!("| path | round | min ms | avg ms | max ms | lost |\n|---|---|---|---|---|---|");
    for (what, rows) in [("pod a → pod b", &pods), ("machine a → machine b", &hosts)] {
        for (i, r) in rows.iter().enumerate() {
            println!(
                "| {what} | {} | {:.3} | {:.3} | {:.3} | {} |",
                i + 1,
                r.min,
                r.avg,
                r.max,
                r.lost
            );
        }
    }
    let mean = |rows: &[Rtt]| rows.iter().map(|r| r.avg).sum::<f64>() / rows.len().max(1) as f64;
    let (p, h) = (mean(&pods), mean(&hosts));
    println!(
        "\npod-to-pod avg {p:.3} ms against machine-to-machine {h:.3} ms: {:.2}x, +{:.0} µs",
        p / h,
        (p - h) * 1000.0
    );
    drop(m);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busybox_ping_summaries_are_read() {
        let out = "PING 10.1.2.3 (10.1.2.3): 56 data bytes\n\n--- 10.1.2.3 ping statistics ---\n200 packets transmitted, 198 packets received, 1% packet loss\nround-trip min/avg/max = 0.041/0.082/0.915 ms\n";
        assert_eq!(
            parse_ping(out),
            Some(Rtt {
                min: 0.041,
                avg: 0.082,
                max: 0.915,
                lost: 2
            })
        );
        assert_eq!(parse_ping("ping: sendto: Operation not permitted\n"), None);
        assert_eq!(
            parse_ping("3 packets transmitted, 0 packets received, 100% packet loss\n"),
            None
        );
    }
}
