//! The overlay (`tracker_overlay::OverlayNode`, the node's own code) as a simulated host, and
//! the ring experiment: N nodes join, look keys up, churn, split and heal.
//!
//! [`OverlayCore`] turns the node's transmits into the engine's connections and messages as the
//! QUIC driver in `peer::overlay_net` does: a message to a node without a connection dials it
//! first and waits; a failed dial or a lost connection is reported to the node, whose failure
//! detector suspects the peer at once. Message sizes are the real encoded sizes.

use std::collections::VecDeque;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rustc_hash::FxHashMap as HashMap;
use serde::Serialize;
use tracker_overlay::{
    Config, Event, Message, NodeRef, Output as NodeOutput, OverlayNode, Phase, RingId,
};

use crate::engine::{Core, Engine, Input, Output, Step};
use crate::hosted::{addr_host, host_addr};
use crate::net::{HostId, HostNet, NatType};
use crate::scenario::Traversal;

enum Link {
    Dialing(Vec<Message>),
    Up,
}

/// An overlay node hosted by the engine.
pub struct OverlayCore {
    node: OverlayNode,
    links: HashMap<HostId, Link>,
    refs: HashMap<HostId, NodeRef>,
    out: VecDeque<Output<Message, Event>>,
}

impl OverlayCore {
    /// Wraps a node.
    pub fn new(node: OverlayNode) -> Self {
        Self {
            node,
            links: HashMap::default(),
            refs: HashMap::default(),
            out: VecDeque::new(),
        }
    }

    /// The node.
    pub fn node(&self) -> &OverlayNode {
        &self.node
    }

    /// The node, to give it commands.
    pub fn node_mut(&mut self) -> &mut OverlayNode {
        &mut self.node
    }

    fn pump(&mut self) {
        while let Some(out) = self.node.poll_output() {
            match out {
                NodeOutput::Transmit { to, msg } => {
                    let Some(host) = addr_host(to.addr) else {
                        continue;
                    };
                    self.refs.insert(host, to);
                    match self.links.get_mut(&host) {
                        Some(Link::Up) => self.out.push_back(send(host, msg)),
                        Some(Link::Dialing(queue)) => queue.push(msg),
                        None => {
                            self.links.insert(host, Link::Dialing(vec![msg]));
                            self.out.push_back(Output::Dial(host));
                        }
                    }
                }
                NodeOutput::Event(e) => self.out.push_back(Output::Event(e)),
            }
        }
    }
}

fn send(to: HostId, msg: Message) -> Output<Message, Event> {
    let bytes = msg.encode().len() as u64;
    Output::Send {
        to,
        kind: msg.kind(),
        msg,
        bytes,
        bulk: false,
        tag: 0,
    }
}

impl Core for OverlayCore {
    type Msg = Message;
    type Event = Event;

    fn handle(&mut self, now: std::time::Instant, input: Input<Message>) {
        match input {
            Input::Connected(host) => {
                if let Some(Link::Dialing(queue)) = self.links.insert(host, Link::Up) {
                    for msg in queue {
                        self.out.push_back(send(host, msg));
                    }
                }
            }
            Input::Disconnected(host) => {
                self.links.remove(&host);
                if let Some(node) = self.refs.get(&host).copied() {
                    self.node.handle_unreachable(now, node);
                }
            }
            Input::Message { msg, .. } => self.node.handle_message(now, msg),
            // The overlay sends no bulk messages.
            Input::Sent { .. } | Input::Arriving { .. } | Input::Failed { .. } => {}
            Input::Timeout => self.node.handle_timeout(now),
        }
        self.pump();
    }

    fn poll(&mut self) -> Option<Output<Message, Event>> {
        if self.out.is_empty() {
            self.pump();
        }
        self.out.pop_front()
    }

    fn poll_timeout(&self) -> Option<std::time::Instant> {
        self.node.poll_timeout()
    }
}

