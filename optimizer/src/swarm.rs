//! The snapshot as dense arrays, its tiers, and the utility of a sender → receiver slot.
//!
//! Node 0 is the source; node `i + 1` is the `i`-th peer in id order. Tiers: the source is tier
//! 0, forwarding peers ("contributors") fill tiers 1..=T by decreasing upload, each tier's
//! demand within `tier_fill` of the upload of the tier ahead and within what its NAT classes
//! can use of it; leaves (free-riders, weak or unreliable peers, and contributors that found no
//! room) form tier T + 1 and draw on whatever spare upload any tier has.

use rustc_hash::FxHashMap;

use crate::model::{Config, Connectivity, Coord, PeerId, PlanError, Snapshot};

/// The source's node index.
pub(crate) const SOURCE: u32 = 0;

/// Utility points for serving one slot at all.
pub(crate) const SERVE: i32 = 4000;
/// Extra points for serving a slot to a peer that forwards (so contributors are served first).
pub(crate) const FORWARDER: i32 = 6000;
/// Most points from the RTT term (0 ms → all, `RTT_CUTOFF_MS` or more → none).
const RTT_POINTS: f32 = 2000.0;
const RTT_CUTOFF_MS: f32 = 400.0;
/// Most points from the sender's capacity (reached at twice the partners per peer in slots).
const CAPACITY_POINTS: f32 = 1000.0;
/// Most points for a sender at least one tier's lag ahead of the receiver's target.
const LAG_POINTS: f32 = 1000.0;
/// Points per unit of the sender's continuity.
const CONTINUITY_POINTS: f32 = 1000.0;
/// Points for a pair already connected (the connection exists and proved the NATs passable).
const CONNECTED_POINTS: i32 = 500;
/// The most quality points a slot can earn (the utility above `base`).
pub(crate) const MAX_QUALITY: i32 = RTT_POINTS as i32
    + CAPACITY_POINTS as i32
    + LAG_POINTS as i32
    + CONTINUITY_POINTS as i32
    + CONNECTED_POINTS;

/// A sparse relation between nodes, as sorted lists per node (compressed rows).
#[derive(Debug, Default)]
pub(crate) struct Adjacency {
    start: Vec<u32>,
    items: Vec<u32>,
}

impl Adjacency {
    /// The relation over `n` nodes holding `pairs` (duplicates and out-of-range nodes dropped).
    pub fn new(n: usize, mut pairs: Vec<(u32, u32)>) -> Self {
        pairs.retain(|&(a, b)| (a as usize) < n && (b as usize) < n);
        // Counting sort by row, then each (short) row sorted and deduplicated in place.
        let mut start = vec![0u32; n + 1];
        for &(a, _) in &pairs {
            start[a as usize + 1] += 1;
        }
        for i in 0..n {
            start[i + 1] += start[i];
        }
        let mut next = start.clone();
        let mut items = vec![0u32; pairs.len()];
        for &(a, b) in &pairs {
            items[next[a as usize] as usize] = b;
            next[a as usize] += 1;
        }
        let mut write = 0usize;
        let mut row_start = 0usize;
        for a in 0..n {
            let end = start[a + 1] as usize;
            let row = &mut items[row_start..end];
            row.sort_unstable();
            let mut last = None;
            let begin = write;
            for i in row_start..end {
                let b = items[i];
                if last != Some(b) {
                    items[write] = b;
                    write += 1;
                    last = Some(b);
                }
            }
            start[a] = begin as u32;
            row_start = end;
        }
        start[n] = write as u32;
        items.truncate(write);
        Self { start, items }
    }

    /// The nodes related to `a`, sorted.
    pub fn of(&self, a: u32) -> &[u32] {
        let a = a as usize;
        match (self.start.get(a), self.start.get(a + 1)) {
            (Some(&x), Some(&y)) => &self.items[x as usize..y as usize],
            _ => &[],
        }
    }

    pub fn contains(&self, a: u32, b: u32) -> bool {
        self.of(a).binary_search(&b).is_ok()
    }
}

