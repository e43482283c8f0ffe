//! The media store: the verified init segment and media segments of one stream, the live window
//! over them, and the HLS playlist that lists them.
//!
//! The peer writes (`set_init`, `declare`, `insert`, `end`, `evict_before`); the HTTP handlers
//! read (`init`, `segment`, `wait_segment`, `playlist`). Every write wakes the requests that wait
//! for a segment.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::watch;

use crate::playlist::{self, PlaylistKind, SegmentLine};

/// Whether the stream is live (a sliding window) or on demand (every segment, seekable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamMode {
    /// A live stream: the playlist lists at most `window` segments near the live edge (see
    /// [`MediaStore`] for the exact rule).
    Live {
        /// The most segments the live playlist lists; at least 1 is used.
        window: usize,
    },
    /// A stream on demand: the playlist lists every declared segment.
    Vod,
}

/// The verified segments of one stream, shared between the peer (writer) and the gateway's HTTP
/// handlers (readers) as `Arc<MediaStore>`.
///
/// # Call contract
///
/// The peer calls [`set_init`](Self::set_init) once it has the init segment,
/// [`declare`](Self::declare) for every segment the broadcaster announced, and
/// [`insert`](Self::insert) with the bytes of every segment it has verified — only verified
/// bytes, the gateway serves them as they are. [`end`](Self::end) marks the stream complete. In
/// live mode the peer bounds memory with [`evict_before`](Self::evict_before), keeping at least
/// `window` segments behind the newest one so that players never ask for a segment that is gone.
///
/// # The live window
///
/// Only *present* segments (bytes inserted) are listed. The store keeps `start`, the first
/// sequence number of the window, which never decreases (so `EXT-X-MEDIA-SEQUENCE` is monotonic).
/// After every change it recomputes the window:
///
/// 1. `h` = the newest present segment; `edge` = `max(start, h - window)`.
/// 2. Among the runs of consecutive present segments, pick the *oldest* run that ends at or
///    after `edge`. A missing segment `g` therefore holds the window back (players wait at its
///    end while the peer may still fetch it) as long as `h < g + window`; once the newest present
///    segment is `window` or more ahead of the gap (`h >= g + window`), the gap is given up and
///    the window jumps past it.
/// 3. The window is `[max(start, run_start, run_end + 1 - window) ..= run_end]`, and `start`
///    becomes its first sequence number.
///
/// So the window never lists a missing segment, holds at most `window` segments, its start never
/// moves back, and its end never moves back unless segments are evicted. A segment inserted below
/// `start` is kept (it can still be fetched) but never listed again.
///
/// # The VOD playlist
///
/// Every declared segment, from the lowest sequence number up, with
/// `#EXT-X-PLAYLIST-TYPE:EVENT` until [`end`](Self::end) is called and
/// `#EXT-X-PLAYLIST-TYPE:VOD` plus `#EXT-X-ENDLIST` after. A declared segment that is not here yet
/// is listed: a request for it waits (see `GatewayConfig::segment_wait`).
#[derive(Debug)]
pub struct MediaStore {
    inner: Mutex<Inner>,
    /// Bumped on every insert or eviction; `wait_segment` watches it.
    changed: watch::Sender<u64>,
    /// The segment the player asked for last: where playback is (it moves on a seek).
    playhead: watch::Sender<Option<u64>>,
}

/// A point-in-time summary of a [`MediaStore`], for status pages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreStats {
    /// The stream mode.
    pub mode: StreamMode,
    /// Whether the init segment is here.
    pub has_init: bool,
    /// Segments declared (announced), present or not.
    pub declared: usize,
    /// Segments whose verified bytes are here.
    pub present: usize,
    /// The newest present segment.
    pub newest: Option<u64>,
    /// The live window's first and last sequence numbers, in live mode once there is one.
    pub live_window: Option<(u64, u64)>,
    /// Whether [`MediaStore::end`] was called.
    pub ended: bool,
}

#[derive(Debug)]
struct Inner {
    mode: StreamMode,
    init: Option<Bytes>,
    segments: BTreeMap<u64, Slot>,
    /// The longest duration ever declared: the playlist's target duration, kept stable.
    max_duration: Duration,
    ended: bool,
    /// The live window's first sequence number so far; never decreases.
    live_start: u64,
    /// The current live window, inclusive.
    live_window: Option<(u64, u64)>,
}

