//! `peer bench transfer`: segment throughput between two peers over real QUIC on loopback.
//!
//! A source node publishes `segments` segments of `segment_kib` KiB (random bytes, signed as a
//! VOD channel); then a viewer joins and fetches them all, verifying each. The figure is the
//! payload the viewer verified and stored per second of wall time, from its start to its last
//! segment.

use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::RngCore;
use serde_json::json;

use crate::exchange::ExchangeConfig;
use crate::identity::Keypair;
use crate::node::{Bootstrap, NodeConfig, NodeHandle};
use crate::segment::{ChannelRecord, SegmentId, StreamKind};

/// Parameters of the transfer benchmark.
#[derive(Debug, Clone)]
pub struct TransferBenchArgs {
    /// Segments to transfer.
    pub segments: u32,
    /// Size of each segment in KiB.
    pub segment_kib: u32,
}

/// Runs the benchmark and returns its JSON result.
pub async fn run(args: TransferBenchArgs) -> anyhow::Result<serde_json::Value> {
    let exchange = ExchangeConfig {
        max_inflight_per_peer: 16,
        // One viewer pipelines 16 requests; the source serves them all at once.
        upload_slots: 16,
        lookahead: 32,
        ..ExchangeConfig::default()
    };
    let config = NodeConfig {
        http: None,
        exchange,
        ..NodeConfig::default()
    };
    let key = Keypair::generate();
    let record = ChannelRecord {
        broadcaster: key.public(),
        name: "bench".into(),
        kind: StreamKind::Vod,
        segment_target_ms: 1000,
        started_unix_ms: 0,
    }
    .sign(&key);
    let source = NodeHandle::start_source(config.clone(), key, record).await?;
    let mut payload = vec![0u8; args.segment_kib as usize * 1024];
    rand::thread_rng().fill_bytes(&mut payload);
    source
        .publish(
            SegmentId::Init,
            Duration::ZERO,
            Bytes::from_static(b"init"),
            false,
        )
        .await?;
    for seq in 0..u64::from(args.segments) {
        payload[..8].copy_from_slice(&seq.to_le_bytes());
        let bytes = Bytes::copy_from_slice(&payload);
        source
            .publish(SegmentId::Media(seq), Duration::from_secs(1), bytes, false)
            .await?;
    }

    let started = Instant::now();
    let viewer = NodeHandle::start_viewer(
        config,
        Keypair::generate(),
        source.channel(),
        vec![Bootstrap::Peer(source.peer_addr())],
    )
    .await?;
    let want = u64::from(args.segments) + 1;
    let deadline = started + Duration::from_secs(600);
    loop {
        let stored = viewer.status()["segments_stored"].as_u64().unwrap_or(0);
        if stored >= want {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "viewer stored {stored} of {want} segments"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let wall = started.elapsed();
    let status = viewer.status();
    let bytes = status["bytes_from_source"].as_u64().unwrap_or(0);
    viewer.shutdown().await;
    source.shutdown().await;
    let mb_per_s = bytes as f64 / 1e6 / wall.as_secs_f64();
    Ok(json!({
        "bench": "transfer",
        "segments": args.segments,
        "segment_kib": args.segment_kib,
        "bytes": bytes,
        "wall_seconds": wall.as_secs_f64(),
        "mb_per_s": (mb_per_s * 10.0).round() / 10.0,
        "segments_per_s": (f64::from(args.segments) / wall.as_secs_f64()).round(),
    }))
}
