//! What a process tree costs, read from `/proc`: CPU time (user + system,
//! every thread of every process under a root pid), resident memory, open
//! file descriptors, and the kernel's TCP socket memory.
//!
//! Where it sits: the comparison harness ([`crate::compare`]) samples a
//! proxy before and after each load run; the difference of CPU time divided
//! by the requests served is the "CPU-µs per request" of the results. Linux
//! only. Start at [`ProcTree::sample`].

use std::time::Duration;

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ; 100 on Linux).
const TICKS_PER_SEC: u64 = 100;

/// A process and, at sample time, all its descendants.
#[derive(Debug, Clone, Copy)]
pub struct ProcTree {
    pub root: u32,
}

/// One reading of a process tree.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    pub cpu: Duration,
    pub rss_bytes: u64,
    pub fds: u64,
    pub processes: u32,
}

fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    out
}

/// user + system ticks of one process (all its threads).
fn cpu_ticks(pid: u32) -> u64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // The command name may hold spaces; fields restart after the last ')'.
    let Some(rest) = s.rfind(')').map(|i| &s[i + 2..]) else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
    let stime: u64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    utime + stime
}

/// Resident memory of one process.
pub fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

fn fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0)
}

impl ProcTree {
    pub fn new(root: u32) -> ProcTree {
        ProcTree { root }
    }

    /// Every pid in the tree now (root first).
    pub fn pids(&self) -> Vec<u32> {
        let mut all = vec![self.root];
        let mut i = 0;
        while i < all.len() {
            let c = children(all[i]);
            all.extend(c);
            i += 1;
        }
        all
    }

    pub fn sample(&self) -> Sample {
        let pids = self.pids();
        let ticks: u64 = pids.iter().map(|&p| cpu_ticks(p)).sum();
        Sample {
            cpu: Duration::from_millis(ticks * 1000 / TICKS_PER_SEC),
            rss_bytes: pids.iter().map(|&p| rss(p)).sum(),
            fds: pids.iter().map(|&p| fds(p)).sum(),
            processes: pids.len() as u32,
        }
    }
}

/// The kernel's memory for all TCP sockets (`/proc/net/sockstat`, pages).
pub fn tcp_socket_memory_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("TCP:"))
        .and_then(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.iter()
                .position(|&w| w == "mem")
                .and_then(|i| f.get(i + 1)?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 4096
}

/// The soft limit on open files of this process (the harness's children
/// inherit it): bounds how many tunnels one proxy process can hold.
pub fn open_files_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(1024)
}

/// CPU model and core count, for the results header.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_default();
    format!(
        "{cpu}, {} vCPU",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_sampled() {
        let t = ProcTree::new(std::process::id());
        // Burn a little CPU so the tick counter moves.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(60) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let s = t.sample();
        assert!(s.cpu >= Duration::from_millis(30), "{s:?}");
        assert!(s.rss_bytes > 1 << 20, "{s:?}");
        assert!(s.fds >= 3, "{s:?}");
        assert!(open_files_limit() >= 3);
    }
}