/// What the previous plan said about one peer still present.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PreviousPeer {
    pub tier: u8,
    pub slots: u16,
    pub leaf: bool,
}

/// The dense model of one snapshot.
#[derive(Debug)]
pub(crate) struct Swarm {
    /// Nodes, the source included.
    pub n: usize,
    /// For node `i + 1`, the index of its report in the snapshot.
    pub report: Vec<usize>,
    pub coord: Vec<Coord>,
    pub conn: Vec<Connectivity>,
    /// Upload slots.
    pub supply: Vec<u32>,
    /// Download slots wanted.
    pub demand: Vec<u8>,
    pub tier: Vec<u8>,
    /// Leaves do not forward.
    pub leaf: Vec<bool>,
    /// Reported lag, or the target lag for a joiner (ms).
    pub lag: Vec<u32>,
    pub continuity: Vec<f32>,
    /// Target lag by tier (ms).
    pub target_lag: Vec<u32>,
    /// The leaf tier (one after the last tier of forwarders).
    pub leaf_tier: u8,
    /// Members of each tier, 0 (the source) through the leaf tier, in placement order.
    pub members: Vec<Vec<u32>>,
    /// Existing connections, both ways.
    connected: Adjacency,
    /// Per sender, the static part of its quality points (capacity, continuity).
    sender_points: Vec<f32>,
    per_tier_lag_ms: f32,
}

impl Swarm {
    /// Builds the model and its tiers. `order` lists the reports in id order, `index` maps an id
    /// to its node. `previous[i]` is what the last plan said about node `i`
    /// (the source's entry is ignored); it makes upload slots, leaf status and tier order sticky.
    pub fn build<Id: PeerId>(
        snapshot: &Snapshot<Id>,
        order: &[usize],
        index: &FxHashMap<Id, u32>,
        previous: &[Option<PreviousPeer>],
        cfg: &Config,
    ) -> Result<Self, PlanError> {
        if snapshot.bitrate_bps == 0 {
            return Err(PlanError::ZeroBitrate);
        }
        let k = u64::from(cfg.partners_per_peer);
        let slot_bps = (snapshot.bitrate_bps / k).max(1);
        let n = order.len() + 1;
        let mut swarm = Swarm {
            n,
            report: order.to_vec(),
            coord: Vec::with_capacity(n),
            conn: Vec::with_capacity(n),
            supply: Vec::with_capacity(n),
            demand: Vec::with_capacity(n),
            tier: vec![0; n],
            leaf: vec![false; n],
            lag: vec![0; n],
            continuity: Vec::with_capacity(n),
            target_lag: Vec::new(),
            leaf_tier: 1,
            members: Vec::new(),
            connected: Adjacency::default(),
            sender_points: Vec::with_capacity(n),
            per_tier_lag_ms: cfg.per_tier_lag_ms.max(1) as f32,
        };
        // The source.
        let src = &snapshot.source;
        swarm.coord.push(src.coord.sanitized());
        swarm.conn.push(src.connectivity);
        swarm
            .supply
            .push(u32::try_from(src.upload_bps / slot_bps).unwrap_or(u32::MAX));
        swarm.demand.push(0);
        swarm.continuity.push(1.0);

        // Peers: slots with hysteresis, leaf status with hysteresis.
        let threshold = cfg.min_upload_fraction * snapshot.bitrate_bps as f64;
        for (i, &ri) in order.iter().enumerate() {
            let p = &snapshot.peers[ri];
            let prev = previous.get(i + 1).copied().flatten();
            let raw = p.upload_bps as f64 * cfg.upload_use / slot_bps as f64;
            let mut slots = raw.floor();
            if let Some(prev) = prev.filter(|p| !p.leaf) {
                // Keep the previous count unless the upload moved well past either boundary
                // (by 8%, and at least half a slot): measurements are noisy.
                let kept = f64::from(prev.slots);
                let band = (kept * 0.08).max(0.5);
                if raw >= kept - band && raw < kept + 1.0 + band {
                    slots = kept;
                }
            }
            let supply = (slots.max(0.0) as u32).min(u32::from(cfg.max_fanout));
            let demand = p.need_bps.div_ceil(slot_bps).min(k) as u8;
            let continuity = if p.continuity.is_finite() {
                p.continuity.clamp(0.0, 1.0)
            } else {
                0.0
            };
            // Hysteresis: a forwarder stays one within a band below the thresholds, a leaf must
            // clear them by as much to forward; a newcomer meets them as they are.
            let (up_min, cont_min) = match prev {
                Some(p) if !p.leaf => (threshold * 0.9, cfg.min_continuity - 0.05),
                Some(_) => (threshold * 1.1, cfg.min_continuity + 0.05),
                None => (threshold, cfg.min_continuity),
            };
            let leaf = demand == 0
                || supply == 0
                || (p.upload_bps as f64) < up_min
                || continuity < cont_min;
            swarm.coord.push(p.coord.sanitized());
            swarm.conn.push(p.connectivity);
            swarm.supply.push(if leaf { 0 } else { supply });
            swarm.demand.push(demand);
            swarm.continuity.push(continuity);
            swarm.leaf[i + 1] = leaf;
        }
        swarm.place_tiers(previous, cfg);

        // Lags: the reported one, or the tier's target for a joiner.
        swarm.target_lag = (0..=u32::from(swarm.leaf_tier))
            .map(|t| {
                if t == 0 {
                    0
                } else {
                    cfg.base_lag_ms
                        .saturating_add((t - 1).saturating_mul(cfg.per_tier_lag_ms))
                }
            })
            .collect();
        for (i, &ri) in order.iter().enumerate() {
            let node = i + 1;
            swarm.lag[node] = snapshot.peers[ri]
                .lag_ms
                .unwrap_or(swarm.target_lag[usize::from(swarm.tier[node])]);
        }

        // Existing connections, by index.
        let index_of = |id: &Id| index.get(id).copied();
        let mut pairs = Vec::new();
        for (i, &ri) in order.iter().enumerate() {
            let a = i as u32 + 1;
            for partner in &snapshot.peers[ri].partners {
                if let Some(b) = index_of(partner) {
                    if a != b {
                        pairs.push((a, b));
                        pairs.push((b, a));
                    }
                }
            }
        }
        swarm.connected = Adjacency::new(n, pairs);

        let full = f32::from(cfg.partners_per_peer) * 2.0;
        swarm.sender_points = (0..n)
            .map(|i| {
                let capacity = if i == 0 {
                    1.0
                } else {
                    (swarm.supply[i] as f32 / full).min(1.0)
                };
                CAPACITY_POINTS * capacity + CONTINUITY_POINTS * swarm.continuity[i]
            })
            .collect();
        Ok(swarm)
    }

