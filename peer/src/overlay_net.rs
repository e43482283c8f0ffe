//! The overlay's real driver: a tokio task that hosts one [`OverlayNode`] and carries its
//! messages over QUIC.
//!
//! Each pair of nodes shares one QUIC connection (authenticated by peer id, as for the segment
//! exchange); each side sends on one long-lived unidirectional stream that opens with the byte
//! [`OVERLAY_STREAM`] and then carries length-prefixed messages ([`Message::encode`]). A writer
//! task per peer batches whatever the node produced into one write. A message whose `from` is
//! not the authenticated peer, or that does not decode, closes the stream with a log line.
//! The application talks to the task through an [`OverlayHandle`].

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::{Endpoint, VarInt};
use rustc_hash::FxHashMap as HashMap;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};
use tracker_overlay::coordinator::{self, CoordinatorConfig, Coordinators, QosReport};
use tracker_overlay::{
    Abort, Config, Event, Message, NodeRef, Output, OverlayNode, Phase, TxOp, Value,
};

use crate::bench::store::{bench_config, Clients, StoreBenchArgs};
use crate::identity::{Keypair, PeerId};
use crate::node::{tls, Connections};

/// The first byte of an overlay stream (segment streams start otherwise).
pub const OVERLAY_STREAM: u8 = 0x4f;

/// What a transaction returns.
pub type TxResult = Result<Vec<Option<Value>>, Abort>;

enum Command {
    Create,
    Join(NodeRef),
    JoinAddr(SocketAddr),
    Transact(Vec<TxOp>, oneshot::Sender<TxResult>),
    Leave,
    Status(oneshot::Sender<Status>),
    Report(Box<QosReport>),
}

/// A snapshot of the node's view of the ring.
#[derive(Debug, Clone)]
pub struct Status {
    /// Where it stands.
    pub phase: Phase,
    /// Its predecessor.
    pub pred: Option<NodeRef>,
    /// Its successors.
    pub succs: Vec<NodeRef>,
    /// Whether it holds all of its range with authority.
    pub sure: bool,
    /// Messages it sent.
    pub sent: u64,
}

enum Inbox {
    /// A node found at an address: join through it.
    JoinVia(NodeRef, quinn::Connection),
    Messages(PeerId, Vec<Message>),
    Connected(PeerId, quinn::Connection),
    DialFailed(NodeRef),
    StreamClosed(PeerId),
}

/// The application's side of a running overlay node.
#[derive(Clone)]
pub struct OverlayHandle {
    me: NodeRef,
    commands: mpsc::UnboundedSender<Command>,
    inbox: mpsc::UnboundedSender<Inbox>,
}

impl OverlayHandle {
    /// The node.
    pub fn me(&self) -> NodeRef {
        self.me
    }

    /// Starts a ring.
    pub fn create(&self) {
        let _ = self.commands.send(Command::Create);
    }

    /// Joins the ring `bootstrap` is part of.
    pub fn join(&self, bootstrap: NodeRef) {
        let _ = self.commands.send(Command::Join(bootstrap));
    }

    /// Joins the ring of whatever node listens at `addr` (its id comes from its certificate).
    pub fn join_addr(&self, addr: SocketAddr) {
        let _ = self.commands.send(Command::JoinAddr(addr));
    }

    /// Waits until the node is part of a ring, up to `limit`.
    pub async fn joined(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self
                .status()
                .await
                .is_some_and(|s| s.phase == Phase::Member)
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Takes an overlay stream that arrived from `peer`; `read` holds the bytes the caller
    /// already took from it (at least the tag).
    pub(crate) fn accept_stream(
        &self,
        peer: PeerId,
        read: bytes::BytesMut,
        stream: quinn::RecvStream,
    ) {
        tokio::spawn(read_stream(read, stream, peer, self.inbox.clone()));
    }

    /// Leaves the ring gracefully; the node's task ends once its range is handed over.
    pub fn leave(&self) {
        let _ = self.commands.send(Command::Leave);
    }

    /// Runs a transaction.
    pub async fn transact(&self, ops: Vec<TxOp>) -> TxResult {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Transact(ops, tx)).is_err() {
            return Err(Abort::NotJoined);
        }
        rx.await.unwrap_or(Err(Abort::NotJoined))
    }

