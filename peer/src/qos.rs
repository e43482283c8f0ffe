//! Quality of service as viewers experience it, with one set of definitions for the simulator
//! and the real node (see DESIGN.md):
//!
//! | measure | definition |
//! |---|---|
//! | continuity index | segments available before their playback deadline / segments due |
//! | startup delay | join (or seek) until the first segment is playable |
//! | live latency | segment created at the source until it is available at the viewer |
//! | source offload | 1 − bytes uploaded by source and origin / bytes received by all viewers |
//!
//! A [`ViewerQos`] follows one viewer. Playback is modelled as a player that starts with the
//! first media segment `s0` it holds (and the init segment), then needs segment `s0 + k` at
//! `start + k × segment duration`; a segment that is not here by then counts as missed (a real
//! player would stall or skip). A live player starts no earlier than `s0`'s creation plus its
//! target latency (hls.js keeps about three segments behind the live edge), so live deadlines
//! sit at least a target latency after each segment's creation. Until it starts, an older
//! segment that comes starts it sooner if it can (hls.js starts three segments behind the end of
//! the playlist, which lists every segment the peer has a statement for, and the gateway holds
//! its request until the segment is here). Time comes in from the caller, like everywhere in
//! the cores.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Playback as seen by one viewer.
#[derive(Debug, Clone)]
pub struct ViewerQos {
    joined: Instant,
    segment: Duration,
    /// Live: how far behind a segment's creation the player plays it.
    live_target: Option<Duration>,
    /// When each buffered segment was created at the source (arrival − live latency).
    first_created: Option<(u64, Instant)>,
    has_init: bool,
    /// Media segments here that playback has not passed yet.
    buffered: BTreeSet<u64>,
    /// The first segment played and when playback started.
    start: Option<(u64, Instant)>,
    /// Segments before this one do not count (on demand: where the viewer started or sought).
    from: u64,
    /// The end marker's number, once the stream ended (segments from there on do not exist,
    /// so they are never due).
    end: Option<u64>,
    /// On demand, playback starts at `from` itself (the player asks for the segment it
    /// sought to), not at a later segment that happens to be here first.
    starts_at_from: bool,
    /// The next segment whose deadline has not been judged yet.
    next_due: u64,
    due: u64,
    on_time: u64,
    stored_since_sample: Vec<Duration>,
}

/// What [`ViewerQos::advance`] judged: segments whose deadline passed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Judged {
    /// Segments that came due.
    pub due: u64,
    /// Of those, segments that were here in time.
    pub on_time: u64,
}

impl ViewerQos {
    /// Starts following a viewer that joined (or sought) at `joined`, for a stream of segments
    /// lasting `segment` each; `live_target` is a live player's target latency (`None` for
    /// on-demand playback, which starts as soon as it can).
    pub fn new(joined: Instant, segment: Duration, live_target: Option<Duration>) -> Self {
        Self {
            joined,
            segment,
            live_target,
            first_created: None,
            has_init: false,
            buffered: BTreeSet::new(),
            start: None,
            from: 0,
            starts_at_from: false,
            end: None,
            next_due: 0,
            due: 0,
            on_time: 0,
            stored_since_sample: Vec::new(),
        }
    }

    /// On demand, playback starts at segment `first` (where the viewer started or sought),
    /// once that segment is here: segments before it do not count, and one after it that comes
    /// first (a request from before a seek back) does not start playback there.
    pub fn from_segment(mut self, first: u64) -> Self {
        self.from = first;
        self.starts_at_from = true;
        self
    }

    /// The stream ends before segment `end` (a film's end marker): playback stops there, and
    /// nothing after it comes due.
    pub fn ending_before(mut self, end: u64) -> Self {
        self.set_end(end);
        self
    }

    /// The stream turned out to end before segment `end` (the broadcaster's end marker came).
    pub fn set_end(&mut self, end: u64) {
        self.end = Some(end);
    }

    /// The init segment is here.
    pub fn on_init(&mut self, now: Instant) {
        self.has_init = true;
        self.try_start(now);
    }

    /// Media segment `seq` is here, `latency` after the source created it.
    pub fn on_segment(&mut self, now: Instant, seq: u64, latency: Duration) {
        if seq < self.from {
            return;
        }
        self.stored_since_sample.push(latency);
        let begun = self.has_begun(now);
        if !begun || seq >= self.next_due {
            self.buffered.insert(seq);
        }
        let created = now.checked_sub(latency).unwrap_or(now);
        if !begun && self.first_created.is_none_or(|(first, _)| seq < first) {
            self.first_created = Some((seq, created));
        }
        self.try_start(now);
    }

    /// Judges every segment whose deadline is at or before `now`.
    pub fn advance(&mut self, now: Instant) -> Judged {
        let Some((first, started)) = self.start else {
            return Judged::default();
        };
        let mut judged = Judged::default();
        loop {
            let deadline = started + self.segment * (self.next_due - first) as u32;
            if deadline > now || self.end.is_some_and(|end| self.next_due >= end) {
                break;
            }
            judged.due += 1;
            // A segment counts when it was here at its deadline (it arrived before; late
            // arrivals were dropped from `buffered` when their deadline was judged).
            if self.buffered.remove(&self.next_due) {
                judged.on_time += 1;
            }
            self.next_due += 1;
        }
        self.due += judged.due;
        self.on_time += judged.on_time;
        judged
    }