/// A ring experiment.
#[derive(Debug, Clone)]
pub struct RingExperiment {
    /// Nodes in the ring (kept constant under churn: each leaver is replaced).
    pub nodes: usize,
    /// Seed of everything random.
    pub seed: u64,
    /// Time between two joins while the ring grows.
    pub join_every: Duration,
    /// Time after the last join before measuring.
    pub warmup: Duration,
    /// How long lookups are measured.
    pub measure: Duration,
    /// Lookups each node starts per minute.
    pub lookups_per_min: f64,
    /// Median session length under churn (exponential sessions; half leave gracefully, half
    /// crash); `None`: no churn.
    pub churn_median: Option<Duration>,
    /// A 50/50 split (hosts by parity) from this long into the measurement, for the second
    /// duration; then the network heals.
    pub partition: Option<(Duration, Duration)>,
}

impl Default for RingExperiment {
    fn default() -> Self {
        Self {
            nodes: 1000,
            seed: 1,
            join_every: Duration::from_millis(50),
            warmup: Duration::from_secs(60),
            measure: Duration::from_secs(300),
            lookups_per_min: 6.0,
            churn_median: None,
            partition: None,
        }
    }
}

/// What a ring experiment measured.
#[derive(Debug, Clone, Serialize)]
pub struct RingReport {
    /// Nodes.
    pub nodes: usize,
    /// Lookups started during the measurement.
    pub lookups: u64,
    /// Lookups answered within the lookup timeout.
    pub answered: u64,
    /// Answers that named the node responsible in the true ring when the answer arrived.
    pub correct: u64,
    /// `answered / lookups`.
    pub success_ratio: f64,
    /// Mean hops of answered lookups.
    pub mean_hops: f64,
    /// `log2(nodes) / 2 + 1`, the bound the issue sets.
    pub hop_bound: f64,
    /// Nodes that left or crashed during the measurement.
    pub departures: u64,
    /// Whether the live nodes formed one consistent ring at the end.
    pub ring_consistent: bool,
    /// After a partition healed, how long until the live nodes formed one consistent ring
    /// again (checked every 250 ms); `None` if no partition or not by the end.
    pub merge_seconds: Option<f64>,
    /// Messages sent per node per second, over the measurement.
    pub messages_per_node_s: f64,
    /// Ring unification (merge gossip) messages sent.
    pub unify_messages: u64,
    /// Engine events processed.
    pub events: u64,
}

/// How often a healed ring is checked for consistency.
const MERGE_CHECK_NS: u64 = 250_000_000;

/// Longer than a lookup's timeout: lookups start no later than this before the end.
const LOOKUP_GRACE: Duration = Duration::from_secs(12);

enum Ext {
    Join,
    Lookup(HostId),
    Depart(HostId),
    Split,
    Heal,
    CheckMerged,
}

struct Ring {
    engine: Engine<OverlayCore, Ext>,
    rng: ChaCha8Rng,
    members: Vec<HostId>,
    cfg: Config,
}

impl Ring {
    fn new_host(&mut self) -> (HostId, NodeRef) {
        let pos = (
            self.rng.gen_range(0.0..200.0),
            self.rng.gen_range(0.0..200.0),
        );
        let access = self.rng.gen_range(2.0..15.0);
        let host = self
            .engine
            .add_host(HostNet::new(pos, access, 50e6, 100e6, NatType::Open));
        let peer = *blake3::hash(format!("sim overlay node {}", host.0).as_bytes()).as_bytes();
        (host, NodeRef::new(peer, host_addr(host)))
    }

    fn start(&mut self, bootstrap: Option<NodeRef>) -> HostId {
        let (host, me) = self.new_host();
        let now = self.engine.instant(self.engine.now());
        let cfg = Config {
            seed: self.rng.gen(),
            ..self.cfg.clone()
        };
        let mut node = OverlayNode::new(now, me, cfg);
        match bootstrap {
            Some(b) => node.join(now, b),
            None => node.create(now),
        }
        self.engine.start(host, OverlayCore::new(node));
        host
    }

    fn node(&self, host: HostId) -> Option<&OverlayNode> {
        self.engine.core(host).map(OverlayCore::node)
    }

