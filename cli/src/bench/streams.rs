//! `capstan bench streams`: the day-two streams on containerd, each beside its floor in the
//! same run, on a `capstan up --runtime cri` of its own (this binary, its own containerd,
//! bridge and data directory; no proxy, no DNS):
//! 1. port-forward: the same HTTP load (N connections at once, a 256 KiB body per GET, a new
//!    TCP connection each) straight to the pod's IP and through `kubectl port-forward`
//!    (kubectl's WebSocket tunnel, the API server, the agent, the pod's network namespace).
//!    The target is `capstan bench httpd` in the pod (backlog 128; busybox httpd's 9 made the
//!    direct path retry SYNs).
//! 2. exec: one `echo` through pods/exec (a WebSocket, v5.channel.k8s.io, from this process:
//!    no kubectl start-up in the figure) against CRI ExecSync straight to containerd; and
//!    `kubectl exec` as a user sees it, start-up included.
//! 3. attach: open, one line to a `cat` container and its echo back, close — through
//!    pods/attach (WebSocket → agent → containerd's streaming server) against CRI Attach and
//!    the remotecommand protocol straight to containerd.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use capstan_node_agent::runtime::cri::CriRuntime;
use capstan_node_agent::runtime::{ContainerState, ExecRequest, POD_NAME, Runtime};
use capstan_testkit::portforward::{PortForward, compare};
use capstan_testkit::{eventually, free_port, kubectl, kubectl_bin};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

use super::cri::CriCluster;
use super::{Samples, ms};

#[derive(Debug, Args)]
pub struct StreamsBench {
    /// Connections at once through port-forward (and straight to the pod).
    #[arg(long, default_value_t = 20)]
    connections: usize,
    /// GETs per connection.
    #[arg(long, default_value_t = 10)]
    requests: usize,
    /// Exec and attach round trips measured on each path.
    #[arg(long, default_value_t = 50)]
    round_trips: usize,
    /// Where e2e/images/build.sh left busybox.tar (built into the scratch dir when absent).
    #[arg(long)]
    image_dir: Option<PathBuf>,
    #[arg(long, default_value = "/tmp")]
    scratch: PathBuf,
}

/// `capstan bench httpd`: the benchmarks' HTTP target — HTTP/1.0, one response per
/// connection, `/big` is `--size` bytes and anything else `ok`. A thread per connection.
#[derive(Debug, Args)]
pub struct HttpdArgs {
    #[arg(long, default_value_t = 8080)]
    port: u16,
    #[arg(long, default_value_t = 256 * 1024)]
    size: usize,
    /// Also echo WebSocket messages on this port (the ingress e2e's WebSocket target).
    #[arg(long)]
    ws_port: Option<u16>,
}

pub fn httpd(a: HttpdArgs) -> Result<()> {
    use std::io::{Read, Write};
    if let Some(port) = a.ws_port {
        let ws = std::net::TcpListener::bind(("0.0.0.0", port))?;
        std::thread::spawn(move || ws_echo(ws));
    }
    let listener = std::net::TcpListener::bind(("0.0.0.0", a.port))?;
    let big = std::sync::Arc::new(vec![b'x'; a.size]);
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let big = big.clone();
        std::thread::spawn(move || {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let body: &[u8] = if head.starts_with(b"GET /big ") {
                &big
            } else {
                b"ok\n"
            };
            let mut answer =
                format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
            answer.extend_from_slice(body);
            let _ = conn.set_nodelay(true);
            let _ = conn.write_all(&answer);
        });
    }
    Ok(())
}

/// Echoes every text and binary message back, a thread per connection.
fn ws_echo(listener: std::net::TcpListener) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        std::thread::spawn(move || {
            let Ok(mut ws) = tungstenite::accept(conn) else {
                return;
            };
            while let Ok(m) = ws.read() {
                if (m.is_text() || m.is_binary()) && ws.send(m).is_err() {
                    return;
                }
            }
        });
    }
}

const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: httpd
    image: localhost/pause:1
    imagePullPolicy: Never
    command: ["/capstan", "bench", "httpd", "--port", "8080"]
---
apiVersion: v1
kind: Pod
metadata: {name: cat}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: cat
    image: localhost/busybox:1
    command: ["cat"]
    stdin: true
"#;

