//! `capstan apply | get | delete`: the everyday kubectl verbs for machines without kubectl,
//! built on the kube crate and talking to any Kubernetes API (Capstan's or another).
//! - `apply -f FILE|DIR|-`: multi-document YAML (and `kind: List`) through the apply engine
//!   the GitOps controller uses (capstan_controllers::apply): CRDs first and waited on,
//!   every object dry-run before any is written, only changed ones written; server-side
//!   apply with field manager `capstan` (`--force-conflicts` to take fields other managers own);
//! - `get RESOURCE [NAME] [-l SEL] [-A] [-o table|wide|json|yaml|name]`: the server's Table by default;
//! - `delete RESOURCE NAME... | -l SEL | -f FILE`.
//!
//! Resource names resolve like kubectl's: plural, singular, kind or short name, optionally
//! `.group`-qualified (`deployments.apps`), through the server's discovery documents.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use axum::http::{Request, header};
use capstan_api::crds::SyncedObject;
use capstan_controllers::apply::kustomize::is_manifest_file;
use capstan_controllers::apply::{Applier, Manifest, Options, manifests};
use capstan_controllers::runtime::Discovery;
use clap::{Args, Subcommand, ValueEnum};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams};
use kube::core::ApiResource;
use serde_json::Value;
use std::sync::Arc;

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The kubeconfig to use (`capstan up` writes DATA_DIR/kubeconfig).
    #[arg(
        long,
        env = "KUBECONFIG",
        default_value = ".capstan/kubeconfig",
        global = true
    )]
    pub(crate) kubeconfig: PathBuf,
    /// Namespace (default: the kubeconfig context's, else "default").
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    /// Other API servers (HOST:PORT or https://HOST:PORT) to move to when the kubeconfig's
    /// stops answering; the live ones the `kubernetes` Service lists are learned as well.
    /// Every server's certificate must carry the kubeconfig's host name.
    #[arg(long, global = true, value_delimiter = ',')]
    pub(crate) failover_servers: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum ClientCmd {
    /// Server-side apply every object in files, directories (*.yaml, *.yml, *.json) or stdin (-).
    Apply {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// Take fields other managers own.
        #[arg(long)]
        force_conflicts: bool,
        #[arg(long, default_value = "capstan")]
        field_manager: String,
        /// Delete what the last apply with this `--inventory` applied and these files no
        /// longer hold.
        #[arg(long, requires = "inventory")]
        prune: bool,
        /// The ConfigMap (in the namespace) that records what was applied, for `--prune`;
        /// applied objects are labelled `capstan.dev/inventory=NAME`.
        #[arg(long)]
        inventory: Option<String>,
    },
    /// Show what `apply -f` would change, as unified diffs of the live objects and the
    /// server's dry-run result (exit status 1 when something would change, as kubectl diff).
    Diff {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        #[arg(long, default_value = "capstan")]
        field_manager: String,
    },
    /// List or show objects.
    Get {
        resource: String,
        name: Option<String>,
        #[arg(short = 'l', long)]
        selector: Option<String>,
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Delete objects by name, by selector, or those in files.
    Delete {
        resource: Option<String>,
        names: Vec<String>,
        #[arg(short = 'l', long)]
        selector: Option<String>,
        #[arg(short = 'f', long = "filename")]
        files: Vec<PathBuf>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Wide,
    Json,
    Yaml,
    Name,
}

/// One served resource, as discovery describes it.
#[derive(Clone, Debug)]
struct Resource {
    ar: ApiResource,
    namespaced: bool,
    singular: String,
    short: Vec<String>,
    categories: Vec<String>,
}

impl Resource {
    /// `deployment.apps` / `configmap`: how kubectl names a kind in its output.
    fn display(&self) -> String {
        let kind = self.ar.kind.to_ascii_lowercase();
        if self.ar.group.is_empty() {
            kind
        } else {
            format!("{kind}.{}", self.ar.group)
        }
    }

    fn base(&self) -> String {
        if self.ar.group.is_empty() {
            format!("/api/{}", self.ar.version)
        } else {
            format!("/apis/{}/{}", self.ar.group, self.ar.version)
        }
    }
}

async fn get_json(client: &kube::Client, path: &str) -> Result<Value> {
    let req = Request::get(path).body(Vec::new())?;
    client
        .request::<Value>(req)
        .await
        .with_context(|| format!("GET {path}"))
}

/// The strings of a JSON array.
fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

/// Reads the legacy discovery documents (preferred version of each group).
async fn discover(client: &kube::Client) -> Result<Vec<Resource>> {
    let mut lists = vec![get_json(client, "/api/v1").await?];
    let groups = get_json(client, "/apis").await?;
    for g in groups["groups"].as_array().into_iter().flatten() {
        if let Some(gv) = g["preferredVersion"]["groupVersion"].as_str() {
            lists.push(get_json(client, &format!("/apis/{gv}")).await?);
        }
    }
    let mut out = Vec::new();
    for list in lists {
        let gv = list["groupVersion"].as_str().unwrap_or("v1").to_string();
        let (group, version) = match gv.split_once('/') {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None => (String::new(), gv.clone()),
        };
        for r in list["resources"].as_array().into_iter().flatten() {
            let plural = r["name"].as_str().unwrap_or_default();
            if plural.contains('/') || plural.is_empty() {
                continue;
            }
            out.push(Resource {
                ar: ApiResource {
                    group: group.clone(),
                    version: version.clone(),
                    api_version: gv.clone(),
                    kind: r["kind"].as_str().unwrap_or_default().to_string(),
                    plural: plural.to_string(),
                },
                namespaced: r["namespaced"].as_bool().unwrap_or(true),
                singular: r["singularName"].as_str().unwrap_or_default().to_string(),
                short: strings(&r["shortNames"]),
                categories: strings(&r["categories"]),
            });
        }
    }
    Ok(out)
}

fn resolve<'a>(resources: &'a [Resource], name: &str) -> Result<&'a Resource> {
    let (name, group) = match name.split_once('.') {
        Some((n, g)) => (n.to_ascii_lowercase(), Some(g)),
        None => (name.to_ascii_lowercase(), None),
    };
    resources
        .iter()
        .find(|r| {
            group.is_none_or(|g| r.ar.group == g)
                && (r.ar.plural == name
                    || r.singular == name
                    || r.ar.kind.to_ascii_lowercase() == name
                    || r.short.contains(&name))
        })
        .ok_or_else(|| anyhow!("the server doesn't have a resource type \"{name}\""))
}

