//! The traversal task: drives [`Punch`] with tokio, classifies the NAT at start, keeps relay
//! registrations alive, and finds the path to a peer before the node dials it.
//!
//! ```text
//!   Nat::start ── classify: STUN to the bootstrap peer and its partner (OTHER-ADDRESS),
//!   │             CHANGE-REQUEST through the partner → NatClass
//!   │             open: relay for others, offer to partner with the server
//!   │             behind a NAT: register at the first server (the home relay), every 10 s
//!   ▼
//!   actor: NatSocket events + commands → Punch (sans-IO) → datagrams, path events
//!   ▲
//!   Nat::path_to(peer, addr) ── the peer's NatRecord (learnt from directory reads), else a
//!                               guess (its address, our relay) while the store is read
//!                            ── register at its relay ── punch ── direct or virtual address
//! ```

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};
use tracker_overlay::swarm::{self, Member};
use tracker_overlay::{Abort, TxOp, Value};

use super::packet::{Packet, Register};
use super::punch::{self, Punch, PunchConfig};
use super::relay::RelayConfig;
use super::socket::{NatSocket, SocketEvent};
use super::stun::{self, TxId};
use super::{record_key, Connectivity, Filtering, Mapping, NatClass, NatRecord};
use crate::identity::{ChannelId, Keypair, PeerId};
use crate::overlay_net::OverlayHandle;

/// How often registrations at relays are refreshed (also the keep-alive of the NAT mapping
/// toward the relay).
const REFRESH: Duration = Duration::from_secs(10);
/// How long a STUN transaction may take.
const STUN_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long we wait for an answer from a server's other address before we conclude that our
/// NAT filters it.
const FILTER_TEST: Duration = Duration::from_millis(800);
/// How long a peer's record is reused before it is read again.
const RECORD_TTL: Duration = Duration::from_secs(20);
/// How long reading a record from the store may take in all (reads that the ring cannot answer
/// yet are tried again within it).
const RECORD_READ: Duration = Duration::from_secs(3);

/// How to traverse NATs.
#[derive(Debug, Clone, Default)]
pub struct NatConfig {
    /// STUN servers (the bootstrap peers): the first that answers is also the home relay.
    pub stun: Vec<SocketAddr>,
    /// Limits when this peer relays for others (it does when it is reachable).
    pub relay: RelayConfig,
    /// Punch timing.
    pub punch: PunchConfig,
}

/// How a path to a peer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// Straight to the peer (dialled, or through punched holes).
    Direct,
    /// Through the peer's relay.
    Relayed,
}

/// The path last chosen to a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathInfo {
    /// Direct or relayed.
    pub kind: PathKind,
    /// The address quinn dialled (a virtual address when relayed).
    pub addr: SocketAddr,
    /// From the start of [`Nat::path_to`] to the decision.
    pub decided_in: Duration,
    /// From the start of [`Nat::path_to`] to the QUIC connection, once the dialler reported it.
    pub connected_in: Option<Duration>,
}

enum Command {
    Punch {
        peer: PeerId,
        record: NatRecord,
        guessed: bool,
        reply: oneshot::Sender<punch::Event>,
    },
    AwaitStun {
        tx: TxId,
        reply: oneshot::Sender<(SocketAddr, stun::Response)>,
    },
    AwaitRegistered {
        relay: SocketAddr,
        reply: oneshot::Sender<()>,
    },
    SetSelf {
        class: Connectivity,
        candidates: Vec<SocketAddr>,
    },
    /// A peer's record, read while a punch on a guess runs.
    Learn { peer: PeerId, record: NatRecord },
}

#[derive(Debug, Clone)]
struct Shared {
    class: NatClass,
    reflexive: Option<SocketAddr>,
    local: Vec<SocketAddr>,
    home: Option<SocketAddr>,
    /// The first STUN server that answered.
    first_server: Option<SocketAddr>,
    paths: HashMap<PeerId, PathInfo>,
    records: HashMap<PeerId, (NatRecord, Instant)>,
    /// Relays we are registered with, and when we last used each.
    relays: HashMap<SocketAddr, Instant>,
}

