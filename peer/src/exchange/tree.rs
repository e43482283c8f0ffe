//! The feeding tree inside the mesh: who feeds whom every segment as soon as they get it.
//!
//! Each peer reports its measured upload, its depth (hops from the source along parents) and
//! its spare room. A viewer subscribes to the partner nearest the source with room; the
//! parent pushes what it gets, its strongest children first. A full parent drops its weakest
//! child for a subscriber that uploads clearly more, or refers the newcomer to its children
//! (and to partners that reported room), so a join descends to the first level with room and
//! high-upload peers collect near the source (the tiers of the Chandelier design); a dropped
//! child gets the same referrals. Strong peers deep in the tree climb; a parent
//! that keeps missing is replaced.

use std::time::{Duration, Instant};

use super::{Exchange, Output, ParentChoice, Queued};
use crate::identity::PeerId;
use crate::segment::SegmentId;
use crate::wire::{Frame, Part, PeerAddr};

impl Exchange {
    /// Pushes a segment we just got to every peer we feed.
    pub(super) fn push_children(&mut self, now: Instant, id: SegmentId) {
        // The children that feed the most others first: the segment reaches the most peers
        // soonest.
        let mut children = self.children.clone();
        children.sort_by_key(|c| {
            let p = self.partners.get(c);
            let up = p.and_then(|p| p.upload_kbps).unwrap_or(0);
            (std::cmp::Reverse(up), *c)
        });
        for child in children {
            self.push_to(child, id);
        }
        self.start_uploads(now);
    }

    /// Our depth in the feeding tree: 0 at the source, one more than our parent's.
    pub(super) fn depth(&self) -> u8 {
        if self.is_source() {
            return 0;
        }
        self.parent
            .and_then(|p| self.partners.get(&p))
            .map_or(NO_DEPTH, |p| p.depth.saturating_add(1))
    }

    /// How many peers we feed at most: the source one per stream its upload carries but
    /// one (kept for last-resort requests), a viewer one per whole stream.
    pub(super) fn child_slots(&self) -> usize {
        let streams = self.meter.estimate_bps() / self.bitrate_bps();
        let slots = if self.is_source() {
            ((streams - 1.0).max(0.0) as usize).max(self.config.source_min_children)
        } else {
            // Whole streams only (a little below counts: measurements are noisy); what is
            // left over serves partners' requests.
            (streams * CHILD_LOAD + 0.05) as usize
        };
        slots.min(self.config.max_children)
    }

    /// Drops the weakest peers we feed while we feed more than our upload carries (our
    /// measured capacity fell).
    pub(super) fn shed_children(&mut self) {
        while self.children.len() > self.child_slots() {
            // Children the plan names for us go last.
            let weakest = self.children.iter().copied().min_by_key(|c| {
                let up = self
                    .partners
                    .get(c)
                    .and_then(|p| p.upload_kbps)
                    .unwrap_or(0);
                (self.hinted_downstream(c), up, *c)
            });
            let Some(w) = weakest else { return };
            self.children.retain(|c| *c != w);
            self.send(w, Frame::Feed(false));
        }
    }

    /// How many more peers we would feed.
    pub(super) fn spare(&self) -> u8 {
        u8::try_from(self.child_slots().saturating_sub(self.children.len())).unwrap_or(u8::MAX)
    }

    /// We cannot feed `peer` (or no longer do): it hears `Feed(false)` and where to look
    /// instead (`referrals`).
    pub(super) fn refuse_feed(&mut self, peer: PeerId) {
        self.send(peer, Frame::Feed(false));
        let list = self.referrals(peer);
        if !list.is_empty() {
            self.send(peer, Frame::Peers(list));
        }
    }

