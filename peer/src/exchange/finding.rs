//! On demand, finding holders: peers watch different parts of a film, so a viewer that starts
//! or seeks where none of its partners has been asks its partners who holds what it needs next
//! (`Find`, answered by `Holders`) and the overlay's holder index (`Output::LookupHolders`,
//! answered by `Exchange::add_holders`), dials those first and makes room for them; a full peer of a
//! film lets its longest-idle partner go for a newcomer. A viewer whose source link broke dials
//! it again when nobody else can serve it.

use std::time::{Duration, Instant};

use tracing::debug;

use super::{CloseReason, Exchange, Output, Partner};
use crate::identity::PeerId;
use crate::segment::SegmentId;
use crate::wire::{Frame, PeerAddr};

impl Exchange {
    /// The media segments the player needs next, on demand: from the first one missing.
    pub(super) fn vod_window(&self) -> impl Iterator<Item = SegmentId> + '_ {
        let end = self.cursor + self.config.lookahead;
        (self.cursor..=end)
            .map(SegmentId::Media)
            .filter(|id| self.statements.contains_key(id))
    }

    /// On demand, a viewer that started or sought where none of its partners has been holds
    /// no partner that can serve it but the source. It asks its partners which of theirs
    /// hold the first segment it misses (`Find`); the peers they name are dialled first, and
    /// `make_room_for_holders` lets useless partners go for them. Asking again for the same
    /// segment waits twice as long each time (up to [`MAX_FIND_EVERY`]): at the front of a
    /// film nobody but the source holds it.
    pub(super) fn find_holders(&mut self, now: Instant) {
        if self.is_live() || self.next_find.is_some_and(|t| now < t) {
            return;
        }
        let source = self.source_peer();
        let Some(id) = self.vod_window().find(|id| !self.store.contains_key(id)) else {
            return;
        };
        // A holder whose uplink is taken (it said `Busy`) serves us no better than none.
        let served = self.pending.contains_key(&id)
            || self.partners.iter().any(|(p, partner)| {
                Some(*p) != source
                    && partner.have.contains(id)
                    && partner.busy_until.is_none_or(|t| t <= now)
            });
        if served {
            return;
        }
        let tries = match self.finding {
            Some((asked, tries)) if asked == id => tries + 1,
            _ => 0,
        };
        // Asked once and nobody answered: the source holds it (and makes room for us).
        if tries > 0 {
            self.dial_source();
        }
        self.finding = Some((id, tries));
        let wait = FIND_EVERY
            .saturating_mul(1 << tries.min(8))
            .min(MAX_FIND_EVERY);
        self.next_find = Some(now + wait);
        let asked: Vec<PeerId> = self
            .partners
            .iter()
            .filter(|(_, p)| p.greeted)
            .map(|(id, _)| *id)
            .collect();
        for peer in asked {
            self.send(peer, Frame::Find(id));
        }
        // Our partners know only their own partners; the overlay's index knows holders
        // anywhere in the film.
        if let SegmentId::Media(seq) = id {
            self.outputs.push_back(Output::LookupHolders { seq });
        }
    }

    /// The overlay's holder index names `peers` as holders of media segment `seq` (the
    /// answer to [`Output::LookupHolders`]): dialled first while we still need it, as the
    /// peers a partner names in `Holders`.
    pub fn add_holders(&mut self, now: Instant, seq: u64, peers: Vec<PeerAddr>) {
        self.on_holders(now, SegmentId::Media(seq), peers);
    }

    /// On demand, the media segments this peer holds, as inclusive ranges: at most `max`,
    /// the longest (what it announces in the overlay's holder index). Empty live and at the
    /// source (everyone finds the source anyway).
    pub fn held_ranges(&self, max: usize) -> Vec<(u64, u64)> {
        if self.is_live() || self.is_source() {
            return Vec::new();
        }
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for id in self.store.keys() {
            let SegmentId::Media(seq) = id else { continue };
            match ranges.last_mut() {
                Some((_, end)) if end.checked_add(1) == Some(seq) => *end = seq,
                _ => ranges.push((seq, seq)),
            }
        }
        if ranges.len() > max {
            ranges.sort_by_key(|(a, b)| (std::cmp::Reverse(b - a), *a));
            ranges.truncate(max);
            ranges.sort_unstable();
        }
        ranges
    }

    /// Dials the source, whatever the partner count, unless it is a partner or we are
    /// dialling it or waiting to.
    pub(super) fn dial_source(&mut self) {
        let Some(source) = self.source_peer() else {
            return;
        };
        if self.partners.contains_key(&source)
            || self.dialing.contains(&source)
            || self.backoff.contains_key(&source)
        {
            return;
        }
        if let Some(addr) = self.candidates.get(&source).copied() {
            debug!("dialling the source");
            self.dialing.insert(source);
            self.outputs
                .push_back(Output::Dial(PeerAddr { id: source, addr }));
        }
    }

    /// Peers that hold a segment we asked about: dialled first while we still need it.
    pub(super) fn on_holders(&mut self, now: Instant, id: SegmentId, peers: Vec<PeerAddr>) {
        // An answer that comes after we got the segment, or sought elsewhere, is no reason
        // to let a partner go.
        if self.is_live() || self.store.contains_key(&id) || !self.vod_window().any(|w| w == id) {
            return;
        }
        for p in peers {
            if p.id != self.me && !self.partners.contains_key(&p.id) {
                self.remember(p.id, p.addr);
                if !self.found.contains(&p.id) {
                    self.found.push(p.id);
                }
            }
        }
        // A few dozen at most: the newest answers first.
        let excess = self.found.len().saturating_sub(2 * MAX_FOUND);
        self.found.drain(..excess);
        self.maintain(now);
    }

    /// How many partners we keep. The source of a film keeps a few per stream its uplink
    /// carries: it announces nothing new to them, and it is the last resort of every viewer
    /// whose position no peer holds.
    pub(super) fn partner_limit(&self) -> usize {
        let limit = self.config.partner_limit;
        if self.is_live() || !self.is_source() {
            return limit;
        }
        let streams = self.meter.estimate_bps() / self.bitrate_bps();
        limit.max((streams * VOD_SOURCE_PARTNERS_PER_STREAM) as usize)
    }

    /// On demand, a full peer makes room for a newcomer (which may need what we hold) by
    /// letting go of the partner it exchanged no segment with for longest, if that was at
    /// least [`IDLE_PARTNER`] ago.
    pub(super) fn let_idle_go(&mut self, now: Instant) {
        if self.is_live() {
            return;
        }
        let idle = self
            .partners
            .iter()
            .filter(|(id, p)| {
                now.saturating_duration_since(p.last_used) >= IDLE_PARTNER
                    && p.inflight == 0
                    && !self.sending_to(id)
                    && !self.upload_queue.iter().any(|q| q.to == **id)
            })
            .min_by_key(|(id, p)| (p.last_used, **id))
            .map(|(id, _)| *id);
        if let Some(peer) = idle {
            debug!(peer = %peer.short(), "making room: idle partner");
            self.close(peer, CloseReason::Idle);
            self.on_disconnected(now, peer);
        }
    }

    /// Names to `asker` up to [`MAX_FOUND`] of our other partners that hold segment `id`.
    pub(super) fn on_find(&mut self, asker: PeerId, id: SegmentId) {
        if !self.config.share_peers {
            return;
        }
        let holders: Vec<PeerAddr> = self
            .partners
            .from(asker)
            .filter(|(p, partner)| **p != asker && partner.have.contains(id))
            .filter_map(|(p, partner)| partner.listen.map(|addr| PeerAddr { id: *p, addr }))
            .take(MAX_FOUND)
            .collect();
        if !holders.is_empty() {
            self.send(asker, Frame::Holders(id, holders));
        }
    }

    /// On demand, while peers named as holders of what we need next wait to be dialled: lets
    /// go of a partner that holds none of it, at most one per [`EXPLORE_EVERY`].
    pub(super) fn make_room_for_holders(&mut self, now: Instant) {
        let due = self.next_explore.is_none_or(|t| t <= now);
        if self.is_live() || !due {
            return;
        }
        self.found.retain(|id| !self.partners.contains_key(id));
        let waiting = self.found.iter().any(|id| {
            !self.dialing.contains(id)
                && !self.backoff.contains_key(id)
                && self.candidates.contains_key(id)
        });
        if !waiting {
            return;
        }
        // Also kept: partners that hold some of what we need next.
        let window: Vec<SegmentId> = self.vod_window().collect();
        let keep = |_: &PeerId, p: &Partner| window.iter().any(|w| p.have.contains(*w));
        if let Some(peer) = self.useless_partner(keep) {
            debug!(peer = %peer.short(), "making room for peers that hold what we need");
            self.let_go(now, peer);
        }
    }

    /// A live stream that announced nothing new for a while, with the source not among our
    /// partners, may have lost its source (it crashed and came back, and nobody reconnected):
    /// dial it, whatever the partner count.
    pub(super) fn redial_stalled_source(&mut self, now: Instant) {
        let stalled = self.is_live()
            && self
                .last_fresh
                .is_some_and(|t| now.saturating_duration_since(t) > self.config.stall_timeout);
        if stalled {
            self.dial_source();
        }
    }
}

