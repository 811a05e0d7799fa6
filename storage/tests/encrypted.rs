//! Encryption at rest over the embedded store and a real etcd: the conformance suite through
//! the decorator (every key encrypted), ciphertext underneath, a value moved to another key
//! refused, and key rotation by re-encryption with no write lost.

use std::sync::Arc;

use bytes::Bytes;
use capstan_storage::embedded::{EmbeddedOptions, EmbeddedStore};
use capstan_storage::encrypted::{Encrypted, EncryptionConfig, Key};
use capstan_storage::{Event, Storage};

const K1: &[u8; 32] = b"0123456789abcdef0123456789abcdef";
const K2: &[u8; 16] = b"fedcba9876543210";

fn config(prefixes: &[&str], keys: &[(&str, &[u8])]) -> EncryptionConfig {
    EncryptionConfig {
        prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
        keys: keys.iter().map(|(n, k)| Key::new(n, k).unwrap()).collect(),
    }
}

async fn embedded() -> (Arc<dyn Storage>, tempfile::TempDir) {
    let dir = capstan_testkit::temp_dir("capstan-encrypted-").unwrap();
    let mut opts = EmbeddedOptions::new(dir.path());
    opts.compaction = None;
    // Room for the envelope: the decorator holds plaintext to the usual limit.
    opts.max_value_bytes += capstan_storage::encrypted::OVERHEAD;
    let store: Arc<dyn Storage> = EmbeddedStore::open(opts).await.unwrap();
    (store, dir)
}

async fn fresh() -> (Arc<dyn Storage>, tempfile::TempDir) {
    let (inner, dir) = embedded().await;
    let store: Arc<dyn Storage> = Encrypted::wrap(inner, config(&[""], &[("k1", K1)])).unwrap();
    (store, dir)
}

capstan_storage::conformance_tests!(fresh());

#[test]
fn keys_are_aes_128_or_256_with_plain_names() {
    assert!(Key::new("k", &[0; 16]).is_ok());
    assert!(Key::new("k", &[0; 32]).is_ok());
    assert!(
        Key::new("k", &[0; 24])
            .unwrap_err()
            .contains("16 or 32 bytes")
    );
    assert!(Key::new("a:b", &[0; 16]).is_err());
    assert!(Key::new("", &[0; 16]).is_err());
}

async fn ciphertext_underneath_and_rotation(inner: Arc<dyn Storage>) {
    let store = Encrypted::wrap(inner.clone(), config(&["secrets/"], &[("k1", K1)])).unwrap();
    let mut watch = store.watch("secrets/", 0).await.unwrap();
    store
        .create(
            "secrets/default/s1",
            Bytes::from_static(b"{\"data\":\"hunter2\"}"),
        )
        .await
        .unwrap();
    store
        .create(
            "configmaps/default/c1",
            Bytes::from_static(b"{\"plain\":true}"),
        )
        .await
        .unwrap();
    // Through the decorator: plaintext, in reads, lists and watch events.
    assert_eq!(
        store
            .get("secrets/default/s1")
            .await
            .unwrap()
            .unwrap()
            .value,
        "{\"data\":\"hunter2\"}"
    );
    let listed = store.list("secrets/", Default::default()).await.unwrap();
    assert_eq!(listed.items[0].value, "{\"data\":\"hunter2\"}");
    match capstan_storage::conformance::next_event(&mut watch).await {
        Event::Put { kv, .. } => assert_eq!(kv.value, "{\"data\":\"hunter2\"}"),
        other => panic!("{other:?}"),
    }
    // Underneath: the envelope and no plaintext; other prefixes untouched.
    let raw = inner
        .get("secrets/default/s1")
        .await
        .unwrap()
        .unwrap()
        .value;
    assert!(raw.starts_with(b"k8s:enc:aesgcm:v1:k1:"), "{raw:?}");
    assert!(!raw.windows(7).any(|w| w == b"hunter2"));
    assert_eq!(
        inner
            .get("configmaps/default/c1")
            .await
            .unwrap()
            .unwrap()
            .value,
        "{\"plain\":true}"
    );
    // A value written before encryption reads as it is.
    inner
        .create(
            "secrets/default/old",
            Bytes::from_static(b"{\"data\":\"legacy\"}"),
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .get("secrets/default/old")
            .await
            .unwrap()
            .unwrap()
            .value,
        "{\"data\":\"legacy\"}"
    );
    // Ciphertext copied under another key does not decrypt.
    inner
        .create("secrets/default/moved", raw.clone())
        .await
        .unwrap();
    let e = store.get("secrets/default/moved").await.unwrap_err();
    assert!(e.to_string().contains("does not decrypt"), "{e}");
    inner.delete("secrets/default/moved", None).await.unwrap();

    // Rotation: k2 first; re-encryption rewrites both values (the legacy one too).
    let rotated = Encrypted::wrap(
        inner.clone(),
        config(&["secrets/"], &[("k2", K2), ("k1", K1)]),
    )
    .unwrap();
    assert_eq!(rotated.reencrypt().await.unwrap(), 2);
    assert_eq!(
        rotated.reencrypt().await.unwrap(),
        0,
        "nothing left under k1"
    );
    let raw = inner
        .get("secrets/default/s1")
        .await
        .unwrap()
        .unwrap()
        .value;
    assert!(raw.starts_with(b"k8s:enc:aesgcm:v1:k2:"), "{raw:?}");
    // k1 can go now; without k2 the values cannot be read, and say why.
    let only_k2 = Encrypted::wrap(inner.clone(), config(&["secrets/"], &[("k2", K2)])).unwrap();
    assert_eq!(
        only_k2
            .get("secrets/default/old")
            .await
            .unwrap()
            .unwrap()
            .value,
        "{\"data\":\"legacy\"}"
    );
    let only_k1 = Encrypted::wrap(inner.clone(), config(&["secrets/"], &[("k1", K1)])).unwrap();
    let e = only_k1.get("secrets/default/s1").await.unwrap_err();
    assert!(
        e.to_string()
            .contains("key \"k2\", which is not configured"),
        "{e}"
    );
}

#[tokio::test]
async fn embedded_holds_ciphertext_and_keys_rotate() {
    let (inner, _dir) = embedded().await;
    ciphertext_underneath_and_rotation(inner).await;
}

#[tokio::test]
async fn etcd_holds_ciphertext_and_keys_rotate() {
    let etcd = capstan_testkit::EtcdProcess::start().unwrap();
    let inner: Arc<dyn Storage> = Arc::new(
        capstan_storage::etcd::EtcdStore::connect(capstan_storage::etcd::EtcdOptions::new(vec![
            etcd.endpoint.clone(),
        ]))
        .await
        .unwrap(),
    );
    ciphertext_underneath_and_rotation(inner).await;
}
