//! Data movement and replica repair: hand-over on join and leave, recovery of ranges taken
//! over from crashed nodes, and anti-entropy between the replicas of a range.
//!
//! Recovery is what keeps partitions safe. A node whose range grew over a crashed
//! predecessor's holds nothing of that part yet, and is not *sure* of it. It asks the nodes
//! holding the other `r - 1` symmetric replicas of the part for their items; once a majority of
//! the replicas (`⌊r/2⌋ + 1` siblings, each sure of its part) have answered, it has every
//! committed value (each was written to a majority) and becomes sure. A partition side with
//! fewer than a majority of a range's replicas never gets there, so it cannot rebuild a
//! majority of its own and commit on its own. Anti-entropy runs the same fetch against one
//! sibling per round and keeps the newer version of every item, which repairs replicas that
//! missed a commit.

use crate::id::{replica_stride, NodeRef, RangeSet, RingId};
use crate::msg::{Body, Op};
use crate::node::{OverlayNode, Phase, Timer};
use crate::store::{Item, MAX_CHUNK_BYTES};

/// The most items in one hand-over or fetch answer.
pub(crate) const CHUNK: usize = 256;

/// One fetch from one sibling, continued chunk by chunk.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fetch {
    /// Which sibling replica (1..r).
    sibling: u8,
    /// The start of this chunk's range (exclusive), in our own coordinates.
    from: RingId,
    /// The end of the range, in our own coordinates.
    to: RingId,
    /// Whether this fetch is part of a recovery (or anti-entropy).
    recovery: bool,
}

/// A recovery in progress: the range and how the siblings answered.
#[derive(Clone, Debug)]
pub(crate) struct Recovery {
    /// Per sibling, the parts of the range it answered for with authority (our coordinates).
    coverage: Vec<RangeSet>,
    /// Siblings still answering.
    open: u8,
}

impl OverlayNode {
    /// Gives `(from, to]` to `to_node`: its items, and our authority over it if we had it.
    /// Returns the ids of the chunks sent.
    pub(crate) fn handover_to(&mut self, to_node: NodeRef, from: RingId, to: RingId) -> Vec<u64> {
        self.handover_with(to_node, from, to, None)
    }

    /// A hand-over; `leaving` names our predecessor when we leave (see [`Body::Handover`]).
    pub(crate) fn handover_with(
        &mut self,
        to_node: NodeRef,
        from: RingId,
        to: RingId,
        leaving: Option<Option<NodeRef>>,
    ) -> Vec<u64> {
        let items = self.store.take_range(from, to);
        let sure = self.store.sure().covers(from, to);
        self.store.unmark_sure(from, to);
        self.send_handover(to_node, (from, to, sure), items, leaving)
    }

    fn send_handover(
        &mut self,
        to_node: NodeRef,
        (from, to, sure): (RingId, RingId, bool),
        items: Vec<(RingId, Item)>,
        leaving: Option<Option<NodeRef>>,
    ) -> Vec<u64> {
        // At most CHUNK items and MAX_CHUNK_BYTES of values per message (at least one item).
        let mut chunks: Vec<Vec<(RingId, Item)>> = vec![Vec::new()];
        let mut bytes = 0;
        for item in items {
            let size = item.1.value.size();
            let full = chunks.last().map_or(0, Vec::len);
            if full == CHUNK || (full > 0 && bytes + size > MAX_CHUNK_BYTES) {
                chunks.push(Vec::new());
                bytes = 0;
            }
            bytes += size;
            if let Some(chunk) = chunks.last_mut() {
                chunk.push(item);
            }
        }
        let last = chunks.len() - 1;
        let mut ids = Vec::with_capacity(chunks.len());
        for (i, items) in chunks.into_iter().enumerate() {
            let id = self.new_req();
            ids.push(id);
            self.send(
                to_node,
                Body::Handover {
                    id,
                    last: i == last,
                    leaving: if i == last { leaving } else { None },
                    from,
                    to,
                    sure: sure && i == last,
                    items,
                },
            );
        }
        ids
    }

    pub(crate) fn on_handover(
        &mut self,
        sender: NodeRef,
        id: u64,
        (last, leaving): (bool, Option<Option<NodeRef>>),
        (from, to, sure): (RingId, RingId, bool),
        items: Vec<(RingId, Item)>,
    ) {
        self.send(sender, Body::HandoverAck { id });
        if self.phase == Phase::Leaving {
            // We are going too: the data goes on to our successor, with its authority.
            if let Some(succ) = self.succs.first().copied() {
                let sent = self.send_handover(succ, (from, to, sure), items, None);
                self.handovers_unacked.extend(sent);
            }
            return;
        }
        for (key, item) in items {
            self.store.merge(key, item);
        }
        if last {
            if let Some(pred) = leaving {
                self.on_leave_pred(sender, pred);
            }
        }
        if sure {
            self.store.mark_sure(from, to);
        }
        // A joiner may already have taken the front of this range from us (its join overtook
        // this hand-over): that part, its items and its authority go on to it.
        if let Some(pred) = self.pred.filter(|_| !self.pred_suspected) {
            if pred.id.in_open(from, to) {
                self.handover_to(pred, from, pred.id);
            }
        }
    }

    /// The range this node is responsible for, as a set.
    pub(crate) fn own_range(&self) -> RangeSet {
        match self.pred {
            Some(pred) => RangeSet::interval(pred.id, self.me.id),
            None if self.succs.is_empty() => RangeSet::interval(self.me.id, self.me.id),
            None => RangeSet::new(),
        }
    }

