//! `capstan bench gitops`: a repository of N manifests (ConfigMaps, Services and Deployments
//! in the mix 8:1:1) on one in-process API server (embedded store), in one run:
//! 1. first sync — fetch (file://), render and apply through the GitOps controller's own path
//!    (git::Git, kustomize::Files, apply::Applier) — against `kubectl apply --server-side -f
//!    DIR` of the same files into another namespace (the peer, and the floor to beat: target
//!    ≤ 1.0x);
//! 2. a resync with nothing changed: its time (target: fetch + < 200 ms) and the store
//!    revisions it spent (target: 0 writes);
//! 3. the controller itself (interval 2 s) on a third namespace: one manifest changed and
//!    committed → the change visible in the API, five times (target: within one interval).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use capstan_controllers::apply::{Applier, Options};
use capstan_controllers::gitops::git::{Credentials, Git};
use capstan_controllers::runtime::Discovery;
use capstan_testkit::git::GitRepo;
use clap::Args;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};

use super::LocalServer;

#[derive(Debug, Args)]
pub struct GitopsBench {
    /// Manifests in the repository.
    #[arg(long, default_value_t = 1000)]
    manifests: usize,
    #[arg(long, default_value = "/tmp")]
    scratch: std::path::PathBuf,
}

fn manifest(i: usize) -> String {
    match i % 10 {
        8 => format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: svc-{i}\n  labels: {{app: a{i}}}\nspec:\n  selector: {{app: a{i}}}\n  ports:\n  - {{port: 80, targetPort: 8080}}\n"
        ),
        9 => format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web-{i}\nspec:\n  replicas: 0\n  selector:\n    matchLabels: {{app: a{i}}}\n  template:\n    metadata:\n      labels: {{app: a{i}}}\n    spec:\n      containers:\n      - name: web\n        image: busybox:1.36\n        command: [httpd, -f, -p, '8080']\n        resources: {{requests: {{cpu: 10m, memory: 16Mi}}}}\n"
        ),
        _ => format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-{i}\n  labels: {{app: a{i}}}\ndata:\n  index: \"{i}\"\n  text: \"{}\"\n",
            "x".repeat(200)
        ),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

async fn namespace(client: &kube::Client, name: &str) -> Result<()> {
    let ns: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))?;
    Api::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    Ok(())
}

