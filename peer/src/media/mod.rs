//! Ingest: turns a broadcaster's source into CMAF/fMP4 — one init segment, then keyframe-aligned
//! media segments of about `segment_target` each.
//!
//! Data flow, all on the thread that calls [`Ingest::run`]:
//!
//! ```text
//! demuxer (file, URL, lavfi test pattern)
//!   └─ packets ─┬─ H.264 with short GOPs / AAC ── pass through ──┐
//!               └─ anything else ── transcode (transcode.rs) ────┤
//!                                                                 ▼
//!          one mp4 muxer (empty_moov+frag_custom) writing into memory (ffi.rs)
//!                                                                 ▼
//!          Segmenter: at the first video keyframe ≥ target after the segment start,
//!          flush a fragment and hand its bytes to the sink as a Chunk
//! ```
//!
//! Call contract: [`Ingest::open`] probes the input and fails fast on bad input (before any
//! output); [`Ingest::info`] tells what was found and how it will be handled; [`Ingest::run`]
//! blocks, emitting [`IngestOutput::Init`] once and then [`IngestOutput::Segment`]s in order.
//!
//! Passthrough rule for H.264: open() reads the first `3 × segment_target` of the input (the
//! packets are kept and replayed by run()) and passes the video through only if no keyframe
//! interval seen there — including the span after the last keyframe — exceeds
//! `1.5 × segment_target`. Otherwise the video is transcoded with a keyframe forced every
//! `segment_target`, so segments stay near the target.

mod ffi;
mod transcode;

use std::collections::VecDeque;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ffmpeg_next as ffmpeg;
use ffmpeg_next::codec::{self, encoder};
use ffmpeg_next::format::stream::Disposition;
use ffmpeg_next::{media, Dictionary, Packet, Rational, Rescale};
use indicatif::{ProgressBar, ProgressStyle};
use tracing::{debug, info, warn};

use self::ffi::{Interruptible, MemOutput};
use self::transcode::{AudioTranscoder, VideoTranscoder, AUDIO_TIME_BASE, VIDEO_TIME_BASE};

/// The lavfi graph behind [`Input::TestPattern`]: a 720p30 moving pattern with its running time
/// drawn on it, and a 440 Hz tone.
const TEST_PATTERN_GRAPH: &str = "testsrc2=size=1280x720:rate=30,\
     drawtext=text='%{pts\\:hms}':fontsize=64:x=40:y=40:fontcolor=white:box=1:boxcolor=black[out0];\
     sine=frequency=440:sample_rate=48000[out1]";
/// Same without the clock, for FFmpeg builds without drawtext/fonts.
const TEST_PATTERN_GRAPH_PLAIN: &str =
    "testsrc2=size=1280x720:rate=30[out0];sine=frequency=440:sample_rate=48000[out1]";
/// A passed-through keyframe interval may be at most this many segment targets.
const MAX_GOP_FACTOR: f64 = 1.5;
/// How many segment targets of input open() reads to measure the keyframe interval.
const PROBE_TARGETS: f64 = 3.0;
/// Upper bound on packets buffered by the keyframe probe.
const PROBE_MAX_PACKETS: usize = 4000;
/// Consecutive read errors tolerated before the input is declared broken.
const MAX_READ_ERRORS: u32 = 64;
/// Audio packets held back waiting for video to catch up before they are written anyway.
const MAX_AUDIO_QUEUE: usize = 512;

/// Where the media comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A media file (mp4, mkv, ts, …).
    File(PathBuf),
    /// Anything FFmpeg opens by URL: rtmp, srt, udp, http, … (listen mode via URL options).
    Url(String),
    /// A built-in 720p30 test pattern with a clock and a 440 Hz tone.
    TestPattern,
}

impl Input {
    /// Parses a command-line source: `testsrc` is the test pattern, anything containing `://`
    /// is a URL, everything else a file path.
    pub fn parse(s: &str) -> Input {
        if s == "testsrc" {
            Input::TestPattern
        } else if s.contains("://") {
            Input::Url(s.to_owned())
        } else {
            Input::File(PathBuf::from(s))
        }
    }
}

impl fmt::Display for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Input::File(p) => write!(f, "{}", p.display()),
            Input::Url(u) => f.write_str(u),
            Input::TestPattern => f.write_str("testsrc"),
        }
    }
}

