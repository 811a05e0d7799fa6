//! Capstan's certificates. A cluster has one [`Ca`] (kept under the data dir, reused on every
//! start: [`Ca::load_or_create`]); it signs the API server's serving certificate
//! ([`Ca::serving`], with a SAN for every address clients use) and client certificates
//! ([`Ca::client`]: CN = user, O = groups, as Kubernetes reads them). [`tls`] builds the rustls
//! configurations both ends use; [`der::subject`] reads the user back out of a verified client
//! certificate.
//!
//! Keys are ECDSA P-256 (rcgen's default on ring): small, fast to sign and to verify.

pub mod csr;
pub mod der;
pub mod jwt;
pub mod kubeconfig;
pub mod tls;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// What can go wrong making or reading certificates.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{0}")]
    Invalid(String),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How long the CA is valid (k3s: 10 years).
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long a serving or client certificate is valid (k3s, kubeadm: 1 year).
pub const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// A leaf certificate this close to expiry is issued again on start.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

/// What a certificate issued for a signing request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Client,
    Server,
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued").finish_non_exhaustive()
    }
}

impl Issued {
    /// Writes `NAME.crt` and `NAME.key` (mode 0600) into `dir`.
    pub fn write(&self, dir: &Path, name: &str) -> Result<()> {
        write_file(&dir.join(format!("{name}.crt")), &self.cert_pem, 0o644)?;
        write_file(&dir.join(format!("{name}.key")), &self.key_pem, 0o600)
    }

    /// Reads `NAME.crt` and `NAME.key` from `dir`; None when either is missing.
    pub fn read(dir: &Path, name: &str) -> Result<Option<Issued>> {
        let (crt, key) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        if !crt.exists() || !key.exists() {
            return Ok(None);
        }
        Ok(Some(Issued {
            cert_pem: read_file(&crt)?,
            key_pem: read_file(&key)?,
        }))
    }
}

