//! Passive outlier detection: consecutive connect failures per VM, counted
//! on the request path, judged off it.
//!
//! Where it sits: the proxy glue calls [`Outliers::failure`] when a
//! connection to a VM fails and [`Outliers::success`] when a VM answers;
//! the view builder ([`super::view`]) ejects a VM whose count reached
//! `eject_after_failures` (capped per cluster) and calls
//! [`Outliers::reset`] so it must fail afresh after its ejection ends.
//!
//! Invariants: lock-free, one `AtomicU32` per slot, direct-mapped by VM id
//! hash (a collision can only make ejection earlier, which is capped).
//! `success` writes only when the count is non-zero so healthy traffic
//! does not bounce a cache line between cores.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

const SLOTS: usize = 1 << 14;

/// See the module docs.
pub struct Outliers {
    failures: Box<[AtomicU32]>,
    /// Set when some count reaches the threshold: the builder should look.
    dirty: AtomicBool,
    threshold: AtomicU32,
}

impl Outliers {
    pub fn new(threshold: u32) -> Outliers {
        Outliers {
            failures: (0..SLOTS).map(|_| AtomicU32::new(0)).collect(),
            dirty: AtomicBool::new(false),
            threshold: AtomicU32::new(threshold.max(1)),
        }
    }

    /// Changes the failure count that ejects (config reload).
    pub fn set_threshold(&self, threshold: u32) {
        self.threshold.store(threshold.max(1), Ordering::Relaxed);
    }

    #[inline]
    fn slot(&self, vm_id_hash: u64) -> &AtomicU32 {
        &self.failures[(vm_id_hash >> 17) as usize & (SLOTS - 1)]
    }

    /// A connection to this VM failed.
    pub fn failure(&self, vm_id_hash: u64) {
        let n = self.slot(vm_id_hash).fetch_add(1, Ordering::Relaxed) + 1;
        if n == self.threshold.load(Ordering::Relaxed) {
            self.dirty.store(true, Ordering::Release);
        }
    }

    /// This VM answered.
    #[inline]
    pub fn success(&self, vm_id_hash: u64) {
        let s = self.slot(vm_id_hash);
        if s.load(Ordering::Relaxed) != 0 {
            s.store(0, Ordering::Relaxed);
        }
    }

    /// Whether this VM's consecutive failures reached the threshold.
    pub fn tripped(&self, vm_id_hash: u64) -> bool {
        self.slot(vm_id_hash).load(Ordering::Relaxed) >= self.threshold.load(Ordering::Relaxed)
    }

    pub fn failures(&self, vm_id_hash: u64) -> u32 {
        self.slot(vm_id_hash).load(Ordering::Relaxed)
    }

    /// Starts counting afresh (called when the VM is ejected).
    pub fn reset(&self, vm_id_hash: u64) {
        self.slot(vm_id_hash).store(0, Ordering::Relaxed);
    }

    /// Takes the "something tripped" flag.
    pub fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::AcqRel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trips_after_consecutive_failures_only() {
        let o = Outliers::new(3);
        o.failure(1 << 17);
        o.failure(1 << 17);
        o.success(1 << 17);
        o.failure(1 << 17);
        o.failure(1 << 17);
        assert!(!o.tripped(1 << 17), "a success in between resets");
        assert!(!o.take_dirty());
        o.failure(1 << 17);
        assert!(o.tripped(1 << 17));
        assert!(o.take_dirty());
        assert!(!o.take_dirty(), "taken once");
        o.reset(1 << 17);
        assert_eq!(o.failures(1 << 17), 0);
    }
}
