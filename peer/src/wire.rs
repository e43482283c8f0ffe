//! The wire format between peers: versioned, length-prefixed control frames and the header of a
//! segment stream.
//!
//! A control frame is a 4-byte big-endian length, then that many bytes: one version byte and the
//! postcard encoding of a [`Frame`]. Frames longer than [`MAX_FRAME_LEN`] are refused before
//! they are buffered. Each segment travels on its own unidirectional QUIC stream: a
//! [`SegmentHeader`] encoded like a frame, then the segment's bytes until the stream ends.
//!
//! Everything here is pure: [`FrameDecoder`] takes bytes in and hands frames out, so the same
//! code parses what QUIC delivers in the node and what the simulator delivers in `sim`.

use std::net::SocketAddr;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::identity::{ChannelId, PeerId};
use crate::segment::{SegmentId, SignedChannel, SignedSegment};

/// The ALPN protocol id of Selfcast's QUIC connections.
pub const ALPN: &[u8] = b"selfcast/1";
/// The version byte of every frame this code writes and accepts.
pub const WIRE_VERSION: u8 = 2;
/// The largest control frame accepted, length prefix excluded.
pub const MAX_FRAME_LEN: usize = 64 * 1024;
/// The most statements, ids or addresses one frame may carry.
pub const MAX_LIST_LEN: usize = 256;

/// A control message between two peers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// First frame on a connection, from each side: who I am listening as and what I watch.
    Hello {
        /// The channel this peer serves or watches.
        channel: ChannelId,
        /// Where this peer accepts connections, if anywhere.
        listen: Option<SocketAddr>,
    },
    /// The channel's signed record.
    Channel(Box<SignedChannel>),
    /// Signed segment statements, oldest first.
    Announce(Vec<SignedSegment>),
    /// The sender holds these segments, verified, and will serve them.
    Have(Vec<SegmentId>),
    /// Please send this segment on a new stream; I play it within this many milliseconds
    /// (0: I am late). A peer serves requests earliest deadline first, by these.
    Request(SegmentId, u32),
    /// Please send this part of a segment on a new stream (a viewer waiting for a segment
    /// asks several partners for a part each, and gets it sooner than any one could send it
    /// whole), played within this many milliseconds. Answered like `Request`.
    RequestPart(SegmentId, Part, u32),
    /// The sender cannot serve this segment (it does not hold it, or it is too busy).
    Missing(SegmentId),
    /// Other peers of the channel the receiver may connect to.
    Peers(Vec<PeerAddr>),
    /// The sender holds this segment but all its upload slots are taken: ask again shortly,
    /// or ask someone else.
    Busy(SegmentId),
    /// The sender's state for the feeding tree, sent to partners now and then.
    Report {
        /// Measured upload capacity in kbit/s.
        upload_kbps: u32,
        /// The rate in kbit/s at which the sender would send one more requested segment now,
        /// beside the streams it feeds and what else it sends.
        serve_kbps: u32,
        /// Hops from the source along feeding parents (0: the source; 255: not fed).
        depth: u8,
        /// How many more peers the sender would feed.
        spare: u8,
    },
    /// Please feed me every segment as soon as you have it (`true`), or stop (`false`).
    Subscribe {
        /// Feed me (`true`) or stop (`false`).
        on: bool,
        /// A newcomer's first segment, which it lacks: please push it first (only it: older
        /// segments than the newest are not pushed otherwise).
        first: Option<u64>,
    },
    /// The answer to `Subscribe`, or a change of mind: the sender feeds the receiver (`true`)
    /// or does not (any more) (`false`).
    Feed(bool),
    /// On demand: which of your partners hold this segment? Answered with `Holders`, or not
    /// at all when none does.
    Find(SegmentId),
    /// The answer to `Find`: partners of the sender that hold the segment.
    Holders(SegmentId, Vec<PeerAddr>),
    /// Live: the sender's parent feeds it every segment in time, so it needs no statements
    /// or `Have`s from the receiver (`true`) unless it feeds the sender; or it needs them
    /// again (`false`), and the receiver sends what it holds of the newest segments.
    Quiet(bool),
}

