//! The message handling of transactions (see `tx` for the protocol): the client's quorum
//! reads, Paxos Commit's participants, acceptors and leaders, and the takeover by a replicated
//! transaction manager.

use rustc_hash::FxHashMap as HashMap;

use crate::id::{NodeRef, RingId};
use crate::msg::{AcceptedVote, Body, Op, Prepare, TxMeta, Vote};
use crate::node::{Event, OverlayNode, Phase, Timer};
use crate::store::{Item, Value};
use crate::tx::{apply, distinct_keys, Abort, TxEntry, TxId, TxOp};

/// How long decided transactions are remembered, to answer late participants.
const REMEMBER_DECISIONS: std::time::Duration = std::time::Duration::from_secs(120);

/// How long a client waits before it reads a replica again that was not sure of its range.
const REREAD_AFTER: std::time::Duration = std::time::Duration::from_millis(100);
/// How long a client waits before it reads a locked replica again (the decision is usually
/// one message away).
const LOCKED_REREAD_AFTER: std::time::Duration = std::time::Duration::from_millis(2);
/// How often requests that got no answer (a read, a prepare) are sent again: a routed message
/// may be lost with a node on its path, until the failure detector routes around it.
const RESEND_EVERY: std::time::Duration = std::time::Duration::from_millis(400);

/// A transaction this node runs for its application.
pub(crate) struct ClientTx {
    ops: Vec<TxOp>,
    keys: Vec<(Vec<u8>, RingId)>,
    best: Vec<Option<Item>>,
    /// Per key, a bit per replica that answered with authority.
    sure: Vec<u32>,
    read_reqs: Vec<u64>,
    results: Option<Vec<Option<Value>>>,
    tid: Option<TxId>,
}

impl ClientTx {
    fn first_without_quorum(&self, majority: usize) -> usize {
        let enough = |s: &u32| s.count_ones() as usize >= majority;
        self.sure.iter().position(|s| !enough(s)).unwrap_or(0)
    }
}

/// The leader of a transaction's commit: the manager (ballot 0) or a replicated manager that
/// took over (a higher ballot).
pub(crate) struct Leader {
    client: Option<u64>,
    tm: NodeRef,
    acceptors: Vec<NodeRef>,
    keys: Vec<RingId>,
    /// The manager's log, to send prepares again (a leader that took over has none).
    entries: Vec<TxEntry>,
    ballot: u32,
    promises: HashMap<u8, Vec<AcceptedVote>>,
    proposed: bool,
    accepted: HashMap<(u8, u8), Vec<u8>>,
    learned: HashMap<(u8, u8), bool>,
    tps: HashMap<(u8, u8), NodeRef>,
    decided: Option<bool>,
}

/// One acceptor slot of one transaction on this node.
pub(crate) struct Acceptor {
    meta: Option<(NodeRef, Vec<NodeRef>, Vec<RingId>)>,
    promised: u32,
    accepted: HashMap<(u8, u8), (u32, bool)>,
    tps: HashMap<(u8, u8), NodeRef>,
    decided: Option<bool>,
}

/// One replica of one key of a transaction on this node: its entry and its vote.
pub(crate) struct Participant {
    key: RingId,
    entry: TxEntry,
    tm: NodeRef,
    acceptors: Vec<NodeRef>,
    keys: Vec<RingId>,
    instance: (u8, u8),
    prepared: bool,
}

impl OverlayNode {
    // The client: quorum reads, then the commit.

    pub(crate) fn start_client(&mut self, req: u64, ops: Vec<TxOp>) {
        if self.phase != Phase::Member {
            self.emit(Event::TxDone {
                req,
                result: Err(Abort::NotJoined),
            });
            return;
        }
        let keys = match distinct_keys(&ops) {
            Ok(keys) => keys,
            Err(abort) => {
                self.emit(Event::TxDone {
                    req,
                    result: Err(abort),
                });
                return;
            }
        };
        let n = keys.len();
        let r = self.cfg.replicas;
        let mut read_reqs = Vec::with_capacity(n * usize::from(r));
        let positions: Vec<RingId> = keys.iter().map(|(_, p)| *p).collect();
        for (i, pos) in positions.iter().enumerate() {
            for j in 0..r {
                let rreq = self.new_req();
                self.reads.insert(rreq, (req, i, j));
                read_reqs.push(rreq);
                self.route_to(pos.replica(j, r), Op::Read { req: rreq });
            }
        }
        self.clients.insert(
            req,
            ClientTx {
                ops,
                keys,
                best: vec![None; n],
                sure: vec![0; n],
                read_reqs,
                results: None,
                tid: None,
            },
        );
        self.set_timer(self.now + self.cfg.request_timeout, Timer::ReadPhase(req));
        self.set_timer(self.now + RESEND_EVERY, Timer::ResendReads(req));
        self.set_timer(self.now + self.cfg.tx_timeout, Timer::Client(req));
    }

