//! Ingest with real FFmpeg: every test makes its own small input with the `ffmpeg` CLI, runs
//! `peer::media::Ingest` on it and checks the CMAF output by decoding it with ffmpeg/ffprobe.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use peer::media::{
    Chunk, Ingest, IngestConfig, IngestError, IngestMode, IngestOutput, Input, Treatment,
};

const TARGET: Duration = Duration::from_secs(1);

#[test]
fn h264_aac_with_1s_gop_is_passed_through_in_1s_segments() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("in.mp4");
    generate(
        &src,
        Some("320x240:rate=30"),
        Some(48000),
        4,
        &[
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "30",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
        ],
    );

    let ingest = open_vod(&src);
    let info = ingest.info().clone();
    assert_eq!(info.video, Treatment::PassThrough);
    assert_eq!(info.audio, Some(Treatment::PassThrough));
    assert_eq!(info.video_codec, "h264");
    assert_eq!(info.audio_codec.as_deref(), Some("aac"));
    assert_eq!((info.width, info.height), (320, 240));
    assert!(info
        .duration
        .is_some_and(|d| d >= Duration::from_millis(3900)));

    let (init, chunks) = run_all(ingest);
    assert_eq!(chunks.len(), 4, "durations: {:?}", durations(&chunks));
    assert_segments_near_target(&chunks);
    assert_playable(dir.path(), &init, &chunks, 120);
}

#[test]
fn mpeg4_mp3_in_mkv_is_transcoded_and_plays() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("in.mkv");
    generate(
        &src,
        Some("320x240:rate=25"),
        Some(44100),
        3,
        &["-c:v", "mpeg4", "-g", "100", "-c:a", "libmp3lame"],
    );

    let ingest = open_vod(&src);
    assert_eq!(ingest.info().video, Treatment::Transcode);
    assert_eq!(ingest.info().audio, Some(Treatment::Transcode));
    assert_eq!(ingest.info().video_codec, "mpeg4");

    let (init, chunks) = run_all(ingest);
    assert_eq!(chunks.len(), 3, "durations: {:?}", durations(&chunks));
    assert_segments_near_target(&chunks);
    assert_playable(dir.path(), &init, &chunks, 75);
    assert_has_aac_audio(dir.path(), &init, &chunks);
}

#[test]
fn long_gop_h264_is_transcoded_to_1s_segments() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("in.mp4");
    generate(
        &src,
        Some("320x240:rate=30"),
        None,
        4,
        &[
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "300",
            "-pix_fmt",
            "yuv420p",
        ],
    );

    let ingest = open_vod(&src);
    assert_eq!(ingest.info().video, Treatment::Transcode);
    assert_eq!(ingest.info().audio, None);

    let (init, chunks) = run_all(ingest);
    assert_eq!(chunks.len(), 4, "durations: {:?}", durations(&chunks));
    assert_segments_near_target(&chunks);
    assert_playable(dir.path(), &init, &chunks, 120);
}

#[test]
fn missing_file_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.mp4");
    match Ingest::open(vod(&path)) {
        Err(IngestError::NotFound(p)) => assert_eq!(p, path),
        Err(e) => panic!("expected NotFound, got {e}"),
        Ok(_) => panic!("expected NotFound, got an ingest"),
    }
}

#[test]
fn text_file_named_mp4_is_not_media() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.mp4");
    std::fs::write(&path, "this is not a video, just some text\n".repeat(50)).unwrap();
    match Ingest::open(vod(&path)) {
        Err(e @ IngestError::NotMedia { .. }) => {
            assert!(e.to_string().contains("x.mp4"), "error names the file: {e}")
        }
        Err(e) => panic!("expected NotMedia, got {e}"),
        Ok(_) => panic!("expected NotMedia, got an ingest"),
    }
}

#[test]
fn audio_only_m4a_has_no_video() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("a.m4a");
    generate(&src, None, Some(48000), 1, &["-c:a", "aac"]);
    match Ingest::open(vod(&src)) {
        Err(IngestError::NoVideo(input)) => assert!(input.ends_with("a.m4a")),
        Err(e) => panic!("expected NoVideo, got {e}"),
        Ok(_) => panic!("expected NoVideo, got an ingest"),
    }
}

