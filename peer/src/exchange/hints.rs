//! Hints from the optimizer's plan (the Chandelier): this peer's tier, its target lag, the
//! peers the plan draws its stream from, and the peers it is to feed.
//!
//! A hint is advice, never a command: the feeding tree (`tree`) keeps deciding on what it
//! measures, and without a hint it works exactly as before. With one:
//! - the hinted upstream peers are dialled (beyond the usual partner count), so that they are
//!   partners to subscribe to;
//! - a hinted sender counts as two levels nearer the source in the parent choice (one if it is
//!   not ranked first); the first-ranked one is asked even when it reports no spare room, since
//!   the plan counts on its upload for us; a fed viewer moves to a better-ranked hinted sender
//!   no deeper than its parent (one level deeper for the first-ranked one: it frees the place
//!   the plan meant for another), and, as without hints, to any partner two levels nearer;
//! - a parent (the source included) takes a peer its hint names as downstream even when full:
//!   its partner limit gives way, and it drops its weakest child the plan does not name, so a
//!   hinted tier-1 peer gets a source slot;
//! - a hinted peer does not climb on its own: the plan placed it.
//!
//! The plan counts upload in slots of a quarter stream from up to four senders; the tree feeds
//! whole streams from one parent. So of a receiver's hinted senders one becomes its parent, and a
//! sender planned for many receivers feeds as many as its measured upload carries, refusing the
//! others (who try their next hinted sender, then the tree's own choice). The remaining hinted
//! partners serve the receiver's repair requests like any partner.
//!
//! [`ParentChoice::Random`] is the baseline the optimizer is measured against: partners as
//! sampled, a parent drawn among them without regard to depth or upload, no climbing, no
//! preemption by upload, no hints.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tracker_overlay::swarm::PeerHint;

use super::{Exchange, Output};
use crate::identity::PeerId;
use crate::wire::PeerAddr;

pub use optimizer::Upstream;

/// How a viewer picks the partner that feeds it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ParentChoice {
    /// The partner nearest the source, then with the most upload, that has room; strong peers
    /// climb and displace weaker children (the capacity-aware tree). Hints take precedence.
    #[default]
    Nearest,
    /// A partner with room drawn at random (a fixed pseudo-random order per pair of peers), no
    /// climbing, no displacing, hints ignored: a random mesh's tree, for comparison.
    Random,
}

/// What the plan says to this peer. See the module docs for how the exchange uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hint {
    /// The plan's epoch (a hint older than the one held is ignored).
    pub epoch: u64,
    /// The peer's tier: 1 draws from the source.
    pub tier: u8,
    /// How far behind the live edge the plan has it play. Informational here: the player's
    /// latency stays [`super::ExchangeConfig::target_latency`].
    pub target_lag: Duration,
    /// Where its stream comes from, best first.
    pub upstream: Vec<HintedUpstream>,
    /// The peers the plan has this one feed (may be empty: not every plan reader knows them).
    pub downstream: Vec<PeerId>,
}

/// One sender in a hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HintedUpstream {
    /// The sender: the source, a peer, or a relay (no peer had upload to spare).
    pub from: Upstream<PeerId>,
    /// Where it listens, if the plan's reader knows.
    pub addr: Option<SocketAddr>,
    /// Quarter-stream slots it sends.
    pub slots: u8,
}

impl Hint {
    /// The hint in a stored plan entry, with addresses from `addr` where known (the plan names
    /// peers by id only) and the plan's epoch.
    pub fn from_peer_hint(
        epoch: u64,
        entry: &PeerHint,
        addr: impl Fn(&PeerId) -> Option<SocketAddr>,
    ) -> Self {
        Self {
            epoch,
            tier: entry.tier,
            target_lag: Duration::from_millis(u64::from(entry.target_lag_ms)),
            upstream: entry
                .partners
                .iter()
                .map(|p| {
                    let from = match p.from {
                        Upstream::Source => Upstream::Source,
                        Upstream::Relay => Upstream::Relay,
                        Upstream::Peer(id) => Upstream::Peer(PeerId(id)),
                    };
                    let addr = match from {
                        Upstream::Peer(id) => addr(&id),
                        _ => None,
                    };
                    HintedUpstream {
                        from,
                        addr,
                        slots: p.slots,
                    }
                })
                .collect(),
            downstream: Vec::new(),
        }
    }
}

