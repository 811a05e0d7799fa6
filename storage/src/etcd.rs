//! The etcd backend: a real etcd v3 cluster through `etcd-client`, keys under a prefix
//! (`/registry/` by default, as kube-apiserver writes them).
//!
//! - Writes are single transactions comparing `create_revision` (create) or `mod_revision`
//!   (update, delete) — kube-apiserver's GuaranteedUpdate shape — and read the live version in the
//!   failure branch, so a conflict reports what it lost to in the same round trip.
//! - Every unary call is bounded by `request_timeout` (2 s by default): etcd down means a typed
//!   [`StorageError::Unavailable`] quickly, never a hang or a panic. The gRPC channel reconnects by
//!   itself when etcd comes back; nothing needs restarting.
//! - A watch remembers the last revision it delivered and, when its stream breaks (etcd restarted,
//!   connection dropped), re-creates itself from the next revision: no event lost, none repeated.
//!   A watcher that fell behind etcd's compaction gets [`StorageError::Compacted`] and must relist.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, PutOptions,
    Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::mpsc;

use crate::{
    Defragmented, Event, KeyValue, ListOptions, ListResult, Result, Revision, Storage,
    StorageError, WatchStream, check_key, check_value, prefix_end,
};

/// The largest reply accepted from etcd (i32::MAX, as kube-apiserver sets it).
const MAX_REPLY_BYTES: usize = i32::MAX as usize;
/// Bound on defragmenting one member: etcd rewrites its whole database file meanwhile.
const DEFRAG_TIMEOUT: Duration = Duration::from_secs(300);

/// How to reach etcd.
#[derive(Clone, Debug)]
pub struct EtcdOptions {
    /// Client URLs, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Every key is stored under this prefix. Must end with '/'.
    pub prefix: String,
    /// Bound on every unary request (and on connecting).
    pub request_timeout: Duration,
    pub max_value_bytes: usize,
}

impl EtcdOptions {
    pub fn new(endpoints: Vec<String>) -> Self {
        EtcdOptions {
            endpoints,
            prefix: "/registry/".to_string(),
            request_timeout: Duration::from_secs(2),
            max_value_bytes: crate::DEFAULT_MAX_VALUE_BYTES,
        }
    }
}

/// The etcd-backed store.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    opts: EtcdOptions,
    /// Takes members that stop answering out of the client's balance (several endpoints).
    members: Option<std::sync::Arc<crate::etcd_members::MemberHealth>>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.opts.endpoints)
            .field("prefix", &self.opts.prefix)
            .finish()
    }
}

fn connect_options(opts: &EtcdOptions) -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(opts.request_timeout)
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(3))
        .with_keep_alive_while_idle(true)
}

/// Maps an etcd-client error to the storage error with the same meaning.
fn map_err(what: &str, e: etcd_client::Error) -> StorageError {
    use etcd_client::Error as E;
    match e {
        E::GRpcStatus(status) => {
            let msg = status.message();
            if msg.contains("required revision has been compacted") {
                // The revision is filled in by the caller, which knows what it asked for.
                StorageError::Compacted {
                    requested: 0,
                    compacted: 0,
                }
            } else if msg.contains("future revision") {
                StorageError::FutureRevision {
                    requested: 0,
                    current: 0,
                }
            } else if msg.contains("request is too large") {
                StorageError::TooLarge {
                    key: String::new(),
                    size: 0,
                    limit: 0,
                }
            } else {
                use tonic_code::*;
                match status.code() as i32 {
                    UNAVAILABLE | DEADLINE_EXCEEDED | CANCELLED | UNKNOWN | ABORTED => {
                        StorageError::Unavailable {
                            message: format!("etcd {what}: {msg}"),
                            source: Some(Box::new(status)),
                        }
                    }
                    _ => StorageError::internal(format!("etcd {what}: {msg}"), status),
                }
            }
        }
        E::TransportError(t) => StorageError::Unavailable {
            message: format!("etcd {what}: transport error: {t}"),
            source: Some(Box::new(t)),
        },
        E::IoError(io) => StorageError::Unavailable {
            message: format!("etcd {what}: {io}"),
            source: Some(Box::new(io)),
        },
        other => StorageError::internal(format!("etcd {what}"), other),
    }
}