    /// Sends a QoS report to the channel's coordinator (best effort, routed through the ring;
    /// send one per round). Dropped while the node is not in a ring.
    pub fn report(&self, report: QosReport) {
        let _ = self.commands.send(Command::Report(Box::new(report)));
    }

    /// The node's view of the ring.
    pub async fn status(&self) -> Option<Status> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Status(tx)).ok()?;
        rx.await.ok()
    }
}

/// Starts an overlay node on its own QUIC endpoint bound to `listen`.
pub fn spawn(key: &Keypair, listen: SocketAddr, cfg: Config) -> anyhow::Result<OverlayHandle> {
    let server = tls::server_config(key)?;
    let endpoint = Endpoint::server(server, listen)?;
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(Duration::from_secs(2)))
        .max_idle_timeout(Some(VarInt::from_u32(10_000).into()));
    let addr = endpoint.local_addr()?;
    let conns = Connections::overlay_only(endpoint, key.clone(), Arc::new(transport));
    let handle = spawn_on(conns.clone(), key, addr, cfg);
    // The endpoint lives as long as its accept loop: for the whole process (benchmarks).
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        conns.accept_loop(stop_rx).await;
        drop(stop);
    });
    Ok(handle)
}

/// Starts an overlay node on connections the caller owns (the segment node's): it dials
/// through them and they hand it the overlay streams peers open. `advertise` is the address
/// other nodes dial.
pub(crate) fn spawn_on(
    conns: Connections,
    key: &Keypair,
    advertise: SocketAddr,
    cfg: Config,
) -> OverlayHandle {
    let me = NodeRef::new(key.peer_id().0, advertise);
    let (commands, command_rx) = mpsc::unbounded_channel();
    let (inbox, inbox_rx) = mpsc::unbounded_channel();
    // The coordinators (of the channels whose plan key this node is responsible for) draw
    // their random back-off from the node's seed.
    let coords = Coordinators::new(CoordinatorConfig {
        seed: cfg.seed ^ 0xc00d,
        ..CoordinatorConfig::default()
    });
    let actor = Actor {
        node: OverlayNode::new(Instant::now(), me, cfg),
        coords,
        conns: conns.clone(),
        inbox: inbox.clone(),
        peers: HashMap::default(),
        txs: HashMap::default(),
        left: false,
    };
    tokio::spawn(actor.run(command_rx, inbox_rx));
    let handle = OverlayHandle {
        me,
        commands,
        inbox,
    };
    conns.set_overlay(handle.clone());
    handle
}

enum PeerLink {
    Dialing(VecDeque<Message>),
    Up(mpsc::UnboundedSender<Message>),
}

struct Actor {
    node: OverlayNode,
    /// The optimizer's coordinators hosted on this node (sans-IO, driven beside it).
    coords: Coordinators,
    conns: Connections,
    inbox: mpsc::UnboundedSender<Inbox>,
    peers: HashMap<PeerId, PeerLink>,
    txs: HashMap<u64, oneshot::Sender<TxResult>>,
    left: bool,
}

