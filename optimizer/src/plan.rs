//! Plans, their diffs, and one planning round.

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::assign::{self, Assignment, Budget};
use crate::candidates::Candidates;
use crate::exact;
use crate::model::{Config, PeerId, PlanError, Snapshot};
use crate::swarm::{Adjacency, PreviousPeer, Swarm, SOURCE};

/// Where a share of a peer's stream comes from.
///
/// In a [`Plan`], `P` is an index into [`Plan::peers`]; in a [`PlanDiff`] it is the peer's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Upstream<P> {
    /// The broadcaster.
    Source,
    /// Another peer.
    Peer(P),
    /// No compatible sender had upload to spare: the peer fetches this share however it can
    /// (a relay, the source's overflow, its current mesh partners). Counted as unserved.
    Relay,
}

/// One of a peer's partners in a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partner {
    /// Who sends.
    pub from: Upstream<u32>,
    /// How many slots of the stream it sends: the share is `slots` over the sum of the peer's
    /// partners' slots (see [`PeerPlan::share`]).
    pub slots: u8,
}

/// What the plan says to one peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerPlan<Id> {
    /// The peer.
    pub id: Id,
    /// Its tier: 1 pulls from the source; a tier pulls from the tiers ahead of it.
    pub tier: u8,
    /// How far behind the live edge it should play (ms).
    pub target_lag_ms: u32,
    /// Upload slots the plan counts on (kept, with hysteresis, from round to round).
    pub upload_slots: u16,
    /// Where its stream comes from, best first; a [`Upstream::Relay`] entry, if any, is last.
    pub partners: Vec<Partner>,
}

impl<Id> PeerPlan<Id> {
    /// The share of the stream (0..=1) expected from `partner`.
    pub fn share(&self, partner: &Partner) -> f64 {
        let total: u32 = self.partners.iter().map(|p| u32::from(p.slots)).sum();
        if total == 0 {
            0.0
        } else {
            f64::from(partner.slots) / f64::from(total)
        }
    }
}

/// A topology for the whole swarm.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan<Id> {
    /// Rounds since the channel's first plan (the first plan is epoch 1).
    pub epoch: u64,
    /// The tier of peers that do not forward.
    pub leaf_tier: u8,
    /// Every peer, sorted by id; [`Upstream::Peer`] indexes this list.
    pub peers: Vec<PeerPlan<Id>>,
}

impl<Id: PeerId> Plan<Id> {
    /// The entry of peer `id`.
    pub fn peer(&self, id: &Id) -> Option<&PeerPlan<Id>> {
        self.peers
            .binary_search_by(|p| p.id.cmp(id))
            .ok()
            .map(|i| &self.peers[i])
    }

    /// A partner's sender, by id (`None` for an index out of range, which a plan made by this
    /// crate never holds).
    pub fn resolve(&self, from: Upstream<u32>) -> Option<Upstream<Id>> {
        Some(match from {
            Upstream::Source => Upstream::Source,
            Upstream::Relay => Upstream::Relay,
            Upstream::Peer(i) => Upstream::Peer(self.peers.get(i as usize)?.id),
        })
    }

    /// Every edge of the plan, by id.
    pub fn edges(&self) -> Vec<Edge<Id>> {
        let mut out = Vec::new();
        for p in &self.peers {
            for partner in &p.partners {
                if let Some(from) = self.resolve(partner.from) {
                    out.push(Edge {
                        from,
                        to: p.id,
                        slots: partner.slots,
                    });
                }
            }
        }
        out
    }

