//! Ingest benchmark: how fast [`Ingest`] imports a 1080p30 H.264/AAC clip in Vod mode
//! (passthrough: demux, remux, segment).
//!
//! The clip is generated once with the `ffmpeg` CLI and cached in the work directory (or a
//! `selfcast-bench` folder under the system temp dir).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde_json::json;

use crate::media::{Ingest, IngestConfig, IngestMode, IngestOutput, Input};

/// Parameters of the ingest benchmark.
#[derive(Debug, Clone)]
pub struct IngestBenchArgs {
    /// Length of the generated clip in seconds (default 60).
    pub seconds: u32,
    /// Where the clip is cached; a temp folder when None.
    pub work_dir: Option<PathBuf>,
}

impl Default for IngestBenchArgs {
    fn default() -> Self {
        IngestBenchArgs {
            seconds: 60,
            work_dir: None,
        }
    }
}

/// Runs the benchmark and returns its JSON result line.
pub fn run(args: IngestBenchArgs) -> anyhow::Result<serde_json::Value> {
    let dir = args
        .work_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("selfcast-bench"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let clip = dir.join(format!("ingest-1080p30-h264-aac-{}s.mp4", args.seconds));
    if !clip.exists() {
        generate_clip(&clip, args.seconds)?;
    }

    let ingest = Ingest::open(IngestConfig {
        input: Input::File(clip.clone()),
        segment_target: Duration::from_secs(1),
        mode: IngestMode::Vod,
        progress: false,
    })
    .with_context(|| format!("opening {}", clip.display()))?;
    let stop = AtomicBool::new(false);
    let mut bytes = 0u64;
    let summary = ingest
        .run(&stop, |out| {
            bytes += match out {
                IngestOutput::Init(b) => b.len() as u64,
                IngestOutput::Segment(c) => c.bytes.len() as u64,
            };
            Ok(())
        })
        .context("ingesting the clip")?;
    let media = summary.media_duration.as_secs_f64();
    let wall = summary.wall.as_secs_f64();
    Ok(json!({
        "bench": "ingest",
        "input": "1080p30-h264-aac",
        "media_seconds": args.seconds,
        "ingested_seconds": round3(media),
        "wall_seconds": round3(wall),
        "x_realtime": round3(if wall > 0.0 { media / wall } else { 0.0 }),
        "segments": summary.segments,
        "bytes": bytes,
    }))
}

/// Writes a `seconds`-long 1080p30 H.264 (1 s GOP) + AAC mp4 to `path` (via a temp name, so an
/// interrupted run never leaves a truncated clip in the cache).
fn generate_clip(path: &Path, seconds: u32) -> anyhow::Result<()> {
    let tmp = path.with_extension("partial.mp4");
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=30"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
        .args(["-t", &seconds.to_string()])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "30",
            "-pix_fmt",
            "yuv420p",
        ])
        .args(["-c:a", "aac", "-b:a", "128k"])
        .arg(&tmp)
        .status()
        .context("running the ffmpeg CLI (is it installed?)")?;
    if !status.success() {
        bail!("ffmpeg failed to generate the benchmark clip ({status})");
    }
    std::fs::rename(&tmp, path)
        .with_context(|| format!("moving the clip to {}", path.display()))?;
    Ok(())
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