pub async fn run(b: StreamsBench) -> Result<()> {
    let scratch = tempfile::Builder::new()
        .prefix("capstan-bench-streams-")
        .tempdir_in(&b.scratch)?;
    let images = super::test_images(b.image_dir.as_deref(), scratch.path())?;
    let cluster = tokio::task::block_in_place(|| {
        CriCluster::start(
            "streams",
            scratch.path(),
            &images,
            "bench-streams",
            "10.246.0.0/16",
            "captbench2",
            &["--disable-ingress"],
        )
    })?;
    let api = ApiStreams::from_kubeconfig(&cluster.kubeconfig).await?;
    let socket = cluster.socket();
    let kc = cluster.kubeconfig.clone();
    let pod_ip = tokio::task::block_in_place(|| start_pods(&cluster))?;
    let cri = CriRuntime::connect(&socket, Path::new("/sys/fs/cgroup")).await?;
    let cat = container_of(&cri, "cat").await?;
    println!("# Streams on containerd ({})\n", cri.version());
    println!(
        "`capstan bench streams --connections {} --requests {} --round-trips {}`: 2 cores, kubectl {}.\n",
        b.connections,
        b.requests,
        b.round_trips,
        kubectl_version()
    );

    // 1. port-forward against the pod's IP.
    let local = free_port()?;
    // Three rounds, the two paths taking turns; each path's median round is reported (one
    // round of either swings by 2x on 2 shared cores).
    let (direct, forwarded) = tokio::task::block_in_place(|| {
        let _pf = PortForward::start(&kc, "pod/web", &[&format!("{local}:8080")], &[])?;
        let (mut d, mut f) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            let (x, y) = compare(
                &format!("{pod_ip}:8080"),
                &format!("127.0.0.1:{local}"),
                "/big",
                b.connections,
                b.requests,
            );
            d.push(x);
            f.push(y);
        }
        let median = |mut v: Vec<capstan_testkit::portforward::Load>| {
            v.sort_by(|a, b| a.mib_per_second().total_cmp(&b.mib_per_second()));
            v.swap_remove(1)
        };
        Ok::<_, anyhow::Error>((median(d), median(f)))
    })?;
    for (what, l) in [("direct", &direct), ("port-forward", &forwarded)] {
        if !l.errors.is_empty() {
            bail!(
                "{what}: {} errors, the first: {}",
                l.errors.len(),
                l.errors[0]
            );
        }
    }
    println!(
        "## port-forward: {} connections at once, {} GETs of 256 KiB each (the median of 3 rounds)\n",
        b.connections, b.requests
    );
    println!("| path | req/s | MiB/s | p50 | p99 |\n|---|---|---|---|---|");
    for (what, l) in [
        ("straight to the pod IP", &direct),
        ("kubectl port-forward", &forwarded),
    ] {
        println!(
            "| {what} | {:.0} | {:.1} | {} | {} |",
            l.requests_per_second(),
            l.mib_per_second(),
            ms(l.quantile(0.5)),
            ms(l.quantile(0.99))
        );
    }
    println!(
        "\nport-forward / direct throughput: {:.2}x\n",
        forwarded.mib_per_second() / direct.mib_per_second()
    );

    // 2. exec.
    let n = b.round_trips;
    let floor = measure(n, || async {
        let r = cri
            .exec_sync(&cat, &["echo".into(), "hi".into()], Duration::from_secs(10))
            .await?;
        check(&r.stdout, b"hi").with_context(|| {
            format!(
                "CRI ExecSync: exit {}, stderr {:?}",
                r.exit_code,
                String::from_utf8_lossy(&r.stderr)
            )
        })
    })
    .await?;
    let exec_path = "/api/v1/namespaces/default/pods/cat/exec?command=echo&command=hi&stdout=true";
    let ours = measure(n, || async {
        let (out, status) = api.session(exec_path, None).await?;
        check(&out, b"hi")
            .with_context(|| format!("pods/exec: {}", String::from_utf8_lossy(&status)))
    })
    .await?;
    let kubectl_n = n.min(10);
    let kubectl_exec = measure(kubectl_n, || async {
        let out = tokio::task::block_in_place(|| {
            kubectl(&kc, &["exec", "cat", "--", "echo", "hi"], None)
        });
        check(&out.stdout, b"hi")
    })
    .await?;
    println!("## exec: `echo hi` in a running container, {n} times one after another\n");
    latency_table(&[
        (
            "CRI ExecSync straight to containerd (the runtime's own)",
            &floor,
        ),
        (
            "pods/exec WebSocket → API server → agent → containerd",
            &ours,
        ),
    ]);
    println!(
        "| `kubectl exec` ({kubectl_n} runs, kubectl's start-up included) | {} | {} |",
        ms(kubectl_exec.quantile(0.5)),
        ms(kubectl_exec.quantile(0.99))
    );
    println!(
        "\nexec beyond the runtime's own, p50: {}\n",
        ms(ours.quantile(0.5).saturating_sub(floor.quantile(0.5)))
    );

    // 3. attach.
    let req = ExecRequest {
        command: vec![],
        stdin: true,
        stdout: true,
        stderr: false,
        tty: false,
    };
    let mut i = 0u64;
    let floor = measure(n, || {
        i += 1;
        let line = format!("raw-{i}\n");
        let (cri, cat, req) = (&cri, &cat, &req);
        async move {
            let mut s = cri.attach(cat, req).await?;
            let tx = s.stdin.clone().context("no stdin")?;
            tx.send(line.clone().into()).await?;
            let mut got = Vec::new();
            let out = s.stdout.as_mut().context("no stdout")?;
            while !got.ends_with(line.as_bytes()) {
                let b = tokio::time::timeout(Duration::from_secs(10), out.recv())
                    .await?
                    .context("stdout ended")?;
                got.extend_from_slice(&b);
            }
            Ok(())
        }
    })
    .await?;
    let attach_path =
        "/api/v1/namespaces/default/pods/cat/attach?container=cat&stdin=true&stdout=true";
    let mut i = 0u64;
    let ours = measure(n, || {
        i += 1;
        let line = format!("ws-{i}\n");
        let api = &api;
        async move {
            let (out, _) = api.session(attach_path, Some(line.as_bytes())).await?;
            check(&out, line.trim().as_bytes())
        }
    })
    .await?;
    println!(
        "## attach: open, one line to `cat` and its echo back, close — {n} times one after another\n"
    );
    latency_table(&[
        (
            "CRI Attach + remotecommand straight to containerd (the runtime's own)",
            &floor,
        ),
        (
            "pods/attach WebSocket → API server → agent → containerd",
            &ours,
        ),
    ]);
    println!(
        "\nattach beyond the runtime's own, p50: {}",
        ms(ours.quantile(0.5).saturating_sub(floor.quantile(0.5)))
    );
    drop(cluster);
    Ok(())
}

