//! Measurement bookkeeping: per-stream sequence accounting (loss and order) and latency
//! histograms.
//!
//! Latencies are recorded in nanoseconds into an HDR histogram with 3 significant digits
//! (0.1 % relative error) and reported in microseconds. Loss is exact: a subscriber knows every
//! sequence number a publisher sent on its stream, so a gap is a lost message and a number
//! lower than one already seen is an order violation.

use hdrhistogram::Histogram;
use serde::Serialize;

/// The longest latency the histogram can hold: one hour. Longer values are clamped (and would
/// mean the run is broken anyway).
const LATENCY_NS_MAX: u64 = 3_600_000_000_000;

/// Order and loss accounting for one (publisher, topic) stream as one subscriber sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeqTracker {
    /// The sequence number expected next: one past the highest seen.
    pub next: u64,
    pub received: u64,
    /// Messages skipped over by a jump forward.
    gaps: u64,
    /// Messages that arrived after a higher number: out of order (or duplicated).
    pub order_violations: u64,
}

impl SeqTracker {
    pub fn observe(&mut self, seq: u64) {
        self.received += 1;
        if seq >= self.next {
            self.gaps += seq - self.next;
            self.next = seq + 1;
        } else {
            self.order_violations += 1;
        }
    }

    /// Messages lost on this stream, given how many the publisher sent in all. A late arrival
    /// fills one gap; the tail the subscriber never saw is lost too.
    pub fn lost(&self, sent: u64) -> u64 {
        let tail = sent.saturating_sub(self.next);
        self.gaps.saturating_sub(self.order_violations) + tail
    }
}

/// A latency histogram in nanoseconds.
#[derive(Clone, Debug)]
pub struct Latency {
    histogram: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Latency::new()
    }
}

impl Latency {
    pub fn new() -> Latency {
        // Invariant: the bounds are constants that hdrhistogram accepts (low >= 1, high >=
        // 2 * low, 3 significant digits); `new_with_bounds` only fails otherwise.
        let histogram = Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3)
            .expect("constant histogram bounds are valid");
        Latency { histogram }
    }

    pub fn record(&mut self, ns: u64) {
        self.histogram.saturating_record(ns.max(1));
    }

    pub fn merge(&mut self, other: &Latency) {
        // Invariant: both histograms were made by `new` with the same bounds, so `add` cannot
        // fail.
        self.histogram.add(&other.histogram).expect("histograms with the same bounds merge");
    }

    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    pub fn summary(&self) -> LatencySummary {
        let h = &self.histogram;
        let us = |ns: u64| ns as f64 / 1000.0;
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: h.len(),
            mean_us: h.mean() / 1000.0,
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

/// Percentiles in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn track(seqs: &[u64]) -> SeqTracker {
        let mut t = SeqTracker::default();
        for &s in seqs {
            t.observe(s);
        }
        t
    }

    #[test]
    fn in_order_stream_has_no_loss() {
        let t = track(&[0, 1, 2, 3, 4]);
        assert_eq!((t.lost(5), t.order_violations, t.received), (0, 0, 5));
    }

    #[test]
    fn gaps_and_tail_are_lost() {
        let t = track(&[0, 1, 4, 5, 9]);
        // 2, 3, 6, 7, 8 skipped; 10 and 11 never arrived.
        assert_eq!(t.lost(12), 7);
        assert_eq!(t.order_violations, 0);
    }

    #[test]
    fn late_arrival_is_an_order_violation_not_a_loss() {
        let t = track(&[0, 2, 1, 3]);
        assert_eq!((t.lost(4), t.order_violations), (0, 1));
    }

    #[test]
    fn missing_start_is_lost() {
        let t = track(&[3, 4]);
        assert_eq!(t.lost(5), 3);
    }

    #[test]
    fn nothing_received() {
        assert_eq!(SeqTracker::default().lost(10), 10);
    }

    #[test]
    fn percentiles_of_a_uniform_distribution() {
        let mut l = Latency::new();
        for us in 1..=10_000u64 {
            l.record(us * 1000);
        }
        let s = l.summary();
        assert_eq!(s.count, 10_000);
        let close = |got: f64, want: f64| (got - want).abs() / want < 0.002;
        assert!(close(s.p50_us, 5000.0), "{s:?}");
        assert!(close(s.p90_us, 9000.0), "{s:?}");
        assert!(close(s.p99_us, 9900.0), "{s:?}");
        assert!(close(s.p999_us, 9990.0), "{s:?}");
        assert!(close(s.max_us, 10_000.0), "{s:?}");
        assert!(close(s.mean_us, 5000.5), "{s:?}");
    }

    #[test]
    fn merge_adds_counts_and_keeps_extremes() {
        let mut a = Latency::new();
        let mut b = Latency::new();
        a.record(1_000);
        b.record(2_000_000);
        a.merge(&b);
        let s = a.summary();
        assert_eq!(s.count, 2);
        assert!((s.max_us - 2000.0).abs() < 2.0);
        assert_eq!(Latency::new().summary(), LatencySummary::default());
    }
}
