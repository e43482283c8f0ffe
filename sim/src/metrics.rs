//! What a run measured: headline figures, time series and distributions, in plain data that the
//! report turns into files.
//!
//! The QoS definitions themselves (continuity, startup delay, live latency, offload) live in
//! `peer::qos`, so that the simulator and the real node compute them with the same code; this
//! module only collects and aggregates them.

use std::collections::BTreeMap;

use serde::Serialize;

/// One run of a scenario with one protocol configuration (Selfcast, or the source-only
/// baseline).
#[derive(Debug, Clone, Serialize)]
pub struct RunSeries {
    /// "selfcast" or "source-only".
    pub label: String,
    /// Headline figures.
    pub summary: Summary,
    /// One sample per sampling interval of simulated time.
    pub samples: Vec<Sample>,
    /// Live latency of every segment delivered to a viewer, in milliseconds (for the CDF).
    pub latencies_ms: Vec<f64>,
    /// Startup delay of every viewer that started playing, in milliseconds.
    pub startups_ms: Vec<f64>,
}

/// The headline figures of one run. Every field is derived from simulated events only, so the
/// same scenario and seed give the same values, bit for bit.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Segments available before their playback deadline / segments due, over all viewers.
    pub continuity: f64,
    /// 1 − bytes uploaded by the source / bytes received by all viewers.
    pub source_offload: f64,
    /// Live latency percentiles in milliseconds: p50, p95, p99.
    pub latency_ms: Percentiles,
    /// Startup delay percentiles in milliseconds.
    pub startup_ms: Percentiles,
    /// Viewers that joined during the run.
    pub viewers_joined: u64,
    /// Viewers that started playing.
    pub viewers_started: u64,
    /// Most viewers present at once.
    pub peak_viewers: u64,
    /// Bytes the source uploaded.
    pub source_bytes: u64,
    /// Bytes all viewers received (segment payloads).
    pub viewer_bytes: u64,
    /// Segments that reached viewers.
    pub segments_delivered: u64,
    /// Control messages and bytes by message kind.
    pub messages: BTreeMap<String, Traffic>,
    /// Discrete events the engine processed.
    pub events: u64,
    /// Viewers' hops from the source along the feeding tree at the end (fed viewers only).
    pub tree_depth: Percentiles,
    /// Viewers nobody fed at the end.
    pub unfed_viewers: u64,
    /// On demand: look-ups in the overlay's holder index.
    pub holder_lookups: u64,
    /// What the optimizer's loop did (runs with the loop only).
    pub optimizer: Option<crate::optimizer_loop::LoopSummary>,
}

/// p50 / p95 / p99 of a distribution (0 when empty).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
}

/// Messages and bytes of one kind.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Traffic {
    /// How many were sent.
    pub count: u64,
    /// Their encoded size in bytes.
    pub bytes: u64,
}

/// The swarm at one moment of simulated time (figures over the interval since the previous
/// sample).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Sample {
    /// Simulated seconds since the start.
    pub t_s: f64,
    /// Viewers present.
    pub viewers: u64,
    /// Continuity over the interval (segments on time / segments due); 1 when none were due.
    pub continuity: f64,
    /// Source offload over the interval.
    pub source_offload: f64,
    /// Source upload rate over the interval, in Mbit/s.
    pub source_mbps: f64,
    /// Viewer-to-viewer rate over the interval, in Mbit/s.
    pub p2p_mbps: f64,
    /// Median live latency of the segments delivered in the interval, in milliseconds.
    pub latency_p50_ms: f64,
}

/// The p50/p95/p99 of `values` (nearest-rank; sorts a copy).
pub fn percentiles(values: &[f64]) -> Percentiles {
    if values.is_empty() {
        return Percentiles::default();
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = |p: f64| {
        let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[i]
    };
    Percentiles {
        p50: rank(0.50),
        p95: rank(0.95),
        p99: rank(0.99),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = percentiles(&values);
        assert_eq!((p.p50, p.p95, p.p99), (50.0, 95.0, 99.0));
        assert_eq!(percentiles(&[7.0]).p99, 7.0);
        assert_eq!(percentiles(&[]).p50, 0.0);
    }
}