    /// Continuity so far, or `None` before any segment was due.
    pub fn continuity(&self) -> Option<f64> {
        (self.due > 0).then(|| self.on_time as f64 / self.due as f64)
    }

    /// Segments due and on time so far.
    pub fn totals(&self) -> Judged {
        Judged {
            due: self.due,
            on_time: self.on_time,
        }
    }

    /// The segment playback needs next, once it started (what a player asks for).
    pub fn playhead(&self) -> Option<u64> {
        self.start.map(|_| self.next_due)
    }

    /// The startup delay, once playback's start is scheduled (live, an older segment that
    /// comes before then may still move it sooner).
    pub fn startup_delay(&self) -> Option<Duration> {
        self.start.map(|(_, at)| at - self.joined)
    }

    /// Latencies of the segments stored since the last call.
    pub fn take_latencies(&mut self) -> Vec<Duration> {
        std::mem::take(&mut self.stored_since_sample)
    }

    /// Whether playback has started by `now` (a live player may be waiting for its first
    /// segment's target latency).
    fn has_begun(&self, now: Instant) -> bool {
        self.start.is_some_and(|(_, at)| at <= now)
    }

    /// Schedules playback from the first segment here, or earlier than scheduled: a live
    /// player waiting to play a segment its target latency after creation starts sooner with
    /// an older one that came in the meantime (a newcomer's parent may push the newest
    /// segment before the older one the newcomer starts at arrives).
    fn try_start(&mut self, now: Instant) {
        if !self.has_init || self.has_begun(now) {
            return;
        }
        let Some(&first) = self.buffered.first() else {
            return;
        };
        if self.starts_at_from && first != self.from {
            return;
        }
        let start = match (self.live_target, self.first_created) {
            (Some(target), Some((seq, created))) if seq == first => now.max(created + target),
            _ => now,
        };
        if self
            .start
            .is_some_and(|(seq, at)| seq == first || at <= start)
        {
            return;
        }
        self.start = Some((first, start));
        self.next_due = first;
    }
}

