//! Ring maintenance (Beernet's relaxed ring): join through the successor, periodic
//! stabilization that doubles as the heartbeat, an eventually perfect failure detector,
//! successor lists, fingers, graceful leave and crash repair.
//!
//! A joiner `q` asks the node responsible for its id, `r`, which makes `q` its predecessor at
//! once, hands it the range `(p, q]` and tells it about `p`; `q` then tells `p` that it is its
//! new successor. Only the successor link must be right: until `p` hears from `q` (or if it
//! never can, behind a NAT), `q` sits on a branch, which routing handles by forwarding from
//! `r` back to its predecessor. Stabilization repairs the rest: each node asks its successor
//! for its neighbours, adopts a closer successor when it learns of one, and the successor
//! adopts a closer predecessor when it hears from one.

use std::time::{Duration, Instant};

use crate::id::{NodeRef, RingId};
use crate::msg::{Body, Op, Routed};
use crate::node::{Event, LookupFor, OverlayNode, Phase, Timer};

/// The most a failure detector's timeout grows to.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a leaving node waits for its successor to acknowledge the hand-over.
const LEAVE_DEADLINE: Duration = Duration::from_secs(3);

/// How long a finger may stay silent before it is pinged.
const FINGER_PROBE_EVERY: Duration = Duration::from_secs(2);

/// The most suspected nodes a node keeps probing.
const MAX_SUSPECTED: usize = 64;
/// Gossip rounds of a ring unification, and how many nodes each round reaches per node: with
/// one round per hop, 2^8 nodes of a ring hear of the other ring within 8 hops even where the
/// random choices overlap, and nodes passed over still zip in by stabilization.
const UNIFY_TTL: u8 = 8;
const UNIFY_FANOUT: usize = 2;
/// The shortest gap between two probes of one suspected node.
const PROBE_NOW_GAP: Duration = Duration::from_millis(500);
/// A node takes part in one unification per this long (the gossip reaches it many times).
const UNIFY_QUIET: Duration = Duration::from_secs(3);

/// What the failure detector knows of one node.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Watch {
    pub(crate) last_heard: Instant,
    /// Grows each time the node is suspected wrongly (eventually perfect: after enough
    /// mistakes, a live node is never suspected again).
    pub(crate) timeout: Duration,
    /// Smoothed round-trip time of stabilization, when measured.
    pub(crate) srtt: Option<Duration>,
    pub(crate) probe_sent: Option<Instant>,
}

impl OverlayNode {
    pub(crate) fn start_maintenance(&mut self, now: Instant) {
        let cfg = &self.cfg;
        let (s, f, r, t) = (
            cfg.stabilize_every,
            cfg.fix_finger_every,
            cfg.repair_every,
            Duration::ZERO,
        );
        self.set_timer(now + s, Timer::Stabilize);
        self.set_timer(now + f, Timer::FixFinger);
        self.set_timer(now + r, Timer::Repair);
        self.set_timer(now + t, Timer::RefreshRtms);
    }

    pub(crate) fn send_join(&mut self) {
        if let Some(bootstrap) = self.bootstrap {
            let routed = Routed {
                key: self.me.id,
                hops: 0,
                origin: self.me,
                op: Op::Join,
            };
            self.send(bootstrap, Body::Route(Box::new(routed)));
        }
    }

    /// At the node responsible for the joiner's id.
    pub(crate) fn on_join(&mut self, joiner: NodeRef) {
        if joiner.id == self.me.id {
            if joiner != self.me {
                self.send(joiner, Body::JoinReject);
            }
            return;
        }
        let old = match self.pred {
            Some(pred) if pred == joiner => {
                // A retransmitted join: the accept was lost.
                let succs = self.succ_list_with_me();
                let pred = self.joined_after;
                self.send(joiner, Body::JoinAccept { pred, succs });
                return;
            }
            Some(pred) => pred,
            None => self.me, // Alone: the joiner sits on both sides.
        };
        if self.succs.is_empty() {
            self.succs.push(joiner);
        }
        self.set_pred(joiner);
        self.joined_after = Some(old);
        let succs = self.succ_list_with_me();
        self.send(
            joiner,
            Body::JoinAccept {
                pred: Some(old),
                succs,
            },
        );
        self.handover_to(joiner, old.id, joiner.id);
    }

