//! `capstan bench store`. For each backend and each writer count: N creates of distinct keys with
//! a fixed-size value (puts/s, p50/p99 latency); write→watch-event latency, sequentially; and the
//! time to list 10,000 keys, whole and in pages of 500. Raw etcd-client puts, watches and ranges
//! of the same payloads run in the same process against the same etcd: the floor.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use capstan_storage::embedded::{EmbeddedOptions, EmbeddedStore};
use capstan_storage::etcd::{EtcdOptions, EtcdStore};
use capstan_storage::{Event, ListOptions, Storage};
use capstan_testkit::EtcdProcess;
use clap::Args;
use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp, WatchOptions};
use futures_util::StreamExt;

use super::{Samples, drive, ms};

#[derive(Debug, Args)]
pub struct StoreBench {
    /// Creates per measured row.
    #[arg(long, default_value_t = 5000)]
    ops: usize,
    /// Value size in bytes (a typical object is 1-4 KiB of JSON).
    #[arg(long, default_value_t = 1024)]
    value_bytes: usize,
    /// Writer counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,32")]
    writers: Vec<usize>,
    /// Keys in the list benchmark.
    #[arg(long, default_value_t = 10_000)]
    list_keys: usize,
    /// Sequential write→event samples.
    #[arg(long, default_value_t = 500)]
    watch_samples: usize,
    /// Use this etcd instead of starting one (it must be empty of the bench prefixes).
    #[arg(long, value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    /// Where the embedded store is created (a fresh temp dir inside it).
    #[arg(long, default_value = "/tmp")]
    scratch: std::path::PathBuf,
}

struct Row {
    name: String,
    writers: usize,
    samples: Samples,
}

struct Report {
    puts: Vec<Row>,
    watch: Vec<(String, Samples)>,
    lists: Vec<(String, Duration, Option<Duration>)>,
}

