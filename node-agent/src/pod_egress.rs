//! Pod egress masquerade across machines (flannel's and kubenet's ip-masq rule): traffic from
//! the cluster's pod range (`--cluster-cidr`) to anything outside it leaves with the node's
//! address, while traffic between pods — on this node or any other — keeps its source, as
//! Kubernetes' network model promises (a pod sees its peer's pod IP).
//!
//! The CNI bridge plugin's own `ipMasq` cannot do this: it masquerades whatever leaves the
//! *node's* range, other nodes' pods included. So an agent that writes its CNI config from the
//! Node's assigned range ([`crate::cni_config`]) turns `ipMasq` off and owns one nftables
//! table instead:
//!
//! ```text
//! table ip capstan-egress {
//!   chain postrouting {
//!     type nat hook postrouting priority srcnat; policy accept;
//!     ip saddr CLUSTER ip daddr CLUSTER return      # pod to pod: untouched
//!     ip saddr CLUSTER ip daddr 224.0.0.0/4 return  # multicast: never NATed
//!     ip saddr CLUSTER masquerade fully-random      # out of the cluster: the node's address
//!   }
//! }
//! ```
//!
//! Service traffic is the proxy's business ([`crate::proxy`]): a ClusterIP DNATed to a pod
//! elsewhere reaches this chain with a pod destination and is left alone here. The table is
//! written in one transaction (`add`, `flush`, the rules: an existing table is adopted), again
//! every 30 s (a flushed ruleset comes back), and deleted on a clean stop.

use std::time::Duration;

use crate::proxy::nft::{Nft, NftError};

/// The table's default name.
pub const TABLE: &str = "capstan-egress";

const RESYNC: Duration = Duration::from_secs(30);

/// The masquerade table for one cluster range.
#[derive(Debug, Clone)]
pub struct PodEgress {
    nft: Nft,
    table: String,
    cluster_cidr: String,
}

impl PodEgress {
    /// `cluster_cidr` must be an IPv4 CIDR; it is written as its network (`10.244.0.0/16`).
    pub fn new(nft: Nft, table: &str, cluster_cidr: &str) -> Result<PodEgress, String> {
        let cluster_cidr = crate::proxy::parse_cidr(cluster_cidr).map_err(|e| e.to_string())?;
        if !crate::proxy::valid_table_name(table) {
            return Err(format!(
                "table name {table:?}: want a letter then letters, digits, - or _"
            ));
        }
        Ok(PodEgress {
            nft,
            table: table.to_string(),
            cluster_cidr,
        })
    }

    /// The transaction that makes the table what it should be.
    pub fn plan(&self) -> String {
        let (t, c) = (&self.table, &self.cluster_cidr);
        format!(
            "add table ip {t}\n\
             flush table ip {t}\n\
             add chain ip {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
             add rule ip {t} postrouting ip saddr {c} ip daddr {c} return\n\
             add rule ip {t} postrouting ip saddr {c} ip daddr 224.0.0.0/4 return\n\
             add rule ip {t} postrouting ip saddr {c} masquerade fully-random\n"
        )
    }

    pub async fn apply(&self) -> Result<(), NftError> {
        self.nft.apply(&self.plan()).await
    }

    /// Deletes the table (a clean stop).
    pub async fn remove(&self) -> Result<(), NftError> {
        self.nft.delete_table(&self.table).await
    }

    /// Writes the table again every 30 s (after the caller's first [`PodEgress::apply`]), until
    /// dropped.
    pub async fn run(self) {
        let mut failing = false;
        loop {
            tokio::time::sleep(RESYNC).await;
            match self.apply().await {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!(table = %self.table, "pod egress masquerade programmed again");
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    failing = true;
                    tracing::error!(table = %self.table, error = %e, "pod egress masquerade: nft failed (pods cannot reach beyond the cluster)");
                }
                Err(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_range_is_canonical_and_names_are_checked() {
        let e = PodEgress::new(Nft::new("nft"), TABLE, "10.244.9.9/16").unwrap();
        let plan = e.plan();
        assert!(
            plan.contains("ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 return"),
            "{plan}"
        );
        assert!(plan.contains("ip saddr 10.244.0.0/16 masquerade"), "{plan}");
        assert!(PodEgress::new(Nft::new("nft"), TABLE, "10.244.0.0/33").is_err());
        assert!(PodEgress::new(Nft::new("nft"), TABLE, "fd00::/64").is_err());
        assert!(PodEgress::new(Nft::new("nft"), "x; flush ruleset", "10.0.0.0/8").is_err());
    }
}