/// gRPC status codes (tonic's `Code` as numbers, so this module needs no direct tonic dependency).
mod tonic_code {
    pub const CANCELLED: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const ABORTED: i32 = 10;
    pub const UNAVAILABLE: i32 = 14;
}

impl EtcdStore {
    /// How many of the given members are out of the client's balance now (not answering).
    pub fn members_out_of_balance(&self) -> usize {
        self.members.as_ref().map_or(0, |m| m.out())
    }

    /// Connects and checks that etcd answers within the request timeout.
    pub async fn connect(opts: EtcdOptions) -> Result<EtcdStore> {
        if opts.endpoints.is_empty() {
            return Err(StorageError::unavailable("no etcd endpoints given"));
        }
        if !opts.prefix.ends_with('/') {
            return Err(StorageError::InvalidKey {
                key: opts.prefix.clone(),
                reason: "the etcd key prefix must end with '/'",
            });
        }
        let client = tokio::time::timeout(
            opts.request_timeout,
            Client::connect(&opts.endpoints, Some(connect_options(&opts))),
        )
        .await
        .map_err(|_| {
            StorageError::unavailable(format!(
                "etcd at {} did not answer within {:?}",
                opts.endpoints.join(","),
                opts.request_timeout
            ))
        })?
        .map_err(|e| map_err("connect", e))?;
        let members =
            crate::etcd_members::spawn(client.clone(), &opts.endpoints, connect_options(&opts));
        let store = EtcdStore {
            client,
            opts,
            members,
        };
        store.current_revision().await.map_err(|e| match e {
            StorageError::Unavailable { message, source } => StorageError::Unavailable {
                message: format!(
                    "etcd at {} is not answering: {message}",
                    store.opts.endpoints.join(",")
                ),
                source,
            },
            other => other,
        })?;
        tracing::info!(endpoints = %store.opts.endpoints.join(","), prefix = %store.opts.prefix, "connected to etcd");
        Ok(store)
    }

    /// Defragments one member (`etcdctl defrag --endpoints URL`), reporting its database size
    /// before and after.
    async fn defragment_member(&self, endpoint: &str) -> Result<Defragmented> {
        let unavailable = |what: &str| {
            StorageError::unavailable(format!(
                "etcd defragment: {endpoint} did not {what} within {DEFRAG_TIMEOUT:?}"
            ))
        };
        let mut client = tokio::time::timeout(
            self.opts.request_timeout,
            Client::connect([endpoint], Some(connect_options(&self.opts))),
        )
        .await
        .map_err(|_| unavailable("answer"))?
        .map_err(|e| map_err("connect", e))?;
        let before = self.call("status", client.status()).await?.db_size();
        tokio::time::timeout(DEFRAG_TIMEOUT, client.defragment())
            .await
            .map_err(|_| unavailable("finish"))?
            .map_err(|e| map_err("defragment", e))?;
        let after = self.call("status", client.status()).await?.db_size();
        Ok(Defragmented {
            target: endpoint.to_string(),
            size_before: before.max(0) as u64,
            size_after: after.max(0) as u64,
        })
    }

    /// Replies can be far larger than gRPC's default 4 MiB (a list of 10,000 1 KiB objects is
    /// 10 MB); kube-apiserver lifts the limit on its etcd client the same way.
    fn kv(&self) -> etcd_client::KvClient {
        self.client
            .kv_client()
            .max_decoding_message_size(MAX_REPLY_BYTES)
    }

