//! Candidate senders per receiver: the nearest compatible senders in the tiers ahead, found in
//! uniform grids over the coordinates (one grid per tier and NAT group), so that building every
//! receiver's list costs about `n · candidates`, not `n²`.
//!
//! A receiver in forwarding tier `t` looks in tier `t − 1` (most of its list) and `t − 2`; a
//! leaf looks among all forwarders and, for a share of its list, in the last forwarding tier,
//! where spare upload is. Every receiver also gets the source, its partners of the previous plan
//! and its current connections when they are allowed. Lists are computed on first use, so an
//! incremental round pays only for the receivers it re-examines.

use crate::swarm::{Swarm, SOURCE};

/// Points of one NAT group of one tier, bucketed by cell.
#[derive(Debug, Default)]
struct Grid {
    min: (f32, f32),
    cell: f32,
    cols: usize,
    rows: usize,
    /// `starts[c]..starts[c + 1]` indexes `items` for cell `c`.
    starts: Vec<u32>,
    items: Vec<u32>,
}

impl Grid {
    fn new(swarm: &Swarm, nodes: &[u32]) -> Self {
        if nodes.is_empty() {
            return Self::default();
        }
        let (mut lo, mut hi) = ((f32::MAX, f32::MAX), (f32::MIN, f32::MIN));
        for &i in nodes {
            let c = swarm.coord[i as usize];
            lo = (lo.0.min(c.x), lo.1.min(c.y));
            hi = (hi.0.max(c.x), hi.1.max(c.y));
        }
        // About three points per cell.
        let side = ((nodes.len() as f64 / 3.0).sqrt().ceil() as usize).clamp(1, 1024);
        let span = (hi.0 - lo.0).max(hi.1 - lo.1).max(1e-3);
        let cell = span / side as f32 * 1.0001;
        let (cols, rows) = (side, side);
        let cell_of = |i: u32| {
            let c = swarm.coord[i as usize];
            let cx = (((c.x - lo.0) / cell) as usize).min(cols - 1);
            let cy = (((c.y - lo.1) / cell) as usize).min(rows - 1);
            cy * cols + cx
        };
        let mut starts = vec![0u32; cols * rows + 1];
        for &i in nodes {
            starts[cell_of(i) + 1] += 1;
        }
        for c in 0..cols * rows {
            starts[c + 1] += starts[c];
        }
        let mut next = starts.clone();
        let mut items = vec![0u32; nodes.len()];
        for &i in nodes {
            let c = cell_of(i);
            items[next[c] as usize] = i;
            next[c] += 1;
        }
        Self {
            min: lo,
            cell,
            cols,
            rows,
            starts,
            items,
        }
    }

    /// Appends to `out` (as squared plane distance, node) the points of the cells around
    /// `(x, y)`, ring by ring, until at least `k` were found and at least the first ring around
    /// the centre cell was scanned: about the `k` nearest (nearer points can hide only just
    /// beyond the last ring; candidates need locality, not exact neighbours).
    fn nearest(&self, swarm: &Swarm, x: f32, y: f32, k: usize, out: &mut Vec<(f32, u32)>) {
        if self.items.is_empty() || k == 0 {
            return;
        }
        let from = out.len();
        let clamp_cell = |v: f32, lo: f32, n: usize| {
            let c = ((v - lo) / self.cell).floor();
            if c.is_nan() || c < 0.0 {
                0
            } else {
                (c as usize).min(n - 1)
            }
        };
        let (cx, cy) = (
            clamp_cell(x, self.min.0, self.cols),
            clamp_cell(y, self.min.1, self.rows),
        );
        let max_ring = self.cols.max(self.rows);
        for ring in 0..=max_ring {
            let (r, cx, cy) = (ring as isize, cx as isize, cy as isize);
            for gy in (cy - r)..=(cy + r) {
                if gy < 0 || gy >= self.rows as isize {
                    continue;
                }
                let edge_row = gy == cy - r || gy == cy + r;
                let mut gx = cx - r;
                while gx <= cx + r {
                    if gx >= 0 && gx < self.cols as isize {
                        let c = gy as usize * self.cols + gx as usize;
                        let (a, b) = (self.starts[c] as usize, self.starts[c + 1] as usize);
                        for &i in &self.items[a..b] {
                            let p = swarm.coord[i as usize];
                            let (dx, dy) = (p.x - x, p.y - y);
                            out.push((dx * dx + dy * dy, i));
                        }
                    }
                    // Inside rows only the two end cells belong to the ring.
                    gx += if edge_row || gx == cx + r {
                        1
                    } else {
                        2 * r.max(1)
                    };
                }
            }
            if ring >= 1 && out.len() - from >= k {
                break;
            }
        }
    }
}

