//! What the `peer` command runs: a broadcast (ingest → signed segments → source node), a
//! viewer, and the one-process demo swarm. The integration tests start the same functions.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::directory;
use crate::identity::{ChannelId, Keypair};
use crate::media::{
    Ingest, IngestConfig, IngestError, IngestMode, IngestOutput, IngestSummary, Input,
};
use crate::node::{Bootstrap, NodeConfig, NodeHandle};
use crate::segment::{ChannelRecord, SegmentId, StreamKind};
use crate::wire::PeerAddr;

/// How to broadcast.
#[derive(Debug, Clone)]
pub struct BroadcastOptions {
    /// What to ingest.
    pub input: Input,
    /// Import the whole input as fast as possible for on-demand viewing.
    pub vod: bool,
    /// The channel's title.
    pub name: String,
    /// Target segment duration.
    pub segment_target: Duration,
    /// Show a progress bar during a VOD import.
    pub progress: bool,
    /// The source node's settings.
    pub node: NodeConfig,
}

/// A running broadcast: the source node and the ingest feeding it.
pub struct Broadcast {
    node: NodeHandle,
    stop: Arc<AtomicBool>,
    /// The ingest task, until someone waited for it.
    ingest: Option<tokio::task::JoinHandle<anyhow::Result<IngestSummary>>>,
}

impl Broadcast {
    /// Opens the input (failing fast on a missing or unusable one), starts the source node
    /// and starts ingesting into it.
    pub async fn start(options: BroadcastOptions, key: Keypair) -> anyhow::Result<Self> {
        let config = IngestConfig {
            input: options.input.clone(),
            segment_target: options.segment_target,
            mode: if options.vod {
                IngestMode::Vod
            } else {
                IngestMode::Live
            },
            progress: options.progress,
        };
        let ingest = tokio::task::spawn_blocking(move || Ingest::open(config))
            .await
            .context("ingest thread")??;
        let info = ingest.info();
        info!(
            video = %info.video_codec, audio = ?info.audio_codec, width = info.width,
            height = info.height, treatment = ?info.video, "input opened"
        );
        let record = ChannelRecord {
            broadcaster: key.public(),
            name: options.name.clone(),
            kind: if options.vod {
                StreamKind::Vod
            } else {
                StreamKind::Live
            },
            segment_target_ms: u32::try_from(options.segment_target.as_millis())
                .unwrap_or(u32::MAX),
            started_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        }
        .sign(&key);
        let node = NodeHandle::start_source(options.node.clone(), key, record.clone()).await?;
        // The channel goes into the overlay's directory, where viewers find it through any
        // node of the ring.
        let overlay = node.overlay().clone();
        match options.node.overlay_bootstrap {
            Some(addr) => overlay.join_addr(addr),
            None => overlay.create(),
        }
        let (me, addr, nat) = (node.peer_id(), node.advertised(), node.nat().clone());
        tokio::spawn(async move {
            if !overlay.joined(OVERLAY_JOIN_LIMIT).await {
                warn!("could not join the overlay ring; viewers must use this node as --bootstrap");
                return;
            }
            let channel = record.record.channel_id();
            directory::keep_registered(overlay, channel, Some(record), me, addr, Some(nat), None)
                .await;
        });
        let stop = Arc::new(AtomicBool::new(false));
        let ingest = tokio::spawn(pump(ingest, node.clone(), stop.clone()));
        Ok(Self {
            node,
            stop,
            ingest: Some(ingest),
        })
    }

    /// The source node.
    pub fn node(&self) -> &NodeHandle {
        &self.node
    }

    /// The channel id viewers watch.
    pub fn channel(&self) -> ChannelId {
        self.node.channel()
    }

    /// True once the input has ended (the node keeps serving what it has).
    pub fn ingest_finished(&self) -> bool {
        self.ingest.as_ref().is_none_or(|i| i.is_finished())
    }

    /// Waits for the input to end and returns the ingest's summary.
    pub async fn wait_ingest(&mut self) -> anyhow::Result<IngestSummary> {
        let ingest = self
            .ingest
            .take()
            .context("the ingest was already waited for")?;
        ingest.await.context("ingest task")?
    }

    /// Stops ingesting and shuts the node down.
    pub async fn shutdown(self) {
        self.stop.store(true, Ordering::Relaxed);
        // The ingest stops at the next packet and publishes the end-of-stream marker.
        if let Some(ingest) = self.ingest {
            match ingest.await {
                Ok(Err(e)) => warn!(error = %e, "ingest ended with an error"),
                Err(e) => warn!(error = %e, "ingest task failed"),
                Ok(Ok(_)) => {}
            }
        }
        self.node.shutdown().await;
    }
}

