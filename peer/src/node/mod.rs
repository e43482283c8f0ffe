//! The real node: drives one [`Exchange`] with tokio and quinn, and feeds the gateway's store.
//!
//! ```text
//!   quinn Endpoint ──accept/dial──▶ Connections: one connection per peer, shared with the overlay
//!        │                              │ control stream → FrameDecoder → Msg::Frame
//!        │                              │ uni streams    → segment reader → Msg::Segment
//!        │                              │                  (or the overlay's reader, by tag)
//!        ▼                              ▼
//!   actor task: owns the Exchange, the connection table and the timer
//!        │ Output::Send        → the connection's writer task (control stream)
//!        │ Output::SendSegment → a task writing one uni stream, prioritised by deadline
//!        │ Output::ForwardSegment → the same, fed by a segment stream still arriving (Relay)
//!        │ Output::Dial/Close  → quinn
//!        ▼ Output::Event       → gateway::MediaStore (verified segments only) + status
//! ```
//!
//! All protocol decisions are the exchange's; this module only moves bytes and time.

mod conns;
pub mod origin;
pub mod tls;

pub(crate) use conns::Connections;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use gateway::{MediaStore, StreamMode};
use quinn::{Connection, Endpoint, RecvStream, SendStream, VarInt};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tracing::{debug, info, warn, Instrument};

use crate::exchange::{
    CloseReason, Event, Exchange, ExchangeConfig, Hint, Input, Output, PublishError,
    MAX_HELD_RANGES,
};
use crate::identity::{ChannelId, Keypair, PeerId};
use crate::nat::driver::{Nat, NatConfig};
use crate::overlay_net::OverlayHandle;
use crate::qos::ViewerQos;
use crate::segment::{SegmentId, SignedChannel, StreamKind};
use crate::wire::{Frame, FrameDecoder, FrameError, Part, PeerAddr, SegmentHeader};
use tracker_overlay::coordinator::{self, QosReport, Role};
use tracker_overlay::swarm::PeerHint;

/// Close codes of our QUIC connections (application error codes).
mod close_code {
    pub const PROTOCOL: u32 = 0x02;
    pub const SLOW: u32 = 0x03;
    pub const SHUTDOWN: u32 = 0x04;
    /// A forwarded segment stream whose own arrival broke off or failed verification.
    pub const RELAY_BROKEN: u32 = 0x05;
}

/// The largest segment stream accepted before its header is checked against a statement.
const MAX_SEGMENT_HEADER: usize = 1024;
/// A live player's target latency in segments (hls.js's default `liveSyncDurationCount`).
const LIVE_TARGET_SEGMENTS: u32 = 3;
/// First wait before bootstrap peers are dialled again, and the longest.
const FIRST_RETRY: Duration = Duration::from_secs(2);
const MAX_RETRY: Duration = Duration::from_secs(30);
/// Control frames queued for one peer before it is considered too slow and dropped.
const CONTROL_QUEUE: usize = 4096;

/// How to run a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The UDP address to listen on.
    pub listen: SocketAddr,
    /// The address other peers should dial, when it differs from what `listen` says (for a
    /// wildcard bind: the interface that routes toward the bootstrap peer).
    pub advertise: Option<SocketAddr>,
    /// The exchange's tuning.
    pub exchange: ExchangeConfig,
    /// Where the gateway listens; `None` runs no gateway.
    pub http: Option<SocketAddr>,
    /// The web-player directory the gateway serves pages from.
    pub web_root: PathBuf,
    /// Segments in a live playlist.
    pub playlist_window: usize,
    /// A broadcaster's overlay node to join (any node of the ring); `None` starts a new ring.
    pub overlay_bootstrap: Option<SocketAddr>,
    /// An HTTP origin that holds the stream too: the last resort instead of the broadcaster.
    pub origin: Option<origin::OriginUrl>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise: None,
            exchange: ExchangeConfig::default(),
            http: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            web_root: gateway::default_web_root(),
            playlist_window: 6,
            overlay_bootstrap: None,
            origin: None,
        }
    }
}

/// A peer to contact first: an address, optionally with the id we expect there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bootstrap {
    /// Any peer at this address (its id is learned from its certificate).
    Addr(SocketAddr),
    /// This peer at this address (its certificate must match).
    Peer(PeerAddr),
}

impl FromStr for Bootstrap {
    type Err = String;

    /// `ADDR` or `PEER_ID@ADDR`, where `ADDR` is `ip:port` or `host:port` (resolved now).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('@') {
            Some((id, addr)) => Ok(Self::Peer(PeerAddr {
                id: id.parse().map_err(|e| format!("{e}"))?,
                addr: resolve(addr)?,
            })),
            None => Ok(Self::Addr(resolve(s)?)),
        }
    }
}

/// Resolves `host:port` (or an `ip:port` literal) to its first address.
fn resolve(addr: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let bad =
        |why: String| format!("`{addr}` is not a reachable address like 192.0.2.7:4433 ({why})");
    addr.to_socket_addrs()
        .map_err(|e| bad(e.to_string()))?
        .next()
        .ok_or_else(|| bad("the name has no address".into()))
}