    /// The read phase ran out of time: fewer than a majority of some key's replicas answered
    /// with authority.
    pub(crate) fn read_phase_timeout(&mut self, req: u64) {
        let Some(c) = self.clients.get(&req) else {
            return;
        };
        if c.results.is_some() {
            return;
        }
        let key = c.keys[c.first_without_quorum(self.cfg.majority())]
            .0
            .clone();
        self.finish_client(req, Err(Abort::NoQuorum { key }));
    }

    /// Reads again the replicas that have not answered with authority yet.
    pub(crate) fn resend_reads(&mut self, req: u64) {
        let r = self.cfg.replicas;
        let Some(c) = self.clients.get(&req) else {
            return;
        };
        if c.results.is_some() {
            return;
        }
        let missing: Vec<(usize, u8)> = (0..c.keys.len())
            .flat_map(|i| (0..r).map(move |j| (i, j)))
            .filter(|&(i, j)| c.sure[i] & 1 << j == 0)
            .collect();
        for (i, j) in missing {
            self.reread(req, i, j);
        }
        self.set_timer(self.now + RESEND_EVERY, Timer::ResendReads(req));
    }

    /// Reads one replica again (it was not sure of its range yet: a hand-over or a recovery
    /// may be on its way).
    pub(crate) fn reread(&mut self, req: u64, i: usize, j: u8) {
        let r = self.cfg.replicas;
        let Some(c) = self.clients.get_mut(&req) else {
            return;
        };
        if c.results.is_some() {
            return;
        }
        let pos = c.keys[i].1;
        let rreq = self.next_req + 1;
        self.next_req = rreq;
        c.read_reqs.push(rreq);
        self.reads.insert(rreq, (req, i, j));
        self.reroute_to(pos.replica(j, r), Op::Read { req: rreq });
    }

    /// One replica's answer. It counts towards the quorum only if the replica is sure of its
    /// range and no prepared transaction holds the item: such a transaction may have committed
    /// already (its manager may have told its client), so a quorum of such answers could miss
    /// the newest value; the replica is asked again shortly.
    pub(crate) fn on_read_reply(
        &mut self,
        rreq: u64,
        counts: bool,
        locked: bool,
        item: Option<Item>,
    ) {
        let Some((req, i, j)) = self.reads.remove(&rreq) else {
            return;
        };
        let majority = self.cfg.majority() as u32;
        let Some(c) = self.clients.get_mut(&req) else {
            return;
        };
        if counts {
            c.sure[i] |= 1 << j;
            if let Some(item) = item {
                if c.best[i].as_ref().is_none_or(|b| item.version > b.version) {
                    c.best[i] = Some(item);
                }
            }
        } else {
            let after = if locked {
                LOCKED_REREAD_AFTER
            } else {
                REREAD_AFTER
            };
            self.set_timer(self.now + after, Timer::Reread(req, i, j));
            return;
        }
        if c.sure.iter().all(|&s| s.count_ones() >= majority) && c.results.is_none() {
            self.reads_done(req);
        }
    }

    fn reads_done(&mut self, req: u64) {
        let Some(c) = self.clients.get_mut(&req) else {
            return;
        };
        for rreq in std::mem::take(&mut c.read_reqs) {
            self.reads.remove(&rreq);
        }
        let outcome = apply(&c.ops, &c.keys, &c.best);
        let (results, entries) = match outcome {
            Ok(x) => x,
            Err(abort) => {
                self.finish_client(req, Err(abort));
                return;
            }
        };
        if entries.len() == 1 && entries[0].write.is_none() {
            // A single quorum read is consistent by itself.
            self.finish_client(req, Ok(results));
            return;
        }
        let tid = TxId(u128::from(self.random()) << 64 | u128::from(self.random()));
        if let Some(c) = self.clients.get_mut(&req) {
            c.results = Some(results);
            c.tid = Some(tid);
        }
        self.begin_commit(req, tid, entries);
    }