/// A peer and where it listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerAddr {
    /// The peer's id; a dialler checks the certificate against it.
    pub id: PeerId,
    /// The peer's listening address.
    pub addr: SocketAddr,
}

impl From<tracker_overlay::swarm::Holder> for PeerAddr {
    /// Where an entry of the overlay's holder index says its peer listens.
    fn from(h: tracker_overlay::swarm::Holder) -> Self {
        Self {
            id: PeerId(h.peer),
            addr: h.addr,
        }
    }
}

/// The first bytes of a segment stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentHeader {
    /// The segment that follows.
    pub id: SegmentId,
    /// Which part of it ([`Part::WHOLE`] for all of it).
    pub part: Part,
}

/// The most parts a segment is split into.
pub const MAX_PARTS: u8 = 8;

/// Part `index` of a segment cut into `of` parts of (nearly) equal length: the bytes
/// `len * index / of .. len * (index + 1) / of` of its signed length `len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Part {
    /// Which part, from 0.
    pub index: u8,
    /// Into how many parts the segment is cut (1: it is whole).
    pub of: u8,
}

impl Part {
    /// The whole segment.
    pub const WHOLE: Self = Self { index: 0, of: 1 };

    /// Whether this is the whole segment.
    pub fn is_whole(self) -> bool {
        self == Self::WHOLE
    }

    /// This part's byte range in a segment of `len` bytes, or `None` if the part does not
    /// exist (`index` not below `of`, or `of` not in `1..=MAX_PARTS`).
    pub fn range(self, len: usize) -> Option<std::ops::Range<usize>> {
        if self.of == 0 || self.of > MAX_PARTS || self.index >= self.of {
            return None;
        }
        let (index, of) = (usize::from(self.index), usize::from(self.of));
        Some(len * index / of..len * (index + 1) / of)
    }
}

/// Why bytes from a peer were not a frame. Any of these closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix announces more than [`MAX_FRAME_LEN`].
    #[error("frame of {len} bytes exceeds the {MAX_FRAME_LEN}-byte bound")]
    TooLarge {
        /// The announced length.
        len: usize,
    },
    /// The version byte is not one we speak.
    #[error("unsupported wire version {0}")]
    UnsupportedVersion(u8),
    /// The bytes do not decode as a frame.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A list in the frame is longer than [`MAX_LIST_LEN`].
    #[error("frame carries a list of {0} items, more than {MAX_LIST_LEN}")]
    ListTooLong(usize),
}

impl FrameError {
    /// The QUIC application error code a connection is closed with for this error.
    pub fn close_code(&self) -> u32 {
        match self {
            Self::TooLarge { .. } => 0x11,
            Self::UnsupportedVersion(_) => 0x12,
            Self::Malformed(_) | Self::ListTooLong(_) => 0x13,
        }
    }
}

impl Frame {
    /// Encodes the frame with its length prefix.
    pub fn encode(&self) -> Bytes {
        encode_prefixed(self)
    }

    /// The encoded length with its prefix, computed without encoding.
    pub fn encoded_len(&self) -> usize {
        let body = postcard::serialize_with_flavor(self, postcard::ser_flavors::Size::default());
        // Measuring our own plain types cannot fail.
        5 + body.unwrap_or(0)
    }

    /// The frame's kind, for protocol counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Hello { .. } => "hello",
            Self::Channel(_) => "channel",
            Self::Announce(_) => "announce",
            Self::Have(_) => "have",
            Self::Request(..) => "request",
            Self::RequestPart(..) => "request_part",
            Self::Missing(_) => "missing",
            Self::Peers(_) => "peers",
            Self::Busy(_) => "busy",
            Self::Report { .. } => "report",
            Self::Subscribe { .. } => "subscribe",
            Self::Feed(_) => "feed",
            Self::Find(_) => "find",
            Self::Holders(..) => "holders",
            Self::Quiet(_) => "quiet",
        }
    }

    fn check_bounds(&self) -> Result<(), FrameError> {
        let len = match self {
            Self::Announce(v) => v.len(),
            Self::Have(v) => v.len(),
            Self::Peers(v) | Self::Holders(_, v) => v.len(),
            Self::Hello { .. }
            | Self::Channel(_)
            | Self::Request(..)
            | Self::RequestPart(..)
            | Self::Report { .. }
            | Self::Subscribe { .. }
            | Self::Feed(_)
            | Self::Find(_)
            | Self::Quiet(_)
            | Self::Missing(_)
            | Self::Busy(_) => 0,
        };
        if len > MAX_LIST_LEN {
            return Err(FrameError::ListTooLong(len));
        }
        Ok(())
    }
}

