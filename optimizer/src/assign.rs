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
use crate::swarm::{Swarm, SOURCE};

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

/// Extra candidate senders of a receiver (previous partners, current connections).
pub(crate) type Extra<'a> = &'a dyn Fn(u32) -> Vec<u32>;

/// Runs greedy then switching sweeps over the receivers in `work`.
pub(crate) fn solve(
    swarm: &Swarm,
    cands: &mut Candidates,
    asg: &mut Assignment,
    work: &[u32],
    extra: Extra<'_>,
    budget: &mut Budget,
    sweeps: u8,
) {
    greedy(swarm, cands, asg, work, extra);
    let mut s = Switcher {
        swarm,
        cands,
        asg,
        extra,
        budget,
    };
    for _ in 0..sweeps {
        let mut improved = false;
        for &r in work {
            improved |= s.fill(r);
            improved |= s.improve(r);
        }
        if !improved {
            break;
        }
    }
}

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
    extra: Extra<'_>,
) {
    let mut pairs: Vec<(u8, usize, i32, u32, u32)> = Vec::new();
    for &r in work {
        if asg.unmet[r as usize] == 0 {
            continue;
        }
        let ex = extra(r);
        let tier = swarm.tier[r as usize];
        let narrow = 2 - swarm.conn[r as usize].group();
        for &(s, u) in cands.of(swarm, r, &ex) {
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
        let already = asg
            .links(r)
            .iter()
            .find(|l| l.sender == s)
            .map_or(0, |l| l.slots);
        let room = swarm.edge_cap(s, r).saturating_sub(already);
        let slots = u32::from(unmet.min(room)).min(spare) as u8;
        if slots > 0 {
            asg.add(r, s, slots, u, false);
        }
    }
}

struct Switcher<'a> {
    swarm: &'a Swarm,
    cands: &'a mut Candidates,
    asg: &'a mut Assignment,
    extra: Extra<'a>,
    budget: &'a mut Budget,
}

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

impl Switcher<'_> {
    fn candidates(&mut self, r: u32) -> Vec<(u32, i32)> {
        let ex = (self.extra)(r);
        self.cands.of(self.swarm, r, &ex).to_vec()
    }

    /// The receiver's best sender with spare upload that it has no edge from (or whose edge can
    /// grow), excluding `not`.
    fn best_spare(&mut self, r: u32, not: u32) -> Option<(u32, i32)> {
        let list = self.candidates(r);
        list.into_iter()
            .find(|&(s, _)| s != not && self.asg.spare(self.swarm, s) > 0 && self.room(r, s) > 0)
    }

    /// Slots the edge from `s` to `r` may still take.
    fn room(&self, r: u32, s: u32) -> u8 {
        let already = self
            .asg
            .links(r)
            .iter()
            .find(|l| l.sender == s)
            .map_or(0, |l| l.slots);
        self.swarm.edge_cap(s, r).saturating_sub(already)
    }

    fn is_prev(&self, r: u32, s: u32) -> bool {
        self.asg.links(r).iter().any(|l| l.sender == s && l.prev)
    }

    /// Fills unmet slots of `r` with the best switch each, while one improves.
    fn fill(&mut self, r: u32) -> bool {
        let mut any = false;
        while self.asg.unmet[r as usize] > 0 {
            let mut best: Option<(i64, usize, Switch)> = None;
            let mut consider = |gain: i64, dropped: usize, sw: Switch, budget: &Budget| {
                if budget.accepts(gain, dropped) && best.is_none_or(|b| gain > b.0) {
                    best = Some((gain, dropped, sw));
                }
            };
            for (s, u) in self.candidates(r) {
                if self.room(r, s) == 0 {
                    continue;
                }
                if self.asg.spare(self.swarm, s) > 0 {
                    consider(i64::from(u), 0, Switch::Take { s, u }, self.budget);
                    continue;
                }
                let victims = self.asg.children[s as usize].clone();
                for victim in victims {
                    if victim == r {
                        continue;
                    }
                    let Some(lost) = self.swarm.utility(s, victim) else {
                        continue;
                    };
                    let dropped = usize::from(self.is_prev(victim, s));
                    let plain = i64::from(u) - i64::from(lost);
                    consider(
                        plain,
                        dropped,
                        Switch::Steal {
                            s,
                            u,
                            victim,
                            rehome: None,
                        },
                        self.budget,
                    );
                    if let Some((s2, u2)) = self.best_spare(victim, s) {
                        consider(
                            plain + i64::from(u2),
                            dropped,
                            Switch::Steal {
                                s,
                                u,
                                victim,
                                rehome: Some((s2, u2)),
                            },
                            self.budget,
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
        let list = self.candidates(r);
        let current: Vec<Link> = self.asg.links(r).to_vec();
        for old in current {
            if old.sender == SOURCE || !self.asg.linked(r, old.sender) {
                continue;
            }
            let old_prev = usize::from(old.prev);
            let mut best: Option<(i64, usize, Switch)> = None;
            for &(s, u) in &list {
                if u <= old.utility {
                    break;
                }
                if s == SOURCE || self.asg.linked(r, s) {
                    continue;
                }
                let gain = i64::from(u) - i64::from(old.utility);
                if self.asg.spare(self.swarm, s) > 0 {
                    if self.budget.accepts(gain, old_prev) && best.is_none_or(|b| gain > b.0) {
                        best = Some((
                            gain,
                            old_prev,
                            Switch::Replace {
                                old: old.sender,
                                s,
                                u,
                            },
                        ));
                    }
                    continue;
                }
                for &other in &self.asg.children[s as usize] {
                    if other == r || self.asg.linked(other, old.sender) {
                        continue;
                    }
                    let Some(other_u) = self.swarm.utility(old.sender, other) else {
                        continue;
                    };
                    let Some(lost) = self.swarm.utility(s, other) else {
                        continue;
                    };
                    let swap_gain = gain + i64::from(other_u) - i64::from(lost);
                    let dropped = old_prev + usize::from(self.is_prev(other, s));
                    if self.budget.accepts(swap_gain, dropped)
                        && best.is_none_or(|b| swap_gain > b.0)
                    {
                        best = Some((
                            swap_gain,
                            dropped,
                            Switch::Swap {
                                old: old.sender,
                                s,
                                u,
                                other,
                                other_u,
                            },
                        ));
                    }
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
        match sw {
            Switch::Take { s, u } => {
                let slots = u32::from(self.asg.unmet[r as usize].min(self.room(r, s)))
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
                if let Some((s2, u2)) = rehome {
                    self.asg.add(victim, s2, 1, u2, false);
                }
            }
            Switch::Replace { old, s, u } => {
                self.asg.remove_one(r, old);
                self.asg.add(r, s, 1, u, false);
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
            }
        }
    }
}
