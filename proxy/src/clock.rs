//! The proxy glue's one source of time and randomness (the placement
//! crates keep their own: `edgeplane_control_sync::now_unix_ms`, which this
//! wraps, and the sync's reconnect jitter). The pure core never reads a
//! clock or draws random bits itself: the request path takes them here and
//! passes them in, so decisions are reproducible in tests. Tunnels' close
//! delays and the masks of the close frames sent to VMs come from here too.

use std::cell::Cell;

use edgeplane_core::bits::splitmix64;

/// Unix time in milliseconds (0 if the clock is before 1970).
#[inline]
pub fn now_ms() -> u64 {
    edgeplane_control_sync::now_unix_ms()
}

/// Per-thread random bits (no shared state, no syscall): balancer
/// tie-breaks and random picks, the access-log sample, tunnel close delays
/// and close-frame masks. Not for secrets.
pub fn entropy() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(splitmix64(now_ms() ^ (&STATE as *const _ as u64)));
    }
    STATE.with(|s| {
        let x = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        s.set(x);
        splitmix64(x)
    })
}