    /// Where a peer we cannot feed looks instead, other than itself: the peers we feed, those
    /// with room and the most upload first, one level further from the source (a join descends
    /// the tree until it fits); then up to four other fed partners that reported room.
    pub(super) fn referrals(&self, peer: PeerId) -> Vec<PeerAddr> {
        let mut referrals: Vec<(bool, u32, PeerAddr)> = self
            .children
            .iter()
            .filter(|c| **c != peer)
            .filter_map(|c| {
                let p = self.partners.get(c)?;
                let addr = p.listen?;
                Some((
                    p.spare == 0,
                    u32::MAX - p.upload_kbps.unwrap_or(0),
                    PeerAddr { id: *c, addr },
                ))
            })
            .collect();
        referrals.sort_by_key(|(full, up, a)| (*full, *up, a.id));
        referrals.truncate(8);
        // Then other fed partners that said they have room, nearest the source first: in a
        // swarm whose upload barely carries its viewers, a free place is rare, and a viewer
        // looking for one would otherwise find it only by chance.
        let mut roomy: Vec<(u8, PeerAddr)> = self
            .partners
            .iter()
            .filter(|(id, p)| {
                **id != peer && p.spare > 0 && p.depth < NO_DEPTH && !self.children.contains(id)
            })
            .filter_map(|(id, p)| {
                Some((
                    p.depth,
                    PeerAddr {
                        id: *id,
                        addr: p.listen?,
                    },
                ))
            })
            .collect();
        roomy.sort_by_key(|(depth, a)| (*depth, a.id));
        let mut list: Vec<PeerAddr> = referrals.into_iter().map(|(.., a)| a).collect();
        list.extend(roomy.into_iter().take(4).map(|(_, a)| a));
        list
    }

    /// A partner asks us to feed it, or to stop. We accept while we have room, and otherwise
    /// if it uploads more than the weakest peer we feed (which we drop): high-upload peers
    /// end up near the source, where their upload feeds the most.
    pub(super) fn on_subscribe(
        &mut self,
        now: Instant,
        peer: PeerId,
        on: bool,
        first: Option<u64>,
    ) {
        if !on {
            self.children.retain(|p| *p != peer);
            return;
        }
        if self.children.contains(&peer) {
            self.send(peer, Frame::Feed(true));
            return;
        }
        let fed = self.is_live() && (self.is_source() || self.parent.is_some());
        let upload = |id: &PeerId| {
            self.partners
                .get(id)
                .and_then(|p| p.upload_kbps)
                .unwrap_or(0)
        };
        if !fed || self.parent == Some(peer) || self.child_slots() == 0 {
            self.refuse_feed(peer);
            return;
        }
        let mut displaced = None;
        if self.children.len() >= self.child_slots() {
            // A child the plan names for us is never dropped for one it does not; one it names
            // takes the place of the weakest other (a hinted tier-1 peer gets a source slot).
            let weakest = self
                .children
                .iter()
                .copied()
                .filter(|c| !self.hinted_downstream(c))
                .min_by_key(|c| (upload(c), *c));
            let planned = self.hinted_downstream(&peer);
            let random = self.config.parent_choice == ParentChoice::Random;
            match weakest {
                Some(w) if planned || !random && upload(&peer) > upload(&w) + upload(&w) / 5 => {
                    self.children.retain(|c| *c != w);
                    displaced = Some(w);
                }
                _ => {
                    self.refuse_feed(peer);
                    return;
                }
            }
        }
        self.children.push(peer);
        if let Some(partner) = self.partners.get_mut(&peer) {
            partner.fed_from = first.unwrap_or(0);
        }
        self.send(peer, Frame::Feed(true));
        // The child it displaced hears of the peers we feed, the newcomer among them: it finds
        // its place one level further down instead of starting its search over.
        if let Some(w) = displaced {
            self.refuse_feed(w);
        }
        // From now on: the newest segment if we hold it, and what comes next; before them, a
        // newcomer's first segment. Older segments it misses it fetches from its partners;
        // pushing a backlog would hold up the live edge behind it, for this child and for
        // every peer below it (in `sim`, pushing the two before the newest cost smoke 0.97 →
        // 0.52 and live-1k 0.94 → 0.83 continuity).
        // (Nothing older than the first: it would hold up the first behind it; `push_to`.)
        let first = first.map(SegmentId::Media);
        for id in first.into_iter().chain(self.newest().map(SegmentId::Media)) {
            if self.store.contains_key(&id) {
                self.push_to(peer, id);
            }
        }
        self.start_uploads(now);
    }