    /// What changed from `previous` to this plan.
    pub fn diff(&self, previous: Option<&Plan<Id>>) -> PlanDiff<Id> {
        let mut new_edges = self.edges();
        let mut old_edges = previous.map(|p| p.edges()).unwrap_or_default();
        new_edges.sort_unstable();
        old_edges.sort_unstable();
        let mut diff = PlanDiff {
            added: Vec::new(),
            removed: Vec::new(),
            reshared: Vec::new(),
            retiered: Vec::new(),
        };
        let (mut i, mut j) = (0, 0);
        let pair = |e: &Edge<Id>| (e.to, e.from);
        while i < new_edges.len() || j < old_edges.len() {
            match (new_edges.get(i), old_edges.get(j)) {
                (Some(a), Some(b)) if pair(a) == pair(b) => {
                    if a.slots != b.slots {
                        diff.reshared.push(*a);
                    }
                    i += 1;
                    j += 1;
                }
                (Some(a), Some(b)) if pair(a) < pair(b) => {
                    diff.added.push(*a);
                    i += 1;
                }
                (Some(_), Some(b)) | (None, Some(b)) => {
                    diff.removed.push(*b);
                    j += 1;
                }
                (Some(a), None) => {
                    diff.added.push(*a);
                    i += 1;
                }
                (None, None) => break,
            }
        }
        let old_peers = previous.map_or(&[][..], |p| &p.peers[..]);
        let (mut i, mut j) = (0, 0);
        while i < self.peers.len() || j < old_peers.len() {
            let (a, b) = (self.peers.get(i), old_peers.get(j));
            let order = match (a, b) {
                (Some(a), Some(b)) => a.id.cmp(&b.id),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, _) => std::cmp::Ordering::Greater,
            };
            match (order, a, b) {
                (std::cmp::Ordering::Equal, Some(a), Some(b)) => {
                    if a.tier != b.tier {
                        diff.retiered.push(Retier {
                            id: a.id,
                            from: Some(b.tier),
                            to: Some(a.tier),
                        });
                    }
                    i += 1;
                    j += 1;
                }
                (std::cmp::Ordering::Less, Some(a), _) => {
                    diff.retiered.push(Retier {
                        id: a.id,
                        from: None,
                        to: Some(a.tier),
                    });
                    i += 1;
                }
                (_, _, Some(b)) => {
                    diff.retiered.push(Retier {
                        id: b.id,
                        from: Some(b.tier),
                        to: None,
                    });
                    j += 1;
                }
                _ => break,
            }
        }
        diff
    }
}

/// One edge: `to` pulls `slots` slots from `from`.
///
/// Field order matters: edges sort by receiver, then sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Edge<Id> {
    /// The receiver.
    pub to: Id,
    /// The sender.
    pub from: Upstream<Id>,
    /// Slots carried.
    pub slots: u8,
}

/// A peer whose tier changed; `None` means absent from that plan (joined or left).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retier<Id> {
    /// The peer.
    pub id: Id,
    /// Its tier in the previous plan.
    pub from: Option<u8>,
    /// Its tier in the new plan.
    pub to: Option<u8>,
}

/// The difference between two plans: what the peers must change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanDiff<Id> {
    /// Edges in the new plan only.
    pub added: Vec<Edge<Id>>,
    /// Edges in the previous plan only.
    pub removed: Vec<Edge<Id>>,
    /// Edges in both whose slot count changed, with the new count (only edges from the source
    /// or to [`Upstream::Relay`] carry more than one slot).
    pub reshared: Vec<Edge<Id>>,
    /// Peers whose tier changed, joined or left.
    pub retiered: Vec<Retier<Id>>,
}

impl<Id> PlanDiff<Id> {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.reshared.is_empty()
            && self.retiered.is_empty()
    }
}

/// Figures about one round.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundStats {
    /// Tiers of forwarding peers.
    pub tiers: u8,
    /// Sum of the utilities of the slots served.
    pub utility: i64,
    /// The part of `utility` above the base points for serving (RTT, capacity, lag, continuity,
    /// existing connections): what locality and ordering added.
    pub quality: i64,
    /// Slots wanted by all peers.
    pub demand_slots: u64,
    /// Slots served by the source or a peer (the rest go to [`Upstream::Relay`]).
    pub served_slots: u64,
    /// Edges of the previous plan replaced to improve the plan (within `Config::max_moves`).
    pub moves: usize,
    /// Edges of the previous plan dropped because they became invalid.
    pub forced_removals: usize,
    /// Receivers examined this round.
    pub examined: usize,
    /// An upper bound on `utility`: each receiver's best candidates with capacities ignored.
    /// Only computed when every receiver was examined (a first or exact round).
    pub bound: Option<i64>,
}