    pub(crate) fn on_join_accept(
        &mut self,
        from: NodeRef,
        pred: Option<NodeRef>,
        succs: Vec<NodeRef>,
    ) {
        if self.phase != Phase::Joining {
            return;
        }
        self.phase = Phase::Member;
        self.pred = pred.filter(|p| *p != self.me);
        self.pred_suspected = false;
        self.succs.clear();
        self.merge_succs(from, &succs);
        for n in self.pred.into_iter().chain(self.succs.first().copied()) {
            self.watch(n);
        }
        if let Some(pred) = self.pred {
            if pred != from {
                let succs = self.succ_list_with_me();
                self.send(pred, Body::NewSucc { succs });
            }
        }
        self.start_maintenance(self.now);
        self.emit(Event::Joined);
    }

    /// From a node that believes it is our successor now.
    pub(crate) fn on_new_succ(&mut self, from: NodeRef, succs: Vec<NodeRef>) {
        let closer = match self.succs.first() {
            Some(succ) => from.id.in_open(self.me.id, succ.id),
            None => true,
        };
        if closer && self.phase == Phase::Member {
            self.merge_succs(from, &succs);
            self.watch(from);
        }
    }

    pub(crate) fn stabilize(&mut self) {
        let now = self.now;
        if self.phase == Phase::Member {
            // Successors are probed (stabilize, pings after a suspicion): suspect every one
            // whose probe is overdue; the next in the list may already be overdue too.
            if let Some(succ) = self.succs.first().copied() {
                if !self.watches.contains_key(&succ.id) {
                    self.watch(succ);
                }
            }
            let overdue: Vec<NodeRef> = self
                .succs
                .iter()
                .copied()
                .filter(|n| self.probe_overdue(*n))
                .collect();
            for n in overdue {
                self.suspect(n);
            }
            // The predecessor is not probed: it stabilizes with us every period.
            if let Some(pred) = self.pred.filter(|_| !self.pred_suspected) {
                let silent = self.watches.get(&pred.id).is_some_and(|w| {
                    let bound = w.timeout + self.cfg.stabilize_every;
                    self.now.saturating_duration_since(w.last_heard) > bound
                });
                if silent {
                    self.suspect(pred);
                }
            }
            self.send_stabilize();
            self.check_fingers();
            self.probe_suspected();
        }
        self.set_timer(now + self.cfg.stabilize_every, Timer::Stabilize);
    }

    fn send_stabilize(&mut self) {
        if let Some(succ) = self.succs.first().copied() {
            let now = self.now;
            if let Some(w) = self.watches.get_mut(&succ.id) {
                w.probe_sent.get_or_insert(now);
            }
            self.send(succ, Body::Stabilize);
        }
    }

    /// Fingers are watched too: one silent for a while gets a ping, one that leaves a ping
    /// unanswered is suspected, so routing stops losing messages through it.
    fn check_fingers(&mut self) {
        let now = self.now;
        let succ = self.succs.first().copied();
        let mut fingers: Vec<NodeRef> = self
            .fingers
            .iter()
            .flatten()
            .copied()
            .filter(|f| Some(*f) != succ)
            .collect();
        fingers.sort_by_key(|f| f.id);
        fingers.dedup();
        let initial = self.cfg.suspect_after;
        for f in &fingers {
            let w = self.watches.entry(f.id).or_insert(Watch {
                last_heard: now,
                timeout: initial,
                srtt: None,
                probe_sent: None,
            });
            match w.probe_sent {
                Some(sent) => {
                    let bound = w.timeout.max(w.srtt.unwrap_or_default() * 4);
                    if now.saturating_duration_since(sent) > bound {
                        self.suspect(*f);
                    }
                }
                None if now.saturating_duration_since(w.last_heard) >= FINGER_PROBE_EVERY => {
                    w.probe_sent = Some(now);
                    let nonce = self.random();
                    self.send(*f, Body::Ping { nonce });
                }
                None => {}
            }
        }
        // Forget what we no longer watch.
        let pred = self.pred;
        let succs = &self.succs;
        let keep = |id: &RingId| {
            fingers.iter().any(|f| f.id == *id)
                || succs.iter().any(|s| s.id == *id)
                || pred.is_some_and(|p| p.id == *id)
        };
        let suspected = &self.suspected;
        self.watches
            .retain(|id, _| keep(id) || suspected.contains_key(id));
    }

