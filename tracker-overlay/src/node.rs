//! [`OverlayNode`]: one node of the ring, as a sans-IO state machine.
//!
//! # Call contract
//!
//! - Inputs: [`OverlayNode::handle_message`] for every message from another node (after
//!   [`crate::msg::Message::decode`]), [`OverlayNode::handle_timeout`] when the instant from
//!   [`OverlayNode::poll_timeout`] has come, [`OverlayNode::handle_unreachable`] when the
//!   transport could not reach a node; and the commands [`OverlayNode::create`],
//!   [`OverlayNode::join`], [`OverlayNode::leave`], [`OverlayNode::lookup`] and
//!   [`OverlayNode::transact`].
//! - Outputs: after any input, drain [`OverlayNode::poll_output`] (messages to send and events
//!   for the application), then ask [`OverlayNode::poll_timeout`] again.
//!
//! The node never reads a clock or a socket and draws randomness from the seed in its
//! [`Config`]; the real node and `sim` drive the same code. Messages a node sends to itself are
//! handled inside the call, without the transport.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap as HashMap;

use crate::commit::{Acceptor, ClientTx, Leader, Participant};
use crate::id::{NodeRef, RingId};
use crate::msg::{Body, Message, Op, Routed};
use crate::repair::{Fetch, Recovery};
use crate::ring::Watch;
use crate::store::Store;
use crate::tx::{Abort, TxId, TxOp};
use crate::Value;

/// How long a lookup waits for its answer before it goes out again.
const LOOKUP_RETRY: Duration = Duration::from_millis(1000);

/// How a node behaves; the defaults suit a real deployment, tests shorten the periods.
#[derive(Clone, Debug)]
pub struct Config {
    /// Replicas per key (`r`); reads and commits need a majority of them.
    pub replicas: u8,
    /// Length of the successor list (crash tolerance of the ring).
    pub succ_list_len: usize,
    /// Number of fingers (long links at distances 2^127, 2^126, …).
    pub fingers: usize,
    /// How often a node checks its successor (the ring's heartbeat).
    pub stabilize_every: Duration,
    /// How often one finger is refreshed.
    pub fix_finger_every: Duration,
    /// How often a node repairs its replicas (recovery of unsure ranges, anti-entropy).
    pub repair_every: Duration,
    /// How often a node looks up its replicated transaction managers again.
    pub rtm_refresh_every: Duration,
    /// The failure detector's initial timeout; it grows for nodes suspected wrongly.
    pub suspect_after: Duration,
    /// How long a quorum read or a repair fetch may take.
    pub request_timeout: Duration,
    /// How long a lookup keeps retrying (through other first hops) before it gives up: long
    /// enough to outlast the failure detector when nodes on its path crashed.
    pub lookup_timeout: Duration,
    /// How long a transaction may take before its client is told [`Abort::Timeout`].
    pub tx_timeout: Duration,
    /// How long a replicated manager waits for a decision before it takes over.
    pub takeover_after: Duration,
    /// How often a joining node retries its join, and how long a merge waits between probes.
    pub retry_every: Duration,
    /// Routed messages are dropped after this many hops.
    pub max_hops: u8,
    /// Seed of the node's random choices (transaction ids).
    pub seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            replicas: 4,
            succ_list_len: 8,
            fingers: 40,
            stabilize_every: Duration::from_millis(500),
            fix_finger_every: Duration::from_millis(250),
            repair_every: Duration::from_secs(2),
            rtm_refresh_every: Duration::from_secs(5),
            suspect_after: Duration::from_millis(1500),
            request_timeout: Duration::from_secs(4),
            lookup_timeout: Duration::from_secs(8),
            tx_timeout: Duration::from_secs(10),
            takeover_after: Duration::from_secs(2),
            retry_every: Duration::from_secs(2),
            max_hops: 48,
            seed: 0,
        }
    }
}