#[test]
fn test_pattern_live_is_paced_and_stops_on_request() {
    let ingest = Ingest::open(IngestConfig {
        input: Input::parse("testsrc"),
        segment_target: TARGET,
        mode: IngestMode::Live,
        progress: false,
    })
    .unwrap();
    assert_eq!(ingest.info().video, Treatment::Transcode);
    assert_eq!(ingest.info().audio, Some(Treatment::Transcode));
    assert_eq!((ingest.info().width, ingest.info().height), (1280, 720));

    let stop = AtomicBool::new(false);
    let (tx, rx) = mpsc::channel();
    let started = Instant::now();
    let (summary, init, chunks) = std::thread::scope(|s| {
        let runner = s.spawn(|| {
            ingest.run(&stop, |out| {
                tx.send((Instant::now(), out))
                    .map_err(|_| peer::media::SinkClosed)
            })
        });
        let mut init = None;
        let mut chunks = Vec::new();
        while chunks.len() < 3 {
            let (at, out) = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("live output in time");
            match out {
                IngestOutput::Init(b) => {
                    assert!(
                        init.is_none() && chunks.is_empty(),
                        "init comes first, once"
                    );
                    init = Some(b);
                }
                IngestOutput::Segment(c) => chunks.push((at, c)),
            }
        }
        stop.store(true, Ordering::Relaxed);
        let summary = runner.join().unwrap().expect("run ends cleanly on stop");
        (summary, init, chunks)
    });
    let init = init.expect("an init segment");
    let third = chunks[2].0.duration_since(started);
    assert!(
        third >= Duration::from_millis(2_000),
        "3 segments after {third:?}: not paced"
    );
    assert!(third < Duration::from_secs(15), "3 segments took {third:?}");
    assert!(summary.segments >= 3);
    assert!(
        summary.wall >= Duration::from_secs(2),
        "run wall time {:?}",
        summary.wall
    );
    let chunks: Vec<Chunk> = chunks.into_iter().map(|(_, c)| c).collect();
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c.seq, i as u64);
    }
    assert_segments_near_target(&chunks);
    let dir = tempfile::tempdir().unwrap();
    assert_playable(dir.path(), &init, &chunks, 90);
}

#[test]
fn corrupt_data_mid_stream_is_skipped_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("in.ts");
    generate(
        &src,
        Some("320x240:rate=30"),
        Some(48000),
        4,
        &[
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "30",
            "-c:a",
            "aac",
        ],
    );
    let mut bytes = std::fs::read(&src).unwrap();
    let mid = bytes.len() / 2;
    for (i, b) in bytes[mid..mid + 20_000].iter_mut().enumerate() {
        *b = (i * 7 + 13) as u8; // garbage over ~100 TS packets, sync bytes included
    }
    std::fs::write(&src, &bytes).unwrap();

    let (init, chunks) = run_all(open_vod(&src));
    assert!(!init.is_empty());
    assert!(chunks.len() >= 3, "durations: {:?}", durations(&chunks));
    let total: Duration = chunks.iter().map(|c| c.duration).sum();
    assert!(
        total >= Duration::from_millis(3_500),
        "ingested {total:?} of 4 s"
    );
}

#[test]
fn sink_closing_stops_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("in.mp4");
    generate(
        &src,
        Some("160x120:rate=30"),
        None,
        3,
        &["-c:v", "libx264", "-preset", "ultrafast", "-g", "30"],
    );
    let stop = AtomicBool::new(false);
    let mut seen = 0;
    let result = open_vod(&src).run(&stop, |out| {
        seen += 1;
        match out {
            IngestOutput::Init(_) => Ok(()),
            IngestOutput::Segment(_) => Err(peer::media::SinkClosed),
        }
    });
    assert!(
        matches!(result, Err(IngestError::SinkClosed)),
        "got {result:?}"
    );
    assert_eq!(seen, 2, "init and one segment, then nothing");
}

/// Benchmark: `cargo test -p peer --release --test ingest -- --ignored --nocapture bench`.
#[test]
#[ignore]
fn bench_ingest_1080p30() {
    let value = peer::bench::ingest::run(peer::bench::ingest::IngestBenchArgs {
        seconds: 60,
        work_dir: None,
    })
    .unwrap();
    assert!(value["segments"].as_u64().unwrap() >= 59);
    println!("{value}");
}

/// Transcode figure (mpeg4 + mp3 in mkv, 1080p30, 60 s):
/// `cargo test -p peer --test ingest -- --ignored --nocapture transcode_bench`.
#[test]
#[ignore]
fn transcode_bench_1080p30_mpeg4_mp3() {
    let dir = std::env::temp_dir().join("selfcast-bench");
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("ingest-1080p30-mpeg4-mp3-60s.mkv");
    if !src.exists() {
        generate(
            &src,
            Some("1920x1080:rate=30"),
            Some(44100),
            60,
            &[
                "-c:v",
                "mpeg4",
                "-q:v",
                "5",
                "-g",
                "30",
                "-c:a",
                "libmp3lame",
            ],
        );
    }
    let ingest = open_vod(&src);
    assert_eq!(ingest.info().video, Treatment::Transcode);
    let segments = run_all_timed(ingest);
    assert!(segments >= 59);
}

fn run_all_timed(ingest: Ingest) -> u64 {
    let stop = AtomicBool::new(false);
    let mut bytes = 0;
    let summary = ingest
        .run(&stop, |out| {
            bytes += match out {
                IngestOutput::Init(b) => b.len(),
                IngestOutput::Segment(c) => c.bytes.len(),
            };
            Ok(())
        })
        .unwrap();
    let x = summary.media_duration.as_secs_f64() / summary.wall.as_secs_f64();
    println!(
        "{{\"bench\":\"ingest\",\"input\":\"1080p30-mpeg4-mp3\",\"media_seconds\":{:.3},\"wall_seconds\":{:.3},\"x_realtime\":{x:.3},\"segments\":{},\"bytes\":{bytes}}}",
        summary.media_duration.as_secs_f64(),
        summary.wall.as_secs_f64(),
        summary.segments
    );
    summary.segments
}