/// Why a node could not start or act.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// Binding a socket failed.
    #[error("cannot listen on {addr} for {what}")]
    Bind {
        /// What the socket is for, and the option that sets its address.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// TLS setup failed.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The node has stopped.
    #[error("the node has stopped")]
    Stopped,
    /// Publishing was refused.
    #[error(transparent)]
    Publish(#[from] PublishError),
}

/// A running node. Dropping it does not stop it; call [`NodeHandle::shutdown`].
#[derive(Clone)]
pub struct NodeHandle {
    tx: mpsc::UnboundedSender<Msg>,
    store: Arc<MediaStore>,
    status: Arc<Mutex<serde_json::Value>>,
    peer_id: PeerId,
    channel: ChannelId,
    local_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    overlay: OverlayHandle,
    net: Connections,
    nat: Nat,
    advertise: SocketAddr,
    tasks: Arc<tokio::sync::Mutex<JoinSet<()>>>,
}

impl NodeHandle {
    /// The node's overlay node (ring, store, swarm metadata), on the same QUIC endpoint.
    pub fn overlay(&self) -> &OverlayHandle {
        &self.overlay
    }

    /// How many QUIC connections are open to each peer (the segment exchange and the overlay
    /// share one per peer).
    pub fn connections(&self) -> Vec<(PeerId, usize)> {
        self.net.open()
    }

    /// The node's NAT traversal (its class, its record, the paths it chose).
    pub fn nat(&self) -> &Nat {
        &self.nat
    }

    /// The address other peers should dial: `--advertise`, else the reflexive address behind
    /// a NAT, else our own routable address.
    pub fn advertised(&self) -> SocketAddr {
        self.advertise
    }

    /// Peers to try as partners (e.g. the channel's members, found through the overlay).
    pub fn add_candidates(&self, peers: Vec<PeerAddr>) {
        let _ = self.tx.send(Msg::AddCandidates(peers));
    }

    /// What this node would report to the channel's coordinator now (`None` once stopped, or
    /// while a viewer has not verified the channel yet).
    pub async fn qos_report(&self) -> Option<QosReport> {
        self.plan_port().qos_report().await
    }

    /// Hands the exchange this node's entry of the optimizer's plan of `epoch`; `addrs` are
    /// the addresses known for the peers it names (the directory's member records), to which
    /// the exchange adds its partners' own.
    pub fn apply_plan(&self, epoch: u64, entry: PeerHint, addrs: Vec<PeerAddr>) {
        self.plan_port().apply_plan(epoch, entry, addrs);
    }

    fn plan_port(&self) -> PlanPort {
        PlanPort {
            tx: self.tx.clone(),
        }
    }

    /// The epoch of the plan entry the exchange follows, if any.
    pub fn plan_epoch(&self) -> Option<u64> {
        self.status()["plan"]["epoch"].as_u64()
    }

    /// Starts the broadcaster's node: it serves the channel described by `record`, signed by
    /// `key` (which is also the node's TLS identity, so viewers recognise the source).
    pub async fn start_source(
        config: NodeConfig,
        key: Keypair,
        record: SignedChannel,
    ) -> Result<Self, NodeError> {
        let kind = record.record.kind;
        let channel = record.record.channel_id();
        start(config, key, channel, Some(record), Some(kind), Vec::new()).await
    }

    /// Starts a viewer's node for `channel`, contacting `bootstrap` first.
    pub async fn start_viewer(
        config: NodeConfig,
        key: Keypair,
        channel: ChannelId,
        bootstrap: Vec<Bootstrap>,
    ) -> Result<Self, NodeError> {
        start(config, key, channel, None, None, bootstrap).await
    }

    /// Publishes a segment (broadcaster only).
    pub async fn publish(
        &self,
        id: SegmentId,
        duration: Duration,
        bytes: Bytes,
        last: bool,
    ) -> Result<(), NodeError> {
        let (reply, rx) = oneshot::channel();
        let created_unix_ms = unix_ms();
        self.tx
            .send(Msg::Publish {
                id,
                duration,
                created_unix_ms,
                bytes,
                last,
                reply,
            })
            .map_err(|_| NodeError::Stopped)?;
        rx.await
            .map_err(|_| NodeError::Stopped)?
            .map_err(NodeError::from)
    }

    /// The node's verified segment store (what its gateway serves).
    pub fn store(&self) -> &Arc<MediaStore> {
        &self.store
    }

    /// A JSON snapshot of the node's state and QoS counters.
    pub fn status(&self) -> serde_json::Value {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The channel.
    pub fn channel(&self) -> ChannelId {
        self.channel
    }

    /// The UDP address the node listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address other peers can use to reach this node, with its id.
    pub fn peer_addr(&self) -> PeerAddr {
        PeerAddr {
            id: self.peer_id,
            addr: self.local_addr,
        }
    }

    /// Where the gateway listens, if it runs.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Stops the node: closes its connections and its gateway, and waits for its tasks.
    pub async fn shutdown(&self) {
        // A viewer of a film takes its entry out of the holder index first (for at most a
        // second; what is not done lapses by itself).
        if let Some(ranges) = self
            .plan_port()
            .held_ranges()
            .await
            .filter(|r| !r.is_empty())
        {
            let withdraw = crate::directory::withdraw_holding(
                &self.overlay,
                self.channel,
                self.peer_id,
                &ranges,
            );
            let _ = tokio::time::timeout(Duration::from_secs(1), withdraw).await;
        }
        // The overlay hands its range over first (it waits for its successor, up to a few
        // seconds), while the connections are still up.
        self.overlay.leave();
        let deadline = Instant::now() + Duration::from_secs(4);
        while Instant::now() < deadline && self.overlay.status().await.is_some() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = self.tx.send(Msg::Shutdown);
        let mut tasks = self.tasks.lock().await;
        while tasks.join_next().await.is_some() {}
    }
}

/// What the optimizer loop needs of a node: its QoS report, a way to hand it its plan entry.
/// Unlike a [`NodeHandle`] it holds none of the node's sockets, so a node that stops frees
/// its port at once.
pub(crate) struct PlanPort {
    tx: mpsc::UnboundedSender<Msg>,
}

impl PlanPort {
    /// See [`NodeHandle::qos_report`].
    pub(crate) async fn qos_report(&self) -> Option<QosReport> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Msg::QosReport(reply)).ok()?;
        rx.await.ok().flatten()
    }

    /// See [`NodeHandle::apply_plan`].
    pub(crate) fn apply_plan(&self, epoch: u64, entry: PeerHint, addrs: Vec<PeerAddr>) {
        let _ = self.tx.send(Msg::Plan {
            epoch,
            entry,
            addrs,
        });
    }

    /// On demand, the segment ranges the node holds (for the holder index); `None` once
    /// stopped.
    pub(crate) async fn held_ranges(&self) -> Option<Vec<(u64, u64)>> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Msg::HeldRanges(reply)).ok()?;
        rx.await.ok()
    }

    /// Whether the node stopped.
    pub(crate) fn stopped(&self) -> bool {
        self.tx.is_closed()
    }

    /// Waits until the node stops.
    pub(crate) async fn closed(&self) {
        self.tx.closed().await;
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What the connection tasks and the handle tell the actor.
enum Msg {
    /// More peers to try (found through the overlay).
    AddCandidates(Vec<PeerAddr>),
    /// Build a QoS report for the channel's coordinator.
    QosReport(oneshot::Sender<Option<QosReport>>),
    /// On demand: the segment ranges this node holds, for the holder index.
    HeldRanges(oneshot::Sender<Vec<(u64, u64)>>),
    /// The holder index's answer to [`Output::LookupHolders`].
    Holders {
        seq: u64,
        peers: Vec<PeerAddr>,
    },
    /// This node's entry of a stored plan.
    Plan {
        epoch: u64,
        entry: PeerHint,
        addrs: Vec<PeerAddr>,
    },
    Connected {
        link: Link,
        dialled_by: PeerId,
    },
    Frame {
        peer: PeerId,
        gen: u64,
        frame: Frame,
    },
    ConnClosed {
        peer: PeerId,
        gen: u64,
    },
    DialFailed {
        peer: Option<PeerId>,
    },
    SegmentStart {
        peer: PeerId,
        id: SegmentId,
        part: Part,
        reply: oneshot::Sender<Option<(usize, Arc<Relay>)>>,
    },
    Segment {
        peer: PeerId,
        id: SegmentId,
        part: Part,
        bytes: Bytes,
    },
    SegmentSent {
        peer: PeerId,
        id: SegmentId,
    },
    SegmentFailed {
        peer: PeerId,
        id: SegmentId,
    },
    Origin {
        id: SegmentId,
        result: Result<Bytes, origin::FetchError>,
    },
    Publish {
        id: SegmentId,
        duration: Duration,
        created_unix_ms: u64,
        bytes: Bytes,
        last: bool,
        reply: oneshot::Sender<Result<(), PublishError>>,
    },
    Shutdown,
}

/// An authenticated connection with its control stream, as dialling or accepting made it.
struct Link {
    peer: PeerId,
    conn: Connection,
    send: SendStream,
    recv: RecvStream,
}

struct Conn {
    conn: Connection,
    control: mpsc::Sender<Bytes>,
    dialled_by: PeerId,
    gen: u64,
}

/// What the UDP socket is for, in errors.
const UDP_PURPOSE: &str = "peers (UDP, --listen)";
/// What the TCP socket is for, in errors.
const HTTP_PURPOSE: &str = "the player gateway (TCP, --http)";

async fn start(
    config: NodeConfig,
    key: Keypair,
    channel: ChannelId,
    record: Option<SignedChannel>,
    kind: Option<StreamKind>,
    bootstrap: Vec<Bootstrap>,
) -> Result<NodeHandle, NodeError> {
    let server = tls::server_config(&key)?;
    let is_source = record.is_some();
    // One UDP socket for QUIC, STUN and relaying; its bootstrap peers are its STUN servers.
    let stun = config
        .overlay_bootstrap
        .into_iter()
        .chain(bootstrap.iter().map(|b| match b {
            Bootstrap::Peer(p) => p.addr,
            Bootstrap::Addr(a) => *a,
        }));
    let nat_config = NatConfig {
        stun: stun.collect(),
        ..NatConfig::default()
    };
    let (mut endpoint, nat) = crate::nat::driver::endpoint(config.listen, server, &key, nat_config)
        .await
        .map_err(|source| NodeError::Bind {
            what: UDP_PURPOSE,
            addr: config.listen,
            source,
        })?;
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_uni_streams(VarInt::from_u32(256))
        .keep_alive_interval(Some(Duration::from_secs(2)))
        .max_idle_timeout(Some(VarInt::from_u32(10_000).into()));
    let transport = Arc::new(transport);
    endpoint.set_default_client_config(with_transport(tls::client_config(&key, None)?, &transport));
    let local_addr = endpoint.local_addr().map_err(|source| NodeError::Bind {
        what: UDP_PURPOSE,
        addr: config.listen,
        source,
    })?;
    let toward = config.overlay_bootstrap.or_else(|| {
        bootstrap.first().map(|b| match b {
            Bootstrap::Peer(p) => p.addr,
            Bootstrap::Addr(a) => *a,
        })
    });
    let advertise = config
        .advertise
        .or_else(|| nat.advertise())
        .unwrap_or_else(|| routable_addr(local_addr, toward));
    let peer_id = key.peer_id();
    let now = Instant::now();
    let mut exchange = match record {
        Some(record) => Exchange::source(
            now,
            config.exchange.clone(),
            key.clone(),
            record,
            Some(advertise),
        ),
        None => Exchange::viewer(
            now,
            ExchangeConfig {
                origin: config.origin.is_some(),
                ..config.exchange.clone()
            },
            peer_id,
            channel,
            Some(advertise),
        ),
    };

    let mode = match kind {
        Some(StreamKind::Vod) => StreamMode::Vod,
        _ => StreamMode::Live {
            window: config.playlist_window,
        },
    };
    let store = MediaStore::new(mode);
    let status = Arc::new(Mutex::new(json!({})));
    let (tx, rx) = mpsc::unbounded_channel();
    let mut tasks = JoinSet::new();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

    let http_addr = match config.http {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| NodeError::Bind {
                    what: HTTP_PURPOSE,
                    addr,
                    source,
                })?;
            let http_addr = listener.local_addr().map_err(|source| NodeError::Bind {
                what: HTTP_PURPOSE,
                addr,
                source,
            })?;
            let status_fn: gateway::StatusFn = {
                let status = status.clone();
                Arc::new(move || status.lock().map(|s| s.clone()).unwrap_or_default())
            };
            let gateway_config = gateway::GatewayConfig {
                web_root: config.web_root.clone(),
                segment_wait: Duration::from_secs(10),
            };
            let router = gateway::router(gateway::AppState::new(
                store.clone(),
                gateway_config,
                status_fn,
            ));
            let mut stop = stop_rx.clone();
            tasks.spawn(async move {
                let shutdown = async move {
                    let _ = stop.wait_for(|s| *s).await;
                };
                if let Err(e) = gateway::serve(listener, router, shutdown).await {
                    warn!(error = %e, "gateway stopped");
                }
            });
            Some(http_addr)
        }
        None => None,
    };

    let conns = Connections::new(endpoint.clone(), key.clone(), transport, Some(tx.clone()));
    let mut candidates = Vec::new();
    for b in &bootstrap {
        match b {
            Bootstrap::Peer(p) => candidates.push(*p),
            Bootstrap::Addr(addr) => spawn_dial(&conns, None, *addr, tx.clone(), peer_id),
        }
    }
    exchange.add_candidates(now, candidates);

    let overlay_config = tracker_overlay::Config {
        seed: rand::random(),
        ..tracker_overlay::Config::default()
    };
    let overlay = crate::overlay_net::spawn_on(conns.clone(), &key, advertise, overlay_config);
    conns.set_nat(nat.clone());
    nat.attach_overlay(overlay.clone(), channel);
    let span = tracing::info_span!("node", peer = %peer_id.short());
    tasks.spawn(
        conns
            .clone()
            .accept_loop(stop_rx.clone())
            .instrument(span.clone()),
    );
    let actor = Actor {
        exchange,
        endpoint,
        net: conns.clone(),
        nat: nat.clone(),
        conns: HashMap::new(),
        next_gen: 0,
        tx: tx.clone(),
        store: store.clone(),
        status: status.clone(),
        started: now,
        stop: stop_tx,
        session: None,
        qos: NodeQos::default(),
        playlist_window: config.playlist_window,
        bootstrap: bootstrap
            .iter()
            .filter_map(|b| match b {
                Bootstrap::Addr(addr) => Some(*addr),
                Bootstrap::Peer(_) => None,
            })
            .collect(),
        relays: HashMap::new(),
        ended_streams: Vec::new(),
        origin: config.origin.clone().map(origin::Origin::new),
        overlay: overlay.clone(),
        channel,
        retry_at: now + FIRST_RETRY,
        retry_backoff: FIRST_RETRY,
    };
    let span_plan = span.clone();
    tasks.spawn(actor.run(rx).instrument(span));
    info!(peer = %peer_id, %local_addr, http = ?http_addr, "node started");
    let handle = NodeHandle {
        tx,
        store,
        status,
        peer_id,
        channel,
        local_addr,
        http_addr,
        overlay,
        net: conns,
        nat,
        advertise,
        tasks: Arc::new(tokio::sync::Mutex::new(tasks)),
    };
    // Every node of a channel reports to the optimizer's coordinator and follows its plan
    // (ends with the node).
    tokio::spawn(
        crate::directory::keep_planned(
            handle.overlay.clone(),
            channel,
            peer_id,
            handle.plan_port(),
        )
        .instrument(span_plan.clone()),
    );
    // A viewer of a film keeps its entry in the channel's holder index (ends with the node;
    // the source needs none: everyone finds it anyway).
    if !is_source {
        handle.tasks.lock().await.spawn(
            crate::directory::keep_holding(
                handle.overlay.clone(),
                channel,
                peer_id,
                advertise,
                handle.plan_port(),
            )
            .instrument(span_plan),
        );
    }
    Ok(handle)
}

