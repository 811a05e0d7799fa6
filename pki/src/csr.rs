//! Certificate signing requests (PKCS#10), as certificates.k8s.io carries them: a joining
//! agent makes one for its key ([`make`]); the signer reads it back — subject, SANs, public
//! key — with its signature checked ([`parse`]), and the CA issues a certificate for that key
//! ([`crate::Ca::sign_request`]). Keys: ECDSA P-256/P-384, RSA (PKCS#1 v1.5, SHA-256) and
//! Ed25519. Any input is safe: a malformed request is an error, never a panic.

use std::net::IpAddr;

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SignatureAlgorithm};
use ring::signature;
use rustls::pki_types::CertificateSigningRequestDer;
use rustls::pki_types::pem::PemObject;

use crate::der::{CONTEXT_0, OID, SEQUENCE, SET, Subject, expect, name_of, tlv};
use crate::{Error, Result};

const BIT_STRING: u8 = 0x03;
const INTEGER: u8 = 0x02;
const OCTET_STRING: u8 = 0x04;
const EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const ED25519: &[u8] = &[0x2b, 0x65, 0x70];
const ECDSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
const ECDSA_SHA384: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
const RSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];
const EXTENSION_REQUEST: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x0e];
const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

/// A request's public key, in the form rcgen signs for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    alg: &'static SignatureAlgorithm,
    bytes: Vec<u8>,
}

impl rcgen::PublicKeyData for PublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.bytes
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

/// What a signing request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub subject: Subject,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    /// E-mail addresses or URIs among the SANs (no Kubernetes signer issues those here).
    pub other_names: bool,
    pub key: PublicKey,
}

fn bad(what: &str) -> Error {
    Error::Invalid(format!("not a valid certificate signing request: {what}"))
}

/// A new P-256 key and a request for a certificate naming `common_name` in `organization`
/// (at most one), with these SANs: (request PEM, key PEM).
pub fn make(
    common_name: &str,
    organization: Option<&str>,
    dns_names: &[String],
    ip_addresses: &[IpAddr],
) -> Result<(String, String)> {
    let mut params = CertificateParams::new(dns_names.to_vec())?;
    params
        .subject_alt_names
        .extend(ip_addresses.iter().map(|ip| rcgen::SanType::IpAddress(*ip)));
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    if let Some(o) = organization {
        params.distinguished_name.push(DnType::OrganizationName, o);
    }
    let key = KeyPair::generate()?;
    let csr = params.serialize_request(&key)?;
    Ok((csr.pem()?, key.serialize_pem()))
}

/// The request in `pem`, its signature checked against its own key.
pub fn parse(pem: &[u8]) -> Result<Request> {
    let der = CertificateSigningRequestDer::from_pem_slice(pem)
        .map_err(|_| bad("no PEM CERTIFICATE REQUEST block"))?;
    parse_der(der.as_ref())
}