impl Actor {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut inbox: mpsc::UnboundedReceiver<Inbox>,
    ) {
        loop {
            let deadline = [self.node.poll_timeout(), self.coords.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                cmd = commands.recv() => {
                    let Some(cmd) = cmd else { break };
                    self.command(cmd);
                    // Take every queued command before flushing.
                    while let Ok(cmd) = commands.try_recv() {
                        self.command(cmd);
                    }
                }
                msg = inbox.recv() => {
                    let Some(msg) = msg else { break };
                    self.inbox(msg);
                    while let Ok(msg) = inbox.try_recv() {
                        self.inbox(msg);
                    }
                }
                () = sleep => {
                    let now = Instant::now();
                    if self.node.poll_timeout().is_some_and(|t| t <= now) {
                        self.node.handle_timeout(now);
                    }
                    if self.coords.poll_timeout().is_some_and(|t| t <= now) {
                        self.coords.handle_timeout(now, &mut self.node);
                    }
                }
            }
            self.flush();
            if self.left {
                break;
            }
        }
    }

    fn command(&mut self, cmd: Command) {
        let now = Instant::now();
        match cmd {
            Command::Create => self.node.create(now),
            Command::Join(bootstrap) => self.node.join(now, bootstrap),
            Command::JoinAddr(addr) => self.dial_addr(addr),
            Command::Transact(ops, reply) => {
                let req = self.node.transact(now, ops);
                self.txs.insert(req, reply);
            }
            Command::Leave => self.node.leave(now),
            Command::Report(report) => {
                if self.node.phase() == Phase::Member
                    && !coordinator::send_report(&mut self.node, now, &report)
                {
                    debug!("QoS report not sent");
                }
            }
            Command::Status(reply) => {
                let node = &self.node;
                let sure = match node.pred() {
                    Some(p) => node.store().sure().covers(p.id, node.me().id),
                    None => node.succs().is_empty(),
                };
                let _ = reply.send(Status {
                    phase: node.phase(),
                    pred: node.pred(),
                    succs: node.succs().to_vec(),
                    sure,
                    sent: node.stats().sent.values().sum(),
                });
            }
        }
    }

    fn inbox(&mut self, msg: Inbox) {
        let now = Instant::now();
        match msg {
            Inbox::Messages(from, msgs) => {
                for msg in msgs {
                    if msg.from.peer != from.0 {
                        warn!(peer = %from.short(), "overlay message claims another sender; dropped");
                        continue;
                    }
                    self.node.handle_message(now, msg);
                }
            }
            Inbox::Connected(peer, conn) => {
                let queued = match self.peers.remove(&peer) {
                    Some(PeerLink::Up(tx)) => {
                        // Already sending on another connection to this peer.
                        self.peers.insert(peer, PeerLink::Up(tx));
                        return;
                    }
                    Some(PeerLink::Dialing(q)) => q,
                    None => VecDeque::new(),
                };
                let (tx, rx) = mpsc::unbounded_channel();
                for m in queued {
                    let _ = tx.send(m);
                }
                tokio::spawn(writer(conn, rx, self.inbox.clone(), peer));
                self.peers.insert(peer, PeerLink::Up(tx));
            }
            Inbox::JoinVia(node, conn) => {
                self.inbox(Inbox::Connected(PeerId(node.peer), conn));
                self.node.join(now, node);
            }
            Inbox::DialFailed(node) => {
                self.peers.remove(&PeerId(node.peer));
                self.node.handle_unreachable(now, node);
            }
            Inbox::StreamClosed(peer) => {
                self.peers.remove(&peer);
            }
        }
    }

    fn flush(&mut self) {
        // The coordinators react to events by running transactions and routing messages, which
        // produce more output: drain until both are quiet.
        loop {
            let mut idle = true;
            while let Some(out) = self.node.poll_output() {
                idle = false;
                let now = Instant::now();
                match out {
                    Output::Transmit { to, msg } => self.send(to, msg),
                    Output::Event(Event::TxDone { req, result }) => {
                        if !self
                            .coords
                            .handle_tx_done(now, req, &result, &mut self.node)
                        {
                            if let Some(reply) = self.txs.remove(&req) {
                                let _ = reply.send(result);
                            }
                        }
                    }
                    Output::Event(Event::Delivered {
                        key,
                        origin,
                        payload,
                    }) => {
                        if let Err(e) = self.coords.handle_delivered(
                            now,
                            key,
                            origin.peer,
                            &payload,
                            &mut self.node,
                        ) {
                            debug!(error = %e, "delivered payload dropped");
                        }
                    }
                    Output::Event(Event::Left) => self.left = true,
                    Output::Event(e) => debug!(event = ?e, "overlay"),
                }
            }
            while let Some(e) = self.coords.poll_event() {
                idle = false;
                debug!(event = ?e, "coordinator");
            }
            if idle {
                break;
            }
        }
    }

    fn send(&mut self, to: NodeRef, msg: Message) {
        let peer = PeerId(to.peer);
        match self.peers.get_mut(&peer) {
            Some(PeerLink::Up(tx)) => {
                if let Err(mpsc::error::SendError(msg)) = tx.send(msg) {
                    // The writer ended; dial again.
                    self.peers.remove(&peer);
                    self.send(to, msg);
                }
            }
            Some(PeerLink::Dialing(queue)) => queue.push_back(msg),
            None => {
                self.peers
                    .insert(peer, PeerLink::Dialing(VecDeque::from([msg])));
                self.dial(to);
            }
        }
    }

    /// Dials an address without knowing who is there, to join through it.
    fn dial_addr(&self, addr: SocketAddr) {
        let conns = self.conns.clone();
        let inbox = self.inbox.clone();
        tokio::spawn(async move {
            match conns.connect(None, addr).await {
                Ok((peer, conn)) => {
                    let _ = inbox.send(Inbox::JoinVia(NodeRef::new(peer.0, addr), conn));
                }
                Err(e) => warn!(%addr, error = %e, "cannot reach the overlay bootstrap node"),
            }
        });
    }

    /// Gets a connection to `to` (the node's, if it has one) to send on.
    fn dial(&self, to: NodeRef) {
        let conns = self.conns.clone();
        let inbox = self.inbox.clone();
        tokio::spawn(async move {
            match conns.connect(Some(PeerId(to.peer)), to.addr).await {
                Ok((peer, conn)) => {
                    let _ = inbox.send(Inbox::Connected(peer, conn));
                }
                Err(e) => {
                    debug!(peer = ?to, error = %e, "overlay dial failed");
                    let _ = inbox.send(Inbox::DialFailed(to));
                }
            }
        });
    }
}