/// How output is timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestMode {
    /// A live stream: files and the test pattern are paced to real time (a segment is emitted
    /// no earlier than its end timestamp after the start of the run); network inputs are
    /// forwarded as they arrive.
    Live,
    /// Import as fast as possible (video on demand).
    Vod,
}

/// What to ingest and how.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// The source.
    pub input: Input,
    /// Target segment duration; segments are cut at the first keyframe at or after it.
    pub segment_target: Duration,
    /// Live (paced) or VOD (as fast as possible).
    pub mode: IngestMode,
    /// Show an indicatif progress bar (Vod mode only).
    pub progress: bool,
}

/// One media segment (moof+mdat, possibly several fragments), starting at a video keyframe.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// Sequence number: 0, 1, 2, …
    pub seq: u64,
    /// Media duration of the segment (video timeline).
    pub duration: Duration,
    /// The fMP4 bytes; append to the init segment (and predecessors) to play.
    pub bytes: Bytes,
}

/// What [`Ingest::run`] hands to its sink.
#[derive(Debug, Clone)]
pub enum IngestOutput {
    /// The init segment (ftyp+moov); always first, exactly once.
    Init(Bytes),
    /// The next media segment.
    Segment(Chunk),
}

/// Returned by a sink that no longer accepts output; [`Ingest::run`] stops with
/// [`IngestError::SinkClosed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinkClosed;

/// Totals of a finished run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestSummary {
    /// Media segments emitted.
    pub segments: u64,
    /// Sum of the emitted segments' durations.
    pub media_duration: Duration,
    /// Wall-clock time the run took.
    pub wall: Duration,
}

/// Whether a stream is copied as is or re-encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Treatment {
    /// Remuxed without decoding (H.264 video with short GOPs, AAC audio).
    PassThrough,
    /// Decoded and re-encoded (to H.264 or AAC).
    Transcode,
}

/// What [`Ingest::open`] found in the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaInfo {
    /// Duration of the input, when the container knows it.
    pub duration: Option<Duration>,
    /// Picture width of the input video.
    pub width: u32,
    /// Picture height of the input video.
    pub height: u32,
    /// FFmpeg name of the input video codec (e.g. "h264").
    pub video_codec: String,
    /// FFmpeg name of the input audio codec, if there is an audio stream.
    pub audio_codec: Option<String>,
    /// How the video is handled.
    pub video: Treatment,
    /// How the audio is handled, if there is audio.
    pub audio: Option<Treatment>,
}

/// Why ingest failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// The input file does not exist.
    #[error("input file {0} does not exist")]
    NotFound(PathBuf),
    /// The input exists but FFmpeg cannot read it as media.
    #[error("{input} is not a media file FFmpeg can read: {reason}")]
    NotMedia {
        /// The input as given.
        input: String,
        /// FFmpeg's explanation.
        reason: String,
    },
    /// The input has no video stream (audio-only inputs are not supported).
    #[error("{0} has no video stream; Selfcast needs video")]
    NoVideo(String),
    /// A URL could not be opened (unreachable, refused, bad protocol options, …).
    #[error("cannot open {input}: {source}")]
    Open {
        /// The URL as given.
        input: String,
        /// FFmpeg's error.
        source: ffmpeg::Error,
    },
    /// The input needs a codec or feature this FFmpeg build lacks.
    #[error("unsupported input: {what}")]
    Unsupported {
        /// What is missing.
        what: String,
    },
    /// FFmpeg failed while doing the named step.
    #[error("ffmpeg failed while {0}: {1}")]
    Ffmpeg(&'static str, #[source] ffmpeg::Error),
    /// The sink refused further output.
    #[error("the segment sink was closed")]
    SinkClosed,
}

/// An opened, probed input, ready to [`run`](Ingest::run).
pub struct Ingest {
    cfg: IngestConfig,
    input: ffmpeg::format::context::Input,
    label: String,
    video_index: usize,
    audio_index: Option<usize>,
    /// Packets read by the keyframe probe, replayed first by run().
    probed: VecDeque<Packet>,
    /// The probe hit end of input.
    probed_eof: bool,
    info: MediaInfo,
}

