//! certificates.k8s.io/v1 CertificateSigningRequests, as kube-apiserver serves them
//! (pkg/registry/certificates and pkg/apis/certificates/validation):
//!
//! - on create the requester is recorded from the request's user (`spec.username`, `uid`,
//!   `groups`, `extra` — whatever the client sent there is replaced) and the status cleared;
//! - `spec.request` must be a PEM CERTIFICATE REQUEST whose signature matches its key,
//!   `spec.signerName` a qualified name, `spec.usages` known key usages,
//!   `spec.expirationSeconds` at least 600; the spec never changes after create;
//! - `/approval` changes only the Approved / Denied conditions (never both, never removed) and
//!   needs the `approve` verb on `signers` for the request's signer ([`check_approval`]);
//!   `/status` is the signer's (the certificate and a Failed condition);
//! - columns: NAME AGE SIGNERNAME REQUESTOR REQUESTEDDURATION CONDITION.

use capstan_api::validation::FieldError;
use serde_json::{Value, json};

use crate::ApiServer;
use crate::auth::attributes::Attributes;
use crate::table::{Table, age, s, table};

pub const GROUP: &str = "certificates.k8s.io";
/// Node agents' client certificates (CN system:node:NAME, O system:nodes).
pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// Node agents' serving certificates.
pub const KUBELET_SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";
/// Any client certificate for the API server.
pub const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client";
/// The paths `/approval` may change.
pub const APPROVAL: &[&str] = &["status", "conditions"];

const USAGES: &[&str] = &[
    "signing",
    "digital signature",
    "content commitment",
    "key encipherment",
    "key agreement",
    "data encipherment",
    "cert sign",
    "crl sign",
    "encipher only",
    "decipher only",
    "any",
    "server auth",
    "client auth",
    "code signing",
    "email protection",
    "s/mime",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "timestamping",
    "ocsp signing",
    "microsoft sgc",
    "netscape sgc",
];

fn err(field: &str, value: &str, message: &str) -> FieldError {
    FieldError {
        field: field.into(),
        value: value.into(),
        message: message.into(),
    }
}

/// A signer name: `DOMAIN/PATH`, the domain a DNS subdomain.
fn signer_name_errors(name: &str) -> Option<String> {
    let Some((domain, path)) = name.split_once('/') else {
        return Some(
            "must be a fully qualified domain and path of the form 'example.com/signer-name'"
                .into(),
        );
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if !domain.contains('.') || !domain.split('.').all(label_ok) {
        return Some(
            "must be a fully qualified domain and path of the form 'example.com/signer-name'"
                .into(),
        );
    }
    if path.is_empty() || path.len() > 253 || path.contains(char::is_whitespace) {
        return Some("validating path: must be a valid path segment".into());
    }
    None
}

/// Validation of a new request.
pub fn validate(o: &Value) -> Vec<FieldError> {
    let spec = &o["spec"];
    let mut errs = Vec::new();
    match spec["request"].as_str() {
        None | Some("") => errs.push(err("spec.request", "", "Required value")),
        Some(b64) => {
            use base64::Engine as _;
            match base64::engine::general_purpose::STANDARD.decode(b64) {
                Err(_) => errs.push(err("spec.request", "", "must be base64-encoded PEM")),
                Ok(pem) => {
                    if let Err(e) = capstan_pki::csr::parse(&pem) {
                        errs.push(err("spec.request", "<value omitted>", &e.to_string()));
                    }
                }
            }
        }
    }
    match spec["signerName"].as_str() {
        None | Some("") => errs.push(err("spec.signerName", "", "Required value")),
        Some(n) => {
            if let Some(m) = signer_name_errors(n) {
                errs.push(err("spec.signerName", n, &m));
            }
        }
    }
    match spec["usages"].as_array() {
        None => errs.push(err("spec.usages", "", "Required value")),
        Some(us) if us.is_empty() => errs.push(err("spec.usages", "", "Required value")),
        Some(us) => {
            for (i, u) in us.iter().enumerate() {
                let u = u.as_str().unwrap_or_default();
                if !USAGES.contains(&u) {
                    errs.push(err(
                        &format!("spec.usages[{i}]"),
                        u,
                        &format!("Unsupported value: {u:?}"),
                    ));
                }
            }
        }
    }
    if let Some(secs) = spec["expirationSeconds"].as_i64()
        && secs < 600
    {
        errs.push(err(
            "spec.expirationSeconds",
            &secs.to_string(),
            "may not specify a duration less than 600 seconds (10 minutes)",
        ));
    }
    errs
}

/// The spec never changes; conditions Approved and Denied exclude each other and stay.
pub fn validate_update(new: &Value, old: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if old["spec"] != new["spec"] {
        errs.push(err("spec", "", "field is immutable"));
    }
    let has = |o: &Value, t: &str| {
        o["status"]["conditions"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["type"] == t))
    };
    if has(new, "Approved") && has(new, "Denied") {
        errs.push(err(
            "status.conditions",
            "",
            "Approved and Denied conditions are mutually exclusive",
        ));
    }
    for t in ["Approved", "Denied"] {
        if has(old, t) && !has(new, t) {
            errs.push(err(
                "status.conditions",
                "",
                &format!("updates may not remove a condition of type {t:?}"),
            ));
        }
    }
    errs
}