    /// Whether a probe of `node` has gone unanswered for too long. Adaptive: never below the
    /// configured timeout (grown by false suspicions), and at least four smoothed round trips.
    fn probe_overdue(&self, node: NodeRef) -> bool {
        let Some(w) = self.watches.get(&node.id) else {
            return false;
        };
        let Some(sent) = w.probe_sent else {
            return false;
        };
        let bound = w.timeout.max(w.srtt.unwrap_or_default() * 4);
        self.now.saturating_duration_since(sent) > bound
    }

    /// From a node that believes it is our predecessor (or wants to be).
    pub(crate) fn on_stabilize(&mut self, from: NodeRef) {
        if self.phase != Phase::Member {
            return;
        }
        match self.pred {
            Some(pred) if pred == from => self.pred_suspected = false,
            Some(pred) if !self.pred_suspected && !from.id.in_open(pred.id, self.me.id) => {}
            Some(pred) => {
                let closer = from.id.in_open(pred.id, self.me.id);
                self.set_pred(from);
                if closer {
                    // A node between us and our predecessor that we had not heard of (it
                    // joined through someone else, or it was on a branch).
                    self.handover_to(from, pred.id, from.id);
                } else {
                    // Our range grew over a crashed predecessor's: whatever authority we once
                    // had there is stale; not sure until repaired.
                    self.store.unmark_sure(from.id, pred.id);
                }
            }
            None => {
                let alone = self.succs.is_empty();
                self.set_pred(from);
                if alone {
                    // The other node found us (after a merge, or its join raced): it is both
                    // neighbours now, and takes the range up to itself.
                    self.succs.push(from);
                    self.handover_to(from, self.me.id, from.id);
                }
            }
        }
        let (pred, succs) = (self.pred, self.succs.clone());
        self.send(from, Body::Neighbors { pred, succs });
    }

    pub(crate) fn on_neighbors(
        &mut self,
        from: NodeRef,
        pred: Option<NodeRef>,
        succs: Vec<NodeRef>,
    ) {
        if self.succs.first() != Some(&from) {
            return;
        }
        self.succs.clear();
        self.merge_succs(from, &succs);
        if let Some(p) = pred {
            if p != self.me && p.id.in_open(self.me.id, from.id) {
                if self.is_suspected(p) {
                    // Our successor hears from a node we suspected: probe it now rather
                    // than in its turn (after a partition heals, this is how the rings find
                    // each other's nodes between ours).
                    self.probe_now(p);
                } else {
                    self.succs.insert(0, p);
                    self.succs.truncate(self.cfg.succ_list_len);
                    self.watch(p);
                    self.send_stabilize();
                }
            }
        }
    }

    /// Probes a suspected node at once, unless it was probed within the last half second.
    fn probe_now(&mut self, node: NodeRef) {
        let now = self.now;
        let due = self
            .suspected
            .get(&node.id)
            .is_some_and(|(_, probed)| now.saturating_duration_since(*probed) >= PROBE_NOW_GAP);
        if due {
            self.suspected.insert(node.id, (node, now));
            let nonce = self.random();
            self.send(node, Body::Ping { nonce });
        }
    }

    pub(crate) fn leave_ring(&mut self) {
        if self.phase != Phase::Member {
            self.phase = Phase::Left;
            self.emit(Event::Left);
            return;
        }
        self.fail_clients();
        self.timers.clear();
        let Some(succ) = self.succs.first().copied() else {
            self.finish_leave();
            return;
        };
        let pred = self.pred.filter(|_| !self.pred_suspected);
        let from = self.pred.map_or(self.me.id, |p| p.id);
        self.phase = Phase::Leaving;
        let sent = self.handover_with(succ, from, self.me.id, Some(pred));
        self.handovers_unacked.extend(sent);
        if let Some(pred) = pred {
            let succs = self.succs.clone();
            self.send(pred, Body::LeaveSucc { succs });
        }
        // Wait for the successor to take the data, but not forever.
        self.set_timer(self.now + LEAVE_DEADLINE, Timer::LeaveDeadline);
    }

    /// The hand-over is done (or the successor did not answer in time): gone.
    pub(crate) fn finish_leave(&mut self) {
        if self.phase == Phase::Left {
            return;
        }
        self.phase = Phase::Left;
        self.timers.clear();
        self.handovers_unacked.clear();
        self.emit(Event::Left);
    }