impl Ingest {
    /// Opens and probes the input; fails fast (before any output) for a missing file, a file
    /// that is not media, or one without a video stream.
    pub fn open(cfg: IngestConfig) -> Result<Ingest, IngestError> {
        ffmpeg::init().map_err(|e| IngestError::Ffmpeg("initialising FFmpeg", e))?;
        // FFmpeg logs to stderr on its own; keep it to real errors (we log what matters through
        // tracing). This is process-wide.
        ffmpeg::util::log::set_level(ffmpeg::util::log::Level::Error);
        let label = cfg.input.to_string();
        let mut input = match &cfg.input {
            Input::File(path) => {
                if !path.exists() {
                    return Err(IngestError::NotFound(path.clone()));
                }
                let url = path.to_string_lossy();
                ffi::open_input(&url, None, Dictionary::new()).map_err(|e| {
                    IngestError::NotMedia {
                        input: label.clone(),
                        reason: e.to_string(),
                    }
                })?
            }
            Input::Url(url) => {
                let (url, options) = url_options(url);
                ffi::open_input(&url, None, options).map_err(|e| IngestError::Open {
                    input: label.clone(),
                    source: e,
                })?
            }
            Input::TestPattern => ffi::open_input(
                TEST_PATTERN_GRAPH,
                Some("lavfi"),
                Dictionary::new(),
            )
            .or_else(|e| {
                warn!(cause = %e, "test pattern with clock unavailable, using the plain one");
                ffi::open_input(TEST_PATTERN_GRAPH_PLAIN, Some("lavfi"), Dictionary::new())
            })
            .map_err(|e| IngestError::Ffmpeg("opening the lavfi test pattern", e))?,
        };
        if input.format().name() == "tty" || input.streams().count() == 0 {
            return Err(IngestError::NotMedia {
                input: label,
                reason: "no media streams found".into(),
            });
        }
        let video = input.streams().find(|s| {
            s.parameters().medium() == media::Type::Video
                && !s.disposition().contains(Disposition::ATTACHED_PIC)
        });
        let Some(video) = video else {
            return Err(IngestError::NoVideo(label));
        };
        let video_index = video.index();
        let video_id = video.parameters().id();
        let (width, height) = ffi::video_size(&video);
        let video_tb = video.time_base();
        let audio = input
            .streams()
            .find(|s| s.parameters().medium() == media::Type::Audio)
            .map(|s| (s.index(), s.parameters().id()));
        let duration = match input.duration() {
            d if d > 0 => Some(Duration::from_micros(d as u64)),
            _ => None,
        };

        let mut probed = VecDeque::new();
        let mut probed_eof = false;
        let video_mode = if video_id == codec::Id::H264 {
            let probe = probe_keyframes(&mut input, video_index, video_tb, cfg.segment_target)?;
            probed = probe.packets;
            probed_eof = probe.eof;
            if probe.max_gap.as_secs_f64() > cfg.segment_target.as_secs_f64() * MAX_GOP_FACTOR {
                info!(input = %label, max_gop_s = probe.max_gap.as_secs_f64(),
                      "H.264 keyframe interval too long for the segment target, transcoding");
                Treatment::Transcode
            } else {
                Treatment::PassThrough
            }
        } else {
            Treatment::Transcode
        };
        let info = MediaInfo {
            duration,
            width,
            height,
            video_codec: video_id.name().to_owned(),
            audio_codec: audio.map(|(_, id)| id.name().to_owned()),
            video: video_mode,
            audio: audio.map(|(_, id)| {
                if id == codec::Id::AAC {
                    Treatment::PassThrough
                } else {
                    Treatment::Transcode
                }
            }),
        };
        info!(input = %label, format = input.format().name(), width, height,
              video = %info.video_codec, video_mode = ?info.video,
              audio = info.audio_codec.as_deref().unwrap_or("none"), audio_mode = ?info.audio,
              duration_s = info.duration.map(|d| d.as_secs_f64()), "opened input");
        Ok(Ingest {
            cfg,
            input,
            label,
            video_index,
            audio_index: audio.map(|(i, _)| i),
            probed,
            probed_eof,
            info,
        })
    }

