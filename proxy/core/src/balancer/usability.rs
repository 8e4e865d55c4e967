//! VM health as the balancer sees it: the last good sample of each VM and
//! what went wrong since, merged round by round, and the rule that says
//! whether a VM may get new repls.
//!
//! Where it sits: the health monitor (the proxy's `background::health`) scrapes VMs (or
//! queries Prometheus) off the hot path, turns each round into
//! [`Outcome`]s and calls [`HealthMap::next`]; the result is published
//! whole and the view builder ([`super::view`]) reads it with
//! [`usability`]. Nothing here does I/O; time comes in as `now_ms`.
//!
//! Invariants:
//! - A failed or garbage scrape never erases the last good sample; it is
//!   counted and the VM stays usable until the sample is older than
//!   `stale_after` (health is advisory).
//! - A VM with no `metrics_addr` is *unmonitored*: usable on its state
//!   alone, with the snapshot's container count as its load.
//! - A monitored VM never sampled yet is *pending*: usable until it has
//!   been watched for `stale_after` without one good sample.
//! - Each sample carries the ledger mark of the moment it was taken (the
//!   newest round at or before its timestamp), so the load the balancer
//!   uses is "sample + this edge's placements since the sample", even when
//!   the sample reaches the edge late.

use hashbrown::HashMap;

use super::ledger::PlacementLedger;

/// What one good scrape of a VM said.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    pub containers: u32,
    /// Size units its containers hold (`conman_units_reserved`); None when
    /// the VM does not report it (its container count stands in).
    pub units: Option<u32>,
    /// CPU utilisation, 0.0 to 1.0.
    pub cpu: f32,
    pub ready: bool,
    /// When the sample was taken (unix ms): scrape time, or the sample's
    /// own timestamp from Prometheus.
    pub sampled_at_ms: u64,
}

/// A scrape result for one VM.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    Ok(Reading),
    /// Why it failed (the `reason` label of the scrape error counter).
    Err(ScrapeError),
}

/// Why a VM's health could not be read: the `reason` label of
/// `edgeplane_health_scrape_errors_total` and `/balancer`'s `last_error`
/// (every value is exported at 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScrapeError {
    /// The metrics endpoint (or Prometheus) refused or could not be reached.
    Connect,
    /// No complete answer within `health.scrape_timeout_ms`.
    Timeout,
    /// An answer that is not a success: a non-2xx status, a broken HTTP
    /// exchange, or Prometheus answering `"status": "error"`.
    Status,
    /// The body could not be read whole (cut, or over 1 MiB).
    Body,
    /// Not the Prometheus text format (or not JSON from Prometheus).
    Parse,
    /// The exposition lacks `conman_containers`.
    Missing,
    /// A value out of range (negative, NaN, absurdly large).
    Invalid,
    /// Prometheus has no `conman_containers` series for the VM.
    Absent,
}

impl ScrapeError {
    pub const ALL: [ScrapeError; 8] = [
        ScrapeError::Connect,
        ScrapeError::Timeout,
        ScrapeError::Status,
        ScrapeError::Body,
        ScrapeError::Parse,
        ScrapeError::Missing,
        ScrapeError::Invalid,
        ScrapeError::Absent,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ScrapeError::Connect => "connect",
            ScrapeError::Timeout => "timeout",
            ScrapeError::Status => "status",
            ScrapeError::Body => "body",
            ScrapeError::Parse => "parse",
            ScrapeError::Missing => "missing",
            ScrapeError::Invalid => "invalid",
            ScrapeError::Absent => "absent",
        }
    }
}

/// A reading as kept, with the ledger mark taken at merge time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub reading: Reading,
    pub ledger_mark: u32,
}

/// What the edge knows about one monitored VM.
#[derive(Debug, Clone, PartialEq)]
pub struct VmHealth {
    pub sample: Option<Sample>,
    /// When this VM was first watched (unix ms).
    pub watched_since_ms: u64,
    /// Failed rounds since the last good one.
    pub consecutive_errors: u32,
    pub last_error: Option<ScrapeError>,
    /// Ledger marks taken at the last rounds (time, count), newest last:
    /// a sample taken before this round (Prometheus, a slow scrape) gets
    /// the mark of its own time, so placements made since it was taken
    /// still count as load.
    pub recent_marks: [(u64, u32); MARKS_KEPT],
}

