//! Encryption at rest, as a decorator over any backend: values under the configured prefixes
//! (`secrets/`) are written AES-GCM encrypted — `k8s:enc:aesgcm:v1:KEYNAME:` then a random
//! 12-byte nonce, the ciphertext and the tag, with the storage key as associated data (a value
//! copied under another key does not decrypt), the envelope kube-apiserver's aesgcm provider
//! writes — and decrypted on every read, list and watch event. So `capstan store get` and
//! `etcdctl get` show ciphertext while the API serves plaintext.
//!
//! The first key encrypts; every key listed decrypts; values written before encryption was
//! enabled (no envelope) are read as they are. [`Encrypted::reencrypt`] rewrites every value
//! not under the first key (compare-and-swap at the revision read, so a concurrent write wins
//! and is not lost): `capstan up` runs it at start, which makes rotation "put the new key
//! first, restart, then drop the old key".

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use ring::aead::{AES_128_GCM, AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::{
    Defragmented, Event, KeyValue, ListOptions, ListResult, Result, Revision, Storage,
    StorageError, WatchStream,
};

const ENVELOPE: &[u8] = b"k8s:enc:aesgcm:v1:";

fn failure(message: impl Into<String>) -> StorageError {
    StorageError::Internal {
        message: message.into(),
        source: None,
    }
}

/// One named AES-GCM key.
pub struct Key {
    pub name: String,
    cipher: LessSafeKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Key {
    /// A key from its name and 16 or 32 bytes (AES-128 or AES-256).
    pub fn new(name: &str, secret: &[u8]) -> std::result::Result<Key, String> {
        if name.is_empty() || name.contains(':') {
            return Err(format!(
                "key name {name:?}: must be non-empty and without ':'"
            ));
        }
        let alg = match secret.len() {
            16 => &AES_128_GCM,
            32 => &AES_256_GCM,
            n => {
                return Err(format!(
                    "key {name:?}: {n} bytes; AES-GCM keys are 16 or 32 bytes"
                ));
            }
        };
        let unbound = UnboundKey::new(alg, secret)
            .map_err(|_| format!("key {name:?}: rejected by AES-GCM"))?;
        Ok(Key {
            name: name.to_string(),
            cipher: LessSafeKey::new(unbound),
        })
    }
}

/// What to encrypt and with which keys (the first encrypts).
#[derive(Debug)]
pub struct EncryptionConfig {
    /// Store prefixes whose values are encrypted (`secrets/`).
    pub prefixes: Vec<String>,
    pub keys: Vec<Key>,
}

/// The decorator ([`Encrypted::wrap`]).
#[derive(Debug)]
pub struct Encrypted {
    inner: Arc<dyn Storage>,
    codec: Arc<Codec>,
    /// Plaintext values larger than this are refused (the backend's default limit).
    max_value_bytes: usize,
}

/// What the envelope adds to a value at most: the prefix, a key name of up to 64 bytes, the
/// nonce and the tag.
pub const OVERHEAD: usize = ENVELOPE.len() + 64 + 1 + NONCE_LEN + 16;

/// Sealing and opening values (shared with watch streams).
#[derive(Debug)]
struct Codec {
    config: EncryptionConfig,
    rng: SystemRandom,
}

impl Encrypted {
    /// `store` with values under `config.prefixes` encrypted at rest.
    pub fn wrap(
        store: Arc<dyn Storage>,
        config: EncryptionConfig,
    ) -> std::result::Result<Arc<Encrypted>, String> {
        if config.keys.is_empty() {
            return Err("encryption at rest needs at least one key".into());
        }
        if config.keys.iter().any(|k| k.name.len() > 64) {
            return Err("encryption key names are at most 64 bytes".into());
        }
        Ok(Arc::new(Encrypted {
            inner: store,
            max_value_bytes: crate::DEFAULT_MAX_VALUE_BYTES,
            codec: Arc::new(Codec {
                config,
                rng: SystemRandom::new(),
            }),
        }))
    }

    fn seal(&self, key: &str, value: Bytes) -> Result<Bytes> {
        // The limit is the plaintext's, as without encryption (the inner store must allow
        // the envelope on top: [`OVERHEAD`] bytes).
        if self.codec.covers(key) && value.len() > self.max_value_bytes {
            return Err(StorageError::TooLarge {
                key: key.to_string(),
                size: value.len(),
                limit: self.max_value_bytes,
            });
        }
        self.codec.seal(key, value)
    }

    /// A conflict names the live version: decrypted, as every read.
    fn open_error(&self, e: StorageError) -> StorageError {
        match e {
            StorageError::Conflict {
                key,
                expected,
                current: Some(kv),
            } => match self.open_kv(*kv) {
                Ok(kv) => StorageError::Conflict {
                    key,
                    expected,
                    current: Some(Box::new(kv)),
                },
                Err(e) => e,
            },
            other => other,
        }
    }

    fn open_kv(&self, kv: KeyValue) -> Result<KeyValue> {
        self.codec.open_kv(kv)
    }
}

impl Codec {
    fn covers(&self, key: &str) -> bool {
        self.config
            .prefixes
            .iter()
            .any(|p| key.starts_with(p.as_str()))
    }

    fn seal(&self, key: &str, value: Bytes) -> Result<Bytes> {
        if !self.covers(key) {
            return Ok(value);
        }
        let k = &self.config.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| failure("no randomness for a nonce"))?;
        let mut sealed = value.to_vec();
        k.cipher
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| failure("encrypting a value failed"))?;
        let mut out =
            Vec::with_capacity(ENVELOPE.len() + k.name.len() + 1 + NONCE_LEN + sealed.len());
        out.extend_from_slice(ENVELOPE);
        out.extend_from_slice(k.name.as_bytes());
        out.push(b':');
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(Bytes::from(out))
    }

    /// The plaintext of a stored value and the name of the key it was under (None: not
    /// encrypted).
    fn open(&self, key: &str, value: &Bytes) -> Result<(Bytes, Option<&str>)> {
        let Some(rest) = value.strip_prefix(ENVELOPE) else {
            return Ok((value.clone(), None));
        };
        let bad = |why: &str| failure(format!("{key}: {why}"));
        let colon = rest
            .iter()
            .position(|b| *b == b':')
            .ok_or_else(|| bad("a malformed encryption envelope"))?;
        let name = std::str::from_utf8(&rest[..colon]).map_err(|_| bad("a malformed key name"))?;
        let k = self
            .config
            .keys
            .iter()
            .find(|k| k.name == name)
            .ok_or_else(|| {
                bad(&format!(
                    "encrypted with key {name:?}, which is not configured"
                ))
            })?;
        let body = &rest[colon + 1..];
        if body.len() < NONCE_LEN {
            return Err(bad("a truncated encrypted value"));
        }
        let (nonce, sealed) = body.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| bad("a malformed nonce"))?;
        let mut buf = sealed.to_vec();
        let plain = k
            .cipher
            .open_in_place(nonce, Aad::from(key.as_bytes()), &mut buf)
            .map_err(|_| bad(&format!("the value does not decrypt with key {name:?}")))?;
        let n = plain.len();
        buf.truncate(n);
        Ok((Bytes::from(buf), Some(k.name.as_str())))
    }

    fn open_kv(&self, mut kv: KeyValue) -> Result<KeyValue> {
        kv.value = self.open(&kv.key, &kv.value)?.0;
        Ok(kv)
    }
}

