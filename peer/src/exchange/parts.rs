//! Fetching a segment in parts. A viewer whose player waits for a segment (its first after
//! joining or seeking, or the next after a skip) asks several partners for a part each, and
//! a partner that delivered its part for another one. A partner serves a request with what
//! its uplink leaves beside the streams it feeds, often a few hundred kbit/s; together they
//! deliver the segment sooner than any of them could alone. When every part is asked for,
//! idle holders are asked for the parts still under way too (the first copy to arrive wins),
//! so that one slow holder does not hold up the whole. The parts are put together and
//! checked against the broadcaster's statement like any segment; if the whole fails the
//! check, nobody can be blamed, and the segment is fetched whole instead.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tracing::{debug, warn};

use super::{Exchange, Partner};
use crate::identity::PeerId;
use crate::segment::SegmentId;
use crate::wire::{Frame, Part, MAX_PARTS};

/// The parts a segment is cut into.
pub(super) const PARTS: u8 = MAX_PARTS;
/// The most partners asked for one part at once (the second is asked once every part is).
const ASKS_PER_PART: usize = 2;

/// A segment being fetched in parts.
#[derive(Debug)]
pub(super) struct PartFetch {
    slots: Vec<Slot>,
}

#[derive(Debug, Clone)]
enum Slot {
    /// Asked of these partners (none: to ask someone).
    Asked(Vec<Ask>),
    Here {
        bytes: Bytes,
        from: PeerId,
    },
}

#[derive(Debug, Clone, Copy)]
struct Ask {
    peer: PeerId,
    sent: Instant,
    /// Given up on after this instant.
    deadline: Instant,
}

impl Slot {
    fn asks(&self) -> &[Ask] {
        match self {
            Self::Asked(asks) => asks,
            Self::Here { .. } => &[],
        }
    }
}

impl PartFetch {
    fn part(&self, index: usize) -> Part {
        Part {
            index: index as u8,
            of: self.slots.len() as u8,
        }
    }

    /// The part asked of `peer`, if any.
    fn asked_of(&self, peer: PeerId) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.asks().iter().any(|a| a.peer == peer))
    }

    /// When the earliest part asked for is given up on.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.slots
            .iter()
            .flat_map(Slot::asks)
            .map(|a| a.deadline)
            .min()
    }
}

impl Exchange {
    /// Whether segment `id` is the one playback (re)starts at: the first missing one with
    /// nothing before it here. Only such a segment is worth the extra requests of fetching
    /// it in parts; later ones have time to come whole.
    pub(super) fn playback_waits_for(&self, id: SegmentId) -> bool {
        let SegmentId::Media(seq) = id else {
            return false;
        };
        seq == self.cursor
            && self.split_failed != Some(id)
            && !self.store.contains_key(&id)
            && (seq == 0 || !self.store.contains_key(&SegmentId::Media(seq - 1)))
    }

    /// Starts fetching `id` in [`PARTS`] parts; returns false if no part could be asked for.
    pub(super) fn split(&mut self, now: Instant, id: SegmentId) -> bool {
        debug!(%id, "fetching in parts");
        self.stats.segments_split += 1;
        let slots = vec![Slot::Asked(Vec::new()); usize::from(PARTS)];
        self.parts.insert(id, PartFetch { slots });
        self.ask_parts(now, id)
    }