/// `a,b` lists several types; a category (`all`) stands for every type in it.
fn resolve_many<'a>(resources: &'a [Resource], spec: &str) -> Result<Vec<&'a Resource>> {
    let mut out: Vec<&Resource> = Vec::new();
    for token in spec.split(',').filter(|t| !t.is_empty()) {
        let found = match resolve(resources, token) {
            Ok(r) => vec![r],
            Err(e) => {
                let in_category: Vec<&Resource> = resources
                    .iter()
                    .filter(|r| r.categories.iter().any(|c| c == token))
                    .collect();
                if in_category.is_empty() {
                    return Err(e);
                }
                in_category
            }
        };
        for r in found {
            if !out
                .iter()
                .any(|o| o.ar.plural == r.ar.plural && o.ar.group == r.ar.group)
            {
                out.push(r);
            }
        }
    }
    if out.is_empty() {
        bail!("name a resource type");
    }
    Ok(out)
}

fn by_kind<'a>(resources: &'a [Resource], api_version: &str, kind: &str) -> Result<&'a Resource> {
    resources
        .iter()
        .find(|r| r.ar.api_version == api_version && r.ar.kind == kind)
        .ok_or_else(|| anyhow!("no resource of kind {kind} in {api_version} is served"))
}

/// Every manifest in the files (a directory: its *.yaml, *.yml and *.json; "-": stdin), each
/// knowing its file and line.
fn read_manifests(files: &[PathBuf]) -> Result<Vec<Manifest>> {
    let mut out = Vec::new();
    for f in files {
        let mut texts = Vec::new();
        if f == Path::new("-") {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            texts.push(("stdin".to_string(), s));
        } else if f.is_dir() {
            let mut entries: Vec<_> = std::fs::read_dir(f)
                .with_context(|| format!("reading {}", f.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| is_manifest_file(&p.to_string_lossy()))
                .collect();
            entries.sort();
            for p in entries {
                texts.push((p.display().to_string(), std::fs::read_to_string(&p)?));
            }
        } else {
            texts.push((
                f.display().to_string(),
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
            ));
        }
        for (source, text) in texts {
            out.extend(manifests::parse(&source, &text)?);
        }
    }
    Ok(out)
}

/// The label `capstan apply --inventory NAME` puts on what it applies.
const INVENTORY_LABEL: &str = "capstan.dev/inventory";

/// What `capstan apply --inventory NAME` applied last: ConfigMap NAME, one object a line
/// (`apiVersion kind namespace name`, `-` for no namespace) under key `objects`.
struct Inventory {
    api: Api<k8s_openapi::api::core::v1::ConfigMap>,
    name: String,
}

impl Inventory {
    fn new(client: &kube::Client, ns: &str, name: &str) -> Self {
        Inventory {
            api: Api::namespaced(client.clone(), ns),
            name: name.to_string(),
        }
    }

    async fn read(&self) -> Result<Vec<SyncedObject>> {
        let Some(cm) = self.api.get_opt(&self.name).await? else {
            return Ok(Vec::new());
        };
        let text = cm
            .data
            .unwrap_or_default()
            .remove("objects")
            .unwrap_or_default();
        Ok(text
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let [api_version, kind, ns, name] = f[..] else {
                    return None;
                };
                Some(SyncedObject {
                    api_version: api_version.into(),
                    kind: kind.into(),
                    namespace: (ns != "-").then(|| ns.to_string()),
                    name: name.into(),
                })
            })
            .collect())
    }

    async fn write(&self, objects: &[SyncedObject], manager: &str) -> Result<()> {
        let lines: Vec<String> = objects
            .iter()
            .map(|o| {
                let ns = o.namespace.as_deref().unwrap_or("-");
                format!("{} {} {ns} {}", o.api_version, o.kind, o.name)
            })
            .collect();
        let cm = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": self.name}, "data": {"objects": lines.join("\n")}});
        self.api
            .patch(
                &self.name,
                &kube::api::PatchParams::apply(manager).force(),
                &kube::api::Patch::Apply(&cm),
            )
            .await?;
        Ok(())
    }
}