    fn begin_commit(&mut self, req: u64, tid: TxId, entries: Vec<TxEntry>) {
        // Acceptors must be distinct nodes, or one crash could take two votes: the replicated
        // managers where known and distinct, then our successors.
        let slots = usize::from(self.cfg.acceptors());
        let mut acceptors = vec![self.me];
        let candidates = self.rtms.iter().flatten().chain(self.succs.iter());
        for node in candidates {
            if acceptors.len() == slots {
                break;
            }
            if !acceptors.contains(node) {
                acceptors.push(*node);
            }
        }
        let keys: Vec<RingId> = entries.iter().map(|e| e.key).collect();
        self.leaders.insert(
            tid,
            Leader {
                client: Some(req),
                tm: self.me,
                acceptors: acceptors.clone(),
                keys: keys.clone(),
                entries: entries.clone(),
                ballot: 0,
                promises: HashMap::default(),
                proposed: true,
                accepted: HashMap::default(),
                learned: HashMap::default(),
                tps: HashMap::default(),
                decided: None,
            },
        );
        self.send_prepares_via(tid, false);
        self.set_timer(self.now + RESEND_EVERY, Timer::ResendPrepares(tid));
    }

    /// Sends the prepares whose votes the leader has not learned yet (a retransmission through
    /// another first hop).
    fn send_prepares_via(&mut self, tid: TxId, again: bool) {
        let r = self.cfg.replicas;
        let Some(l) = self.leaders.get(&tid) else {
            return;
        };
        let mut prepares = Vec::new();
        for (item, entry) in l.entries.iter().enumerate() {
            for replica in 0..r {
                if l.learned.contains_key(&(item as u8, replica)) {
                    continue;
                }
                let prepare = Prepare {
                    tid,
                    tm: self.me,
                    acceptors: l.acceptors.clone(),
                    keys: l.keys.clone(),
                    item: item as u8,
                    replica,
                    entry: entry.clone(),
                };
                prepares.push((entry.key.replica(replica, r), prepare));
            }
        }
        for (at, prepare) in prepares {
            let op = Op::Prepare(Box::new(prepare));
            if again {
                self.reroute_to(at, op);
            } else {
                self.route_to(at, op);
            }
        }
    }

    pub(crate) fn resend_prepares(&mut self, tid: TxId) {
        let Some(l) = self.leaders.get(&tid) else {
            return;
        };
        if l.decided.is_some() || l.ballot != 0 {
            return;
        }
        self.send_prepares_via(tid, true);
        self.set_timer(self.now + RESEND_EVERY, Timer::ResendPrepares(tid));
    }

    fn finish_client(&mut self, req: u64, result: Result<Vec<Option<Value>>, Abort>) {
        let Some(c) = self.clients.remove(&req) else {
            return;
        };
        for rreq in c.read_reqs {
            self.reads.remove(&rreq);
        }
        if c.tid.is_some() {
            match &result {
                Ok(_) => self.stats.commits += 1,
                Err(_) => self.stats.aborts += 1,
            }
        }
        self.emit(Event::TxDone { req, result });
    }

    pub(crate) fn client_timeout(&mut self, req: u64) {
        let Some(c) = self.clients.get(&req) else {
            return;
        };
        let result = match c.results {
            Some(_) => Err(Abort::Timeout),
            None => {
                let i = c.first_without_quorum(self.cfg.majority());
                Err(Abort::NoQuorum {
                    key: c.keys[i].0.clone(),
                })
            }
        };
        self.finish_client(req, result);
    }

    /// The node leaves: its clients cannot finish.
    pub(crate) fn fail_clients(&mut self) {
        let reqs: Vec<u64> = self.clients.keys().copied().collect();
        for req in reqs {
            self.finish_client(req, Err(Abort::NotJoined));
        }
    }

    // Participants.

