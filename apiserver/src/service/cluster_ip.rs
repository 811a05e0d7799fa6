//! Service ClusterIP allocation from the service CIDR (default 10.96.0.0/12, kubeadm's).
//!
//! Each allocated IP is a key `serviceips/<ip>` in the store, claimed with a compare-and-swap
//! create, so API server replicas sharing one store never hand out the same IP (Kubernetes keeps
//! IPAddress objects for the same reason). An IP is released when its Service is deleted. A
//! crash between claiming an IP and storing the Service leaves the IP claimed: [`Allocator::repair`]
//! (run every minute by the API server, like kube-apiserver's repair controller) releases a
//! claim no Service uses once it has seen it unused, unchanged, on two consecutive runs, so an
//! allocation in flight is never taken back; it also re-claims the IP of a Service whose claim
//! was lost.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use bytes::Bytes;
use capstan_storage::{Storage, StorageError};

use crate::errors::{ApiError, ApiResult, from_storage};

const PREFIX: &str = "serviceips/";

/// An IPv4 range to allocate from: the network address and the broadcast address are never
/// handed out, nor is the first host address (the `kubernetes` Service's, by convention).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceCidr {
    base: u32,
    size: u32,
}

impl std::str::FromStr for ServiceCidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (ip, bits) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR (a.b.c.d/n)"))?;
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("{ip:?} is not an IPv4 address"))?;
        let bits: u32 = bits
            .parse()
            .map_err(|_| format!("{bits:?} is not a prefix length"))?;
        if !(8..=28).contains(&bits) {
            return Err(format!("prefix length /{bits} out of range: use /8 to /28"));
        }
        let size = 1u32 << (32 - bits);
        let base = u32::from(ip) & !(size - 1);
        Ok(ServiceCidr { base, size })
    }
}

impl Default for ServiceCidr {
    fn default() -> Self {
        "10.96.0.0/12".parse().expect("a valid default")
    }
}

impl std::fmt::Display for ServiceCidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}",
            Ipv4Addr::from(self.base),
            32 - self.size.trailing_zeros()
        )
    }
}

impl ServiceCidr {
    fn offset_of(&self, ip: Ipv4Addr) -> Option<u32> {
        let o = u32::from(ip).wrapping_sub(self.base);
        (o >= 2 && o < self.size - 1).then_some(o)
    }
}

#[derive(Clone, Debug)]
pub struct Allocator {
    cidr: ServiceCidr,
    store: Arc<dyn Storage>,
}

fn invalid(ip: &str, message: String) -> ApiError {
    ApiError::invalid(
        "",
        "Service",
        "",
        vec![capstan_api::validation::FieldError {
            field: "spec.clusterIPs".into(),
            value: ip.into(),
            message,
        }],
    )
}

impl Allocator {
    pub fn new(cidr: ServiceCidr, store: Arc<dyn Storage>) -> Allocator {
        Allocator { cidr, store }
    }

    pub fn cidr(&self) -> ServiceCidr {
        self.cidr
    }