/// As [`parse`], from DER.
pub fn parse_der(der: &[u8]) -> Result<Request> {
    let (outer, _) = expect(der, SEQUENCE).ok_or_else(|| bad("not a SEQUENCE"))?;
    let (tag, info, rest) = tlv(outer).ok_or_else(|| bad("no request info"))?;
    if tag != SEQUENCE {
        return Err(bad("no request info"));
    }
    let signed = &outer[..outer.len() - rest.len()];
    let (sig_alg, rest) = expect(rest, SEQUENCE).ok_or_else(|| bad("no signature algorithm"))?;
    let (sig_oid, _) = expect(sig_alg, OID).ok_or_else(|| bad("no signature algorithm"))?;
    let (sig, _) = expect(rest, BIT_STRING).ok_or_else(|| bad("no signature"))?;
    let sig = sig
        .split_first()
        .filter(|(unused, _)| **unused == 0)
        .map(|(_, s)| s)
        .ok_or_else(|| bad("a signature with unused bits"))?;

    let (_version, r) = expect(info, INTEGER).ok_or_else(|| bad("no version"))?;
    let (name, r) = expect(r, SEQUENCE).ok_or_else(|| bad("no subject"))?;
    let subject = name_of(name).ok_or_else(|| bad("a malformed subject"))?;
    let (spki, r) = expect(r, SEQUENCE).ok_or_else(|| bad("no public key"))?;
    let (key_alg, key_bits) = expect(spki, SEQUENCE).ok_or_else(|| bad("no key algorithm"))?;
    let (key_oid, params) = expect(key_alg, OID).ok_or_else(|| bad("no key algorithm"))?;
    let (bits, _) = expect(key_bits, BIT_STRING).ok_or_else(|| bad("no key bits"))?;
    let key_bytes = bits
        .split_first()
        .filter(|(unused, _)| **unused == 0)
        .map(|(_, k)| k.to_vec())
        .ok_or_else(|| bad("key bits with unused bits"))?;
    let curve = expect(params, OID).map(|(c, _)| c);
    let (alg, verify): (
        &'static SignatureAlgorithm,
        &'static dyn signature::VerificationAlgorithm,
    ) = match (key_oid, curve, sig_oid) {
        (EC_PUBLIC_KEY, Some(P256), ECDSA_SHA256) => (
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &signature::ECDSA_P256_SHA256_ASN1,
        ),
        (EC_PUBLIC_KEY, Some(P384), ECDSA_SHA384) => (
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &signature::ECDSA_P384_SHA384_ASN1,
        ),
        (RSA, _, RSA_SHA256) => (
            &rcgen::PKCS_RSA_SHA256,
            &signature::RSA_PKCS1_2048_8192_SHA256,
        ),
        (ED25519, _, ED25519) => (&rcgen::PKCS_ED25519, &signature::ED25519),
        _ => {
            return Err(bad(
                "an unsupported key or signature algorithm (ECDSA P-256/SHA-256, P-384/SHA-384, RSA/SHA-256 and Ed25519 are)",
            ));
        }
    };
    signature::UnparsedPublicKey::new(verify, &key_bytes)
        .verify(signed, sig)
        .map_err(|_| bad("its signature does not match its key"))?;

    let mut req = Request {
        subject,
        dns_names: Vec::new(),
        ip_addresses: Vec::new(),
        other_names: false,
        key: PublicKey {
            alg,
            bytes: key_bytes,
        },
    };
    if let Some((CONTEXT_0, mut attrs, _)) = tlv(r) {
        while !attrs.is_empty() {
            let (attr, rest) =
                expect(attrs, SEQUENCE).ok_or_else(|| bad("a malformed attribute"))?;
            attrs = rest;
            let (oid, values) = expect(attr, OID).ok_or_else(|| bad("a malformed attribute"))?;
            if oid == EXTENSION_REQUEST {
                let (set, _) =
                    expect(values, SET).ok_or_else(|| bad("a malformed extension request"))?;
                let (exts, _) =
                    expect(set, SEQUENCE).ok_or_else(|| bad("a malformed extension request"))?;
                read_extensions(exts, &mut req)?;
            }
        }
    }
    Ok(req)
}

