//! A real browser plays the stream: headless Chromium (Debian's `chromium`, driven by
//! playwright-core) opens a viewer's player page, and the video plays past 5 s.

#![allow(clippy::unwrap_used)] // tests: a panic is a failed test with its location

mod common;

use std::path::PathBuf;
use std::process::Command;

use peer::media::Input;

use common::{init_tracing, make_clip, start_broadcast, start_viewer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_plays_a_viewers_player_page_past_five_seconds() {
    init_tracing();
    let web_root = gateway::default_web_root();
    let driver = web_root.join("node_modules/playwright-core");
    assert!(
        driver.exists() && PathBuf::from("/usr/bin/chromium").exists(),
        "the browser test needs Chromium and the web-player's npm packages: run `scripts/test.sh` \
         (or `apt-get install chromium` and `npm ci` in web-player/)"
    );
    let dir = tempfile::tempdir().unwrap();
    let clip = make_clip(dir.path(), 40);
    let broadcast = start_broadcast(Input::File(clip), false).await;
    let viewer = start_viewer(&broadcast).await;
    let page = format!("http://{}/", viewer.http_addr().unwrap());
    let screenshot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("player.png");
    let script = web_root.join("tests/play.mjs");
    let shot = screenshot.clone();
    let run = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .arg(&page)
            .arg(&shot)
            .args(["5", "60"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "the player did not play:\n{stdout}\n{stderr}"
    );
    let result: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(result["ok"], true, "{stdout}");
    assert!(result["currentTime"].as_f64().unwrap() > 5.0, "{stdout}");
    assert!(
        std::fs::metadata(&screenshot).unwrap().len() > 10_000,
        "screenshot is empty"
    );
    println!("screenshot: {}", screenshot.display());
    // The page played what the swarm delivered: the viewer served its verified segments.
    assert!(viewer.status()["segments_stored"].as_u64().unwrap() >= 6);
    viewer.shutdown().await;
    broadcast.shutdown().await;
}
