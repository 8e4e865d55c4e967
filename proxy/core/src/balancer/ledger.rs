//! The placement ledger: how many size units of repls this edge placed on
//! each VM, so a VM's load is its last sample plus what this edge sent it
//! since.
//!
//! Where it sits: [`super::Balancer::record`] adds the repl's size per pick; the
//! view builder stores each VM's count at sample time as a *mark*, and the
//! least-loaded and p2c policies read `count - mark` on the hot path.
//!
//! Invariants: counters only grow (wrapping), so there is no reset to race
//! with; slots are direct-mapped by VM id hash (a collision adds another
//! VM's placements: the ledger is advisory). Keyed by the stable id hash,
//! not a table index, so it survives table republishes (Pingora #821).

use std::sync::atomic::{AtomicU32, Ordering};

/// Counters in the ledger (power of two; 256 KiB).
pub const LEDGER_SLOTS: usize = 1 << 16;

/// See the module docs.
pub struct PlacementLedger {
    counts: Box<[AtomicU32]>,
}

impl Default for PlacementLedger {
    fn default() -> Self {
        Self::new()
    }
}

impl PlacementLedger {
    pub fn new() -> PlacementLedger {
        PlacementLedger {
            counts: (0..LEDGER_SLOTS).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    #[inline]
    fn slot(&self, vm_id_hash: u64) -> &AtomicU32 {
        &self.counts[(vm_id_hash >> 7) as usize & (LEDGER_SLOTS - 1)]
    }

    /// Units placed on this VM since the edge started (wrapping): a mark.
    #[inline]
    pub fn count(&self, vm_id_hash: u64) -> u32 {
        self.slot(vm_id_hash).load(Ordering::Relaxed)
    }

    /// Units placed on this VM since `mark` was taken.
    #[inline]
    pub fn since(&self, vm_id_hash: u64, mark: u32) -> u32 {
        self.count(vm_id_hash).wrapping_sub(mark)
    }

    /// Counts a placement of `units` size units on this VM.
    #[inline]
    pub fn record(&self, vm_id_hash: u64, units: u32) {
        self.slot(vm_id_hash).fetch_add(units, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_since_a_mark_across_wrap() {
        let l = PlacementLedger::new();
        let mark = l.count(77);
        l.record(77, 1);
        l.record(77, 4);
        assert_eq!(l.since(77, mark), 5);
        assert_eq!(l.since(77, l.count(77)), 0);
        // Wrap: a mark taken just before u32::MAX still subtracts right.
        l.slot(5).store(u32::MAX, Ordering::Relaxed);
        let m = l.count(5);
        l.record(5, 1);
        l.record(5, 1);
        assert_eq!(l.since(5, m), 2);
    }
}