/// The result of one round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Round<Id> {
    /// The new plan.
    pub plan: Plan<Id>,
    /// Its difference from the previous plan.
    pub diff: PlanDiff<Id>,
    /// Figures.
    pub stats: RoundStats,
}

/// Plans one round: tiers, then the slot assignment by the switching heuristic, warm-started
/// from `previous` (its valid edges are kept; at most `Config::max_moves` of them are replaced,
/// each for a gain of at least `Config::hysteresis_margin`).
///
/// Deterministic: the same snapshot, previous plan and configuration give the same plan. Never
/// panics; errors only on an unusable snapshot or configuration.
pub fn plan<Id: PeerId>(
    snapshot: &Snapshot<Id>,
    previous: Option<&Plan<Id>>,
    config: &Config,
) -> Result<Round<Id>, PlanError> {
    let ctx = Context::new(snapshot, previous, config)?;
    let Context {
        swarm, prev_links, ..
    } = &ctx;
    // A first round looks twice as wide: it is not the time-critical one, and a plan that is
    // a local optimum over wider lists stays one when noise shifts who is nearest.
    let width = if previous.is_none() {
        config.candidates.saturating_mul(2)
    } else {
        config.candidates
    };
    let mut cands = Candidates::new(swarm, width);
    let mut asg = Assignment::new(swarm, config.partners_per_peer);
    let mut forced = 0usize;
    let mut dirty = vec![previous.is_none(); swarm.n];

    // Warm start: keep the previous plan's edges that are still allowed, best first where a
    // sender's upload shrank.
    let mut kept: Vec<(i32, u32, u32, u8)> = Vec::new();
    for &(r, s, slots) in prev_links {
        match swarm.utility(s, r) {
            Some(u) => kept.push((u, r, s, slots)),
            None => {
                forced += 1;
                dirty[r as usize] = true;
            }
        }
    }
    // Only where a sender's upload or a receiver's need shrank does the order matter: sort
    // only then.
    let mut sent = vec![0u32; swarm.n];
    let mut got = vec![0u32; swarm.n];
    for &(_, r, s, slots) in &kept {
        sent[s as usize] += u32::from(slots);
        got[r as usize] += u32::from(slots);
    }
    if kept.iter().any(|&(_, r, s, _)| {
        sent[s as usize] > swarm.supply[s as usize]
            || got[r as usize] > u32::from(swarm.demand[r as usize])
    }) {
        kept.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    }
    for (u, r, s, slots) in kept {
        let room = swarm.edge_cap(s, r).min(asg.unmet[r as usize]);
        if slots <= room && u32::from(slots) <= asg.spare(swarm, s) {
            asg.add(r, s, slots, u, true);
        } else {
            forced += 1;
            dirty[r as usize] = true;
        }
    }

    // Who is examined: everyone in a first round; otherwise receivers that lost edges, still
    // miss slots or changed tier, and a rotating share of the rest.
    let window = u64::from(config.refresh_every);
    let epoch = previous.map_or(1, |p| p.epoch.saturating_add(1));
    let mut work = Vec::new();
    for r in 1..swarm.n as u32 {
        let ru = r as usize;
        if swarm.demand[ru] == 0 {
            continue;
        }
        let rotating = u64::from(r) % window == epoch % window;
        let retiered = ctx.previous_tier(r) != Some(swarm.tier[ru]);
        if dirty[ru] || asg.unmet[ru] > 0 || rotating || retiered {
            work.push(r);
        }
    }
    // Forwarders first, nearest the source first: their slots feed everyone behind them.
    work.sort_by_key(|&r| (swarm.tier[r as usize], r));

    let mut budget = Budget {
        moves_left: if previous.is_some() {
            config.max_moves
        } else {
            usize::MAX
        },
        margin: i64::from(config.hysteresis_margin),
        moves: 0,
    };
    assign::solve(
        swarm,
        &mut cands,
        &mut asg,
        &work,
        &ctx.extras,
        &mut budget,
        assign::Effort {
            sweeps: config.sweeps,
            first_round: previous.is_none(),
        },
    );
    let bound = (work.len() == count_receivers(swarm)).then(|| {
        work.iter()
            .map(|&r| best_case(swarm, &mut cands, r, ctx.extras.of(r)))
            .sum()
    });
    let mut stats = RoundStats {
        moves: budget.moves,
        forced_removals: forced,
        examined: work.len(),
        bound,
        ..RoundStats::default()
    };
    Ok(ctx.finish(snapshot, &asg, epoch, previous, &mut stats))
}