/// Runs the blocking ingest on its own thread and publishes what it produces, in order.
async fn pump(
    ingest: Ingest,
    node: NodeHandle,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<IngestSummary> {
    let (tx, mut rx) = mpsc::channel::<IngestOutput>(16);
    let worker = tokio::task::spawn_blocking(move || {
        ingest.run(&stop, |output| {
            tx.blocking_send(output)
                .map_err(|_| crate::media::SinkClosed)
        })
    });
    let mut next_seq = 0;
    while let Some(output) = rx.recv().await {
        let (id, duration, bytes) = match output {
            IngestOutput::Init(bytes) => (SegmentId::Init, Duration::ZERO, bytes),
            IngestOutput::Segment(chunk) => {
                next_seq = chunk.seq + 1;
                (SegmentId::Media(chunk.seq), chunk.duration, chunk.bytes)
            }
        };
        node.publish(id, duration, bytes, false).await?;
    }
    let summary = worker.await.context("ingest thread")?;
    let summary = match summary {
        Ok(s) => s,
        Err(IngestError::SinkClosed) => anyhow::bail!("the source node stopped"),
        Err(e) => return Err(e.into()),
    };
    // An empty statement flagged `last` marks the end of the stream.
    node.publish(
        SegmentId::Media(next_seq),
        Duration::ZERO,
        Bytes::new(),
        true,
    )
    .await?;
    info!(
        segments = summary.segments,
        media_s = summary.media_duration.as_secs_f64(),
        wall_s = summary.wall.as_secs_f64(),
        "input ended; still serving"
    );
    Ok(summary)
}

/// How long a node waits to join the overlay ring.
const OVERLAY_JOIN_LIMIT: Duration = Duration::from_secs(15);

/// Starts a viewer of `channel`. The bootstrap peers serve twice: the segment exchange dials
/// them (as partners, if they are in the swarm), and the overlay joins the ring through the
/// first one (any node of the ring will do); from the overlay's directory the viewer learns the
/// channel's members, takes them as partner candidates and registers itself.
pub async fn watch(
    channel: ChannelId,
    bootstrap: Vec<Bootstrap>,
    node: NodeConfig,
    key: Keypair,
) -> anyhow::Result<NodeHandle> {
    let Some(first) = bootstrap.first().copied() else {
        anyhow::bail!("a viewer needs at least one --bootstrap peer");
    };
    let handle = NodeHandle::start_viewer(node, key, channel, bootstrap).await?;
    let node = handle.clone();
    tokio::spawn(async move {
        let overlay = node.overlay().clone();
        // Until the ring is reachable (the bootstrap peer may not be up yet).
        loop {
            match first {
                Bootstrap::Addr(addr) => overlay.join_addr(addr),
                Bootstrap::Peer(p) => overlay.join(tracker_overlay::NodeRef::new(p.id.0, p.addr)),
            }
            if overlay.joined(OVERLAY_JOIN_LIMIT).await {
                break;
            }
            if overlay.status().await.is_none() {
                return; // The node shut down.
            }
            warn!("could not join the overlay ring yet; trying again");
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        match directory::find(&overlay, channel, node.peer_id()).await {
            Ok((record, members)) => {
                info!(channel = %record.record.name, members = members.len(), "channel found in the overlay");
                node.add_candidates(members);
            }
            Err(e) => warn!(error = %e, "channel not in the overlay's directory yet"),
        }
        let (me, addr, nat) = (node.peer_id(), node.advertised(), node.nat().clone());
        let on_members: Box<dyn Fn(Vec<PeerAddr>) + Send + Sync> =
            Box::new(move |members| node.add_candidates(members));
        directory::keep_registered(
            overlay,
            channel,
            None,
            me,
            addr,
            Some(nat),
            Some(on_members),
        )
        .await;
    });
    Ok(handle)
}

/// The demo swarm: a source on the built-in test pattern and `viewers` viewers, all on
/// loopback in this process.
pub struct Demo {
    /// The broadcast.
    pub broadcast: Broadcast,
    /// The viewers' nodes.
    pub viewers: Vec<NodeHandle>,
    /// Bytes from peers and from the source as of each status line in the last minute, for
    /// the offload over that minute (the total includes the start, when every viewer asks the
    /// source: it approaches the swarm's steady offload only slowly).
    history: Mutex<VecDeque<(Instant, u64, u64)>>,
}

/// The window of the status line's recent offload.
const RECENT: Duration = Duration::from_secs(60);

/// The demo broadcaster's uplink.
const DEMO_SOURCE_UPLINK_BPS: f64 = 10e6;

impl Demo {
    /// Starts the demo swarm.
    pub async fn start(
        viewers: usize,
        web_root: PathBuf,
        first_http_port: u16,
    ) -> anyhow::Result<Self> {
        let node = |http_port: u16| NodeConfig {
            http: Some(([127, 0, 0, 1], http_port).into()),
            web_root: web_root.clone(),
            ..NodeConfig::default()
        };
        // On loopback every uplink measures in Gbit/s; the broadcaster is given what a home
        // broadcaster's uplink carries (10 Mbit/s, about two and a half demo streams), so it
        // feeds two viewers and the others get the stream from viewers, as on the Internet.
        let mut source_node = node(port_after(first_http_port, 0));
        source_node.exchange.upload_guess_bps = DEMO_SOURCE_UPLINK_BPS;
        source_node.exchange.upload_limit_bps = Some(DEMO_SOURCE_UPLINK_BPS);
        let options = BroadcastOptions {
            input: Input::TestPattern,
            vod: false,
            name: "Selfcast demo (test pattern)".into(),
            segment_target: Duration::from_secs(1),
            progress: false,
            node: source_node,
        };
        let broadcast = Broadcast::start(options, Keypair::generate()).await?;
        let bootstrap = vec![Bootstrap::Peer(broadcast.node().peer_addr())];
        let mut nodes = Vec::new();
        for i in 0..viewers {
            let config = node(port_after(first_http_port, i + 1));
            nodes.push(
                watch(
                    broadcast.channel(),
                    bootstrap.clone(),
                    config,
                    Keypair::generate(),
                )
                .await?,
            );
        }
        Ok(Self {
            broadcast,
            viewers: nodes,
            history: Default::default(),
        })
    }

    /// One line on the swarm's health: segments, P2P share (source offload) and rejects.
    pub fn status_line(&self) -> String {
        let (mut from_source, mut from_peers, mut stored, mut rejected) = (0u64, 0u64, 0u64, 0u64);
        let mut continuity = Vec::new();
        for v in &self.viewers {
            let s = v.status();
            continuity.extend(s["qos"]["continuity"].as_f64());
            from_source += s["bytes_from_source"].as_u64().unwrap_or(0);
            from_peers += s["bytes_from_peers"].as_u64().unwrap_or(0);
            stored += s["segments_stored"].as_u64().unwrap_or(0);
            rejected += s["segments_rejected"].as_u64().unwrap_or(0);
        }
        let share = |peers: u64, source: u64| {
            let total = peers + source;
            (total > 0).then(|| 100.0 * peers as f64 / total as f64)
        };
        let offload = share(from_peers, from_source).unwrap_or(0.0);
        let now = Instant::now();
        let recent = match self.history.lock() {
            Ok(mut history) => {
                history.push_back((now, from_peers, from_source));
                while history
                    .get(1)
                    .is_some_and(|(t, ..)| now.duration_since(*t) >= RECENT)
                {
                    history.pop_front();
                }
                history
                    .front()
                    .filter(|(t, ..)| now.duration_since(*t) >= RECENT)
                    .and_then(|(_, p, s)| {
                        share(
                            from_peers.saturating_sub(*p),
                            from_source.saturating_sub(*s),
                        )
                    })
            }
            Err(_) => None,
        };
        let recent = recent.map_or(String::new(), |r| format!(", last minute {r:.0}%"));
        let newest = self.broadcast.node().status()["newest_segment"].as_u64();
        let continuity = if continuity.is_empty() {
            "-".to_owned()
        } else {
            format!(
                "{:.1}%",
                100.0 * continuity.iter().sum::<f64>() / continuity.len() as f64
            )
        };
        format!(
            "live edge #{} | viewers {} | continuity {continuity} | segments received {stored} | from peers {:.1} MB, from source {:.1} MB (source offload {offload:.0}%{recent}) | rejected {rejected}",
            newest.map_or("-".into(), |n| n.to_string()),
            self.viewers.len(),
            from_peers as f64 / 1e6,
            from_source as f64 / 1e6,
        )
    }

    /// Stops every node.
    pub async fn shutdown(self) {
        let mut stopping = tokio::task::JoinSet::new();
        for v in self.viewers {
            stopping.spawn(async move { v.shutdown().await });
        }
        stopping.spawn(self.broadcast.shutdown());
        while stopping.join_next().await.is_some() {}
    }
}

/// Port `first + i`, or 0 (any free port) when `first` is 0.
fn port_after(first: u16, i: usize) -> u16 {
    if first == 0 {
        0
    } else {
        first.saturating_add(i as u16)
    }
}
