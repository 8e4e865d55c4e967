//! The hot-path pick inside a cluster's members: one of the four policies
//! over at most `subset_size` members (or all active VMs in panic mode),
//! among the members with room for the repl's size.
//!
//! Where it sits: [`super::Balancer::choose`] calls [`pick`] with the
//! current view's cluster, the repl's size and per-request entropy; the
//! simulator calls the same function. No allocation, no lock: least-loaded
//! and p2c read one ledger counter per member looked at; round-robin bumps
//! one atomic.
//!
//! Room: a member has room when its reserved units (baseline plus this
//! edge's placements since) plus the size fit its capacity. Random and
//! round-robin probe onward from their slot to the next member with room;
//! p2c takes the lighter of its two that has room, else the least loaded
//! member with room. None when no member has room.
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

/// Picks a member with room for `size` by `policy`; None when there is none.
#[inline]
pub fn pick<'a>(
    cv: &'a ClusterView,
    policy: Policy,
    ledger: &PlacementLedger,
    entropy: u64,
    size: u32,
) -> Option<&'a Member> {
    let m = &cv.members;
    let fits = |x: &&Member| x.has_room(ledger, size);
    match m.len() {
        0 => return None,
        1 => return m.first().filter(fits),
        _ => {}
    }
    let probe_from = |start: usize| (0..m.len()).map(|k| &m[(start + k) % m.len()]).find(fits);
    match policy {
        Policy::LeastLoaded => least_loaded(m.iter().filter(fits), ledger, entropy),
        Policy::P2c => {
            let i = below(entropy, m.len());
            let mut j = below(entropy >> 32, m.len() - 1);
            if j >= i {
                j += 1;
            }
            let (a, b) = (&m[i], &m[j]);
            match (fits(&a), fits(&b)) {
                (true, true) => Some(if b.load(ledger) < a.load(ledger) { b } else { a }),
                (true, false) => Some(a),
                (false, true) => Some(b),
                (false, false) => least_loaded(m.iter().filter(fits), ledger, entropy),
            }
        }
        Policy::Random => probe_from(below(entropy, m.len())),
        Policy::RoundRobin => probe_from(cv.rr.fetch_add(1, Ordering::Relaxed) as usize),
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