/// Plans one round from scratch with the exact solver over every allowed pair (no candidate
/// lists, no previous plan): the reference the heuristic is graded against. Cost grows with the
/// number of allowed pairs times slots; meant for a few hundred peers.
pub fn plan_exact<Id: PeerId>(
    snapshot: &Snapshot<Id>,
    config: &Config,
) -> Result<Round<Id>, PlanError> {
    let ctx = Context::new(snapshot, None, config)?;
    let swarm = &ctx.swarm;
    let mut pairs = Vec::new();
    for r in 1..swarm.n as u32 {
        for s in 0..swarm.n as u32 {
            if let Some(u) = swarm.utility(s, r) {
                pairs.push(exact::Pair {
                    sender: s,
                    receiver: r,
                    cap: u32::from(swarm.edge_cap(s, r)),
                    utility: i64::from(u),
                });
            }
        }
    }
    let demand: Vec<u32> = swarm.demand.iter().map(|&d| u32::from(d)).collect();
    let flows = exact::max_utility(&swarm.supply, &demand, &pairs);
    let mut asg = Assignment::new(swarm, config.partners_per_peer);
    for (p, f) in pairs.iter().zip(flows) {
        if f > 0 {
            asg.add(p.receiver, p.sender, f as u8, p.utility as i32, false);
        }
    }
    let mut stats = RoundStats {
        examined: count_receivers(swarm),
        ..RoundStats::default()
    };
    Ok(ctx.finish(snapshot, &asg, 1, None, &mut stats))
}

fn count_receivers(swarm: &Swarm) -> usize {
    swarm.demand[1..].iter().filter(|&&d| d > 0).count()
}

/// The most `r` could get: its best candidates' utilities over its slots, capacities ignored.
fn best_case(swarm: &Swarm, cands: &mut Candidates, r: u32, extra: &[u32]) -> i64 {
    let mut left = swarm.demand[r as usize];
    let mut total = 0i64;
    for &(s, u) in cands.of(swarm, r, extra) {
        if left == 0 {
            break;
        }
        let take = swarm.edge_cap(s, r).min(left);
        total += i64::from(u) * i64::from(take);
        left -= take;
    }
    total
}

/// A snapshot mapped to dense indices, with what the previous plan said.
struct Context<Id> {
    swarm: Swarm,
    /// (receiver, sender, slots) of the previous plan, in dense indices.
    prev_links: Vec<(u32, u32, u8)>,
    prev: Vec<Option<PreviousPeer>>,
    /// Per receiver, its current connections and previous partners (dense indices).
    extras: Adjacency,
    _id: std::marker::PhantomData<Id>,
}