/// Reads one overlay stream chunk by chunk and hands over every complete message of a chunk
/// at once.
async fn read_stream(
    mut buf: bytes::BytesMut,
    mut recv: quinn::RecvStream,
    peer: PeerId,
    inbox: mpsc::UnboundedSender<Inbox>,
) {
    let mut tagged = false;
    loop {
        if buf.is_empty() || tagged {
            let chunk = match recv.read_chunk(64 * 1024, true).await {
                Ok(Some(chunk)) => chunk.bytes,
                Ok(None) | Err(_) => return,
            };
            buf.extend_from_slice(&chunk);
        }
        if buf.is_empty() {
            continue;
        }
        if !tagged {
            if buf[0] != OVERLAY_STREAM {
                let _ = recv.stop(VarInt::from_u32(0x12));
                return;
            }
            let _ = buf.split_to(1);
            tagged = true;
        }
        let mut batch = Vec::new();
        while buf.len() >= 4 {
            let n = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if n > tracker_overlay::msg::MAX_MESSAGE_LEN {
                warn!(peer = %peer.short(), len = n, "oversized overlay message; stream closed");
                let _ = recv.stop(VarInt::from_u32(0x12));
                return;
            }
            if buf.len() < 4 + n {
                break;
            }
            let frame = buf.split_to(4 + n);
            match Message::decode(&frame[4..]) {
                Ok(msg) => batch.push(msg),
                Err(e) => {
                    warn!(peer = %peer.short(), error = %e, "bad overlay message; stream closed");
                    let _ = recv.stop(VarInt::from_u32(0x11));
                    return;
                }
            }
        }
        if !batch.is_empty() && inbox.send(Inbox::Messages(peer, batch)).is_err() {
            return;
        }
    }
}