/// The address others can dial us at when we were told none: `local` itself unless it is a
/// wildcard, else the address of the interface the system would use toward `toward` (or
/// toward the Internet), found by connecting an unbound UDP socket, which sends nothing.
fn routable_addr(local: SocketAddr, toward: Option<SocketAddr>) -> SocketAddr {
    if !local.ip().is_unspecified() {
        return local;
    }
    let probe = |target: SocketAddr| {
        let any = SocketAddr::new(local.ip(), 0);
        let socket = std::net::UdpSocket::bind(any).ok()?;
        socket.connect(target).ok()?;
        socket.local_addr().ok().map(|a| a.ip())
    };
    // A documentation address (RFC 5737 / 3849): routed like any public one, never reached.
    let internet = if local.is_ipv4() {
        SocketAddr::from(([192, 0, 2, 1], 9))
    } else {
        SocketAddr::from(([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1], 9))
    };
    let ip = toward
        .and_then(probe)
        .or_else(|| probe(internet))
        .filter(|ip| !ip.is_unspecified())
        .unwrap_or(if local.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    SocketAddr::new(ip, local.port())
}

fn with_transport(
    mut c: quinn::ClientConfig,
    t: &Arc<quinn::TransportConfig>,
) -> quinn::ClientConfig {
    c.transport_config(t.clone());
    c
}

struct Actor {
    exchange: Exchange,
    endpoint: Endpoint,
    /// Connections to peers (shared with the overlay).
    net: Connections,
    nat: Nat,
    conns: HashMap<PeerId, Conn>,
    next_gen: u64,
    tx: mpsc::UnboundedSender<Msg>,
    store: Arc<MediaStore>,
    status: Arc<Mutex<serde_json::Value>>,
    started: Instant,
    stop: tokio::sync::watch::Sender<bool>,
    /// The channel session being received (the record's start time), once known.
    session: Option<u64>,
    /// This viewer's QoS, by the same definitions as `sim`.
    qos: NodeQos,
    playlist_window: usize,
    /// Segment streams arriving, by sender and segment, for forwards to read from.
    relays: HashMap<(PeerId, SegmentId), Arc<Relay>>,
    /// Segment streams that ended since the last `drain`: their relays end with it.
    ended_streams: Vec<(PeerId, SegmentId)>,
    /// The HTTP origin, if one was given.
    origin: Option<origin::Origin>,
    /// The overlay node, for look-ups in the channel's holder index.
    overlay: OverlayHandle,
    channel: ChannelId,
    /// Bootstrap addresses given without a peer id; dialled again while we have no partner.
    bootstrap: Vec<SocketAddr>,
    retry_at: Instant,
    retry_backoff: Duration,
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        self.drain();
        let mut playhead = self.store.playhead();
        loop {
            let deadline = self.exchange.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let retry_at = (!self.bootstrap.is_empty()).then_some(self.retry_at);
            let retry = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(Msg::Shutdown) | None => break,
                    Some(msg) => self.on_msg(msg),
                },
                () = sleep => self.exchange.handle_timeout(Instant::now()),
                () = retry => self.retry_bootstrap(),
                Ok(()) = playhead.changed() => {
                    let seq = *playhead.borrow_and_update();
                    if let Some(seq) = seq {
                        self.exchange.set_playhead(Instant::now(), seq);
                    }
                }
            }
            self.drain();
        }
        for (_, c) in self.conns.drain() {
            c.conn
                .close(VarInt::from_u32(close_code::SHUTDOWN), b"shutdown");
        }
        self.endpoint
            .close(VarInt::from_u32(close_code::SHUTDOWN), b"shutdown");
        let _ = self.stop.send(true);
        // Give close frames a moment to leave.
        let _ = tokio::time::timeout(Duration::from_millis(500), self.endpoint.wait_idle()).await;
    }

    /// Dials the address-only bootstrap peers again while we have no partner, backing off.
    fn retry_bootstrap(&mut self) {
        if self.conns.is_empty() {
            info!(
                again_in_s = self.retry_backoff.as_secs(),
                "no partner yet; dialling the bootstrap peers again"
            );
            let me = self.exchange.me();
            for addr in self.bootstrap.clone() {
                spawn_dial(&self.net, None, addr, self.tx.clone(), me);
            }
            self.retry_backoff = (self.retry_backoff * 2).min(MAX_RETRY);
        } else {
            self.retry_backoff = FIRST_RETRY;
        }
        self.retry_at = Instant::now() + self.retry_backoff;
    }

    fn on_msg(&mut self, msg: Msg) {
        let now = Instant::now();
        match msg {
            Msg::Connected { link, dialled_by } => self.on_connected(now, link, dialled_by),
            Msg::Frame {
                peer,
                gen,
                mut frame,
            } => {
                let Some(c) = self.conns.get(&peer).filter(|c| c.gen == gen) else {
                    return;
                };
                if let Frame::Hello {
                    listen: Some(listen),
                    ..
                } = &mut frame
                {
                    // A peer bound to a wildcard address tells us its port; the IP is the one
                    // we see it at.
                    if listen.ip().is_unspecified() {
                        listen.set_ip(c.conn.remote_address().ip());
                    }
                }
                self.exchange
                    .handle_input(now, Input::Frame { peer, frame });
            }
            Msg::ConnClosed { peer, gen } => {
                if self.conns.get(&peer).is_some_and(|c| c.gen == gen) {
                    self.conns.remove(&peer);
                    self.exchange
                        .handle_input(now, Input::Disconnected { peer });
                }
            }
            Msg::DialFailed { peer } => {
                if let Some(peer) = peer.filter(|p| !self.conns.contains_key(p)) {
                    self.exchange
                        .handle_input(now, Input::Disconnected { peer });
                }
            }
            Msg::SegmentStart {
                peer,
                id,
                part,
                reply,
            } => {
                let Some(limit) = self.exchange.expected_len(&peer, id, part) else {
                    let _ = reply.send(None);
                    return;
                };
                let relay = Arc::new(Relay::default());
                if reply.send(Some((limit, relay.clone()))).is_ok() && part.is_whole() {
                    // Only whole segments are forwarded as they arrive.
                    self.relays.insert((peer, id), relay);
                    self.exchange
                        .handle_input(now, Input::SegmentArriving { peer, id });
                }
            }
            Msg::Segment {
                peer,
                id,
                part,
                bytes,
            } => {
                if part.is_whole() {
                    self.ended_streams.push((peer, id));
                }
                self.exchange.handle_input(
                    now,
                    Input::Segment {
                        peer,
                        id,
                        part,
                        bytes,
                    },
                );
            }
            Msg::SegmentSent { peer, id } => {
                self.exchange
                    .handle_input(now, Input::SegmentSent { peer, id });
            }
            Msg::Origin { id, result } => {
                let input = match result {
                    Ok(bytes) => Input::OriginSegment { id, bytes },
                    Err(error) => {
                        warn!(%id, %error, "origin fetch failed");
                        Input::OriginFailed { id }
                    }
                };
                self.exchange.handle_input(now, input);
            }
            Msg::SegmentFailed { peer, id } => {
                self.ended_streams.push((peer, id));
                self.exchange
                    .handle_input(now, Input::SegmentFailed { peer, id });
            }
            Msg::Publish {
                id,
                duration,
                created_unix_ms,
                bytes,
                last,
                reply,
            } => {
                let result = self
                    .exchange
                    .publish(now, id, duration, created_unix_ms, bytes, last);
                let _ = reply.send(result);
            }
            Msg::AddCandidates(peers) => self.exchange.add_candidates(now, peers),
            Msg::QosReport(reply) => {
                let _ = reply.send(self.qos_report(now));
            }
            Msg::Plan {
                epoch,
                entry,
                addrs,
            } => self.apply_plan(now, epoch, &entry, &addrs),
            Msg::HeldRanges(reply) => {
                let _ = reply.send(self.exchange.held_ranges(MAX_HELD_RANGES));
            }
            Msg::Holders { seq, peers } => self.exchange.add_holders(now, seq, peers),
            Msg::Shutdown => {}
        }
    }

    fn on_connected(&mut self, now: Instant, link: Link, dialled_by: PeerId) {
        let Link {
            peer,
            conn,
            send,
            recv,
        } = link;
        let me = self.exchange.me();
        if let Some(existing) = self.conns.get(&peer) {
            // Both sides opened a control stream at once. Both keep the one opened by the
            // smaller id, so they agree without talking; the other one just ends (the
            // connection under it stays, the overlay may be using it).
            let keep_new = dialled_by == me.min(peer) && existing.dialled_by != dialled_by;
            if !keep_new {
                debug!(peer = %peer.short(), "duplicate control stream dropped");
                return;
            }
            // Dropping the old link finishes its control stream.
            self.conns.remove(&peer);
            self.exchange
                .handle_input(now, Input::Disconnected { peer });
        }
        self.next_gen += 1;
        let gen = self.next_gen;
        let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
        tokio::spawn(write_control(send, control_rx));
        tokio::spawn(read_connection(
            conn.clone(),
            recv,
            peer,
            gen,
            self.tx.clone(),
        ));
        self.conns.insert(
            peer,
            Conn {
                conn,
                control,
                dialled_by,
                gen,
            },
        );
        debug!(peer = %peer.short(), gen, "connected");
        let relayed = self
            .conns
            .get(&peer)
            .is_some_and(|c| self.nat.is_relayed(c.conn.remote_address()));
        self.exchange.handle_input(now, Input::Connected { peer });
        self.exchange.set_relayed(peer, relayed);
    }

    /// Carries out everything the exchange asked for.
    fn drain(&mut self) {
        while let Some(output) = self.exchange.poll_output() {
            match output {
                Output::Send { to, frame } => {
                    let Some(c) = self.conns.get(&to) else {
                        continue;
                    };
                    if c.control.try_send(frame.encode()).is_err() {
                        warn!(peer = %to.short(), "peer does not read its control stream; closing");
                        c.conn
                            .close(VarInt::from_u32(close_code::SLOW), b"too slow");
                    }
                }
                Output::SendSegment {
                    to,
                    id,
                    part,
                    bytes,
                    pace_kbps,
                } => {
                    let pace = pace_kbps.map(|k| f64::from(k.max(1)) * 1000.0);
                    let header = SegmentHeader { id, part };
                    self.upload(to, id, |conn| send_segment(conn, header, bytes, pace));
                }
                Output::ForwardSegment { to, id, from } => {
                    match self.relays.get(&(from, id)).cloned() {
                        Some(relay) => self.upload(to, id, |conn| forward_segment(conn, id, relay)),
                        None => self
                            .exchange
                            .handle_input(Instant::now(), Input::SegmentSent { peer: to, id }),
                    }
                }
                Output::FetchOrigin { id } => {
                    let (Some(origin), Some(limit)) =
                        (self.origin.clone(), self.exchange.origin_len(id))
                    else {
                        let now = Instant::now();
                        self.exchange.handle_input(now, Input::OriginFailed { id });
                        continue;
                    };
                    let tx = self.tx.clone();
                    tokio::spawn(async move {
                        let result = origin.fetch(id, limit).await;
                        let _ = tx.send(Msg::Origin { id, result });
                    });
                }
                Output::LookupHolders { seq } => {
                    let (overlay, channel, tx) =
                        (self.overlay.clone(), self.channel, self.tx.clone());
                    let me = self.exchange.me();
                    tokio::spawn(async move {
                        match crate::directory::find_holders(&overlay, channel, seq, me).await {
                            Ok(peers) if !peers.is_empty() => {
                                let _ = tx.send(Msg::Holders { seq, peers });
                            }
                            Ok(_) => {}
                            Err(e) => debug!(seq, error = %e, "holder index not read"),
                        }
                    });
                }
                Output::EndForwards { from, id, verified } => {
                    if let Some(relay) = self.relays.remove(&(from, id)) {
                        relay.end(verified);
                    }
                }
                Output::Dial(target) => {
                    let me = self.exchange.me();
                    spawn_dial(&self.net, Some(target.id), target.addr, self.tx.clone(), me);
                }
                Output::Close { peer, reason } => {
                    if matches!(
                        reason,
                        CloseReason::Full | CloseReason::Exploring | CloseReason::Idle
                    ) {
                        // Only the segment link ends: its control stream finishes after the
                        // frames already queued (the peers to try); the connection stays for
                        // the overlay.
                        debug!(peer = %peer.short(), reason = reason.as_str(), "ending the segment link");
                        self.conns.remove(&peer);
                        continue;
                    }
                    let Some(c) = self.conns.get(&peer) else {
                        continue;
                    };
                    warn!(peer = %peer.short(), reason = reason.as_str(), "closing connection");
                    // Let the frames already queued leave first.
                    let conn = c.conn.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        conn.close(
                            VarInt::from_u32(close_code::PROTOCOL),
                            reason.as_str().as_bytes(),
                        );
                    });
                }
                Output::Event(event) => self.on_event(event),
            }
        }
        // A stream the exchange did not vouch for (it was a duplicate, or not forwarded):
        // nothing of it is passed on complete.
        for key in self.ended_streams.drain(..) {
            if let Some(relay) = self.relays.remove(&key) {
                relay.end(false);
            }
        }
        self.publish_status();
    }

    /// Runs `send` on the connection to `to` in a task of its own and tells the exchange when
    /// it is done (at once when there is no connection: the upload's slot is free again).
    fn upload<F>(&mut self, to: PeerId, id: SegmentId, send: impl FnOnce(Connection) -> F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let Some(c) = self.conns.get(&to) else {
            self.exchange
                .handle_input(Instant::now(), Input::SegmentSent { peer: to, id });
            return;
        };
        let tx = self.tx.clone();
        let task = send(c.conn.clone());
        tokio::spawn(async move {
            task.await;
            let _ = tx.send(Msg::SegmentSent { peer: to, id });
        });
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::ChannelVerified(record) => {
                let r = &record.record;
                let mode = match r.kind {
                    StreamKind::Vod => StreamMode::Vod,
                    StreamKind::Live => StreamMode::Live {
                        window: self.playlist_window,
                    },
                };
                let segment = Duration::from_millis(u64::from(r.segment_target_ms));
                let live_target =
                    (r.kind == StreamKind::Live).then(|| segment * LIVE_TARGET_SEGMENTS);
                self.qos.start(Instant::now(), segment, live_target);
                if self.session.replace(r.started_unix_ms).is_some() {
                    info!(name = %r.name, kind = ?r.kind, "the broadcaster restarted: new session");
                    self.store.reset(mode);
                } else {
                    info!(name = %r.name, kind = ?r.kind, "channel verified");
                    self.store.set_mode(mode);
                }
            }
            Event::Announced { seq, duration } => self.store.declare(seq, duration),
            Event::Stored {
                id,
                meta,
                bytes,
                from,
                origin,
            } => {
                debug!(%id, from = ?from.map(|p| p.short()), origin, len = bytes.len(), "segment stored");
                if from.is_some() || origin {
                    self.qos.on_stored(Instant::now(), id, meta.created_unix_ms);
                }
                match id {
                    SegmentId::Init => self.store.set_init(bytes),
                    SegmentId::Media(seq) => self.store.insert(seq, meta.duration(), bytes),
                }
            }
            Event::Ended { last } => {
                info!(last, "broadcaster marked the end of the stream");
                self.store.end();
                self.qos.ended(last.saturating_add(1));
            }
            Event::Evicted { seq } => self.store.evict_before(seq),
            Event::StatementRejected { peer, id, error } => {
                warn!(peer = %peer.short(), id = ?id, %error, "dropped a statement that failed verification");
            }
            Event::SegmentRejected { peer, id, error } => {
                warn!(peer = %peer.short(), %id, %error, "dropped a segment that failed verification");
            }
        }
    }

    /// What the optimizer needs to know about this peer: measured upload, lag and continuity
    /// as the player sees them, partners, NAT class. There is no network coordinate yet
    /// (no Vivaldi in the node): every peer reports the origin, so RTT plays no part.
    fn qos_report(&mut self, now: Instant) -> Option<QosReport> {
        let source = self.exchange.is_source();
        if !source && self.exchange.record().is_none() {
            return None;
        }
        let bitrate_bps = self.exchange.bitrate_bps().max(1.0) as u64;
        self.qos.advance(now);
        let (lag_ms, continuity) = if source {
            (Some(0.0), 1.0)
        } else {
            // Before anything was due, nothing was missed.
            let continuity = self
                .qos
                .viewer
                .as_ref()
                .and_then(ViewerQos::continuity)
                .unwrap_or(1.0);
            (
                self.qos.median_latency_ms(),
                continuity.clamp(0.0, 1.0) as f32,
            )
        };
        let partners = self
            .exchange
            .partners()
            .map(|p| p.peer.0)
            .take(coordinator::MAX_REPORT_PARTNERS)
            .collect();
        Some(QosReport {
            channel: self.exchange.channel().0,
            role: if source {
                Role::Source { bitrate_bps }
            } else {
                Role::Viewer
            },
            upload_bps: self.exchange.upload_state().0.max(0.0) as u64,
            need_bps: if source { 0 } else { bitrate_bps },
            coord: optimizer::Coord::default(),
            connectivity: self.nat.record().connectivity,
            lag_ms: lag_ms.map(|ms| ms.min(f64::from(u32::MAX)) as u32),
            continuity,
            partners,
        })
    }

    /// Gives the exchange this node's plan entry, with what addresses are known for the
    /// peers it names.
    fn apply_plan(&mut self, now: Instant, epoch: u64, entry: &PeerHint, addrs: &[PeerAddr]) {
        let partners: HashMap<PeerId, SocketAddr> = self
            .exchange
            .partners()
            .filter_map(|p| Some((p.peer, p.listen?)))
            .collect();
        let hint = Hint::from_peer_hint(epoch, entry, |id| {
            addrs
                .iter()
                .find(|a| a.id == *id)
                .map(|a| a.addr)
                .or_else(|| partners.get(id).copied())
        });
        info!(
            epoch,
            tier = hint.tier,
            upstream = hint.upstream.len(),
            "applying the optimizer's plan"
        );
        self.exchange.apply_hint(now, hint);
    }

    fn publish_status(&mut self) {
        self.qos.advance(Instant::now());
        let qos = self.qos.report();
        let stats = self.exchange.stats();
        // The origin, like the broadcaster, is what peers spare (DESIGN.md's source offload).
        let received = stats.bytes_from_source + stats.bytes_from_origin + stats.bytes_from_peers;
        let offload = (received > 0).then(|| stats.bytes_from_peers as f64 / received as f64);
        let partners: Vec<_> = self
            .exchange
            .partners()
            .map(|p| json!({"peer": p.peer.short(), "source": p.is_source, "inflight": p.inflight}))
            .collect();
        let record = self.exchange.record().map(|r| &r.record);
        let (parent, children, depth) = self.exchange.tree();
        let value = json!({
            "peer": self.exchange.me().to_string(),
            "channel": self.exchange.channel().to_string(),
            "role": if self.exchange.is_source() { "source" } else { "viewer" },
            "name": record.map(|r| r.name.clone()),
            "mode": record.map(|r| match r.kind { StreamKind::Live => "live", StreamKind::Vod => "vod" }),
            "uptime_s": self.started.elapsed().as_secs(),
            "newest_segment": self.exchange.newest(),
            "segments_stored": stats.segments_stored,
            "bytes_from_source": stats.bytes_from_source,
            "bytes_from_peers": stats.bytes_from_peers,
            "bytes_from_origin": stats.bytes_from_origin,
            "bytes_uploaded": stats.bytes_uploaded,
            "p2p_share": offload,
            "segments_rejected": stats.segments_rejected,
            "statements_rejected": stats.statements_rejected,
            "requests_retried": stats.requests_retried,
            "segments_forwarded": stats.segments_forwarded,
            "partners": partners,
            "tree": {
                "parent": parent.map(|p| p.short()),
                "children": children,
                "depth": depth,
            },
            "upload_kbps": (self.exchange.upload_state().0 / 1000.0) as u64,
            "plan": self.exchange.hint().map(|h| json!({
                "epoch": h.epoch,
                "tier": h.tier,
                "parent_hinted": self.exchange.follows_hint(),
            })),
            "connections": self.net.open().iter().map(|(_, n)| n).sum::<usize>(),
            "nat": self.nat.status(),
            "qos": qos,
        });
        if let Ok(mut status) = self.status.lock() {
            *status = value;
        }
    }
}