impl<Id: PeerId> Context<Id> {
    fn new(
        snapshot: &Snapshot<Id>,
        previous: Option<&Plan<Id>>,
        config: &Config,
    ) -> Result<Self, PlanError> {
        config.validate()?;
        let mut order: Vec<usize> = (0..snapshot.peers.len()).collect();
        order.sort_unstable_by(|&a, &b| snapshot.peers[a].id.cmp(&snapshot.peers[b].id));
        if let Some(w) = order
            .windows(2)
            .find(|w| snapshot.peers[w[0]].id == snapshot.peers[w[1]].id)
        {
            return Err(PlanError::DuplicatePeer(format!(
                "{:?}",
                snapshot.peers[w[0]].id
            )));
        }
        let index: FxHashMap<Id, u32> = order
            .iter()
            .enumerate()
            .map(|(i, &ri)| (snapshot.peers[ri].id, i as u32 + 1))
            .collect();
        let index_of = |id: &Id| index.get(id).copied();
        let n = order.len() + 1;
        let mut prev = vec![None; n];
        // Previous plan index → dense index now.
        let mut prev_index: Vec<Option<u32>> = Vec::new();
        if let Some(p) = previous {
            prev_index = p.peers.iter().map(|pp| index_of(&pp.id)).collect();
            for (pp, now) in p.peers.iter().zip(&prev_index) {
                if let Some(now) = now {
                    prev[*now as usize] = Some(PreviousPeer {
                        tier: pp.tier,
                        slots: pp.upload_slots,
                        leaf: pp.tier >= p.leaf_tier,
                    });
                }
            }
        }
        let swarm = Swarm::build(snapshot, &order, &index, &prev, config)?;
        let mut prev_links = Vec::new();
        let mut extras: Vec<(u32, u32)> = Vec::new();
        if let Some(p) = previous {
            for (pp, now) in p.peers.iter().zip(&prev_index) {
                let Some(r) = *now else { continue };
                for partner in &pp.partners {
                    let s = match partner.from {
                        Upstream::Source => Some(SOURCE),
                        Upstream::Peer(i) => prev_index.get(i as usize).copied().flatten(),
                        Upstream::Relay => continue,
                    };
                    match s {
                        Some(s) => {
                            prev_links.push((r, s, partner.slots));
                            extras.push((r, s));
                        }
                        // The sender left: a forced removal, counted at the warm start.
                        None => prev_links.push((r, u32::MAX, partner.slots)),
                    }
                }
            }
        }
        for (i, &ri) in order.iter().enumerate() {
            let r = i as u32 + 1;
            for id in &snapshot.peers[ri].partners {
                if let Some(s) = index_of(id) {
                    extras.push((r, s));
                }
            }
        }
        Ok(Self {
            swarm,
            prev_links,
            prev,
            extras: Adjacency::new(n, extras),
            _id: std::marker::PhantomData,
        })
    }

    fn previous_tier(&self, r: u32) -> Option<u8> {
        self.prev.get(r as usize).copied().flatten().map(|p| p.tier)
    }

    /// Turns an assignment into a plan, its diff and the remaining figures.
    fn finish(
        &self,
        snapshot: &Snapshot<Id>,
        asg: &Assignment,
        epoch: u64,
        previous: Option<&Plan<Id>>,
        stats: &mut RoundStats,
    ) -> Round<Id> {
        let swarm = &self.swarm;
        let (utility, served, base) = asg.totals(swarm);
        stats.tiers = swarm.leaf_tier.saturating_sub(1);
        stats.utility = utility;
        stats.quality = utility - base;
        stats.served_slots = served;
        stats.demand_slots = swarm.demand.iter().map(|&d| u64::from(d)).sum();
        let peers = (1..swarm.n as u32)
            .map(|r| {
                let ru = r as usize;
                let mut links = asg.links(r).to_vec();
                links.sort_unstable_by(|a, b| {
                    b.utility.cmp(&a.utility).then(a.sender.cmp(&b.sender))
                });
                let mut partners: Vec<Partner> = links
                    .iter()
                    .map(|l| Partner {
                        from: if l.sender == SOURCE {
                            Upstream::Source
                        } else {
                            Upstream::Peer(l.sender - 1)
                        },
                        slots: l.slots,
                    })
                    .collect();
                if asg.unmet[ru] > 0 {
                    partners.push(Partner {
                        from: Upstream::Relay,
                        slots: asg.unmet[ru],
                    });
                }
                PeerPlan {
                    id: snapshot.peers[swarm.report[ru - 1]].id,
                    tier: swarm.tier[ru],
                    target_lag_ms: swarm.target_lag[usize::from(swarm.tier[ru])],
                    upload_slots: u16::try_from(swarm.supply[ru]).unwrap_or(u16::MAX),
                    partners,
                }
            })
            .collect();
        let plan = Plan {
            epoch,
            leaf_tier: swarm.leaf_tier,
            peers,
        };
        let diff = plan.diff(previous);
        Round {
            plan,
            diff,
            stats: stats.clone(),
        }
    }
}