/// The grids and each receiver's candidate list, computed on demand.
#[derive(Debug)]
pub(crate) struct Candidates {
    /// `grids[t][g]`: tier `t`'s senders of NAT group `g`.
    grids: Vec<[Grid; 3]>,
    /// `ahead[t][g]`: the senders of NAT group `g` in all tiers before `t` (the source aside).
    ahead: Vec<[Grid; 3]>,
    per_receiver: usize,
    /// Per node: offset into `arena`, or `u32::MAX` if not computed yet.
    start: Vec<u32>,
    len: Vec<u8>,
    /// (sender, utility), best first.
    arena: Vec<(u32, i32)>,
    scratch: Vec<(f32, u32)>,
}

impl Candidates {
    pub fn new(swarm: &Swarm, per_receiver: u8) -> Self {
        let mut grids = Vec::with_capacity(swarm.members.len());
        let mut ahead = Vec::with_capacity(swarm.members.len());
        let forwarders = swarm.members.len().saturating_sub(1);
        let mut all: [Vec<u32>; 3] = Default::default();
        for (t, members) in swarm.members.iter().enumerate() {
            ahead.push(std::array::from_fn(|g| Grid::new(swarm, &all[g])));
            let mut by_group: [Vec<u32>; 3] = Default::default();
            if t > 0 && t < forwarders {
                for &i in members {
                    if swarm.supply[i as usize] > 0 {
                        by_group[swarm.conn[i as usize].group()].push(i);
                    }
                }
            }
            for g in 0..3 {
                all[g].extend_from_slice(&by_group[g]);
            }
            grids.push(by_group.map(|nodes| Grid::new(swarm, &nodes)));
        }
        Self {
            grids,
            ahead,
            per_receiver: usize::from(per_receiver),
            start: vec![u32::MAX; swarm.n],
            len: vec![0; swarm.n],
            arena: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// Receiver `r`'s candidates (sender, utility), best first. `extra` are senders to include
    /// when allowed (the previous plan's partners, current connections).
    pub fn of(&mut self, swarm: &Swarm, r: u32, extra: &[u32]) -> &[(u32, i32)] {
        let len = self.ensure(swarm, r, extra);
        let a = self.start[r as usize] as usize;
        &self.arena[a..a + len]
    }

    /// Computes `r`'s list if needed; returns its length.
    pub fn ensure(&mut self, swarm: &Swarm, r: u32, extra: &[u32]) -> usize {
        if self.start[r as usize] == u32::MAX {
            self.compute(swarm, r, extra);
        }
        usize::from(self.len[r as usize])
    }

    /// Whether `r`'s list is computed already.
    pub fn computed(&self, r: u32) -> bool {
        self.start.get(r as usize).is_some_and(|&s| s != u32::MAX)
    }

    /// The `i`-th entry of `r`'s list, which [`Self::ensure`] computed.
    pub fn get(&self, r: u32, i: usize) -> (u32, i32) {
        self.arena[self.start[r as usize] as usize + i]
    }

    fn compute(&mut self, swarm: &Swarm, r: u32, extra: &[u32]) {
        let ru = r as usize;
        let start = self.arena.len();
        let tier = usize::from(swarm.tier[ru]);
        let c = swarm.coord[ru];
        let k = self.per_receiver;
        self.scratch.clear();
        let groups = swarm.conn[ru].sender_groups();
        // (grids, how many to take): the tier just ahead, the one before, and all tiers ahead;
        // a leaf: all tiers ahead, and the last forwarding tier, where spare upload is.
        let leaf_tier = usize::from(swarm.leaf_tier);
        let mut sources: [(Option<&[Grid; 3]>, usize); 3] = [(None, 0); 3];
        if swarm.demand[ru] > 0 && tier >= 2 && tier < self.ahead.len() {
            if tier == leaf_tier {
                sources[0] = (Some(&self.ahead[tier]), k);
                sources[1] = (Some(&self.grids[tier - 1]), k.div_ceil(2));
            } else {
                sources[0] = (Some(&self.grids[tier - 1]), k);
                sources[1] = (Some(&self.grids[tier - 2]), k.div_ceil(4));
                sources[2] = (Some(&self.ahead[tier]), k.div_ceil(4));
            }
        }
        let mut picked: Vec<u32> = Vec::with_capacity(2 * k + extra.len() + 1);
        for (grids, take) in sources {
            let Some(grids) = grids else { continue };
            if take == 0 {
                continue;
            }
            self.scratch.clear();
            for &g in groups {
                grids[g].nearest(swarm, c.x, c.y, take, &mut self.scratch);
            }
            let take = take.min(self.scratch.len());
            if take == 0 {
                continue;
            }
            self.scratch
                .select_nth_unstable_by(take - 1, |a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            picked.extend(self.scratch[..take].iter().map(|e| e.1));
        }
        picked.push(SOURCE);
        picked.extend_from_slice(extra);
        picked.sort_unstable();
        picked.dedup();
        for s in picked {
            if let Some(u) = swarm.utility(s, r) {
                self.arena.push((s, u));
            }
        }
        let list = &mut self.arena[start..];
        list.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let len = list.len().min(usize::from(u8::MAX));
        self.arena.truncate(start + len);
        self.start[ru] = start as u32;
        self.len[ru] = len as u8;
    }
}