    fn watch_client(&self) -> etcd_client::WatchClient {
        self.client
            .watch_client()
            .max_decoding_message_size(MAX_REPLY_BYTES)
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.opts.prefix)
    }

    fn to_kv(&self, kv: &etcd_client::KeyValue) -> Result<KeyValue> {
        let key = kv
            .key_str()
            .map_err(|e| StorageError::internal("etcd returned a key that is not UTF-8", e))?;
        let key =
            key.strip_prefix(self.opts.prefix.as_str())
                .ok_or_else(|| StorageError::Internal {
                    message: format!(
                        "etcd returned key {key:?} outside prefix {}",
                        self.opts.prefix
                    ),
                    source: None,
                })?;
        Ok(KeyValue {
            key: key.to_string(),
            value: Bytes::copy_from_slice(kv.value()),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
        })
    }

    /// Runs one unary call bounded by the request timeout.
    async fn call<T>(
        &self,
        what: &'static str,
        fut: impl std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.opts.request_timeout, fut).await {
            Ok(r) => r.map_err(|e| map_err(what, e)),
            Err(_) => Err(StorageError::unavailable(format!(
                "etcd {what}: no answer within {:?} from {}",
                self.opts.request_timeout,
                self.opts.endpoints.join(",")
            ))),
        }
    }

    async fn txn(&self, what: &'static str, txn: Txn) -> Result<etcd_client::TxnResponse> {
        let mut kv = self.kv();
        self.call(what, kv.txn(txn)).await
    }

    /// The compaction point, as etcd reports it to a watch that starts before it.
    async fn probe_compacted(&self) -> Result<Revision> {
        let mut watch = self.watch_client();
        let key = self.full("");
        let opts = WatchOptions::new().with_start_revision(1);
        let mut stream = self.call("watch", watch.watch(key, Some(opts))).await?;
        for _ in 0..2 {
            let msg = self.call("watch", stream.message()).await?;
            match msg {
                Some(resp) if resp.compact_revision() > 0 => return Ok(resp.compact_revision()),
                Some(resp) if resp.canceled() => break,
                Some(resp) if !resp.events().is_empty() => break,
                Some(_) => continue,
                None => break,
            }
        }
        Ok(1)
    }

    fn compacted_error(&self, requested: Revision, compacted: Revision) -> StorageError {
        StorageError::Compacted {
            requested,
            compacted,
        }
    }

    async fn fill_compacted(&self, e: StorageError, requested: Revision) -> StorageError {
        match e {
            StorageError::Compacted { .. } => {
                let compacted = self.probe_compacted().await.unwrap_or(requested + 1);
                self.compacted_error(requested, compacted)
            }
            StorageError::FutureRevision { .. } => StorageError::FutureRevision {
                requested,
                current: self.current_revision().await.unwrap_or(0),
            },
            other => other,
        }
    }
}

