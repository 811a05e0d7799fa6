//! The certificate controllers (kube-controller-manager's `csrapproving` and `csrsigning`):
//!
//! - the **approver** approves a node's client certificate request when the requester may
//!   create `certificatesigningrequests/nodeclient` (a bootstrap token, through
//!   `system:bootstrappers`) or `selfnodeclient` (the node renewing its own), asked through
//!   a SubjectAccessReview; and — Capstan's addition, as k3s signs them — a node's serving
//!   certificate request made by that node for addresses its Node reports (or, before it
//!   registered, addresses no other Node reports). Everything else waits for a person
//!   (`kubectl certificate approve`).
//! - the **signer** issues approved requests of the `kube-apiserver-client-kubelet`,
//!   `kubelet-serving` and `kube-apiserver-client` signers with the cluster CA
//!   (`--cluster-signing-cert-file`, `--cluster-signing-key-file`), for what the request asks
//!   up to `--cluster-signing-duration`; a request that does not fit its signer gets a
//!   Failed condition (SignerValidationFailure) instead.
//!
//! Decisions are in [`plan`].

pub mod plan;

use std::sync::Arc;

use base64::Engine as _;
use futures_util::StreamExt;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::Manager;
use crate::runtime::Informer;
use plan::Approval;

pub const NAME: &str = "csr";

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn parsed(csr: &CertificateSigningRequest) -> Option<capstan_pki::csr::Request> {
    capstan_pki::csr::parse(&csr.spec.request.0).ok()
}

/// Runs the approver and the signer until dropped.
pub async fn run(m: Arc<Manager>) {
    let csrs = Informer::new(
        Api::<CertificateSigningRequest>::all(m.client.clone()),
        Default::default(),
    );
    let task = tokio::spawn(csrs.clone().run());
    struct Stop(tokio::task::JoinHandle<()>);
    impl Drop for Stop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _stop = Stop(task);
    let nodes = m.informers.nodes();
    csrs.wait_synced().await;
    nodes.wait_synced().await;
    let mut changes = csrs.subscribe().boxed();
    loop {
        for csr in csrs.store().state() {
            let name = csr.metadata.name.clone().unwrap_or_default();
            let Some(req) = parsed(&csr) else { continue };
            if plan::pending(&csr)
                && let Err(e) = approve(&m, &csr, &req, &nodes.store().state()).await
            {
                tracing::warn!(csr = %name, error = %e, "approving failed");
            }
            if plan::to_sign(&csr)
                && let Err(e) = sign(&m, &csr, &req).await
            {
                tracing::warn!(csr = %name, error = %e, "signing failed");
            }
        }
        tokio::select! {
            _ = changes.next() => {}
            _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
        }
    }
}

async fn may_create(
    client: &kube::Client,
    csr: &CertificateSigningRequest,
    subresource: &str,
) -> Result<bool, kube::Error> {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: csr.spec.username.clone(),
            uid: csr.spec.uid.clone(),
            groups: csr.spec.groups.clone(),
            extra: csr.spec.extra.clone(),
            resource_attributes: Some(ResourceAttributes {
                group: Some("certificates.k8s.io".into()),
                resource: Some("certificatesigningrequests".into()),
                subresource: Some(subresource.into()),
                verb: Some("create".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

/// Whether a node may have a serving certificate for these addresses.
fn serving_addresses_ok(
    nodes: &[Arc<Node>],
    node: &str,
    ips: &[std::net::IpAddr],
    dns: &[String],
) -> bool {
    let addresses = |n: &Node| -> Vec<String> {
        n.status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
            .map(|a| a.address.clone())
            .collect()
    };
    match nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(node))
    {
        Some(n) => {
            let own = addresses(n);
            let names: Vec<&str> = std::iter::once(node)
                .chain(own.iter().map(String::as_str))
                .collect();
            ips.iter().all(|ip| own.contains(&ip.to_string()))
                && dns
                    .iter()
                    .all(|d| names.contains(&d.as_str()) || d == "localhost")
        }
        None => !nodes.iter().any(|n| {
            let theirs = addresses(n);
            ips.iter()
                .any(|ip| !ip.is_loopback() && theirs.contains(&ip.to_string()))
        }),
    }
}

async fn approve(
    m: &Manager,
    csr: &CertificateSigningRequest,
    req: &capstan_pki::csr::Request,
    nodes: &[Arc<Node>],
) -> Result<(), kube::Error> {
    let (ok, message) = match plan::approval(csr, req) {
        Approval::Leave => return Ok(()),
        Approval::AskFor(sub) => (
            may_create(&m.client, csr, sub).await?,
            "Auto approving kubelet client certificate after SubjectAccessReview.",
        ),
        Approval::Serving { node, ips, dns } => (
            serving_addresses_ok(nodes, &node, &ips, &dns),
            "Auto approving the node's serving certificate for its own addresses.",
        ),
    };
    if !ok {
        return Ok(());
    }
    let name = csr.metadata.name.clone().unwrap_or_default();
    let patch = json!({"status": {"conditions": [{"type": "Approved", "status": "True",
        "reason": "AutoApproved", "message": message, "lastUpdateTime": now()}]}});
    Api::<CertificateSigningRequest>::all(m.client.clone())
        .patch_approval(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    tracing::info!(csr = %name, signer = %csr.spec.signer_name, "approved");
    Ok(())
}

async fn sign(
    m: &Manager,
    csr: &CertificateSigningRequest,
    req: &capstan_pki::csr::Request,
) -> Result<(), kube::Error> {
    let Some(ca) = &m.cluster_signing else {
        return Ok(());
    };
    if !matches!(
        csr.spec.signer_name.as_str(),
        plan::KUBELET_CLIENT | plan::KUBELET_SERVING | plan::CLIENT
    ) {
        return Ok(()); // another signer's
    }
    let name = csr.metadata.name.clone().unwrap_or_default();
    let api = Api::<CertificateSigningRequest>::all(m.client.clone());
    let usage = if csr.spec.signer_name == plan::KUBELET_SERVING {
        capstan_pki::Usage::Server
    } else {
        capstan_pki::Usage::Client
    };
    let issued = match plan::signer_refusal(csr, req) {
        Some(why) => Err(why),
        None => ca
            .sign_request(req, usage, plan::duration(csr, m.cluster_signing_duration))
            .map_err(|e| e.to_string()),
    };
    match issued {
        Ok(pem) => {
            let cert = base64::engine::general_purpose::STANDARD.encode(pem);
            api.patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"certificate": cert}})),
            )
            .await?;
            tracing::info!(csr = %name, signer = %csr.spec.signer_name, "signed");
        }
        Err(why) => {
            let failed = json!({"type": "Failed", "status": "True",
                "reason": "SignerValidationFailure", "message": why, "lastUpdateTime": now()});
            api.patch_status(
                &name,
                &PatchParams::default(),
                &Patch::<()>::Json(
                    serde_json::from_value(
                        json!([{"op": "add", "path": "/status/conditions/-", "value": failed}]),
                    )
                    .expect("a valid JSON patch"),
                ),
            )
            .await?;
            tracing::info!(csr = %name, %why, "refused to sign");
        }
    }
    Ok(())
}
