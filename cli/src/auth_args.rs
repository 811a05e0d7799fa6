//! The API server's transport and access flags (`capstan up`, `capstan apiserver`): HTTPS by
//! default with the cluster CA under DATA_DIR/pki, `--insecure-http` only on loopback;
//! `--token-auth-file`, `--anonymous-auth`, `--authorization-mode`, `--tls-san`,
//! `--audit-log-path` and `--audit-policy-file`, the ServiceAccount token flags and
//! `--disable-admission-plugins`, as kube-apiserver and k3s name them.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Result, bail};
use capstan_apiserver::auth::service_account::ServiceAccountTokens;
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
    /// The ECDSA P-256 key (PKCS#8 PEM) that signs ServiceAccount tokens; made when missing.
    /// API servers sharing a store must share it. Default: DATA_DIR/pki/service-account.key.
    #[arg(long)]
    pub service_account_signing_key_file: Option<PathBuf>,
    /// The `iss` of the ServiceAccount tokens this server issues and accepts.
    #[arg(long, default_value = capstan_apiserver::auth::service_account::DEFAULT_ISSUER)]
    pub service_account_issuer: String,
    /// The audiences tokens must name to be accepted (comma-separated); default: the issuer.
    #[arg(long, value_delimiter = ',')]
    pub api_audiences: Vec<String>,
    /// The longest a requested token may last (`48h`, `90m`); longer requests are cut to it.
    #[arg(long, value_parser = crate::controllers_cmd::parse_duration)]
    pub service_account_max_token_expiration: Option<std::time::Duration>,
    /// Admission plugins to turn off (comma-separated): `ServiceAccount`.
    #[arg(long, value_delimiter = ',')]
    pub disable_admission_plugins: Vec<AdmissionPlugin>,
}

/// The admission plugins that can be turned off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AdmissionPlugin {
    #[value(name = "ServiceAccount")]
    ServiceAccount,
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
            service_accounts: None,
            mode: self.authorization_mode,
        })
    }

    /// The ServiceAccount token signer and checker: the key (made when missing), issuer and
    /// audiences.
    pub fn service_accounts(&self, data_dir: &std::path::Path) -> Result<ServiceAccountTokens> {
        let path = self
            .service_account_signing_key_file
            .clone()
            .unwrap_or_else(|| data_dir.join("pki").join("service-account.key"));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
        }
        let key = capstan_pki::jwt::SigningKey::load_or_create(&path).map_err(|e| {
            anyhow::anyhow!("--service-account-signing-key-file {}: {e}", path.display())
        })?;
        let mut tokens = ServiceAccountTokens::new(key);
        tokens.issuer = self.service_account_issuer.clone();
        tokens.audiences = if self.api_audiences.is_empty() {
            vec![self.service_account_issuer.clone()]
        } else {
            self.api_audiences.clone()
        };
        if let Some(max) = self.service_account_max_token_expiration {
            let max = max.as_secs() as i64;
            if max < 600 {
                bail!("--service-account-max-token-expiration must be at least 10m");
            }
            tokens.max_expiration = Some(max);
        }
        Ok(tokens)
    }

    /// Whether the ServiceAccount admission plugin runs: not when turned off, nor on plain
    /// HTTP (there is no CA for the pods' `ca.crt`).
    pub fn service_account_admission(&self) -> bool {
        !self.insecure_http
            && !self
                .disable_admission_plugins
                .contains(&AdmissionPlugin::ServiceAccount)
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
