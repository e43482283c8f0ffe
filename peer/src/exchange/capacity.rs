//! What a peer measures about bandwidth: its own upload capacity (which sets its upload slots
//! and what it reports to partners) and how fast each partner delivers to it (which picks the
//! holder a segment is asked from).

use std::time::{Duration, Instant};

/// A peer's upload capacity, measured from its own uploads.
///
/// Uploads under way share the uplink (QUIC's congestion control and the simulator's fair
/// shares both split it), so each finished upload's rate times the number of uploads that
/// shared the link with it is a sample of the whole uplink; samples are smoothed. A receiver
/// slower than our uplink makes a sample low, which errs on the safe side.
#[derive(Debug, Clone)]
pub(crate) struct UploadMeter {
    estimate_bps: f64,
    /// Samples above this are capped: what the user said the uplink carries, if they did (a
    /// sample can overshoot when uploads did not share the uplink evenly).
    ceiling_bps: f64,
}

/// Uploads shorter than this say little about the uplink (the round trip dominates).
const MIN_SAMPLE_BYTES: usize = 64 * 1024;

impl UploadMeter {
    /// Starts from `initial` bit/s, never above `limit` if there is one.
    pub(crate) fn new(initial: f64, limit: Option<f64>) -> Self {
        let ceiling_bps = limit.unwrap_or(f64::INFINITY).max(1.0);
        Self {
            estimate_bps: initial.clamp(1.0, ceiling_bps),
            ceiling_bps,
        }
    }

    /// The current estimate in bit/s.
    pub(crate) fn estimate_bps(&self) -> f64 {
        self.estimate_bps
    }

    /// An upload of `bytes` that started at `started` ended now, all of it sent, while
    /// `sharing` uploads (itself included) were under way on average.
    pub(crate) fn completed(&mut self, now: Instant, started: Instant, bytes: usize, sharing: f64) {
        let took = now.saturating_duration_since(started);
        if bytes < MIN_SAMPLE_BYTES || took.is_zero() {
            return;
        }
        let sample = bytes as f64 * 8.0 / took.as_secs_f64() * sharing.max(1.0);
        // One odd sample (a burst that left in a socket buffer) moves it only so far.
        let sample = sample.min(self.estimate_bps * 4.0).min(self.ceiling_bps);
        self.estimate_bps = 0.8 * self.estimate_bps + 0.2 * sample;
    }
}

/// How fast a partner delivers to us: an exponentially weighted mean of the rate of each
/// segment it sent (bytes over request-to-arrival time, so its queue and round trip count).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct DeliveryRate {
    bps: Option<f64>,
}

impl DeliveryRate {
    /// A segment of `bytes` arrived `took` after it was asked for.
    pub(crate) fn sample(&mut self, bytes: usize, took: Duration) {
        let secs = took.as_secs_f64().max(1e-3);
        let rate = bytes as f64 * 8.0 / secs;
        self.bps = Some(match self.bps {
            Some(old) => 0.6 * old + 0.4 * rate,
            None => rate,
        });
    }

    /// A request to it failed or timed out: it looks slower.
    pub(crate) fn penalize(&mut self) {
        if let Some(bps) = &mut self.bps {
            *bps *= 0.5;
        }
    }

    /// The measured rate, if any segment came from this partner yet.
    pub(crate) fn bps(self) -> Option<f64> {
        self.bps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_uploads_measure_the_whole_uplink() {
        let t0 = Instant::now();
        let mut m = UploadMeter::new(5e6, Some(5e6));
        for _ in 0..30 {
            // Two uploads of 250 kB sharing a 4 Mbit/s uplink take a second each.
            m.completed(t0 + Duration::from_secs(1), t0, 250_000, 2.0);
        }
        assert!(
            (m.estimate_bps() - 4e6).abs() < 0.05e6,
            "{}",
            m.estimate_bps()
        );
        // Tiny uploads are ignored; a wild sample is bounded.
        m.completed(t0 + Duration::from_millis(1), t0, 1000, 1.0);
        m.completed(t0 + Duration::from_millis(1), t0, 250_000, 1.0);
        assert!(m.estimate_bps() <= 5e6 + 1.0, "{}", m.estimate_bps());
    }

    #[test]
    fn delivery_rate_follows_samples_and_penalties() {
        let mut r = DeliveryRate::default();
        assert_eq!(r.bps(), None);
        r.sample(250_000, Duration::from_secs(1));
        assert_eq!(r.bps(), Some(2e6));
        r.penalize();
        assert_eq!(r.bps(), Some(1e6));
    }
}