    pub(crate) fn on_handover_ack(&mut self, id: u64) {
        self.handovers_unacked.retain(|x| *x != id);
        if self.phase == Phase::Leaving && self.handovers_unacked.is_empty() {
            self.finish_leave();
        }
    }

    pub(crate) fn on_leave_pred(&mut self, from: NodeRef, pred: Option<NodeRef>) {
        if self.pred != Some(from) {
            return;
        }
        self.departed(from);
        match pred.filter(|p| *p != self.me) {
            Some(p) => {
                // The leaver's range becomes ours; its hand-over brings the authority.
                self.store.unmark_sure(p.id, from.id);
                self.set_pred(p);
            }
            None => {
                self.pred = None;
                self.pred_suspected = false;
            }
        }
        self.succs.retain(|n| *n != from);
        if self.succs.is_empty() && self.pred.is_some() {
            // Two of us were left: the predecessor is also the successor.
            self.succs.extend(self.pred);
        }
    }

    pub(crate) fn on_leave_succ(&mut self, from: NodeRef, succs: Vec<NodeRef>) {
        self.departed(from);
        if self.succs.first() != Some(&from) {
            return;
        }
        self.succs.remove(0);
        let mut list = succs;
        list.retain(|n| *n != from);
        if let Some(first) = list.first().copied() {
            self.merge_succs(first, &list[1..]);
            self.watch(first);
        } else if self.succs.is_empty() {
            self.become_alone_if_isolated();
        }
        self.send_stabilize();
    }

    /// `node` left gracefully: like a suspected node, it must not come back into our tables
    /// through a neighbour's stale view.
    fn departed(&mut self, node: NodeRef) {
        self.suspected.insert(node.id, (node, self.now));
    }

