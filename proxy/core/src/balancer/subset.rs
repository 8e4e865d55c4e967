//! Deterministic subsetting: which `k` of a cluster's usable VMs this edge
//! instance places new repls on.
//!
//! Where it sits: the view builder ([`super::view`]) calls [`choose`] for
//! every cluster on each rebuild, passing the members it chose last time.
//!
//! How: rendezvous (highest random weight) ranking of the usable VMs by
//! `splitmix64(vm id hash ^ seed)`, where the seed mixes the edge's instance id
//! and the epoch; the epoch advances every `subset_refresh` (offset per
//! instance so edges do not all rotate at the same instant). Different
//! edges get different subsets whose union covers the cluster.
//!
//! Hysteresis: a previous member is kept while it ranks within
//! `k * (1 + hysteresis)`; only the free places are filled from the top of
//! the ranking. A VM that drops out of "usable" for one scrape and comes
//! back does not push out the VM that replaced it, so metric noise does not
//! churn members; a new epoch still rotates most of them.
//!
//! Invariant: the answer has `min(k, usable)` distinct members, in rank
//! order. Pure; start at [`choose`].

use crate::bits::splitmix64;

/// The epoch at `now_ms`: advances every `refresh_ms`, offset by the
/// instance so a fleet of edges rotates spread over the period.
pub fn epoch(instance_hash: u64, now_ms: u64, refresh_ms: u64) -> u64 {
    let refresh = refresh_ms.max(1);
    (now_ms + instance_hash % refresh) / refresh
}

/// The ranking seed of an instance in an epoch.
pub fn seed(instance_hash: u64, epoch: u64) -> u64 {
    splitmix64(instance_hash ^ splitmix64(epoch.wrapping_add(0x9e3779b97f4a7c15)))
}

/// Rendezvous score of a VM under `seed` (higher ranks first).
#[inline]
pub fn score(vm_id_hash: u64, seed: u64) -> u64 {
    splitmix64(vm_id_hash ^ seed)
}

/// Chooses the subset: indexes into `usable` (VM id hashes), in rank order.
/// `previous` holds last time's member id hashes (any order).
pub fn choose(usable: &[u64], previous: &[u64], k: usize, hysteresis: f64, seed: u64) -> Vec<usize> {
    let mut ranked: Vec<usize> = (0..usable.len()).collect();
    ranked.sort_unstable_by_key(|&i| std::cmp::Reverse(score(usable[i], seed)));
    if usable.len() <= k {
        return ranked;
    }
    let band = ((k as f64) * (1.0 + hysteresis)).ceil() as usize;
    let mut prev = previous.to_vec();
    prev.sort_unstable();
    let mut taken = vec![false; usable.len()];
    let mut chosen: Vec<usize> = Vec::with_capacity(k);
    for &i in &ranked[..band.min(ranked.len())] {
        if chosen.len() < k && prev.binary_search(&usable[i]).is_ok() {
            taken[i] = true;
            chosen.push(i);
        }
    }
    for &i in &ranked {
        if chosen.len() == k {
            break;
        }
        if !taken[i] {
            taken[i] = true;
            chosen.push(i);
        }
    }
    chosen.sort_unstable_by_key(|&i| std::cmp::Reverse(score(usable[i], seed)));
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn ids(n: u64) -> Vec<u64> {
        (0..n).map(|i| splitmix64(i + 1000)).collect()
    }

    fn members(usable: &[u64], idx: &[usize]) -> Vec<u64> {
        idx.iter().map(|&i| usable[i]).collect()
    }

    #[test]
    fn deterministic_distinct_and_sized() {
        let u = ids(100);
        let a = choose(&u, &[], 16, 0.25, seed(1, 0));
        assert_eq!(a, choose(&u, &[], 16, 0.25, seed(1, 0)));
        assert_eq!(a.len(), 16);
        assert_eq!(a.iter().collect::<HashSet<_>>().len(), 16);
        let b = choose(&u, &[], 16, 0.25, seed(2, 0));
        assert_ne!(a, b, "another instance gets another subset");
        assert_eq!(choose(&u[..5], &[], 16, 0.25, 7).len(), 5, "small clusters: everyone");
    }

    #[test]
    fn union_of_many_edges_covers_the_cluster() {
        let u = ids(200);
        let mut covered = HashSet::new();
        for inst in 0..40 {
            covered.extend(choose(&u, &[], 16, 0.25, seed(splitmix64(inst), 0)));
        }
        assert!(covered.len() > 190, "40 edges x 16 cover {} of 200", covered.len());
    }

    #[test]
    fn hysteresis_keeps_the_replacement_when_a_flapping_vm_returns() {
        let u = ids(64);
        let s = seed(5, 3);
        let first = members(&u, &choose(&u, &[], 8, 0.25, s));
        // The top member disappears for a scrape...
        let gone = first[0];
        let without: Vec<u64> = u.iter().copied().filter(|&v| v != gone).collect();
        let second = members(&without, &choose(&without, &first, 8, 0.25, s));
        assert!(!second.contains(&gone));
        let replacement: Vec<u64> = second.iter().copied().filter(|v| !first.contains(v)).collect();
        assert_eq!(replacement.len(), 1);
        // ...and comes back: the replacement stays, the returning VM waits.
        let third = members(&u, &choose(&u, &second, 8, 0.25, s));
        assert_eq!(
            third.iter().collect::<HashSet<_>>(),
            second.iter().collect::<HashSet<_>>(),
            "no churn"
        );
        // Without hysteresis it would have churned back.
        let strict = members(&u, &choose(&u, &second, 8, 0.0, s));
        assert!(strict.contains(&gone));
    }

    #[test]
    fn a_new_epoch_rotates_members() {
        let u = ids(200);
        let a = members(&u, &choose(&u, &[], 16, 0.25, seed(9, 1)));
        let b = members(&u, &choose(&u, &a, 16, 0.25, seed(9, 2)));
        let kept = b.iter().filter(|v| a.contains(v)).count();
        assert!(kept < 8, "epoch change kept {kept} of 16");
    }

    #[test]
    fn epochs_advance_per_refresh_with_an_instance_offset() {
        assert_eq!(epoch(0, 0, 1000), 0);
        assert_eq!(epoch(0, 999, 1000), 0);
        assert_eq!(epoch(0, 1000, 1000), 1);
        assert_eq!(epoch(300, 700, 1000), 1, "offset by instance");
    }
}
