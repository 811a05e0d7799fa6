//! The pod ranges of a cluster CIDR (Kubernetes' cidrset): `--cluster-cidr` cut into
//! `--node-cidr-mask-size` blocks, each free or used. Allocation goes round from where the
//! last one ended, so a range released by a deleted node is the last to be handed out again
//! (its pods' addresses may still be in caches and conntrack).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// An IPv4 network, `a.b.c.d/n` with no host bits set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Net4 {
    base: u32,
    bits: u8,
}

impl Net4 {
    pub fn bits(&self) -> u8 {
        self.bits
    }

    fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.bits))
    }
}

impl std::str::FromStr for Net4 {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (ip, bits) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR (a.b.c.d/n)"))?;
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("{ip:?} is not an IPv4 address"))?;
        let bits: u8 = bits
            .parse()
            .ok()
            .filter(|b| *b <= 32)
            .ok_or_else(|| format!("{bits:?} is not a prefix length (0-32)"))?;
        let mask = if bits == 0 {
            0
        } else {
            u32::MAX << (32 - bits)
        };
        if u32::from(ip) & !mask != 0 {
            return Err(format!(
                "{s:?} has host bits set (the network is {}/{bits})",
                Ipv4Addr::from(u32::from(ip) & mask)
            ));
        }
        Ok(Net4 {
            base: u32::from(ip),
            bits,
        })
    }
}

impl std::fmt::Display for Net4 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.bits)
    }
}

/// The blocks of one cluster CIDR.
#[derive(Debug, Clone)]
pub struct CidrSet {
    cluster: Net4,
    node_bits: u8,
    used: BTreeSet<u32>,
    /// Where the next search starts.
    next: u32,
}

/// The most blocks one cluster CIDR may be cut into (Kubernetes refuses a difference of more
/// than 16 bits between the cluster and node masks too).
const MAX_BLOCK_BITS: u8 = 16;

impl CidrSet {
    /// Blocks of `/node_bits` in `cluster`.
    pub fn new(cluster: Net4, node_bits: u8) -> Result<CidrSet, String> {
        if node_bits < cluster.bits || node_bits > 30 {
            return Err(format!(
                "--node-cidr-mask-size {node_bits} must be between the cluster CIDR's /{} and /30",
                cluster.bits
            ));
        }
        if node_bits - cluster.bits > MAX_BLOCK_BITS {
            return Err(format!(
                "--node-cidr-mask-size {node_bits} cuts {cluster} into more than 2^{MAX_BLOCK_BITS} ranges; use a larger mask or a smaller cluster CIDR"
            ));
        }
        Ok(CidrSet {
            cluster,
            node_bits,
            used: BTreeSet::new(),
            next: 0,
        })
    }

    pub fn cluster(&self) -> Net4 {
        self.cluster
    }

    /// The size of each block (`--node-cidr-mask-size`).
    pub fn node_bits(&self) -> u8 {
        self.node_bits
    }

    /// How many blocks there are.
    pub fn capacity(&self) -> u32 {
        1 << (self.node_bits - self.cluster.bits)
    }

    pub fn used(&self) -> usize {
        self.used.len()
    }

    fn block_size(&self) -> u64 {
        1u64 << (32 - u32::from(self.node_bits))
    }

    fn block(&self, i: u32) -> Net4 {
        Net4 {
            base: (u64::from(self.cluster.base) + u64::from(i) * self.block_size()) as u32,
            bits: self.node_bits,
        }
    }

    /// The block index of `net`, when it is exactly one of this set's blocks.
    fn index_of(&self, net: Net4) -> Option<u32> {
        if net.bits != self.node_bits {
            return None;
        }
        let off = u64::from(net.base.wrapping_sub(self.cluster.base));
        (net.base >= self.cluster.base && off < self.cluster.size())
            .then(|| (off / self.block_size()) as u32)
    }

    /// Marks `net` used (a node's existing podCIDR). Err when it is not one of the blocks.
    pub fn occupy(&mut self, net: Net4) -> Result<(), String> {
        let i = self.index_of(net).ok_or_else(|| {
            format!(
                "{net} is not a /{} range of the cluster CIDR {}",
                self.node_bits, self.cluster
            )
        })?;
        self.used.insert(i);
        Ok(())
    }

    /// The next free block, now used; None when every block is.
    pub fn allocate(&mut self) -> Option<Net4> {
        let cap = self.capacity();
        let i = (0..cap)
            .map(|k| (self.next + k) % cap)
            .find(|i| !self.used.contains(i))?;
        self.used.insert(i);
        self.next = (i + 1) % cap;
        Some(self.block(i))
    }

    /// Frees `net` (its node is gone, or the write giving it out failed).
    pub fn release(&mut self, net: Net4) {
        if let Some(i) = self.index_of(net) {
            self.used.remove(&i);
        }
    }

    /// Frees every block; the search position stays.
    pub fn clear(&mut self) {
        self.used.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Net4 {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_refuses_with_reasons() {
        assert_eq!(net("10.244.0.0/16").to_string(), "10.244.0.0/16");
        assert_eq!(net("0.0.0.0/0").to_string(), "0.0.0.0/0");
        for (bad, why) in [
            ("10.244.0.0", "not a CIDR"),
            ("10.244.0.1/16", "host bits"),
            ("10.244.0.0/33", "prefix length"),
            ("10.300.0.0/16", "not an IPv4"),
            ("fd00::/64", "not an IPv4"),
        ] {
            let e = bad.parse::<Net4>().unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn hands_out_blocks_in_turn_and_reuses_released_ones_last() {
        let mut s = CidrSet::new(net("10.244.0.0/22"), 24).unwrap();
        assert_eq!(s.capacity(), 4);
        s.occupy(net("10.244.1.0/24")).unwrap();
        assert_eq!(s.allocate(), Some(net("10.244.0.0/24")));
        assert_eq!(s.allocate(), Some(net("10.244.2.0/24")));
        s.release(net("10.244.0.0/24"));
        assert_eq!(s.allocate(), Some(net("10.244.3.0/24")));
        assert_eq!(s.allocate(), Some(net("10.244.0.0/24")));
        assert_eq!(s.allocate(), None);
        assert_eq!(s.used(), 4);
    }

    #[test]
    fn only_the_sets_own_blocks_can_be_occupied() {
        let mut s = CidrSet::new(net("10.244.0.0/16"), 24).unwrap();
        for bad in [
            "10.245.0.0/24",
            "10.244.0.0/25",
            "10.244.0.0/16",
            "10.243.255.0/24",
        ] {
            assert!(s.occupy(net(bad)).is_err(), "{bad}");
        }
        s.occupy(net("10.244.255.0/24")).unwrap();
        assert_eq!(s.used(), 1);
    }

    #[test]
    fn refuses_masks_that_cannot_cut_the_cluster_cidr() {
        let c = net("10.0.0.0/8");
        assert!(CidrSet::new(c, 7).is_err());
        assert!(CidrSet::new(c, 31).is_err());
        assert!(CidrSet::new(c, 25).unwrap_err().contains("2^16"));
        assert_eq!(CidrSet::new(c, 24).unwrap().capacity(), 65536);
        let top = CidrSet::new(net("255.255.255.0/24"), 26).unwrap();
        assert_eq!(top.block(3).to_string(), "255.255.255.192/26");
    }
}