impl Config {
    /// A majority of `replicas`.
    pub fn majority(&self) -> usize {
        usize::from(self.replicas) / 2 + 1
    }

    /// How many acceptors a commit has: `2f + 1` for the `f = ⌊(r - 1) / 2⌋` failures a
    /// majority of `r` replicas tolerates (three for `r = 4`: more would cost messages without
    /// tolerating more).
    pub fn acceptors(&self) -> u8 {
        (self.replicas.max(1) - 1) / 2 * 2 + 1
    }
}

/// Something for the driver to do.
#[derive(Debug)]
// Outputs are moved once, from the node to its driver; boxing messages would cost an
// allocation for each of them.
#[allow(clippy::large_enum_variant)]
pub enum Output {
    /// Send `msg` to `to`.
    Transmit {
        /// The receiver.
        to: NodeRef,
        /// The message.
        msg: Message,
    },
    /// Tell the application.
    Event(Event),
}

/// What the application learns.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The node is part of a ring now.
    Joined,
    /// A node already sits at this node's position; it cannot join.
    JoinRejected,
    /// The node handed its range over and left; the driver may close its connections.
    Left,
    /// A lookup finished.
    LookupDone {
        /// The id [`OverlayNode::lookup`] returned.
        req: u64,
        /// The responsible node and the hops the lookup took, or `None` on timeout.
        found: Option<(NodeRef, u8)>,
    },
    /// A message sent with [`OverlayNode::deliver_to`] reached this node, which is
    /// responsible for `key`.
    Delivered {
        /// The position it was sent to.
        key: RingId,
        /// The node that sent it (as it named itself: routed messages are not authenticated
        /// end to end).
        origin: NodeRef,
        /// The application's bytes.
        payload: Vec<u8>,
    },
    /// A transaction finished.
    TxDone {
        /// The id [`OverlayNode::transact`] returned.
        req: u64,
        /// Each operation's result (the value after it), or why it aborted.
        result: Result<Vec<Option<Value>>, Abort>,
    },
}

/// Where a node stands in the ring's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Not part of a ring yet.
    Idle,
    /// Looking for its successor through a bootstrap node.
    Joining,
    /// Part of a ring.
    Member,
    /// Handing its range over; waits for the successor's acknowledgements.
    Leaving,
    /// Handed over and gone.
    Left,
}

/// Counters of a node's work, for the benchmarks, the sim and `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Messages sent, by kind.
    pub sent: BTreeMap<&'static str, u64>,
    /// Routed messages dropped for exceeding the hop limit.
    pub dropped_hops: u64,
    /// Nodes this node suspected.
    pub suspicions: u64,
    /// Suspicions that turned out wrong (the node spoke again).
    pub false_suspicions: u64,
    /// Transactions this node managed that committed.
    pub commits: u64,
    /// Transactions this node managed that aborted.
    pub aborts: u64,
    /// Transactions decided by a replicated manager that took over.
    pub takeovers: u64,
    /// Ranges this node recovered from its siblings after taking them over.
    pub recovered: u64,
    /// Ring unifications this node took part in (ring merge gossip).
    pub unifications: u64,
}

/// Timers are data: what to do when a deadline passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Timer {
    Stabilize,
    FixFinger,
    Repair,
    RefreshRtms,
    JoinRetry,
    Lookup(u64),
    LookupRetry(u64),
    Client(u64),
    ReadPhase(u64),
    Reread(u64, usize, u8),
    ResendReads(u64),
    ResendPrepares(TxId),
    Takeover(TxId, u8),
    AskDecision(TxId),
    ForgetTx(TxId),
    LeaveDeadline,
    Fetch(u64),
}

/// Why a node looked something up.
#[derive(Clone, Copy, Debug)]
pub(crate) enum LookupFor {
    App,
    Finger(usize),
    Rtm(u8),
    /// Our successor in another ring (ring unification).
    Merge,
}