    /// What the input holds and how each stream will be handled.
    pub fn info(&self) -> &MediaInfo {
        &self.info
    }

    /// Blocking: runs on its own thread. Emits Init first, then segments in order. Returns when
    /// the input ends, `stop` is set, or the sink returns Err (then with
    /// [`IngestError::SinkClosed`]).
    pub fn run(
        self,
        stop: &AtomicBool,
        mut sink: impl FnMut(IngestOutput) -> Result<(), SinkClosed>,
    ) -> Result<IngestSummary, IngestError> {
        let started = Instant::now();
        let Ingest {
            cfg,
            input,
            label,
            video_index,
            audio_index,
            mut probed,
            probed_eof,
            info,
        } = self;
        let mut input = Interruptible::new(input, stop);
        let live = cfg.mode == IngestMode::Live;
        let pace = live && !matches!(cfg.input, Input::Url(_));

        let (video_params, video_tb, video_fps) = {
            let Some(s) = input.stream(video_index) else {
                return Err(IngestError::NoVideo(label));
            };
            let fps = match s.avg_frame_rate() {
                r if r.numerator() > 0 => r,
                _ => s.rate(),
            };
            (s.parameters(), s.time_base(), fps)
        };
        let audio_stream = audio_index
            .and_then(|i| input.stream(i))
            .map(|s| (s.parameters(), s.time_base()));

        let mut video_tx = match info.video {
            Treatment::Transcode => Some(VideoTranscoder::new(
                video_params.clone(),
                video_tb,
                video_fps,
                cfg.segment_target,
                live,
            )?),
            Treatment::PassThrough => None,
        };
        let mut audio_tx = match (&audio_stream, info.audio) {
            (Some((params, tb)), Some(Treatment::Transcode)) => {
                Some(AudioTranscoder::new(params.clone(), *tb)?)
            }
            _ => None,
        };

        let video_src = match &video_tx {
            Some(t) => StreamSource::Encoder(t.encoder().into(), VIDEO_TIME_BASE),
            None => StreamSource::Copy(video_params, video_tb),
        };
        let audio_src = match (&audio_tx, &audio_stream) {
            (Some(t), _) => Some(StreamSource::Encoder(t.encoder().into(), AUDIO_TIME_BASE)),
            (None, Some((params, tb))) => Some(StreamSource::Copy(params.clone(), *tb)),
            (None, None) => None,
        };
        let mut seg = Segmenter::new(video_src, audio_src, cfg.segment_target)?;
        let init = seg.take_init();
        debug!(input = %label, bytes = init.len(), "init segment");
        sink(IngestOutput::Init(init)).map_err(|SinkClosed| IngestError::SinkClosed)?;

        let bar = progress_bar(&cfg, info.duration);
        let mut emitter = Emitter {
            started,
            pace,
            stop,
            segments: 0,
            media: Duration::ZERO,
            bar: &bar,
        };
        let mut base: Option<i64> = None;
        let mut encoded = Vec::new();
        let mut ready = Vec::new();
        let mut eof = false;
        let mut read_errors = 0u32;
        while !stop.load(Ordering::Relaxed) {
            let mut packet = match probed.pop_front() {
                Some(p) => p,
                None if probed_eof => {
                    eof = true;
                    break;
                }
                None => match read_packet(&mut input, &mut read_errors)? {
                    Read::Packet(p) => p,
                    Read::End => {
                        eof = !stop.load(Ordering::Relaxed);
                        break;
                    }
                },
            };
            let index = packet.stream();
            if index == video_index {
                if base.is_none() {
                    if !packet.is_key() {
                        continue; // wait for the first keyframe
                    }
                    base = packet.dts().or(packet.pts());
                }
                shift(&mut packet, base.unwrap_or(0));
                match video_tx.as_mut() {
                    Some(t) => {
                        t.push(&packet, &mut encoded)?;
                        for p in encoded.drain(..) {
                            ready.extend(seg.push_video(p, VIDEO_TIME_BASE)?);
                        }
                    }
                    None => ready.extend(seg.push_video(packet, video_tb)?),
                }
            } else if Some(index) == audio_index {
                let (Some(b), Some((_, tb))) = (base, &audio_stream) else {
                    continue; // audio before the first video keyframe is dropped
                };
                shift(&mut packet, b.rescale(video_tb, *tb));
                if packet.pts().is_some_and(|p| p < 0) {
                    continue;
                }
                match audio_tx.as_mut() {
                    Some(t) => {
                        t.push(&packet, &mut encoded)?;
                        for p in encoded.drain(..) {
                            seg.push_audio(p, AUDIO_TIME_BASE);
                        }
                    }
                    None => seg.push_audio(packet, *tb),
                }
            }
            for chunk in ready.drain(..) {
                emitter.emit(chunk, &label, &mut sink)?;
            }
        }

        if eof {
            if let Some(t) = video_tx.as_mut() {
                t.finish(&mut encoded)?;
                for p in encoded.drain(..) {
                    ready.extend(seg.push_video(p, VIDEO_TIME_BASE)?);
                }
            }
            if let Some(t) = audio_tx.as_mut() {
                t.finish(&mut encoded)?;
                for p in encoded.drain(..) {
                    seg.push_audio(p, AUDIO_TIME_BASE);
                }
            }
            ready.extend(seg.finish()?);
            for chunk in ready.drain(..) {
                emitter.emit(chunk, &label, &mut sink)?;
            }
        }
        bar.finish_and_clear();
        let summary = IngestSummary {
            segments: emitter.segments,
            media_duration: emitter.media,
            wall: started.elapsed(),
        };
        info!(input = %label, segments = summary.segments,
              media_s = summary.media_duration.as_secs_f64(), wall_s = summary.wall.as_secs_f64(),
              stopped = !eof, "ingest finished");
        Ok(summary)
    }
}

