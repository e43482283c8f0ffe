//! An N-node harness in virtual time: every message goes through the wire encoding and a
//! seeded network that delays each message independently (so messages overtake each other),
//! drops what crosses a partition or reaches a crashed node, and jumps time to the next message
//! or timer. A failing seed is a test case.

#![allow(dead_code, missing_docs)]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tracker_overlay::tx::Abort;
use tracker_overlay::{Config, Event, Message, NodeRef, Output, OverlayNode, TxOp, Value};

/// The seeds a scenario runs with: its own, or `OVERLAY_SEEDS=N` more (a sweep to hunt
/// for rare interleavings; a failing seed becomes a fixed test case).
pub fn sweep(fixed: &[u64]) -> Vec<u64> {
    match std::env::var("OVERLAY_SEEDS")
        .ok()
        .and_then(|n| n.parse::<u64>().ok())
    {
        Some(n) => (1000..1000 + n).collect(),
        None => fixed.to_vec(),
    }
}

pub struct Host {
    pub node: OverlayNode,
    pub alive: bool,
    pub group: u8,
}

pub struct Net {
    pub now: Instant,
    pub rng: StdRng,
    pub hosts: Vec<Host>,
    queue: BTreeMap<(Instant, u64), (usize, Vec<u8>)>,
    seq: u64,
    /// One-way delay range; independent draws reorder messages.
    pub delay: (Duration, Duration),
    pub events: Vec<(usize, Event)>,
    pub delivered: u64,
    pub cfg: Config,
}

impl Net {
    pub fn new(seed: u64) -> Self {
        let cfg = Config {
            seed,
            ..Config::default()
        };
        Self {
            now: Instant::now(),
            rng: StdRng::seed_from_u64(seed),
            hosts: Vec::new(),
            queue: BTreeMap::new(),
            seq: 0,
            delay: (Duration::from_millis(1), Duration::from_millis(20)),
            events: Vec::new(),
            delivered: 0,
            cfg,
        }
    }

