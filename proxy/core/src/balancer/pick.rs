//! The hot-path pick inside a cluster's members: one of the four policies
//! over at most `subset_size` members (or all active VMs in panic mode).
//!
//! Where it sits: [`super::Balancer::choose`] calls [`pick`] with the
//! current view's cluster and per-request entropy; the simulator calls the
//! same function. No allocation, no lock: least-loaded and p2c read one
//! ledger counter per member looked at; round-robin bumps one atomic.
//!
//! Ties (equal load) go to the member with the larger `splitmix64(entropy ^ id)`,
//! so concurrent edges and requests do not all pick the same first member.

use crate::bits::splitmix64;
use std::sync::atomic::Ordering;

use super::ledger::PlacementLedger;
use super::view::{ClusterView, Member};
use super::Policy;

/// A uniform index below `n` from 32 random bits (Lemire's reduction).
#[inline]
fn below(bits: u64, n: usize) -> usize {
    (((bits & 0xFFFF_FFFF) * n as u64) >> 32) as usize
}

/// Picks a member by `policy`; None when there is none.
#[inline]
pub fn pick<'a>(cv: &'a ClusterView, policy: Policy, ledger: &PlacementLedger, entropy: u64) -> Option<&'a Member> {
    let m = &cv.members;
    match m.len() {
        0 => return None,
        1 => return m.first(),
        _ => {}
    }
    match policy {
        Policy::LeastLoaded => least_loaded(m.iter(), ledger, entropy),
        Policy::P2c => {
            let i = below(entropy, m.len());
            let mut j = below(entropy >> 32, m.len() - 1);
            if j >= i {
                j += 1;
            }
            let (a, b) = (&m[i], &m[j]);
            Some(if b.load(ledger) < a.load(ledger) { b } else { a })
        }
        Policy::Random => m.get(below(entropy, m.len())),
        Policy::RoundRobin => {
            let n = cv.rr.fetch_add(1, Ordering::Relaxed) as usize;
            m.get(n % m.len())
        }
    }
}

/// The least loaded of `members`, ties broken by entropy.
#[inline]
pub fn least_loaded<'a>(
    members: impl Iterator<Item = &'a Member>,
    ledger: &PlacementLedger,
    entropy: u64,
) -> Option<&'a Member> {
    members.min_by_key(|m| (m.load(ledger), std::cmp::Reverse(splitmix64(entropy ^ m.id_hash))))
}
