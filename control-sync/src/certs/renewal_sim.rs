//! A minute-by-minute simulation of the issuer's renewals (issue 32's
//! "10,000 certificates due at once, two issuers"): the same [`RateCap`]
//! and [`renew_after`] the issuer runs, with the lease moving between two
//! issuers and an outage of the issuer in the middle. Pure: the clock is
//! the loop, the jitter a seeded generator. `edgeplane-bench
//! cert-renewals` prints its report; the unit test holds the properties.

use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};

use super::issuer::{renew_after, RateCap};

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub certificates: usize,
    pub orders_per_minute: u32,
    /// Certificate lifetime, days.
    pub lifetime_days: u32,
    /// Simulated span, days.
    pub days: u32,
    /// Minutes an order takes (ordered -> stored).
    pub order_minutes: u64,
    /// The lease holder dies at this minute; the other takes over one
    /// minute later (its session-lease check).
    pub failover_at_minute: u64,
    /// No issuer runs from this minute for this many minutes (both down).
    pub outage: (u64, u64),
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            certificates: 10_000,
            orders_per_minute: 60,
            lifetime_days: 90,
            days: 200,
            order_minutes: 1,
            failover_at_minute: 75 * 1440,
            outage: (100 * 1440, 20 * 1440),
            seed: 7,
        }
    }
}

/// What happened.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SimReport {
    pub orders: u64,
    /// Most orders started in one minute.
    pub max_orders_in_a_minute: u32,
    /// Orders started for a hostname that already had one in flight.
    pub duplicate_orders: u64,
    /// Certificates that expired before their renewal was stored.
    pub expired: u64,
    /// Orders started by each issuer.
    pub by_issuer: [u64; 2],
    /// Orders started per day (the spread of renewals).
    pub per_day: Vec<u64>,
    /// Longest wait of a due certificate (minutes past renew_after).
    pub max_wait_minutes: u64,
}

/// SplitMix64 as the jitter source.
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Runs the simulation: every certificate issued in the first minute (an
/// import, the worst case for a burst), then renewed for `days`.
pub fn simulate(cfg: &SimConfig) -> SimReport {
    use std::cmp::Reverse;
    let life = i64::from(cfg.lifetime_days) * 86_400;
    let mut rng = Rng(cfg.seed);
    // Per certificate: not_after (s); the heap holds (renew_after, index)
    // of every certificate not in flight: the due query's order.
    let mut not_after: Vec<i64> = vec![life; cfg.certificates];
    let mut due: BinaryHeap<Reverse<(i64, usize)>> = (0..cfg.certificates)
        .map(|i| Reverse((renew_after(0, life, rng.unit()), i)))
        .collect();
    let mut report = SimReport {
        per_day: vec![0; cfg.days as usize],
        ..Default::default()
    };
    let mut caps = [RateCap::new(cfg.orders_per_minute), RateCap::new(cfg.orders_per_minute)];
    let mut in_flight: HashSet<usize> = HashSet::new();
    let mut finishing: VecDeque<(u64, usize)> = VecDeque::new();
    let mut started_in_minute: HashMap<u64, u32> = HashMap::new();
    let end = u64::from(cfg.days) * 1440;
    for minute in 0..end {
        let now = minute as i64 * 60;
        while finishing.front().is_some_and(|&(m, _)| m <= minute) {
            let (_, i) = finishing.pop_front().unwrap();
            in_flight.remove(&i);
            not_after[i] = now + life;
            due.push(Reverse((renew_after(now, now + life, rng.unit()), i)));
        }
        let (down_from, down_for) = cfg.outage;
        if minute >= down_from && minute < down_from + down_for {
            continue;
        }
        let holder = match minute {
            m if m < cfg.failover_at_minute => 0,
            m if m == cfg.failover_at_minute => continue, // the lease changes hands
            _ => 1,
        };
        while let Some(&Reverse((at, i))) = due.peek() {
            if at > now || !caps[holder].try_take(minute * 60_000) {
                break;
            }
            due.pop();
            if !in_flight.insert(i) {
                report.duplicate_orders += 1;
            }
            if not_after[i] <= now {
                report.expired += 1;
            }
            report.orders += 1;
            report.by_issuer[holder] += 1;
            report.per_day[(minute / 1440) as usize] += 1;
            report.max_wait_minutes = report.max_wait_minutes.max(((now - at) / 60) as u64);
            *started_in_minute.entry(minute).or_default() += 1;
            finishing.push_back((minute + cfg.order_minutes, i));
        }
    }
    let end_s = end as i64 * 60;
    report.expired += due.iter().filter(|Reverse((_, i))| not_after[*i] <= end_s).count() as u64;
    report.max_orders_in_a_minute = started_in_minute.values().copied().max().unwrap_or(0);
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_thousand_renewals_stay_under_the_cap_with_no_duplicate_and_none_expired() {
        // Shortened to 100 days of 30-day certificates so the test is quick;
        // the bench runs the full 200 days of 90-day ones.
        let cfg = SimConfig {
            lifetime_days: 30,
            days: 100,
            failover_at_minute: 25 * 1440,
            outage: (40 * 1440, 5 * 1440),
            ..SimConfig::default()
        };
        let r = simulate(&cfg);
        assert!(r.max_orders_in_a_minute <= 60, "{r:?}");
        assert_eq!(r.duplicate_orders, 0);
        assert_eq!(r.expired, 0, "{r:?}");
        assert!(
            r.by_issuer[0] > 0 && r.by_issuer[1] > 0,
            "both issuers held the lease: {r:?}"
        );
        // About three renewals per certificate in 100 days of 30-day ones.
        assert!(r.orders >= 30_000, "{r:?}");
    }
}