/// A Markdown table of p50 and p99 per path (the header; rows may follow).
fn latency_table(rows: &[(&str, &Samples)]) {
    println!("| path | p50 | p99 |\n|---|---|---|");
    for (what, s) in rows {
        println!(
            "| {what} | {} | {} |",
            ms(s.quantile(0.5)),
            ms(s.quantile(0.99))
        );
    }
}

/// Creates the two pods and waits until they run and the web pod answers; its IP.
fn start_pods(cluster: &CriCluster) -> Result<String> {
    cluster.apply(PODS)?;
    let kubeconfig = &cluster.kubeconfig;
    let mut ip = String::new();
    eventually(Duration::from_secs(120), "the pods running", || {
        let out = kubectl(kubeconfig, &["get", "pods", "-o", "json"], None);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let items = v["items"].as_array().cloned().unwrap_or_default();
        let running = items.len() == 2 && items.iter().all(|p| p["status"]["phase"] == "Running");
        if let Some(web) = items.iter().find(|p| p["metadata"]["name"] == "web") {
            ip = web["status"]["podIP"].as_str().unwrap_or_default().into();
        }
        running
            && !ip.is_empty()
            && capstan_testkit::portforward::get(&format!("{ip}:8080"), "/").is_ok()
    })?;
    Ok(ip)
}

async fn container_of(cri: &CriRuntime, pod: &str) -> Result<String> {
    cri.list_containers()
        .await?
        .into_iter()
        .find(|c| {
            c.state == ContainerState::Running
                && c.config.labels.get(POD_NAME).map(String::as_str) == Some(pod)
        })
        .map(|c| c.id)
        .with_context(|| format!("no running container of pod {pod}"))
}

/// `n` runs of `op`, one after another.
async fn measure<F, Fut>(n: usize, mut op: F) -> Result<Samples>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        op().await?;
        latencies.push(t.elapsed());
    }
    Ok(Samples {
        elapsed: started.elapsed(),
        latencies,
    })
}

fn check(got: &[u8], want: &[u8]) -> Result<()> {
    if String::from_utf8_lossy(got).contains(&*String::from_utf8_lossy(want)) {
        Ok(())
    } else {
        bail!(
            "expected {:?}, got {:?}",
            String::from_utf8_lossy(want),
            String::from_utf8_lossy(got)
        )
    }
}