impl SegmentHeader {
    /// Encodes the header with its length prefix.
    pub fn encode(&self) -> Bytes {
        encode_prefixed(self)
    }

    /// Parses a header from the start of `buf`, returning it and the bytes it used, or `None`
    /// when more bytes are needed.
    pub fn parse(buf: &[u8]) -> Result<Option<(Self, usize)>, FrameError> {
        let Some(body) = split_prefixed(buf)? else {
            return Ok(None);
        };
        let header = decode_body(body)?;
        Ok(Some((header, 4 + body.len())))
    }
}

/// Splits a byte stream into frames.
///
/// Feed it what arrives with [`FrameDecoder::extend`], then call [`FrameDecoder::next_frame`]
/// until it returns `Ok(None)`. After an error the stream is unusable and the connection
/// should be closed with [`FrameError::close_code`].
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: BytesMut,
}

impl FrameDecoder {
    /// Appends received bytes.
    pub fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete frame, if there is one.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let Some(body) = split_prefixed(&self.buf)? else {
            return Ok(None);
        };
        let used = 4 + body.len();
        let frame: Frame = decode_body(body)?;
        self.buf.advance(used);
        frame.check_bounds()?;
        Ok(Some(frame))
    }

    /// How many bytes are buffered without forming a complete frame yet.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

fn encode_prefixed<T: Serialize>(value: &T) -> Bytes {
    // Serializing our own plain types into a Vec cannot fail.
    #[allow(clippy::unwrap_used)]
    let body = postcard::to_allocvec(value).unwrap();
    let mut out = BytesMut::with_capacity(5 + body.len());
    out.put_u32(1 + body.len() as u32);
    out.put_u8(WIRE_VERSION);
    out.put_slice(&body);
    out.freeze()
}

/// The body (version byte included) of the first frame in `buf`, if complete.
fn split_prefixed(buf: &[u8]) -> Result<Option<&[u8]>, FrameError> {
    let Some(prefix) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge { len });
    }
    if len == 0 {
        return Err(FrameError::Malformed("empty frame".into()));
    }
    Ok(buf.get(4..4 + len))
}

