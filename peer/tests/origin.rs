//! `--origin`: a viewer asks an HTTP origin laid out like the gateway (here the broadcaster's
//! own gateway, as a CDN in front of it would be) for what no peer can deliver in time, over
//! real HTTP, and checks what it gets like anything a peer sends.

#![allow(clippy::unwrap_used)] // tests: a panic is a failed test with its location

mod common;

use std::time::Duration;

use peer::identity::Keypair;
use peer::media::Input;
use peer::node::{Bootstrap, NodeConfig};

use common::{init_tracing, make_clip, node_config, start_broadcast, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_fetches_from_the_origin_what_no_peer_delivers() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let clip = make_clip(dir.path(), 6);
    let mut broadcast = start_broadcast(Input::File(clip), true).await;
    let summary = broadcast.wait_ingest().await.unwrap();
    let origin = format!("http://{}", broadcast.node().http_addr().unwrap());
    let viewer = peer::app::watch(
        broadcast.channel(),
        vec![Bootstrap::Peer(broadcast.node().peer_addr())],
        NodeConfig {
            origin: Some(origin.parse().unwrap()),
            ..node_config()
        },
        Keypair::generate(),
    )
    .await
    .unwrap();
    let want = summary.segments + 1;
    wait_until(
        Duration::from_secs(30),
        "every segment at the viewer",
        || viewer.status()["segments_stored"].as_u64() == Some(want),
    )
    .await;
    let source = broadcast.node().store();
    assert_eq!(viewer.store().init(), source.init());
    for seq in 0..summary.segments {
        assert!(
            viewer.store().segment(seq) == source.segment(seq),
            "#{seq} differs"
        );
    }
    // Its only partner is the broadcaster, whose uplink the origin spares.
    let status = viewer.status();
    assert!(
        status["bytes_from_origin"].as_u64().unwrap() > 0,
        "{status}"
    );
    assert_eq!(status["bytes_from_source"], 0, "{status}");
    assert_eq!(status["segments_rejected"], 0, "{status}");
}