    pub(crate) fn on_prepare(&mut self, key: RingId, p: Prepare) {
        let tid = p.tid;
        if self.decided.contains(&tid) {
            // A retransmitted prepare that arrived after the outcome: locking now would hold
            // the key until the participant asked again.
            return;
        }
        let instance = (p.item, p.replica);
        let known = self
            .participants
            .get(&tid)
            .and_then(|ps| ps.iter().find(|x| x.instance == instance))
            .map(|x| x.prepared);
        let prepared = match known {
            Some(prepared) => prepared, // A retransmission: the same vote again.
            None => {
                // Only a replica sure of its range may vote to commit; the entry must name the
                // replica position it was routed to.
                let at = p.entry.key.replica(p.replica, self.cfg.replicas);
                let prepared =
                    at == key && self.store.is_sure(key) && self.store.prepare(key, tid, &p.entry);
                self.participants.entry(tid).or_default().push(Participant {
                    key,
                    entry: p.entry,
                    tm: p.tm,
                    acceptors: p.acceptors.clone(),
                    keys: p.keys.clone(),
                    instance,
                    prepared,
                });
                self.set_timer(
                    self.now + self.cfg.takeover_after * 3,
                    Timer::AskDecision(tid),
                );
                prepared
            }
        };
        self.send_votes(tid, p.tm, &p.acceptors, &p.keys, instance, prepared, false);
    }

    #[allow(clippy::too_many_arguments)]
    fn send_votes(
        &mut self,
        tid: TxId,
        tm: NodeRef,
        acceptors: &[NodeRef],
        keys: &[RingId],
        instance: (u8, u8),
        prepared: bool,
        with_meta: bool,
    ) {
        let meta = with_meta.then(|| {
            Box::new(TxMeta {
                tm,
                acceptors: acceptors.to_vec(),
                keys: keys.to_vec(),
            })
        });
        for (slot, acceptor) in acceptors.iter().enumerate() {
            let vote = Vote {
                tid,
                meta: meta.clone(),
                instance,
                ballot: 0,
                prepared,
                tp: Some(self.me),
                leader: tm,
                slot: slot as u8,
            };
            self.send(*acceptor, Body::Vote(Box::new(vote)));
        }
    }

    /// A participant still locked after a while: send the votes again; an acceptor that knows
    /// the outcome answers with it, one that never heard of the transaction starts its
    /// takeover timer.
    pub(crate) fn ask_decision(&mut self, tid: TxId) {
        let Some(ps) = self.participants.get(&tid) else {
            return;
        };
        let again: Vec<_> = ps
            .iter()
            .map(|p| {
                (
                    p.tm,
                    p.acceptors.clone(),
                    p.keys.clone(),
                    p.instance,
                    p.prepared,
                )
            })
            .collect();
        for (tm, acceptors, keys, instance, prepared) in again {
            self.send_votes(tid, tm, &acceptors, &keys, instance, prepared, true);
        }
        self.set_timer(
            self.now + self.cfg.takeover_after * 3,
            Timer::AskDecision(tid),
        );
    }

    pub(crate) fn on_decide(&mut self, tid: TxId, commit: bool) {
        let mut any = false;
        if let Some(ps) = self.participants.remove(&tid) {
            for p in ps {
                self.store.finish(p.key, tid, &p.entry, commit);
            }
            self.decided.insert(tid);
            any = true;
        }
        for slot in 0..self.cfg.acceptors() {
            if let Some(a) = self.acceptors.get_mut(&(tid, slot)) {
                a.decided = Some(commit);
                any = true;
            }
        }
        if let Some(leader) = self.leaders.get_mut(&tid) {
            if leader.decided.is_none() {
                leader.decided = Some(commit);
                if let Some(req) = leader.client.take() {
                    self.report(req, commit, None);
                }
            }
            any = true;
        }
        if any {
            self.set_timer(self.now + REMEMBER_DECISIONS, Timer::ForgetTx(tid));
        }
    }

    pub(crate) fn on_ask_decision(&mut self, from: NodeRef, tid: TxId) {
        let decided = (0..self.cfg.acceptors())
            .find_map(|slot| self.acceptors.get(&(tid, slot)).and_then(|a| a.decided));
        if let Some(commit) = decided {
            self.send(from, Body::Decide { tid, commit });
        }
    }

    pub(crate) fn forget_tx(&mut self, tid: TxId) {
        self.decided.remove(&tid);
        self.leaders.remove(&tid);
        for slot in 0..self.cfg.acceptors() {
            self.acceptors.remove(&(tid, slot));
        }
    }

    // Acceptors.

