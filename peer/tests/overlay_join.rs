//! Finding a channel through the overlay: a viewer whose bootstrap peer is not in its swarm at
//! all (the broadcaster of another channel, in the same ring) finds the channel's record and
//! members in the overlay's directory and receives every segment.

#![allow(clippy::unwrap_used)] // tests: a panic is a failed test with its location

mod common;

use std::time::Duration;

use peer::app::{Broadcast, BroadcastOptions};
use peer::identity::Keypair;
use peer::media::Input;
use peer::node::{Bootstrap, NodeConfig};

use common::{init_tracing, make_clip, start_broadcast, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_bootstrapped_by_another_viewer_finds_the_channel_through_the_overlay() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let clip = make_clip(dir.path(), 6);
    let mut broadcast = start_broadcast(Input::File(clip), true).await;
    let summary = broadcast.wait_ingest().await.unwrap();
    let channel = broadcast.channel();

    // Another channel's broadcaster joins the same ring through the first source.
    let other_clip = make_clip(dir.path(), 2);
    let options = BroadcastOptions {
        input: Input::File(other_clip),
        vod: true,
        name: "other channel".into(),
        segment_target: Duration::from_secs(1),
        progress: false,
        node: NodeConfig {
            overlay_bootstrap: Some(broadcast.node().local_addr()),
            ..NodeConfig::default()
        },
    };
    let mut other = Broadcast::start(options, Keypair::generate())
        .await
        .unwrap();
    other.wait_ingest().await.unwrap();
    assert!(other.node().overlay().joined(Duration::from_secs(15)).await);

    // A first viewer starts from the source.
    let first = peer::app::watch(
        channel,
        vec![Bootstrap::Peer(broadcast.node().peer_addr())],
        NodeConfig::default(),
        Keypair::generate(),
    )
    .await
    .unwrap();
    let overlay = first.overlay().clone();
    assert!(
        overlay.joined(Duration::from_secs(15)).await,
        "first viewer joined the ring"
    );

    // A second viewer knows only the other channel's broadcaster.
    let second = peer::app::watch(
        channel,
        vec![Bootstrap::Addr(other.node().local_addr())],
        NodeConfig::default(),
        Keypair::generate(),
    )
    .await
    .unwrap();
    let want = summary.segments as u64;
    wait_until(
        Duration::from_secs(60),
        "the second viewer has every segment",
        || second.status()["segments_stored"].as_u64() >= Some(want),
    )
    .await;
    // The first viewer reaches the source for segments and for the ring over one connection.
    let source = broadcast.node().peer_id();
    assert!(first.overlay().status().await.unwrap().sent > 0);
    let to_source: Vec<usize> = first
        .connections()
        .into_iter()
        .filter(|(p, _)| *p == source)
        .map(|(_, n)| n)
        .collect();
    assert_eq!(to_source, vec![1], "one connection to the source");
    // It is in the ring, and the directory lists the source and both viewers.
    assert!(second.overlay().joined(Duration::from_secs(1)).await);
    let (record, members) = peer::directory::find(second.overlay(), channel, second.peer_id())
        .await
        .unwrap();
    assert_eq!(record.record.channel_id(), channel);
    let ids: Vec<_> = members.iter().map(|m| m.id).collect();
    assert!(
        ids.contains(&broadcast.node().peer_id()),
        "the source is a member"
    );
    assert!(
        ids.contains(&first.peer_id()),
        "the first viewer registered itself"
    );

    second.shutdown().await;
    first.shutdown().await;
    other.shutdown().await;
    broadcast.shutdown().await;
}