/// Source offload: 1 − bytes uploaded by the source / bytes received by viewers (0 when
/// nothing was received).
pub fn source_offload(source_bytes: u64, viewer_bytes: u64) -> f64 {
    if viewer_bytes == 0 {
        return 0.0;
    }
    (1.0 - source_bytes as f64 / viewer_bytes as f64).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: Duration = Duration::from_secs(1);

    #[test]
    fn a_viewer_with_everything_in_time_has_full_continuity() {
        let t0 = Instant::now();
        let mut q = ViewerQos::new(t0, SEG, None);
        q.on_init(t0 + Duration::from_millis(100));
        q.on_segment(t0 + Duration::from_millis(300), 10, Duration::from_secs(2));
        assert_eq!(q.startup_delay(), Some(Duration::from_millis(300)));
        for k in 1..10u64 {
            q.on_segment(
                t0 + Duration::from_millis(300) + SEG * k as u32 - Duration::from_millis(500),
                10 + k,
                SEG,
            );
        }
        let judged = q.advance(t0 + Duration::from_millis(300) + SEG * 9);
        assert_eq!(
            judged,
            Judged {
                due: 10,
                on_time: 10
            }
        );
        assert_eq!(q.continuity(), Some(1.0));
    }

    #[test]
    fn a_seek_plays_from_its_position_and_tells_the_playhead() {
        let t0 = Instant::now();
        let mut q = ViewerQos::new(t0, SEG, None).from_segment(40);
        q.on_init(t0);
        // A segment from before the seek arrives late: it does not start playback.
        q.on_segment(t0, 12, SEG);
        assert_eq!(q.startup_delay(), None);
        assert_eq!(q.playhead(), None);
        q.on_segment(t0 + Duration::from_millis(700), 40, SEG);
        assert_eq!(q.startup_delay(), Some(Duration::from_millis(700)));
        assert_eq!(q.playhead(), Some(40));
        q.advance(t0 + Duration::from_millis(700) + SEG * 2);
        // 40 was here; 41 and 42 came due without arriving.
        assert_eq!(q.playhead(), Some(43));
        assert_eq!(q.totals(), Judged { due: 3, on_time: 1 });
    }

    #[test]
    fn a_seek_back_waits_for_its_position_not_a_later_segment_that_came_first() {
        let t0 = Instant::now();
        let mut q = ViewerQos::new(t0, SEG, None).from_segment(100);
        q.on_init(t0);
        // Asked for before the seek, far ahead of the new position.
        q.on_segment(t0 + Duration::from_millis(100), 513, SEG);
        assert_eq!(q.startup_delay(), None);
        assert_eq!(q.playhead(), None);
        q.on_segment(t0 + Duration::from_millis(200), 101, SEG);
        assert_eq!(q.startup_delay(), None);
        q.on_segment(t0 + Duration::from_millis(400), 100, SEG);
        assert_eq!(q.startup_delay(), Some(Duration::from_millis(400)));
        q.advance(t0 + Duration::from_millis(400) + SEG);
        assert_eq!(q.totals(), Judged { due: 2, on_time: 2 });
        assert_eq!(q.playhead(), Some(102));
    }

    #[test]
    fn nothing_is_due_after_a_film_ends() {
        let t0 = Instant::now();
        let mut q = ViewerQos::new(t0, SEG, None)
            .from_segment(8)
            .ending_before(10);
        q.on_init(t0);
        q.on_segment(t0, 8, SEG);
        q.on_segment(t0, 9, SEG);
        q.advance(t0 + SEG * 30);
        assert_eq!(q.totals(), Judged { due: 2, on_time: 2 });
        assert_eq!(q.continuity(), Some(1.0));
    }

    #[test]
    fn late_and_missing_segments_count_against_continuity() {
        let t0 = Instant::now();
        let mut q = ViewerQos::new(t0, SEG, None);
        q.on_init(t0);
        q.on_segment(t0, 0, SEG); // playback starts at t0 with segment 0
        q.on_segment(t0 + Duration::from_millis(500), 1, SEG); // due at 1 s: on time
                                                               // segment 2 (due at 2 s) never arrives; segment 3 (due at 3 s) arrives at 3.5 s.
        q.advance(t0 + Duration::from_secs(3));
        q.on_segment(t0 + Duration::from_millis(3500), 3, SEG);
        let judged = q.advance(t0 + Duration::from_secs(4));
        assert_eq!(q.totals(), Judged { due: 5, on_time: 2 });
        assert_eq!(judged.due, 1);
        assert_eq!(q.continuity(), Some(0.4));
    }

    #[test]
    fn nothing_is_due_before_playback_starts() {
        let t0 = Instant::now();
        let mut q = ViewerQos::new(t0, SEG, None);
        q.on_segment(t0, 5, SEG); // no init yet: not playable
        assert_eq!(q.advance(t0 + Duration::from_secs(10)), Judged::default());
        assert_eq!(q.continuity(), None);
        q.on_init(t0 + Duration::from_secs(10));
        assert_eq!(q.startup_delay(), Some(Duration::from_secs(10)));
    }

    #[test]
    fn offload_is_the_share_not_uploaded_by_the_source() {
        assert_eq!(source_offload(0, 0), 0.0);
        assert_eq!(source_offload(25, 100), 0.75);
        assert_eq!(source_offload(100, 100), 0.0);
    }

    #[test]
    fn a_live_player_waiting_for_its_target_latency_starts_sooner_with_an_older_segment() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut q = ViewerQos::new(t0, SEG, Some(Duration::from_secs(3)));
        q.on_init(t0);
        // The newest segment, created 200 ms before the viewer joined, is pushed first: it
        // may play at its target latency, 2.8 s after joining.
        q.on_segment(t0 + ms(300), 10, ms(500));
        assert_eq!(q.startup_delay(), Some(ms(2800)));
        // The segment the viewer starts at, created 3.2 s before it joined, comes next:
        // playback starts with it at once.
        q.on_segment(t0 + ms(400), 7, ms(3600));
        assert_eq!(q.startup_delay(), Some(ms(400)));
        assert_eq!(q.playhead(), Some(7));
        // Once playing, an older segment changes nothing.
        q.on_segment(t0 + ms(500), 6, ms(4700));
        assert_eq!(q.startup_delay(), Some(ms(400)));
        q.on_segment(t0 + ms(600), 8, ms(3800));
        q.on_segment(t0 + ms(700), 9, ms(2900));
        q.advance(t0 + ms(400) + SEG * 3);
        assert_eq!(q.totals(), Judged { due: 4, on_time: 4 });
        assert_eq!(q.startup_delay(), Some(ms(400)));
    }

    #[test]
    fn a_live_player_plays_a_target_latency_behind_creation() {
        let t0 = Instant::now();
        let target = Duration::from_secs(3);
        let mut q = ViewerQos::new(t0, SEG, Some(target));
        q.on_init(t0);
        // Segment k is created at k + 1 s and arrives 400 ms later.
        let arrival = |k: u64| t0 + SEG * (k as u32 + 1) + Duration::from_millis(400);
        q.on_segment(arrival(0), 0, Duration::from_millis(400));
        let startup = q.startup_delay();
        // Playback starts 3 s after segment 0 was created (at 1 s): at 4 s.
        assert_eq!(startup, Some(Duration::from_secs(4)));
        for k in 1..8 {
            q.on_segment(arrival(k), k, Duration::from_millis(400));
        }
        q.advance(t0 + Duration::from_secs(11));
        assert_eq!(q.totals(), Judged { due: 8, on_time: 8 });
    }
}