struct Inner {
    /// Weak: the socket closes when quinn's endpoint lets it go, whoever still holds a `Nat`.
    socket: Weak<NatSocket>,
    key: Keypair,
    commands: mpsc::UnboundedSender<Command>,
    /// The overlay, and the channel whose membership entries carry the records we need most.
    overlay: OnceLock<(OverlayHandle, ChannelId)>,
    shared: Mutex<Shared>,
}

/// The node's NAT traversal. Cheap to clone.
#[derive(Clone)]
pub struct Nat {
    inner: Arc<Inner>,
}

impl Nat {
    /// Starts traversal on `socket` (whose events arrive on `events`): classifies the NAT
    /// through `config.stun` (up to a few seconds when servers do not answer), then relays for
    /// others if this peer is reachable, or registers at its home relay if it is not.
    pub async fn start(
        socket: Arc<NatSocket>,
        events: mpsc::UnboundedReceiver<SocketEvent>,
        key: Keypair,
        config: NatConfig,
    ) -> Self {
        let (commands, command_rx) = mpsc::unbounded_channel();
        let me = key.peer_id();
        let local = socket.local_addr_or_unspecified();
        let shared = Shared {
            class: NatClass::OPEN,
            reflexive: None,
            local: vec![local],
            home: None,
            first_server: None,
            paths: HashMap::new(),
            records: HashMap::new(),
            relays: HashMap::new(),
        };
        let nat = Self {
            inner: Arc::new(Inner {
                socket: Arc::downgrade(&socket),
                key,
                commands,
                overlay: OnceLock::new(),
                shared: Mutex::new(shared),
            }),
        };
        let punch = Punch::new(me, Connectivity::Open, vec![local], config.punch.clone());
        tokio::spawn(Actor::new(&socket, punch, nat.clone()).run(events, command_rx));
        drop(socket);
        nat.classify(&config).await;
        tokio::spawn(nat.clone().refresh_relays());
        nat
    }

    /// Lets the traversal read peers' records from the overlay's store: from the membership
    /// entries of `channel` (the node's own channel, whose members it dials most) or from the
    /// peer's own record.
    pub fn attach_overlay(&self, overlay: OverlayHandle, channel: ChannelId) {
        let _ = self.inner.overlay.set((overlay, channel));
    }

    /// Takes the NAT records that `members` carry (a directory read), so that dialling one of
    /// them needs no read of its own.
    pub fn learn(&self, members: &[Member]) {
        let me = self.inner.key.peer_id();
        let now = Instant::now();
        let mut s = self.shared();
        // Stale records go, so the cache holds about what recent reads returned.
        s.records.retain(|_, (_, at)| at.elapsed() < RECORD_TTL);
        for m in members.iter().filter(|m| m.peer != me.0) {
            s.records
                .insert(PeerId(m.peer), (NatRecord::from_member(m), now));
        }
    }

    /// What classification found.
    pub fn class(&self) -> NatClass {
        self.shared().class
    }

    /// The class published in membership records.
    pub fn connectivity(&self) -> Connectivity {
        self.shared().class.connectivity()
    }

    /// The address others should dial us at: our reflexive address behind a NAT, else `None`
    /// (our own address will do).
    pub fn advertise(&self) -> Option<SocketAddr> {
        let s = self.shared();
        match s.class.mapping {
            Mapping::None => None,
            _ => s.reflexive,
        }
    }

    /// What we publish in the overlay's store so that others can reach us.
    pub fn record(&self) -> NatRecord {
        let s = self.shared();
        NatRecord {
            connectivity: s.class.connectivity(),
            reflexive: s.reflexive,
            local: s.local.iter().take(NatRecord::MAX_LOCAL).copied().collect(),
            relay: s.home,
        }
    }

    /// The write that publishes our record, for a transaction of the caller's.
    pub fn publish_op(&self) -> TxOp {
        TxOp::Write(
            record_key(&self.inner.key.peer_id()),
            Value::Bytes(self.record().encode()),
        )
    }

    /// Our STUN partner (the other address our STUN answers name), if we have one.
    pub fn partner(&self) -> Option<SocketAddr> {
        self.socket().and_then(|s| s.partner())
    }

