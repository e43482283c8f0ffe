//! Sender → receiver assignment: who pulls which slots from whom.
//!
//! The problem is a linear sum assignment over slots: each sender offers its upload slots, each
//! receiver wants its download slots, a slot served from `s` to `r` is worth `utility(s, r)`,
//! and a pair carries at most one slot (the source: all the receiver needs), so that a
//! receiver's partners are distinct peers. NAT-incompatible pairs and pairs against the tier
//! order have no utility at all (a hard constraint).
//!
//! The heuristic is greedy followed by switching sweeps in the manner of Deep Greedy Switching:
//! the greedy pass takes candidate pairs best first; each sweep then visits every receiver and
//! applies the best improving switch it finds: fill an unmet slot from a sender with spare
//! upload, take a slot from another receiver that values it less (which may itself move to a
//! sender with spare upload), replace a partner by a better one with spare upload, or swap
//! partners with another receiver. Sweeps stop when none improves. Switches that drop edges of
//! the previous plan must gain `margin` points per dropped edge and fit the round's move budget.

use crate::candidates::Candidates;
use crate::swarm::{Adjacency, Swarm, MAX_QUALITY, SOURCE};

/// One receiver's edge from one sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Link {
    pub sender: u32,
    pub slots: u8,
    /// Utility of one slot.
    pub utility: i32,
    /// The edge was in the previous plan.
    pub prev: bool,
}

const NO_LINK: Link = Link {
    sender: u32::MAX,
    slots: 0,
    utility: 0,
    prev: false,
};

/// Who sends what to whom.
#[derive(Debug)]
pub(crate) struct Assignment {
    /// Links per receiver, at most `k` (`links[r * k .. r * k + nlinks[r]]`).
    k: usize,
    links: Vec<Link>,
    nlinks: Vec<u8>,
    pub load: Vec<u32>,
    pub unmet: Vec<u8>,
    children: Vec<Vec<u32>>,
}

impl Assignment {
    pub fn new(swarm: &Swarm, k: u8) -> Self {
        let k = usize::from(k.max(1));
        Self {
            k,
            links: vec![NO_LINK; swarm.n * k],
            nlinks: vec![0; swarm.n],
            load: vec![0; swarm.n],
            unmet: swarm.demand.clone(),
            children: vec![Vec::new(); swarm.n],
        }
    }

    pub fn links(&self, r: u32) -> &[Link] {
        let a = r as usize * self.k;
        &self.links[a..a + usize::from(self.nlinks[r as usize])]
    }

    fn position(&self, r: u32, s: u32) -> Option<usize> {
        self.links(r).iter().position(|l| l.sender == s)
    }

    pub fn linked(&self, r: u32, s: u32) -> bool {
        self.position(r, s).is_some()
    }

    pub fn spare(&self, swarm: &Swarm, s: u32) -> u32 {
        swarm.supply[s as usize].saturating_sub(self.load[s as usize])
    }

    /// Adds `slots` from `s` to `r` (onto the existing edge if there is one). The caller checked
    /// capacity, need and the pair's cap.
    pub fn add(&mut self, r: u32, s: u32, slots: u8, utility: i32, prev: bool) {
        let ru = r as usize;
        if let Some(i) = self.position(r, s) {
            self.links[ru * self.k + i].slots += slots;
        } else {
            let n = usize::from(self.nlinks[ru]);
            if n >= self.k {
                return;
            }
            self.links[ru * self.k + n] = Link {
                sender: s,
                slots,
                utility,
                prev,
            };
            self.nlinks[ru] += 1;
            self.children[s as usize].push(r);
        }
        self.load[s as usize] += u32::from(slots);
        self.unmet[ru] = self.unmet[ru].saturating_sub(slots);
    }

