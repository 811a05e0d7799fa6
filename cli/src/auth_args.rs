//! The API server's transport and access flags (`capstan up`, `capstan apiserver`): HTTPS by
//! default with the cluster CA under DATA_DIR/pki, `--insecure-http` only on loopback;
//! `--token-auth-file`, `--anonymous-auth`, `--authorization-mode`, `--tls-san`,
//! `--audit-log-path` and `--audit-policy-file` as kube-apiserver and k3s name them.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Result, bail};
use capstan_apiserver::auth::{AuthConfig, Mode, token_file::TokenFile};
use clap::Args;

#[derive(Clone, Debug, Args)]
pub struct AuthArgs {
    /// Serve plain HTTP instead of HTTPS (only on a loopback address). As on kube-apiserver's
    /// old insecure port, a request without credentials is `system:unsecured` in
    /// `system:masters` (kubectl sends none over plain HTTP): every local process is an
    /// administrator. For development only.
    #[arg(long)]
    pub insecure_http: bool,
    /// Static bearer tokens, one CSV line each: `token,user,uid[,"group1,group2"]`.
    #[arg(long)]
    pub token_auth_file: Option<PathBuf>,
    /// Let requests without credentials in as `system:anonymous` (RBAC still decides what
    /// they may do; by default only /healthz, /livez, /readyz and /version). With false they
    /// get 401.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub anonymous_auth: bool,
    /// `RBAC`, or `AlwaysAllow` (every authenticated request is allowed).
    #[arg(long, default_value = "RBAC")]
    pub authorization_mode: Mode,
    /// More names and addresses for the serving certificate (repeatable).
    #[arg(long = "tls-san")]
    pub tls_sans: Vec<String>,
    /// Write an audit log (JSON lines, audit.k8s.io/v1 Events) to this file (`-`: stdout).
    #[arg(long)]
    pub audit_log_path: Option<PathBuf>,
    /// Which requests the audit log records, and how much (audit.k8s.io/v1 Policy); without
    /// it, every request at level Metadata.
    #[arg(long, requires = "audit_log_path")]
    pub audit_policy_file: Option<PathBuf>,
}

impl AuthArgs {
    /// Refuses plain HTTP anywhere but loopback.
    pub fn check(&self, listen: SocketAddr) -> Result<()> {
        if self.insecure_http && !listen.ip().is_loopback() {
            bail!(
                "--insecure-http serves credentials and data in the clear: only on a loopback address (--listen 127.0.0.1:PORT), not {listen}"
            );
        }
        Ok(())
    }

    /// The API server's authentication and authorization, with `extra` tokens (the in-process
    /// components' on plain HTTP).
    pub fn config(&self, extra: &[(String, String, Vec<String>)]) -> Result<AuthConfig> {
        let mut text = match &self.token_auth_file {
            Some(p) => std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("reading --token-auth-file {}: {e}", p.display()))?,
            None => String::new(),
        };
        for (token, user, groups) in extra {
            text.push_str(&format!("\n{token},{user},{user},\"{}\"", groups.join(",")));
        }
        let tokens = TokenFile::parse(&text).map_err(|e| match &self.token_auth_file {
            Some(p) => anyhow::anyhow!("--token-auth-file {}: {e}", p.display()),
            None => anyhow::anyhow!("{e}"),
        })?;
        Ok(AuthConfig {
            anonymous: self.anonymous_auth,
            unsecured: self.insecure_http,
            tokens,
            mode: self.authorization_mode,
        })
    }
}

impl AuthArgs {
    /// The audit log, when `--audit-log-path` asks for one.
    pub fn audit(&self) -> Result<Option<capstan_apiserver::audit::AuditConfig>> {
        let Some(path) = &self.audit_log_path else {
            return Ok(None);
        };
        let policy = match &self.audit_policy_file {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    anyhow::anyhow!("reading --audit-policy-file {}: {e}", p.display())
                })?;
                capstan_apiserver::audit::Policy::parse(&text)
                    .map_err(|e| anyhow::anyhow!("--audit-policy-file {}: {e}", p.display()))?
            }
            None => capstan_apiserver::audit::Policy::default(),
        };
        Ok(Some(capstan_apiserver::audit::AuditConfig {
            path: path.clone(),
            policy,
        }))
    }
}

/// A random bearer token (32 bytes from the kernel, hex).
pub fn random_token() -> Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