    /// Notes a connection `peer` opened to us from `remote` (a virtual address when it came
    /// through a relay), unless we already chose a path to it.
    pub fn accepted(&self, peer: PeerId, remote: SocketAddr) {
        let kind = if self.is_relayed(remote) {
            PathKind::Relayed
        } else {
            PathKind::Direct
        };
        self.shared().paths.entry(peer).or_insert(PathInfo {
            kind,
            addr: remote,
            decided_in: Duration::ZERO,
            connected_in: None,
        });
    }

    /// The paths chosen so far, by peer.
    pub fn paths(&self) -> HashMap<PeerId, PathInfo> {
        self.shared().paths.clone()
    }

    /// Whether `addr` is a relayed peer's virtual address.
    pub fn is_relayed(&self, addr: SocketAddr) -> bool {
        super::is_virtual(addr) && self.socket().is_some_and(|s| s.relayed(addr).is_some())
    }

    /// Notes that the QUIC connection to `peer` came up `elapsed` after its path search began.
    pub fn connected(&self, peer: PeerId, elapsed: Duration) {
        debug!(peer = %peer.short(), elapsed_ms = elapsed.as_millis() as u64, "connected");
        if let Some(p) = self.shared().paths.get_mut(&peer) {
            p.connected_in.get_or_insert(elapsed);
        }
    }

    /// A JSON summary for the node's status.
    pub fn status(&self) -> serde_json::Value {
        let s = self.shared();
        let paths: Vec<_> = s
            .paths
            .iter()
            .map(|(peer, p)| {
                json!({
                    "peer": peer.short(),
                    "kind": match p.kind { PathKind::Direct => "direct", PathKind::Relayed => "relayed" },
                    "addr": p.addr.to_string(),
                    "decided_ms": p.decided_in.as_millis() as u64,
                    "connected_ms": p.connected_in.map(|d| d.as_millis() as u64),
                })
            })
            .collect();
        json!({
            "connectivity": format!("{:?}", s.class.connectivity()),
            "mapping": format!("{:?}", s.class.mapping),
            "filtering": format!("{:?}", s.class.filtering),
            "reflexive": s.reflexive.map(|a| a.to_string()),
            "relay": s.home.map(|a| a.to_string()),
            "relaying": self.socket().and_then(|s| s.relay_stats()).map(|r| json!({
                "forwarded": r.forwarded, "forwarded_bytes": r.forwarded_bytes,
                "over_budget": r.over_budget, "registrations": r.registrations,
            })),
            "paths": paths,
        })
    }

    /// The address to dial `peer` at (advertised at `addr`): `addr` itself when the peer needs
    /// no help or its record is unknown, a punched address, or a virtual address through its
    /// relay.
    ///
    /// With the peer's record at hand (a directory read brought it, or an earlier dial) the
    /// punch follows it. Without, punching starts at once on a guess (its address, signalled
    /// through our own relay, which is often its relay too: peers register with their
    /// bootstrap peer) while the record is read from the store: the first answer to a probe
    /// decides, and a record that arrives before that corrects the attempt (dial at once, relay
    /// at once, or more candidates and the peer's own relay).
    pub async fn path_to(&self, peer: PeerId, addr: SocketAddr) -> SocketAddr {
        let started = Instant::now();
        if peer == self.inner.key.peer_id() {
            return addr;
        }
        // It registers with us: the mapping it keeps open toward us is a direct path.
        if let Some(registered) = self.socket().and_then(|s| s.relay_client(&peer)) {
            return registered;
        }
        let (record, guessed) = match self.cached_record(peer) {
            Some(record) => (record, false),
            None => {
                let guess = NatRecord {
                    connectivity: Connectivity::PortRestricted,
                    reflexive: Some(addr),
                    local: Vec::new(),
                    relay: self.default_relay(),
                };
                (guess, true)
            }
        };
        debug!(peer = %peer.short(), %addr, guessed, ?record, "finding a path");
        if let Some(relay) = record.relay {
            if !self.ensure_registered(relay).await {
                debug!(peer = %peer.short(), %relay, "cannot register at the peer's relay");
            }
        }
        let (reply, rx) = oneshot::channel();
        self.command(Command::Punch {
            peer,
            record,
            guessed,
            reply,
        });
        if guessed {
            let nat = self.clone();
            tokio::spawn(async move {
                let Some(record) = nat.read_record(peer).await else {
                    return;
                };
                if let Some(relay) = record.relay {
                    if !nat.ensure_registered(relay).await {
                        debug!(peer = %peer.short(), %relay, "cannot register at the peer's relay");
                    }
                }
                debug!(peer = %peer.short(), ?record, "record read while punching on a guess");
                nat.command(Command::Learn { peer, record });
            });
        }
        let event = rx.await.unwrap_or(punch::Event::Unreachable { peer });
        let decided_in = started.elapsed();
        let (kind, dial) = match event {
            punch::Event::Direct { addr, elapsed, .. } => {
                info!(peer = %peer.short(), %addr, punch_ms = elapsed.as_millis() as u64, "direct path");
                (PathKind::Direct, addr)
            }
            punch::Event::Relayed { relay, .. } => {
                self.touch_relay(relay);
                info!(peer = %peer.short(), %relay, "relayed path");
                (
                    PathKind::Relayed,
                    match self.socket() {
                        Some(s) => s.virtual_for(relay, peer),
                        None => return addr,
                    },
                )
            }
            punch::Event::Unreachable { .. } => {
                warn!(peer = %peer.short(), "no path found; dialling its address as is");
                return addr;
            }
        };
        self.shared().paths.insert(
            peer,
            PathInfo {
                kind,
                addr: dial,
                decided_in,
                connected_in: None,
            },
        );
        dial
    }