    /// Takes one slot of the edge from `s` to `r` away (the whole edge if it carries one).
    /// Returns whether the edge was in the previous plan.
    pub fn remove_one(&mut self, r: u32, s: u32) -> bool {
        let ru = r as usize;
        let Some(i) = self.position(r, s) else {
            return false;
        };
        let base = ru * self.k;
        let link = &mut self.links[base + i];
        let prev = link.prev;
        link.slots -= 1;
        // A shrunken edge is no longer the previous plan's edge.
        link.prev = false;
        if link.slots == 0 {
            let last = usize::from(self.nlinks[ru]) - 1;
            self.links.swap(base + i, base + last);
            self.links[base + last] = NO_LINK;
            self.nlinks[ru] -= 1;
            let kids = &mut self.children[s as usize];
            if let Some(j) = kids.iter().position(|&c| c == r) {
                kids.swap_remove(j);
            }
        }
        self.load[s as usize] -= 1;
        self.unmet[ru] += 1;
        prev
    }

    /// Total utility and served slots.
    pub fn totals(&self, swarm: &Swarm) -> (i64, u64, i64) {
        let (mut utility, mut served, mut base) = (0i64, 0u64, 0i64);
        for r in 0..swarm.n as u32 {
            for l in self.links(r) {
                utility += i64::from(l.utility) * i64::from(l.slots);
                served += u64::from(l.slots);
                base += i64::from(swarm.base(r)) * i64::from(l.slots);
            }
        }
        (utility, served, base)
    }
}

/// How much of the previous plan a round may change.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    pub moves_left: usize,
    pub margin: i64,
    pub moves: usize,
}

impl Budget {
    fn accepts(&self, gain: i64, dropped_prev: usize) -> bool {
        gain > self.margin * dropped_prev as i64 && dropped_prev <= self.moves_left
    }

    fn spend(&mut self, dropped_prev: usize) {
        self.moves_left -= dropped_prev;
        self.moves += dropped_prev;
    }
}

/// How hard a round works.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Effort {
    /// Most switching sweeps.
    pub sweeps: u8,
    /// A first round (no previous plan): every candidate list is computed up front.
    pub first_round: bool,
}

/// Runs greedy then switching sweeps over the receivers in `work`. `extra` holds, per
/// receiver, senders to consider besides the nearest (previous partners, current connections).
pub(crate) fn solve(
    swarm: &Swarm,
    cands: &mut Candidates,
    asg: &mut Assignment,
    work: &[u32],
    extra: &Adjacency,
    budget: &mut Budget,
    effort: Effort,
) {
    let Effort {
        sweeps,
        first_round,
    } = effort;
    greedy(swarm, cands, asg, work, extra);
    let mut s = Switcher {
        swarm,
        cands,
        asg,
        extra,
        budget,
        generation: 1,
        no_spare: vec![0; swarm.n],
        freed: vec![false; swarm.n],
        freed_list: Vec::new(),
        touched: Vec::new(),
        new_lists: None,
    };
    let limit = (!first_round).then_some(NEW_LISTS_PER_FILL);
    // The first sweep visits every receiver; later ones those a switch touched, and those still
    // missing slots if a switch freed upload somewhere.
    let mut active = work.to_vec();
    let mut queued = vec![false; swarm.n];
    for _ in 0..sweeps {
        let generation = s.generation;
        // Unmet slots first: they get the move budget before quality does.
        for &r in &active {
            s.new_lists = limit;
            s.fill(r);
        }
        for &r in &active {
            s.improve(r);
        }
        let mut next = std::mem::take(&mut s.touched);
        if s.generation != generation {
            // Receivers still missing slots come back if a sender they know freed upload.
            for &r in work {
                if s.asg.unmet[r as usize] > 0 && s.cands.computed(r) {
                    let len = s.cands.ensure(swarm, r, &[]);
                    if (0..len).any(|i| s.freed[s.cands.get(r, i).0 as usize]) {
                        next.push(r);
                    }
                }
            }
            for f in std::mem::take(&mut s.freed_list) {
                s.freed[f as usize] = false;
            }
        }
        next.retain(|&r| !std::mem::replace(&mut queued[r as usize], true));
        for &r in &next {
            queued[r as usize] = false;
        }
        if next.is_empty() {
            break;
        }
        next.sort_unstable_by_key(|&r| (swarm.tier[r as usize], r));
        active = next;
    }
}