/// On demand, how often a viewer refreshes its entry in the overlay's holder index ...
pub const HOLDER_REFRESH: Duration = Duration::from_secs(15);
/// ... and how long the entry lives without a refresh.
pub const HOLDER_TTL: Duration = Duration::from_secs(45);
/// The most ranges of held segments an entry names (the longest ones).
pub const MAX_HELD_RANGES: usize = 8;
/// The most holders one look-up in the index hands back.
pub const MAX_INDEX_HOLDERS: usize = MAX_FOUND;

/// On demand, how soon a viewer no partner can serve asks who can (`Find`), and how long it
/// waits at most before asking again about the same segment.
const FIND_EVERY: Duration = Duration::from_secs(1);
const MAX_FIND_EVERY: Duration = Duration::from_secs(16);
/// The most holders one answer to `Find` names.
const MAX_FOUND: usize = 8;
/// On demand, the source keeps this many partners per stream its uplink carries (at least
/// [`ExchangeConfig::partner_limit`]). Fewer serve better: in `vod-500` (seeds 24/25/26),
/// continuity was 0.947 / 0.968 / 0.961 with 2, 0.927 / 0.915 / 0.927 with 4, 0.896 with 6 and
/// 0.75 with 16 (seed 24); a viewer the source turns away finds holders among the others.
const VOD_SOURCE_PARTNERS_PER_STREAM: f64 = 2.0;
/// On demand, a full peer lets a partner go for a newcomer once they exchanged no segment for
/// this long.
const IDLE_PARTNER: Duration = Duration::from_secs(5);
