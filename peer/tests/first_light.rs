//! First light: a broadcaster's stream reaches viewers over real QUIC on loopback, verified
//! and byte-identical, and the real ffmpeg CLI plays it from a viewer's HLS playlist.

#![allow(clippy::unwrap_used)] // tests: a panic is a failed test with its location

mod common;

use std::process::Command;
use std::time::Duration;

use peer::media::Input;

use common::{init_tracing, make_clip, start_broadcast, start_viewer, wait_until};

/// Every segment the source published is at both viewers, byte for byte.
fn assert_identical(source: &gateway::MediaStore, viewer: &gateway::MediaStore, segments: u64) {
    assert_eq!(viewer.init(), source.init(), "init segment differs");
    for seq in 0..segments {
        let expected = source
            .segment(seq)
            .unwrap_or_else(|| panic!("source lacks #{seq}"));
        let got = viewer
            .segment(seq)
            .unwrap_or_else(|| panic!("viewer lacks #{seq}"));
        assert!(got == expected, "segment #{seq} differs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vod_clip_reaches_two_viewers_intact_and_ffmpeg_decodes_every_frame() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let clip = make_clip(dir.path(), 10);
    let mut broadcast = start_broadcast(Input::File(clip), true).await;
    let summary = broadcast.wait_ingest().await.unwrap();
    assert!(
        (9..=11).contains(&summary.segments),
        "{} segments for 10 s",
        summary.segments
    );
    let a = start_viewer(&broadcast).await;
    let b = start_viewer(&broadcast).await;
    let want = summary.segments + 1;
    wait_until(
        Duration::from_secs(30),
        "both viewers to hold every segment",
        || {
            [&a, &b]
                .iter()
                .all(|v| v.status()["segments_stored"].as_u64() == Some(want))
        },
    )
    .await;
    for viewer in [&a, &b] {
        assert_identical(broadcast.node().store(), viewer.store(), summary.segments);
        assert_eq!(viewer.status()["segments_rejected"], 0);
    }

    // The real ffmpeg CLI, as an HLS client of viewer b, decodes every frame without error.
    let url = format!("http://{}/stream.m3u8", b.http_addr().unwrap());
    let probe = tokio::task::spawn_blocking(move || {
        Command::new("ffprobe")
            .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
            .args(["-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"])
            .arg(&url)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&probe.stderr);
    assert!(
        probe.status.success() && stderr.trim().is_empty(),
        "ffprobe failed: {stderr}"
    );
    // ffprobe prints the count once per program and once for the stream.
    let stdout = String::from_utf8_lossy(&probe.stdout);
    let frames: u64 = stdout
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(frames, 300, "10 s at 30 fps");

    let url = format!("http://{}/stream.m3u8", a.http_addr().unwrap());
    let decode = tokio::task::spawn_blocking(move || {
        Command::new("ffmpeg")
            .args(["-v", "error", "-i", &url, "-f", "null", "-"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&decode.stderr);
    assert!(
        decode.status.success() && stderr.trim().is_empty(),
        "ffmpeg decode errors: {stderr}"
    );

    a.shutdown().await;
    b.shutdown().await;
    broadcast.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_clip_reaches_two_viewers_in_real_time_intact() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let clip = make_clip(dir.path(), 8);
    let mut broadcast = start_broadcast(Input::File(clip), false).await;
    let a = start_viewer(&broadcast).await;
    let b = start_viewer(&broadcast).await;
    let summary = broadcast.wait_ingest().await.unwrap();
    assert!(
        summary.wall >= Duration::from_secs(6),
        "live input is paced: {:?}",
        summary.wall
    );
    let want = summary.segments + 1;
    wait_until(
        Duration::from_secs(15),
        "both viewers to hold every segment",
        || {
            [&a, &b]
                .iter()
                .all(|v| v.status()["segments_stored"].as_u64() == Some(want))
        },
    )
    .await;
    for viewer in [&a, &b] {
        assert_identical(broadcast.node().store(), viewer.store(), summary.segments);
    }
    // QoS by the same definitions as the simulator: playback started, segments on time.
    for viewer in [&a, &b] {
        let qos = &viewer.status()["qos"];
        assert!(qos["startup_ms"].as_u64().is_some(), "{qos}");
        assert!(qos["segments_due"].as_u64().unwrap() >= 4, "{qos}");
        assert!(qos["continuity"].as_f64().unwrap() > 0.8, "{qos}");
        assert!(
            qos["live_latency_ms_median_recent"].as_f64().unwrap() < 3000.0,
            "{qos}"
        );
    }
    // The stream's end reached the viewers: their playlists are closed.
    let playlist = a.store().playlist().unwrap();
    assert!(playlist.contains("#EXT-X-ENDLIST"), "{playlist}");
    a.shutdown().await;
    b.shutdown().await;
    broadcast.shutdown().await;
}