    pub(crate) fn on_vote(&mut self, v: Vote) {
        let key = (v.tid, v.slot);
        let takeover_at = self.now + self.cfg.takeover_after * u32::from(v.slot.max(1));
        let fresh = !self.acceptors.contains_key(&key);
        let a = self.acceptors.entry(key).or_insert_with(|| Acceptor {
            meta: None,
            promised: 0,
            accepted: HashMap::default(),
            tps: HashMap::default(),
            decided: None,
        });
        if a.meta.is_none() {
            if let Some(m) = &v.meta {
                a.meta = Some((m.tm, m.acceptors.clone(), m.keys.clone()));
            }
        }
        if let Some(tp) = v.tp {
            a.tps.insert(v.instance, tp);
        }
        if let Some(commit) = a.decided {
            if let Some(tp) = v.tp {
                self.send(tp, Body::Decide { tid: v.tid, commit });
            }
            return;
        }
        if v.ballot < a.promised {
            return;
        }
        a.promised = v.ballot;
        a.accepted.insert(v.instance, (v.ballot, v.prepared));
        let body = Body::Accepted {
            tid: v.tid,
            slot: v.slot,
            instance: v.instance,
            ballot: v.ballot,
            prepared: v.prepared,
            tp: v.tp,
        };
        if fresh && v.slot > 0 {
            self.set_timer(takeover_at, Timer::Takeover(v.tid, v.slot));
        }
        self.send(v.leader, body);
    }

    pub(crate) fn on_prepare1a(&mut self, from: NodeRef, tid: TxId, ballot: u32, slot: u8) {
        if slot >= self.cfg.acceptors() {
            return;
        }
        let a = self
            .acceptors
            .entry((tid, slot))
            .or_insert_with(|| Acceptor {
                meta: None,
                promised: 0,
                accepted: HashMap::default(),
                tps: HashMap::default(),
                decided: None,
            });
        if let Some(commit) = a.decided {
            self.send(from, Body::Decide { tid, commit });
            return;
        }
        if ballot <= a.promised {
            return;
        }
        a.promised = ballot;
        let mut accepted: Vec<AcceptedVote> = a
            .accepted
            .iter()
            .map(|(&instance, &(ballot, prepared))| AcceptedVote {
                instance,
                ballot,
                prepared,
            })
            .collect();
        accepted.sort_unstable();
        self.send(
            from,
            Body::Promise {
                tid,
                slot,
                ballot,
                accepted,
            },
        );
    }

    // Leaders.

    pub(crate) fn on_accepted(
        &mut self,
        tid: TxId,
        slot: u8,
        instance: (u8, u8),
        ballot: u32,
        prepared: bool,
        tp: Option<NodeRef>,
    ) {
        let r = usize::from(self.cfg.replicas);
        let majority = self.cfg.majority();
        let Some(l) = self.leaders.get_mut(&tid) else {
            return;
        };
        if l.decided.is_some() || ballot != l.ballot || usize::from(instance.0) >= l.keys.len() {
            return;
        }
        if let Some(tp) = tp {
            l.tps.insert(instance, tp);
        }
        let slots = l.accepted.entry(instance).or_default();
        if !slots.contains(&slot) {
            slots.push(slot);
        }
        if slots.len() < l.acceptors.len() / 2 + 1 || l.learned.contains_key(&instance) {
            return;
        }
        l.learned.insert(instance, prepared);
        // A key is committable once a majority of its replicas voted prepared, and lost once
        // more than a minority voted abort.
        let mut all_ok = true;
        let mut lost = false;
        for item in 0..l.keys.len() as u8 {
            let votes = (0..r as u8).filter_map(|j| l.learned.get(&(item, j)));
            let yes = votes.clone().filter(|v| **v).count();
            let no = votes.filter(|v| !**v).count();
            all_ok &= yes >= majority;
            lost |= no + majority > r;
        }
        if all_ok || lost {
            self.decide(tid, all_ok);
        }
    }

    fn decide(&mut self, tid: TxId, commit: bool) {
        let r = self.cfg.replicas;
        let Some(l) = self.leaders.get_mut(&tid) else {
            return;
        };
        l.decided = Some(commit);
        let client = l.client.take();
        let took_over = l.ballot > 0;
        let mut told: Vec<NodeRef> = Vec::new();
        let mut routed: Vec<RingId> = Vec::new();
        for (item, key) in l.keys.iter().enumerate() {
            for j in 0..r {
                match l.tps.get(&(item as u8, j)) {
                    Some(tp) => told.push(*tp),
                    None => routed.push(key.replica(j, r)),
                }
            }
        }
        told.extend(l.acceptors.iter().copied());
        told.push(l.tm);
        told.sort_by_key(|n| n.id);
        told.dedup();
        if took_over {
            self.stats.takeovers += 1;
        }
        for node in told {
            self.send(node, Body::Decide { tid, commit });
        }
        for key in routed {
            self.route_to(key, Op::Decide { tid, commit });
        }
        if let Some(req) = client {
            self.report(req, commit, Some(tid));
        }
        self.set_timer(self.now + REMEMBER_DECISIONS, Timer::ForgetTx(tid));
    }

