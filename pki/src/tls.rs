//! rustls configurations on ring: the API server's (its certificate; client certificates
//! verified against the cluster CA when offered, so token and anonymous clients still connect)
//! and a client's (trusting the cluster CA, presenting a client certificate).

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;

use crate::{Error, Issued, Result};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates in a PEM text.
pub fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Invalid(format!("reading certificates: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Invalid("no certificate in the PEM text".into()));
    }
    Ok(certs)
}

/// The private key in a PEM text.
pub fn private_key(pem: &str) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| Error::Invalid(format!("reading the private key: {e}")))
}

fn roots(ca_pem: &str) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for c in certs(ca_pem)? {
        roots.add(c)?;
    }
    Ok(roots)
}

/// The API server's TLS: `serving` as its certificate; a client certificate signed by
/// `client_ca` is verified when offered (a client without one still connects, to be
/// authenticated by token or as anonymous). HTTP/1.1 by ALPN.
pub fn server_config(client_ca: &str, serving: &Issued) -> Result<rustls::ServerConfig> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(client_ca)?), provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| Error::Invalid(format!("client verifier: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(&serving.cert_pem)?, private_key(&serving.key_pem)?)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A client's TLS: trusts `ca_pem`, presents `identity` when given.
pub fn client_config(ca_pem: &str, identity: Option<&Issued>) -> Result<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca_pem)?);
    let mut config = match identity {
        Some(id) => {
            builder.with_client_auth_cert(certs(&id.cert_pem)?, private_key(&id.key_pem)?)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Whether `cert` is valid now and signed by the CA in `ca_pem` (for a client or a server).
pub fn verifies(ca_pem: &str, cert: &CertificateDer<'_>) -> bool {
    let Ok(ca) = certs(ca_pem) else {
        return false;
    };
    let Ok(anchor) = webpki::anchor_from_trusted_cert(&ca[0]) else {
        return false;
    };
    let Ok(ee) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    let algs = provider().signature_verification_algorithms.all;
    let anchors = [anchor];
    [
        webpki::KeyUsage::client_auth(),
        webpki::KeyUsage::server_auth(),
    ]
    .into_iter()
    .any(|usage| {
        ee.verify_for_usage(algs, &anchors, &[], UnixTime::now(), usage, None, None)
            .is_ok()
    })
}