/// Sends the node's messages to one peer: everything queued goes out in one write.
async fn writer(
    conn: quinn::Connection,
    mut rx: mpsc::UnboundedReceiver<Message>,
    inbox: mpsc::UnboundedSender<Inbox>,
    peer: PeerId,
) {
    let result = async {
        let mut send = conn.open_uni().await?;
        send.write_all(&[OVERLAY_STREAM]).await?;
        let mut buf = Vec::with_capacity(64 * 1024);
        while let Some(msg) = rx.recv().await {
            buf.clear();
            frame(&mut buf, &msg);
            while let Ok(msg) = rx.try_recv() {
                frame(&mut buf, &msg);
                if buf.len() > 256 * 1024 {
                    break;
                }
            }
            send.write_all(&buf).await?;
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if let Err(e) = result {
        debug!(peer = %peer.short(), error = %e, "overlay stream ended");
    }
    let _ = inbox.send(Inbox::StreamClosed(peer));
}

fn frame(buf: &mut Vec<u8>, msg: &Message) {
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]);
    msg.encode_into(buf);
    let len = (buf.len() - start - 4) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Whether a ring of these nodes has settled: neighbours consistent in id order, every range
/// held with authority.
pub(crate) fn settled<'a>(nodes: impl Iterator<Item = &'a OverlayNode>) -> bool {
    let mut ring: Vec<(NodeRef, Option<NodeRef>, Option<NodeRef>, bool)> = nodes
        .map(|n| {
            let sure = match n.pred() {
                Some(p) => n.store().sure().covers(p.id, n.me().id),
                None => n.succs().is_empty(),
            };
            (
                n.me(),
                n.pred(),
                n.succs().first().copied(),
                sure && n.phase() == Phase::Member,
            )
        })
        .collect();
    ring.sort_by_key(|(me, ..)| me.id);
    let n = ring.len();
    if n == 1 {
        return ring[0].3;
    }
    (0..n).all(|i| {
        let (_, pred, succ, sure) = ring[i];
        sure && succ == Some(ring[(i + 1) % n].0) && pred == Some(ring[(i + n - 1) % n].0)
    })
}

/// `peer bench store --transport quic`.
pub(crate) async fn bench(args: &StoreBenchArgs) -> anyhow::Result<serde_json::Value> {
    let listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut handles = Vec::new();
    for _ in 0..args.nodes {
        handles.push(spawn(
            &Keypair::generate(),
            listen,
            bench_config(args.replicas),
        )?);
    }
    handles[0].create();
    for h in &handles[1..] {
        h.join(handles[0].me());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = h.status().await;
            if status.is_some_and(|s| s.phase == Phase::Member) {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "a node did not join the benchmark ring"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut statuses = Vec::new();
        for h in &handles {
            statuses.extend(h.status().await.map(|s| (h.me(), s)));
        }
        if ring_consistent(&statuses) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the benchmark ring did not settle"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Replicated managers are looked up right after joining; give the lookups a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let clients = Clients::new(args);
    for (c, ops) in clients.setup_ops(args.clients).into_iter().enumerate() {
        let h = &handles[c % handles.len()];
        h.transact(ops)
            .await
            .map_err(|e| anyhow::anyhow!("setup write: {e}"))?;
    }
    let sent_before: u64 = sum_sent(&handles).await;
    let clients = Arc::new(tokio::sync::Mutex::new(clients));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let h = handles[c % handles.len()].clone();
        let clients = clients.clone();
        tasks.push(tokio::spawn(async move {
            let mut retry = false;
            loop {
                let ops = clients.lock().await.next(c, retry);
                let Some(ops) = ops else { break };
                let result = h.transact(ops).await;
                let mut clients = clients.lock().await;
                retry = clients.done(c, &result)?;
                if retry {
                    let wait = clients.backoff(c);
                    drop(clients);
                    tokio::time::sleep(wait).await;
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let wall = start.elapsed();
    let messages = sum_sent(&handles).await - sent_before;
    let mut clients = Arc::try_unwrap(clients)
        .map_err(|_| anyhow::anyhow!("client tasks still running"))?
        .into_inner();
    clients.tally.messages = messages;
    for h in &handles {
        h.leave();
    }
    Ok(clients.tally_json(args, wall))
}

async fn sum_sent(handles: &[OverlayHandle]) -> u64 {
    let mut total = 0;
    for h in handles {
        total += h.status().await.map_or(0, |s| s.sent);
    }
    total
}

fn ring_consistent(statuses: &[(NodeRef, Status)]) -> bool {
    let mut ring: Vec<&(NodeRef, Status)> = statuses.iter().collect();
    ring.sort_by_key(|(me, _)| me.id);
    let n = ring.len();
    if n == 1 {
        return ring[0].1.sure;
    }
    (0..n).all(|i| {
        let s = &ring[i].1;
        s.sure
            && s.succs.first() == Some(&ring[(i + 1) % n].0)
            && s.pred == Some(ring[(i + n - 1) % n].0)
    })
}