    async fn claim(&self, ip: Ipv4Addr, owner: &str) -> Result<bool, ApiError> {
        match self
            .store
            .create(&format!("{PREFIX}{ip}"), Bytes::from(owner.to_string()))
            .await
        {
            Ok(_) => Ok(true),
            Err(StorageError::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(from_storage(e, "", "services", owner)),
        }
    }

    /// Claims `wanted` (which must be in range and free), or any free IP.
    pub async fn allocate(&self, wanted: Option<&str>, owner: &str) -> ApiResult<Ipv4Addr> {
        if let Some(w) = wanted {
            let ip: Ipv4Addr = w
                .parse()
                .map_err(|_| invalid(w, "must be a valid IP address".into()))?;
            if self.cidr.offset_of(ip).is_none() {
                return Err(invalid(
                    w,
                    format!(
                        "provided IP is not in the valid range. The range of valid IPs is {}",
                        self.cidr
                    ),
                ));
            }
            if !self.claim(ip, owner).await? {
                return Err(invalid(w, "provided IP is already allocated".into()));
            }
            return Ok(ip);
        }
        let usable = self.cidr.size - 3;
        let start = fastrand::u32(..usable);
        // Random start, then linear probing; give up after a bounded number of taken IPs.
        for i in 0..usable.min(4096) {
            let ip = Ipv4Addr::from(self.cidr.base + 2 + (start + i) % usable);
            if self.claim(ip, owner).await? {
                return Ok(ip);
            }
        }
        Err(ApiError::internal(format!(
            "no free ClusterIP found in {} (range nearly full)",
            self.cidr
        )))
    }

    /// One repair pass. Returns the claims no Service uses now, with the revision each was
    /// seen at; releases a claim only if the previous pass saw it unused at the same revision
    /// (`previously_leaked`) — a claim made again in between (a new Service on its way) is
    /// left alone. Also claims the IPs of stored Services that hold none (a lost claim).
    pub async fn repair(
        &self,
        previously_leaked: &HashMap<String, i64>,
    ) -> ApiResult<HashMap<String, i64>> {
        let claims = self
            .store
            .list(PREFIX, Default::default())
            .await
            .map_err(|e| from_storage(e, "", "services", ""))?;
        // Services are read after the claims: a Service stored in between is seen as a user.
        let services = self
            .store
            .list("services/", Default::default())
            .await
            .map_err(|e| from_storage(e, "", "services", ""))?;
        let mut used: HashMap<String, String> = HashMap::new();
        for kv in &services.items {
            if let Ok(svc) = serde_json::from_slice::<serde_json::Value>(&kv.value)
                && let Some(ip) = svc["spec"]["clusterIP"].as_str()
            {
                let owner = kv.key.trim_start_matches("services/").to_string();
                used.insert(ip.to_string(), owner);
            }
        }
        let claimed: HashSet<String> = claims
            .items
            .iter()
            .map(|kv| kv.key.trim_start_matches(PREFIX).to_string())
            .collect();
        for (ip, owner) in &used {
            if let Ok(addr) = ip.parse::<Ipv4Addr>()
                && self.cidr.offset_of(addr).is_some()
                && !claimed.contains(ip)
                && self.claim(addr, owner).await?
            {
                tracing::info!(
                    ip,
                    owner,
                    "claimed the ClusterIP of a Service that had lost its claim"
                );
            }
        }
        let mut leaked = HashMap::new();
        for kv in &claims.items {
            let ip = kv.key.trim_start_matches(PREFIX).to_string();
            if used.contains_key(&ip) {
                continue;
            }
            if previously_leaked.get(&ip) == Some(&kv.mod_revision) {
                match self.store.delete(&kv.key, Some(kv.mod_revision)).await {
                    Ok(_) => tracing::info!(ip, "released a ClusterIP no Service uses"),
                    Err(StorageError::NotFound { .. } | StorageError::Conflict { .. }) => {}
                    Err(e) => {
                        tracing::warn!(ip, error = %e, "could not release a leaked ClusterIP")
                    }
                }
            } else {
                leaked.insert(ip, kv.mod_revision);
            }
        }
        Ok(leaked)
    }

    /// Runs [`Allocator::repair`] every `interval` until the store is dropped.
    pub fn spawn_repair(&self, interval: std::time::Duration) {
        let store = Arc::downgrade(&self.store);
        let cidr = self.cidr;
        tokio::spawn(async move {
            let mut leaked = HashMap::new();
            loop {
                tokio::time::sleep(interval).await;
                let Some(store) = store.upgrade() else { return };
                let alloc = Allocator { cidr, store };
                match alloc.repair(&leaked).await {
                    Ok(now) => leaked = now,
                    Err(e) => tracing::warn!(error = %e.message, "ClusterIP repair failed"),
                }
            }
        });
    }

    /// Releases an IP (idempotent).
    pub async fn release(&self, ip: &str) {
        match self.store.delete(&format!("{PREFIX}{ip}"), None).await {
            Ok(_) | Err(StorageError::NotFound { .. }) => {}
            Err(e) => tracing::warn!(ip, error = %e, "could not release a ClusterIP"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_normalise_and_bound_the_usable_range() {
        let c: ServiceCidr = "10.96.3.7/12".parse().unwrap();
        assert_eq!(c.to_string(), "10.96.0.0/12");
        assert_eq!(c.offset_of("10.96.0.1".parse().unwrap()), None, "reserved");
        assert_eq!(c.offset_of("10.96.0.2".parse().unwrap()), Some(2));
        assert_eq!(
            c.offset_of("10.111.255.255".parse().unwrap()),
            None,
            "broadcast"
        );
        assert_eq!(c.offset_of("10.112.0.0".parse().unwrap()), None);
        for bad in ["10.0.0.0", "10.0.0.0/33", "10.0.0.0/4", "x/24", "10.0.0/24"] {
            assert!(bad.parse::<ServiceCidr>().is_err(), "{bad}");
        }
    }
}
