//! Which etcd members the client's requests go to. The client balances requests over every
//! endpoint it was given; a member that is down (killed, its machine gone) stays in that
//! balance and every request the balancer sends it waits for a reconnect, then fails: after one
//! member of three died, half of the writes took a second or two and some timed out (504s at
//! the API). etcd's own Go client avoids this with health-checked endpoints; so does this:
//! every [`PROBE_EVERY`] each member is asked for its status on a connection of its own, and a
//! member that does not answer within [`PROBE_TIMEOUT`] is taken out of the balance until it
//! answers again. The last member is never taken out (requests then fail fast with
//! Unavailable, as before).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};

pub const PROBE_EVERY: Duration = Duration::from_millis(500);
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(800);

/// The probing task; stopped when the last store clone holding it goes.
#[derive(Debug)]
pub struct MemberHealth {
    task: tokio::task::JoinHandle<()>,
    out: Arc<AtomicUsize>,
}

impl MemberHealth {
    /// How many members are out of the balance now.
    pub fn out(&self) -> usize {
        self.out.load(Ordering::Relaxed)
    }
}

impl Drop for MemberHealth {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts probing `endpoints` (nothing to do for one) on behalf of `client`'s balance.
pub fn spawn(
    client: Client,
    endpoints: &[String],
    options: ConnectOptions,
) -> Option<Arc<MemberHealth>> {
    if endpoints.len() < 2 {
        return None;
    }
    let endpoints = endpoints.to_vec();
    let out = Arc::new(AtomicUsize::new(0));
    let task = tokio::spawn(run(client, endpoints, options, out.clone()));
    Some(Arc::new(MemberHealth { task, out }))
}

async fn run(
    client: Client,
    endpoints: Vec<String>,
    options: ConnectOptions,
    taken_out: Arc<AtomicUsize>,
) {
    let mut probes: Vec<Option<Client>> = vec![None; endpoints.len()];
    let mut out: BTreeSet<usize> = BTreeSet::new();
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut answers = Vec::with_capacity(endpoints.len());
        for (i, ep) in endpoints.iter().enumerate() {
            answers.push(probe(&mut probes[i], ep, &options).await);
        }
        for (i, ok) in answers.into_iter().enumerate() {
            let ep = &endpoints[i];
            if ok && out.remove(&i) {
                match client.add_endpoint(ep).await {
                    Ok(()) => {
                        tracing::info!(endpoint = %ep, "etcd member answers again; back in the balance")
                    }
                    Err(e) => {
                        out.insert(i);
                        tracing::warn!(endpoint = %ep, error = %e, "adding an etcd member back failed");
                    }
                }
            } else if !ok && !out.contains(&i) && out.len() + 1 < endpoints.len() {
                match client.remove_endpoint(ep).await {
                    Ok(()) => {
                        out.insert(i);
                        tracing::warn!(endpoint = %ep, "etcd member not answering; requests go to the others");
                    }
                    Err(e) => {
                        tracing::warn!(endpoint = %ep, error = %e, "taking an etcd member out failed")
                    }
                }
            }
        }
        taken_out.store(out.len(), Ordering::Relaxed);
    }
}

/// Whether the member at `ep` answers a status request in time (its connection made once and
/// kept; gRPC reconnects it).
async fn probe(client: &mut Option<Client>, ep: &str, options: &ConnectOptions) -> bool {
    if client.is_none() {
        let connect = Client::connect([ep], Some(options.clone()));
        match tokio::time::timeout(PROBE_TIMEOUT, connect).await {
            Ok(Ok(c)) => *client = Some(c),
            _ => return false,
        }
    }
    let Some(c) = client.as_mut() else {
        return false;
    };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, c.status()).await,
        Ok(Ok(_))
    )
}