#[derive(Debug, Clone)]
struct Slot {
    duration: Duration,
    bytes: Option<Bytes>,
}

impl MediaStore {
    /// An empty store in `mode`.
    pub fn new(mode: StreamMode) -> Arc<Self> {
        let (changed, _) = watch::channel(0);
        let (playhead, _) = watch::channel(None);
        Arc::new(Self {
            playhead,
            inner: Mutex::new(Inner {
                mode,
                init: None,
                segments: BTreeMap::new(),
                max_duration: Duration::ZERO,
                ended: false,
                live_start: 0,
                live_window: None,
            }),
            changed,
        })
    }

    /// Switches mode, e.g. once a viewer has learnt from the channel record whether it is live.
    pub fn set_mode(&self, mode: StreamMode) {
        let mut inner = self.lock();
        inner.mode = mode;
        inner.advance_live();
    }

    /// Forgets the stream (the broadcaster restarted: a new session numbers its segments from
    /// 0 again) and starts over in `mode`.
    pub fn reset(&self, mode: StreamMode) {
        {
            let mut inner = self.lock();
            inner.mode = mode;
            inner.init = None;
            inner.segments.clear();
            inner.max_duration = Duration::ZERO;
            inner.ended = false;
            inner.live_start = 0;
            inner.live_window = None;
        }
        self.playhead.send_replace(None);
        self.changed.send_modify(|v| *v += 1);
    }

    /// Stores the (verified) init segment.
    pub fn set_init(&self, bytes: Bytes) {
        self.lock().init = Some(bytes);
        self.notify();
    }

    /// Records that segment `seq` exists in the stream (the broadcaster announced it), whether or
    /// not its bytes are here yet. A later `declare` or `insert` updates the duration.
    pub fn declare(&self, seq: u64, duration: Duration) {
        let mut inner = self.lock();
        inner.max_duration = inner.max_duration.max(duration);
        inner
            .segments
            .entry(seq)
            .and_modify(|slot| slot.duration = duration)
            .or_insert(Slot {
                duration,
                bytes: None,
            });
    }

    /// Stores the verified bytes of segment `seq` (declaring it if it was not) and wakes the
    /// requests waiting for it.
    pub fn insert(&self, seq: u64, duration: Duration, bytes: Bytes) {
        {
            let mut inner = self.lock();
            inner.max_duration = inner.max_duration.max(duration);
            inner.segments.insert(
                seq,
                Slot {
                    duration,
                    bytes: Some(bytes),
                },
            );
            inner.advance_live();
        }
        self.notify();
    }

    /// Marks the stream complete: its playlist ends with `#EXT-X-ENDLIST`.
    pub fn end(&self) {
        self.lock().ended = true;
        self.notify();
    }

    /// The init segment, once set.
    pub fn init(&self) -> Option<Bytes> {
        self.lock().init.clone()
    }

    /// The bytes of segment `seq`, if present.
    pub fn segment(&self, seq: u64) -> Option<Bytes> {
        self.lock()
            .segments
            .get(&seq)
            .and_then(|slot| slot.bytes.clone())
    }

    /// Whether segment `seq` is declared (present or not). Evicted segments are not.
    pub fn is_declared(&self, seq: u64) -> bool {
        self.lock().segments.contains_key(&seq)
    }

    /// Records that the player asked for segment `seq`, so the peer can fetch from there on
    /// (after a seek, the player asks for a segment far from what the peer was fetching).
    pub fn note_request(&self, seq: u64) {
        self.playhead.send_if_modified(|p| {
            let moved = *p != Some(seq);
            *p = Some(seq);
            moved
        });
    }

    /// Follows the segment the player asked for last (see [`MediaStore::note_request`]).
    pub fn playhead(&self) -> watch::Receiver<Option<u64>> {
        self.playhead.subscribe()
    }

    /// The bytes of segment `seq`, waiting up to `timeout` for them to be inserted.
    pub async fn wait_segment(&self, seq: u64, timeout: Duration) -> Option<Bytes> {
        let deadline = tokio::time::Instant::now() + timeout;
        // Subscribing before the check marks the current version as seen, so an insert between
        // the check and the wait still wakes us.
        let mut changed = self.changed.subscribe();
        loop {
            if let Some(bytes) = self.segment(seq) {
                return Some(bytes);
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => continue,
                // The sender lives as long as `self`, so it cannot be closed while we borrow it;
                // a timeout ends the wait.
                Ok(Err(_)) | Err(_) => return self.segment(seq),
            }
        }
    }