    /// The relay to try for a peer whose record we do not know: our home relay, or for an open
    /// peer the first STUN server that answered.
    fn default_relay(&self) -> Option<SocketAddr> {
        let s = self.shared();
        s.home.or(s.first_server)
    }

    /// The socket, while the endpoint keeps it.
    fn socket(&self) -> Option<Arc<NatSocket>> {
        self.inner.socket.upgrade()
    }

    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        // Nothing panics while holding this lock; a poisoned lock still holds valid data.
        self.inner.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn command(&self, command: Command) {
        let _ = self.inner.commands.send(command);
    }

    /// The peer's record, if one read recently is at hand.
    fn cached_record(&self, peer: PeerId) -> Option<NatRecord> {
        let s = self.shared();
        let (record, at) = s.records.get(&peer)?;
        (at.elapsed() < RECORD_TTL).then(|| record.clone())
    }

    /// Reads the peer's record from the overlay's store: its entry in our channel's membership
    /// sample and its own record, read at once (each a single-key read, which takes no lock);
    /// the first that has it wins. Reads the ring cannot answer yet are tried again, within
    /// [`RECORD_READ`].
    async fn read_record(&self, peer: PeerId) -> Option<NatRecord> {
        let (overlay, channel) = self.inner.overlay.get()?.clone();
        let from_members = {
            let (overlay, nat) = (overlay.clone(), self.clone());
            async move {
                let key = swarm::key(&channel.0, swarm::Field::Members);
                let value = read_one(&overlay, key).await?;
                let now_unix_s = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let members = swarm::members(Some(&value), now_unix_s).ok()?;
                nat.learn(&members);
                nat.cached_record(peer)
            }
        };
        let own = async move {
            match read_one(&overlay, record_key(&peer)).await? {
                Value::Bytes(bytes) => NatRecord::decode(&bytes),
                _ => None,
            }
        };
        let first = async {
            tokio::pin!(from_members, own);
            let (mut members_done, mut own_done) = (false, false);
            loop {
                tokio::select! {
                    r = &mut from_members, if !members_done => match r {
                        Some(record) => return Some(record),
                        None => members_done = true,
                    },
                    r = &mut own, if !own_done => match r {
                        Some(record) => return Some(record),
                        None => own_done = true,
                    },
                    else => return None,
                }
            }
        };
        let record = tokio::time::timeout(RECORD_READ, first)
            .await
            .ok()
            .flatten()?;
        self.shared()
            .records
            .insert(peer, (record.clone(), Instant::now()));
        Some(record)
    }

    /// One STUN transaction with `server`, resent with backoff.
    async fn stun(
        &self,
        server: SocketAddr,
        change: bool,
        limit: Duration,
    ) -> Option<(SocketAddr, stun::Response)> {
        let tx: TxId = rand::random();
        let (reply, mut rx) = oneshot::channel();
        self.command(Command::AwaitStun { tx, reply });
        let request = stun::binding_request(tx, change);
        let deadline = tokio::time::sleep(limit);
        tokio::pin!(deadline);
        let mut interval = Duration::from_millis(100);
        loop {
            match self.socket() {
                Some(s) => s.send_to(&request, server),
                None => return None,
            }
            tokio::select! {
                r = &mut rx => return r.ok(),
                () = tokio::time::sleep(interval) => interval = (interval * 2).min(Duration::from_millis(500)),
                () = &mut deadline => return None,
            }
        }
    }