    fn new_node(&mut self) -> usize {
        let mut peer = [0u8; 32];
        self.rng.fill(&mut peer);
        let i = self.hosts.len();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 10_000 + i as u16));
        let me = NodeRef::new(peer, addr);
        let cfg = Config {
            seed: self.rng.gen(),
            ..self.cfg.clone()
        };
        self.hosts.push(Host {
            node: OverlayNode::new(self.now, me, cfg),
            alive: true,
            group: 0,
        });
        i
    }

    /// A ring of one.
    pub fn create(&mut self) -> usize {
        let i = self.new_node();
        let now = self.now;
        self.hosts[i].node.create(now);
        self.flush(i);
        i
    }

    /// A node that joins through `via`; returns once it has joined.
    pub fn join(&mut self, via: usize) -> usize {
        let i = self.new_node();
        let now = self.now;
        let bootstrap = self.hosts[via].node.me();
        self.hosts[i].node.join(now, bootstrap);
        self.flush(i);
        let joined = self.run_until(Duration::from_secs(30), |net| {
            net.events
                .iter()
                .any(|(h, e)| *h == i && *e == Event::Joined)
        });
        assert!(joined, "node {i} did not join");
        i
    }

    /// A ring of `n` nodes, settled.
    pub fn ring(&mut self, n: usize) -> Vec<usize> {
        let first = self.create();
        let mut all = vec![first];
        for _ in 1..n {
            let via = all[self.rng.gen_range(0..all.len())];
            all.push(self.join(via));
        }
        self.settle();
        all
    }

    /// Runs until the ring is consistent and every range is sure again (or 60 s pass).
    pub fn settle(&mut self) {
        let ok = self.run_until(Duration::from_secs(60), |net| {
            net.ring_errors().is_empty() && net.unsure_nodes().is_empty()
        });
        if !ok {
            // What is missing, for the failure report.
            for i in self.unsure_nodes() {
                let n = &self.hosts[i].node;
                let own = tracker_overlay::RangeSet::interval(
                    n.pred().map_or(n.me().id, |p| p.id),
                    n.me().id,
                );
                eprintln!(
                    "unsure {i}: missing {:?} recovered {}",
                    own.difference(n.store().sure()),
                    n.stats().recovered
                );
            }
        }
        assert!(
            ok,
            "ring did not settle: {:?} unsure {:?}",
            self.ring_errors(),
            self.unsure_nodes()
        );
        // Let the replicated managers and fingers catch up with the final ring.
        self.run_for(Duration::from_secs(6));
    }

    pub fn alive(&self) -> Vec<usize> {
        (0..self.hosts.len())
            .filter(|&i| self.hosts[i].alive && self.is_member(i))
            .collect()
    }

    fn is_member(&self, i: usize) -> bool {
        self.hosts[i].node.phase() == tracker_overlay::Phase::Member
    }

    /// What is wrong with the ring of live members: every node's successor and predecessor must
    /// be its neighbours in id order.
    pub fn ring_errors(&self) -> Vec<String> {
        let mut errors = Vec::new();
        for group in self.groups() {
            let mut ids: Vec<(tracker_overlay::RingId, usize)> = group
                .iter()
                .map(|&i| (self.hosts[i].node.me().id, i))
                .collect();
            ids.sort();
            let n = ids.len();
            for (k, &(_, i)) in ids.iter().enumerate() {
                let node = &self.hosts[i].node;
                let succ = self.hosts[ids[(k + 1) % n].1].node.me();
                let pred = self.hosts[ids[(k + n - 1) % n].1].node.me();
                if n == 1 {
                    if !node.succs().is_empty() || node.pred().is_some() {
                        errors.push(format!("{i}: alone but has neighbours"));
                    }
                    continue;
                }
                if node.succs().first() != Some(&succ) {
                    errors.push(format!(
                        "{i}: succ {:?} want {:?}",
                        node.succs().first(),
                        succ
                    ));
                }
                if node.pred() != Some(pred) {
                    errors.push(format!("{i}: pred {:?} want {:?}", node.pred(), pred));
                }
            }
        }
        errors
    }

    /// Live members by partition group.
    fn groups(&self) -> Vec<Vec<usize>> {
        let mut groups: BTreeMap<u8, Vec<usize>> = BTreeMap::new();
        for i in self.alive() {
            groups.entry(self.hosts[i].group).or_default().push(i);
        }
        groups.into_values().collect()
    }

    /// The largest share of the ring a live member is responsible for.
    pub fn largest_range(&self) -> f64 {
        self.alive()
            .iter()
            .filter_map(|&i| {
                let node = &self.hosts[i].node;
                let pred = node.pred()?;
                Some(pred.id.distance_to(node.me().id) as f64 / 2f64.powi(128))
            })
            .fold(0.0, f64::max)
    }

    /// Live members whose range is not all sure.
    pub fn unsure_nodes(&self) -> Vec<usize> {
        self.alive()
            .into_iter()
            .filter(|&i| {
                let node = &self.hosts[i].node;
                match node.pred() {
                    Some(p) => !node.store().sure().covers(p.id, node.me().id),
                    None => false,
                }
            })
            .collect()
    }

    pub fn crash(&mut self, i: usize) {
        self.hosts[i].alive = false;
    }

    /// Node `i` leaves gracefully: it hands its range over and goes once the successor took
    /// it (as a real node closes its connections on `Event::Left`).
    pub fn leave(&mut self, i: usize) {
        let now = self.now;
        self.hosts[i].node.leave(now);
        self.flush(i);
        let left = self.run_until(Duration::from_secs(10), |net| {
            net.events.iter().any(|(h, e)| *h == i && *e == Event::Left)
        });
        assert!(left, "node {i} did not finish leaving");
        self.hosts[i].alive = false;
    }

    /// Splits the live nodes: `side` into group 1, the rest into group 0.
    pub fn partition(&mut self, side: &[usize]) {
        for (i, h) in self.hosts.iter_mut().enumerate() {
            h.group = u8::from(side.contains(&i));
        }
    }

    pub fn heal(&mut self) {
        for h in &mut self.hosts {
            h.group = 0;
        }
    }

    pub fn transact(&mut self, i: usize, ops: Vec<TxOp>) -> u64 {
        let now = self.now;
        let req = self.hosts[i].node.transact(now, ops);
        self.flush(i);
        req
    }

    /// Runs until transaction `req` of node `i` finishes.
    pub fn wait_tx(&mut self, i: usize, req: u64) -> Result<Vec<Option<Value>>, Abort> {
        let mut result = None;
        self.run_until(Duration::from_secs(60), |net| {
            result = net.take_tx(i, req);
            result.is_some()
        });
        result.unwrap_or_else(|| panic!("transaction {req} of node {i} never finished"))
    }

    pub fn take_tx(&mut self, i: usize, req: u64) -> Option<Result<Vec<Option<Value>>, Abort>> {
        let pos = self
            .events
            .iter()
            .position(|(h, e)| *h == i && matches!(e, Event::TxDone { req: r, .. } if *r == req))?;
        match self.events.remove(pos).1 {
            Event::TxDone { result, .. } => Some(result),
            _ => None,
        }
    }

    pub fn tx(&mut self, i: usize, ops: Vec<TxOp>) -> Result<Vec<Option<Value>>, Abort> {
        let req = self.transact(i, ops);
        self.wait_tx(i, req)
    }

    pub fn read(&mut self, i: usize, key: &str) -> Result<Option<Value>, Abort> {
        self.tx(i, vec![TxOp::Read(key.into())])
            .map(|mut r| r.remove(0))
    }

    pub fn write(&mut self, i: usize, key: &str, v: Value) -> Result<(), Abort> {
        self.tx(i, vec![TxOp::Write(key.into(), v)]).map(|_| ())
    }

    /// The live nodes responsible for the replicas of `key`, by replica index.
    pub fn replica_holders(&self, key: &str) -> Vec<usize> {
        let pos = tracker_overlay::RingId::of_key(key.as_bytes());
        let r = self.cfg.replicas;
        (0..r)
            .map(|j| {
                let at = pos.replica(j, r);
                self.alive()
                    .into_iter()
                    .find(|&i| self.hosts[i].node.is_responsible(at))
                    .unwrap_or(usize::MAX)
            })
            .collect()
    }

    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        self.run_until_instant(end, |_| false);
    }

    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&mut Net) -> bool) -> bool {
        let end = self.now + limit;
        self.run_until_instant(end, &mut done)
    }

    fn run_until_instant(&mut self, end: Instant, mut done: impl FnMut(&mut Net) -> bool) -> bool {
        loop {
            if done(self) {
                return true;
            }
            let next_msg = self.queue.first_key_value().map(|(&(t, _), _)| t);
            let next_timer = self
                .hosts
                .iter()
                .enumerate()
                .filter(|(_, h)| h.alive)
                .filter_map(|(i, h)| h.node.poll_timeout().map(|t| (t, i)))
                .min();
            let at = match (next_msg, next_timer) {
                (Some(m), Some((t, _))) => m.min(t),
                (Some(m), None) => m,
                (None, Some((t, _))) => t,
                (None, None) => return done(self),
            };
            if at > end {
                self.now = end;
                return done(self);
            }
            self.now = self.now.max(at);
            if next_msg == Some(at) {
                let Some((_, (to, bytes))) = self.queue.pop_first() else {
                    continue;
                };
                if self.hosts[to].alive {
                    let msg = Message::decode(&bytes).expect("our own messages decode");
                    let now = self.now;
                    self.hosts[to].node.handle_message(now, msg);
                    self.delivered += 1;
                    self.flush(to);
                }
            } else if let Some((_, i)) = next_timer {
                let now = self.now;
                self.hosts[i].node.handle_timeout(now);
                self.flush(i);
            }
        }
    }

    /// Carries out node `i`'s outputs.
    pub fn flush(&mut self, i: usize) {
        while let Some(out) = self.hosts[i].node.poll_output() {
            match out {
                Output::Transmit { to, msg } => {
                    let Some(j) = self.hosts.iter().position(|h| h.node.me() == to) else {
                        continue;
                    };
                    if self.hosts[i].group != self.hosts[j].group || !self.hosts[i].alive {
                        continue;
                    }
                    let (lo, hi) = self.delay;
                    let delay = self.rng.gen_range(lo..=hi);
                    self.seq += 1;
                    self.queue
                        .insert((self.now + delay, self.seq), (j, msg.encode()));
                }
                Output::Event(e) => self.events.push((i, e)),
            }
        }
    }
}