/// Rounds of ledger marks remembered per VM.
pub const MARKS_KEPT: usize = 4;

/// Health of every monitored VM, keyed by VM id hash. Immutable once
/// published; each round makes a new one.
#[derive(Debug, Clone, Default)]
pub struct HealthMap {
    /// Bumped on every round; the view builder rebuilds when it changes.
    pub generation: u64,
    pub vms: HashMap<u64, VmHealth>,
}

/// Whether a VM may get new repls, and why not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usability {
    /// Sampled recently and ready.
    Usable,
    /// No `metrics_addr`: usable on state alone.
    Unmonitored,
    /// Watched for less than `stale_after`, no sample yet: usable.
    Pending,
    /// No good sample within `stale_after`.
    Stale,
    /// Its last sample says it takes no new containers.
    NotReady,
    /// Passive ejection after connect failures.
    Ejected,
}

impl Usability {
    pub fn is_usable(self) -> bool {
        matches!(self, Usability::Usable | Usability::Unmonitored | Usability::Pending)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Usability::Usable => "usable",
            Usability::Unmonitored => "unmonitored",
            Usability::Pending => "pending",
            Usability::Stale => "stale",
            Usability::NotReady => "not_ready",
            Usability::Ejected => "ejected",
        }
    }
}

/// The health rule of docs/contract.md §4 for one active VM.
pub fn usability(monitored: bool, h: Option<&VmHealth>, now_ms: u64, stale_after_ms: u64) -> Usability {
    if !monitored {
        return Usability::Unmonitored;
    }
    let Some(h) = h else {
        // Not watched yet: the monitor has not run a round since it appeared.
        return Usability::Pending;
    };
    match h.sample {
        Some(s) if now_ms.saturating_sub(s.reading.sampled_at_ms) <= stale_after_ms => {
            if s.reading.ready {
                Usability::Usable
            } else {
                Usability::NotReady
            }
        }
        Some(_) => Usability::Stale,
        None if now_ms.saturating_sub(h.watched_since_ms) <= stale_after_ms => Usability::Pending,
        None => Usability::Stale,
    }
}

impl HealthMap {
    /// Merges one round. `watched` lists the VMs monitored now (VMs no
    /// longer listed are dropped); `outcomes` may omit some of them (not
    /// scraped this round: they keep what they had).
    pub fn next(
        &self,
        watched: impl IntoIterator<Item = u64>,
        outcomes: impl IntoIterator<Item = (u64, Outcome)>,
        ledger: &PlacementLedger,
        now_ms: u64,
    ) -> HealthMap {
        let mut vms: HashMap<u64, VmHealth> = watched
            .into_iter()
            .map(|vm| {
                let mut h = self.vms.get(&vm).cloned().unwrap_or(VmHealth {
                    sample: None,
                    watched_since_ms: now_ms,
                    consecutive_errors: 0,
                    last_error: None,
                    recent_marks: [(now_ms, ledger.count(vm)); MARKS_KEPT],
                });
                h.recent_marks.rotate_left(1);
                h.recent_marks[MARKS_KEPT - 1] = (now_ms, ledger.count(vm));
                (vm, h)
            })
            .collect();
        for (vm, outcome) in outcomes {
            let Some(h) = vms.get_mut(&vm) else { continue };
            match outcome {
                Outcome::Ok(reading) => {
                    // The newest mark not after the sample; the oldest kept
                    // one when the sample is older than all of them.
                    let ledger_mark = h
                        .recent_marks
                        .iter()
                        .rev()
                        .find(|(at, _)| *at <= reading.sampled_at_ms)
                        .unwrap_or(&h.recent_marks[0])
                        .1;
                    h.sample = Some(Sample { reading, ledger_mark });
                    h.consecutive_errors = 0;
                    h.last_error = None;
                }
                Outcome::Err(reason) => {
                    h.consecutive_errors = h.consecutive_errors.saturating_add(1);
                    h.last_error = Some(reason);
                }
            }
        }
        HealthMap {
            generation: self.generation + 1,
            vms,
        }
    }

