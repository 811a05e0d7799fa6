//! `capstan store`: read and maintain a store directly, for debugging and operations — the
//! embedded store's etcdctl. Values are printed as text when they are UTF-8.
//!
//! On a running cluster the embedded store's file is locked by the server (`capstan up`), so
//! the read-only commands read a snapshot instead: a copy of the file taken while no write
//! landed (see [`snapshot`]), said on stderr. `watch` follows the store by taking a snapshot
//! every half second and printing what changed since the last. `compact` and `defrag` change
//! the store itself and are refused until the server stops.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use capstan_storage::embedded::{DB_FILE, EmbeddedOptions, EmbeddedStore};
use capstan_storage::{Event, ListOptions, Storage};
use clap::{Args, Subcommand};
use futures_util::StreamExt;

use crate::store_args::StoreArgs;

#[derive(Debug, Args)]
pub struct StoreCmd {
    #[command(flatten)]
    store: StoreArgs,
    #[command(subcommand)]
    op: Op,
}

#[derive(Debug, Subcommand)]
enum Op {
    /// Print the current revision and the compaction point.
    Status,
    /// Print one key.
    Get { key: String },
    /// List keys under a prefix (keys only unless --values).
    List {
        #[arg(default_value = "")]
        prefix: String,
        #[arg(long)]
        values: bool,
        /// Read the snapshot at this revision.
        #[arg(long)]
        revision: Option<i64>,
    },
    /// Follow changes under a prefix, from a revision (default: now).
    Watch {
        #[arg(default_value = "")]
        prefix: String,
        #[arg(long)]
        after: Option<i64>,
    },
    /// Discard history before a revision.
    Compact { revision: i64 },
    /// Give the space compaction freed back to the file system (`etcdctl defrag`): rewrites the
    /// embedded store's file (stop the server first: it holds the file), or defragments every
    /// etcd endpoint. Writes wait while it runs. The embedded store also does this on its own
    /// after a compaction leaves most of a large file free.
    Defrag,
}

fn text(v: &[u8]) -> String {
    // Encrypted at rest: the envelope's header (provider and key name), then the ciphertext's
    // size — never decrypted here.
    if let Some(rest) = v.strip_prefix(b"k8s:enc:")
        && let Some(header) = rest
            .splitn(4, |b| *b == b':')
            .take(3)
            .map(|p| std::str::from_utf8(p).ok())
            .collect::<Option<Vec<_>>>()
        && header.len() == 3
    {
        let head = format!("k8s:enc:{}:", header.join(":"));
        return format!("{head}<{} bytes of ciphertext>", v.len() - head.len());
    }
    match std::str::from_utf8(v) {
        Ok(s) => s.to_string(),
        Err(_) => format!("<{} bytes of binary>", v.len()),
    }
}

/// True when opening failed because another process (a running server) holds the embedded
/// store's file: the message `EmbeddedStore::open` gives for redb's `DatabaseAlreadyOpen`.
fn in_use(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| c.to_string().contains("is locked by another process"))
}

/// A read-only snapshot of an embedded store another process holds: its file copied into a
/// temporary directory and opened there. redb writes a commit's pages before the header that
/// names them, so a copy during which the file did not change (same length and mtime before
/// and after, and it opens) is one committed state; a copy that raced a write is taken again.
pub async fn snapshot(
    data_dir: &std::path::Path,
) -> Result<(Arc<EmbeddedStore>, tempfile::TempDir)> {
    let file = data_dir.join("store").join(DB_FILE);
    let stamp = |p: &std::path::Path| std::fs::metadata(p).map(|m| (m.len(), m.modified().ok()));
    let mut last_error = None;
    for attempt in 0..20 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let tmp = tempfile::Builder::new()
            .prefix("capstan-store-snapshot-")
            .tempdir()
            .context("a temporary directory for the snapshot")?;
        let dir = tmp.path().join("store");
        std::fs::create_dir_all(&dir)?;
        let before = stamp(&file).with_context(|| format!("reading {}", file.display()))?;
        std::fs::copy(&file, dir.join(DB_FILE))
            .with_context(|| format!("copying {}", file.display()))?;
        if stamp(&file)? != before {
            continue;
        }
        match EmbeddedStore::open(EmbeddedOptions::new(&dir)).await {
            Ok(store) => return Ok((store, tmp)),
            Err(e) => last_error = Some(e),
        }
    }
    match last_error {
        Some(e) => Err(anyhow::Error::new(e).context(format!(
            "{} is in use and no consistent snapshot of it could be taken",
            file.display()
        ))),
        None => bail!(
            "{} is in use and changed during every copy; try again",
            file.display()
        ),
    }
}

pub async fn run(cmd: StoreCmd) -> Result<()> {
    let store = match cmd.store.open(None).await {
        Ok(store) => store,
        Err(e) if in_use(&e) => return run_on_snapshot(&cmd, e).await,
        Err(e) => return Err(e),
    };
    run_on(store, cmd.op).await
}

