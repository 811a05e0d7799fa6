//! `capstan bench auth`: what TLS, authentication and RBAC cost. Two API servers on fresh
//! embedded stores in the same run: the floor (plain HTTP, every request allowed) and the
//! default (HTTPS, a client certificate, RBAC deciding for a user bound to `edit` — not
//! `system:masters`, which skips RBAC — among `--roles` Roles and `--bindings` RoleBindings of
//! other users). Creates/s and gets/s of ConfigMaps through each; then the RBAC decision time
//! alone over an index of 1,000 Roles and 10,000 RoleBindings (target p99 < 20 µs).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use capstan_apiserver::auth::attributes::Attributes;
use capstan_apiserver::auth::rbac::Index;
use capstan_apiserver::auth::{AuthConfig, Mode, UserInfo};
use clap::Args;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, PostParams};
use serde_json::json;

use super::{Samples, drive, ms};

#[derive(Debug, Args)]
pub struct AuthBench {
    /// Creates (and then gets) per server.
    #[arg(long, default_value_t = 3000)]
    ops: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Rounds per server, alternating; the median round is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Roles the HTTPS server holds besides the bench user's binding.
    #[arg(long, default_value_t = 100)]
    roles: usize,
    /// RoleBindings of other users the HTTPS server holds.
    #[arg(long, default_value_t = 1000)]
    bindings: usize,
    /// Where the stores go.
    #[arg(long, default_value = "/tmp")]
    scratch: PathBuf,
}

struct Server {
    url: String,
    /// The HTTPS server's second, plain-HTTP listener (same server, same RBAC state; a bearer
    /// token): what TLS costs, apart from authentication and RBAC.
    plain_url: Option<String>,
    tasks: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The bench user's token on the HTTPS server's plain listener.
const TOKEN: &str = "bench-token";

async fn server(
    scratch: &std::path::Path,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<Server> {
    use capstan_storage::embedded::{EmbeddedOptions, EmbeddedStore};
    let dir = tempfile::Builder::new()
        .prefix("capstan-bench-auth-")
        .tempdir_in(scratch)?;
    let mut opts = EmbeddedOptions::new(dir.path());
    opts.compaction = None;
    let store: Arc<dyn capstan_storage::Storage> = EmbeddedStore::open(opts).await?;
    let mode = if tls.is_some() {
        Mode::Rbac
    } else {
        Mode::AlwaysAllow
    };
    let config = capstan_apiserver::Config {
        auth: AuthConfig {
            mode,
            tokens: capstan_apiserver::auth::token_file::TokenFile::parse(&format!(
                "{TOKEN},bench-user,1\n"
            ))
            .map_err(|e| anyhow::anyhow!(e))?,
            ..Default::default()
        },
        ..Default::default()
    };
    let api = capstan_apiserver::ApiServer::with_config(store, prometheus::Registry::new(), config)
        .await
        .map_err(|e| anyhow::anyhow!("starting the API server: {}", e.message))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = capstan_apiserver::router(api);
    let (url, plain_url, tasks) = match tls {
        Some(tls) => {
            let second = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let plain_url = format!("http://{}", second.local_addr()?);
            let tasks = vec![
                tokio::spawn(capstan_apiserver::serve_tls(
                    listener,
                    app.clone(),
                    Default::default(),
                    tls,
                    std::future::pending(),
                )),
                tokio::spawn(capstan_apiserver::serve(
                    second,
                    app,
                    Default::default(),
                    std::future::pending(),
                )),
            ];
            (format!("https://{addr}"), Some(plain_url), tasks)
        }
        None => (
            format!("http://{addr}"),
            None,
            vec![tokio::spawn(capstan_apiserver::serve(
                listener,
                app,
                Default::default(),
                std::future::pending(),
            ))],
        ),
    };
    Ok(Server {
        url,
        plain_url,
        tasks,
        _dir: dir,
    })
}

fn role(ns: &str, name: &str) -> Role {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns},
        "rules": [{"verbs": ["get", "list"], "apiGroups": [""], "resources": ["configmaps"], "resourceNames": [name]}],
    }))
    .expect("a role")
}