    /// Classifies our NAT (RFC 5780 style, with peers as servers) and acts on the result.
    async fn classify(&self, config: &NatConfig) {
        let Some(socket) = self.socket() else {
            return;
        };
        let port = socket.local_addr_or_unspecified().port();
        let mut first = None;
        for server in &config.stun {
            if let Some((_, r)) = self.stun(*server, false, STUN_TIMEOUT).await {
                first = Some((*server, r));
                break;
            }
        }
        let Some((server, r1)) = first else {
            // No server: the first peer of a ring (reachable by assumption: others bootstrap
            // through it), or no server answers, in which case punching may still work.
            let class = if config.stun.is_empty() {
                NatClass::OPEN
            } else {
                warn!("no STUN server answered; NAT unknown");
                NatClass {
                    mapping: Mapping::Unknown,
                    filtering: Filtering::Unknown,
                }
            };
            let local = vec![local_toward(port, None, &socket)];
            self.settle(class, None, local, None);
            return;
        };
        self.shared().first_server = Some(server);
        let local = local_toward(port, Some(server), &socket);
        if r1.mapped == local {
            self.settle(NatClass::OPEN, Some(r1.mapped), vec![local], None);
            // Offer to be the server's partner, so that it can answer CHANGE-REQUESTs.
            if socket.partner().is_none() {
                socket.send_to(&Packet::Partner { accept: false }.encode(), server);
            }
            return;
        }
        let second = r1
            .other
            .or_else(|| config.stun.iter().copied().find(|s| *s != server));
        let mapping = async {
            let s2 = second?;
            let (_, r2) = self.stun(s2, false, STUN_TIMEOUT).await?;
            Some(r2.mapped == r1.mapped)
        };
        let filtering = async {
            r1.other?;
            Some(self.stun(server, true, FILTER_TEST).await.is_some())
        };
        // The filtering test first: once we have sent to the other address, our NAT lets its
        // packets in whatever its filtering.
        let open = filtering.await;
        let same = mapping.await;
        let class = NatClass {
            mapping: match same {
                Some(true) => Mapping::EndpointIndependent,
                Some(false) => Mapping::Dependent,
                None => Mapping::Unknown,
            },
            filtering: match open {
                Some(true) => Filtering::EndpointIndependent,
                Some(false) => Filtering::Dependent,
                None => Filtering::Unknown,
            },
        };
        self.settle(class, Some(r1.mapped), vec![local], Some(server));
        if !self.ensure_registered(server).await {
            warn!(relay = %server, "the home relay did not confirm our registration");
        }
    }

    fn settle(
        &self,
        class: NatClass,
        reflexive: Option<SocketAddr>,
        local: Vec<SocketAddr>,
        home: Option<SocketAddr>,
    ) {
        info!(
            connectivity = ?class.connectivity(), mapping = ?class.mapping,
            filtering = ?class.filtering, reflexive = ?reflexive, relay = ?home,
            "NAT classified"
        );
        if class.mapping == Mapping::None {
            if let Some(s) = self.socket() {
                s.enable_relay(RelayConfig::default());
            }
        }
        let candidates = {
            let mut s = self.shared();
            s.class = class;
            s.reflexive = reflexive;
            s.local = local;
            s.home = home;
            drop(s);
            self.record().candidates()
        };
        self.command(Command::SetSelf {
            class: class.connectivity(),
            candidates,
        });
    }

    /// Registers at `relay` unless a registration is fresh; true once it holds.
    async fn ensure_registered(&self, relay: SocketAddr) -> bool {
        let fresh = self
            .shared()
            .relays
            .get(&relay)
            .is_some_and(|at| at.elapsed() < REFRESH);
        if fresh {
            return true;
        }
        let ok = self.register(relay).await;
        if ok {
            self.touch_relay(relay);
        }
        ok
    }

    fn touch_relay(&self, relay: SocketAddr) {
        self.shared().relays.insert(relay, Instant::now());
    }