    /// The HLS media playlist, or `None` until it can be played: the init segment is here and
    /// at least one listed segment is present. See the type's docs for what is listed.
    pub fn playlist(&self) -> Option<String> {
        let inner = self.lock();
        inner.init.as_ref()?;
        let target = playlist::target_duration(inner.max_duration);
        match inner.mode {
            StreamMode::Live { .. } => {
                let (first, last) = inner.live_window?;
                let lines = inner
                    .segments
                    .range(first..=last)
                    .map(|(&seq, slot)| SegmentLine {
                        seq,
                        duration: slot.duration,
                    });
                Some(playlist::render(
                    PlaylistKind::Live,
                    target,
                    first,
                    lines,
                    inner.ended,
                ))
            }
            StreamMode::Vod => {
                if !inner.segments.values().any(|slot| slot.bytes.is_some()) {
                    return None;
                }
                let first = *inner.segments.keys().next()?;
                let lines = inner.segments.iter().map(|(&seq, slot)| SegmentLine {
                    seq,
                    duration: slot.duration,
                });
                let kind = if inner.ended {
                    PlaylistKind::Vod
                } else {
                    PlaylistKind::Event
                };
                Some(playlist::render(kind, target, first, lines, inner.ended))
            }
        }
    }

    /// Forgets every segment below `seq` (bytes and declaration): the live memory bound.
    pub fn evict_before(&self, seq: u64) {
        {
            let mut inner = self.lock();
            inner.segments = inner.segments.split_off(&seq);
            inner.advance_live();
        }
        self.notify();
    }

