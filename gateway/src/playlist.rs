//! HLS media playlist text (RFC 8216, version 7, fMP4 segments behind one `EXT-X-MAP`).
//!
//! Pure formatting: [`crate::MediaStore`] decides which segments are listed.

use std::fmt::Write as _;
use std::time::Duration;

/// Which flavour of media playlist to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PlaylistKind {
    /// A sliding window, no `EXT-X-PLAYLIST-TYPE`.
    Live,
    /// On demand, still growing: `EXT-X-PLAYLIST-TYPE:EVENT`.
    Event,
    /// On demand, complete: `EXT-X-PLAYLIST-TYPE:VOD`.
    Vod,
}

/// One listed segment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SegmentLine {
    pub(crate) seq: u64,
    pub(crate) duration: Duration,
}

/// `EXT-X-TARGETDURATION`: the longest segment duration rounded up to whole seconds, at least 1.
pub(crate) fn target_duration(max_duration: Duration) -> u64 {
    let secs = max_duration.as_secs() + u64::from(max_duration.subsec_nanos() > 0);
    secs.max(1)
}

/// Writes a media playlist whose first listed segment is `media_sequence`; segment URIs are
/// `seg/{seq}.m4s` and the init segment `init.mp4`, relative to the playlist.
pub(crate) fn render(
    kind: PlaylistKind,
    target_duration: u64,
    media_sequence: u64,
    segments: impl Iterator<Item = SegmentLine>,
    ended: bool,
) -> String {
    let mut out = String::with_capacity(512);
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:{target_duration}\n\
         #EXT-X-MEDIA-SEQUENCE:{media_sequence}\n"
    );
    match kind {
        PlaylistKind::Live => {}
        PlaylistKind::Event => out.push_str("#EXT-X-PLAYLIST-TYPE:EVENT\n"),
        PlaylistKind::Vod => out.push_str("#EXT-X-PLAYLIST-TYPE:VOD\n"),
    }
    out.push_str("#EXT-X-INDEPENDENT-SEGMENTS\n#EXT-X-MAP:URI=\"init.mp4\"\n");
    for SegmentLine { seq, duration } in segments {
        let _ = write!(
            out,
            "#EXTINF:{:.3},\nseg/{seq}.m4s\n",
            duration.as_secs_f64()
        );
    }
    if ended {
        out.push_str("#EXT-X-ENDLIST\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_duration_rounds_up() {
        assert_eq!(target_duration(Duration::ZERO), 1);
        assert_eq!(target_duration(Duration::from_secs(1)), 1);
        assert_eq!(target_duration(Duration::from_millis(1_001)), 2);
        assert_eq!(target_duration(Duration::from_millis(2_000)), 2);
        assert_eq!(target_duration(Duration::from_nanos(4_000_000_001)), 5);
    }

    #[test]
    fn live_playlist_text() {
        let segments = [(41, 1_001), (42, 1_000), (43, 966)].map(|(seq, ms)| SegmentLine {
            seq,
            duration: Duration::from_millis(ms),
        });
        let text = render(PlaylistKind::Live, 2, 41, segments.into_iter(), false);
        assert_eq!(
            text,
            "#EXTM3U\n\
             #EXT-X-VERSION:7\n\
             #EXT-X-TARGETDURATION:2\n\
             #EXT-X-MEDIA-SEQUENCE:41\n\
             #EXT-X-INDEPENDENT-SEGMENTS\n\
             #EXT-X-MAP:URI=\"init.mp4\"\n\
             #EXTINF:1.001,\nseg/41.m4s\n\
             #EXTINF:1.000,\nseg/42.m4s\n\
             #EXTINF:0.966,\nseg/43.m4s\n"
        );
    }
}