    /// Learns our address as `relay` sees it, then registers there, signed.
    async fn register(&self, relay: SocketAddr) -> bool {
        for _ in 0..3 {
            let Some((_, seen)) = self.stun(relay, false, STUN_TIMEOUT).await else {
                continue;
            };
            let unix_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let reg = Register::sign(&self.inner.key, seen.mapped, unix_ms);
            let (reply, rx) = oneshot::channel();
            self.command(Command::AwaitRegistered { relay, reply });
            let packet = Packet::Register(Box::new(reg)).encode();
            match self.socket() {
                Some(s) => s.send_to(&packet, relay),
                None => return false,
            }
            if let Ok(Ok(())) = tokio::time::timeout(Duration::from_millis(500), rx).await {
                return true;
            }
        }
        false
    }

    /// Refreshes our registrations (home relay always, others while in use), forever.
    async fn refresh_relays(self) {
        let stale_after = Duration::from_secs(120);
        loop {
            tokio::time::sleep(REFRESH).await;
            if self.socket().is_none() || self.inner.commands.is_closed() {
                return;
            }
            let (home, relays): (_, Vec<_>) = {
                let s = self.shared();
                let relays = s
                    .relays
                    .iter()
                    .filter(|(_, at)| at.elapsed() < stale_after)
                    .map(|(r, _)| *r)
                    .collect();
                (s.home, relays)
            };
            for relay in home
                .into_iter()
                .chain(relays)
                .collect::<std::collections::BTreeSet<_>>()
            {
                if !self.register(relay).await {
                    debug!(%relay, "relay registration not refreshed");
                }
            }
        }
    }
}

impl NatSocket {
    fn local_addr_or_unspecified(&self) -> SocketAddr {
        quinn::AsyncUdpSocket::local_addr(self)
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }
}

/// Reads one key (a plain quorum read), again with backoff (20 ms doubling to 320 ms) while
/// the ring cannot answer (replicas settling after a join); `None` if the key holds nothing or
/// the read fails otherwise.
async fn read_one(overlay: &OverlayHandle, key: Vec<u8>) -> Option<Value> {
    let mut pause = Duration::from_millis(20);
    loop {
        match overlay.transact(vec![TxOp::Read(key.clone())]).await {
            Ok(values) => return values.into_iter().next().flatten(),
            Err(e @ (Abort::NoQuorum { .. } | Abort::Timeout | Abort::NotJoined)) => {
                debug!(error = %e, "store read did not go through; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(320));
            }
            Err(e) => {
                debug!(error = %e, "store read failed");
                return None;
            }
        }
    }
}

/// Our own address toward `server`: the socket's address, or for a wildcard bind the address of
/// the interface the system routes toward `server` (found by connecting a throwaway UDP socket,
/// which sends nothing).
fn local_toward(port: u16, server: Option<SocketAddr>, socket: &NatSocket) -> SocketAddr {
    let bound = socket.local_addr_or_unspecified();
    if !bound.ip().is_unspecified() {
        return bound;
    }
    let target = server.unwrap_or_else(|| SocketAddr::from(([192, 0, 2, 1], 9)));
    let ip = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0)))
        .and_then(|s| s.connect(target).and_then(|()| s.local_addr()))
        .map(|a| a.ip())
        .unwrap_or(bound.ip());
    SocketAddr::new(ip, port)
}

/// The task that owns the punching core and routes socket events.
struct Actor {
    socket: Weak<NatSocket>,
    punch: Punch,
    nat: Nat,
    stun_waiters: HashMap<TxId, oneshot::Sender<(SocketAddr, stun::Response)>>,
    reg_waiters: HashMap<SocketAddr, Vec<oneshot::Sender<()>>>,
    path_waiters: HashMap<PeerId, Vec<oneshot::Sender<punch::Event>>>,
}

impl Actor {
    fn new(socket: &Arc<NatSocket>, punch: Punch, nat: Nat) -> Self {
        Self {
            socket: Arc::downgrade(socket),
            punch,
            nat,
            stun_waiters: HashMap::new(),
            reg_waiters: HashMap::new(),
            path_waiters: HashMap::new(),
        }
    }

