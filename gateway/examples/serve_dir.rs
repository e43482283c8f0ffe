//! Serves an ffmpeg-made fMP4 HLS directory through the gateway, feeding a `MediaStore` the way
//! a peer does: the init segment first, then each segment as it "arrives". It exercises the
//! live window, the VOD playlist, the player page and hls.js without any peer.
//!
//! Make a test stream (20 s, H.264 + AAC, 1 s segments):
//!
//! ```sh
//! mkdir -p /tmp/sc-hls && ffmpeg -f lavfi -i testsrc2=size=640x360:rate=30 \
//!   -f lavfi -i sine=frequency=440 -t 20 -c:v libx264 -preset veryfast -pix_fmt yuv420p \
//!   -g 30 -keyint_min 30 -sc_threshold 0 -c:a aac -f hls -hls_segment_type fmp4 -hls_time 1 \
//!   -hls_playlist_type vod -hls_fmp4_init_filename init.mp4 \
//!   -hls_segment_filename '/tmp/sc-hls/seg%d.m4s' /tmp/sc-hls/stream.m3u8
//! ```
//!
//! Then (`npm ci` in `web-player/` first, for hls.js):
//!
//! ```sh
//! cargo run -p gateway --example serve_dir -- /tmp/sc-hls --mode live --port 8080
//! ```
//!
//! and open <http://127.0.0.1:8080/>. Options:
//!
//! - `--mode live` (default): segments are inserted in real time (one per its duration, scaled by
//!   `--speed`), the playlist is a sliding window of `--window` segments (default 6), old
//!   segments are evicted, and the stream ends after the last one.
//! - `--mode vod`: every segment is declared at once and inserted at `--speed` times real time
//!   (`--speed 0` inserts them all at once); requests for not-yet-inserted segments wait.
//! - `--delay S`: serve for `S` seconds with an empty store first (a peer still joining: the
//!   page must keep waiting for the playlist).
//! - `--port N` (default 8080; 0 picks a free port, printed on stdout as `listening: <url>`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use gateway::{AppState, GatewayConfig, MediaStore, StatusFn, StreamMode};

#[derive(Debug)]
struct Args {
    dir: PathBuf,
    live: bool,
    window: usize,
    speed: f64,
    delay: f64,
    port: u16,
}

#[derive(Debug)]
struct Source {
    init: Bytes,
    segments: Vec<(Duration, Bytes)>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = parse_args()?;
    let source = read_source(&args.dir)?;
    let mode = if args.live {
        StreamMode::Live {
            window: args.window,
        }
    } else {
        StreamMode::Vod
    };
    let store = MediaStore::new(mode);
    let status: StatusFn = {
        let store = store.clone();
        Arc::new(move || {
            let stats = store.stats();
            serde_json::json!({
                "source": "serve_dir example",
                "mode": if args.live { "live" } else { "vod" },
                "store": stats,
            })
        })
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port))
        .await
        .context("bind")?;
    println!("listening: http://{}/", listener.local_addr()?);
    let app = gateway::router(AppState::new(
        store.clone(),
        GatewayConfig::default(),
        status,
    ));
    let server = tokio::spawn(gateway::serve(listener, app, async {
        let _ = tokio::signal::ctrl_c().await;
    }));
    feed(&store, source, &args).await;
    server.await??;
    Ok(())
}

/// Feeds the store like a peer would, pacing by segment duration.
async fn feed(store: &MediaStore, source: Source, args: &Args) {
    if args.delay > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(args.delay)).await;
    }
    store.set_init(source.init);
    let pace = |duration: Duration| (args.speed > 0.0).then(|| duration.mul_f64(1.0 / args.speed));
    if !args.live {
        for (seq, (duration, _)) in source.segments.iter().enumerate() {
            store.declare(seq as u64, *duration);
        }
    }
    for (seq, (duration, bytes)) in source.segments.into_iter().enumerate() {
        let seq = seq as u64;
        store.insert(seq, duration, bytes);
        tracing::info!(seq, "inserted");
        if args.live {
            // Keep two windows behind the newest segment, as a peer would.
            store.evict_before(seq.saturating_sub(2 * args.window as u64));
        }
        if let Some(wait) = pace(duration) {
            tokio::time::sleep(wait).await;
        }
    }
    store.end();
    tracing::info!("stream ended; Ctrl-C to stop");
}

/// The init segment and segments listed by `dir/stream.m3u8` (or the only `.m3u8` there).
fn read_source(dir: &Path) -> anyhow::Result<Source> {
    let playlist_path = dir.join("stream.m3u8");
    let text = std::fs::read_to_string(&playlist_path)
        .with_context(|| format!("read {}", playlist_path.display()))?;
    let mut init = None;
    let mut segments = Vec::new();
    let mut duration = None;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("#EXT-X-MAP:URI=\"") {
            let uri = rest.split('"').next().unwrap_or_default();
            init = Some(read(dir, uri)?);
        } else if let Some(rest) = line.strip_prefix("#EXTINF:") {
            let secs: f64 = rest
                .split(',')
                .next()
                .unwrap_or_default()
                .parse()
                .with_context(|| format!("bad EXTINF {line}"))?;
            duration = Some(Duration::from_secs_f64(secs));
        } else if !line.is_empty() && !line.starts_with('#') {
            let duration = duration.take().context("segment without EXTINF")?;
            segments.push((duration, read(dir, line)?));
        }
    }
    let Some(init) = init else {
        bail!(
            "{} has no EXT-X-MAP (make fMP4 segments)",
            playlist_path.display()
        );
    };
    Ok(Source { init, segments })
}

fn read(dir: &Path, uri: &str) -> anyhow::Result<Bytes> {
    let path = dir.join(uri);
    Ok(Bytes::from(
        std::fs::read(&path).with_context(|| format!("read {}", path.display()))?,
    ))
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        dir: PathBuf::new(),
        live: true,
        window: 6,
        speed: 1.0,
        delay: 0.0,
        port: 8080,
    };
    let mut it = std::env::args().skip(1);
    let mut dir = None;
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--mode" => {
                args.live = match value("--mode")?.as_str() {
                    "live" => true,
                    "vod" => false,
                    other => bail!("--mode is live or vod, not {other}"),
                }
            }
            "--window" => args.window = value("--window")?.parse()?,
            "--speed" => args.speed = value("--speed")?.parse()?,
            "--delay" => args.delay = value("--delay")?.parse()?,
            "--port" => args.port = value("--port")?.parse()?,
            flag if flag.starts_with("--") => bail!("unknown option {flag}"),
            path => dir = Some(PathBuf::from(path)),
        }
    }
    args.dir = dir.context(
        "usage: serve_dir <hls-dir> [--mode live|vod] [--window N] [--speed X] [--delay S] [--port N]",
    )?;
    Ok(args)
}
