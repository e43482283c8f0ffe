//! Shared pieces of the integration tests: generated media, a source and viewers on loopback.
#![allow(dead_code, missing_docs, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use peer::app::{Broadcast, BroadcastOptions};
use peer::identity::Keypair;
use peer::media::Input;
use peer::node::{Bootstrap, NodeConfig, NodeHandle};

/// Writes a `seconds`-long 640×360 30 fps H.264 + AAC clip with a 1 s GOP to `dir`.
pub fn make_clip(dir: &Path, seconds: u32) -> PathBuf {
    let path = dir.join(format!("clip-{seconds}s.mp4"));
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=size=640x360:rate=30:duration={seconds}"))
        .args(["-f", "lavfi", "-i"])
        .arg(format!(
            "sine=frequency=440:sample_rate=48000:duration={seconds}"
        ))
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
        .args(["-c:a", "aac", "-shortest"])
        .arg(&path)
        .status()
        .expect("the ffmpeg CLI must be installed (run the README's test command)");
    assert!(status.success(), "ffmpeg could not generate the test clip");
    path
}

/// Node settings for tests: loopback, a gateway on a free port.
pub fn node_config() -> NodeConfig {
    NodeConfig::default()
}

pub async fn start_broadcast(input: Input, vod: bool) -> Broadcast {
    start_broadcast_with(input, vod, node_config()).await
}

/// [`start_broadcast`] with a node configuration of the test's own.
pub async fn start_broadcast_with(input: Input, vod: bool, node: NodeConfig) -> Broadcast {
    let options = BroadcastOptions {
        input,
        vod,
        name: "test".into(),
        segment_target: Duration::from_secs(1),
        progress: false,
        node,
    };
    Broadcast::start(options, Keypair::generate())
        .await
        .unwrap()
}

pub async fn start_viewer(broadcast: &Broadcast) -> NodeHandle {
    peer::app::watch(
        broadcast.channel(),
        vec![Bootstrap::Peer(broadcast.node().peer_addr())],
        node_config(),
        Keypair::generate(),
    )
    .await
    .unwrap()
}

/// Polls `check` every 50 ms until it holds or `timeout` passes.
pub async fn wait_until(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Logs to the test output (shown for failing tests) at `info`, or as RUST_LOG says.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,quinn=warn".into()),
        )
        .with_test_writer()
        .try_init();
}
