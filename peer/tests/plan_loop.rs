//! The optimizer's self-managed loop on real nodes: a live broadcast and three viewers on
//! loopback QUIC. Every node sends QoS reports through the overlay to the node responsible
//! for the channel's plan key, which plans and stores epochs; each viewer reads its entry of
//! the stored plan and its exchange applies it as a hint.

#![allow(clippy::unwrap_used)] // tests: a panic is a failed test with its location

mod common;

use std::time::{Duration, Instant};

use peer::media::Input;

use common::{init_tracing, make_clip, start_broadcast, start_viewer, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_apply_the_plan_the_channels_coordinator_stores() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let clip = make_clip(dir.path(), 40);
    let broadcast = start_broadcast(Input::File(clip), false).await;
    let started = Instant::now();
    let mut viewers = Vec::new();
    for _ in 0..3 {
        viewers.push(start_viewer(&broadcast).await);
    }
    let channel = broadcast.channel();

    // Within 30 s, every viewer's exchange follows an entry of a stored plan.
    wait_until(
        Duration::from_secs(30),
        "every viewer applied a plan entry",
        || {
            viewers
                .iter()
                .all(|v| v.plan_epoch().is_some_and(|e| e >= 1))
        },
    )
    .await;
    let applied_after = started.elapsed();

    // The plan is in the store: its header has an epoch, and each viewer's entry is there.
    let overlay = broadcast.node().overlay();
    let mut stored = None;
    for v in &viewers {
        let entry = peer::directory::read_plan(overlay, channel, v.peer_id())
            .await
            .unwrap();
        let (epoch, hint) = entry.expect("the stored plan names every viewer");
        assert!(epoch >= 1);
        assert!(hint.tier >= 1, "a viewer is in a tier below the source");
        stored = stored.max(Some(epoch));
    }
    for v in &viewers {
        let status = v.status();
        let plan = &status["plan"];
        assert!(plan["epoch"].as_u64() >= Some(1));
        assert!(plan["tier"].as_u64() >= Some(1));
        println!(
            "viewer {}: plan {plan}, tree {}, segments {}",
            status["peer"].as_str().unwrap_or("?"),
            status["tree"],
            status["segments_stored"]
        );
    }
    println!(
        "all 3 viewers applied a plan entry after {:.1} s; stored epoch {}",
        applied_after.as_secs_f64(),
        stored.unwrap_or(0)
    );

    for v in &viewers {
        v.shutdown().await;
    }
    broadcast.shutdown().await;
}
