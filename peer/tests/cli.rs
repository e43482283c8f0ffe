//! The `peer` command on bad input: one clear error line and a non-zero exit.

#![allow(clippy::unwrap_used)] // tests: a panic is a failed test with its location

use std::path::Path;
use std::process::{Command, Output};

fn peer(args: &[&str], home: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_peer"))
        .args(args)
        .env("XDG_CONFIG_HOME", home)
        .env("RUST_LOG", "error")
        .output()
        .unwrap()
}

/// The last line of stderr, which must be the one error line.
fn error_line(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    stderr.lines().last().unwrap_or_default().to_owned()
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let home = tempfile::tempdir().unwrap();
    let out = peer(
        &[
            "--source",
            "/nonexistent/film.mp4",
            "--listen",
            "127.0.0.1:0",
        ],
        home.path(),
    );
    assert!(!out.status.success());
    let line = error_line(&out);
    assert!(
        line.starts_with("error:") && line.contains("/nonexistent/film.mp4"),
        "{line}"
    );
    assert!(line.contains("does not exist"), "{line}");
}

#[test]
fn a_file_that_is_not_media_is_a_clear_error() {
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("notes.mp4");
    std::fs::write(&file, "these are my notes, not a video\n".repeat(100)).unwrap();
    let out = peer(
        &[
            "--source",
            file.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        home.path(),
    );
    assert!(!out.status.success());
    let line = error_line(&out);
    assert!(
        line.starts_with("error:") && line.contains("notes.mp4"),
        "{line}"
    );
}

#[test]
fn a_file_without_video_is_a_clear_error() {
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("tone.m4a");
    let status = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "sine=duration=1",
            "-c:a",
            "aac",
        ])
        .arg(&file)
        .status()
        .unwrap();
    assert!(status.success());
    let out = peer(
        &[
            "--source",
            file.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        home.path(),
    );
    assert!(!out.status.success());
    let line = error_line(&out);
    assert!(
        line.starts_with("error:") && line.contains("video"),
        "{line}"
    );
}

#[test]
fn a_malformed_channel_id_is_refused() {
    let home = tempfile::tempdir().unwrap();
    let out = peer(
        &["watch", "not-a-channel", "--bootstrap", "127.0.0.1:4433"],
        home.path(),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a valid id"), "{stderr}");
}

#[test]
fn the_broadcaster_key_is_created_private() {
    let home = tempfile::tempdir().unwrap();
    // The key is made before the input is opened, so even a failing run creates it.
    let _ = peer(
        &["--source", "/nonexistent.mp4", "--listen", "127.0.0.1:0"],
        home.path(),
    );
    let key = home.path().join("selfcast/broadcaster.key");
    let meta = std::fs::metadata(&key).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }
    assert!(meta.len() > 32);
}