    /// Asks the holders of `id` not busy with one of its parts for the parts nobody is
    /// asked for, the soonest to deliver first; once every part is asked for, for those
    /// asked of one partner only. Returns false, and fetches the segment whole from now on,
    /// when no part is under way and nobody can be asked for the rest.
    pub(super) fn ask_parts(&mut self, now: Instant, id: SegmentId) -> bool {
        let (Some(fetch), Some(len)) = (
            self.parts.get(&id),
            self.statements.get(&id).map(|s| s.meta.len as usize),
        ) else {
            return false;
        };
        let asked: Vec<PeerId> = fetch
            .slots
            .iter()
            .flat_map(Slot::asks)
            .map(|a| a.peer)
            .collect();
        // Unasked parts first, then (endgame) parts asked of one partner, oldest ask first.
        let mut wanted: Vec<(usize, Option<Instant>)> = fetch
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s, Slot::Asked(asks) if asks.len() < ASKS_PER_PART))
            .map(|(i, s)| (i, s.asks().iter().map(|a| a.sent).min()))
            .collect();
        if wanted.is_empty() {
            return true;
        }
        wanted.sort_by_key(|(i, sent)| (sent.is_some(), *sent, *i));
        let part_bits = len as f64 * 8.0 / fetch.slots.len() as f64;
        let guess = self.bitrate_bps();
        let max = self.config.max_inflight_per_peer;
        // The broadcaster's uplink feeds the tree: it is not asked for parts; nor is our
        // parent (or the partner we asked to be), which pushes the segment whole.
        let not_asked = [
            self.source_peer(),
            self.parent,
            self.asked_parent.map(|(p, _)| p),
        ];
        // A holder that would deliver its part after the deadline is not worth asking: a busy
        // one may be free by then.
        let slack = self
            .deadline(id, now)
            .saturating_duration_since(now)
            .as_secs_f64();
        let mut holders: Vec<(f64, PeerId)> = self
            .partners
            .iter()
            .filter(|(peer, p)| {
                !not_asked.contains(&Some(**peer))
                    && !asked.contains(peer)
                    && can_serve_part(p, now, max)
                    && p.have.contains(id)
            })
            .map(|(peer, p)| {
                let eta = part_bits / p.expected_bps(guess) * (p.inflight + 1) as f64;
                (eta, *peer)
            })
            .filter(|(eta, _)| *eta <= slack)
            .collect();
        holders.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        for ((index, _), (eta, peer)) in wanted.into_iter().zip(holders) {
            let timeout = Duration::from_secs_f64(
                (2.0 * eta + 0.5).clamp(1.0, self.config.request_timeout.as_secs_f64()),
            );
            let Some(fetch) = self.parts.get_mut(&id) else {
                return false;
            };
            let part = fetch.part(index);
            if let Some(Slot::Asked(asks)) = fetch.slots.get_mut(index) {
                asks.push(Ask {
                    peer,
                    sent: now,
                    deadline: now + timeout,
                });
            }
            if let Some(partner) = self.partners.get_mut(&peer) {
                partner.inflight += 1;
                partner.last_used = now;
            }
            let due_ms = self.due_ms(id, now);
            self.send(peer, Frame::RequestPart(id, part, due_ms));
        }
        // (A fetch whose parts are all here is gone already: put together in `take_part`.)
        let stuck = self
            .parts
            .get(&id)
            .is_some_and(|f| f.slots.iter().all(|s| s.asks().is_empty()));
        if stuck {
            debug!(%id, "no partner left to ask for a part; fetching it whole");
            self.drop_parts(id);
            return false;
        }
        true
    }

    /// How many bytes of part `part` of `id` to accept from `peer`, if we asked it for that.
    pub(super) fn expected_part_len(
        &self,
        peer: &PeerId,
        id: SegmentId,
        part: Part,
    ) -> Option<usize> {
        let fetch = self.parts.get(&id)?;
        let asked = fetch.slots.len() == usize::from(part.of)
            && fetch.asked_of(*peer) == Some(usize::from(part.index));
        if !asked {
            return None;
        }
        let len = self.statements.get(&id)?.meta.len as usize;
        part.range(len).map(|r| r.len())
    }

    /// The part of `id` asked of `peer` is not coming (`Busy`, `Missing`, a broken stream, a
    /// timeout, a lost link): it is asked elsewhere at the next scheduling. Returns whether
    /// one was asked of `peer`.
    pub(super) fn part_failed(&mut self, peer: PeerId, id: SegmentId) -> bool {
        let Some(fetch) = self.parts.get_mut(&id) else {
            return false;
        };
        let Some(Slot::Asked(asks)) = fetch.asked_of(peer).and_then(|i| fetch.slots.get_mut(i))
        else {
            return false;
        };
        asks.retain(|a| a.peer != peer);
        if let Some(partner) = self.partners.get_mut(&peer) {
            partner.inflight = partner.inflight.saturating_sub(1);
        }
        true
    }

    /// Every part asked of `peer` is not coming (it left).
    pub(super) fn parts_lost(&mut self, peer: PeerId) {
        let ids: Vec<SegmentId> = self
            .parts
            .iter()
            .filter(|(_, f)| f.asked_of(peer).is_some())
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.part_failed(peer, id);
        }
    }

    /// Gives up on parts asked for too long ago; their holders are asked for other things
    /// first from now on.
    pub(super) fn expire_parts(&mut self, now: Instant) {
        let expired: Vec<(SegmentId, PeerId)> = self
            .parts
            .iter()
            .flat_map(|(id, f)| {
                f.slots
                    .iter()
                    .flat_map(Slot::asks)
                    .filter(|a| a.deadline <= now)
                    .map(move |a| (*id, a.peer))
            })
            .collect();
        for (id, peer) in expired {
            debug!(peer = %peer.short(), %id, "part request timed out");
            self.part_failed(peer, id);
            self.stats.requests_retried += 1;
            if let Some(partner) = self.partners.get_mut(&peer) {
                partner.rate.penalize();
            }
        }
    }

    /// A part arrived. Once all are here, the segment is put together, checked and stored.
    pub(super) fn take_part(
        &mut self,
        now: Instant,
        peer: PeerId,
        id: SegmentId,
        part: Part,
        bytes: Bytes,
    ) {
        let Some(expected) = self.expected_part_len(&peer, id, part) else {
            return; // Withdrawn meanwhile (the segment or the part came): read anyway.
        };
        if bytes.len() != expected {
            // The driver reads at most `expected` bytes: a short part is a broken promise.
            self.part_failed(peer, id);
            self.strike(peer);
            return;
        }
        let index = usize::from(part.index);
        let Some(fetch) = self.parts.get_mut(&id) else {
            return;
        };
        let Some(Slot::Asked(asks)) = fetch.slots.get_mut(index) else {
            return;
        };
        let sent = asks.iter().find(|a| a.peer == peer).map(|a| a.sent);
        let others: Vec<PeerId> = asks.iter().map(|a| a.peer).filter(|p| *p != peer).collect();
        fetch.slots[index] = Slot::Here { bytes, from: peer };
        let complete = fetch.slots.iter().all(|s| matches!(s, Slot::Here { .. }));
        // The other copies asked for are not needed any more (their streams are refused).
        for p in others.into_iter().chain([peer]) {
            if let Some(partner) = self.partners.get_mut(&p) {
                partner.inflight = partner.inflight.saturating_sub(1);
            }
        }
        if let (Some(sent), Some(partner)) = (sent, self.partners.get_mut(&peer)) {
            partner
                .rate
                .sample(expected, now.saturating_duration_since(sent));
        }
        if complete {
            self.assemble(now, id);
        }
    }

    /// Puts the parts of `id` together and stores the segment if it verifies.
    fn assemble(&mut self, now: Instant, id: SegmentId) {
        let Some(fetch) = self.parts.remove(&id) else {
            return;
        };
        let Some(statement) = self.statements.get(&id).copied() else {
            return;
        };
        let mut whole = BytesMut::with_capacity(statement.meta.len as usize);
        let mut senders: Vec<PeerId> = Vec::with_capacity(fetch.slots.len());
        for slot in fetch.slots {
            if let Slot::Here { bytes, from } = slot {
                whole.extend_from_slice(&bytes);
                senders.push(from);
            }
        }
        let bytes = whole.freeze();
        if let Err(error) = self.config.verifier.check_payload(&statement.meta, &bytes) {
            // One of them sent wrong bytes, and the statement covers only the whole: nobody
            // can be blamed. The segment is fetched whole, from one holder, instead.
            warn!(%id, %error, "segment put together from parts rejected");
            self.stats.segments_rejected += 1;
            self.split_failed = Some(id);
            return;
        }
        let bytes = self.config.verifier.keep(&statement.meta, bytes);
        self.stats.bytes_from_peers += bytes.len() as u64;
        for peer in &senders {
            if let Some(partner) = self.partners.get_mut(peer) {
                partner.have.insert(id);
                partner.told.insert(id);
            }
        }
        self.store_segment(id, statement.meta, bytes, senders.first().copied());
        self.announce_held(id);
        self.push_children(now, id);
    }

    /// Stops fetching `id` in parts (it came whole, or cannot come in parts); parts still
    /// under way are not read any more.
    pub(super) fn drop_parts(&mut self, id: SegmentId) {
        let Some(fetch) = self.parts.remove(&id) else {
            return;
        };
        for ask in fetch.slots.iter().flat_map(Slot::asks) {
            if let Some(partner) = self.partners.get_mut(&ask.peer) {
                partner.inflight = partner.inflight.saturating_sub(1);
            }
        }
    }
}

/// Whether a partner can be asked for a part now.
fn can_serve_part(p: &Partner, now: Instant, max_inflight: usize) -> bool {
    p.greeted && !p.relayed && p.inflight < max_inflight && p.busy_until.is_none_or(|t| t <= now)
}