    /// A partner's answer to our subscription, or its change of mind.
    pub(super) fn on_feed(&mut self, now: Instant, peer: PeerId, on: bool) {
        let asked = self.asked_parent.is_some_and(|(p, _)| p == peer);
        if asked {
            self.asked_parent = None;
        }
        if on {
            if !asked && self.parent != Some(peer) {
                // Not asked for (any more): decline.
                self.unsubscribe(peer);
                return;
            }
            if let Some(old) = self.parent.filter(|p| *p != peer) {
                self.unsubscribe(old);
            }
            if self.parent != Some(peer) {
                self.pushed_from = self.newest().unwrap_or(0);
            }
            self.parent = Some(peer);
            self.referred.clear();
        } else {
            if let Some(partner) = self.partners.get_mut(&peer) {
                partner.refused_until = Some(now + REFUSED_BACKOFF);
            }
            if self.parent == Some(peer) {
                self.parent = None;
            }
            if self.parent.is_none() {
                self.find_parent(now);
            }
        }
    }

    /// Tells `peer` to stop feeding us (or not to start).
    fn unsubscribe(&mut self, peer: PeerId) {
        let frame = Frame::Subscribe {
            on: false,
            first: None,
        };
        self.send(peer, frame);
    }

    /// Stops being fed by our parent and looks for another.
    pub(super) fn leave_parent(&mut self, now: Instant) {
        if let Some(parent) = self.parent.take() {
            self.unsubscribe(parent);
            if let Some(partner) = self.partners.get_mut(&parent) {
                partner.refused_until = Some(now + REFUSED_BACKOFF);
            }
        }
        self.find_parent(now);
    }

    /// Looks for a (better) parent: a sender the plan names (`hints`), best ranked first, else
    /// the partner nearest the source, then with the most upload, that has room to feed us, or,
    /// for a peer that uploads more than two streams, one that may drop a weaker child for us. A
    /// fed viewer moves only to a partner at least two levels nearer the source than its parent
    /// (or to a better-ranked hinted one: see below), so the tree flattens without churning.
    /// With [`ParentChoice::Random`] an unfed viewer takes a partner with room at random and
    /// stays with it.
    pub(super) fn find_parent(&mut self, now: Instant) {
        // On demand, viewers watch different parts: no tree, the mesh serves them.
        if self.is_source() || !self.is_live() {
            return;
        }
        if let Some((_, at)) = self.asked_parent {
            if now.saturating_duration_since(at) < SUBSCRIBE_TIMEOUT {
                return;
            }
            self.asked_parent = None;
        }
        let random = self.config.parent_choice == ParentChoice::Random;
        let strong = !random && self.meter.estimate_bps() >= 2.0 * self.bitrate_bps();
        let my_kbps = (self.meter.estimate_bps() / 1000.0) as u32;
        let current = self
            .parent
            .and_then(|p| self.partners.get(&p))
            .map(|p| p.depth);
        let parent_rank = self.parent.and_then(|p| self.hint_rank(&p));
        let children = &self.children;
        let parent = self.parent;
        let best = self
            .partners
            .iter()
            .filter_map(|(id, p)| {
                let rank = self.hint_rank(id);
                // A fed viewer moves to a better-ranked hinted sender no deeper than its parent,
                // or one level deeper for the sender ranked first (the plan's tiers free the
                // place it holds for another); to any partner two levels nearer.
                let movable = match current {
                    None => true,
                    Some(_) if random => false,
                    Some(d) => {
                        let nearer = p.depth.saturating_add(2) <= d;
                        let deeper_ok = u8::from(rank == Some(0));
                        let follows = p.depth <= d.saturating_add(deeper_ok);
                        match (rank, parent_rank) {
                            (Some(r), Some(pr)) => r < pr && follows || nearer,
                            (Some(_), None) => follows,
                            (None, _) => nearer,
                        }
                    }
                };
                let ok = p.greeted
                    && p.depth < MAX_DEPTH
                    && (p.spare > 0
                        || rank == Some(0)
                        || strong && p.upload_kbps.is_some_and(|k| k < my_kbps * 4))
                    && Some(*id) != parent
                    && !children.contains(id)
                    && p.refused_until.is_none_or(|t| t <= now)
                    && movable;
                ok.then_some((*id, p, rank))
            })
            .min_by_key(|(id, p, rank)| {
                if random {
                    return (0, 0, false, self.random_rank(id), *id);
                }
                // A sender the plan names is worth up to two levels (one if not ranked first).
                let bonus = match rank {
                    Some(0) => 0,
                    Some(_) => 1,
                    None => 2,
                };
                (
                    usize::from(p.depth) + bonus,
                    rank.unwrap_or(usize::MAX),
                    p.spare == 0,
                    // The most upload first.
                    u64::from(u32::MAX - p.upload_kbps.unwrap_or(0)),
                    *id,
                )
            })
            .map(|(id, ..)| id);
        if let Some(peer) = best {
            self.asked_parent = Some((peer, now));
            // A newcomer asks for its first segment too: the parent has a stream's worth of
            // upload to spare (that is why it takes us), more than the partners' requests get.
            let first = SegmentId::Media(self.cursor);
            let first = self.playback_waits_for(first).then_some(self.cursor);
            self.send(peer, Frame::Subscribe { on: true, first });
        }
    }

