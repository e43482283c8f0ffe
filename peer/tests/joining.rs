//! Joining when things are not ready: a viewer started before its broadcaster keeps trying the
//! bootstrap address, and a broadcaster that restarts starts a new session that replaces the
//! old one at the viewer.

#![allow(clippy::unwrap_used)] // tests: a panic is a failed test with its location

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use peer::app::{Broadcast, BroadcastOptions};
use peer::identity::Keypair;
use peer::media::Input;
use peer::node::{Bootstrap, NodeConfig};

use common::{init_tracing, make_clip, wait_until};

fn free_udp_port() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

async fn broadcast_on(listen: SocketAddr, clip: &std::path::Path, key: Keypair) -> Broadcast {
    let options = BroadcastOptions {
        input: Input::File(clip.to_owned()),
        vod: true,
        name: "late".into(),
        segment_target: Duration::from_secs(1),
        progress: false,
        node: NodeConfig {
            listen,
            ..NodeConfig::default()
        },
    };
    Broadcast::start(options, key).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_started_before_its_broadcaster_joins_when_it_appears_and_follows_a_restart() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let first = make_clip(dir.path(), 3);
    let addr = free_udp_port();
    let key = Keypair::generate();
    let viewer = peer::app::watch(
        key.public().channel_id(),
        vec![Bootstrap::Addr(addr)],
        NodeConfig::default(),
        Keypair::generate(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(viewer.status()["segments_stored"], 0);

    let mut broadcast = broadcast_on(addr, &first, key.clone()).await;
    let summary = broadcast.wait_ingest().await.unwrap();
    wait_until(
        Duration::from_secs(30),
        "the viewer to find the late broadcaster",
        || viewer.status()["segments_stored"].as_u64() == Some(summary.segments + 1),
    )
    .await;
    let old_init = viewer.store().init().unwrap();
    broadcast.shutdown().await;

    // The broadcaster comes back with the same key and another film: a new session.
    let second = dir.path().join("second.mp4");
    std::fs::rename(make_clip(dir.path(), 5), &second).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await; // a later start time
    let mut broadcast = broadcast_on(addr, &second, key).await;
    let summary = broadcast.wait_ingest().await.unwrap();
    wait_until(
        Duration::from_secs(40),
        "the viewer to switch to the new session",
        || {
            (0..summary.segments).all(|seq| viewer.store().segment(seq).is_some())
                && viewer.status()["name"] == "late"
                && viewer.store().init().is_some_and(|init| init != old_init)
        },
    )
    .await;
    let source = broadcast.node().store();
    assert_eq!(viewer.store().init(), source.init());
    for seq in 0..summary.segments {
        assert!(
            viewer.store().segment(seq) == source.segment(seq),
            "segment #{seq} differs"
        );
    }
    viewer.shutdown().await;
    broadcast.shutdown().await;
}