/// A viewer's QoS in the real node: [`ViewerQos`] fed with wall-clock times, plus the live
/// latency of recent segments.
#[derive(Default)]
struct NodeQos {
    viewer: Option<ViewerQos>,
    /// Live latency of the most recent segments, in milliseconds.
    recent_latency_ms: VecDeque<f64>,
}

impl NodeQos {
    /// Starts measuring (the channel is known; a new session starts over).
    fn start(&mut self, now: Instant, segment: Duration, live_target: Option<Duration>) {
        self.viewer = Some(ViewerQos::new(now, segment, live_target));
        self.recent_latency_ms.clear();
    }

    /// The stream ends before segment `end`: nothing after it comes due.
    fn ended(&mut self, end: u64) {
        if let Some(viewer) = self.viewer.as_mut() {
            viewer.set_end(end);
        }
    }

    fn on_stored(&mut self, now: Instant, id: SegmentId, created_unix_ms: u64) {
        let Some(viewer) = self.viewer.as_mut() else {
            return;
        };
        match id {
            SegmentId::Init => {
                viewer.on_init(now);
            }
            SegmentId::Media(seq) => {
                let latency = Duration::from_millis(unix_ms().saturating_sub(created_unix_ms));
                viewer.on_segment(now, seq, latency);
                if self.recent_latency_ms.len() == 30 {
                    self.recent_latency_ms.pop_front();
                }
                self.recent_latency_ms
                    .push_back(latency.as_secs_f64() * 1000.0);
            }
        }
    }