/// What the keyframe probe saw.
struct Probe {
    packets: VecDeque<Packet>,
    eof: bool,
    /// Longest keyframe interval seen, counting the span after the last keyframe.
    max_gap: Duration,
}

/// Reads about `PROBE_TARGETS × target` of video and measures the keyframe interval.
fn probe_keyframes(
    input: &mut ffmpeg::format::context::Input,
    video_index: usize,
    video_tb: Rational,
    target: Duration,
) -> Result<Probe, IngestError> {
    let secs = |ts: i64| ts as f64 * f64::from(video_tb);
    let window = target.as_secs_f64() * PROBE_TARGETS;
    let mut packets = VecDeque::new();
    let mut eof = false;
    let mut errors = 0;
    let mut first: Option<f64> = None;
    let mut last_key: Option<f64> = None;
    let mut latest = 0.0f64;
    let mut max_gap = 0.0f64;
    while packets.len() < PROBE_MAX_PACKETS {
        let packet = match read_packet(input, &mut errors)? {
            Read::Packet(p) => p,
            Read::End => {
                eof = true;
                break;
            }
        };
        if packet.stream() == video_index {
            if let Some(t) = packet.pts().or(packet.dts()).map(secs) {
                latest = latest.max(t);
                if packet.is_key() {
                    if let Some(k) = last_key {
                        max_gap = max_gap.max(t - k);
                    }
                    last_key = Some(t);
                    first.get_or_insert(t);
                }
            }
        }
        packets.push_back(packet);
        if first.is_some_and(|f| latest - f >= window) {
            break;
        }
    }
    if let Some(k) = last_key {
        max_gap = max_gap.max(latest - k);
    } else if !packets.is_empty() && !eof {
        max_gap = f64::INFINITY; // no keyframe at all in the window
    }
    let max_gap = Duration::try_from_secs_f64(max_gap).unwrap_or(Duration::MAX);
    debug!(
        packets = packets.len(),
        max_gap_s = max_gap.as_secs_f64(),
        "keyframe probe"
    );
    Ok(Probe {
        packets,
        eof,
        max_gap,
    })
}

enum Read {
    Packet(Packet),
    /// End of input, or the read was interrupted by the stop flag.
    End,
}

