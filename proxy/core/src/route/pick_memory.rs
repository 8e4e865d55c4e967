//! The short-lived memory of which VM was picked for a not-running repl,
//! shared by all requests, lock-free and allocation-free.
//!
//! Where it sits: the routing decision consults [`PickMemory`] before
//! asking the balancer ([`crate::balancer`]) for a VM for a repl that has no
//! container yet, so that concurrent first connections of one repl (a
//! multiplayer session opening, a client retrying) all land on one VM.
//!
//! Invariants:
//! - One `AtomicU64` per memory slot packs `tag:32 | vm fingerprint:12 |
//!   expiry:20` (expiry in 10 ms units, wrapping every ~2.9 h). Slots are
//!   direct-mapped by repl hash; a collision just evicts (memory is a hint).
//! - [`PickMemory::remember`] is insert-if-absent by compare-and-swap: when
//!   two requests race, both leave with the winner's VM.
//! - Keyed by stable hashes (repl id, VM id), not table indexes, so it
//!   survives table republishes.
//!
//! Time is passed in (unix ms). Start at [`PickMemory::remember`].

use std::sync::atomic::{AtomicU64, Ordering};

/// Slots in the pick memory (power of two; 512 KiB).
pub const PICK_MEMORY_SLOTS: usize = 1 << 16;

const EXP_BITS: u32 = 20;
const FP_BITS: u32 = 12;
const EXP_MASK: u64 = (1 << EXP_BITS) - 1;
const FP_MASK: u64 = (1 << FP_BITS) - 1;

/// The 12-bit fingerprint of a VM id hash kept in memory slots.
#[inline]
pub fn vm_fingerprint(vm_id_hash: u64) -> u16 {
    (vm_id_hash & FP_MASK) as u16
}

#[inline]
fn units(now_ms: u64) -> u64 {
    (now_ms / 10) & EXP_MASK
}

/// See the module docs.
pub struct PickMemory {
    slots: Box<[AtomicU64]>,
    ttl_units: AtomicU64,
}