fn vod(path: &Path) -> IngestConfig {
    IngestConfig {
        input: Input::File(path.to_path_buf()),
        segment_target: TARGET,
        mode: IngestMode::Vod,
        progress: false,
    }
}

fn open_vod(path: &Path) -> Ingest {
    Ingest::open(vod(path)).unwrap()
}

/// Runs to the end of the input; checks Init comes first and sequence numbers count up.
fn run_all(ingest: Ingest) -> (Bytes, Vec<Chunk>) {
    let stop = AtomicBool::new(false);
    let mut init = None;
    let mut chunks: Vec<Chunk> = Vec::new();
    let summary = ingest
        .run(&stop, |out| {
            match out {
                IngestOutput::Init(b) => {
                    assert!(
                        init.is_none() && chunks.is_empty(),
                        "init comes first, once"
                    );
                    init = Some(b);
                }
                IngestOutput::Segment(c) => {
                    assert_eq!(c.seq, chunks.len() as u64);
                    chunks.push(c);
                }
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(summary.segments, chunks.len() as u64);
    assert_eq!(
        summary.media_duration,
        chunks.iter().map(|c| c.duration).sum::<Duration>()
    );
    (init.expect("an init segment"), chunks)
}

fn durations(chunks: &[Chunk]) -> Vec<f64> {
    chunks.iter().map(|c| c.duration.as_secs_f64()).collect()
}

/// Every segment but the last lasts about the target; the last is not longer.
fn assert_segments_near_target(chunks: &[Chunk]) {
    let d = durations(chunks);
    let (last, full) = d.split_last().expect("at least one segment");
    for x in full {
        assert!((0.9..=1.2).contains(x), "segment durations {d:?}");
    }
    assert!(*last > 0.0 && *last <= 1.2, "segment durations {d:?}");
}

/// init + all segments decodes without errors into `frames` video frames, and init + each
/// segment alone starts with a video keyframe.
fn assert_playable(dir: &Path, init: &Bytes, chunks: &[Chunk], frames: u64) {
    let all = dir.join("concat.mp4");
    let mut bytes = init.to_vec();
    for c in chunks {
        bytes.extend_from_slice(&c.bytes);
    }
    std::fs::write(&all, &bytes).unwrap();
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&all)
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "decode errors: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let counted = ffprobe(
        &all,
        &["-count_frames", "-show_entries", "stream=nb_read_frames"],
    );
    assert_eq!(
        counted.trim().parse::<u64>().unwrap(),
        frames,
        "decoded video frames"
    );

    for c in chunks {
        let one = dir.join(format!("seg{}.mp4", c.seq));
        let mut bytes = init.to_vec();
        bytes.extend_from_slice(&c.bytes);
        std::fs::write(&one, &bytes).unwrap();
        let first = ffprobe(
            &one,
            &[
                "-read_intervals",
                "%+#1",
                "-show_entries",
                "frame=key_frame",
            ],
        );
        assert_eq!(
            first.lines().next().and_then(|l| l.split(',').next()),
            Some("1"),
            "segment {} starts with a keyframe",
            c.seq
        );
    }
}

fn assert_has_aac_audio(dir: &Path, init: &Bytes, chunks: &[Chunk]) {
    let all = dir.join("concat-audio.mp4");
    let mut bytes = init.to_vec();
    for c in chunks {
        bytes.extend_from_slice(&c.bytes);
    }
    std::fs::write(&all, &bytes).unwrap();
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "a:0",
            "-show_entries",
            "stream=codec_name,sample_rate,channels",
            "-of",
            "csv=p=0",
        ])
        .arg(&all)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "aac,48000,2");
}

/// Runs ffprobe on the first video stream and returns its csv output.
fn ffprobe(path: &Path, args: &[&str]) -> String {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0"])
        .args(args)
        .args(["-of", "csv=p=0"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ffprobe: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Makes a test input with the ffmpeg CLI: `seconds` of a test pattern of `video` size and
/// rate (`"320x240:rate=30"`) and/or a 440 Hz tone at `audio` Hz, encoded with `codecs`.
fn generate(out: &Path, video: Option<&str>, audio: Option<u32>, seconds: u32, codecs: &[&str]) {
    let mut command = Command::new("ffmpeg");
    command.args(["-hide_banner", "-loglevel", "error", "-y"]);
    if let Some(video) = video {
        command
            .args(["-f", "lavfi", "-i"])
            .arg(format!("testsrc2=size={video}"));
    }
    if let Some(rate) = audio {
        command
            .args(["-f", "lavfi", "-i"])
            .arg(format!("sine=frequency=440:sample_rate={rate}"));
    }
    command
        .args(["-t", &seconds.to_string()])
        .args(codecs)
        .arg(out);
    let status = command.status().expect("the ffmpeg CLI is installed");
    assert!(status.success(), "ffmpeg failed to make {}", out.display());
}
