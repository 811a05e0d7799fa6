//! The README's "A five-minute tour", run as written so it cannot drift: the `sh` blocks of that
//! section are read from README.md at test time, split into commands (a heredoc stays with its
//! command), and each is run by bash in a directory laid out as the repository's root (`.capstan`
//! is the cluster's data dir, `manifests/` the repository's), with `cargo run --release -p capstan
//! --` meaning the capstan binary under test and `127.0.0.1:6443` the address it serves on.
//!
//! The cluster is `capstan up` on containerd when this machine can have one (root, containerd,
//! runc, CNI plugins, umoci, skopeo: see `cri_cluster`), else on the process runtime, where the
//! commands in [`NEEDS_CONTAINERD`] are left out (the tour's httpd pods share the host's network
//! there and the host need not have an httpd; `CAPSTAN_TOUR_RUNTIME=process` picks it on a
//! machine with containerd too). [`SKIPPED`] lists what never runs here, and why.

mod cri_cluster;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use capstan_testkit::{CapstanUp, capstan_bin, eventually, kubectl, temp_dir};

/// Commands (by how they start) the test does itself or cannot do.
const SKIPPED: &[(&str, &str)] = &[
    ("make run", "the test starts `capstan up` itself"),
    (
        "until grep -q '^capstan is up'",
        "the test waits for the ready line itself",
    ),
    (
        "kubectl get deploy -w &",
        "a watch left running until Ctrl-C",
    ),
    ("kill %1", "the test stops `capstan up` itself"),
    (
        "cargo run --release -p capstan -- up --store etcd",
        "a second cluster, on an etcd at 127.0.0.1:2379",
    ),
];

/// Commands (by how they start) that need pods really running: skipped on the process runtime.
const NEEDS_CONTAINERD: &[&str] = &[
    "kubectl rollout status",
    "kubectl set env deploy/web COLOR=green && kubectl rollout status",
    "curl -s $(kubectl get pod",
    "curl -s $(kubectl get svc",
    "kubectl wait --for=condition=Ready pod/client",
    "kubectl exec",
    "kubectl logs",
];

/// The commands of the tour's `sh` blocks, in order.
fn tour_commands(readme: &str) -> Vec<String> {
    let start = readme
        .find("## A five-minute tour")
        .expect("README.md has \"## A five-minute tour\"");
    let rest = &readme[start + 3..];
    let section = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
    let mut commands = Vec::new();
    let mut in_block = false;
    let mut heredoc: Option<(String, String)> = None; // (terminator, command so far)
    for line in section.lines() {
        if !in_block {
            in_block = line.trim() == "```sh";
            continue;
        }
        if let Some((end, mut text)) = heredoc.take() {
            text.push('\n');
            text.push_str(line);
            if line == end {
                commands.push(text);
            } else {
                heredoc = Some((end, text));
            }
            continue;
        }
        let trimmed = line.trim();
        if trimmed == "```" {
            in_block = false;
        } else if trimmed.is_empty() || trimmed.starts_with('#') {
        } else if let Some(i) = line.find("<<'") {
            let end = line[i + 3..].split('\'').next().unwrap_or_default();
            heredoc = Some((end.to_string(), line.to_string()));
        } else {
            commands.push(line.to_string());
        }
    }
    assert!(heredoc.is_none(), "an unterminated heredoc in the tour");
    commands
}

