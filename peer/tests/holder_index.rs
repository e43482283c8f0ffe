//! The holder index of a film in the overlay: a viewer that holds segments of an on-demand
//! channel lists itself in the index's buckets, and a look-up for a segment names it (and only
//! for the segments it holds).

#![allow(clippy::unwrap_used)] // tests: a panic is a failed test with its location

mod common;

use std::time::Duration;

use peer::identity::{Keypair, PeerId};
use peer::media::Input;
use peer::node::{Bootstrap, NodeConfig};

use common::{init_tracing, make_clip, start_broadcast};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_of_a_film_is_found_in_the_holder_index_for_what_it_holds() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let clip = make_clip(dir.path(), 4);
    let mut broadcast = start_broadcast(Input::File(clip), true).await;
    let summary = broadcast.wait_ingest().await.unwrap();
    let channel = broadcast.channel();
    let viewer = peer::app::watch(
        channel,
        vec![Bootstrap::Peer(broadcast.node().peer_addr())],
        NodeConfig::default(),
        Keypair::generate(),
    )
    .await
    .unwrap();
    assert!(viewer.overlay().joined(Duration::from_secs(15)).await);

    // Someone else (not in the swarm) looks up the film's last segment until the viewer is
    // listed: it announces within seconds of holding something.
    let asker = PeerId([7; 32]);
    let last = summary.segments as u64 - 1;
    let overlay = broadcast.node().overlay().clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    let found = loop {
        let found = peer::directory::find_holders(&overlay, channel, last, asker)
            .await
            .unwrap_or_default();
        if found.iter().any(|p| p.id == viewer.peer_id()) || tokio::time::Instant::now() > deadline
        {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        found.iter().any(|p| p.id == viewer.peer_id()),
        "the viewer is listed as a holder of segment {last}: {found:?}"
    );
    assert_eq!(
        found
            .iter()
            .find(|p| p.id == viewer.peer_id())
            .unwrap()
            .addr
            .port(),
        viewer.advertised().port(),
        "at the address it advertises"
    );
    // Nobody holds a segment past the film's end; the asker is never named to itself.
    let past = peer::directory::find_holders(&overlay, channel, last + 1, asker)
        .await
        .unwrap();
    assert!(past.is_empty(), "{past:?}");
    let mine = peer::directory::find_holders(&overlay, channel, last, viewer.peer_id())
        .await
        .unwrap();
    assert!(mine.iter().all(|p| p.id != viewer.peer_id()), "{mine:?}");

    viewer.shutdown().await;
    broadcast.shutdown().await;
}