    /// The failure detector suspects `node`: it leaves every routing table and joins the
    /// suspected set, which is probed for ring merge.
    pub(crate) fn suspect(&mut self, node: NodeRef) {
        let known = self.suspected.contains_key(&node.id);
        let in_tables = self.succs.contains(&node)
            || self.fingers.contains(&Some(node))
            || self.pred == Some(node) && !self.pred_suspected;
        if known && !in_tables {
            return;
        }
        if !known {
            self.stats.suspicions += 1;
        }
        if !known && self.suspected.len() >= MAX_SUSPECTED {
            // Forget the one probed longest ago.
            let oldest = self
                .suspected
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.suspected.remove(&k);
            }
        }
        if !known {
            self.suspected.insert(node.id, (node, self.now));
        }
        let was_succ = self.succs.first() == Some(&node);
        self.succs.retain(|n| *n != node);
        for f in self.fingers.iter_mut() {
            if *f == Some(node) {
                *f = None;
            }
        }
        for r in self.rtms.iter_mut() {
            if *r == Some(node) {
                *r = None;
            }
        }
        if self.pred == Some(node) {
            self.pred_suspected = true;
        }
        if self.succs.is_empty() {
            // Fall back on any live node we know, nearest first.
            let mut known: Vec<NodeRef> = self.fingers.iter().flatten().copied().collect();
            known.extend(self.pred.filter(|_| !self.pred_suspected));
            known.sort_by_key(|n| self.me.id.distance_to(n.id));
            known.dedup();
            self.succs
                .extend(known.into_iter().take(self.cfg.succ_list_len));
            self.become_alone_if_isolated();
        }
        if was_succ {
            // Probe the whole list at once, so that several dead successors in a row are found
            // in one timeout rather than one after another.
            let now = self.now;
            for n in self.succs.clone().into_iter().skip(1) {
                self.watch(n);
                if let Some(w) = self.watches.get_mut(&n.id) {
                    if w.probe_sent.is_none() {
                        w.probe_sent = Some(now);
                        let nonce = self.random();
                        self.send(n, Body::Ping { nonce });
                    }
                }
            }
            if let Some(succ) = self.succs.first().copied() {
                self.watch(succ);
            }
            self.send_stabilize();
        }
    }

    fn become_alone_if_isolated(&mut self) {
        if self.succs.is_empty() && (self.pred.is_none() || self.pred_suspected) {
            self.pred = None;
            self.pred_suspected = false;
        }
    }

    /// Any message from `node` is a sign of life.
    pub(crate) fn heard_from(&mut self, node: NodeRef) {
        let now = self.now;
        if let Some(w) = self.watches.get_mut(&node.id) {
            w.last_heard = now;
            if let Some(sent) = w.probe_sent.take() {
                let rtt = now.saturating_duration_since(sent);
                w.srtt = Some(match w.srtt {
                    Some(s) => (s * 7 + rtt) / 8,
                    None => rtt,
                });
                // A timeout grown by false suspicions shrinks back slowly while probes are
                // answered, so one bad spell does not slow detection for good.
                let base = self.cfg.suspect_after;
                w.timeout = w.timeout.saturating_sub(w.timeout.saturating_sub(base) / 8);
            }
        }
        if self.suspected.remove(&node.id).is_some() {
            // Suspected wrongly (or a partition healed): trust it longer next time, and take
            // it back where it belongs.
            self.stats.false_suspicions += 1;
            let w = self.watches.entry(node.id).or_insert(Watch {
                last_heard: now,
                timeout: self.cfg.suspect_after,
                srtt: None,
                probe_sent: None,
            });
            w.timeout = (w.timeout * 2).min(MAX_TIMEOUT);
            w.last_heard = now;
            self.reconsider(node);
            // It may speak for another ring (a partition healed): unify both rings, from
            // both sides at once.
            if self.phase == Phase::Member && self.now >= self.unify_quiet_until {
                self.send(
                    node,
                    Body::Unify {
                        contact: self.me,
                        ttl: UNIFY_TTL,
                    },
                );
                self.unify(node, UNIFY_TTL);
            }
        }
    }

    /// A node we know to be alive: if it is closer than our successor, it becomes our
    /// successor (ring merge and healing rely on this; stabilization does the rest).
    pub(crate) fn reconsider(&mut self, node: NodeRef) {
        if self.phase != Phase::Member || node == self.me {
            return;
        }
        let closer = match self.succs.first() {
            Some(succ) => node.id.in_open(self.me.id, succ.id),
            None => true,
        };
        if closer {
            self.succs.insert(0, node);
            self.succs.truncate(self.cfg.succ_list_len);
            self.watch(node);
            self.send_stabilize();
        }
    }

    pub(crate) fn is_suspected(&self, node: NodeRef) -> bool {
        self.suspected.contains_key(&node.id)
    }

    pub(crate) fn watch(&mut self, node: NodeRef) {
        let now = self.now;
        let w = self.watches.entry(node.id).or_insert(Watch {
            last_heard: now,
            timeout: self.cfg.suspect_after,
            srtt: None,
            probe_sent: None,
        });
        if w.probe_sent.is_none() {
            w.last_heard = now;
        }
    }

    fn set_pred(&mut self, node: NodeRef) {
        self.pred = Some(node);
        self.pred_suspected = false;
        self.watch(node);
    }

    /// Our successor list after `first`: `first`, then `rest`, without us, suspected nodes or
    /// duplicates.
    pub(crate) fn merge_succs(&mut self, first: NodeRef, rest: &[NodeRef]) {
        let mut list = vec![first];
        list.extend(rest.iter().copied());
        list.extend(self.succs.iter().copied());
        let mut out: Vec<NodeRef> = Vec::with_capacity(self.cfg.succ_list_len);
        for n in list {
            if n != self.me && !self.is_suspected(n) && !out.contains(&n) {
                out.push(n);
            }
        }
        // Keep ring order from us, so a list merged from two sources stays a successor list.
        let me = self.me.id;
        out.sort_by_key(|n| me.distance_to(n.id));
        out.truncate(self.cfg.succ_list_len);
        self.succs = out;
    }

    fn succ_list_with_me(&self) -> Vec<NodeRef> {
        let mut list = vec![self.me];
        list.extend(
            self.succs
                .iter()
                .take(self.cfg.succ_list_len.saturating_sub(1)),
        );
        list
    }

    pub(crate) fn fix_finger(&mut self) {
        let now = self.now;
        if self.phase == Phase::Member && !self.fingers.is_empty() {
            if let Some(succ) = self.succs.first().copied() {
                let i = self.next_finger % self.fingers.len();
                let target = self.me.id.plus(1u128 << (127 - i));
                if target.in_half_open(self.me.id, succ.id) {
                    // This finger and all shorter ones are the successor.
                    for f in self.fingers[i..].iter_mut() {
                        *f = Some(succ);
                    }
                    self.next_finger = 0;
                } else {
                    let req = self.new_req();
                    self.start_lookup(req, target, LookupFor::Finger(i));
                    self.next_finger = i + 1;
                }
            }
        }
        self.set_timer(now + self.cfg.fix_finger_every, Timer::FixFinger);
    }

    pub(crate) fn refresh_rtms(&mut self) {
        let now = self.now;
        if self.phase == Phase::Member {
            for slot in 1..self.cfg.acceptors() {
                let req = self.new_req();
                let key = self.me.id.replica(slot, self.cfg.replicas);
                self.start_lookup(req, key, LookupFor::Rtm(slot));
            }
        }
        self.set_timer(now + self.cfg.rtm_refresh_every, Timer::RefreshRtms);
    }

    /// Ring merge, first half: nodes keep the peers they suspected and probe one of them per
    /// round (the one probed longest ago). One that answers was cut off, not dead: it is taken
    /// back (`heard_from`), and so is its successor; stabilization zips the two rings
    /// together from there.
    fn probe_suspected(&mut self) {
        let now = self.now;
        let due = self
            .suspected
            .values()
            .filter(|(_, probed)| now.saturating_duration_since(*probed) >= self.cfg.retry_every)
            .min_by_key(|(_, probed)| *probed)
            .map(|(n, _)| *n);
        if let Some(node) = due {
            self.suspected.insert(node.id, (node, now));
            let nonce = self.random();
            self.send(node, Body::Ping { nonce });
        }
    }

    /// A suspected node answered a probe, and told us its successor (ring merge).
    pub(crate) fn on_pong(&mut self, succ: Option<NodeRef>) {
        // `heard_from` already took the sender back; its successor may be a stranger too.
        if let Some(s) = succ.filter(|s| *s != self.me && !self.is_suspected(*s)) {
            self.reconsider(s);
        }
    }

    /// Ring merge, second half: gossip-based ring unification. `contact` may belong to another
    /// ring. We look up our successor *in its ring* (a lookup for the key after us, routed
    /// from `contact`), take it if it is closer than ours, and pass the contact on to a few
    /// random nodes of our routing table, which do the same. So every part of a ring finds
    /// its place in the other one within O(log N) gossip rounds instead of waiting for the
    /// successor pointers to zip the rings one node at a time; stabilization finishes the
    /// job (predecessors, successor lists) and the store's repair moves the data.
    pub(crate) fn unify(&mut self, contact: NodeRef, ttl: u8) {
        if self.phase != Phase::Member || contact == self.me || self.now < self.unify_quiet_until {
            return;
        }
        self.unify_quiet_until = self.now + UNIFY_QUIET;
        // A partition healed somewhere: every node we suspected may be back. Probe them all
        // now rather than one per round.
        let suspected: Vec<NodeRef> = self.suspected.values().map(|(n, _)| *n).collect();
        for node in suspected {
            self.probe_now(node);
        }
        self.stats.unifications += 1;
        let req = self.new_req();
        let key = self.me.id.plus(1);
        self.lookups.insert(req, (LookupFor::Merge, key));
        self.set_timer(self.now + self.cfg.lookup_timeout, Timer::Lookup(req));
        let routed = Routed {
            key,
            hops: 0,
            origin: self.me,
            op: Op::Lookup { req },
        };
        self.send(contact, Body::Route(Box::new(routed)));
        if !self.is_suspected(contact) {
            self.reconsider(contact);
        }
        if ttl == 0 {
            return;
        }
        let mut known: Vec<NodeRef> = self
            .fingers
            .iter()
            .flatten()
            .chain(self.succs.iter())
            .chain(self.pred.iter())
            .copied()
            .filter(|n| *n != contact && *n != self.me)
            .collect();
        known.sort_by_key(|n| n.id);
        known.dedup();
        for _ in 0..UNIFY_FANOUT.min(known.len()) {
            let i = (self.random() % known.len() as u64) as usize;
            let to = known.swap_remove(i);
            self.send(
                to,
                Body::Unify {
                    contact,
                    ttl: ttl - 1,
                },
            );
        }
    }

    /// The position of a finger, for tests.
    pub fn finger_target(&self, i: usize) -> RingId {
        self.me.id.plus(1u128 << (127 - i.min(127)))
    }
}