impl Encrypted {
    /// Rewrites every value under the configured prefixes that is not under the first key
    /// (plaintext, or an older key); returns how many. A value changed meanwhile is left to its
    /// writer (who wrote it under the first key).
    pub async fn reencrypt(&self) -> Result<usize> {
        let primary = self.codec.config.keys[0].name.as_str();
        let mut done = 0;
        for prefix in &self.codec.config.prefixes {
            let mut opts = ListOptions {
                limit: Some(500),
                ..Default::default()
            };
            loop {
                let page = self.inner.list(prefix, opts.clone()).await?;
                for kv in &page.items {
                    let (plain, under) = self.codec.open(&kv.key, &kv.value)?;
                    if under == Some(primary) {
                        continue;
                    }
                    let sealed = self.seal(&kv.key, plain)?;
                    match self.inner.update(&kv.key, sealed, kv.mod_revision).await {
                        Ok(_) => done += 1,
                        Err(StorageError::Conflict { .. } | StorageError::NotFound { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                if !page.more {
                    break;
                }
                opts.revision = Some(page.revision);
                opts.start_after = page.items.last().map(|kv| kv.key.clone());
            }
        }
        Ok(done)
    }
}

#[async_trait]
impl Storage for Encrypted {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.inner
            .get(key)
            .await?
            .map(|kv| self.open_kv(kv))
            .transpose()
    }
    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult> {
        let mut page = self.inner.list(prefix, opts).await?;
        page.items = page
            .items
            .into_iter()
            .map(|kv| self.open_kv(kv))
            .collect::<Result<_>>()?;
        Ok(page)
    }
    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue> {
        let sealed = self.seal(key, value.clone())?;
        match self.inner.create(key, sealed).await {
            Ok(stored) => Ok(KeyValue { value, ..stored }),
            Err(e) => Err(self.open_error(e)),
        }
    }
    async fn update(&self, key: &str, value: Bytes, expected: Revision) -> Result<KeyValue> {
        let sealed = self.seal(key, value.clone())?;
        match self.inner.update(key, sealed, expected).await {
            Ok(stored) => Ok(KeyValue { value, ..stored }),
            Err(e) => Err(self.open_error(e)),
        }
    }
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<(KeyValue, Revision)> {
        match self.inner.delete(key, expected).await {
            Ok((prev, rev)) => Ok((self.open_kv(prev)?, rev)),
            Err(e) => Err(self.open_error(e)),
        }
    }
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        let stream = self.inner.watch(prefix, after).await?;
        let me = self.codec.clone();
        Ok(Box::pin(stream.map(move |item| {
            item.and_then(|e| match e {
                Event::Put { kv, prev } => Ok(Event::Put {
                    kv: me.open_kv(kv)?,
                    prev: prev.map(|p| me.open_kv(p)).transpose()?,
                }),
                Event::Delete { prev, revision } => Ok(Event::Delete {
                    prev: me.open_kv(prev)?,
                    revision,
                }),
                p @ Event::Progress { .. } => Ok(p),
            })
        })))
    }
    async fn current_revision(&self) -> Result<Revision> {
        self.inner.current_revision().await
    }
    async fn compact(&self, revision: Revision) -> Result<()> {
        self.inner.compact(revision).await
    }
    async fn compacted_revision(&self) -> Result<Revision> {
        self.inner.compacted_revision().await
    }
    async fn defragment(&self) -> Result<Vec<Defragmented>> {
        self.inner.defragment().await
    }
    fn revision_hint(&self) -> Option<Revision> {
        self.inner.revision_hint()
    }
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
}