    /// The median live latency of the recent segments (ms).
    fn median_latency_ms(&self) -> Option<f64> {
        let mut recent: Vec<f64> = self.recent_latency_ms.iter().copied().collect();
        recent.sort_by(f64::total_cmp);
        recent.get(recent.len() / 2).copied()
    }

    fn advance(&mut self, now: Instant) {
        if let Some(viewer) = self.viewer.as_mut() {
            viewer.advance(now);
        }
    }

    fn report(&self) -> serde_json::Value {
        let Some(viewer) = &self.viewer else {
            return serde_json::Value::Null;
        };
        let median = self.median_latency_ms();
        json!({
            "continuity": viewer.continuity(),
            "segments_due": viewer.totals().due,
            "startup_ms": viewer.startup_delay().map(|d| d.as_millis() as u64),
            "live_latency_ms_median_recent": median,
        })
    }
}

/// Opens a control stream to `expected` (or whoever listens at `addr`), on the connection the
/// node already has to it or on a new one.
fn spawn_dial(
    conns: &Connections,
    expected: Option<PeerId>,
    addr: SocketAddr,
    tx: mpsc::UnboundedSender<Msg>,
    me: PeerId,
) {
    let conns = conns.clone();
    tokio::spawn(async move {
        let result = async {
            let (peer, conn) = conns.connect(expected, addr).await?;
            let (send, recv) = conn.open_bi().await?;
            Ok::<_, DialError>(Link {
                peer,
                conn,
                send,
                recv,
            })
        }
        .await;
        match result {
            Ok(link) => {
                let _ = tx.send(Msg::Connected {
                    link,
                    dialled_by: me,
                });
            }
            Err(e) => {
                warn!(%addr, error = %e, "dial failed");
                let _ = tx.send(Msg::DialFailed { peer: expected });
            }
        }
    });
}