/// The overlay node. See the module docs for the call contract.
pub struct OverlayNode {
    pub(crate) me: NodeRef,
    pub(crate) cfg: Config,
    pub(crate) phase: Phase,
    pub(crate) bootstrap: Option<NodeRef>,
    /// The predecessor; kept while suspected (so the range stays defined) until a live node
    /// replaces it.
    pub(crate) pred: Option<NodeRef>,
    pub(crate) pred_suspected: bool,
    /// The predecessor our latest joiner got, to answer its retransmitted join.
    pub(crate) joined_after: Option<NodeRef>,
    /// Hand-over chunks sent while leaving and not acknowledged yet.
    pub(crate) handovers_unacked: Vec<u64>,
    /// The successor list; empty when the node is alone.
    pub(crate) succs: Vec<NodeRef>,
    pub(crate) fingers: Vec<Option<NodeRef>>,
    pub(crate) next_finger: usize,
    pub(crate) watches: HashMap<RingId, Watch>,
    /// Nodes suspected and not heard from since, probed for ring merge.
    pub(crate) suspected: BTreeMap<RingId, (NodeRef, Instant)>,
    /// No new ring unification before this (one wave of gossip reaches a node many times).
    pub(crate) unify_quiet_until: Instant,
    pub(crate) rtms: Vec<Option<NodeRef>>,
    pub(crate) store: Store,
    pub(crate) lookups: HashMap<u64, (LookupFor, RingId)>,
    /// Replica reads in flight: read id → (client request, key index, replica index).
    pub(crate) reads: HashMap<u64, (u64, usize, u8)>,
    pub(crate) clients: HashMap<u64, ClientTx>,
    pub(crate) leaders: HashMap<TxId, Leader>,
    pub(crate) acceptors: HashMap<(TxId, u8), Acceptor>,
    pub(crate) participants: HashMap<TxId, Vec<Participant>>,
    /// Transactions this node took part in and saw decided (for a while).
    pub(crate) decided: rustc_hash::FxHashSet<TxId>,
    pub(crate) fetches: HashMap<u64, Fetch>,
    pub(crate) repair_cursor: u32,
    pub(crate) recovery: Option<Recovery>,
    pub(crate) timers: BTreeMap<(Instant, u64), Timer>,
    timer_seq: u64,
    pub(crate) next_req: u64,
    rng: u64,
    out: VecDeque<Output>,
    local: VecDeque<Message>,
    pub(crate) now: Instant,
    pub(crate) stats: Stats,
}

impl OverlayNode {
    /// A node that is not part of a ring yet; [`OverlayNode::create`] or
    /// [`OverlayNode::join`] next.
    pub fn new(now: Instant, me: NodeRef, cfg: Config) -> Self {
        let replicas = usize::from(cfg.replicas.max(1));
        let rng = cfg.seed ^ u64::from_le_bytes(me.peer[..8].try_into().unwrap_or_default());
        Self {
            me,
            phase: Phase::Idle,
            bootstrap: None,
            pred: None,
            pred_suspected: false,
            joined_after: None,
            handovers_unacked: Vec::new(),
            succs: Vec::new(),
            fingers: vec![None; cfg.fingers.min(127)],
            next_finger: 0,
            watches: HashMap::default(),
            suspected: BTreeMap::new(),
            unify_quiet_until: now,
            rtms: vec![None; replicas],
            store: Store::new(),
            lookups: HashMap::default(),
            reads: HashMap::default(),
            clients: HashMap::default(),
            leaders: HashMap::default(),
            acceptors: HashMap::default(),
            participants: HashMap::default(),
            decided: rustc_hash::FxHashSet::default(),
            fetches: HashMap::default(),
            repair_cursor: 0,
            recovery: None,
            timers: BTreeMap::new(),
            timer_seq: 0,
            next_req: 1,
            rng,
            out: VecDeque::new(),
            local: VecDeque::new(),
            now,
            stats: Stats::default(),
            cfg,
        }
    }

