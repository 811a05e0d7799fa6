//! `capstan store`: read and maintain a store directly, for debugging and operations — the
//! embedded store's etcdctl. Values are printed as text when they are UTF-8.

use anyhow::Result;
use capstan_storage::{Event, ListOptions};
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
    match std::str::from_utf8(v) {
        Ok(s) => s.to_string(),
        Err(_) => format!("<{} bytes of binary>", v.len()),
    }
}

pub async fn run(cmd: StoreCmd) -> Result<()> {
    let store = cmd.store.open(None).await?;
    match cmd.op {
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
                match item? {
                    Event::Put { kv, prev } => println!(
                        "{} PUT {}{} {}",
                        kv.mod_revision,
                        kv.key,
                        if prev.is_some() { "" } else { " (created)" },
                        text(&kv.value)
                    ),
                    Event::Delete { prev, revision } => {
                        println!("{revision} DELETE {}", prev.key)
                    }
                    Event::Progress { revision } => println!("{revision} PROGRESS"),
                }
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
