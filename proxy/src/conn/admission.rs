//! Connection admission: the global and per-client-IP caps of `[limits]`
//! (`max_connections`, `max_connections_per_ip`).
//!
//! Where it sits: [`crate::http::EdgeApp`] asks [`Admission::admit`] once
//! per accepted client connection, before any TLS handshake or HTTP parse;
//! the returned [`Admitted`] guard lives inside the connection's stream and
//! gives the slots back when the connection is dropped, however it ends.
//!
//! Invariants: no lock and no allocation per connection. Per-IP counts live
//! in a fixed table of atomic counters indexed by a hash of the address, so
//! two addresses sharing a slot share one cap: a collision can only refuse
//! early, never admit more than the cap from one address. Counters never go
//! below zero (every increment has exactly one matching decrement in Drop).
//!
//! Plain Rust: no tokio, no Pingora. Start at [`Admission::admit`].

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

/// Slots in the per-IP table (a power of two; 256 KiB of counters).
pub const PER_IP_SLOTS: usize = 1 << 16;

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` connections are open.
    Full,
    /// `max_connections_per_ip` connections from this address are open.
    PerIp,
}

impl Refusal {
    /// Label for `edgeplane_connections_refused_total{reason}`.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Full => "max_connections",
            Refusal::PerIp => "max_connections_per_ip",
        }
    }

    /// The answer written to a refused plain-HTTP client before closing.
    pub fn response(self) -> &'static [u8] {
        match self {
            Refusal::Full => {
                b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 5\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            }
            Refusal::PerIp => {
                b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 5\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            }
        }
    }
}

/// Shared counters of open client connections.
#[derive(Debug)]
pub struct Admission {
    max_total: AtomicUsize,
    max_per_ip: AtomicU32,
    total: AtomicUsize,
    /// Connections that have not finished reading a first request head.
    fresh: AtomicUsize,
    /// When the newest request head was read (ms since the epoch).
    last_request_ms: std::sync::atomic::AtomicU64,
    per_ip: Box<[AtomicU32]>,
}

/// One admitted connection; dropping it gives its slots back.
#[derive(Debug)]
pub struct Admitted {
    admission: Arc<Admission>,
    slot: Option<usize>,
    fresh: std::sync::atomic::AtomicBool,
}

impl Admission {
    /// Changes the caps (config reload). Connections already open stay;
    /// a lower cap refuses new ones until enough have closed.
    pub fn set_caps(&self, max_total: usize, max_per_ip: usize) {
        self.max_total.store(max_total, Ordering::Relaxed);
        self.max_per_ip
            .store(max_per_ip.min(u32::MAX as usize) as u32, Ordering::Relaxed);
    }

    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Admission> {
        Arc::new(Admission {
            max_total: AtomicUsize::new(max_total),
            max_per_ip: AtomicU32::new(max_per_ip.min(u32::MAX as usize) as u32),
            total: AtomicUsize::new(0),
            fresh: AtomicUsize::new(0),
            last_request_ms: std::sync::atomic::AtomicU64::new(0),
            per_ip: (0..PER_IP_SLOTS).map(|_| AtomicU32::new(0)).collect(),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Connections open now that have not read a whole request head yet
    /// (a stop waits a moment for their first request).
    pub fn fresh(&self) -> usize {
        self.fresh.load(Ordering::Relaxed)
    }

    /// When the newest request head was read (ms since the epoch; 0: none).
    pub fn last_request_ms(&self) -> u64 {
        self.last_request_ms.load(Ordering::Relaxed)
    }

    /// Takes a slot for a connection from `ip` (None: a Unix socket or an
    /// unknown peer, counted only against the global cap).
    pub fn admit(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<Admitted, Refusal> {
        let prev = self.total.fetch_add(1, Ordering::Relaxed);
        if prev >= self.max_total.load(Ordering::Relaxed) {
            self.total.fetch_sub(1, Ordering::Relaxed);
            return Err(Refusal::Full);
        }
        let slot = ip.map(slot_of);
        if let Some(s) = slot {
            let prev = self.per_ip[s].fetch_add(1, Ordering::Relaxed);
            if prev >= self.max_per_ip.load(Ordering::Relaxed) {
                self.per_ip[s].fetch_sub(1, Ordering::Relaxed);
                self.total.fetch_sub(1, Ordering::Relaxed);
                return Err(Refusal::PerIp);
            }
        }
        self.fresh.fetch_add(1, Ordering::Relaxed);
        Ok(Admitted {
            admission: self.clone(),
            slot,
            fresh: std::sync::atomic::AtomicBool::new(true),
        })
    }
}

impl Admitted {
    /// The connection read a request head at `now_ms`: no longer fresh.
    pub fn request_read(&self, now_ms: u64) {
        // Written at most once per millisecond: a shared line, read first.
        let last = &self.admission.last_request_ms;
        if now_ms > last.load(Ordering::Relaxed) {
            last.fetch_max(now_ms, Ordering::Relaxed);
        }
        self.served();
    }

    /// No longer fresh.
    fn served(&self) {
        if self.fresh.swap(false, Ordering::Relaxed) {
            self.admission.fresh.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.served();
        if let Some(s) = self.slot {
            self.admission.per_ip[s].fetch_sub(1, Ordering::Relaxed);
        }
        self.admission.total.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The table slot of an address: IPv4 by address, IPv6 by its /64 (one
/// host usually holds a whole /64, so counting single v6 addresses would
/// let it open 2^64 times the cap).
fn slot_of(ip: IpAddr) -> usize {
    let key: u64 = match ip {
        IpAddr::V4(v4) => u32::from(v4) as u64,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u32::from(v4) as u64,
            None => (u128::from(v6) >> 64) as u64 ^ 0x6a09_e667_f3bc_c908,
        },
    };
    (edgeplane_core::bits::splitmix64(key) as usize) & (PER_IP_SLOTS - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn per_ip_cap_refuses_only_that_address_and_frees_on_drop() {
        let a = Admission::new(100, 2);
        let g1 = a.admit(ip("10.0.0.1")).unwrap();
        let _g2 = a.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(a.admit(ip("10.0.0.1")).unwrap_err(), Refusal::PerIp);
        let _other = a.admit(ip("10.0.0.2")).expect("another address is not capped");
        assert_eq!(a.open(), 3);
        drop(g1);
        assert_eq!(a.open(), 2);
        let _g3 = a.admit(ip("10.0.0.1")).expect("a freed slot is reusable");
    }

    #[test]
    fn global_cap_refuses_and_counts_back() {
        let a = Admission::new(2, 2);
        let g = [a.admit(ip("10.0.0.1")).unwrap(), a.admit(None).unwrap()];
        assert_eq!(a.admit(ip("10.0.0.3")).unwrap_err(), Refusal::Full);
        assert_eq!(a.open(), 2, "a refused connection leaves no count behind");
        drop(g);
        assert_eq!(a.open(), 0);
        assert!(a.admit(ip("10.0.0.3")).is_ok());
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let a = Admission::new(100, 1);
        let _g = a.admit(ip("2001:db8:1:2::1")).unwrap();
        assert_eq!(a.admit(ip("2001:db8:1:2::ffff")).unwrap_err(), Refusal::PerIp);
        let _v4 = a.admit(ip("192.0.2.7")).unwrap();
        assert_eq!(a.admit(ip("::ffff:192.0.2.7")).unwrap_err(), Refusal::PerIp);
    }
}