/// Reads the next packet, logging and skipping corrupt data; gives up after
/// `MAX_READ_ERRORS` consecutive failures.
fn read_packet(
    input: &mut ffmpeg::format::context::Input,
    errors: &mut u32,
) -> Result<Read, IngestError> {
    loop {
        let mut packet = Packet::empty();
        match packet.read(input) {
            Ok(()) => {
                *errors = 0;
                if packet.is_corrupt() {
                    warn!("demuxer flagged a corrupt packet; passing it on");
                }
                return Ok(Read::Packet(packet));
            }
            Err(ffmpeg::Error::Eof | ffmpeg::Error::Exit) => return Ok(Read::End),
            Err(ffmpeg::Error::Other { errno }) if errno == ffmpeg::util::error::EAGAIN => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => {
                *errors += 1;
                if *errors > MAX_READ_ERRORS {
                    return Err(IngestError::Ffmpeg("reading the input", e));
                }
                warn!(cause = %e, "skipping unreadable input data");
            }
        }
    }
}

/// Moves a packet's timestamps `by` ticks earlier.
fn shift(packet: &mut Packet, by: i64) {
    packet.set_pts(packet.pts().map(|t| t - by));
    packet.set_dts(packet.dts().map(|t| t - by));
}

fn progress_bar(cfg: &IngestConfig, duration: Option<Duration>) -> ProgressBar {
    if !cfg.progress || cfg.mode != IngestMode::Vod {
        return ProgressBar::hidden();
    }
    let bar = match duration {
        Some(d) => ProgressBar::new(d.as_millis() as u64),
        None => ProgressBar::new_spinner(),
    };
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} importing [{bar:40}] {percent:>3}% {msg} (eta {eta})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Paces (live) and delivers chunks, keeping the run's totals.
struct Emitter<'a> {
    started: Instant,
    pace: bool,
    stop: &'a AtomicBool,
    segments: u64,
    media: Duration,
    bar: &'a ProgressBar,
}

impl Emitter<'_> {
    fn emit(
        &mut self,
        chunk: Chunk,
        label: &str,
        sink: &mut impl FnMut(IngestOutput) -> Result<(), SinkClosed>,
    ) -> Result<(), IngestError> {
        let media = self.media + chunk.duration;
        if self.pace {
            let due = self.started + media;
            loop {
                let now = Instant::now();
                if now >= due || self.stop.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep((due - now).min(Duration::from_millis(50)));
            }
        }
        debug!(input = %label, seq = chunk.seq, duration_ms = chunk.duration.as_millis() as u64,
               bytes = chunk.bytes.len(), "segment");
        self.media = media;
        self.segments += 1;
        self.bar.set_position(media.as_millis() as u64);
        self.bar.set_message(format!("{} segments", self.segments));
        sink(IngestOutput::Segment(chunk)).map_err(|SinkClosed| IngestError::SinkClosed)
    }
}

/// Where a muxer stream's parameters come from.
enum StreamSource {
    /// Copied from the input stream (passthrough), in the input's time base.
    Copy(codec::Parameters, Rational),
    /// From one of our encoders, in its time base.
    Encoder(codec::Parameters, Rational),
}

/// One fragmented-mp4 muxer for the whole run, cutting media segments at keyframes.
///
/// Video packets are written as they come; audio packets wait in a queue until video has
/// reached their time, so that each segment holds the audio of its own time span.
struct Segmenter {
    out: MemOutput,
    video_tb: Rational,
    audio_tb: Rational,
    has_audio: bool,
    /// Segment target in `video_tb` ticks.
    target: i64,
    /// Start (keyframe pts) of the open segment.
    start: Option<i64>,
    /// End of the latest video packet (pts + duration).
    video_end: i64,
    /// Latest video pts written.
    video_pts: i64,
    last_video_dts: Option<i64>,
    last_audio_dts: Option<i64>,
    audio: VecDeque<Packet>,
    seq: u64,
}