    /// A summary for status pages.
    pub fn stats(&self) -> StoreStats {
        let inner = self.lock();
        StoreStats {
            mode: inner.mode,
            has_init: inner.init.is_some(),
            declared: inner.segments.len(),
            present: inner
                .segments
                .values()
                .filter(|slot| slot.bytes.is_some())
                .count(),
            newest: inner.newest_present(),
            live_window: match inner.mode {
                StreamMode::Live { .. } => inner.live_window,
                StreamMode::Vod => None,
            },
            ended: inner.ended,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind (no invariant spans two
        // fields mid-update), so a poisoned lock is still safe to use.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn notify(&self) {
        self.changed.send_modify(|version| *version += 1);
    }
}

impl Inner {
    fn newest_present(&self) -> Option<u64> {
        self.segments
            .iter()
            .rev()
            .find(|(_, slot)| slot.bytes.is_some())
            .map(|(&seq, _)| seq)
    }

    /// Recomputes the live window by the rule in [`MediaStore`]'s docs.
    fn advance_live(&mut self) {
        let StreamMode::Live { window } = self.mode else {
            return;
        };
        let present = self
            .segments
            .iter()
            .rev()
            .filter(|(_, slot)| slot.bytes.is_some())
            .map(|(&seq, _)| seq);
        self.live_window = live_window(present, self.live_start, window);
        if let Some((first, _)) = self.live_window {
            self.live_start = first;
        }
    }
}

/// The live window over `present_desc` (present sequence numbers, newest first) given the
/// window's previous start `floor`: the rule documented on [`MediaStore`].
fn live_window(
    present_desc: impl Iterator<Item = u64>,
    floor: u64,
    window: usize,
) -> Option<(u64, u64)> {
    let window = u64::try_from(window.max(1)).unwrap_or(u64::MAX);
    let mut present = present_desc.peekable();
    let newest = *present.peek()?;
    let edge = floor.max(newest.saturating_sub(window));
    // Walk runs from the newest back; the last run that still ends at or after `edge` wins.
    let mut chosen: Option<(u64, u64)> = None;
    let mut run: Option<(u64, u64)> = None;
    for seq in present {
        match run {
            Some((start, end)) if start == seq + 1 => run = Some((seq, end)),
            _ => {
                if let Some(done) = run {
                    chosen = Some(done);
                }
                if seq < edge {
                    run = None;
                    break;
                }
                run = Some((seq, seq));
            }
        }
        // Nothing below the floor or further back than a window from the run's end is listed.
        if let Some((start, end)) = run {
            if start <= floor || end - start >= window - 1 {
                break;
            }
        }
    }
    if let Some(done) = run {
        chosen = Some(done);
    }
    let (run_start, run_end) = chosen?;
    if run_end < edge {
        return None;
    }
    let first = floor
        .max(run_start)
        .max(run_end.saturating_add(1).saturating_sub(window));
    Some((first, run_end))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn live(window: usize) -> Arc<MediaStore> {
        let store = MediaStore::new(StreamMode::Live { window });
        store.set_init(Bytes::from_static(b"init"));
        store
    }

    fn put(store: &MediaStore, seqs: impl IntoIterator<Item = u64>) {
        for seq in seqs {
            store.insert(seq, SEC, Bytes::from(format!("seg{seq}")));
        }
    }

    fn window(store: &MediaStore) -> Option<(u64, u64)> {
        store.stats().live_window
    }

    /// The `seg/N.m4s` URIs a playlist lists, in order.
    fn listed(playlist: &str) -> Vec<u64> {
        playlist
            .lines()
            .filter_map(|line| {
                line.strip_prefix("seg/")?
                    .strip_suffix(".m4s")?
                    .parse()
                    .ok()
            })
            .collect()
    }

    fn media_sequence(playlist: &str) -> Option<u64> {
        playlist
            .lines()
            .find_map(|line| line.strip_prefix("#EXT-X-MEDIA-SEQUENCE:")?.parse().ok())
    }

    #[test]
    fn no_playlist_until_init_and_a_segment() {
        let store = MediaStore::new(StreamMode::Live { window: 3 });
        assert_eq!(store.playlist(), None);
        put(&store, [0]);
        assert_eq!(store.playlist(), None, "no init segment yet");
        store.set_init(Bytes::from_static(b"init"));
        let playlist = store.playlist().expect("init and one segment");
        assert_eq!(listed(&playlist), vec![0]);
    }

    #[test]
    fn live_window_slides_over_the_newest_segments() {
        let store = live(3);
        put(&store, 0..5);
        let playlist = store.playlist().expect("playable");
        assert_eq!(listed(&playlist), vec![2, 3, 4]);
        assert_eq!(media_sequence(&playlist), Some(2));
        assert!(!playlist.contains("#EXT-X-ENDLIST"));
        assert!(!playlist.contains("#EXT-X-PLAYLIST-TYPE"));
        put(&store, [5]);
        assert_eq!(window(&store), Some((3, 5)));
    }

    #[test]
    fn live_window_waits_at_a_gap_near_the_edge() {
        let store = live(4);
        put(&store, [0, 1, 2, 4]);
        // 3 is missing and within a window of the newest (4): the window ends before the gap.
        assert_eq!(window(&store), Some((0, 2)));
        put(&store, [3]);
        assert_eq!(window(&store), Some((1, 4)));
    }

    #[test]
    fn live_window_gives_up_a_gap_a_window_behind_the_newest() {
        let store = live(3);
        put(&store, [0, 1, 2]);
        put(&store, [4, 5]);
        assert_eq!(
            window(&store),
            Some((0, 2)),
            "the gap at 3 is still awaited"
        );
        put(&store, [6]);
        // The newest (6) is a full window ahead of the gap: jump past it.
        assert_eq!(window(&store), Some((4, 6)));
        // A late 3 does not bring the window back.
        put(&store, [3]);
        assert_eq!(window(&store), Some((4, 6)));
        let playlist = store.playlist().expect("playable");
        assert_eq!(listed(&playlist), vec![4, 5, 6]);
        assert_eq!(media_sequence(&playlist), Some(4));
    }

    #[test]
    fn live_window_never_lists_missing_and_never_moves_back() {
        // Segments arriving in a scrambled order, some never: the invariants hold at every step.
        let store = live(4);
        let arrivals = [
            0, 2, 1, 5, 3, 4, 9, 7, 8, 12, 13, 14, 15, 11, 16, 20, 18, 19, 17,
        ];
        let mut last_first = 0;
        let mut last_end = 0;
        for seq in arrivals {
            put(&store, [seq]);
            let Some(playlist) = store.playlist() else {
                continue;
            };
            let segs = listed(&playlist);
            let first = media_sequence(&playlist).expect("media sequence");
            assert_eq!(segs.first(), Some(&first));
            assert!(segs.len() <= 4, "{segs:?} longer than the window");
            assert!(
                segs.windows(2).all(|w| w[1] == w[0] + 1),
                "{segs:?} has a gap"
            );
            for s in &segs {
                assert!(store.segment(*s).is_some(), "{s} listed but missing");
            }
            assert!(first >= last_first, "media sequence moved back at {seq}");
            let end = *segs.last().expect("non-empty");
            assert!(end >= last_end, "window end moved back at {seq}");
            last_first = first;
            last_end = end;
        }
        assert_eq!(window(&store), Some((17, 20)));
    }

    #[test]
    fn live_eviction_moves_the_window_forward() {
        let store = live(5);
        put(&store, 0..5);
        store.evict_before(3);
        assert_eq!(store.segment(2), None);
        assert!(!store.is_declared(2));
        assert_eq!(window(&store), Some((3, 4)));
        store.evict_before(10);
        assert_eq!(store.playlist(), None, "nothing left to play");
    }

    #[test]
    fn live_stream_that_ended_gets_endlist() {
        let store = live(3);
        put(&store, 0..4);
        store.end();
        let playlist = store.playlist().expect("playable");
        assert!(playlist.ends_with("#EXT-X-ENDLIST\n"));
        assert_eq!(listed(&playlist), vec![1, 2, 3]);
    }

    #[test]
    fn declared_but_missing_segments_are_not_listed_live() {
        let store = live(3);
        put(&store, [0]);
        store.declare(1, SEC);
        assert_eq!(window(&store), Some((0, 0)));
        assert!(store.is_declared(1));
        assert_eq!(store.segment(1), None);
    }

    #[test]
    fn vod_lists_every_declared_segment_then_ends() {
        let store = MediaStore::new(StreamMode::Vod);
        store.set_init(Bytes::from_static(b"init"));
        for seq in 0..4 {
            store.declare(seq, Duration::from_millis(1_000 + 500 * seq));
        }
        assert_eq!(store.playlist(), None, "nothing present yet");
        put(&store, [2]);
        let event = store.playlist().expect("playable");
        assert!(event.contains("#EXT-X-PLAYLIST-TYPE:EVENT\n"));
        assert!(!event.contains("#EXT-X-ENDLIST"));
        assert_eq!(listed(&event), vec![0, 1, 2, 3]);
        store.end();
        let vod = store.playlist().expect("playable");
        assert_eq!(
            vod,
            "#EXTM3U\n\
             #EXT-X-VERSION:7\n\
             #EXT-X-TARGETDURATION:3\n\
             #EXT-X-MEDIA-SEQUENCE:0\n\
             #EXT-X-PLAYLIST-TYPE:VOD\n\
             #EXT-X-INDEPENDENT-SEGMENTS\n\
             #EXT-X-MAP:URI=\"init.mp4\"\n\
             #EXTINF:1.000,\nseg/0.m4s\n\
             #EXTINF:1.500,\nseg/1.m4s\n\
             #EXTINF:1.000,\nseg/2.m4s\n\
             #EXTINF:2.500,\nseg/3.m4s\n\
             #EXT-X-ENDLIST\n"
        );
    }

    #[test]
    fn set_mode_turns_a_store_live() {
        let store = MediaStore::new(StreamMode::Vod);
        store.set_init(Bytes::from_static(b"init"));
        put(&store, 0..6);
        assert_eq!(store.stats().live_window, None);
        store.set_mode(StreamMode::Live { window: 2 });
        let playlist = store.playlist().expect("playable");
        assert_eq!(listed(&playlist), vec![4, 5]);
    }

    #[tokio::test(start_paused = true)]
    async fn wait_segment_returns_when_inserted() {
        let store = live(3);
        let waiter = {
            let store = store.clone();
            tokio::spawn(async move {
                let started = tokio::time::Instant::now();
                let bytes = store.wait_segment(7, Duration::from_secs(10)).await;
                (bytes, started.elapsed())
            })
        };
        tokio::time::sleep(Duration::from_secs(3)).await;
        put(&store, [7]);
        let (bytes, waited) = waiter.await.expect("task");
        assert_eq!(bytes, Some(Bytes::from("seg7")));
        assert_eq!(waited, Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn wait_segment_times_out() {
        let store = live(3);
        let started = tokio::time::Instant::now();
        put(&store, [1]);
        assert_eq!(store.wait_segment(7, Duration::from_secs(2)).await, None);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        // A present segment comes back at once.
        assert_eq!(
            store.wait_segment(1, Duration::from_secs(2)).await,
            Some(Bytes::from("seg1"))
        );
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }
}
