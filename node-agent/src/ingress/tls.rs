//! TLS for the HTTPS listener: each handshake's certificate is chosen by its SNI name from the
//! snapshot current at that moment, so a Secret's new certificate serves from the next
//! handshake on, with no restart. A name no TLS section covers (or no SNI at all) gets the
//! proxy's own self-signed certificate, as ingress-nginx serves its "fake certificate".

use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::Shared;

#[derive(Debug)]
struct BySni {
    shared: Arc<Shared>,
    fallback: Arc<CertifiedKey>,
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        hello
            .server_name()
            .and_then(|name| self.shared.snapshot().certificate(name))
            .or_else(|| Some(self.fallback.clone()))
    }
}

/// A self-signed certificate for names no Ingress covers.
fn fallback() -> Result<CertifiedKey, String> {
    let ca = capstan_pki::Ca::generate().map_err(|e| e.to_string())?;
    let issued = ca
        .serving(
            "Capstan Ingress Default Certificate",
            &["ingress.local".to_string()],
        )
        .map_err(|e| e.to_string())?;
    super::state::certified_key_pem(issued.cert_pem.as_bytes(), issued.key_pem.as_bytes())
}

/// The server configuration of the HTTPS listener: HTTP/2 and HTTP/1.1 by ALPN.
pub fn server_config(shared: Arc<Shared>) -> Result<rustls::ServerConfig, String> {
    let resolver = BySni {
        shared,
        fallback: Arc::new(fallback()?),
    };
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