impl Segmenter {
    fn new(
        video: StreamSource,
        audio: Option<StreamSource>,
        target: Duration,
    ) -> Result<Segmenter, IngestError> {
        let mut out =
            MemOutput::new("mp4").map_err(|e| IngestError::Ffmpeg("creating the muxer", e))?;
        let has_audio = audio.is_some();
        for source in std::iter::once(video).chain(audio) {
            let ctx = out.ctx();
            let mut stream = ctx
                .add_stream(encoder::find(codec::Id::None))
                .map_err(|e| IngestError::Ffmpeg("adding a muxer stream", e))?;
            let (StreamSource::Copy(params, tb) | StreamSource::Encoder(params, tb)) = source;
            stream.set_parameters(params);
            stream.set_time_base(tb);
            ffi::clear_codec_tag(&mut stream);
        }
        let mut opts = Dictionary::new();
        opts.set(
            "movflags",
            "empty_moov+default_base_moof+frag_custom+cmaf+skip_trailer",
        );
        out.ctx()
            .write_header_with(opts)
            .map_err(|e| IngestError::Ffmpeg("writing the init segment", e))?;
        let ctx = out.ctx_ref();
        let video_tb = ctx
            .stream(0)
            .map(|s| s.time_base())
            .unwrap_or(VIDEO_TIME_BASE);
        let audio_tb = ctx
            .stream(1)
            .map(|s| s.time_base())
            .unwrap_or(AUDIO_TIME_BASE);
        let target_ticks = (target.as_secs_f64() / f64::from(video_tb))
            .round()
            .max(1.0) as i64;
        Ok(Segmenter {
            out,
            video_tb,
            audio_tb,
            has_audio,
            // Accept a keyframe a hair early (1 ms) so 1 s GOPs with rounded timestamps cut
            // at every keyframe.
            target: (target_ticks - (0.001 / f64::from(video_tb)) as i64).max(1),
            start: None,
            video_end: 0,
            video_pts: 0,
            last_video_dts: None,
            last_audio_dts: None,
            audio: VecDeque::new(),
            seq: 0,
        })
    }

    /// The init segment (everything the header wrote).
    fn take_init(&mut self) -> Bytes {
        Bytes::from(self.out.take())
    }

    /// Writes one video packet (timestamps in `tb`); returns the segment it closed, if any.
    fn push_video(
        &mut self,
        mut packet: Packet,
        tb: Rational,
    ) -> Result<Option<Chunk>, IngestError> {
        packet.rescale_ts(tb, self.video_tb);
        packet.set_stream(0);
        packet.set_position(-1);
        let Some(pts) = packet.pts().or(packet.dts()) else {
            warn!("skipping a video packet without timestamps");
            return Ok(None);
        };
        let dts = packet.dts().unwrap_or(pts);
        if self.last_video_dts.is_some_and(|last| dts <= last) {
            warn!(dts, "skipping a video packet with non-increasing dts");
            return Ok(None);
        }
        let mut closed = None;
        match self.start {
            None if !packet.is_key() => return Ok(None),
            None => self.start = Some(pts),
            Some(start) if packet.is_key() && pts - start >= self.target => {
                closed = self.cut(pts)?;
            }
            Some(_) => {}
        }
        self.video_pts = self.video_pts.max(pts);
        self.write_audio_until(Some(self.video_pts));
        match packet.write(self.out.ctx()) {
            Ok(_) => {
                // Encoders often leave the duration unset; then assume the last frame interval.
                let duration = match packet.duration() {
                    d if d > 0 => d,
                    _ => self.last_video_dts.map_or(0, |last| dts - last),
                };
                self.last_video_dts = Some(dts);
                let end = pts + duration;
                self.video_end = self.video_end.max(end);
            }
            Err(e) => warn!(cause = %e, "muxer rejected a video packet; skipped"),
        }
        Ok(closed)
    }

    /// Queues one audio packet (timestamps in `tb`).
    fn push_audio(&mut self, mut packet: Packet, tb: Rational) {
        if !self.has_audio {
            return;
        }
        packet.rescale_ts(tb, self.audio_tb);
        packet.set_stream(1);
        packet.set_position(-1);
        self.audio.push_back(packet);
        if self.start.is_some() {
            self.write_audio_until(Some(self.video_pts));
        }
    }

    /// Writes queued audio that starts before `until` (video ticks), or all with None, and
    /// the oldest packets if the queue grew too long.
    fn write_audio_until(&mut self, until: Option<i64>) {
        while let Some(packet) = self.audio.front() {
            let ts = packet.pts().or(packet.dts()).unwrap_or(0);
            let due = until.is_none_or(|u| ts.rescale(self.audio_tb, self.video_tb) < u);
            if !due && self.audio.len() <= MAX_AUDIO_QUEUE {
                break;
            }
            let Some(packet) = self.audio.pop_front() else {
                break;
            };
            let dts = packet.dts().or(packet.pts()).unwrap_or(0);
            if self.last_audio_dts.is_some_and(|last| dts <= last) {
                warn!(dts, "skipping an audio packet with non-increasing dts");
                continue;
            }
            match packet.write(self.out.ctx()) {
                Ok(_) => self.last_audio_dts = Some(dts),
                Err(e) => warn!(cause = %e, "muxer rejected an audio packet; skipped"),
            }
        }
    }

