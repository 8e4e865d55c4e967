//! [`Counting`]: the edge's global allocator (mimalloc) with an optional
//! count of allocations, so a test can hold the request path to its
//! allocation budget (docs/request-path.md, "Allocations per request")
//! against the real process.
//!
//! Off unless the process starts with `EDGEPLANE_COUNT_ALLOCATIONS=1`
//! ([`init_from_env`]); then every allocation adds one to this thread's
//! own cache-line slot (no shared counter, no contention) and
//! `/debug/allocations` on the admin listener reports the sums. Off, an
//! allocation costs one relaxed load more.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

static ENABLED: AtomicBool = AtomicBool::new(false);
/// Slots for this many threads; later ones share the last.
const SLOTS: usize = 64;

#[repr(align(64))]
struct Slot {
    allocations: AtomicU64,
    bytes: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Slot = Slot {
    allocations: AtomicU64::new(0),
    bytes: AtomicU64::new(0),
};
static COUNTS: [Slot; SLOTS] = [EMPTY; SLOTS];
static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    // `const`: no lazy initialisation, so no allocation inside the allocator.
    static SLOT: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// Turns counting on when `EDGEPLANE_COUNT_ALLOCATIONS=1` (call first in main).
pub fn init_from_env() {
    if std::env::var_os("EDGEPLANE_COUNT_ALLOCATIONS").is_some_and(|v| v == "1") {
        ENABLED.store(true, Ordering::Relaxed);
    }
}

/// Whether allocations are counted in this process.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// (allocations, bytes) since the start, summed over threads.
pub fn totals() -> (u64, u64) {
    COUNTS.iter().fold((0, 0), |(a, b), s| {
        (
            a + s.allocations.load(Ordering::Relaxed),
            b + s.bytes.load(Ordering::Relaxed),
        )
    })
}

fn count(size: usize) {
    let slot = SLOT
        .try_with(|s| {
            if s.get() == usize::MAX {
                s.set(NEXT_SLOT.fetch_add(1, Ordering::Relaxed).min(SLOTS - 1));
            }
            s.get()
        })
        .unwrap_or(SLOTS - 1);
    COUNTS[slot].allocations.fetch_add(1, Ordering::Relaxed);
    COUNTS[slot].bytes.fetch_add(size as u64, Ordering::Relaxed);
}

/// `A` with the count (see the module docs).
pub struct Counting<A>(pub A);

// SAFETY: every call is passed on to `A` unchanged; counting touches only
// atomics and a const thread-local, and never allocates.
#[allow(unsafe_code)]
unsafe impl<A: GlobalAlloc> GlobalAlloc for Counting<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if ENABLED.load(Ordering::Relaxed) {
            count(layout.size());
        }
        // SAFETY: the caller's contract is `A::alloc`'s.
        unsafe { self.0.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if ENABLED.load(Ordering::Relaxed) {
            count(layout.size());
        }
        // SAFETY: as above.
        unsafe { self.0.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if ENABLED.load(Ordering::Relaxed) {
            count(new_size);
        }
        // SAFETY: as above.
        unsafe { self.0.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { self.0.dealloc(ptr, layout) }
    }
}