    fn member_refs(&self) -> Vec<(RingId, HostId)> {
        let mut ring: Vec<(RingId, HostId)> = self
            .members
            .iter()
            .filter_map(|&h| {
                self.node(h)
                    .filter(|n| n.phase() == Phase::Member)
                    .map(|n| (n.me().id, h))
            })
            .collect();
        ring.sort();
        ring
    }

    fn responsible(&self, key: RingId) -> Option<HostId> {
        let ring = self.member_refs();
        let i = ring.partition_point(|(id, _)| *id < key);
        ring.get(i).or(ring.first()).map(|&(_, h)| h)
    }

    fn consistent(&self) -> bool {
        let ring = self.member_refs();
        let n = ring.len();
        (0..n).all(|i| {
            let Some(node) = self.node(ring[i].1) else {
                return false;
            };
            let succ = self.node(ring[(i + 1) % n].1).map(|s| s.me());
            let pred = self.node(ring[(i + n - 1) % n].1).map(|p| p.me());
            n == 1 || (node.succs().first().copied() == succ && node.pred() == pred)
        })
    }

    fn random_member(&mut self) -> Option<NodeRef> {
        let ring = self.member_refs();
        if ring.is_empty() {
            return None;
        }
        let (_, h) = ring[self.rng.gen_range(0..ring.len())];
        self.node(h).map(|n| n.me())
    }

    fn schedule_lookup(&mut self, host: HostId, per_min: f64) {
        let gap = -(1.0 - self.rng.gen::<f64>()).ln() * 60.0 / per_min;
        let at = self.engine.now() + (gap * 1e9) as u64;
        self.engine.schedule(at, Ext::Lookup(host));
    }

    fn schedule_departure(&mut self, host: HostId, median: Duration) {
        let mean = median.as_secs_f64() / std::f64::consts::LN_2;
        let session = -(1.0 - self.rng.gen::<f64>()).ln() * mean;
        let at = self.engine.now() + (session * 1e9) as u64;
        self.engine.schedule(at, Ext::Depart(host));
    }
}