/// Full senders a partner's swap search looks at (the best ones above the partner).
const SWAP_CANDIDATES: usize = 4;

/// Candidate pairs of receivers with unmet demand, each taken while both sides can.
///
/// The most constrained receivers go first: the senders a receiver may use are nested (a tier's
/// are a subset of the next tier's; a symmetric NAT's a subset of a port-restricted one's, and
/// those of an open host's), so serving the narrow choices first keeps their few senders for
/// them. Within a tier and NAT class, best utility first.
fn greedy(
    swarm: &Swarm,
    cands: &mut Candidates,
    asg: &mut Assignment,
    work: &[u32],
    extra: &Adjacency,
) {
    let mut pairs: Vec<(u8, usize, i32, u32, u32)> = Vec::new();
    for &r in work {
        if asg.unmet[r as usize] == 0 {
            continue;
        }
        let tier = swarm.tier[r as usize];
        let narrow = 2 - swarm.conn[r as usize].group();
        for &(s, u) in cands.of(swarm, r, extra.of(r)) {
            pairs.push((tier, narrow, u, r, s));
        }
    }
    pairs.sort_unstable_by(|a, b| {
        a.0.cmp(&b.0)
            .then(b.1.cmp(&a.1))
            .then(b.2.cmp(&a.2))
            .then(a.3.cmp(&b.3))
            .then(a.4.cmp(&b.4))
    });
    for (_, _, u, r, s) in pairs {
        let unmet = asg.unmet[r as usize];
        if unmet == 0 {
            continue;
        }
        let spare = asg.spare(swarm, s);
        if spare == 0 {
            continue;
        }
        let room = room(swarm, asg, r, s);
        let slots = u32::from(unmet.min(room)).min(spare) as u8;
        if slots > 0 {
            asg.add(r, s, slots, u, false);
        }
    }
}

/// Slots the edge from `s` to `r` may still take.
fn room(swarm: &Swarm, asg: &Assignment, r: u32, s: u32) -> u8 {
    let already = asg
        .links(r)
        .iter()
        .find(|l| l.sender == s)
        .map_or(0, |l| l.slots);
    swarm.edge_cap(s, r).saturating_sub(already)
}

struct Switcher<'a> {
    swarm: &'a Swarm,
    cands: &'a mut Candidates,
    asg: &'a mut Assignment,
    extra: &'a Adjacency,
    budget: &'a mut Budget,
    /// Bumped whenever a sender may have gained spare upload.
    generation: u32,
    /// Per receiver, the generation at which it had no candidate with spare upload.
    no_spare: Vec<u32>,
    /// Receivers whose edges changed this sweep.
    touched: Vec<u32>,
    /// Senders that freed upload this sweep (flags, and the flagged ones).
    freed: Vec<bool>,
    freed_list: Vec<u32>,
    /// Candidate lists the current fill may still compute for other receivers (`None`: no
    /// limit).
    new_lists: Option<usize>,
}

/// Candidate lists one fill may compute for the receivers it would take a slot from, in an
/// incremental round. A first round computes every list up front, so a later round can only find
/// fewer switches than the first did, never new ones that would unsettle a stable plan.
const NEW_LISTS_PER_FILL: usize = 4;

/// A switch found for one receiver.
#[derive(Debug, Clone, Copy)]
enum Switch {
    /// Take a slot from `s`, which has spare upload.
    Take { s: u32, u: i32 },
    /// Take a slot of `s` from `victim`, which moves to `rehome` if given.
    Steal {
        s: u32,
        u: i32,
        victim: u32,
        rehome: Option<(u32, i32)>,
    },
    /// Replace partner `old` by `s`, which has spare upload.
    Replace { old: u32, s: u32, u: i32 },
    /// Replace partner `old` by `s`, whose slot to `other` moves to `old`.
    Swap {
        old: u32,
        s: u32,
        u: i32,
        other: u32,
        other_u: i32,
    },
}