#[test]
fn the_tour_splits_into_commands_with_their_heredocs() {
    let readme = "## A five-minute tour\n\n```sh\nmake run &\n# note\nkubectl apply -f - <<'YAML'\nkind: X\nYAML\nkubectl get x   # c\n```\ntext\n```sh\nls\n```\n## Next\n```sh\nno\n```\n";
    assert_eq!(
        tour_commands(readme),
        [
            "make run &",
            "kubectl apply -f - <<'YAML'\nkind: X\nYAML",
            "kubectl get x   # c",
            "ls"
        ]
    );
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn every_file_the_tour_names_exists() {
    let root = repo_root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    for command in tour_commands(&readme) {
        for word in command.split_whitespace() {
            if word.starts_with("manifests/") || word.ends_with(".yaml") {
                assert!(
                    root.join(word).exists(),
                    "the tour names {word}, which is not in the repository ({command})"
                );
            }
        }
    }
}

#[test]
fn the_readme_tour_runs_as_written() {
    let root = repo_root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let commands = tour_commands(&readme);
    assert!(commands.len() > 30, "{commands:#?}");

    let mut missing = cri_cluster::missing_prerequisites();
    if std::env::var("CAPSTAN_TOUR_RUNTIME").as_deref() == Ok("process") {
        missing.push("CAPSTAN_TOUR_RUNTIME=process");
    }
    // Either cluster; its data dir becomes `.capstan` of the tour's working directory.
    let (_cri, _process, data_dir, addr): (_, _, PathBuf, String) = if missing.is_empty() {
        let c = cri_cluster::Cluster::start();
        let addr = c.up.as_ref().unwrap().addr.clone();
        let dir = c.dir.path().to_path_buf();
        (Some(c), None, dir, addr)
    } else {
        eprintln!(
            "no containerd cluster here (missing: {}): the process runtime, without {NEEDS_CONTAINERD:?}",
            missing.join(", ")
        );
        let dir = temp_dir("capstan-tour-").unwrap();
        let data = dir.path().display().to_string();
        let up = CapstanUp::start(
            capstan_bin(),
            &["--data-dir", &data, "--runtime", "process"],
        )
        .unwrap();
        let addr = up.addr.clone();
        // Dropped in order: capstan up, the containers it left, the directory.
        let reap = capstan_testkit::ReapContainers(dir.path().join("agent"));
        (None, Some((up, reap, dir)), PathBuf::from(data), addr)
    };
    let kubeconfig = data_dir.join("kubeconfig");
    eventually(Duration::from_secs(60), "the node is Ready", || {
        let out = kubectl(&kubeconfig, &["get", "nodes", "--no-headers"], None);
        String::from_utf8_lossy(&out.stdout).contains(" Ready ")
    })
    .unwrap();

    let work = temp_dir("capstan-tour-cwd-").unwrap();
    std::os::unix::fs::symlink(&data_dir, work.path().join(".capstan")).unwrap();
    std::os::unix::fs::symlink(root.join("manifests"), work.path().join("manifests")).unwrap();
    let bin = capstan_bin().display().to_string();

    let mut ran = 0;
    for command in &commands {
        if let Some((_, why)) = SKIPPED.iter().find(|(p, _)| command.starts_with(p)) {
            eprintln!("skipped ({why}): {command}");
            continue;
        }
        if !missing.is_empty() && NEEDS_CONTAINERD.iter().any(|p| command.starts_with(p)) {
            eprintln!("skipped (needs containerd): {command}");
            continue;
        }
        let script = command
            .replace("cargo run --release -p capstan --", &bin)
            .replace("127.0.0.1:6443", &addr);
        let started = Instant::now();
        let out = Command::new("timeout")
            .args(["180", "bash", "-c", &script])
            .current_dir(work.path())
            .env("KUBECONFIG", &kubeconfig)
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        eprintln!(
            "ran ({:.1}s, {}): {command}\n{stdout}{stderr}",
            started.elapsed().as_secs_f64(),
            out.status
        );
        if command.contains("# 422") {
            // The tour's invalid Widget: refused, naming the fields.
            assert!(!out.status.success(), "{command} was accepted");
            assert!(
                stderr.contains("spec.size") && stderr.contains("spec.color"),
                "{stderr}"
            );
        } else {
            assert!(
                out.status.success(),
                "the tour's command failed ({}): {command}\n{stdout}{stderr}",
                out.status
            );
        }
        ran += 1;
    }
    assert!(ran > 20, "ran only {ran} commands");
}
