//! Signed JSON Web Tokens (compact JWS, ES256 on ring), the form of Kubernetes' ServiceAccount
//! tokens. [`SigningKey`] signs claims; [`Verifier`] checks a token's signature and hands back
//! its claims — what the claims must say (issuer, audience, expiry, the bound objects) is the
//! caller's to judge. The key id (`kid`) is the unpadded base64url SHA-256 of the public key's
//! SubjectPublicKeyInfo, as kube-apiserver computes it, so a verifier with several keys finds
//! the right one at once.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _,
    UnparsedPublicKey,
};
use serde_json::Value;

use crate::{Error, Result};

/// The DER prefix of a P-256 public key's SubjectPublicKeyInfo (id-ecPublicKey, prime256v1,
/// then the 65-byte uncompressed point as a BIT STRING).
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// Longest token looked at: anything larger is refused before decoding.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// The key that signs tokens (an ECDSA P-256 key in a PKCS#8 PEM file).
pub struct SigningKey {
    pair: EcdsaKeyPair,
    kid: String,
    rng: SystemRandom,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

fn key_id(point: &[u8]) -> String {
    let mut spki = P256_SPKI_PREFIX.to_vec();
    spki.extend_from_slice(point);
    URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, &spki))
}

impl SigningKey {
    /// A new key as PKCS#8 PEM.
    pub fn generate_pem() -> Result<String> {
        Ok(rcgen::KeyPair::generate()?.serialize_pem())
    }

    /// The key in a PKCS#8 PEM text.
    pub fn from_pem(pem: &str) -> Result<SigningKey> {
        let der = match crate::tls::private_key(pem)? {
            rustls::pki_types::PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
            _ => {
                return Err(Error::Invalid(
                    "the service-account signing key must be an ECDSA P-256 key in PKCS#8 PEM"
                        .into(),
                ));
            }
        };
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng)
            .map_err(|e| Error::Invalid(format!("the service-account signing key: {e}")))?;
        let kid = key_id(pair.public_key().as_ref());
        Ok(SigningKey { pair, kid, rng })
    }

    /// The key in `path`, made (mode 0600) when missing: reused on every start, so tokens
    /// issued before a restart stay valid.
    pub fn load_or_create(path: &Path) -> Result<SigningKey> {
        if !path.exists() {
            crate::write_file(path, &Self::generate_pem()?, 0o600)?;
        }
        Self::from_pem(&crate::read_file(path)?)
    }

    /// The key id tokens carry in their header.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// A verifier for the tokens this key signs.
    pub fn verifier(&self) -> Verifier {
        Verifier {
            keys: vec![(self.kid.clone(), self.pair.public_key().as_ref().to_vec())],
        }
    }

    /// `claims` signed: `header.payload.signature`, each unpadded base64url.
    pub fn sign(&self, claims: &Value) -> Result<String> {
        let header = serde_json::json!({"alg": "ES256", "kid": self.kid});
        let mut token = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = self
            .pair
            .sign(&self.rng, token.as_bytes())
            .map_err(|e| Error::Invalid(format!("signing a token: {e}")))?;
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(sig.as_ref()));
        Ok(token)
    }
}

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url parts with a JSON header and payload: not a JWT at all (another
    /// authenticator may know it).
    #[error("not a JWT")]
    Malformed,
    /// A JWT, but not ES256 or not signed by any key known here.
    #[error("invalid signature")]
    Signature,
}

/// The public keys tokens are checked against.
#[derive(Debug, Clone, Default)]
pub struct Verifier {
    keys: Vec<(String, Vec<u8>)>,
}

impl Verifier {
    /// The token's claims when its signature is one of the known keys'.
    pub fn verify(&self, token: &str) -> Result<Value, JwtError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(JwtError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let decode = |part: &str| {
            URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| JwtError::Malformed)
        };
        let header: Value = serde_json::from_slice(&decode(h)?).map_err(|_| JwtError::Malformed)?;
        let claims: Value = serde_json::from_slice(&decode(p)?).map_err(|_| JwtError::Malformed)?;
        if !header.is_object() || !claims.is_object() {
            return Err(JwtError::Malformed);
        }
        if header["alg"] != "ES256" {
            return Err(JwtError::Signature);
        }
        let sig = decode(s)?;
        let signed = &token.as_bytes()[..h.len() + 1 + p.len()];
        let kid = header["kid"].as_str();
        let ok = self
            .keys
            .iter()
            .filter(|(id, _)| kid.is_none_or(|k| k == id))
            .any(|(_, key)| {
                UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, key)
                    .verify(signed, &sig)
                    .is_ok()
            });
        if ok {
            Ok(claims)
        } else {
            Err(JwtError::Signature)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_signed_token_verifies_and_any_change_does_not() {
        let key = SigningKey::from_pem(&SigningKey::generate_pem().unwrap()).unwrap();
        let claims = json!({"sub": "system:serviceaccount:ns:sa", "exp": 42});
        let token = key.sign(&claims).unwrap();
        let v = key.verifier();
        assert_eq!(v.verify(&token).unwrap(), claims);
        // Header names the key by the hash of its public key.
        let header: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(token.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(header["kid"], key.kid());
        assert_eq!(key.kid().len(), 43);

        // Another key's verifier refuses it; so does one with the payload swapped.
        let other = SigningKey::from_pem(&SigningKey::generate_pem().unwrap()).unwrap();
        assert_eq!(other.verifier().verify(&token), Err(JwtError::Signature));
        let forged_payload = URL_SAFE_NO_PAD.encode(json!({"sub": "system:admin"}).to_string());
        let mut parts: Vec<&str> = token.split('.').collect();
        parts[1] = &forged_payload;
        assert_eq!(v.verify(&parts.join(".")), Err(JwtError::Signature));
        // alg "none" is never accepted.
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        assert_eq!(v.verify(&none), Err(JwtError::Signature));
        for bad in ["", "a.b", "a.b.c.d", "!!.e30.e30", "e30.e30", "W10.W10.AA"] {
            assert_eq!(v.verify(bad), Err(JwtError::Malformed), "{bad}");
        }
    }

    #[test]
    fn a_key_is_kept_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sa.key");
        let a = SigningKey::load_or_create(&path).unwrap();
        let b = SigningKey::load_or_create(&path).unwrap();
        assert_eq!(a.kid(), b.kid());
        let token = a.sign(&json!({"x": 1})).unwrap();
        assert!(b.verifier().verify(&token).is_ok());
        assert!(SigningKey::from_pem("not a key").is_err());
    }

    #[test]
    fn fuzzed_tokens_never_panic() {
        let key = SigningKey::from_pem(&SigningKey::generate_pem().unwrap()).unwrap();
        let v = key.verifier();
        let good = key.sign(&json!({"a": 1})).unwrap().into_bytes();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..5_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut t = good.clone();
            let i = (seed as usize) % t.len();
            t[i] = (seed >> 32) as u8;
            t.truncate(((seed >> 16) as usize) % (good.len() + 1));
            if let Ok(s) = std::str::from_utf8(&t) {
                let _ = v.verify(s);
            }
        }
    }
}
