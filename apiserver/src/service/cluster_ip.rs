//! Service ClusterIP allocation from the service CIDR (default 10.96.0.0/12, kubeadm's).
//!
//! Each allocated IP is a claim `serviceips/<ip>` ([`super::claims`]): unique across API
//! servers sharing a store, released when its Service is deleted, repaired every minute.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use capstan_storage::Storage;
use serde_json::Value;

use super::claims::Claims;
use crate::errors::{ApiError, ApiResult};

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

    /// The `n`-th address of the range (the network address is the 0th): the `kubernetes`
    /// Service has the 1st, cluster DNS (`kube-dns`) the 10th, as kubeadm sets them up.
    pub fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.base + n.min(self.size - 1))
    }

    /// Whether `ip` is an address Services may be given (in range, not reserved).
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.offset_of(ip).is_some()
    }
}

#[derive(Clone, Debug)]
pub struct Allocator {
    cidr: ServiceCidr,
    claims: Claims,
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

/// The ClusterIP a stored Service holds, if it is one of `cidr`'s.
fn held(cidr: ServiceCidr, svc: &Value) -> Vec<String> {
    svc["spec"]["clusterIP"]
        .as_str()
        .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
        .filter(|ip| cidr.contains(*ip))
        .map(|ip| vec![ip.to_string()])
        .unwrap_or_default()
}

impl Allocator {
    pub fn new(cidr: ServiceCidr, store: Arc<dyn Storage>) -> Allocator {
        Allocator {
            cidr,
            claims: Claims::new(PREFIX, "ClusterIP", store),
        }
    }

    pub fn cidr(&self) -> ServiceCidr {
        self.cidr
    }

    /// Claims `wanted` (which must be in range and free), or any free IP. With `dry_run`
    /// nothing is claimed: the IP that would be is returned.
    pub async fn allocate(
        &self,
        wanted: Option<&str>,
        owner: &str,
        dry_run: bool,
    ) -> ApiResult<Ipv4Addr> {
        if let Some(w) = wanted {
            let ip: Ipv4Addr = w
                .parse()
                .map_err(|_| invalid(w, "must be a valid IP address".into()))?;
            // The first address is the `kubernetes` Service's, and only its.
            let reserved = ip == self.cidr.nth(1) && owner == "default/kubernetes";
            if !self.cidr.contains(ip) && !reserved {
                return Err(invalid(
                    w,
                    format!(
                        "provided IP is not in the valid range. The range of valid IPs is {}",
                        self.cidr
                    ),
                ));
            }
            let free = if dry_run {
                !self.claims.is_claimed(w).await?
            } else {
                self.claims.claim(w, owner).await?
            };
            if !free {
                return Err(invalid(w, "provided IP is already allocated".into()));
            }
            return Ok(ip);
        }
        // Random start, then linear probing; give up after a bounded number of taken IPs.
        let (base, usable) = (self.cidr.base + 2, self.cidr.size - 3);
        let found = self
            .claims
            .claim_any(
                usable,
                4096,
                |i| Ipv4Addr::from(base + i).to_string(),
                owner,
                dry_run,
            )
            .await?;
        found.and_then(|ip| ip.parse().ok()).ok_or_else(|| {
            ApiError::internal(format!(
                "no free ClusterIP found in {} (range nearly full)",
                self.cidr
            ))
        })
    }

    /// One repair pass ([`Claims::repair`]).
    pub async fn repair(
        &self,
        previously_leaked: &HashMap<String, i64>,
    ) -> ApiResult<HashMap<String, i64>> {
        let cidr = self.cidr;
        self.claims
            .repair(previously_leaked, |svc| held(cidr, svc))
            .await
    }

    /// Runs [`Allocator::repair`] every `interval` until the store is dropped.
    pub fn spawn_repair(&self, interval: std::time::Duration) {
        let store = Arc::downgrade(self.claims.store());
        let cidr = self.cidr;
        tokio::spawn(async move {
            let mut leaked = HashMap::new();
            loop {
                tokio::time::sleep(interval).await;
                let Some(store) = store.upgrade() else { return };
                match Allocator::new(cidr, store).repair(&leaked).await {
                    Ok(now) => leaked = now,
                    Err(e) => tracing::warn!(error = %e.message, "ClusterIP repair failed"),
                }
            }
        });
    }

    /// Releases an IP (idempotent).
    pub async fn release(&self, ip: &str) {
        self.claims.release(ip).await
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