/// `deployment.apps` / `configmap`: how kubectl names a kind in its output.
fn display_of(o: &SyncedObject) -> String {
    let kind = o.kind.to_ascii_lowercase();
    match o.api_version.split_once('/') {
        Some((group, _)) => format!("{kind}.{group}"),
        None => kind,
    }
}

pub async fn client(args: &ClientArgs) -> Result<kube::Client> {
    Ok(kube::Client::try_from(config(args).await?)?)
}

/// The client configuration of `--kubeconfig`; in a pod, where there is no such file and the
/// `kubernetes` Service's variables are set, the in-cluster one (that Service, the projected
/// ServiceAccount token, re-read as it rotates, and its CA), as client-go's
/// `InClusterConfig`.
pub async fn config(args: &ClientArgs) -> Result<kube::Config> {
    let config = if !args.kubeconfig.exists() && in_a_pod() {
        tracing::info!(
            "no kubeconfig at {}: using the in-cluster configuration",
            args.kubeconfig.display()
        );
        kube::Config::incluster_env().context(
            "the in-cluster configuration (KUBERNETES_SERVICE_HOST/PORT and the token, CA and namespace under /var/run/secrets/kubernetes.io/serviceaccount)",
        )?
    } else {
        let kubeconfig = kube::config::Kubeconfig::read_from(&args.kubeconfig)
            .with_context(|| format!("reading kubeconfig {}", args.kubeconfig.display()))?;
        kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?
    };
    if args.failover_servers.is_empty() {
        return Ok(config);
    }
    crate::api_failover::config(config, &args.failover_servers).await
}

/// Whether this process runs in a pod: the `kubernetes` Service's variables are set.
fn in_a_pod() -> bool {
    std::env::var_os("KUBERNETES_SERVICE_HOST").is_some_and(|h| !h.is_empty())
        && std::env::var_os("KUBERNETES_SERVICE_PORT").is_some_and(|p| !p.is_empty())
}

fn api_for(client: &kube::Client, r: &Resource, ns: &str) -> Api<DynamicObject> {
    if r.namespaced {
        Api::namespaced_with(client.clone(), ns, &r.ar)
    } else {
        Api::all_with(client.clone(), &r.ar)
    }
}