/// On create: the requester is the request's user; nothing of the status is kept.
pub fn on_create(o: &mut Value) {
    let user = crate::auth::rbac::escalation::request_user();
    let spec = &mut o["spec"];
    if !spec.is_object() {
        return;
    }
    match user {
        Some(u) => {
            spec["username"] = json!(u.username);
            spec["uid"] = json!(u.uid);
            spec["groups"] = json!(u.groups);
            spec["extra"] = json!(u.extra);
        }
        None => {
            for k in ["username", "uid", "groups", "extra"] {
                if let Some(m) = spec.as_object_mut() {
                    m.remove(k);
                }
            }
        }
    }
}

/// The CertificateApproval admission check: the user of an `/approval` write must hold
/// `approve` on `signers`, named for the request's signer or its domain (`DOMAIN/*`).
pub fn check_approval(api: &ApiServer, a: &Attributes) -> Result<(), crate::errors::ApiError> {
    if a.api_group != GROUP
        || a.resource != "certificatesigningrequests"
        || a.subresource != "approval"
        || !matches!(a.verb.as_str(), "update" | "patch")
    {
        return Ok(());
    }
    let Some(info) = api.registry.get(GROUP, "v1", "certificatesigningrequests") else {
        return Ok(());
    };
    let Some(csr) = api
        .cacher(&info)
        .ok()
        .and_then(|c| c.get_value(&info.key(None, &a.name)))
    else {
        return Ok(()); // the handler answers 404
    };
    let signer = csr["spec"]["signerName"].as_str().unwrap_or_default();
    let domain = signer.split('/').next().unwrap_or_default();
    let allowed = [signer.to_string(), format!("{domain}/*")]
        .iter()
        .any(|name| {
            let check =
                Attributes::resource(a.user.clone(), "approve", GROUP, "", "signers", "", name);
            api.auth.authorize(api, &check).allowed
        });
    if allowed {
        Ok(())
    } else {
        Err(crate::errors::ApiError::forbidden(
            GROUP,
            "certificatesigningrequests",
            &a.name,
            &format!("user not permitted to approve requests with signerName {signer:?}"),
        ))
    }
}

fn condition(o: &Value) -> String {
    let mut out: Vec<String> = o["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["status"].as_str().unwrap_or("True") == "True")
        .map(|c| s(&c["type"]))
        .collect();
    if o["status"]["certificate"]
        .as_str()
        .is_some_and(|c| !c.is_empty())
    {
        out.push("Issued".into());
    }
    if out.is_empty() {
        "Pending".into()
    } else {
        out.join(",")
    }
}

/// kubectl get csr: NAME AGE SIGNERNAME REQUESTOR REQUESTEDDURATION CONDITION.
pub fn columns() -> Table {
    table(
        &[
            ("Age", "string", 0),
            ("SignerName", "string", 0),
            ("Requestor", "string", 0),
            ("RequestedDuration", "string", 0),
            ("Condition", "string", 0),
        ],
        |o| {
            let duration = o["spec"]["expirationSeconds"]
                .as_i64()
                .map(|s| {
                    if s % 3600 == 0 {
                        format!("{}h", s / 3600)
                    } else if s % 60 == 0 {
                        format!("{}m", s / 60)
                    } else {
                        format!("{s}s")
                    }
                })
                .unwrap_or_else(|| "<none>".into());
            vec![
                age(o),
                json!(s(&o["spec"]["signerName"])),
                json!(s(&o["spec"]["username"])),
                json!(duration),
                json!(condition(o)),
            ]
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn csr(signer: &str, usages: Value) -> Value {
        let (pem, _) =
            capstan_pki::csr::make("system:node:n1", Some("system:nodes"), &[], &[]).unwrap();
        json!({"spec": {"request": base64::engine::general_purpose::STANDARD.encode(pem),
            "signerName": signer, "usages": usages}})
    }

    #[test]
    fn requests_are_validated_as_kubernetes_does() {
        assert!(
            validate(&csr(
                KUBELET_CLIENT_SIGNER,
                json!(["digital signature", "client auth"])
            ))
            .is_empty()
        );
        let e = validate(&csr("nodomain", json!(["client auth"])));
        assert_eq!(e[0].field, "spec.signerName");
        let e = validate(&csr("example.com/x", json!(["flying"])));
        assert_eq!(e[0].field, "spec.usages[0]");
        let mut bad = csr(CLIENT_SIGNER, json!(["client auth"]));
        bad["spec"]["request"] = json!("bm90IGEgY3Ny");
        assert_eq!(validate(&bad)[0].field, "spec.request");
        bad["spec"]["expirationSeconds"] = json!(60);
        assert!(
            validate(&bad)
                .iter()
                .any(|e| e.field == "spec.expirationSeconds")
        );
    }

    #[test]
    fn approval_cannot_flip_or_drop_a_decision() {
        let old = json!({"spec": {"a": 1}, "status": {"conditions": [{"type": "Approved", "status": "True"}]}});
        let both = json!({"spec": {"a": 1}, "status": {"conditions": [{"type": "Approved"}, {"type": "Denied"}]}});
        assert_eq!(validate_update(&both, &old).len(), 1);
        let dropped = json!({"spec": {"a": 1}, "status": {}});
        assert_eq!(validate_update(&dropped, &old).len(), 1);
        let changed = json!({"spec": {"a": 2}, "status": old["status"]});
        assert_eq!(validate_update(&changed, &old)[0].field, "spec");
        assert_eq!(condition(&old), "Approved");
        let mut issued = old.clone();
        issued["status"]["certificate"] = json!("LS0t");
        assert_eq!(condition(&issued), "Approved,Issued");
        assert_eq!(condition(&json!({})), "Pending");
    }
}