pub async fn run(b: StoreBench) -> Result<()> {
    let value = Bytes::from(vec![b'x'; b.value_bytes]);
    let mut etcd_proc = None;
    let endpoints = if b.etcd_endpoints.is_empty() {
        let p = tokio::task::spawn_blocking(EtcdProcess::start)
            .await?
            .context(
                "starting etcd for the benchmark (install etcd-server or pass --etcd-endpoints)",
            )?;
        let ep = p.endpoint.clone();
        etcd_proc = Some(p);
        vec![ep]
    } else {
        b.etcd_endpoints.clone()
    };
    let run_id = format!(
        "{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    );
    let raw = Client::connect(&endpoints, None)
        .await
        .context("connecting to etcd")?;
    let scratch = tempfile::Builder::new()
        .prefix("capstan-bench-")
        .tempdir_in(&b.scratch)?;
    let mut opts = EmbeddedOptions::new(scratch.path());
    opts.compaction = None;
    let embedded: Arc<dyn Storage> = EmbeddedStore::open(opts).await?;
    let mut etcd_opts = EtcdOptions::new(endpoints.clone());
    etcd_opts.prefix = format!("/bench-{run_id}/");
    let etcd: Arc<dyn Storage> = Arc::new(EtcdStore::connect(etcd_opts).await?);

    let mut report = Report {
        puts: Vec::new(),
        watch: Vec::new(),
        lists: Vec::new(),
    };

    // Puts: raw floor first, then each backend, at each writer count.
    for &writers in &b.writers {
        let tag = format!("w{writers}");
        let (c, v, prefix) = (raw.clone(), value.clone(), format!("/raw-{run_id}/{tag}/"));
        let samples = drive(writers, b.ops, move |i| {
            let (mut kv, v, key) = (c.kv_client(), v.clone(), format!("{prefix}{i:08}"));
            async move {
                kv.put(key, v.to_vec(), None).await?;
                Ok(())
            }
        })
        .await?;
        report.puts.push(Row {
            name: "raw etcd (etcd-client put)".into(),
            writers,
            samples,
        });
        // The same compare-and-put transaction the etcd backend (and kube-apiserver) sends for
        // a create, straight through etcd-client: the floor for a guarded write.
        let (c, v, prefix) = (
            raw.clone(),
            value.clone(),
            format!("/raw-{run_id}/{tag}-txn/"),
        );
        let samples = drive(writers, b.ops, move |i| {
            let (mut kv, v, key) = (c.kv_client(), v.clone(), format!("{prefix}{i:08}"));
            async move {
                let txn = Txn::new()
                    .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(key.as_str(), v.to_vec(), None)]);
                kv.txn(txn).await?;
                Ok(())
            }
        })
        .await?;
        report.puts.push(Row {
            name: "raw etcd (etcd-client txn: create-if-absent)".into(),
            writers,
            samples,
        });
        for store in [&etcd, &embedded] {
            let (s, v, prefix) = (store.clone(), value.clone(), format!("puts/{tag}/"));
            let samples = drive(writers, b.ops, move |i| {
                let (s, v, key) = (s.clone(), v.clone(), format!("{prefix}{i:08}"));
                async move {
                    s.create(&key, v).await?;
                    Ok(())
                }
            })
            .await?;
            report.puts.push(Row {
                name: format!("{} backend (create)", store.backend()),
                writers,
                samples,
            });
        }
    }

    // Watch delivery: sequential writes, time from issuing the write to the event arriving.
    report.watch.push((
        "raw etcd".into(),
        raw_watch(
            &raw,
            &format!("/raw-{run_id}/watch/"),
            b.watch_samples,
            &value,
        )
        .await?,
    ));
    for store in [&etcd, &embedded] {
        report.watch.push((
            format!("{} backend", store.backend()),
            store_watch(store, b.watch_samples, &value).await?,
        ));
    }

    // Lists of N keys.
    for store in [&etcd, &embedded] {
        let (s, v) = (store.clone(), value.clone());
        drive(32, b.list_keys, move |i| {
            let (s, v, key) = (s.clone(), v.clone(), format!("list/{i:08}"));
            async move {
                s.create(&key, v).await?;
                Ok(())
            }
        })
        .await?;
        let s = store.clone();
        let full = median3(
            || {
                let s = s.clone();
                async move { Ok(s.list("list/", ListOptions::default()).await?.items.len()) }
            },
            b.list_keys,
        )
        .await?;
        let paged = median3(|| paged_list(s.clone()), b.list_keys).await?;
        report
            .lists
            .push((format!("{} backend", store.backend()), full, Some(paged)));
    }

    let raw_prefix = format!("/raw-{run_id}/list/");
    {
        let (c, v, p) = (raw.clone(), value.clone(), raw_prefix.clone());
        drive(32, b.list_keys, move |i| {
            let (mut kv, v, key) = (c.kv_client(), v.clone(), format!("{p}{i:08}"));
            async move {
                kv.put(key, v.to_vec(), None).await?;
                Ok(())
            }
        })
        .await?;
        let kv = raw.kv_client().max_decoding_message_size(i32::MAX as usize);
        let full = median3(
            || {
                let (mut kv, p) = (kv.clone(), raw_prefix.clone());
                async move {
                    let r = kv.get(p, Some(GetOptions::new().with_prefix())).await?;
                    Ok(r.kvs().len())
                }
            },
            b.list_keys,
        )
        .await?;
        report
            .lists
            .push(("raw etcd (one range)".into(), full, None));
    }
    print_report(&b, &report);
    drop(etcd);
    drop(embedded);
    if let Some(mut p) = etcd_proc {
        tokio::task::spawn_blocking(move || p.stop()).await??;
    }
    Ok(())
}

async fn paged_list(s: Arc<dyn Storage>) -> Result<usize> {
    let mut opts = ListOptions {
        limit: Some(500),
        ..Default::default()
    };
    let mut n = 0;
    loop {
        let page = s.list("list/", opts.clone()).await?;
        n += page.items.len();
        if !page.more {
            return Ok(n);
        }
        opts.revision = Some(page.revision);
        opts.start_after = page.items.last().map(|kv| kv.key.clone());
    }
}