pub async fn run(b: GitopsBench) -> Result<()> {
    let server = LocalServer::start(&b.scratch, "capstan-bench-gitops-").await?;
    let client = kube::Client::try_from(kube::Config::new(server.url.parse()?))?;
    let repo = GitRepo::new()?;
    for i in 0..b.manifests {
        repo.write(&format!("apps/{i:05}.yaml"), &manifest(i))?;
    }
    let commit = repo.commit("bench")?;
    for ns in ["peer", "gitops", "controller"] {
        namespace(&client, ns).await?;
    }
    let work = tempfile::Builder::new()
        .prefix("capstan-bench-gitops-work-")
        .tempdir_in(&b.scratch)?;
    let kubeconfig = work.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig)?;

    // 1. The peer: kubectl apply --server-side of the same directory.
    let dir = repo.path().join("apps");
    let started = Instant::now();
    let out = capstan_testkit::kubectl(
        &kubeconfig,
        &[
            "apply",
            "--server-side",
            "-n",
            "peer",
            "-f",
            dir.to_str().context("path")?,
        ],
        None,
    );
    let kubectl_time = started.elapsed();
    if !out.status.success() {
        bail!("kubectl apply: {}", String::from_utf8_lossy(&out.stderr));
    }

    // 1. Capstan: the controller's path, from the git fetch on.
    let git = Git::new(work.path().join("cache"));
    let discovery = Arc::new(Discovery::new(client.clone()));
    let applier = Applier::new(client.clone(), discovery);
    let opts = Options {
        field_manager: "capstan-gitops".into(),
        force_conflicts: true,
        default_namespace: "gitops".into(),
        labels: BTreeMap::from([
            ("gitops.capstan.dev/name".to_string(), "bench".to_string()),
            (
                "gitops.capstan.dev/namespace".to_string(),
                "gitops".to_string(),
            ),
        ]),
        ..Default::default()
    };
    let url = repo.url();
    let sync = || async {
        let t0 = Instant::now();
        let fetched = git
            .fetch(&url, None, &Credentials::default(), Duration::from_secs(60))
            .await?;
        let fetch = t0.elapsed();
        let files = git
            .files(&url, &fetched.commit, Duration::from_secs(60))
            .await?;
        let manifests = files.render("apps")?;
        let report = applier.apply(&manifests, &opts).await?;
        anyhow::Ok((t0.elapsed(), fetch, report, fetched.commit))
    };
    let (first, first_fetch, report, fetched) = sync().await?;
    if fetched != commit || report.applied.len() != b.manifests {
        bail!(
            "the sync applied {} objects of {commit}",
            report.applied.len()
        );
    }

    // 2. Nothing changed.
    let before = server.store.current_revision().await?;
    let mut resyncs = Vec::new();
    for _ in 0..5 {
        let (total, fetch, report, _) = sync().await?;
        if report.changed() {
            bail!("an unchanged repository changed objects");
        }
        resyncs.push((total, fetch));
    }
    let writes = server.store.current_revision().await? - before;
    resyncs.sort();
    let (resync, resync_fetch) = resyncs[resyncs.len() / 2];

    // 3. The controller: a change → applied.
    let registry = prometheus::Registry::new();
    let config = capstan_controllers::Config {
        gitops: capstan_controllers::gitops::Config {
            cache_dir: work.path().join("controller-cache"),
        },
        ..Default::default()
    };
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    crds.create(
        &PostParams::default(),
        &<capstan_api::crds::GitSync as kube::CustomResourceExt>::crd(),
    )
    .await?;
    let manager = capstan_controllers::Manager::with_config(client.clone(), &registry, config);
    let names = ["gitops".to_string()].into_iter().collect();
    let task = tokio::spawn(async move { manager.run(&names).await });
    let interval = Duration::from_secs(2);
    let gs: capstan_api::crds::GitSync = serde_json::from_value(serde_json::json!({
        "apiVersion": "capstan.dev/v1alpha1", "kind": "GitSync",
        "metadata": {"name": "bench", "namespace": "controller"},
        "spec": {"repo": url, "path": "apps", "interval": "2s", "targetNamespace": "controller"}}))?;
    let syncs: Api<capstan_api::crds::GitSync> = Api::namespaced(client.clone(), "controller");
    let created = Instant::now();
    // The CRD may take a moment to be served.
    loop {
        match syncs.create(&PostParams::default(), &gs).await {
            Ok(_) => break,
            Err(_) if created.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => return Err(e.into()),
        }
    }
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "controller");
    let value = |cm: Option<ConfigMap>| cm.and_then(|c| c.data?.get("index").cloned());
    let deadline = Instant::now() + Duration::from_secs(120);
    while value(cms.get_opt("cm-0").await?).is_none() {
        if Instant::now() > deadline {
            bail!("the controller's first sync did not finish");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let controller_first = created.elapsed();
    let mut latencies = Vec::new();
    for round in 0..5 {
        let text = manifest(0).replace("index: \"0\"", &format!("index: \"round-{round}\""));
        repo.write("apps/00000.yaml", &text)?;
        repo.commit(&format!("round {round}"))?;
        let t0 = Instant::now();
        let want = format!("round-{round}");
        while value(cms.get_opt("cm-0").await?).as_deref() != Some(want.as_str()) {
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("round {round}: the change was not applied within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        latencies.push(t0.elapsed());
        // The next commit lands at another point of the interval.
        tokio::time::sleep(Duration::from_millis((round as u64 * 733) % 2000)).await;
    }
    task.abort();
    latencies.sort();

    println!(
        "## GitOps: a repository of {} manifests (8 ConfigMaps : 1 Service : 1 Deployment)\n",
        b.manifests
    );
    println!("| measurement | result | target |");
    println!("|---|---|---|");
    println!(
        "| first sync, Capstan (fetch + render + dry run + apply) | {} (fetch {}) | ≤ 1.0x kubectl |",
        ms(first),
        ms(first_fetch)
    );
    println!(
        "| first apply, `kubectl apply --server-side -f DIR` | {} | — |",
        ms(kubectl_time)
    );
    println!(
        "| ratio Capstan / kubectl | {:.2}x | ≤ 1.0x |",
        first.as_secs_f64() / kubectl_time.as_secs_f64()
    );
    println!(
        "| resync, nothing changed (median of 5) | {} (fetch {}, the rest {}) | fetch + < 200 ms |",
        ms(resync),
        ms(resync_fetch),
        ms(resync - resync_fetch)
    );
    println!("| store writes during the 5 resyncs | {writes} | 0 |");
    println!(
        "| controller: GitSync created → its first ConfigMap there | {} | — |",
        ms(controller_first)
    );
    println!(
        "| one manifest changed → applied, interval {} (max of 5; p50 {}) | {} | ≤ one interval |",
        ms(interval),
        ms(latencies[latencies.len() / 2]),
        ms(*latencies.last().unwrap_or(&Duration::ZERO))
    );
    Ok(())
}
