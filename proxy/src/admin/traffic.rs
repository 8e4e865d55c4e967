//! The status page's traffic card: requests per second, 4xx and 5xx per
//! second, p99 duration and open WebSocket tunnels over the last minute,
//! read from the same metrics `/metrics` serves.
//!
//! Where it sits: the admin listener keeps a [`TrafficSampler`]; every
//! status page (and at most every [`SAMPLE_EVERY`]) it takes a [`Sample`]
//! of the counters (off the request path: the admin runtime reads the
//! metric families) and keeps a minute of them. [`traffic`] (pure) turns
//! the oldest and newest sample into the card's figures. Start there.

use std::collections::VecDeque;
use std::sync::Mutex;

use crate::metrics::Metrics;

/// Samples closer together than this are not kept (the window stays a
/// minute of history whatever the page's refresh rate).
pub const SAMPLE_EVERY: u64 = 5_000;
/// How far back the card looks.
pub const WINDOW_MS: u64 = 60_000;

/// The counters at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    pub at_ms: u64,
    pub requests: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    /// `request_duration_seconds` buckets: (upper bound s, cumulative count).
    pub buckets: Vec<(f64, u64)>,
    pub tunnels: i64,
}

/// The card's figures.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct TrafficModel {
    /// Seconds the rates are over (0: only one sample yet).
    pub window_s: f64,
    pub requests_per_s: f64,
    pub status_4xx_per_s: f64,
    pub status_5xx_per_s: f64,
    /// Upper bound of the duration bucket holding the 99th percentile
    /// (None: no request in the window).
    pub p99_ms: Option<f64>,
    pub tunnels: i64,
}

/// Pure: the traffic between two samples.
pub fn traffic(old: &Sample, new: &Sample) -> TrafficModel {
    let secs = new.at_ms.saturating_sub(old.at_ms) as f64 / 1000.0;
    let rate = |a: u64, b: u64| {
        if secs > 0.0 {
            b.saturating_sub(a) as f64 / secs
        } else {
            0.0
        }
    };
    let delta: Vec<(f64, u64)> = new
        .buckets
        .iter()
        .map(|&(le, n)| {
            let before = old.buckets.iter().find(|b| b.0 == le).map_or(0, |b| b.1);
            (le, n.saturating_sub(before))
        })
        .collect();
    let total = delta.last().map_or(0, |d| d.1);
    let p99_ms = (total > 0)
        .then(|| {
            let want = (total as f64 * 0.99).ceil() as u64;
            delta.iter().find(|d| d.1 >= want).map(|d| d.0 * 1000.0)
        })
        .flatten();
    TrafficModel {
        window_s: secs,
        requests_per_s: rate(old.requests, new.requests),
        status_4xx_per_s: rate(old.status_4xx, new.status_4xx),
        status_5xx_per_s: rate(old.status_5xx, new.status_5xx),
        p99_ms,
        tunnels: new.tunnels,
    }
}

/// Reads the counters now.
pub fn sample(m: &Metrics, now_ms: u64) -> Sample {
    let mut s = Sample {
        at_ms: now_ms,
        tunnels: m.tunnels_active.get(),
        ..Sample::default()
    };
    use prometheus::core::Collector;
    for family in m.requests.vec().collect() {
        for metric in family.get_metric() {
            let n = metric.get_counter().get_value() as u64;
            let code = metric
                .get_label()
                .iter()
                .find(|l| l.get_name() == "code")
                .map_or("", |l| l.get_value());
            s.requests += n;
            match code.as_bytes().first() {
                Some(b'4') => s.status_4xx += n,
                Some(b'5') => s.status_5xx += n,
                _ => {}
            }
        }
    }
    for family in m.duration.collect() {
        for metric in family.get_metric() {
            let h = metric.get_histogram();
            s.buckets = h
                .get_bucket()
                .iter()
                .map(|b| (b.get_upper_bound(), b.get_cumulative_count()))
                .collect();
            s.buckets.push((f64::INFINITY, h.get_sample_count()));
        }
    }
    s
}

/// A minute of samples (admin listener only; the request path never
/// touches it).
#[derive(Default)]
pub struct TrafficSampler {
    samples: Mutex<VecDeque<Sample>>,
}

impl TrafficSampler {
    /// Takes a sample now (kept when the newest is [`SAMPLE_EVERY`] old)
    /// and returns the traffic over the window.
    pub fn observe(&self, m: &Metrics, now_ms: u64) -> TrafficModel {
        let now = sample(m, now_ms);
        let mut q = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        while q.len() > 1 && q.front().is_some_and(|s| now_ms.saturating_sub(s.at_ms) > WINDOW_MS) {
            q.pop_front();
        }
        let model = q.front().map_or_else(
            || TrafficModel {
                tunnels: now.tunnels,
                ..TrafficModel::default()
            },
            |old| traffic(old, &now),
        );
        if q.back().is_none_or(|b| now_ms.saturating_sub(b.at_ms) >= SAMPLE_EVERY) {
            q.push_back(now);
        }
        model
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(at_ms: u64, requests: u64, s4: u64, s5: u64, buckets: &[(f64, u64)]) -> Sample {
        Sample {
            at_ms,
            requests,
            status_4xx: s4,
            status_5xx: s5,
            buckets: buckets.to_vec(),
            tunnels: 3,
        }
    }

    #[test]
    fn rates_and_p99_come_from_the_difference_of_two_samples() {
        let old = at(0, 1_000, 10, 1, &[(0.001, 900), (0.01, 1_000), (f64::INFINITY, 1_000)]);
        // 10 s later: 2,000 more requests, 990 of them within 1 ms, 1,000
        // more within 10 ms, 10 slower than that.
        let new = at(
            10_000,
            3_000,
            110,
            21,
            &[(0.001, 1_890), (0.01, 2_990), (f64::INFINITY, 3_000)],
        );
        let t = traffic(&old, &new);
        assert_eq!(t.window_s, 10.0);
        assert_eq!(t.requests_per_s, 200.0);
        assert_eq!(t.status_4xx_per_s, 10.0);
        assert_eq!(t.status_5xx_per_s, 2.0);
        // 1,990 of 2,000 (99.5 %) within 10 ms: p99 is that bucket.
        assert_eq!(t.p99_ms, Some(10.0));
        assert_eq!(t.tunnels, 3);
    }

    #[test]
    fn no_request_in_the_window_has_no_p99_and_zero_rates() {
        let s = at(0, 5, 0, 0, &[(0.001, 5), (f64::INFINITY, 5)]);
        let later = Sample {
            at_ms: 5_000,
            ..s.clone()
        };
        let t = traffic(&s, &later);
        assert_eq!((t.requests_per_s, t.p99_ms), (0.0, None));
    }

    #[test]
    fn the_sampler_keeps_a_minute_and_reports_over_it() {
        let m = Metrics::new();
        let sampler = TrafficSampler::default();
        assert_eq!(sampler.observe(&m, 1_000).window_s, 0.0);
        for _ in 0..120 {
            m.requests.inc(0, 0, 200);
        }
        m.requests.inc(0, 2, 404);
        let t = sampler.observe(&m, 7_000);
        assert_eq!(t.window_s, 6.0);
        assert!((t.requests_per_s - 121.0 / 6.0).abs() < 1e-9, "{t:?}");
        assert!((t.status_4xx_per_s - 1.0 / 6.0).abs() < 1e-9);
        // Much later, the first sample has left the window.
        let t = sampler.observe(&m, 100_000);
        assert_eq!(t.window_s, 93.0, "the oldest kept sample is the one at 7 s");
    }
}