    /// A peer that uploads more than two streams but sits deep in the tree climbs: it asks
    /// the source again (a full source answers with the peers it feeds, and so on down), and
    /// a parent that is full drops a weaker child for it. So the tree keeps the high-upload
    /// peers near the source, where they feed the most, as Chandelier's tiers do.
    pub(super) fn climb(&mut self, now: Instant) {
        let strong = self.meter.estimate_bps() >= 2.0 * self.bitrate_bps();
        let depth = self.depth();
        // The plan placed a hinted peer; the random baseline does not climb.
        if self.hint.is_some() || self.config.parent_choice != ParentChoice::Nearest {
            return;
        }
        if !strong || self.parent.is_none() || depth < CLIMB_FROM_DEPTH || now < self.next_climb {
            return;
        }
        self.next_climb = now + self.climb_backoff;
        self.climb_backoff = (self.climb_backoff * 2).min(MAX_CLIMB_BACKOFF);
        self.climbing_until = Some(now + SUBSCRIBE_TIMEOUT * 2);
        let Some(source) = self.source_peer() else {
            return;
        };
        if self.partners.contains_key(&source) {
            self.find_parent(now);
        } else if !self.dialing.contains(&source) {
            if let Some(addr) = self.candidates.get(&source).copied() {
                self.backoff.remove(&source);
                self.dialing.insert(source);
                self.outputs
                    .push_back(Output::Dial(PeerAddr { id: source, addr }));
            }
        }
    }

    /// Queues segment `id` for a child that does not hold it.
    pub(super) fn push_to(&mut self, child: PeerId, id: SegmentId) {
        // What it holds, or what is older than its first segment, it does not need.
        let holds = self.partners.get(&child).is_none_or(|p| {
            p.have.contains(id) || matches!(id, SegmentId::Media(seq) if seq < p.fed_from)
        });
        let queued = || {
            self.upload_queue
                .iter()
                .any(|q| q.to == child && q.id == id)
        };
        if holds || self.uploads.contains_key(&(child, id)) || queued() {
            return;
        }
        let now = self.seen.get(&id).copied();
        let deadline = match now {
            Some(seen) => seen + self.config.target_latency,
            None => return,
        };
        self.stats.segments_pushed += 1;
        self.queued_total += 1;
        self.upload_queue.insert(Queued {
            request: false,
            deadline,
            order: self.queued_total,
            to: child,
            id,
            part: Part::WHOLE,
        });
    }
}

/// Depth of a peer that is not fed (no parent chain to the source).
pub(super) const NO_DEPTH: u8 = u8::MAX;
/// The longest feeding chain a peer joins (longer ones mean a loop or a bad tree).
pub(super) const MAX_DEPTH: u8 = 24;
/// A subscription unanswered this long is given up.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(2);
/// A partner that refused to feed us is not asked again before this.
const REFUSED_BACKOFF: Duration = Duration::from_secs(10);
/// A parent that misses this many pushes in a row is replaced.
pub(super) const MAX_PARENT_MISSES: u32 = 3;
/// A strong peer this deep (or deeper) tries to climb, first this long after it started,
/// then after twice as long each time, up to the bound.
const CLIMB_FROM_DEPTH: u8 = 3;
pub(super) const FIRST_CLIMB: Duration = Duration::from_secs(10);
const MAX_CLIMB_BACKOFF: Duration = Duration::from_secs(120);
/// The share of a viewer's uplink that its children's streams take at most: the rest
/// absorbs requests, repairs and rate dips, so forwards do not queue up behind each other.
const CHILD_LOAD: f64 = 0.87;
