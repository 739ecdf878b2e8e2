//! Which tenants one harness process ticks when several share the work:
//! `run --shard K/N` takes the tenants that rendezvous hashing of the tenant
//! name assigns to shard K of N. Every process computes the same assignment
//! from the names alone (no coordination), and changing N moves only about
//! 1/N of the tenants. Overlapping processes (a standby running every
//! shard) are safe: leases in the shared store keep delivery exactly-once.

use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

/// Shard `index` of `count` (`0 <= index < count`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    index: u32,
    count: u32,
}

impl Shard {
    /// Shard `index` of `count`; an error unless `count >= 1` and
    /// `index < count`.
    pub fn new(index: u32, count: u32) -> Result<Shard, String> {
        if count == 0 || index >= count {
            return Err(format!("shard {index}/{count}: K/N needs N >= 1 and K from 0 to N-1"));
        }
        Ok(Shard { index, count })
    }

    /// True when this shard ticks `tenant`.
    pub fn owns(&self, tenant: &str) -> bool {
        shard_of(tenant, self.count) == self.index
    }
}

/// The shard rendezvous hashing gives `tenant` among `count`: the one whose
/// hash with the tenant's name is highest.
pub fn shard_of(tenant: &str, count: u32) -> u32 {
    (0..count).max_by_key(|k| weight(*k, tenant)).unwrap_or(0)
}

fn weight(shard: u32, tenant: &str) -> u64 {
    let digest = Sha256::new().chain_update(shard.to_be_bytes()).chain_update(tenant.as_bytes()).finalize();
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(text: &str) -> Result<Shard, String> {
        let parse = |part: &str| part.trim().parse::<u32>().map_err(|_| format!("{text:?} is not K/N (e.g. 0/3)"));
        let (k, n) = text.split_once('/').ok_or_else(|| format!("{text:?} is not K/N (e.g. 0/3)"))?;
        Shard::new(parse(k)?, parse(n)?)
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tenant_has_exactly_one_shard_and_the_split_is_even() {
        let names: Vec<String> = (0..3000).map(|i| format!("tenant-{i}")).collect();
        let shards: Vec<Shard> = (0..3).map(|k| Shard::new(k, 3).unwrap()).collect();
        let mut per_shard = [0usize; 3];
        for name in &names {
            let owners: Vec<usize> = (0..3).filter(|k| shards[*k].owns(name)).collect();
            assert_eq!(owners.len(), 1, "{name}: {owners:?}");
            per_shard[owners[0]] += 1;
        }
        assert!(per_shard.iter().all(|n| (850..1150).contains(n)), "{per_shard:?}");
    }

    #[test]
    fn growing_from_three_to_four_shards_moves_only_the_new_shards_tenants() {
        let names: Vec<String> = (0..2000).map(|i| format!("t{i}")).collect();
        let moved = names.iter().filter(|n| shard_of(n, 3) != shard_of(n, 4)).count();
        // Rendezvous: a tenant moves only to the new shard 3, about a quarter.
        assert!(names.iter().all(|n| shard_of(n, 3) == shard_of(n, 4) || shard_of(n, 4) == 3));
        assert!((350..650).contains(&moved), "{moved} of 2000 moved");
    }

    #[test]
    fn shards_parse_from_k_slash_n() {
        assert_eq!("1/3".parse::<Shard>().unwrap(), Shard::new(1, 3).unwrap());
        assert_eq!(Shard::new(0, 1).unwrap().to_string(), "0/1");
        for bad in ["3/3", "1/0", "x/2", "2", "-1/3", ""] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        assert!(Shard::new(0, 1).unwrap().owns("anyone"));
    }
}