fn read_extensions(mut exts: &[u8], req: &mut Request) -> Result<()> {
    while !exts.is_empty() {
        let (ext, rest) = expect(exts, SEQUENCE).ok_or_else(|| bad("a malformed extension"))?;
        exts = rest;
        let (oid, mut r) = expect(ext, OID).ok_or_else(|| bad("a malformed extension"))?;
        if let Some((0x01, _, after)) = tlv(r) {
            r = after; // critical
        }
        let (value, _) = expect(r, OCTET_STRING).ok_or_else(|| bad("a malformed extension"))?;
        if oid != SUBJECT_ALT_NAME {
            continue;
        }
        let (mut names, _) = expect(value, SEQUENCE).ok_or_else(|| bad("malformed SANs"))?;
        while !names.is_empty() {
            let (tag, v, rest) = tlv(names).ok_or_else(|| bad("malformed SANs"))?;
            names = rest;
            match tag {
                0x82 => req.dns_names.push(
                    std::str::from_utf8(v)
                        .map_err(|_| bad("a DNS name that is not text"))?
                        .to_string(),
                ),
                0x87 => req.ip_addresses.push(match v.len() {
                    4 => IpAddr::from(<[u8; 4]>::try_from(v).map_err(|_| bad("an IP SAN"))?),
                    16 => IpAddr::from(<[u8; 16]>::try_from(v).map_err(|_| bad("an IP SAN"))?),
                    _ => return Err(bad("an IP SAN of neither 4 nor 16 bytes")),
                }),
                _ => req.other_names = true,
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_reads_back_as_made() {
        let ips = ["10.0.0.7".parse().unwrap(), "fd00::7".parse().unwrap()];
        let (pem, key) = make(
            "system:node:n1",
            Some("system:nodes"),
            &["n1.example".into()],
            &ips,
        )
        .unwrap();
        assert!(key.contains("PRIVATE KEY"));
        let req = parse(pem.as_bytes()).unwrap();
        assert_eq!(req.subject.common_name, "system:node:n1");
        assert_eq!(req.subject.organizations, ["system:nodes"]);
        assert_eq!(req.dns_names, ["n1.example"]);
        assert_eq!(req.ip_addresses, ips);
        assert!(!req.other_names);
        let (pem, _) = make("alice", None, &[], &[]).unwrap();
        let req = parse(pem.as_bytes()).unwrap();
        assert!(req.subject.organizations.is_empty() && req.dns_names.is_empty());
    }

    #[test]
    fn a_tampered_or_foreign_request_is_refused() {
        let (pem, _) = make("system:node:n1", Some("system:nodes"), &[], &[]).unwrap();
        let der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes()).unwrap();
        let mut bytes = der.as_ref().to_vec();
        // Change one byte of the CN: the signature no longer matches.
        let at = bytes.windows(2).position(|w| w == b"n1").unwrap();
        bytes[at + 1] = b'2';
        let e = parse_der(&bytes).unwrap_err().to_string();
        assert!(e.contains("signature does not match"), "{e}");
        assert!(parse(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").is_err());
        assert!(parse(b"junk").is_err());
    }

    #[test]
    fn fuzzed_requests_never_panic() {
        let (pem, _) = make(
            "system:node:n1",
            Some("system:nodes"),
            &["a".into()],
            &["10.0.0.1".parse().unwrap()],
        )
        .unwrap();
        let good = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut b = good.clone();
            let i = (seed as usize) % b.len();
            b[i] ^= (seed >> 40) as u8 | 1;
            b.truncate(((seed >> 20) as usize) % (good.len() + 1));
            let _ = parse_der(&b);
        }
    }
}

#[cfg(test)]
mod signing {
    use super::*;

    #[test]
    fn the_ca_issues_for_the_requests_key_and_names() {
        let ca = crate::Ca::generate().unwrap();
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        let (pem, key) = make("system:node:n1", Some("system:nodes"), &[], &[ip]).unwrap();
        let req = parse(pem.as_bytes()).unwrap();
        let cert = ca
            .sign_request(
                &req,
                crate::Usage::Client,
                std::time::Duration::from_secs(3600),
            )
            .unwrap();
        let der = crate::tls::certs(&cert).unwrap().remove(0);
        assert!(crate::tls::verifies(ca.cert_pem(), &der));
        let subject = crate::der::subject(&der).unwrap();
        assert_eq!(subject.common_name, "system:node:n1");
        assert_eq!(subject.organizations, ["system:nodes"]);
        let left = crate::der::not_after(&der)
            .unwrap()
            .duration_since(std::time::SystemTime::now())
            .unwrap()
            .as_secs();
        assert!((3500..=3600).contains(&left), "{left}");
        // The certificate and the request's key make a working TLS identity.
        let id = crate::Issued {
            cert_pem: cert,
            key_pem: key,
        };
        crate::tls::client_config(ca.cert_pem(), Some(&id)).unwrap();
    }
}
