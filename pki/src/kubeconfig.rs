//! Kubeconfig text for a cluster served with these certificates: the server, the CA that
//! signed its certificate, and a user's credentials (a client certificate or a bearer token),
//! all embedded (base64), so the file works wherever it is copied.

use base64::Engine;

use crate::Issued;

/// How a kubeconfig's user authenticates.
#[derive(Debug, Clone, Copy)]
pub enum Credentials<'a> {
    None,
    Cert(&'a Issued),
    Token(&'a str),
}

/// A kubeconfig for `server`, trusting `ca_pem`, with `credentials`.
pub fn kubeconfig(server: &str, ca_pem: Option<&str>, credentials: Credentials<'_>) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let ca = ca_pem
        .map(|c| format!("\n    certificate-authority-data: {}", b64(c)))
        .unwrap_or_default();
    let user = match credentials {
        Credentials::Cert(id) => format!(
            "\n    client-certificate-data: {}\n    client-key-data: {}",
            b64(&id.cert_pem),
            b64(&id.key_pem)
        ),
        Credentials::Token(t) => format!("\n    token: {t}"),
        Credentials::None => " {}".into(),
    };
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: capstan
  cluster:
    server: {server}{ca}
contexts:
- name: capstan
  context:
    cluster: capstan
    user: capstan
    namespace: default
current-context: capstan
users:
- name: capstan
  user:{user}
"
    )
}