/// A certificate authority: its certificate (PEM) and the key that signs.
pub struct Ca {
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

fn ca_params(common_name: &str) -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

fn validity(params: &mut CertificateParams, lasts: Duration) {
    let now = time::OffsetDateTime::now_utc();
    // An hour back: a peer whose clock is a little behind still accepts it.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + lasts;
}

impl Ca {
    /// A new CA named `capstan-ca@<unix seconds>` (as k3s names its CAs: two clusters' CAs
    /// never share a name).
    pub fn generate() -> Result<Ca> {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let mut params = ca_params(&format!("capstan-ca@{secs}"))?;
        validity(&mut params, CA_VALIDITY);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok(Ca {
            cert_pem: cert.pem(),
            key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// A CA from its certificate and key (PEM).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca> {
        let der = tls::certs(cert_pem)?
            .into_iter()
            .next()
            .ok_or_else(|| Error::Invalid("no certificate in the CA file".into()))?;
        let subject = der::subject(&der)
            .ok_or_else(|| Error::Invalid("the CA certificate's subject is unreadable".into()))?;
        let key = KeyPair::from_pem(key_pem)?;
        Ok(Ca {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            issuer: Issuer::new(ca_params(&subject.common_name)?, key),
        })
    }

    /// The CA in `dir` (`ca.crt`, `ca.key`), made and written there first when absent.
    pub fn load_or_create(dir: &Path) -> Result<Ca> {
        if let Some(files) = Issued::read(dir, "ca")? {
            return Ca::from_pem(&files.cert_pem, &files.key_pem);
        }
        let ca = Ca::generate()?;
        ca.files().write(dir, "ca")?;
        Ok(ca)
    }

    /// The CA's certificate and key.
    pub fn files(&self) -> Issued {
        Issued {
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
        }
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A serving certificate for `names` (DNS names and IP addresses).
    pub fn serving(&self, common_name: &str, names: &[String]) -> Result<Issued> {
        let mut params = CertificateParams::new(names.to_vec())?;
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate for `user` in `groups` (CN and O, as Kubernetes reads them; at
    /// most one group — certificates made elsewhere may name several, and all are read).
    pub fn client(&self, user: &str, groups: &[&str]) -> Result<Issued> {
        if user.is_empty() {
            return Err(Error::Invalid("a client certificate needs a user".into()));
        }
        if groups.len() > 1 {
            // rcgen keeps one value per attribute type in a subject.
            return Err(Error::Invalid(format!(
                "a client certificate made here names at most one group (O), not {groups:?}: grant the others through RBAC bindings to the user"
            )));
        }
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, user);
        for g in groups {
            params.distinguished_name.push(DnType::OrganizationName, *g);
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    /// A certificate for the key of a signing request, naming what it asks for (CN, at most
    /// one O, DNS and IP SANs) for `usage`, valid for `lasts`. What a request may ask of a
    /// signer is the signer's to check first.
    pub fn sign_request(
        &self,
        req: &csr::Request,
        usage: Usage,
        lasts: Duration,
    ) -> Result<String> {
        if req.subject.organizations.len() > 1 {
            return Err(Error::Invalid(format!(
                "a certificate issued here names at most one organization, not {:?}",
                req.subject.organizations
            )));
        }
        let mut params = CertificateParams::new(req.dns_names.clone())?;
        params.subject_alt_names.extend(
            req.ip_addresses
                .iter()
                .map(|ip| rcgen::SanType::IpAddress(*ip)),
        );
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, req.subject.common_name.as_str());
        for o in &req.subject.organizations {
            params
                .distinguished_name
                .push(DnType::OrganizationName, o.as_str());
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![match usage {
            Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
            Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
        }];
        validity(&mut params, lasts);
        params.use_authority_key_identifier_extension = true;
        Ok(params.signed_by(&req.key, &self.issuer)?.pem())
    }

    fn sign(&self, mut params: CertificateParams) -> Result<Issued> {
        validity(&mut params, LEAF_VALIDITY);
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The serving certificate `NAME.{crt,key}` in `dir`, issued again when it is missing, was
    /// made for other names (`NAME.names` lists them), or expires within [`RENEW_BEFORE`].
    pub fn ensure_serving(&self, dir: &Path, name: &str, names: &[String]) -> Result<Issued> {
        let listed = dir.join(format!("{name}.names"));
        let want = names.join("\n");
        if let Some(files) = Issued::read(dir, name)?
            && std::fs::read_to_string(&listed).is_ok_and(|l| l == want)
            && !self.stale(&files)
        {
            return Ok(files);
        }
        let issued = self.serving(name, names)?;
        issued.write(dir, name)?;
        write_file(&listed, &want, 0o644)?;
        Ok(issued)
    }

    /// The client certificate `FILE.{crt,key}` in `dir` for `user` in `groups`, issued again
    /// when missing, for another identity, signed by another CA, or near expiry.
    pub fn ensure_client(
        &self,
        dir: &Path,
        file: &str,
        user: &str,
        groups: &[&str],
    ) -> Result<Issued> {
        if let Some(files) = Issued::read(dir, file)?
            && !self.stale(&files)
            && let Some(der) = tls::certs(&files.cert_pem)?.into_iter().next()
            && der::subject(&der)
                .is_some_and(|s| s.common_name == user && s.organizations.iter().eq(groups.iter()))
        {
            return Ok(files);
        }
        let issued = self.client(user, groups)?;
        issued.write(dir, file)?;
        Ok(issued)
    }

    /// Whether `files` was not signed by this CA or expires soon.
    fn stale(&self, files: &Issued) -> bool {
        let Ok(Some(der)) = tls::certs(&files.cert_pem).map(|c| c.into_iter().next()) else {
            return true;
        };
        let issued_here = tls::verifies(&self.cert_pem, &der);
        let fresh =
            der::not_after(&der).is_some_and(|t| t > std::time::SystemTime::now() + RENEW_BEFORE);
        !(issued_here && fresh)
    }
}

/// Writes `text` to `path` with `mode` (through a temporary file and a rename: a crash never
/// leaves half a key).
pub fn write_file(path: &Path, text: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Reads a PEM file.
pub fn read_file(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_certificate_names_its_user_and_groups() {
        let ca = Ca::generate().unwrap();
        let c = ca.client("jane", &["dev"]).unwrap();
        let der = tls::certs(&c.cert_pem).unwrap().remove(0);
        let s = der::subject(&der).unwrap();
        assert_eq!(s.common_name, "jane");
        assert_eq!(s.organizations, vec!["dev"]);
        assert!(ca.client("jane", &["dev", "ops"]).is_err());
        assert!(ca.client("", &[]).is_err());
        assert!(tls::verifies(ca.cert_pem(), &der));
        let other = Ca::generate().unwrap();
        assert!(!tls::verifies(other.cert_pem(), &der));
    }

    #[test]
    fn a_ca_is_kept_and_reused_and_certificates_are_reissued_only_when_needed() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path()).unwrap();
        let again = Ca::load_or_create(dir.path()).unwrap();
        assert_eq!(ca.cert_pem(), again.cert_pem());
        // A certificate the reloaded CA signs verifies against the first one's certificate.
        let c = again.client("u", &[]).unwrap();
        let der = tls::certs(&c.cert_pem).unwrap().remove(0);
        assert!(tls::verifies(ca.cert_pem(), &der));

        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let s1 = ca.ensure_serving(dir.path(), "apiserver", &names).unwrap();
        let s2 = ca.ensure_serving(dir.path(), "apiserver", &names).unwrap();
        assert_eq!(s1.cert_pem, s2.cert_pem, "same names: reused");
        let more = vec!["localhost".to_string(), "10.0.0.1".to_string()];
        let s3 = ca.ensure_serving(dir.path(), "apiserver", &more).unwrap();
        assert_ne!(s1.cert_pem, s3.cert_pem, "other names: issued again");

        let a1 = ca.ensure_client(dir.path(), "admin", "a", &["g"]).unwrap();
        let a2 = ca.ensure_client(dir.path(), "admin", "a", &["g"]).unwrap();
        assert_eq!(a1.cert_pem, a2.cert_pem);
        let a3 = ca.ensure_client(dir.path(), "admin", "b", &["g"]).unwrap();
        assert_ne!(a1.cert_pem, a3.cert_pem);
        // Another CA's files are replaced.
        let other = Ca::generate().unwrap();
        let a4 = other
            .ensure_client(dir.path(), "admin", "b", &["g"])
            .unwrap();
        assert_ne!(a3.cert_pem, a4.cert_pem);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join("admin.key"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }
}