/// Why a peer could not be reached.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DialError {
    #[error(transparent)]
    Connect(#[from] quinn::ConnectError),
    #[error(transparent)]
    Connection(#[from] quinn::ConnectionError),
    #[error(transparent)]
    Stream(#[from] quinn::ReadError),
    #[error("{0}")]
    Other(&'static str),
    /// Another task's dial to the same address failed so.
    #[error("{0}")]
    Shared(String),
}

/// Writes queued control frames to the control stream.
async fn write_control(mut send: SendStream, mut rx: mpsc::Receiver<Bytes>) {
    while let Some(frame) = rx.recv().await {
        if send.write_all(&frame).await.is_err() {
            return;
        }
    }
    let _ = send.finish();
}

/// Reads one connection: control frames from `control`, segments from uni streams, until the
/// connection ends. A frame that breaks the rules closes the connection.
async fn read_connection(
    conn: Connection,
    mut control: RecvStream,
    peer: PeerId,
    gen: u64,
    tx: mpsc::UnboundedSender<Msg>,
) {
    let mut decoder = FrameDecoder::default();
    loop {
        match control.read_chunk(64 * 1024, true).await {
            Ok(Some(chunk)) => {
                decoder.extend(&chunk.bytes);
                loop {
                    match decoder.next_frame() {
                        Ok(Some(frame)) => {
                            let _ = tx.send(Msg::Frame { peer, gen, frame });
                        }
                        Ok(None) => break,
                        Err(error) => {
                            reject_frame(&conn, peer, &error);
                            let _ = tx.send(Msg::ConnClosed { peer, gen });
                            return;
                        }
                    }
                }
            }
            Ok(None) | Err(_) => {
                debug!(peer = %peer.short(), gen, "control stream ended");
                let _ = tx.send(Msg::ConnClosed { peer, gen });
                return;
            }
        }
    }
}

fn reject_frame(conn: &Connection, peer: PeerId, error: &FrameError) {
    warn!(peer = %peer.short(), %error, "closing connection: bad control frame");
    conn.close(
        VarInt::from_u32(error.close_code()),
        error.to_string().as_bytes(),
    );
}

/// Reads one segment stream: its header, then at most the number of bytes the broadcaster
/// signed for that segment (and only if we asked this peer for it).
/// `buf` holds what the connection's dispatcher already read from it.
async fn read_segment(
    mut stream: RecvStream,
    mut buf: BytesMut,
    peer: PeerId,
    tx: mpsc::UnboundedSender<Msg>,
) {
    let (header, used) = loop {
        match SegmentHeader::parse(&buf) {
            Ok(Some(parsed)) => break parsed,
            Ok(None) if buf.len() < MAX_SEGMENT_HEADER => {}
            Ok(None) | Err(_) => {
                warn!(peer = %peer.short(), "bad segment stream header");
                let _ = stream.stop(VarInt::from_u32(close_code::PROTOCOL));
                return;
            }
        }
        match stream.read_chunk(MAX_SEGMENT_HEADER, true).await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
            Ok(None) | Err(_) => return,
        }
    };
    let SegmentHeader { id, part } = header;
    let (reply, expected) = oneshot::channel();
    if tx
        .send(Msg::SegmentStart {
            peer,
            id,
            part,
            reply,
        })
        .is_err()
    {
        return;
    }
    let Ok(Some((limit, relay))) = expected.await else {
        debug!(peer = %peer.short(), %id, "refusing an unrequested segment stream");
        let _ = stream.stop(VarInt::from_u32(close_code::PROTOCOL));
        return;
    };
    let mut payload = BytesMut::with_capacity(limit);
    let first = Bytes::copy_from_slice(&buf[used..]);
    payload.extend_from_slice(&first);
    if !first.is_empty() {
        relay.push(first);
    }
    let failed = loop {
        if payload.len() > limit {
            warn!(peer = %peer.short(), %id, limit, "segment stream longer than signed");
            let _ = stream.stop(VarInt::from_u32(close_code::PROTOCOL));
            break true;
        }
        match stream.read_chunk(limit + 1 - payload.len(), true).await {
            Ok(Some(chunk)) => {
                payload.extend_from_slice(&chunk.bytes);
                // Forwards pass it on before the rest arrives (and finish only once the whole
                // segment verified).
                if payload.len() <= limit {
                    relay.push(chunk.bytes);
                }
            }
            Ok(None) => break false,
            Err(_) => break true,
        }
    };
    let msg = if failed {
        Msg::SegmentFailed { peer, id }
    } else {
        Msg::Segment {
            peer,
            id,
            part,
            bytes: payload.freeze(),
        }
    };
    let _ = tx.send(msg);
}

/// A stream's priority: the most urgent (oldest) segment first, the init segment before all.
fn priority(id: SegmentId) -> i32 {
    match id {
        SegmentId::Init => i32::MAX,
        SegmentId::Media(seq) => i32::MAX - 1 - (seq % (i32::MAX as u64 - 1)) as i32,
    }
}

/// A segment stream as it arrives, for the streams that forward it: its chunks so far and,
/// once the exchange checked the whole, whether it verified.
#[derive(Default)]
struct Relay {
    chunks: Mutex<Vec<Bytes>>,
    progress: tokio::sync::watch::Sender<RelayProgress>,
}

#[derive(Debug, Default, Clone, Copy)]
struct RelayProgress {
    chunks: usize,
    verified: Option<bool>,
}

impl Relay {
    fn push(&self, chunk: Bytes) {
        if let Ok(mut chunks) = self.chunks.lock() {
            chunks.push(chunk);
            self.progress.send_modify(|p| p.chunks = chunks.len());
        }
    }

    fn end(&self, verified: bool) {
        self.progress.send_modify(|p| p.verified = Some(verified));
    }

    fn chunks(&self, range: std::ops::Range<usize>) -> Vec<Bytes> {
        self.chunks
            .lock()
            .map(|c| c.get(range).map(<[Bytes]>::to_vec).unwrap_or_default())
            .unwrap_or_default()
    }
}

/// Forwards a segment on a new unidirectional stream while it is still arriving: each chunk
/// goes out as it comes, and the stream finishes only if the whole segment verified (it is
/// reset otherwise, so the receiver never completes unverified bytes).
async fn forward_segment(conn: Connection, id: SegmentId, relay: Arc<Relay>) {
    let mut progress = relay.progress.subscribe();
    let result = async {
        let mut stream = conn.open_uni().await?;
        let _ = stream.set_priority(priority(id));
        let header = SegmentHeader {
            id,
            part: Part::WHOLE,
        };
        stream.write_all(&header.encode()).await?;
        let mut sent = 0;
        loop {
            let now = *progress.borrow_and_update();
            for chunk in relay.chunks(sent..now.chunks) {
                stream.write_chunk(chunk).await?;
                sent += 1;
            }
            match now.verified {
                Some(true) => {
                    stream.finish()?;
                    return Ok(());
                }
                Some(false) => break,
                None => {}
            }
            if progress.changed().await.is_err() {
                break;
            }
        }
        let _ = stream.reset(VarInt::from_u32(close_code::RELAY_BROKEN));
        Ok::<_, SendError>(())
    }
    .await;
    if let Err(e) = result {
        debug!(%id, error = %e, "segment forward failed");
    }
}

/// Sends one segment (or the part `header` names) on a new unidirectional stream, the most
/// urgent (oldest) first; with a pace (bit/s), chunk by chunk no faster than that, so that it
/// leaves the rest of the uplink to the streams of the peers we feed, on other connections.
async fn send_segment(
    conn: Connection,
    header: SegmentHeader,
    bytes: Bytes,
    pace_bps: Option<f64>,
) {
    let id = header.id;
    let result = async {
        let mut stream = conn.open_uni().await?;
        let _ = stream.set_priority(priority(id));
        stream.write_all(&header.encode()).await?;
        match pace_bps {
            None => stream.write_chunk(bytes).await?,
            Some(bps) => {
                let started = tokio::time::Instant::now();
                let mut sent = 0usize;
                while sent < bytes.len() {
                    let end = (sent + PACED_CHUNK).min(bytes.len());
                    stream.write_chunk(bytes.slice(sent..end)).await?;
                    sent = end;
                    let due = Duration::from_secs_f64(sent as f64 * 8.0 / bps);
                    tokio::time::sleep_until(started + due).await;
                }
            }
        }
        stream.finish()?;
        // The slot frees once QUIC holds the whole segment. (Waiting for the acknowledgement
        // instead races the receiver, who asks for its next segment as soon as the last byte
        // arrives, and gets `Busy`.)
        Ok::<_, SendError>(())
    }
    .await;
    if let Err(e) = result {
        debug!(%id, error = %e, "segment send failed");
    }
}

/// A paced segment goes out in pieces of this size.
const PACED_CHUNK: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error(transparent)]
    Connection(#[from] quinn::ConnectionError),
    #[error(transparent)]
    Write(#[from] quinn::WriteError),
    #[error(transparent)]
    Closed(#[from] quinn::ClosedStream),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_listener_advertises_the_interface_toward_its_bootstrap() {
        let wildcard = SocketAddr::from(([0, 0, 0, 0], 4000));
        let toward = SocketAddr::from(([127, 0, 0, 1], 5000));
        assert_eq!(
            routable_addr(wildcard, Some(toward)),
            SocketAddr::from(([127, 0, 0, 1], 4000))
        );
        let bound = SocketAddr::from(([127, 0, 0, 1], 4000));
        assert_eq!(routable_addr(bound, Some(toward)), bound);
        // Without a bootstrap: some concrete address (the default route's, or loopback).
        assert!(!routable_addr(wildcard, None).ip().is_unspecified());
    }
}