    /// This node.
    pub fn me(&self) -> NodeRef {
        self.me
    }

    /// Where the node stands.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The predecessor, if known and not suspected.
    pub fn pred(&self) -> Option<NodeRef> {
        self.pred.filter(|_| !self.pred_suspected)
    }

    /// The successor list.
    pub fn succs(&self) -> &[NodeRef] {
        &self.succs
    }

    /// The distinct fingers.
    pub fn fingers(&self) -> Vec<NodeRef> {
        let mut out: Vec<NodeRef> = self.fingers.iter().flatten().copied().collect();
        out.dedup();
        out
    }

    /// The node's share of the store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// How many transactions this node is still working on (as client, leader, acceptor or
    /// participant).
    pub fn pending(&self) -> usize {
        self.clients.len() + self.participants.len()
    }

    /// Starts a new ring with this node alone in it; it holds the whole key space.
    pub fn create(&mut self, now: Instant) {
        self.now = now;
        self.phase = Phase::Member;
        self.pred = None;
        self.succs.clear();
        self.store.mark_sure(self.me.id, self.me.id);
        self.start_maintenance(now);
        self.emit(Event::Joined);
    }

    /// Joins the ring that `bootstrap` is part of; [`Event::Joined`] follows.
    pub fn join(&mut self, now: Instant, bootstrap: NodeRef) {
        self.now = now;
        self.phase = Phase::Joining;
        self.bootstrap = Some(bootstrap);
        self.send_join();
        self.set_timer(now + self.cfg.retry_every, Timer::JoinRetry);
    }

    /// Looks up the node responsible for `key`; [`Event::LookupDone`] follows.
    pub fn lookup(&mut self, now: Instant, key: RingId) -> u64 {
        self.now = now;
        let req = self.new_req();
        self.start_lookup(req, key, LookupFor::App);
        self.drain_local();
        req
    }

    /// Runs `ops` as one transaction; [`Event::TxDone`] follows.
    pub fn transact(&mut self, now: Instant, ops: Vec<TxOp>) -> u64 {
        self.now = now;
        let req = self.new_req();
        self.start_client(req, ops);
        self.drain_local();
        req
    }

    /// Routes `payload` to the node responsible for `key`, which reports it as
    /// [`Event::Delivered`]. Best effort: a message lost with a crashed node on its path is
    /// not sent again, so callers send what they must repeat periodically (reports, not
    /// commands). A payload over [`crate::msg::MAX_DELIVER_LEN`] is dropped (`false`).
    pub fn deliver_to(&mut self, now: Instant, key: RingId, payload: Vec<u8>) -> bool {
        self.now = now;
        if payload.len() > crate::msg::MAX_DELIVER_LEN {
            return false;
        }
        self.route_to(key, Op::Deliver { payload });
        self.drain_local();
        true
    }

    /// Leaves the ring gracefully: the range and its data go to the successor, the neighbours
    /// are told; [`Event::Left`] follows.
    pub fn leave(&mut self, now: Instant) {
        self.now = now;
        self.leave_ring();
        self.drain_local();
    }

    /// Takes one message from another node.
    pub fn handle_message(&mut self, now: Instant, msg: Message) {
        self.now = now;
        if self.phase == Phase::Left {
            return;
        }
        self.dispatch(msg);
        self.drain_local();
    }

    /// The transport could not reach `node` (dial failed, connection lost): the failure
    /// detector suspects it at once.
    pub fn handle_unreachable(&mut self, now: Instant, node: NodeRef) {
        self.now = now;
        if node != self.me {
            self.suspect(node);
        }
        self.drain_local();
    }