    /// Fills the tiers (see the module documentation).
    fn place_tiers(&mut self, previous: &[Option<PreviousPeer>], cfg: &Config) {
        let prev_tier = |i: usize| {
            previous
                .get(i)
                .copied()
                .flatten()
                .map_or(u8::MAX, |p| p.tier)
        };
        let mut forwarders: Vec<u32> = (1..self.n as u32)
            .filter(|&i| !self.leaf[i as usize])
            .collect();
        // Highest upload first; ties keep their previous tier order, then id order.
        forwarders.sort_by_key(|&i| {
            (
                std::cmp::Reverse(self.supply[i as usize]),
                prev_tier(i as usize),
                i,
            )
        });
        self.members = vec![vec![SOURCE]];
        // Upload of the tier ahead, by NAT group (open/full cone, port-restricted, symmetric).
        let mut ahead = [0u64; 3];
        ahead[self.conn[0].group()] = u64::from(self.supply[0]);
        let mut fill = 1.0; // the source's upload is not kept as slack
        let mut pending: std::collections::VecDeque<u32> = forwarders.into();
        let mut tier: u8 = 1;
        while !pending.is_empty() && tier <= cfg.max_tiers {
            let cap = |g: u64| (g as f64 * fill).floor() as u64;
            let total_cap = cap(ahead[0] + ahead[1] + ahead[2]);
            let reach_pr = cap(ahead[0] + ahead[1]);
            let reach_sym = cap(ahead[0]);
            let mut demand = [0u64; 3];
            let mut placed: Vec<u32> = Vec::new();
            let mut deferred: Vec<u32> = Vec::new();
            while let Some(p) = pending.pop_front() {
                let d = u64::from(self.demand[p as usize]);
                let g = self.conn[p as usize].group();
                let total: u64 = demand.iter().sum::<u64>() + d;
                if total > total_cap {
                    pending.push_front(p);
                    break;
                }
                let mut next = demand;
                next[g] += d;
                // Hall's condition for nested compatibility: symmetric receivers only use
                // open/full-cone senders, port-restricted ones those or port-restricted ones.
                if next[2] > reach_sym || next[1] + next[2] > reach_pr {
                    // Swapped for a compatible peer further down; it tries the next tier first.
                    deferred.push(p);
                    continue;
                }
                demand = next;
                placed.push(p);
            }
            for p in deferred.into_iter().rev() {
                pending.push_front(p);
            }
            if placed.is_empty() {
                break;
            }
            ahead = [0; 3];
            for &p in &placed {
                self.tier[p as usize] = tier;
                ahead[self.conn[p as usize].group()] += u64::from(self.supply[p as usize]);
            }
            self.members.push(placed);
            fill = cfg.tier_fill;
            tier += 1;
        }
        // Forwarders that found no room become leaves: they draw on spare upload like the rest.
        for &p in &pending {
            self.leaf[p as usize] = true;
            self.supply[p as usize] = 0;
        }
        self.leaf_tier = tier;
        let leaves: Vec<u32> = (1..self.n as u32)
            .filter(|&i| self.leaf[i as usize])
            .collect();
        for &p in &leaves {
            self.tier[p as usize] = tier;
        }
        self.members.push(leaves);
    }