/// The median of three timed runs of `f`, which must return `expect` items.
async fn median3<F, Fut>(f: F, expect: usize) -> Result<Duration>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<usize>>,
{
    let mut times = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let n = f().await?;
        times.push(t.elapsed());
        if n != expect {
            bail!("listed {n} keys, expected {expect}");
        }
    }
    times.sort();
    Ok(times[1])
}

async fn store_watch(s: &Arc<dyn Storage>, samples: usize, value: &Bytes) -> Result<Samples> {
    let mut w = s.watch("watch/", s.current_revision().await?).await?;
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(samples);
    for i in 0..samples {
        let t = Instant::now();
        let kv = s.create(&format!("watch/{i:08}"), value.clone()).await?;
        loop {
            match tokio::time::timeout(Duration::from_secs(10), w.next()).await {
                Ok(Some(Ok(Event::Progress { .. }))) => continue,
                Ok(Some(Ok(e))) if e.revision() == kv.mod_revision => break,
                Ok(Some(Ok(e))) => bail!("unexpected event at {}", e.revision()),
                Ok(Some(Err(e))) => return Err(e.into()),
                Ok(None) => bail!("watch ended"),
                Err(_) => bail!("no event within 10s"),
            }
        }
        latencies.push(t.elapsed());
    }
    Ok(Samples {
        elapsed: started.elapsed(),
        latencies,
    })
}

async fn raw_watch(c: &Client, prefix: &str, samples: usize, value: &Bytes) -> Result<Samples> {
    let mut wc = c.watch_client();
    let mut stream = wc
        .watch(prefix, Some(WatchOptions::new().with_prefix()))
        .await?;
    // Wait for the created confirmation so the first sample is not the watch set-up.
    stream.message().await?;
    let mut kv = c.kv_client();
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(samples);
    for i in 0..samples {
        let t = Instant::now();
        kv.put(format!("{prefix}{i:08}"), value.to_vec(), None)
            .await?;
        loop {
            match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
                Ok(Ok(Some(resp))) if !resp.events().is_empty() => break,
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None)) => bail!("raw watch ended"),
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => bail!("no raw event within 10s"),
            }
        }
        latencies.push(t.elapsed());
    }
    Ok(Samples {
        elapsed: started.elapsed(),
        latencies,
    })
}

fn print_report(b: &StoreBench, r: &Report) {
    println!(
        "### capstan bench store — {} creates per row, {} B values, {} cores\n",
        b.ops,
        b.value_bytes,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("| what | writers | puts/s | p50 | p99 | vs raw put | vs raw txn |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let floor = |writers: usize, what: &str| {
        r.puts
            .iter()
            .find(|f| f.writers == writers && f.name.contains(what))
            .map_or(f64::NAN, |f| f.samples.rate())
    };
    for row in &r.puts {
        let rate = row.samples.rate();
        println!(
            "| {} | {} | {:.0} | {} | {} | {:.2}x | {:.2}x |",
            row.name,
            row.writers,
            rate,
            ms(row.samples.quantile(0.5)),
            ms(row.samples.quantile(0.99)),
            rate / floor(row.writers, "client put"),
            rate / floor(row.writers, "client txn")
        );
    }
    println!(
        "\n| write → watch event (sequential, {} samples) | p50 | p99 |",
        b.watch_samples
    );
    println!("|---|---:|---:|");
    for (name, s) in &r.watch {
        println!(
            "| {name} | {} | {} |",
            ms(s.quantile(0.5)),
            ms(s.quantile(0.99))
        );
    }
    println!(
        "\n| list {} keys (median of 3) | whole | pages of 500 |",
        b.list_keys
    );
    println!("|---|---:|---:|");
    for (name, full, paged) in &r.lists {
        println!(
            "| {name} | {} | {} |",
            ms(*full),
            paged.map_or("—".to_string(), ms)
        );
    }
}