/// Hinted senders a viewer dials beyond its usual partner count.
const MAX_HINTED_DIALS: usize = 4;

impl Exchange {
    /// Takes the optimizer's plan for this peer (see the module docs). A hint of an older epoch
    /// than the one held is ignored; so is every hint unless parents are
    /// [`ParentChoice::Nearest`].
    pub fn apply_hint(&mut self, now: Instant, hint: Hint) {
        if self.config.parent_choice != ParentChoice::Nearest
            || self.hint.as_ref().is_some_and(|h| h.epoch > hint.epoch)
        {
            return;
        }
        let source = self.source_peer();
        for up in &hint.upstream {
            match (up.from, up.addr) {
                (Upstream::Peer(id), Some(addr)) if id != self.me => {
                    self.remember(id, addr);
                    // Named by the plan: worth a dial now, whatever happened before.
                    self.backoff.remove(&id);
                }
                (Upstream::Source, _) => {
                    if let Some(source) = source {
                        self.backoff.remove(&source);
                    }
                }
                _ => {}
            }
        }
        self.hint = Some(hint);
        self.stats.hints_applied += 1;
        if self.is_source() {
            return;
        }
        self.dial_hinted();
        self.find_parent(now);
    }

    /// The plan this peer follows, if any.
    pub fn hint(&self) -> Option<&Hint> {
        self.hint.as_ref()
    }

    /// Whether our parent is the first sender the plan names for us (`None` without a hint
    /// or a parent).
    pub fn follows_hint(&self) -> Option<bool> {
        let parent = self.parent?;
        self.hint.as_ref()?;
        Some(self.hint_rank(&parent) == Some(0))
    }

    /// Where the plan ranks `peer` among our senders (0: best), if it names it (the source by
    /// its id).
    pub(super) fn hint_rank(&self, peer: &PeerId) -> Option<usize> {
        let hint = self.hint.as_ref()?;
        let source = self.source_peer();
        hint.upstream.iter().position(|up| match up.from {
            Upstream::Peer(id) => id == *peer,
            Upstream::Source => source == Some(*peer),
            Upstream::Relay => false,
        })
    }

    /// Whether the plan has us feed `peer`.
    pub(super) fn hinted_downstream(&self, peer: &PeerId) -> bool {
        self.hint
            .as_ref()
            .is_some_and(|h| h.downstream.contains(peer))
    }

    /// Dials the hinted senders that are not partners yet (the source among them for a tier-1
    /// peer), at most a few at a time.
    pub(super) fn dial_hinted(&mut self) {
        let Some(hint) = self.hint.as_ref() else {
            return;
        };
        if self.is_source() || !self.is_live() && self.record.is_some() {
            return;
        }
        let source = self.source_peer();
        let wanted: Vec<PeerId> = hint
            .upstream
            .iter()
            .filter_map(|up| match up.from {
                Upstream::Peer(id) => Some(id),
                Upstream::Source => source,
                Upstream::Relay => None,
            })
            .collect();
        let mut budget = MAX_HINTED_DIALS
            .saturating_sub(self.dialing.iter().filter(|d| wanted.contains(d)).count());
        for id in wanted {
            if budget == 0 {
                break;
            }
            if id == self.me
                || self.partners.contains_key(&id)
                || self.dialing.contains(&id)
                || self.backoff.contains_key(&id)
            {
                continue;
            }
            let Some(addr) = self.candidates.get(&id).copied() else {
                continue;
            };
            budget -= 1;
            self.dialing.insert(id);
            self.outputs.push_back(Output::Dial(PeerAddr { id, addr }));
        }
    }

    /// The random-mesh baseline's order of partners: a pseudo-random rank per pair of peers
    /// (a hash of both ids), fixed so that a viewer does not hop between parents.
    pub(super) fn random_rank(&self, peer: &PeerId) -> u64 {
        let mut h = blake3::Hasher::new();
        h.update(&self.me.0);
        h.update(&peer.0);
        let bytes = h.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&bytes.as_bytes()[..8]);
        u64::from_le_bytes(first)
    }
}
