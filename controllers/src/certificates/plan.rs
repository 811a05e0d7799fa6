//! What the certificate controllers decide, without I/O: whether a request is a node's client
//! or serving certificate as the kubelet signers require, what the approver may approve, and
//! how long a certificate lasts.

use std::net::IpAddr;

use capstan_pki::csr::Request;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;

pub const KUBELET_CLIENT: &str = "kubernetes.io/kube-apiserver-client-kubelet";
pub const KUBELET_SERVING: &str = "kubernetes.io/kubelet-serving";
pub const CLIENT: &str = "kubernetes.io/kube-apiserver-client";
const NODE_PREFIX: &str = "system:node:";
const NODES: &str = "system:nodes";

/// The condition types a request carries.
pub fn has_condition(csr: &CertificateSigningRequest, kind: &str) -> bool {
    csr.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == kind))
}

/// Neither approved nor denied yet.
pub fn pending(csr: &CertificateSigningRequest) -> bool {
    !has_condition(csr, "Approved") && !has_condition(csr, "Denied")
}

/// Approved, not failed, and without a certificate: the signer's to do.
pub fn to_sign(csr: &CertificateSigningRequest) -> bool {
    has_condition(csr, "Approved")
        && !has_condition(csr, "Denied")
        && !has_condition(csr, "Failed")
        && csr
            .status
            .as_ref()
            .and_then(|s| s.certificate.as_ref())
            .is_none_or(|c| c.0.is_empty())
}

fn usages(csr: &CertificateSigningRequest) -> Vec<&str> {
    csr.spec
        .usages
        .iter()
        .flatten()
        .map(String::as_str)
        .collect()
}

/// Why a request does not fit its signer (kube's signer validation), if it does not.
pub fn signer_refusal(csr: &CertificateSigningRequest, req: &Request) -> Option<String> {
    let us = usages(csr);
    let only = |allowed: &[&str]| us.iter().all(|u| allowed.contains(u));
    let node = req
        .subject
        .common_name
        .strip_prefix(NODE_PREFIX)
        .filter(|n| !n.is_empty());
    let in_nodes = req.subject.organizations == [NODES];
    match csr.spec.signer_name.as_str() {
        KUBELET_CLIENT => {
            if node.is_none() || !in_nodes {
                return Some("subject must be CN=system:node:NAME, O=system:nodes".into());
            }
            if !req.dns_names.is_empty() || !req.ip_addresses.is_empty() || req.other_names {
                return Some("a node client certificate names no subject alternative names".into());
            }
            if !us.contains(&"client auth")
                || !only(&["digital signature", "key encipherment", "client auth"])
            {
                return Some(
                    "usages must be client auth with digital signature and key encipherment only"
                        .into(),
                );
            }
            None
        }
        KUBELET_SERVING => {
            if node.is_none() || !in_nodes {
                return Some("subject must be CN=system:node:NAME, O=system:nodes".into());
            }
            if req.other_names || (req.dns_names.is_empty() && req.ip_addresses.is_empty()) {
                return Some(
                    "a serving certificate names DNS names or IP addresses only, at least one"
                        .into(),
                );
            }
            if !us.contains(&"server auth")
                || !only(&["digital signature", "key encipherment", "server auth"])
            {
                return Some(
                    "usages must be server auth with digital signature and key encipherment only"
                        .into(),
                );
            }
            None
        }
        CLIENT => {
            if req.subject.common_name.is_empty() {
                return Some("a client certificate needs a CN".into());
            }
            if !us.contains(&"client auth")
                || !only(&["digital signature", "key encipherment", "client auth"])
            {
                return Some(
                    "usages must be client auth with digital signature and key encipherment only"
                        .into(),
                );
            }
            None
        }
        other => Some(format!("{other} is not a signer of this controller")),
    }
}

/// How long a certificate lasts: what the request asks (at least 10 minutes), at most `max`.
pub fn duration(csr: &CertificateSigningRequest, max: std::time::Duration) -> std::time::Duration {
    match csr.spec.expiration_seconds {
        Some(s) if s > 0 => std::time::Duration::from_secs(s.max(600) as u64).min(max),
        _ => max,
    }
}

/// What the approver makes of a pending request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Approval {
    /// A node's client certificate: approve if the requester may create
    /// `certificatesigningrequests/SUBRESOURCE` (nodeclient for a bootstrap token,
    /// selfnodeclient for the node renewing its own).
    AskFor(&'static str),
    /// A node's serving certificate, asked by the node itself, for these addresses.
    Serving {
        node: String,
        ips: Vec<IpAddr>,
        dns: Vec<String>,
    },
    /// Not the approver's: a person or another approver decides.
    Leave,
}