/// Runs a ring experiment.
pub fn run_ring(x: &RingExperiment) -> RingReport {
    let cfg = Config {
        seed: x.seed,
        ..Config::default()
    };
    let mut ring = Ring {
        engine: Engine::new(x.seed, Traversal::None, 0.05, 0.0),
        rng: ChaCha8Rng::seed_from_u64(x.seed ^ 0x5eed),
        members: Vec::new(),
        cfg,
    };
    let first = ring.start(None);
    ring.members.push(first);
    let step = x.join_every.as_nanos() as u64;
    for i in 1..x.nodes {
        ring.engine.schedule(step * i as u64, Ext::Join);
    }
    let measure_from = step * x.nodes as u64 + x.warmup.as_nanos() as u64;
    let end = measure_from + x.measure.as_nanos() as u64;
    let mut lookups: HashMap<(HostId, u64), RingId> = HashMap::default();
    let (mut started, mut answered, mut correct, mut hops, mut departures) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut events = Vec::new();
    let mut sent_at_start = 0u64;
    let mut armed = false;
    let mut healed_at: Option<u64> = None;
    let mut merge_seconds: Option<f64> = None;
    loop {
        if !armed && ring.engine.now() >= measure_from {
            armed = true;
            sent_at_start = ring.engine.traffic().values().map(|t| t.count).sum();
            if let Some((after, length)) = x.partition {
                let at = ring.engine.now() + after.as_nanos() as u64;
                ring.engine.schedule(at, Ext::Split);
                ring.engine
                    .schedule(at + length.as_nanos() as u64, Ext::Heal);
            }
            for h in ring.members.clone() {
                ring.schedule_lookup(h, x.lookups_per_min);
                if let Some(median) = x.churn_median {
                    ring.schedule_departure(h, median);
                }
            }
        }
        let horizon = if armed { end } else { measure_from };
        match ring.engine.step(horizon, &mut events) {
            Step::Idle if armed => break,
            Step::Idle => {}
            Step::External(Ext::Split) => ring.engine.partition(|h| h.0 % 2 == 1),
            Step::External(Ext::Heal) => {
                ring.engine.heal();
                healed_at = Some(ring.engine.now());
                let next = ring.engine.now() + MERGE_CHECK_NS;
                ring.engine.schedule(next, Ext::CheckMerged);
            }
            Step::External(Ext::CheckMerged) => {
                if merge_seconds.is_none() {
                    if ring.consistent() {
                        let since = ring.engine.now() - healed_at.unwrap_or_default();
                        merge_seconds = Some(since as f64 / 1e9);
                    } else {
                        let next = ring.engine.now() + MERGE_CHECK_NS;
                        ring.engine.schedule(next, Ext::CheckMerged);
                    }
                }
            }
            Step::External(Ext::Join) => {
                if let Some(b) = ring.random_member() {
                    let h = ring.start(Some(b));
                    ring.members.push(h);
                }
            }
            Step::External(Ext::Lookup(host)) => {
                // Lookups that could not finish before the end are not started.
                let cutoff = end.saturating_sub(LOOKUP_GRACE.as_nanos() as u64);
                if !ring.engine.is_alive(host) || ring.engine.now() > cutoff {
                    continue;
                }
                // A node that has not joined yet has no ring to look anything up in.
                if ring.node(host).is_some_and(|n| n.phase() != Phase::Member) {
                    ring.schedule_lookup(host, x.lookups_per_min);
                    continue;
                }
                let key = RingId(ring.rng.gen());
                let mut req = 0;
                ring.engine
                    .with_core(host, |c, now| req = c.node_mut().lookup(now, key));
                lookups.insert((host, req), key);
                started += 1;
                ring.schedule_lookup(host, x.lookups_per_min);
            }
            Step::External(Ext::Depart(host)) => {
                if !ring.engine.is_alive(host) {
                    continue;
                }
                departures += 1;
                if ring.rng.gen_bool(0.5) {
                    ring.engine
                        .with_core(host, |c, now| c.node_mut().leave(now));
                    ring.engine.leave(host);
                } else {
                    ring.engine.crash(host);
                }
                ring.members.retain(|&h| h != host);
                // Its own lookups in flight have nobody left to report to.
                let before = lookups.len();
                lookups.retain(|(h, _), _| *h != host);
                started -= (before - lookups.len()) as u64;
                // A newcomer takes its place.
                if let Some(b) = ring.random_member() {
                    let h = ring.start(Some(b));
                    ring.members.push(h);
                    ring.schedule_lookup(h, x.lookups_per_min);
                    if let Some(median) = x.churn_median {
                        ring.schedule_departure(h, median);
                    }
                }
            }
            Step::Events => {
                for (host, e) in events.drain(..) {
                    let Event::LookupDone { req, found } = e else {
                        continue;
                    };
                    let Some(key) = lookups.remove(&(host, req)) else {
                        continue;
                    };
                    let Some((node, h)) = found else { continue };
                    let Some(responder) = addr_host(node.addr) else {
                        continue;
                    };
                    answered += 1;
                    hops += u64::from(h);
                    if ring.responsible(key) == Some(responder) {
                        correct += 1;
                    }
                }
            }
        }
    }
    let sent: u64 = ring.engine.traffic().values().map(|t| t.count).sum::<u64>() - sent_at_start;
    let n = x.nodes;
    RingReport {
        nodes: n,
        lookups: started,
        answered,
        correct,
        success_ratio: answered as f64 / started.max(1) as f64,
        mean_hops: hops as f64 / answered.max(1) as f64,
        hop_bound: (n as f64).log2() / 2.0 + 1.0,
        departures,
        ring_consistent: ring.consistent(),
        merge_seconds,
        messages_per_node_s: sent as f64 / n as f64 / x.measure.as_secs_f64(),
        unify_messages: ring.engine.traffic().get("unify").map_or(0, |t| t.count),
        events: ring.engine.processed(),
    }
}