    fn report(&mut self, req: u64, commit: bool, _tid: Option<TxId>) {
        let Some(c) = self.clients.get(&req) else {
            return;
        };
        let result = if commit {
            Ok(c.results.clone().unwrap_or_default())
        } else {
            let conflict = self.conflict_key(req);
            Err(Abort::Conflict { key: conflict })
        };
        self.finish_client(req, result);
    }

    /// The first key of the client's transaction that a majority of replicas did not
    /// prepare.
    fn conflict_key(&self, req: u64) -> Vec<u8> {
        let Some(c) = self.clients.get(&req) else {
            return Vec::new();
        };
        let majority = self.cfg.majority();
        let l = c.tid.and_then(|t| self.leaders.get(&t));
        let bad = (0..c.keys.len()).find(|&i| {
            let yes = l.map_or(0, |l| {
                (0..self.cfg.replicas)
                    .filter(|&j| l.learned.get(&(i as u8, j)) == Some(&true))
                    .count()
            });
            yes < majority
        });
        c.keys[bad.unwrap_or(0)].0.clone()
    }

    /// A replicated manager heard no decision in time: it becomes leader with a higher ballot
    /// and runs both Paxos phases for every participant's instance.
    pub(crate) fn takeover(&mut self, tid: TxId, slot: u8) {
        let Some(a) = self.acceptors.get(&(tid, slot)) else {
            return;
        };
        if a.decided.is_some() {
            return;
        }
        let Some((tm, acceptors, keys)) = a.meta.clone() else {
            // Not yet known who else to ask: the participants send it with their
            // retransmitted votes. Try again later.
            self.set_timer(
                self.now + self.cfg.takeover_after,
                Timer::Takeover(tid, slot),
            );
            return;
        };
        let ballot = ((a.promised >> 8) + 1) << 8 | u32::from(slot);
        let client = self.leaders.get_mut(&tid).and_then(|l| l.client.take());
        self.leaders.insert(
            tid,
            Leader {
                client,
                tm,
                acceptors: acceptors.clone(),
                keys,
                entries: Vec::new(),
                ballot,
                promises: HashMap::default(),
                proposed: false,
                accepted: HashMap::default(),
                learned: HashMap::default(),
                tps: a.tps.clone(),
                decided: None,
            },
        );
        for (s, acceptor) in acceptors.iter().enumerate() {
            self.send(
                *acceptor,
                Body::Prepare1a {
                    tid,
                    ballot,
                    slot: s as u8,
                },
            );
        }
        // If this leader fails too, try again later (with a higher ballot).
        self.set_timer(
            self.now + self.cfg.takeover_after * 2,
            Timer::Takeover(tid, slot),
        );
    }

    pub(crate) fn on_promise(
        &mut self,
        tid: TxId,
        slot: u8,
        ballot: u32,
        accepted: Vec<AcceptedVote>,
    ) {
        let r = self.cfg.replicas;
        let Some(l) = self.leaders.get_mut(&tid) else {
            return;
        };
        if l.decided.is_some() || l.ballot != ballot || l.proposed {
            return;
        }
        l.promises.insert(slot, accepted);
        if l.promises.len() < l.acceptors.len() / 2 + 1 {
            return;
        }
        l.proposed = true;
        // Phase 2: for each instance, the value accepted in the highest ballot, else abort.
        let mut proposals = Vec::new();
        for item in 0..l.keys.len() as u8 {
            for j in 0..r {
                let best = l
                    .promises
                    .values()
                    .flatten()
                    .filter(|a| a.instance == (item, j))
                    .max_by_key(|a| a.ballot)
                    .map(|a| a.prepared);
                proposals.push(((item, j), best.unwrap_or(false)));
            }
        }
        let acceptors = l.acceptors.clone();
        let tps = l.tps.clone();
        for (instance, prepared) in proposals {
            for (s, acceptor) in acceptors.iter().enumerate() {
                let vote = Vote {
                    tid,
                    meta: None,
                    instance,
                    ballot,
                    prepared,
                    tp: tps.get(&instance).copied(),
                    leader: self.me,
                    slot: s as u8,
                };
                self.send(*acceptor, Body::Vote(Box::new(vote)));
            }
        }
    }
}