fn binding(ns: &str, name: &str, kind: &str, role: &str, user: &str) -> RoleBinding {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
        "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": user}],
    }))
    .expect("a binding")
}

/// Creates then gets `ops` ConfigMaps with `clients` clients.
async fn measure(
    client: &kube::Client,
    round: usize,
    ops: usize,
    clients: usize,
) -> Result<(Samples, Samples)> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let a = api.clone();
    let creates = drive(clients, ops, move |i| {
        let a = a.clone();
        async move {
            let cm: ConfigMap = serde_json::from_value(
                json!({"metadata": {"name": format!("cm-{round}-{i}")}, "data": {"k": "v"}}),
            )?;
            a.create(&PostParams::default(), &cm).await?;
            Ok(())
        }
    })
    .await?;
    let gets = drive(clients, ops, move |i| {
        let a = api.clone();
        async move {
            a.get(&format!("cm-{round}-{i}")).await?;
            Ok(())
        }
    })
    .await?;
    Ok((creates, gets))
}

/// The run with the median rate.
fn median(mut runs: Vec<Samples>) -> Samples {
    runs.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    let mid = runs.len() / 2;
    runs.swap_remove(mid)
}

/// The RBAC decision time over `roles` Roles and `bindings` RoleBindings in 100 namespaces,
/// for users who are and are not bound: (p50, p99, mean).
fn decisions(roles: usize, bindings: usize) -> (Duration, Duration, Duration, usize) {
    let ns = |i: usize| format!("ns-{}", i % 100);
    let rs: Vec<Role> = (0..roles)
        .map(|i| role(&ns(i), &format!("role-{i}")))
        .collect();
    let bs: Vec<RoleBinding> = (0..bindings)
        .map(|i| {
            binding(
                &ns(i % roles),
                &format!("b-{i}"),
                "Role",
                &format!("role-{}", i % roles),
                &format!("user-{i}"),
            )
        })
        .collect();
    let started = Instant::now();
    let index = Index::build(&rs, &[], &bs, &[]);
    let built = started.elapsed();
    eprintln!(
        "index of {roles} roles and {bindings} bindings built in {}",
        ms(built)
    );
    let mut lat = Vec::with_capacity(100_000);
    let mut allowed = 0;
    for i in 0..100_000usize {
        let u = i % (bindings * 2); // half the users have no binding
        let user = Arc::new(UserInfo::authenticated(
            &format!("user-{u}"),
            "",
            &["team-a".into()],
        ));
        let bound = u < bindings;
        let path = format!(
            "/api/v1/namespaces/{}/configmaps/role-{}",
            ns(u % roles),
            if bound { u % roles } else { 0 }
        );
        let a = Attributes::of(user, "GET", &path, None);
        let t = Instant::now();
        let d = index.decide(&a);
        lat.push(t.elapsed());
        allowed += usize::from(d.allowed);
    }
    let mean = lat.iter().sum::<Duration>() / lat.len() as u32;
    lat.sort_unstable();
    (lat[lat.len() / 2], lat[lat.len() * 99 / 100], mean, allowed)
}