    async fn run(
        mut self,
        mut events: mpsc::UnboundedReceiver<SocketEvent>,
        mut commands: mpsc::UnboundedReceiver<Command>,
    ) {
        loop {
            let deadline = self.punch.poll_timeout();
            let timer = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                event = events.recv() => match event {
                    Some(e) => self.on_event(e),
                    None => return,
                },
                command = commands.recv() => match command {
                    Some(c) => self.on_command(c),
                    None => return,
                },
                () = timer => self.punch.handle_timeout(Instant::now()),
            }
            self.drain();
        }
    }

    fn on_event(&mut self, event: SocketEvent) {
        let now = Instant::now();
        match event {
            SocketEvent::Stun { from, response } => {
                if let Some(w) = self.stun_waiters.remove(&response.tx) {
                    let _ = w.send((from, response));
                }
            }
            SocketEvent::Registered { relay, .. } => {
                for w in self.reg_waiters.remove(&relay).unwrap_or_default() {
                    let _ = w.send(());
                }
            }
            SocketEvent::Signal {
                relay,
                from,
                signal,
            } => self.punch.handle_signal(now, relay, from, signal),
            SocketEvent::Probe {
                addr,
                session,
                from,
                ack,
            } => self.punch.handle_probe(now, addr, session, from, ack),
            SocketEvent::Partner { from, accept } => {
                if accept {
                    if let Some(s) = self.socket.upgrade() {
                        s.set_partner(from);
                    }
                } else if let Some(s) = self.socket.upgrade() {
                    if self.nat.class().mapping == Mapping::None && s.partner().is_none() {
                        info!(partner = %from, "STUN partner: CHANGE-REQUESTs are answered from there");
                        s.set_partner(from);
                        s.send_to(&Packet::Partner { accept: true }.encode(), from);
                    }
                }
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        let now = Instant::now();
        match command {
            Command::Punch {
                peer,
                record,
                guessed,
                reply,
            } => {
                self.path_waiters.entry(peer).or_default().push(reply);
                self.punch.connect(now, peer, &record, guessed);
            }
            Command::AwaitStun { tx, reply } => {
                self.stun_waiters.retain(|_, w| !w.is_closed());
                self.stun_waiters.insert(tx, reply);
            }
            Command::AwaitRegistered { relay, reply } => {
                let waiters = self.reg_waiters.entry(relay).or_default();
                waiters.retain(|w| !w.is_closed());
                waiters.push(reply);
            }
            Command::SetSelf { class, candidates } => self.punch.set_self(class, candidates),
            Command::Learn { peer, record } => self.punch.learn(now, peer, &record),
        }
    }

    fn drain(&mut self) {
        while let Some(out) = self.punch.poll_output() {
            match out {
                punch::Output::Transmit { to, datagram } => {
                    if let Some(s) = self.socket.upgrade() {
                        s.send_to(&datagram, to);
                    }
                }
                punch::Output::Event(event) => {
                    let peer = match &event {
                        punch::Event::Direct { peer, .. }
                        | punch::Event::Relayed { peer, .. }
                        | punch::Event::Unreachable { peer } => *peer,
                    };
                    for w in self.path_waiters.remove(&peer).unwrap_or_default() {
                        let _ = w.send(event.clone());
                    }
                }
            }
        }
    }
}

/// Binds the node's UDP socket at `listen`, runs a quinn endpoint on it (serving `server`),
/// then classifies the NAT through `config.stun` (the endpoint must be running for that: it is
/// what reads the socket).
pub async fn endpoint(
    listen: SocketAddr,
    server: quinn::ServerConfig,
    key: &Keypair,
    config: NatConfig,
) -> std::io::Result<(quinn::Endpoint, Nat)> {
    let (socket, events) = NatSocket::bind(listen)?;
    let mut endpoint_config = quinn::EndpointConfig::default();
    // The socket tells QUIC from STUN and relay packets by QUIC's fixed bit (RFC 9443), so
    // peers must never grease it toward us.
    endpoint_config.grease_quic_bit(false);
    let endpoint = quinn::Endpoint::new_with_abstract_socket(
        endpoint_config,
        Some(server),
        socket.clone(),
        Arc::new(quinn::TokioRuntime),
    )?;
    let nat = Nat::start(socket, events, key.clone(), config).await;
    Ok((endpoint, nat))
}