    /// Age in ms of the oldest good sample among monitored VMs, and how
    /// many have none within `stale_after_ms`.
    pub fn ages(&self, now_ms: u64, stale_after_ms: u64) -> (u64, usize) {
        let mut oldest = 0;
        let mut stale = 0;
        for h in self.vms.values() {
            let age = match h.sample {
                Some(s) => now_ms.saturating_sub(s.reading.sampled_at_ms),
                None => now_ms.saturating_sub(h.watched_since_ms),
            };
            oldest = oldest.max(age);
            if usability(true, Some(h), now_ms, stale_after_ms) == Usability::Stale {
                stale += 1;
            }
        }
        (oldest, stale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(containers: u32, at: u64) -> Outcome {
        Outcome::Ok(Reading {
            containers,
            units: None,
            cpu: 0.5,
            ready: true,
            sampled_at_ms: at,
        })
    }

    #[test]
    fn failed_scrapes_keep_the_sample_until_stale() {
        let ledger = PlacementLedger::new();
        let h0 = HealthMap::default();
        let h1 = h0.next(
            [1, 2],
            [(1, ok(10, 1000)), (2, Outcome::Err(ScrapeError::Connect))],
            &ledger,
            1000,
        );
        assert_eq!(usability(true, h1.vms.get(&1), 1000, 3000), Usability::Usable);
        assert_eq!(
            usability(true, h1.vms.get(&2), 1000, 3000),
            Usability::Pending,
            "never sampled, watched briefly"
        );
        let h2 = h1.next(
            [1, 2],
            [
                (1, Outcome::Err(ScrapeError::Parse)),
                (2, Outcome::Err(ScrapeError::Connect)),
            ],
            &ledger,
            3500,
        );
        let v1 = &h2.vms[&1];
        assert_eq!(v1.sample.unwrap().reading.containers, 10, "last sample kept");
        assert_eq!((v1.consecutive_errors, v1.last_error), (1, Some(ScrapeError::Parse)));
        assert_eq!(usability(true, Some(v1), 3500, 3000), Usability::Usable);
        assert_eq!(usability(true, Some(v1), 4001, 3000), Usability::Stale);
        assert_eq!(usability(true, h2.vms.get(&2), 4001, 3000), Usability::Stale);
        assert_eq!(h2.generation, 2);
        assert_eq!(h2.ages(4001, 3000), (3001, 2));
        let h3 = h2.next([1], [], &ledger, 5000);
        assert!(!h3.vms.contains_key(&2), "unwatched VMs are dropped");
        assert_eq!(usability(false, None, 5000, 3000), Usability::Unmonitored);
    }

    #[test]
    fn not_ready_and_ledger_marks() {
        let ledger = PlacementLedger::new();
        ledger.record(9, 1);
        let r = Reading {
            containers: 3,
            units: None,
            cpu: 0.1,
            ready: false,
            sampled_at_ms: 10,
        };
        let h = HealthMap::default().next([9], [(9, Outcome::Ok(r))], &ledger, 10);
        assert_eq!(usability(true, h.vms.get(&9), 10, 100), Usability::NotReady);
        assert_eq!(h.vms[&9].sample.unwrap().ledger_mark, 1);
    }

    #[test]
    fn a_late_sample_gets_the_mark_of_its_own_time() {
        let ledger = PlacementLedger::new();
        let h1 = HealthMap::default().next([9], [], &ledger, 1000);
        ledger.record(9, 1);
        let h2 = h1.next([9], [], &ledger, 2000);
        ledger.record(9, 1);
        ledger.record(9, 1);
        // Taken at 1500 (after the round at 1000), merged at 3000.
        let r = Reading {
            containers: 3,
            units: None,
            cpu: 0.1,
            ready: true,
            sampled_at_ms: 1500,
        };
        let h3 = h2.next([9], [(9, Outcome::Ok(r))], &ledger, 3000);
        let mark = h3.vms[&9].sample.unwrap().ledger_mark;
        assert_eq!(mark, 0, "the round at 1000 is the newest before 1500");
        assert_eq!(ledger.since(9, mark), 3, "placements since the sample count as load");
    }
}