/// The best switch so far: (gain, previous-plan edges it drops, the switch).
type Best = Option<(i64, usize, Switch)>;

impl Switcher<'_> {
    /// Computes `r`'s candidate list if needed; returns its length.
    fn candidates(&mut self, r: u32) -> usize {
        self.cands.ensure(self.swarm, r, self.extra.of(r))
    }

    /// The receiver's best sender with spare upload that it has no edge from (or whose edge can
    /// grow), excluding `not`.
    fn best_spare(&mut self, r: u32, not: u32) -> Option<(u32, i32)> {
        if self.no_spare[r as usize] == self.generation {
            return None;
        }
        if !self.cands.computed(r) {
            match &mut self.new_lists {
                Some(0) => return None,
                Some(left) => *left -= 1,
                None => {}
            }
        }
        let len = self.candidates(r);
        for i in 0..len {
            let (s, u) = self.cands.get(r, i);
            if s != not && self.asg.spare(self.swarm, s) > 0 && room(self.swarm, self.asg, r, s) > 0
            {
                return Some((s, u));
            }
        }
        // Only `not` may have had spare upload; the answer holds until a slot frees up.
        if self.asg.spare(self.swarm, not) == 0 {
            self.no_spare[r as usize] = self.generation;
        }
        None
    }

    /// The stored utility of the edge from `s` to `r`, and whether it is the previous plan's.
    fn link(&self, r: u32, s: u32) -> Option<(i32, bool)> {
        self.asg
            .links(r)
            .iter()
            .find(|l| l.sender == s)
            .map(|l| (l.utility, l.prev))
    }

    fn consider(&self, best: &mut Best, gain: i64, dropped: usize, sw: Switch) {
        if self.budget.accepts(gain, dropped) && best.is_none_or(|b| gain > b.0) {
            *best = Some((gain, dropped, sw));
        }
    }

    /// The least gain a switch must beat to matter now.
    fn floor(&self, best: &Best) -> i64 {
        best.map_or(0, |b| b.0)
    }

    /// Fills unmet slots of `r` with the best switch each, while one improves.
    fn fill(&mut self, r: u32) -> bool {
        let mut any = false;
        while self.asg.unmet[r as usize] > 0 {
            let mut best: Best = None;
            let len = self.candidates(r);
            // A sender with spare upload serves the slot without disturbing anyone: the best
            // one is taken, and steals are searched only when none is in reach (the quality
            // sweeps may still swap it later).
            for i in 0..len {
                let (s, u) = self.cands.get(r, i);
                if self.asg.spare(self.swarm, s) > 0 && room(self.swarm, self.asg, r, s) > 0 {
                    best = Some((i64::from(u), 0, Switch::Take { s, u }));
                    break;
                }
            }
            for i in 0..len {
                if best.is_some_and(|b| matches!(b.2, Switch::Take { .. })) {
                    break;
                }
                let (s, u) = self.cands.get(r, i);
                if room(self.swarm, self.asg, r, s) == 0 {
                    continue;
                }
                for vi in 0..self.asg.children[s as usize].len() {
                    let victim = self.asg.children[s as usize][vi];
                    if victim == r {
                        continue;
                    }
                    let Some((lost, prev)) = self.link(victim, s) else {
                        continue;
                    };
                    let dropped = usize::from(prev);
                    let plain = i64::from(u) - i64::from(lost);
                    self.consider(
                        &mut best,
                        plain,
                        dropped,
                        Switch::Steal {
                            s,
                            u,
                            victim,
                            rehome: None,
                        },
                    );
                    // The victim's new sender can give back at most a full slot's utility.
                    let most = i64::from(self.swarm.base(victim) + MAX_QUALITY);
                    if plain + most <= self.floor(&best) {
                        continue;
                    }
                    if let Some((s2, u2)) = self.best_spare(victim, s) {
                        self.consider(
                            &mut best,
                            plain + i64::from(u2),
                            dropped,
                            Switch::Steal {
                                s,
                                u,
                                victim,
                                rehome: Some((s2, u2)),
                            },
                        );
                    }
                }
            }
            let Some((_, dropped, sw)) = best else {
                break;
            };
            self.apply(r, sw, dropped);
            any = true;
        }
        any
    }

    /// Replaces or swaps each of `r`'s peer partners for a better one, if a switch improves.
    fn improve(&mut self, r: u32) -> bool {
        let mut any = false;
        let len = self.candidates(r);
        let current: Vec<Link> = self.asg.links(r).to_vec();
        for old in current {
            if old.sender == SOURCE || !self.asg.linked(r, old.sender) {
                continue;
            }
            let old_prev = usize::from(old.prev);
            let mut best: Best = None;
            let mut swaps_tried = 0;
            for i in 0..len {
                let (s, u) = self.cands.get(r, i);
                if u <= old.utility {
                    break;
                }
                if s == SOURCE || self.asg.linked(r, s) {
                    continue;
                }
                let gain = i64::from(u) - i64::from(old.utility);
                if self.asg.spare(self.swarm, s) > 0 {
                    let sw = Switch::Replace {
                        old: old.sender,
                        s,
                        u,
                    };
                    self.consider(&mut best, gain, old_prev, sw);
                    continue;
                }
                if swaps_tried == SWAP_CANDIDATES {
                    continue;
                }
                swaps_tried += 1;
                for oi in 0..self.asg.children[s as usize].len() {
                    let other = self.asg.children[s as usize][oi];
                    if other == r {
                        continue;
                    }
                    let Some((lost, prev)) = self.link(other, s) else {
                        continue;
                    };
                    // `other` gets at most a full slot from the old partner.
                    let most = i64::from(self.swarm.base(other) + MAX_QUALITY);
                    if gain - i64::from(lost) + most <= self.floor(&best) {
                        continue;
                    }
                    if self.asg.linked(other, old.sender) {
                        continue;
                    }
                    let Some(other_u) = self.swarm.utility(old.sender, other) else {
                        continue;
                    };
                    let swap_gain = gain + i64::from(other_u) - i64::from(lost);
                    let dropped = old_prev + usize::from(prev);
                    let sw = Switch::Swap {
                        old: old.sender,
                        s,
                        u,
                        other,
                        other_u,
                    };
                    self.consider(&mut best, swap_gain, dropped, sw);
                }
            }
            if let Some((_, dropped, sw)) = best {
                self.apply(r, sw, dropped);
                any = true;
            }
        }
        any
    }

    fn apply(&mut self, r: u32, sw: Switch, dropped: usize) {
        self.budget.spend(dropped);
        self.touched.push(r);
        match sw {
            Switch::Take { s, u } => {
                let slots =
                    u32::from(self.asg.unmet[r as usize].min(room(self.swarm, self.asg, r, s)))
                        .min(self.asg.spare(self.swarm, s)) as u8;
                self.asg.add(r, s, slots.max(1), u, false);
            }
            Switch::Steal {
                s,
                u,
                victim,
                rehome,
            } => {
                self.asg.remove_one(victim, s);
                self.asg.add(r, s, 1, u, false);
                self.touched.push(victim);
                if let Some((s2, u2)) = rehome {
                    self.asg.add(victim, s2, 1, u2, false);
                }
            }
            Switch::Replace { old, s, u } => {
                self.asg.remove_one(r, old);
                self.asg.add(r, s, 1, u, false);
                self.generation += 1;
                if !std::mem::replace(&mut self.freed[old as usize], true) {
                    self.freed_list.push(old);
                }
            }
            Switch::Swap {
                old,
                s,
                u,
                other,
                other_u,
            } => {
                self.asg.remove_one(r, old);
                self.asg.remove_one(other, s);
                self.asg.add(r, s, 1, u, false);
                self.asg.add(other, old, 1, other_u, false);
                self.touched.push(other);
            }
        }
    }
}
