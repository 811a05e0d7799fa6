//! `capstan token create | list | delete`: bootstrap tokens for joining agents, kept as
//! kubeadm keeps them — Secrets `kube-system/bootstrap-token-ID` of type
//! `bootstrap.kubernetes.io/token` — and printed as `ID.SECRET`.

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use clap::{Args, Subcommand};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;

use crate::client_cmd::{ClientArgs, client};

const PREFIX: &str = "bootstrap-token-";
const TYPE: &str = "bootstrap.kubernetes.io/token";

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Make a token an agent joins with (`capstan agent --server URL --token TOKEN --ca-file
    /// CA`) and print it.
    Create(CreateArgs),
    /// The tokens: ID, when each expires, what it is for.
    List,
    /// Revoke a token (by ID or as printed).
    Delete { token: String },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// How long it is valid (`0` never expires).
    #[arg(long, default_value = "24h", value_parser = crate::controllers_cmd::parse_duration)]
    pub ttl: std::time::Duration,
    /// Shown by `capstan token list`.
    #[arg(long, default_value = "")]
    pub description: String,
    /// More groups its user is in (each `system:bootstrappers:...`).
    #[arg(long, value_delimiter = ',')]
    pub groups: Vec<String>,
}

/// `n` characters of `[a-z0-9]` from the kernel's randomness.
fn random(n: usize) -> Result<String> {
    use std::io::Read;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(n);
    let mut f = std::fs::File::open("/dev/urandom")?;
    while out.len() < n {
        let mut b = [0u8; 1];
        f.read_exact(&mut b)?;
        // 252 = 7 × 36: no bias.
        if b[0] < 252 {
            out.push(ALPHABET[usize::from(b[0] % 36)] as char);
        }
    }
    Ok(out)
}

fn text(s: &Secret, key: &str) -> String {
    s.data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
        .unwrap_or_default()
}

pub async fn run(client_args: ClientArgs, cmd: TokenCmd) -> Result<()> {
    let api: Api<Secret> = Api::namespaced(client(&client_args).await?, "kube-system");
    match cmd {
        TokenCmd::Create(a) => {
            for g in &a.groups {
                if !g.starts_with("system:bootstrappers:") {
                    bail!(
                        "--groups {g:?}: a bootstrap token's groups must start with system:bootstrappers:"
                    );
                }
            }
            let (id, secret) = (random(6)?, random(16)?);
            let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
            let mut data = json!({
                "token-id": b64(&id),
                "token-secret": b64(&secret),
                "usage-bootstrap-authentication": b64("true"),
                "usage-bootstrap-signing": b64("true"),
            });
            if !a.ttl.is_zero() {
                let until = jiff::Timestamp::now()
                    + jiff::SignedDuration::from_secs(a.ttl.as_secs() as i64);
                data["expiration"] = json!(b64(&until.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()));
            }
            if !a.description.is_empty() {
                data["description"] = json!(b64(&a.description));
            }
            if !a.groups.is_empty() {
                data["auth-extra-groups"] = json!(b64(&a.groups.join(",")));
            }
            let s: Secret = serde_json::from_value(json!({
                "metadata": {"name": format!("{PREFIX}{id}"), "namespace": "kube-system"},
                "type": TYPE,
                "data": data,
            }))?;
            api.create(&PostParams::default(), &s)
                .await
                .context("creating the token's Secret")?;
            println!("{id}.{secret}");
        }
        TokenCmd::List => {
            println!("{:<8} {:<22} DESCRIPTION", "ID", "EXPIRES");
            for s in api.list(&ListParams::default()).await?.items {
                if s.type_.as_deref() != Some(TYPE) {
                    continue;
                }
                let expires = match text(&s, "expiration") {
                    e if e.is_empty() => "<never>".to_string(),
                    e => e,
                };
                println!(
                    "{:<8} {:<22} {}",
                    text(&s, "token-id"),
                    expires,
                    text(&s, "description")
                );
            }
        }
        TokenCmd::Delete { token } => {
            let id = token.split('.').next().unwrap_or_default();
            api.delete(&format!("{PREFIX}{id}"), &DeleteParams::default())
                .await
                .with_context(|| format!("deleting token {id}"))?;
            println!("token {id} deleted");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_have_the_bootstrap_form() {
        let (id, secret) = (super::random(6).unwrap(), super::random(16).unwrap());
        let t = format!("{id}.{secret}");
        assert!(
            capstan_apiserver::auth::bootstrap_token::split(&t).is_some(),
            "{t}"
        );
        assert_ne!(super::random(16).unwrap(), secret);
    }
}