/// The store is held by a running server: read snapshots of it (see the module docs).
async fn run_on_snapshot(cmd: &StoreCmd, locked: anyhow::Error) -> Result<()> {
    let dir = &cmd.store.data_dir;
    match &cmd.op {
        Op::Compact { .. } | Op::Defrag => {
            return Err(locked.context(
                "compact and defrag change the store itself: stop the server first (status, get, list and watch read a snapshot while it runs)",
            ));
        }
        Op::Watch { prefix, after } => return watch_snapshots(dir, prefix, *after).await,
        _ => {}
    }
    let (store, _tmp) = snapshot(dir).await?;
    eprintln!(
        "note: {} is in use by a running server; reading a read-only snapshot at revision {}",
        dir.display(),
        store.current_revision().await?
    );
    let op = match &cmd.op {
        Op::Status => Op::Status,
        Op::Get { key } => Op::Get { key: key.clone() },
        Op::List {
            prefix,
            values,
            revision,
        } => Op::List {
            prefix: prefix.clone(),
            values: *values,
            revision: *revision,
        },
        Op::Watch { .. } | Op::Compact { .. } | Op::Defrag => unreachable!("handled above"),
    };
    let r = run_on(store.clone(), op).await;
    store.close().await;
    r
}

/// `watch` on a store a server holds: a snapshot every half second, printing the events
/// between the revision printed last and the snapshot's.
async fn watch_snapshots(dir: &std::path::Path, prefix: &str, after: Option<i64>) -> Result<()> {
    let mut after = after;
    let mut noted = false;
    loop {
        let (store, _tmp) = snapshot(dir).await?;
        let current = store.current_revision().await?;
        if !noted {
            eprintln!(
                "note: {} is in use by a running server; following it through read-only snapshots (every 0.5 s)",
                dir.display()
            );
            noted = true;
        }
        let from = *after.get_or_insert(current);
        if current > from {
            let mut w = store.watch(prefix, from).await?;
            // Everything up to `current` is history the snapshot holds, delivered at once; a
            // quiet stream means the rest fell outside the prefix.
            while let Ok(Some(item)) =
                tokio::time::timeout(Duration::from_millis(300), w.next()).await
            {
                let event = item?;
                let revision = print_event(&event);
                if revision >= current {
                    break;
                }
            }
            after = Some(current);
        }
        store.close().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Prints one watch event; returns its revision.
fn print_event(event: &Event) -> i64 {
    match event {
        Event::Put { kv, prev } => {
            println!(
                "{} PUT {}{} {}",
                kv.mod_revision,
                kv.key,
                if prev.is_some() { "" } else { " (created)" },
                text(&kv.value)
            );
            kv.mod_revision
        }
        Event::Delete { prev, revision } => {
            println!("{revision} DELETE {}", prev.key);
            *revision
        }
        Event::Progress { revision } => {
            println!("{revision} PROGRESS");
            *revision
        }
    }
}

async fn run_on(store: Arc<dyn Storage>, op: Op) -> Result<()> {
    match op {
        Op::Status => {
            println!(
                "backend={} revision={} compacted={}",
                store.backend(),
                store.current_revision().await?,
                store.compacted_revision().await?
            );
        }
        Op::Get { key } => match store.get(&key).await? {
            Some(kv) => println!(
                "{} create_revision={} mod_revision={}\n{}",
                kv.key,
                kv.create_revision,
                kv.mod_revision,
                text(&kv.value)
            ),
            None => anyhow::bail!("{key}: not found"),
        },
        Op::List {
            prefix,
            values,
            revision,
        } => {
            let mut opts = ListOptions {
                revision,
                limit: Some(500),
                start_after: None,
            };
            loop {
                let page = store.list(&prefix, opts.clone()).await?;
                for kv in &page.items {
                    if values {
                        println!("{} {}", kv.key, text(&kv.value));
                    } else {
                        println!("{}", kv.key);
                    }
                }
                if !page.more {
                    break;
                }
                opts.revision = Some(page.revision);
                opts.start_after = page.items.last().map(|kv| kv.key.clone());
            }
        }
        Op::Watch { prefix, after } => {
            let after = match after {
                Some(a) => a,
                None => store.current_revision().await?,
            };
            let mut w = store.watch(&prefix, after).await?;
            while let Some(item) = w.next().await {
                print_event(&item?);
            }
        }
        Op::Compact { revision } => {
            store.compact(revision).await?;
            println!("compacted to {}", store.compacted_revision().await?);
        }
        Op::Defrag => {
            for d in store.defragment().await? {
                println!(
                    "defragmented {}: {} → {} bytes",
                    d.target, d.size_before, d.size_after
                );
            }
        }
    }
    Ok(())
}