    /// The periodic repair: recover the first unsure part of our range, or else pull one
    /// sibling's copy of our range (anti-entropy).
    pub(crate) fn repair(&mut self) {
        let now = self.now;
        self.set_timer(now + self.cfg.repair_every, Timer::Repair);
        if self.phase != Phase::Member || self.cfg.replicas < 2 {
            return;
        }
        let own = self.own_range();
        let unsure = own.difference(self.store.sure());
        if self.recovery.is_none() {
            // The unsure parts in turn, so that one that cannot be recovered (yet) does not
            // block the others.
            let parts: Vec<(RingId, RingId)> = unsure.intervals().collect();
            let pick = parts
                .get(self.repair_cursor as usize % parts.len().max(1))
                .copied();
            if let Some((from, to)) = pick {
                self.repair_cursor = self.repair_cursor.wrapping_add(1);
                let siblings = self.cfg.replicas - 1;
                let coverage = vec![RangeSet::new(); usize::from(siblings)];
                self.recovery = Some(Recovery {
                    coverage,
                    open: siblings,
                });
                for sibling in 1..self.cfg.replicas {
                    self.start_fetch(sibling, from, to, true);
                }
                return;
            }
        }
        if self.fetches.values().any(|f| !f.recovery) {
            return;
        }
        // Anti-entropy: one sibling, one part of our range per round, in turn. Taking newer
        // versions is always safe (only committed writes make items), so it covers the whole
        // range, sure or not.
        self.repair_cursor = self.repair_cursor.wrapping_add(1);
        let siblings = u32::from(self.cfg.replicas - 1);
        let sibling = (self.repair_cursor % siblings) as u8 + 1;
        let parts: Vec<(RingId, RingId)> = own.intervals().collect();
        if !parts.is_empty() {
            let (from, to) = parts[(self.repair_cursor / siblings) as usize % parts.len()];
            self.start_fetch(sibling, from, to, false);
        }
    }

    fn start_fetch(&mut self, sibling: u8, from: RingId, to: RingId, recovery: bool) {
        let shift = replica_stride(self.cfg.replicas).wrapping_mul(u128::from(sibling));
        let req = self.new_req();
        self.fetches.insert(
            req,
            Fetch {
                sibling,
                from,
                to,
                recovery,
            },
        );
        self.set_timer(self.now + self.cfg.request_timeout, Timer::Fetch(req));
        self.route_to(
            from.plus(shift).plus(1),
            Op::Fetch {
                req,
                to: to.plus(shift),
            },
        );
    }

    /// At a sibling: send what we hold of `(start - 1, to]`, as far as our range goes.
    pub(crate) fn on_fetch(&mut self, origin: NodeRef, req: u64, start: RingId, to: RingId) {
        let from = RingId(start.0.wrapping_sub(1));
        let end = if to.in_half_open(from, self.me.id) {
            to
        } else {
            self.me.id
        };
        let (items, covered_to) = self.store.range(from, end, CHUNK);
        let sure = self.store.sure().covers(from, covered_to);
        self.send(
            origin,
            Body::Items {
                req,
                covered_to,
                sure,
                items,
            },
        );
    }

    pub(crate) fn on_items(
        &mut self,
        req: u64,
        covered_to: RingId,
        sure: bool,
        items: Vec<(RingId, Item)>,
    ) {
        let Some(fetch) = self.fetches.remove(&req) else {
            return;
        };
        let shift = replica_stride(self.cfg.replicas).wrapping_mul(u128::from(fetch.sibling));
        let own = self.own_range();
        for (key, item) in items {
            // Items of committed writes only ever come newer, so any copy is safe to take.
            let local = RingId(key.0.wrapping_sub(shift));
            if own.contains(local) {
                self.store.merge(local, item);
            }
        }
        let covered = RingId(covered_to.0.wrapping_sub(shift));
        if fetch.recovery && sure {
            if let Some(rec) = self.recovery.as_mut() {
                let i = usize::from(fetch.sibling - 1);
                if let Some(c) = rec.coverage.get_mut(i) {
                    c.insert(fetch.from, covered);
                }
            }
        }
        let more = covered != fetch.to && own.contains(covered) && covered != fetch.from;
        if more {
            self.start_fetch(fetch.sibling, covered, fetch.to, fetch.recovery);
        } else if fetch.recovery {
            self.sibling_done();
        }
    }

    pub(crate) fn fetch_timeout(&mut self, req: u64) {
        if let Some(fetch) = self.fetches.remove(&req) {
            if fetch.recovery {
                self.sibling_done();
            }
        }
    }

    /// One sibling finished answering (or gave up). Once all have, the positions that a
    /// majority of replicas answered for with authority become sure; the rest waits for the
    /// next round.
    fn sibling_done(&mut self) {
        let Some(rec) = self.recovery.as_mut() else {
            return;
        };
        rec.open = rec.open.saturating_sub(1);
        if rec.open > 0 {
            return;
        }
        let Some(rec) = self.recovery.take() else {
            return;
        };
        // With r ≤ 2 a majority of replicas is more than the siblings: such ranges are never
        // recovered, as a partition could otherwise rebuild them on both sides.
        let needed = self.cfg.majority();
        let n = rec.coverage.len();
        let mut recovered = RangeSet::new();
        for subset in 0u32..1 << n {
            if subset.count_ones() as usize != needed {
                continue;
            }
            let mut common: Option<RangeSet> = None;
            for (i, c) in rec.coverage.iter().enumerate() {
                if subset & 1 << i != 0 {
                    common = Some(match common {
                        None => c.clone(),
                        Some(x) => x.intersection(c),
                    });
                }
            }
            if let Some(common) = common {
                recovered.union_with(&common);
            }
        }
        let recovered = recovered.intersection(&self.own_range());
        if !recovered.is_empty() {
            for (f, t) in recovered.intervals().collect::<Vec<_>>() {
                self.store.mark_sure(f, t);
            }
            self.stats.recovered += 1;
        }
    }
}