pub async fn run(b: AuthBench) -> Result<()> {
    let ca = capstan_pki::Ca::generate()?;
    let serving = ca.serving("bench", &["127.0.0.1".into()])?;
    let tls = Arc::new(capstan_pki::tls::server_config(ca.cert_pem(), &serving)?);
    let admin = ca.client("bench-admin", &["system:masters"])?;
    let user = ca.client("bench-user", &[])?;
    let client_of = |url: &str, id: Option<&capstan_pki::Issued>| {
        let text = match id {
            Some(id) => capstan_pki::kubeconfig::kubeconfig(
                url,
                Some(ca.cert_pem()),
                capstan_pki::kubeconfig::Credentials::Cert(id),
            ),
            None => capstan_pki::kubeconfig::kubeconfig(
                url,
                None,
                capstan_pki::kubeconfig::Credentials::None,
            ),
        };
        async move { crate::certs::client_of(&text).await }
    };

    let plain = server(&b.scratch, None).await?;
    let secure = server(&b.scratch, Some(tls)).await?;
    let admin_client = client_of(&secure.url, Some(&admin)).await?;
    let t = Instant::now();
    let roles: Api<Role> = Api::namespaced(admin_client.clone(), "default");
    for i in 0..b.roles {
        roles
            .create(
                &PostParams::default(),
                &role("default", &format!("role-{i}")),
            )
            .await?;
    }
    let rbs: Api<RoleBinding> = Api::namespaced(admin_client.clone(), "default");
    for i in 0..b.bindings {
        let r = format!("role-{}", i % b.roles.max(1));
        rbs.create(
            &PostParams::default(),
            &binding(
                "default",
                &format!("b-{i}"),
                "Role",
                &r,
                &format!("user-{i}"),
            ),
        )
        .await?;
    }
    rbs.create(
        &PostParams::default(),
        &binding("default", "bench-user", "ClusterRole", "edit", "bench-user"),
    )
    .await?;
    eprintln!(
        "{} roles and {} bindings written in {:.1} s",
        b.roles,
        b.bindings + 1,
        t.elapsed().as_secs_f64()
    );

    let plain_client = client_of(&plain.url, None).await?;
    let token_client = crate::certs::client_of(&capstan_pki::kubeconfig::kubeconfig(
        secure.plain_url.as_deref().unwrap_or_default(),
        None,
        capstan_pki::kubeconfig::Credentials::Token(TOKEN),
    ))
    .await?;
    let user_client = client_of(&secure.url, Some(&user)).await?;
    let paths = [
        ("plain HTTP, every request allowed (floor)", plain_client),
        ("plain HTTP, bearer token, RBAC (edit)", token_client),
        ("HTTPS, certificate, RBAC (edit)", user_client),
    ];
    // Warm every path (connections, caches), then measure in rounds that alternate between
    // them, so none gains from going later.
    for (name, client) in &paths {
        Api::<ConfigMap>::namespaced(client.clone(), "default")
            .list(&Default::default())
            .await
            .with_context(|| format!("{name}: listing ConfigMaps"))?;
    }
    let mut runs: Vec<(Vec<Samples>, Vec<Samples>)> =
        paths.iter().map(|_| Default::default()).collect();
    for round in 0..b.rounds.max(1) {
        for (i, (_, client)) in paths.iter().enumerate() {
            let (c, g) = measure(client, round * paths.len() + i, b.ops, b.clients).await?;
            runs[i].0.push(c);
            runs[i].1.push(g);
        }
    }
    let results: Vec<(Samples, Samples)> = runs
        .into_iter()
        .map(|(c, g)| (median(c), median(g)))
        .collect();

    println!("## Auth: HTTPS + client certificate + RBAC against plain HTTP\n");
    println!(
        "{} ConfigMaps created then read by {} clients on each path, {} rounds alternating between the paths (the median shown); the RBAC server holds {} Roles and {} RoleBindings. Client and server share the process (and the 2 cores): TLS is paid at both ends.\n",
        b.ops, b.clients, b.rounds, b.roles, b.bindings
    );
    println!("| path | creates/s | create p99 | gets/s | get p99 |");
    println!("|---|---|---|---|---|");
    for ((name, _), (c, g)) in paths.iter().zip(&results) {
        println!(
            "| {name} | {:.0} | {} | {:.0} | {} |",
            c.rate(),
            ms(c.quantile(0.99)),
            g.rate(),
            ms(g.quantile(0.99))
        );
    }
    let ratio = |i: usize| {
        (
            results[i].0.rate() / results[0].0.rate(),
            results[i].1.rate() / results[0].1.rate(),
        )
    };
    let (tc, tg) = ratio(1);
    let (sc, sg) = ratio(2);
    println!(
        "\nRatio to the floor: token + RBAC creates {tc:.2}x, gets {tg:.2}x; HTTPS + certificate + RBAC creates {sc:.2}x, gets {sg:.2}x (target >= 0.85x)\n"
    );

    let (p50, p99, mean, allowed) = decisions(1000, 10_000);
    println!("## RBAC decision time: 1,000 Roles, 10,000 RoleBindings\n");
    println!(
        "100,000 decisions ({allowed} allowed): p50 {:.2} µs, p99 {:.2} µs, mean {:.2} µs (target p99 < 20 µs)",
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
        mean.as_secs_f64() * 1e6
    );
    Ok(())
}