pub async fn run(args: ClientArgs, cmd: ClientCmd) -> Result<()> {
    let client = client(&args).await?;
    let ns = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let resources = discover(&client).await?;
    match cmd {
        ClientCmd::Apply {
            files,
            force_conflicts,
            field_manager,
            prune,
            inventory,
        } => {
            let manifests = read_manifests(&files)?;
            let applier = Applier::new(client.clone(), Arc::new(Discovery::new(client.clone())));
            let mut opts = Options {
                field_manager,
                force_conflicts,
                default_namespace: ns.clone(),
                ..Default::default()
            };
            if let Some(inv) = &inventory {
                opts.labels.insert(INVENTORY_LABEL.into(), inv.clone());
            }
            let report = applier.apply(&manifests, &opts).await?;
            for a in &report.applied {
                println!("{}/{} {}", display_of(&a.object), a.object.name, a.action);
            }
            if let Some(inv) = &inventory {
                let store = Inventory::new(&client, &ns, inv);
                let current = report.inventory();
                if prune {
                    let keep: std::collections::BTreeSet<SyncedObject> =
                        current.iter().cloned().collect();
                    let stale: Vec<SyncedObject> = store
                        .read()
                        .await?
                        .into_iter()
                        .filter(|o| !keep.contains(o))
                        .collect();
                    let (deleted, kept) = applier.prune(&stale, &keep, &opts).await?;
                    for o in deleted {
                        println!("{}/{} pruned", display_of(&o), o.name);
                    }
                    for (o, why) in kept {
                        eprintln!("{}/{} not pruned: {why}", display_of(&o), o.name);
                    }
                }
                store.write(&current, &opts.field_manager).await?;
            }
        }
        ClientCmd::Diff {
            files,
            field_manager,
        } => {
            let manifests = read_manifests(&files)?;
            let applier = Applier::new(client.clone(), Arc::new(Discovery::new(client.clone())));
            let opts = Options {
                field_manager,
                default_namespace: ns.clone(),
                ..Default::default()
            };
            let diffs = match applier.diff(&manifests, &opts).await {
                Ok(d) => d,
                Err(e) => {
                    // kubectl diff's convention: > 1 is an error, 1 a difference.
                    eprintln!("capstan: {e}");
                    std::process::exit(2);
                }
            };
            for d in &diffs {
                let name = format!("{}/{}", display_of(&d.object), d.object.name);
                let text = |v: Option<&Value>| {
                    v.map(|v| {
                        let mut v = v.clone();
                        if let Some(m) = v["metadata"].as_object_mut() {
                            m.remove("managedFields");
                        }
                        serde_yaml::to_string(&v).unwrap_or_default()
                    })
                    .unwrap_or_default()
                };
                print!(
                    "{}",
                    crate::diff::unified(
                        &format!("{name} (live)"),
                        &format!("{name} (merged)"),
                        &text(d.live.as_ref()),
                        &text(Some(&d.merged)),
                    )
                );
            }
            if !diffs.is_empty() {
                std::process::exit(1);
            }
        }
        ClientCmd::Get {
            resource,
            name,
            selector,
            all_namespaces,
            output,
        } => {
            let types = resolve_many(&resources, &resource)?;
            let several = types.len() > 1;
            let mut printed_any = false;
            let mut all_items = Vec::new();
            let mut errors = 0;
            for (i, r) in types.iter().enumerate() {
                let result: Result<()> = async {
                    let mut path = r.base();
                    if r.namespaced && !all_namespaces {
                        path.push_str(&format!("/namespaces/{ns}"));
                    }
                    path.push_str(&format!("/{}", r.ar.plural));
                    if let Some(n) = &name {
                        path.push_str(&format!("/{n}"));
                    }
                    if let Some(sel) = &selector {
                        path.push_str(&format!("?labelSelector={}", encode(sel)));
                    }
                    match output {
                        Output::Table | Output::Wide => {
                            let req = Request::get(&path)
                                .header(
                                    header::ACCEPT,
                                    "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
                                )
                                .body(Vec::new())?;
                            let mut table: Value = client.request(req).await?;
                            if several {
                                // kubectl's form with several types: `deployment.apps/web`.
                                for row in table["rows"].as_array_mut().into_iter().flatten() {
                                    if let Some(Value::String(n)) = row["cells"].get_mut(0) {
                                        *n = format!("{}/{n}", r.display());
                                    }
                                }
                            }
                            let has_rows = table["rows"].as_array().is_some_and(|a| !a.is_empty());
                            if has_rows {
                                if printed_any {
                                    println!();
                                }
                                print_table(
                                    &table,
                                    output == Output::Wide,
                                    all_namespaces && r.namespaced,
                                );
                                printed_any = true;
                            }
                            if !printed_any && i + 1 == types.len() {
                                eprintln!("No resources found.");
                            }
                        }
                        Output::Json | Output::Yaml | Output::Name => {
                            let v = get_json(&client, &path).await?;
                            let items = if name.is_some() {
                                vec![v.clone()]
                            } else {
                                v["items"].as_array().cloned().unwrap_or_default()
                            };
                            if output == Output::Name {
                                for o in &items {
                                    println!(
                                        "{}/{}",
                                        r.display(),
                                        o["metadata"]["name"].as_str().unwrap_or_default()
                                    );
                                }
                            } else if !several {
                                // One type: exactly what the server returned (object or list).
                                match output {
                                    Output::Json => {
                                        println!("{}", serde_json::to_string_pretty(&v)?)
                                    }
                                    _ => print!("{}", serde_yaml::to_string(&v)?),
                                }
                            } else {
                                all_items.extend(items.into_iter().map(|mut o| {
                                    // List items carry no apiVersion/kind; name them, as kubectl does.
                                    o["apiVersion"] = Value::String(r.ar.api_version.clone());
                                    o["kind"] = Value::String(r.ar.kind.clone());
                                    o
                                }));
                            }
                        }
                    }
                    Ok(())
                }
                .await;
                if let Err(e) = result {
                    // Like kubectl: report it, show what the other types have, fail at the end.
                    errors += 1;
                    eprintln!("error: {}: {e:#}", r.display());
                }
            }
            if several && matches!(output, Output::Json | Output::Yaml) {
                let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": all_items});
                match output {
                    Output::Json => println!("{}", serde_json::to_string_pretty(&list)?),
                    _ => print!("{}", serde_yaml::to_string(&list)?),
                }
            }
            if errors > 0 {
                bail!("{errors} of {} resource type(s) failed", types.len());
            }
        }
        ClientCmd::Delete {
            resource,
            names,
            selector,
            files,
        } => {
            let mut targets: Vec<(Resource, String, String)> = Vec::new();
            if !files.is_empty() {
                for m in read_manifests(&files)? {
                    let obj = m.object;
                    let r = by_kind(
                        &resources,
                        obj["apiVersion"].as_str().unwrap_or_default(),
                        obj["kind"].as_str().unwrap_or_default(),
                    )?;
                    let obj_ns = obj["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or(&ns)
                        .to_string();
                    targets.push((
                        r.clone(),
                        obj_ns,
                        obj["metadata"]["name"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                    ));
                }
            } else {
                let r = resolve(
                    &resources,
                    resource
                        .as_deref()
                        .context("name a resource type, or use -f")?,
                )?;
                let mut names = names;
                if let Some(sel) = &selector {
                    let listed = api_for(&client, r, &ns)
                        .list(&ListParams::default().labels(sel))
                        .await?;
                    names.extend(listed.items.into_iter().filter_map(|o| o.metadata.name));
                } else if names.is_empty() {
                    bail!("name the objects to delete, or use -l SELECTOR");
                }
                targets.extend(names.into_iter().map(|n| (r.clone(), ns.clone(), n)));
            }
            for (r, obj_ns, name) in targets {
                api_for(&client, &r, &obj_ns)
                    .delete(&name, &DeleteParams::default())
                    .await
                    .with_context(|| format!("deleting {} {name:?}", r.display()))?;
                println!("{} \"{name}\" deleted", r.display());
            }
        }
    }
    Ok(())
}

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Prints a meta.k8s.io Table as kubectl does: upper-case headers, columns padded by 3.
fn print_table(t: &Value, wide: bool, with_namespace: bool) {
    let cols: Vec<(usize, String)> = t["columnDefinitions"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .filter(|(_, c)| wide || c["priority"].as_i64().unwrap_or(0) == 0)
        .map(|(i, c)| {
            (
                i,
                c["name"].as_str().unwrap_or_default().to_ascii_uppercase(),
            )
        })
        .collect();
    let rows = t["rows"].as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        eprintln!("No resources found.");
        return;
    }
    let mut lines: Vec<Vec<String>> = Vec::new();
    let mut header: Vec<String> = cols.iter().map(|(_, n)| n.clone()).collect();
    if with_namespace {
        header.insert(0, "NAMESPACE".into());
    }
    lines.push(header);
    for row in rows {
        let mut cells: Vec<String> = cols
            .iter()
            .map(|(i, _)| match &row["cells"][*i] {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            })
            .collect();
        if with_namespace {
            cells.insert(
                0,
                row["object"]["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
        }
        lines.push(cells);
    }
    let widths: Vec<usize> = (0..lines[0].len())
        .map(|c| {
            lines
                .iter()
                .map(|l| l[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for l in lines {
        let mut out = String::new();
        for (c, cell) in l.iter().enumerate() {
            if c + 1 == l.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}   ", width = widths[c]));
            }
        }
        println!("{}", out.trim_end());
    }
}