fn decode_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, FrameError> {
    let (&version, rest) = body
        .split_first()
        .ok_or(FrameError::Malformed("empty".into()))?;
    if version != WIRE_VERSION {
        return Err(FrameError::UnsupportedVersion(version));
    }
    let (value, trailing) =
        postcard::take_from_bytes(rest).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if !trailing.is_empty() {
        return Err(FrameError::Malformed(format!(
            "{} trailing bytes",
            trailing.len()
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_frames() -> Vec<Frame> {
        use crate::identity::Keypair;
        use crate::segment::{ChannelRecord, SegmentMeta, StreamKind};

        let key = Keypair::from_seed([5; 32]);
        let record = ChannelRecord {
            broadcaster: key.public(),
            name: "Première — ünïcode".into(),
            kind: StreamKind::Live,
            segment_target_ms: 1000,
            started_unix_ms: 1_700_000_000_000,
        };
        let channel = record.channel_id();
        let meta = SegmentMeta::describe(
            channel,
            1,
            SegmentId::Media(1),
            std::time::Duration::from_millis(1001),
            5,
            b"bytes",
        )
        .unwrap();
        vec![
            Frame::Channel(Box::new(record.sign(&key))),
            Frame::Announce(vec![meta.sign(&key)]),
            Frame::Hello {
                channel,
                listen: Some("127.0.0.1:4433".parse().unwrap()),
            },
            Frame::Have(vec![SegmentId::Init, SegmentId::Media(9)]),
            Frame::Request(SegmentId::Media(3), 1_500),
            Frame::RequestPart(SegmentId::Media(4), Part { index: 2, of: 3 }, 0),
            Frame::Missing(SegmentId::Init),
            Frame::Find(SegmentId::Media(700)),
            Frame::Quiet(true),
            Frame::Holders(
                SegmentId::Media(700),
                vec![PeerAddr {
                    id: PeerId([2; 32]),
                    addr: "10.0.0.2:4433".parse().unwrap(),
                }],
            ),
            Frame::Peers(vec![PeerAddr {
                id: PeerId([1; 32]),
                addr: "[::1]:9".parse().unwrap(),
            }]),
        ]
    }

    #[test]
    fn frames_round_trip_even_when_split_byte_by_byte() {
        let frames = sample_frames();
        let stream: Vec<u8> = frames.iter().flat_map(|f| f.encode().to_vec()).collect();
        let mut decoder = FrameDecoder::default();
        let mut out = Vec::new();
        for byte in stream {
            decoder.extend(&[byte]);
            while let Some(frame) = decoder.next_frame().unwrap() {
                out.push(frame);
            }
        }
        assert_eq!(out, frames);
        assert_eq!(decoder.buffered(), 0);
        for frame in &frames {
            assert_eq!(frame.encoded_len(), frame.encode().len());
        }
    }

    #[test]
    fn the_parts_of_a_segment_cover_it_exactly_once() {
        for len in [0, 1, 7, 250_001] {
            for of in 1..=MAX_PARTS {
                let mut next = 0;
                for index in 0..of {
                    let range = Part { index, of }.range(len).unwrap();
                    assert_eq!(range.start, next);
                    next = range.end;
                }
                assert_eq!(next, len);
            }
        }
        assert_eq!(Part::WHOLE.range(9), Some(0..9));
        assert_eq!(Part { index: 3, of: 3 }.range(9), None);
        assert_eq!(Part { index: 0, of: 0 }.range(9), None);
        assert_eq!(
            Part {
                index: 0,
                of: MAX_PARTS + 1
            }
            .range(9),
            None
        );
    }

    #[test]
    fn an_oversize_length_is_refused_before_buffering_the_body() {
        let mut decoder = FrameDecoder::default();
        decoder.extend(&((MAX_FRAME_LEN as u32 + 1).to_be_bytes()));
        assert_eq!(
            decoder.next_frame(),
            Err(FrameError::TooLarge {
                len: MAX_FRAME_LEN + 1
            })
        );
    }

    #[test]
    fn garbage_and_unknown_versions_are_errors_not_panics() {
        let mut decoder = FrameDecoder::default();
        decoder.extend(&[0, 0, 0, 3, WIRE_VERSION, 0xff, 0xff]);
        assert!(matches!(
            decoder.next_frame(),
            Err(FrameError::Malformed(_))
        ));

        let mut decoder = FrameDecoder::default();
        let mut bytes = Frame::Request(SegmentId::Init, 0).encode().to_vec();
        bytes[4] = 99;
        decoder.extend(&bytes);
        assert_eq!(
            decoder.next_frame(),
            Err(FrameError::UnsupportedVersion(99))
        );

        let mut decoder = FrameDecoder::default();
        decoder.extend(&[0, 0, 0, 0]);
        assert!(decoder.next_frame().is_err());
    }

    #[test]
    fn overlong_lists_are_refused() {
        let frame = Frame::Have((0..=MAX_LIST_LEN as u64).map(SegmentId::Media).collect());
        let mut decoder = FrameDecoder::default();
        decoder.extend(&frame.encode());
        assert_eq!(
            decoder.next_frame(),
            Err(FrameError::ListTooLong(MAX_LIST_LEN + 1))
        );
    }

    #[test]
    fn segment_header_parses_from_a_prefix() {
        let header = SegmentHeader {
            id: SegmentId::Media(77),
            part: Part { index: 1, of: 4 },
        };
        let mut bytes = header.encode().to_vec();
        let len = bytes.len();
        assert_eq!(SegmentHeader::parse(&bytes[..len - 1]).unwrap(), None);
        bytes.extend_from_slice(b"payload");
        assert_eq!(SegmentHeader::parse(&bytes).unwrap(), Some((header, len)));
    }
}