    /// Runs the timers that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        while let Some((&(at, seq), _)) = self.timers.first_key_value() {
            if at > now {
                break;
            }
            let Some(timer) = self.timers.remove(&(at, seq)) else {
                break;
            };
            if self.phase != Phase::Left {
                self.on_timer(timer);
            }
            self.drain_local();
        }
    }

    /// When [`OverlayNode::handle_timeout`] should run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first_key_value().map(|(&(at, _), _)| at)
    }

    /// The next message to send or event to report.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn on_timer(&mut self, timer: Timer) {
        match timer {
            Timer::Stabilize => self.stabilize(),
            Timer::FixFinger => self.fix_finger(),
            Timer::Repair => self.repair(),
            Timer::RefreshRtms => self.refresh_rtms(),
            Timer::JoinRetry => {
                if self.phase == Phase::Joining {
                    self.send_join();
                    self.set_timer(self.now + self.cfg.retry_every, Timer::JoinRetry);
                }
            }
            Timer::Lookup(req) => {
                if let Some((LookupFor::App, _)) = self.lookups.remove(&req) {
                    self.emit(Event::LookupDone { req, found: None });
                }
            }
            Timer::LookupRetry(req) => self.retry_lookup(req),
            Timer::Client(req) => self.client_timeout(req),
            Timer::ReadPhase(req) => self.read_phase_timeout(req),
            Timer::Reread(req, i, j) => self.reread(req, i, j),
            Timer::ResendReads(req) => self.resend_reads(req),
            Timer::ResendPrepares(tid) => self.resend_prepares(tid),
            Timer::Takeover(tid, slot) => self.takeover(tid, slot),
            Timer::AskDecision(tid) => self.ask_decision(tid),
            Timer::ForgetTx(tid) => self.forget_tx(tid),
            Timer::LeaveDeadline => self.finish_leave(),
            Timer::Fetch(req) => self.fetch_timeout(req),
        }
    }

    fn dispatch(&mut self, msg: Message) {
        let from = msg.from;
        if self.phase == Phase::Leaving {
            // Only the hand-over matters now; routed messages go on to the successor.
            match msg.body {
                Body::Handover { .. } | Body::HandoverAck { .. } => {}
                Body::Route(routed) => {
                    if let Some(succ) = self.succs.first().copied() {
                        self.send(succ, Body::Route(routed));
                    }
                    return;
                }
                _ => return,
            }
        }
        self.heard_from(from);
        match msg.body {
            Body::Route(routed) => self.route(from, *routed),
            Body::JoinAccept { pred, succs } => self.on_join_accept(from, pred, succs),
            Body::JoinReject => {
                if self.phase == Phase::Joining {
                    self.phase = Phase::Idle;
                    self.emit(Event::JoinRejected);
                }
            }
            Body::NewSucc { succs } => self.on_new_succ(from, succs),
            Body::Stabilize => self.on_stabilize(from),
            Body::Neighbors { pred, succs } => self.on_neighbors(from, pred, succs),
            Body::LeaveSucc { succs } => self.on_leave_succ(from, succs),
            Body::Handover {
                id,
                last,
                leaving,
                from: lo,
                to,
                sure,
                items,
            } => self.on_handover(from, id, (last, leaving), (lo, to, sure), items),
            Body::HandoverAck { id } => self.on_handover_ack(id),
            Body::Found { req, node, hops } => self.on_found(req, node, hops),
            Body::Ping { nonce } => {
                let succ = self.succs.first().copied();
                self.send(from, Body::Pong { nonce, succ });
            }
            Body::Pong { succ, .. } => self.on_pong(succ),
            Body::Unify { contact, ttl } => self.unify(contact, ttl),
            Body::ReadReply {
                req,
                sure,
                item,
                locked,
            } => self.on_read_reply(req, sure && !locked, locked, item),
            Body::Items {
                req,
                covered_to,
                sure,
                items,
            } => self.on_items(req, covered_to, sure, items),
            Body::Vote(vote) => self.on_vote(*vote),
            Body::Accepted {
                tid,
                slot,
                instance,
                ballot,
                prepared,
                tp,
            } => self.on_accepted(tid, slot, instance, ballot, prepared, tp),
            Body::Prepare1a { tid, ballot, slot } => self.on_prepare1a(from, tid, ballot, slot),
            Body::Promise {
                tid,
                slot,
                ballot,
                accepted,
            } => self.on_promise(tid, slot, ballot, accepted),
            Body::Decide { tid, commit } => self.on_decide(tid, commit),
            Body::AskDecision { tid } => self.on_ask_decision(from, tid),
        }
    }

    // Routing.

    /// Whether this node is responsible for `key`: it lies in `(pred, me]`, or the node is
    /// alone.
    pub fn is_responsible(&self, key: RingId) -> bool {
        match self.pred {
            Some(pred) => key.in_half_open(pred.id, self.me.id),
            None => self.succs.is_empty() && self.phase == Phase::Member,
        }
    }

    /// Starts routing `op` to the node responsible for `key`.
    pub(crate) fn route_to(&mut self, key: RingId, op: Op) {
        let routed = Routed {
            key,
            hops: 0,
            origin: self.me,
            op,
        };
        self.route(self.me, routed);
    }

    fn route(&mut self, from: NodeRef, mut routed: Routed) {
        if self.phase != Phase::Member {
            return; // A joining node does not route; the origin retries.
        }
        if self.is_responsible(routed.key) {
            self.deliver(routed);
            return;
        }
        if routed.hops >= self.cfg.max_hops {
            self.stats.dropped_hops += 1;
            return;
        }
        // A message with no hops yet was handed to us by a node outside our routing tables
        // (ring unification asks a node of another ring): route it from here, not as the hop
        // after `from`.
        let prev = if routed.hops == 0 { self.me } else { from };
        let next = self.next_hop(prev, routed.key);
        match next {
            Some(next) => {
                routed.hops += 1;
                self.send(next, Body::Route(Box::new(routed)));
            }
            None => self.deliver(routed),
        }
    }

    /// The next hop towards `key`: the successor if the key lies between us; the predecessor
    /// if the previous hop took us for responsible but the key lies before our predecessor (it
    /// sits on a branch); otherwise the farthest known node that precedes the key.
    fn next_hop(&self, from: NodeRef, key: RingId) -> Option<NodeRef> {
        let succ = *self.succs.first()?;
        if let Some(pred) = self.pred.filter(|_| !self.pred_suspected) {
            if from != self.me && key.in_half_open(from.id, pred.id) && from.id != pred.id {
                return Some(pred);
            }
        }
        if key.in_half_open(self.me.id, succ.id) {
            return Some(succ);
        }
        let mut best = succ;
        let mut best_d = self.me.id.distance_to(succ.id);
        for n in self.fingers.iter().flatten().chain(self.succs.iter()) {
            let d = self.me.id.distance_to(n.id);
            if n.id.in_open(self.me.id, key) && d > best_d {
                best = *n;
                best_d = d;
            }
        }
        Some(best)
    }

    fn deliver(&mut self, routed: Routed) {
        let origin = routed.origin;
        match routed.op {
            Op::Lookup { req } => self.send(
                origin,
                Body::Found {
                    req,
                    node: self.me,
                    hops: routed.hops,
                },
            ),
            Op::Join => self.on_join(origin),
            Op::Read { req } => {
                let sure = self.store.is_sure(routed.key);
                let item = self.store.get(routed.key).cloned();
                let locked = self.store.is_write_locked(routed.key);
                self.send(
                    origin,
                    Body::ReadReply {
                        req,
                        sure,
                        item,
                        locked,
                    },
                );
            }
            Op::Fetch { req, to } => self.on_fetch(origin, req, routed.key, to),
            Op::Prepare(prepare) => self.on_prepare(routed.key, *prepare),
            Op::Decide { tid, commit } => self.on_decide(tid, commit),
            Op::Deliver { payload } => self.emit(Event::Delivered {
                key: routed.key,
                origin,
                payload,
            }),
        }
    }

    pub(crate) fn start_lookup(&mut self, req: u64, key: RingId, purpose: LookupFor) {
        self.lookups.insert(req, (purpose, key));
        self.set_timer(self.now + self.cfg.lookup_timeout, Timer::Lookup(req));
        self.set_timer(self.now + LOOKUP_RETRY, Timer::LookupRetry(req));
        self.route_to(key, Op::Lookup { req });
    }

    /// A lookup not answered yet goes out again, through another first hop: the path it took
    /// may have lost it with a node that crashed.
    fn retry_lookup(&mut self, req: u64) {
        let Some(&(purpose, key)) = self.lookups.get(&req) else {
            return;
        };
        if matches!(purpose, LookupFor::Merge) {
            // Routed through the other ring; our own would only find our successor.
            return;
        }
        self.reroute_to(key, Op::Lookup { req });
        self.set_timer(self.now + LOOKUP_RETRY, Timer::LookupRetry(req));
    }

    /// Like `route_to`, for a retransmission: the first hop is drawn at random among the
    /// closest few nodes that precede the key, so a retry does not follow a broken path again.
    pub(crate) fn reroute_to(&mut self, key: RingId, op: Op) {
        let routed = Routed {
            key,
            hops: 0,
            origin: self.me,
            op,
        };
        if self.phase != Phase::Member || self.is_responsible(key) {
            self.route(self.me, routed);
            return;
        }
        let mut candidates: Vec<NodeRef> = self
            .fingers
            .iter()
            .flatten()
            .chain(self.succs.iter())
            .copied()
            .filter(|n| n.id.in_open(self.me.id, key))
            .collect();
        candidates.sort_by_key(|n| std::cmp::Reverse(self.me.id.distance_to(n.id)));
        candidates.dedup();
        candidates.truncate(3);
        match candidates.len() {
            0 => self.route(self.me, routed),
            n => {
                let next = candidates[self.random() as usize % n];
                let mut routed = routed;
                routed.hops = 1;
                self.send(next, Body::Route(Box::new(routed)));
            }
        }
    }

    fn on_found(&mut self, req: u64, node: NodeRef, hops: u8) {
        match self.lookups.remove(&req).map(|(purpose, _)| purpose) {
            Some(LookupFor::App) => self.emit(Event::LookupDone {
                req,
                found: Some((node, hops)),
            }),
            Some(LookupFor::Finger(i)) => {
                if let Some(f) = self.fingers.get_mut(i) {
                    *f = (node != self.me).then_some(node);
                }
            }
            Some(LookupFor::Rtm(slot)) => {
                if let Some(r) = self.rtms.get_mut(usize::from(slot)) {
                    *r = Some(node);
                }
            }
            Some(LookupFor::Merge) => self.reconsider(node),
            None => {}
        }
    }

    // Plumbing.

    pub(crate) fn send(&mut self, to: NodeRef, body: Body) {
        let msg = Message {
            from: self.me,
            body,
        };
        if to == self.me {
            self.local.push_back(msg);
            return;
        }
        *self.stats.sent.entry(msg.kind()).or_default() += 1;
        self.out.push_back(Output::Transmit { to, msg });
    }

    pub(crate) fn emit(&mut self, event: Event) {
        self.out.push_back(Output::Event(event));
    }

    fn drain_local(&mut self) {
        while let Some(msg) = self.local.pop_front() {
            if self.phase == Phase::Left {
                self.local.clear();
                break;
            }
            self.dispatch(msg);
        }
    }

    pub(crate) fn set_timer(&mut self, at: Instant, timer: Timer) {
        self.timer_seq += 1;
        self.timers.insert((at, self.timer_seq), timer);
    }

    pub(crate) fn new_req(&mut self) -> u64 {
        self.next_req += 1;
        self.next_req
    }

    /// The next pseudo-random number (splitmix64 over the seeded state).
    pub(crate) fn random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}