#[async_trait]
impl Storage for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        check_key(key)?;
        let mut kv = self.kv();
        let resp = self.call("get", kv.get(self.full(key), None)).await?;
        resp.kvs().first().map(|k| self.to_kv(k)).transpose()
    }

    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult> {
        let full_prefix = self.full(prefix);
        let start = match &opts.start_after {
            // The smallest key after `after`.
            Some(after) if after.as_str() >= prefix => format!("{}{after}\0", self.opts.prefix),
            _ => full_prefix.clone(),
        };
        let end = prefix_end(full_prefix.as_bytes()).unwrap_or_else(|| vec![0]);
        let mut get = GetOptions::new().with_range(end);
        if let Some(limit) = opts.limit.filter(|l| *l > 0) {
            get = get.with_limit(limit as i64);
        }
        if let Some(rev) = opts.revision {
            get = get.with_revision(rev);
        }
        let mut kv = self.kv();
        let resp = match self.call("list", kv.get(start, Some(get))).await {
            Ok(r) => r,
            Err(e) => return Err(self.fill_compacted(e, opts.revision.unwrap_or(0)).await),
        };
        let items = resp
            .kvs()
            .iter()
            .map(|k| self.to_kv(k))
            .collect::<Result<Vec<_>>>()?;
        let revision = opts
            .revision
            .or_else(|| resp.header().map(|h| h.revision()))
            .unwrap_or(0);
        Ok(ListResult {
            items,
            revision,
            more: resp.more(),
        })
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue> {
        check_key(key)?;
        check_value(key, &value, self.opts.max_value_bytes)?;
        let full = self.full(key);
        let txn = Txn::new()
            .when([Compare::create_revision(full.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(full.as_str(), value.to_vec(), None)])
            .or_else([TxnOp::get(full.as_str(), None)]);
        let resp = self.txn("create", txn).await?;
        if !resp.succeeded() {
            return Err(StorageError::AlreadyExists {
                key: key.to_string(),
            });
        }
        let revision = resp.header().map_or(0, |h| h.revision());
        Ok(KeyValue {
            key: key.to_string(),
            value,
            create_revision: revision,
            mod_revision: revision,
        })
    }

    async fn update(&self, key: &str, value: Bytes, expected: Revision) -> Result<KeyValue> {
        check_key(key)?;
        check_value(key, &value, self.opts.max_value_bytes)?;
        let full = self.full(key);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                full.as_str(),
                CompareOp::Equal,
                expected,
            )])
            .and_then([TxnOp::put(
                full.as_str(),
                value.to_vec(),
                Some(PutOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(full.as_str(), None)]);
        let resp = self.txn("update", txn).await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        match resp.op_responses().into_iter().next() {
            Some(TxnOpResponse::Put(put)) if resp.succeeded() => {
                let create_revision = put.prev_key().map_or(revision, |p| p.create_revision());
                Ok(KeyValue {
                    key: key.to_string(),
                    value,
                    create_revision,
                    mod_revision: revision,
                })
            }
            Some(TxnOpResponse::Get(get)) => match get.kvs().first() {
                None => Err(StorageError::NotFound {
                    key: key.to_string(),
                }),
                Some(current) => Err(StorageError::Conflict {
                    key: key.to_string(),
                    expected,
                    current: Some(Box::new(self.to_kv(current)?)),
                }),
            },
            _ => Err(StorageError::Internal {
                message: format!("etcd update of {key:?}: unexpected transaction response"),
                source: None,
            }),
        }
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<(KeyValue, Revision)> {
        check_key(key)?;
        let full = self.full(key);
        let compares = match expected {
            Some(rev) => vec![Compare::mod_revision(full.as_str(), CompareOp::Equal, rev)],
            None => vec![Compare::create_revision(
                full.as_str(),
                CompareOp::Greater,
                0,
            )],
        };
        let txn = Txn::new()
            .when(compares)
            .and_then([TxnOp::delete(
                full.as_str(),
                Some(DeleteOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(full.as_str(), None)]);
        let resp = self.txn("delete", txn).await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        match resp.op_responses().into_iter().next() {
            Some(TxnOpResponse::Delete(del)) if resp.succeeded() => match del.prev_kvs().first() {
                Some(prev) => Ok((self.to_kv(prev)?, revision)),
                None => Err(StorageError::NotFound {
                    key: key.to_string(),
                }),
            },
            Some(TxnOpResponse::Get(get)) => match (get.kvs().first(), expected) {
                (None, _) => Err(StorageError::NotFound {
                    key: key.to_string(),
                }),
                (Some(current), Some(expected)) => Err(StorageError::Conflict {
                    key: key.to_string(),
                    expected,
                    current: Some(Box::new(self.to_kv(current)?)),
                }),
                (Some(_), None) => Err(StorageError::Internal {
                    message: format!("etcd delete of {key:?}: key exists but compare failed"),
                    source: None,
                }),
            },
            _ => Err(StorageError::Internal {
                message: format!("etcd delete of {key:?}: unexpected transaction response"),
                source: None,
            }),
        }
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        let full_prefix = self.full(prefix);
        let (tx, mut rx) = mpsc::channel(256);
        // Create the first etcd watch here, so an unreachable etcd fails the call itself.
        let first = self.open_watch(&full_prefix, after + 1).await?;
        tokio::spawn(watch_task(self.clone(), full_prefix, after, first, tx));
        Ok(Box::pin(futures_util::stream::poll_fn(move |cx| {
            rx.poll_recv(cx)
        })))
    }

    async fn current_revision(&self) -> Result<Revision> {
        let mut kv = self.kv();
        let opts = GetOptions::new().with_count_only();
        let resp = self
            .call("get revision", kv.get(self.full(""), Some(opts)))
            .await?;
        Ok(resp.header().map_or(0, |h| h.revision()))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let mut kv = self.kv();
        let opts = etcd_client::CompactionOptions::new().with_physical();
        match self.call("compact", kv.compact(revision, Some(opts))).await {
            Ok(_) => Ok(()),
            // At or before the current compaction point: already done.
            Err(StorageError::Compacted { .. }) => Ok(()),
            Err(e) => Err(self.fill_compacted(e, revision).await),
        }
    }

    async fn compacted_revision(&self) -> Result<Revision> {
        self.probe_compacted().await
    }

    /// Every endpoint in turn, as `etcdctl defrag` does with several `--endpoints`: each member
    /// keeps its own database file.
    async fn defragment(&self) -> Result<Vec<Defragmented>> {
        let mut done = Vec::with_capacity(self.opts.endpoints.len());
        for endpoint in &self.opts.endpoints {
            done.push(self.defragment_member(endpoint).await?);
        }
        Ok(done)
    }

    fn backend(&self) -> &'static str {
        "etcd"
    }
}

impl EtcdStore {
    async fn open_watch(
        &self,
        full_prefix: &str,
        start: Revision,
    ) -> Result<etcd_client::WatchStream> {
        let end = prefix_end(full_prefix.as_bytes()).unwrap_or_else(|| vec![0]);
        let opts = WatchOptions::new()
            .with_range(end)
            .with_start_revision(start)
            .with_prev_key()
            .with_progress_notify();
        let mut watch = self.watch_client();
        self.call("watch", watch.watch(full_prefix, Some(opts)))
            .await
    }
}

/// What one etcd watch response means for our watcher.
enum Step {
    Continue,
    /// The stream ended or broke: re-create it from the next revision.
    Reconnect(String),
    Stop,
}

async fn watch_task(
    store: EtcdStore,
    full_prefix: String,
    after: Revision,
    first: etcd_client::WatchStream,
    tx: mpsc::Sender<Result<Event>>,
) {
    let mut last = after; // last revision delivered (or known to hold no events for us)
    let mut stream = Some(first);
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(current) = stream.as_mut() else {
            // Re-create the watch, with capped backoff while etcd is away.
            tokio::select! {
                _ = tx.closed() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            match store.open_watch(&full_prefix, last + 1).await {
                Ok(s) => {
                    tracing::info!(prefix = %full_prefix, from = last + 1, "etcd watch re-established");
                    stream = Some(s);
                    backoff = Duration::from_millis(50);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "etcd watch still unavailable");
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
            continue;
        };
        let msg = tokio::select! {
            _ = tx.closed() => return,
            msg = current.message() => msg,
        };
        let step = match msg {
            Ok(Some(resp)) => handle(&store, &resp, &mut last, &tx).await,
            Ok(None) => Step::Reconnect("stream ended".into()),
            Err(e) => Step::Reconnect(e.to_string()),
        };
        match step {
            Step::Continue => {}
            Step::Stop => return,
            Step::Reconnect(why) => {
                tracing::warn!(prefix = %full_prefix, resume_from = last + 1, reason = %why, "etcd watch broke; resuming");
                stream = None;
            }
        }
    }
}

async fn handle(
    store: &EtcdStore,
    resp: &etcd_client::WatchResponse,
    last: &mut Revision,
    tx: &mpsc::Sender<Result<Event>>,
) -> Step {
    if resp.compact_revision() > 0 {
        let _ = tx
            .send(Err(store.compacted_error(*last, resp.compact_revision())))
            .await;
        return Step::Stop;
    }
    if resp.canceled() {
        return Step::Reconnect(format!("canceled by etcd: {}", resp.cancel_reason()));
    }
    if resp.created() {
        return Step::Continue;
    }
    if resp.events().is_empty() {
        // A progress notification: no events for us up to the header's revision.
        if let Some(rev) = resp.header().map(|h| h.revision()).filter(|r| *r > *last) {
            *last = rev;
            if tx
                .send(Ok(Event::Progress { revision: rev }))
                .await
                .is_err()
            {
                return Step::Stop;
            }
        }
        return Step::Continue;
    }
    for ev in resp.events() {
        let Some(kv) = ev.kv() else { continue };
        let revision = kv.mod_revision();
        if revision <= *last {
            continue; // already delivered before a reconnect
        }
        let event = match ev.event_type() {
            EventType::Put => store.to_kv(kv).and_then(|kv| {
                let prev = ev.prev_kv().map(|p| store.to_kv(p)).transpose()?;
                Ok(Event::Put { kv, prev })
            }),
            EventType::Delete => match ev.prev_kv() {
                Some(p) => store.to_kv(p).map(|prev| Event::Delete { prev, revision }),
                // etcd reads the previous value at revision-1; right at the compaction point it
                // is gone. Deliver the delete with the key alone rather than break the watch.
                None => {
                    tracing::warn!(
                        revision,
                        "etcd delete event without its previous value (compacted)"
                    );
                    store.to_kv(kv).map(|mut prev| {
                        prev.mod_revision = 0;
                        Event::Delete { prev, revision }
                    })
                }
            },
        };
        let failed = event.is_err();
        if tx.send(event).await.is_err() || failed {
            return Step::Stop;
        }
        *last = revision;
    }
    Step::Continue
}