/// Which approval a request needs (kube's csrapproving controller, plus serving certificates
/// for a node's own addresses, which Capstan approves as k3s signs them).
pub fn approval(csr: &CertificateSigningRequest, req: &Request) -> Approval {
    if signer_refusal(csr, req).is_some() {
        return Approval::Leave;
    }
    let requester = csr.spec.username.as_deref().unwrap_or_default();
    let groups: Vec<&str> = csr
        .spec
        .groups
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    match csr.spec.signer_name.as_str() {
        KUBELET_CLIENT if requester == req.subject.common_name => {
            Approval::AskFor("selfnodeclient")
        }
        KUBELET_CLIENT => Approval::AskFor("nodeclient"),
        KUBELET_SERVING if requester == req.subject.common_name && groups.contains(&NODES) => {
            Approval::Serving {
                node: requester.trim_start_matches(NODE_PREFIX).to_string(),
                ips: req.ip_addresses.clone(),
                dns: req.dns_names.clone(),
            }
        }
        _ => Approval::Leave,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use serde_json::json;

    fn csr(
        signer: &str,
        usages: &[&str],
        user: &str,
        groups: &[&str],
        req: &str,
    ) -> CertificateSigningRequest {
        serde_json::from_value(json!({"metadata": {"name": "x"}, "spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(req),
            "signerName": signer, "usages": usages, "username": user, "groups": groups}}))
        .unwrap()
    }

    fn request(cn: &str, o: Option<&str>, ips: &[&str]) -> (String, Request) {
        let ips: Vec<IpAddr> = ips.iter().map(|i| i.parse().unwrap()).collect();
        let (pem, _) = capstan_pki::csr::make(cn, o, &[], &ips).unwrap();
        let parsed = capstan_pki::csr::parse(pem.as_bytes()).unwrap();
        (pem, parsed)
    }

    #[test]
    fn node_client_requests_are_asked_about_by_who_sends_them() {
        let (pem, req) = request("system:node:n1", Some("system:nodes"), &[]);
        let client = ["digital signature", "client auth"];
        let boot = csr(
            KUBELET_CLIENT,
            &client,
            "system:bootstrap:abcdef",
            &["system:bootstrappers"],
            &pem,
        );
        assert_eq!(signer_refusal(&boot, &req), None);
        assert_eq!(approval(&boot, &req), Approval::AskFor("nodeclient"));
        let renew = csr(
            KUBELET_CLIENT,
            &client,
            "system:node:n1",
            &["system:nodes"],
            &pem,
        );
        assert_eq!(approval(&renew, &req), Approval::AskFor("selfnodeclient"));
        // Server usage, a wrong group, SANs: refused by the signer, left by the approver.
        let wrong = csr(
            KUBELET_CLIENT,
            &["server auth"],
            "system:bootstrap:abcdef",
            &[],
            &pem,
        );
        assert!(signer_refusal(&wrong, &req).is_some());
        assert_eq!(approval(&wrong, &req), Approval::Leave);
        let (pem2, other) = request("system:node:n1", Some("system:masters"), &[]);
        let masters = csr(
            KUBELET_CLIENT,
            &client,
            "system:bootstrap:abcdef",
            &[],
            &pem2,
        );
        assert!(
            signer_refusal(&masters, &other)
                .unwrap()
                .contains("O=system:nodes")
        );
        let (pem3, sans) = request("system:node:n1", Some("system:nodes"), &["10.0.0.1"]);
        assert!(signer_refusal(&csr(KUBELET_CLIENT, &client, "u", &[], &pem3), &sans).is_some());
    }

    #[test]
    fn serving_requests_are_the_nodes_own_and_name_addresses() {
        let (pem, req) = request("system:node:n1", Some("system:nodes"), &["10.0.0.1"]);
        let serving = ["digital signature", "key encipherment", "server auth"];
        let own = csr(
            KUBELET_SERVING,
            &serving,
            "system:node:n1",
            &["system:nodes", "system:authenticated"],
            &pem,
        );
        assert_eq!(
            approval(&own, &req),
            Approval::Serving {
                node: "n1".into(),
                ips: vec!["10.0.0.1".parse().unwrap()],
                dns: vec![]
            }
        );
        // Another node (or a person) asking for n1's serving certificate: not approved here.
        let other = csr(
            KUBELET_SERVING,
            &serving,
            "system:node:n2",
            &["system:nodes"],
            &pem,
        );
        assert_eq!(approval(&other, &req), Approval::Leave);
        let (pem, bare) = request("system:node:n1", Some("system:nodes"), &[]);
        assert!(
            signer_refusal(
                &csr(KUBELET_SERVING, &serving, "system:node:n1", &[], &pem),
                &bare
            )
            .is_some()
        );
    }

    #[test]
    fn durations_are_bounded() {
        let (pem, _) = request("a", None, &[]);
        let mut c = csr(CLIENT, &["client auth"], "a", &[], &pem);
        let year = std::time::Duration::from_secs(365 * 86400);
        assert_eq!(duration(&c, year), year);
        c.spec.expiration_seconds = Some(60);
        assert_eq!(duration(&c, year).as_secs(), 600);
        c.spec.expiration_seconds = Some(3600);
        assert_eq!(duration(&c, year).as_secs(), 3600);
        assert!(!to_sign(&c) && pending(&c));
    }
}