    /// Whether `s` may send to `r` at all: tier order, NAT compatibility, capacity and need.
    pub fn allowed(&self, s: u32, r: u32) -> bool {
        let (su, ru) = (s as usize, r as usize);
        s != r
            && r != SOURCE
            && su < self.n
            && ru < self.n
            && self.supply[su] > 0
            && self.demand[ru] > 0
            && self.tier[su] < self.tier[ru]
            && Connectivity::direct_possible(self.conn[su], self.conn[ru])
    }

    /// Points for serving a slot of `r` at all (the part of the utility that does not depend on
    /// the sender).
    pub fn base(&self, r: u32) -> i32 {
        if self.leaf[r as usize] {
            SERVE
        } else {
            SERVE + FORWARDER
        }
    }

    /// The utility of one slot from `s` to `r`, or `None` if the pair is not allowed.
    ///
    /// Base points (serving; more for a forwarder) plus quality: the estimated RTT, the sender's
    /// capacity and continuity, how far the sender is ahead of the receiver's target lag, and
    /// whether the two are already connected.
    pub fn utility(&self, s: u32, r: u32) -> Option<i32> {
        if !self.allowed(s, r) {
            return None;
        }
        let (su, ru) = (s as usize, r as usize);
        let rtt = self.coord[su].rtt_ms(&self.coord[ru]).min(RTT_CUTOFF_MS);
        let rtt_points = RTT_POINTS * (1.0 - rtt / RTT_CUTOFF_MS);
        let target = self.target_lag[usize::from(self.tier[ru])] as f32;
        let ahead = (target - self.lag[su] as f32) / self.per_tier_lag_ms;
        let lag_points = LAG_POINTS * ahead.clamp(0.0, 1.0);
        let mut points = (rtt_points + lag_points + self.sender_points[su]) as i32;
        if self.connected.contains(s, r) {
            points += CONNECTED_POINTS;
        }
        Some(self.base(r) + points)
    }

    /// How many slots one edge from `s` to `r` may carry: the source may give a receiver all
    /// it needs, a peer one slot (so that a receiver's partners are distinct peers).
    pub fn edge_cap(&self, s: u32, r: u32) -> u8 {
        if s == SOURCE {
            self.demand[r as usize]
        } else {
            1
        }
    }
}