/// WebSocket sessions to the API server as the kubeconfig's user: TLS with its CA and client
/// certificate (HTTP/1.1, which the upgrade needs; plain on an `http://` server), its bearer
/// token when it has one.
struct ApiStreams {
    /// `wss://host:port` or `ws://host:port`.
    base: String,
    addr: String,
    server_name: rustls::pki_types::ServerName<'static>,
    /// None on an `http://` server.
    tls: Option<tokio_rustls::TlsConnector>,
    token: Option<String>,
}

impl ApiStreams {
    async fn from_kubeconfig(kubeconfig: &Path) -> Result<ApiStreams> {
        use kube::client::ConfigExt;
        let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
        let tls = if config.cluster_url.scheme_str() == Some("http") {
            None
        } else {
            let mut tls = config.rustls_client_config()?;
            tls.alpn_protocols = vec![b"http/1.1".to_vec()];
            Some(tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls)))
        };
        let host = config
            .cluster_url
            .host()
            .context("no host in the server URL")?;
        let port = config.cluster_url.port_u16().unwrap_or(443);
        let addr = format!("{host}:{port}");
        let token = config
            .auth_info
            .token
            .as_ref()
            .map(|t| secrecy::ExposeSecret::expose_secret(t).to_string());
        Ok(ApiStreams {
            base: format!("{}://{addr}", if tls.is_some() { "wss" } else { "ws" }),
            server_name: rustls::pki_types::ServerName::try_from(host.to_string())?,
            addr,
            tls,
            token,
        })
    }

    /// One remotecommand session over a WebSocket (v5.channel.k8s.io) on `path`: `input` sent
    /// on stdin; for exec everything until the Status, for attach until the input's echo.
    /// (stdout, status).
    async fn session(&self, path: &str, input: Option<&[u8]>) -> Result<(Vec<u8>, Vec<u8>)> {
        let mut req = format!("{}{path}", self.base).into_client_request()?;
        req.headers_mut()
            .insert("sec-websocket-protocol", "v5.channel.k8s.io".parse()?);
        if let Some(t) = &self.token {
            req.headers_mut()
                .insert("authorization", format!("Bearer {t}").parse()?);
        }
        let tcp = tokio::net::TcpStream::connect(&self.addr).await?;
        tcp.set_nodelay(true)?;
        match &self.tls {
            Some(tls) => {
                let tls = tls.connect(self.server_name.clone(), tcp).await?;
                let (ws, _) = tokio_tungstenite::client_async(req, tls).await?;
                remotecommand(ws, input).await
            }
            None => {
                let (ws, _) = tokio_tungstenite::client_async(req, tcp).await?;
                remotecommand(ws, input).await
            }
        }
    }
}

/// Reads a remotecommand session: `input` sent on stdin; for exec everything until the
/// Status, for attach until the input's echo. (stdout, status).
async fn remotecommand<S>(
    mut ws: tokio_tungstenite::WebSocketStream<S>,
    input: Option<&[u8]>,
) -> Result<(Vec<u8>, Vec<u8>)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Some(data) = input {
        ws.send(tungstenite::Message::Binary([&[0u8], data].concat().into()))
            .await?;
    }
    let (mut out, mut status) = (Vec::new(), Vec::new());
    let want = input.map(|i| String::from_utf8_lossy(i).trim().to_string());
    while let Some(m) = tokio::time::timeout(Duration::from_secs(10), ws.next()).await? {
        match m? {
            tungstenite::Message::Binary(b) if b.first() == Some(&1) => {
                out.extend_from_slice(&b[1..]);
                if want
                    .as_deref()
                    .is_some_and(|w| String::from_utf8_lossy(&out).contains(w))
                {
                    break;
                }
            }
            tungstenite::Message::Binary(b) if b.first() == Some(&3) => {
                status.extend_from_slice(&b[1..]);
                break;
            }
            tungstenite::Message::Close(_) => break,
            _ => {}
        }
    }
    let _ = ws.close(None).await;
    Ok((out, status))
}

fn kubectl_version() -> String {
    std::process::Command::new(kubectl_bin())
        .args(["version", "--client", "-o", "json"])
        .output()
        .ok()
        .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
        .and_then(|v| {
            v["clientVersion"]["gitVersion"]
                .as_str()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "?".into())
}