    /// Closes the open segment at `at` (video ticks, the next segment's first keyframe).
    fn cut(&mut self, at: i64) -> Result<Option<Chunk>, IngestError> {
        self.write_audio_until(Some(at));
        let chunk = self.close(at)?;
        self.start = Some(at);
        Ok(chunk)
    }

    fn close(&mut self, end: i64) -> Result<Option<Chunk>, IngestError> {
        self.out
            .flush_fragment()
            .map_err(|e| IngestError::Ffmpeg("flushing a fragment", e))?;
        let bytes = self.out.take();
        let Some(start) = self.start else {
            return Ok(None);
        };
        if bytes.is_empty() {
            return Ok(None);
        }
        let ticks = (end - start).max(0);
        let duration = Duration::try_from_secs_f64(ticks as f64 * f64::from(self.video_tb))
            .unwrap_or(Duration::ZERO);
        let chunk = Chunk {
            seq: self.seq,
            duration,
            bytes: Bytes::from(bytes),
        };
        self.seq += 1;
        Ok(Some(chunk))
    }

    /// Writes everything left and closes the last segment.
    fn finish(&mut self) -> Result<Option<Chunk>, IngestError> {
        self.write_audio_until(None);
        let chunk = self.close(self.video_end)?;
        if let Err(e) = self.out.ctx().write_trailer() {
            debug!(cause = %e, "muxer trailer");
        }
        Ok(chunk)
    }
}

/// Splits FFmpeg protocol options out of a URL where the protocol does not read them itself.
///
/// RTMP's listen mode (how OBS pushes to us: `rtmp://0.0.0.0:1935/live/key?listen=1`) is an
/// option of FFmpeg's RTMP protocol, not part of the URL, so `listen=1` moves into the options.
/// SRT and UDP read their options from the URL query already (`srt://…?mode=listener`).
fn url_options(url: &str) -> (String, Dictionary<'static>) {
    let mut options = Dictionary::new();
    let Some((base, query)) = url.split_once('?').filter(|_| url.starts_with("rtmp://")) else {
        return (url.to_owned(), options);
    };
    let mut kept = Vec::new();
    for pair in query.split('&') {
        match pair {
            "listen=1" => options.set("listen", "1"),
            other => kept.push(other),
        }
    }
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (url, options)
}

#[cfg(test)]
mod tests {
    #[test]
    fn rtmp_listen_moves_from_the_url_into_the_options() {
        let (url, options) = url_options("rtmp://0.0.0.0:1935/live/key?listen=1");
        assert_eq!(url, "rtmp://0.0.0.0:1935/live/key");
        assert_eq!(options.get("listen"), Some("1"));
        let (url, options) = url_options("srt://0.0.0.0:9000?mode=listener");
        assert_eq!(url, "srt://0.0.0.0:9000?mode=listener");
        assert_eq!(options.get("listen"), None);
    }

    use super::*;

    #[test]
    fn parse_tells_test_pattern_urls_and_files_apart() {
        assert_eq!(Input::parse("testsrc"), Input::TestPattern);
        assert_eq!(
            Input::parse("srt://0.0.0.0:9000?mode=listener"),
            Input::Url("srt://0.0.0.0:9000?mode=listener".into())
        );
        assert_eq!(
            Input::parse("rtmp://localhost/live/key?listen=1"),
            Input::Url("rtmp://localhost/live/key?listen=1".into())
        );
        assert_eq!(
            Input::parse("videos/testsrc.mp4"),
            Input::File(PathBuf::from("videos/testsrc.mp4"))
        );
        assert_eq!(Input::parse("testsrc").to_string(), "testsrc");
    }

    #[test]
    fn ingest_can_move_to_its_own_thread() {
        fn assert_send<T: Send>() {}
        assert_send::<Ingest>();
        assert_send::<IngestError>();
    }
}
