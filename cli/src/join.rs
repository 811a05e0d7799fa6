//! Joining a cluster with a bootstrap token (`capstan agent --server URL --token ID.SECRET
//! --ca-file CA`), as kubelet's TLS bootstrap does:
//!
//! 1. with the token (user `system:bootstrap:ID`), ask for a client certificate —
//!    `CN=system:node:NAME, O=system:nodes` — through a CertificateSigningRequest for
//!    `kubernetes.io/kube-apiserver-client-kubelet` and wait for the controller manager to
//!    approve and sign it;
//! 2. as the node, ask the same way for a serving certificate for the agent's port
//!    (`kubernetes.io/kubelet-serving`, its addresses as SANs);
//! 3. keep both under ROOT_DIR/pki and write ROOT_DIR/kubeconfig; on the next start they are
//!    reused while valid (more than a day left, signed by the CA, for this node and these
//!    addresses), so the token is needed once.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use capstan_pki::Issued;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::api::{Api, PostParams};
use serde_json::json;

/// How long an agent waits for its request to be approved and signed.
const SIGNING_WAIT: Duration = Duration::from_secs(300);
/// A certificate with less than this left is asked for again.
const RENEW_BEFORE: Duration = Duration::from_secs(24 * 3600);

/// What joining gives the agent.
pub struct Joined {
    pub client: kube::Client,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
}

impl std::fmt::Debug for Joined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Joined")
            .field("serving_cert", &self.serving_cert)
            .finish_non_exhaustive()
    }
}

/// Whether `files` is a certificate from `ca_pem` for `user`, valid for a day more.
fn still_good(files: &Issued, ca_pem: &str, user: &str) -> bool {
    let Ok(certs) = capstan_pki::tls::certs(&files.cert_pem) else {
        return false;
    };
    let Some(der) = certs.first() else {
        return false;
    };
    capstan_pki::tls::verifies(ca_pem, der)
        && capstan_pki::der::subject(der).is_some_and(|s| s.common_name == user)
        && capstan_pki::der::not_after(der).is_some_and(|t| t > SystemTime::now() + RENEW_BEFORE)
}

/// Asks for a certificate for `csr_pem` from `signer` and waits until it is issued.
async fn request_certificate(
    client: &kube::Client,
    csr_pem: &str,
    signer: &str,
    usages: &[&str],
) -> Result<String> {
    let api = Api::<CertificateSigningRequest>::all(client.clone());
    let csr: CertificateSigningRequest = serde_json::from_value(json!({
        "metadata": {"generateName": "node-csr-"},
        "spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(csr_pem),
            "signerName": signer,
            "usages": usages,
        },
    }))?;
    let made = api
        .create(&PostParams::default(), &csr)
        .await
        .with_context(|| format!("asking for a certificate from {signer}"))?;
    let name = made.metadata.name.unwrap_or_default();
    tracing::info!(csr = %name, %signer, "certificate requested; waiting for approval and signing");
    let deadline = Instant::now() + SIGNING_WAIT;
    loop {
        let csr = api
            .get(&name)
            .await
            .with_context(|| format!("reading certificatesigningrequest {name}"))?;
        let status = csr.status.unwrap_or_default();
        if let Some(cert) = status.certificate.filter(|c| !c.0.is_empty()) {
            return String::from_utf8(cert.0).context("the issued certificate is not PEM");
        }
        for c in status.conditions.iter().flatten() {
            if matches!(c.type_.as_str(), "Denied" | "Failed") {
                bail!(
                    "certificatesigningrequest {name} was {}: {}",
                    c.type_.to_lowercase(),
                    c.message.as_deref().unwrap_or_default()
                );
            }
        }
        if Instant::now() > deadline {
            bail!(
                "certificatesigningrequest {name} was not signed within {}s: approve it with `kubectl certificate approve {name}`",
                SIGNING_WAIT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Joins (or rejoins) the cluster at `server` as node `node`.
pub async fn join(
    server: &str,
    token: &str,
    ca_file: &Path,
    root: &Path,
    node: &str,
    names: &[String],
) -> Result<Joined> {
    let ca = std::fs::read_to_string(ca_file)
        .with_context(|| format!("reading --ca-file {}", ca_file.display()))?;
    let pki = root.join("pki");
    std::fs::create_dir_all(&pki).with_context(|| format!("creating {}", pki.display()))?;
    let user = format!("system:node:{node}");

    let client_id = match Issued::read(&pki, "node-client")? {
        Some(files) if still_good(&files, &ca, &user) => files,
        _ => {
            let boot = crate::certs::client_of(&crate::certs::kubeconfig(
                server,
                Some(&ca),
                crate::certs::Credentials::Token(token),
            ))
            .await?;
            let (csr, key) = capstan_pki::csr::make(&user, Some("system:nodes"), &[], &[])?;
            let cert = request_certificate(
                &boot,
                &csr,
                capstan_apiserver::certificates::KUBELET_CLIENT_SIGNER,
                &["digital signature", "client auth"],
            )
            .await
            .context("joining with the bootstrap token")?;
            let files = Issued {
                cert_pem: cert,
                key_pem: key,
            };
            files.write(&pki, "node-client")?;
            files
        }
    };
    let kubeconfig = crate::certs::kubeconfig(
        server,
        Some(&ca),
        crate::certs::Credentials::Cert(&client_id),
    );
    crate::certs::write_kubeconfig(&root.join("kubeconfig"), &kubeconfig)?;
    let client = crate::certs::client_of(&kubeconfig).await?;

    // The serving certificate, for exactly these names.
    let listed = pki.join("agent.names");
    let want = names.join("\n");
    let reuse = Issued::read(&pki, "agent")?.is_some_and(|f| still_good(&f, &ca, &user))
        && std::fs::read_to_string(&listed).is_ok_and(|l| l == want);
    if !reuse {
        let (ips, dns): (Vec<_>, Vec<_>) = names
            .iter()
            .partition(|n| n.parse::<std::net::IpAddr>().is_ok());
        let ips: Vec<std::net::IpAddr> = ips.iter().filter_map(|i| i.parse().ok()).collect();
        let dns: Vec<String> = dns.into_iter().cloned().collect();
        let (csr, key) = capstan_pki::csr::make(&user, Some("system:nodes"), &dns, &ips)?;
        let cert = request_certificate(
            &client,
            &csr,
            capstan_apiserver::certificates::KUBELET_SERVING_SIGNER,
            &["digital signature", "key encipherment", "server auth"],
        )
        .await
        .context("asking for the agent's serving certificate")?;
        Issued {
            cert_pem: cert,
            key_pem: key,
        }
        .write(&pki, "agent")?;
        capstan_pki::write_file(&listed, &want, 0o644)?;
    }
    Ok(Joined {
        client,
        serving_cert: pki.join("agent.crt"),
        serving_key: pki.join("agent.key"),
    })
}
