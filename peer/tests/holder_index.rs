//! The holder index of a film in the overlay: a viewer that holds segments of an on-demand
//! channel lists itself in the index's buckets, and a look-up for a segment names it (and only
//! for the segments it holds).

#![allow(clippy::unwrap_used)] // tests: a panic is a failed test with its location

mod common;

use std::time::Duration;

use peer::app::Broadcast;
use peer::identity::{ChannelId, PeerId};
use peer::media::Input;
use peer::overlay_net::OverlayHandle;
use peer::wire::PeerAddr;

use common::{init_tracing, make_clip, start_broadcast, start_viewer};

/// A film of `seconds` one-second segments, imported and published on demand: the
/// broadcast, its segment count and the folder holding its clip.
async fn film(seconds: u32) -> (Broadcast, u64, tempfile::TempDir) {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let clip = make_clip(dir.path(), seconds);
    let mut broadcast = start_broadcast(Input::File(clip), true).await;
    let summary = broadcast.wait_ingest().await.unwrap();
    (broadcast, summary.segments as u64, dir)
}

/// The holders the index names to `asker` for segment `seq`.
async fn holders(
    overlay: &OverlayHandle,
    channel: ChannelId,
    seq: u64,
    asker: PeerId,
) -> Vec<PeerAddr> {
    peer::directory::find_holders(overlay, channel, seq, asker)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_of_a_film_is_found_in_the_holder_index_for_what_it_holds() {
    let (broadcast, segments, _dir) = film(4).await;
    let channel = broadcast.channel();
    let viewer = start_viewer(&broadcast).await;
    assert!(viewer.overlay().joined(Duration::from_secs(15)).await);

    // Someone else (not in the swarm) looks up the film's last segment until the viewer is
    // listed: it announces within seconds of holding something.
    let asker = PeerId([7; 32]);
    let last = segments - 1;
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
    let past = holders(&overlay, channel, last + 1, asker).await;
    assert!(past.is_empty(), "{past:?}");
    let mine = holders(&overlay, channel, last, viewer.peer_id()).await;
    assert!(mine.iter().all(|p| p.id != viewer.peer_id()), "{mine:?}");

    // A viewer that leaves takes its entry out: nobody is sent to it any more.
    let started = tokio::time::Instant::now();
    let id = viewer.peer_id();
    viewer.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "shutdown waited {:?}",
        started.elapsed()
    );
    let found = holders(&overlay, channel, last, asker).await;
    assert!(found.iter().all(|p| p.id != id), "{found:?}");
    broadcast.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holders_written_at_once_into_shared_buckets_are_all_found() {
    let (broadcast, _, _dir) = film(2).await;
    let channel = broadcast.channel();
    let overlay = broadcast.node().overlay().clone();
    assert!(overlay.joined(Duration::from_secs(15)).await);

    // Three holders race into the same buckets (0 to 3: segments 0–200); a fourth holds a
    // stretch of bucket 4 only. Each bucket is written by itself, the losers of a race try
    // again on top of the winner's entry.
    let addr = |n: u8| std::net::SocketAddr::from(([127, 0, 0, n], 4433));
    let mut writes = tokio::task::JoinSet::new();
    for n in 1..=3u8 {
        let overlay = overlay.clone();
        writes.spawn(async move {
            peer::directory::announce_holding(
                &overlay,
                channel,
                PeerId([n; 32]),
                addr(n),
                vec![(0, 200)],
            )
            .await
        });
    }
    let late = peer::directory::announce_holding(
        &overlay,
        channel,
        PeerId([4; 32]),
        addr(4),
        vec![(260, 270)],
    );
    late.await.unwrap();
    while let Some(done) = writes.join_next().await {
        done.unwrap().unwrap();
    }
    let asker = PeerId([9; 32]);
    for seq in [0, 63, 64, 150, 200] {
        let mut found: Vec<u8> = holders(&overlay, channel, seq, asker)
            .await
            .iter()
            .map(|p| p.id.0[0])
            .collect();
        found.sort_unstable();
        assert_eq!(found, vec![1, 2, 3], "holders of segment {seq}");
    }
    let found = holders(&overlay, channel, 265, asker).await;
    assert_eq!(found.len(), 1);
    assert_eq!((found[0].id, found[0].addr), (PeerId([4; 32]), addr(4)));
    for seq in [201, 259, 271] {
        let found = holders(&overlay, channel, seq, asker).await;
        assert!(found.is_empty(), "nobody holds segment {seq}: {found:?}");
    }
    broadcast.shutdown().await;
}