impl PickMemory {
    /// `ttl_ms` must be below ~2.9 hours (config caps it at 60 s).
    pub fn new(ttl_ms: u64) -> PickMemory {
        PickMemory {
            slots: (0..PICK_MEMORY_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            ttl_units: AtomicU64::new(Self::units_of(ttl_ms)),
        }
    }

    fn units_of(ttl_ms: u64) -> u64 {
        (ttl_ms / 10).clamp(1, EXP_MASK / 2)
    }

    /// Changes how long new picks are remembered (config reload).
    pub fn set_ttl(&self, ttl_ms: u64) {
        self.ttl_units.store(Self::units_of(ttl_ms), Ordering::Relaxed);
    }

    #[inline]
    fn slot(&self, repl_hash: u64) -> (&AtomicU64, u64) {
        let i = repl_hash as usize & (PICK_MEMORY_SLOTS - 1);
        // Tag from the high half; never 0 so an empty slot never matches.
        let tag = (repl_hash >> 32) | 1;
        (&self.slots[i], tag & 0xFFFF_FFFF)
    }

    #[inline]
    fn live(&self, word: u64, tag: u64, now_ms: u64) -> Option<u16> {
        if word >> 32 != tag {
            return None;
        }
        let exp = word & EXP_MASK;
        let remaining = exp.wrapping_sub(units(now_ms)) & EXP_MASK;
        // Live while 0 < remaining <= ttl (wrap-aware).
        if remaining == 0 || remaining > self.ttl_units.load(Ordering::Relaxed) {
            return None;
        }
        Some(((word >> EXP_BITS) & FP_MASK) as u16)
    }

    /// The remembered VM fingerprint for this repl, if still live.
    #[inline]
    pub fn recall(&self, repl_hash: u64, now_ms: u64) -> Option<u16> {
        let (slot, tag) = self.slot(repl_hash);
        self.live(slot.load(Ordering::Acquire), tag, now_ms)
    }

    /// Remembers `vm_fp` for this repl unless a live pick is already there;
    /// returns the fingerprint every racing caller must use.
    pub fn remember(&self, repl_hash: u64, vm_fp: u16, now_ms: u64) -> u16 {
        let (slot, tag) = self.slot(repl_hash);
        let exp = (units(now_ms) + self.ttl_units.load(Ordering::Relaxed)) & EXP_MASK;
        let new = (tag << 32) | ((vm_fp as u64 & FP_MASK) << EXP_BITS) | exp;
        let mut cur = slot.load(Ordering::Acquire);
        loop {
            if let Some(fp) = self.live(cur, tag, now_ms) {
                return fp;
            }
            match slot.compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return vm_fp,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Remembers `vm_fp` for this repl whatever was there: the VM that
    /// answered after the remembered one failed to connect.
    pub fn replace(&self, repl_hash: u64, vm_fp: u16, now_ms: u64) {
        let (slot, tag) = self.slot(repl_hash);
        let exp = (units(now_ms) + self.ttl_units.load(Ordering::Relaxed)) & EXP_MASK;
        slot.store(
            (tag << 32) | ((vm_fp as u64 & FP_MASK) << EXP_BITS) | exp,
            Ordering::Release,
        );
    }

    /// Forgets this repl's pick (e.g. the VM refused the connection).
    pub fn forget(&self, repl_hash: u64) {
        let (slot, tag) = self.slot(repl_hash);
        let cur = slot.load(Ordering::Acquire);
        if cur >> 32 == tag {
            let _ = slot.compare_exchange(cur, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_until_ttl_then_forgets() {
        let m = PickMemory::new(1000);
        assert_eq!(m.recall(42, 0), None);
        assert_eq!(m.remember(42, 7, 10_000), 7);
        assert_eq!(m.recall(42, 10_500), Some(7));
        assert_eq!(m.recall(42, 11_000), None, "expired at ttl");
        assert_eq!(m.remember(42, 9, 11_000), 9, "expired entries are replaced");
        m.forget(42);
        assert_eq!(m.recall(42, 11_001), None);
    }

    #[test]
    fn first_writer_wins_races() {
        let m = PickMemory::new(5000);
        assert_eq!(m.remember(99, 1, 0), 1);
        assert_eq!(m.remember(99, 2, 1), 1, "a later pick gets the remembered VM");
        // A different repl mapping to the same slot (same low bits, other
        // tag) is not confused with it, and evicts it (memory is a hint).
        let other = 99 + (1u64 << 40);
        assert_eq!(m.recall(other, 2), None);
        assert_eq!(m.remember(other, 5, 2), 5);
        assert_eq!(m.recall(99, 3), None, "evicted");
        assert_eq!(m.recall(other, 3), Some(5));
    }

    #[test]
    fn replace_overrides_a_live_pick() {
        let m = PickMemory::new(5000);
        assert_eq!(m.remember(7, 1, 0), 1);
        m.replace(7, 2, 10);
        assert_eq!(m.recall(7, 20), Some(2));
        assert_eq!(
            m.remember(7, 3, 30),
            2,
            "racing first requests now follow the replacement"
        );
    }

    #[test]
    fn survives_clock_wrap() {
        let m = PickMemory::new(1000);
        let near_wrap = (EXP_MASK - 5) * 10;
        m.remember(5, 3, near_wrap);
        assert_eq!(m.recall(5, near_wrap + 500), Some(3));
        assert_eq!(m.recall(5, near_wrap + 2000), None);
    }

    #[test]
    fn concurrent_remembers_agree() {
        let m = std::sync::Arc::new(PickMemory::new(10_000));
        let handles: Vec<_> = (0..8u16)
            .map(|i| {
                let m = m.clone();
                std::thread::spawn(move || m.remember(1234, i + 1, 50))
            })
            .collect();
        let got: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(got.windows(2).all(|w| w[0] == w[1]), "{got:?}");
    }
}
