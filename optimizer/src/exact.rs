//! An exact solver for the slot assignment, for small instances (a few hundred peers).
//!
//! The Hungarian method (Kuhn–Munkres) in its primal-dual form: successive shortest augmenting
//! paths in the residual graph, Dijkstra on costs reduced by node potentials. Generalized from
//! one-to-one assignment to capacities: a sender node offers its slots, a receiver node wants
//! its slots, a pair carries at most its cap (1, or the receiver's need from the source). With
//! every capacity 1 it is exactly Kuhn–Munkres. Maximizing utility = minimizing its negation;
//! augmentation stops when the cheapest path no longer gains (the cost of the best flow is
//! convex in its size), so the result is a maximum-utility assignment, not a maximum flow.
//! Time: O(F · E log V) for F slots served over E allowed pairs.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// One allowed pair.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pair {
    pub sender: u32,
    pub receiver: u32,
    pub cap: u32,
    pub utility: i64,
}

#[derive(Debug, Clone, Copy)]
struct Arc {
    to: usize,
    cap: u32,
    cost: i64,
    /// Index of the reverse arc in `arcs[to]`.
    rev: usize,
}

/// Maximum-utility flows for `pairs`, given each sender's and receiver's slots (indexed by node
/// number). Returns the slots carried by each pair, in `pairs` order.
pub(crate) fn max_utility(supply: &[u32], demand: &[u32], pairs: &[Pair]) -> Vec<u32> {
    // Node numbering: 0 = super source, 1 = super sink, 2 + i = sender i, 2 + n + i = receiver i.
    let n = supply.len().max(demand.len());
    let v = 2 + 2 * n;
    let mut arcs: Vec<Vec<Arc>> = vec![Vec::new(); v];
    let add = |arcs: &mut Vec<Vec<Arc>>, a: usize, b: usize, cap: u32, cost: i64| {
        let (ra, rb) = (arcs[b].len(), arcs[a].len());
        arcs[a].push(Arc {
            to: b,
            cap,
            cost,
            rev: ra,
        });
        arcs[b].push(Arc {
            to: a,
            cap: 0,
            cost: -cost,
            rev: rb,
        });
        (a, rb)
    };
    for (i, &s) in supply.iter().enumerate() {
        if s > 0 {
            add(&mut arcs, 0, 2 + i, s, 0);
        }
    }
    for (i, &d) in demand.iter().enumerate() {
        if d > 0 {
            add(&mut arcs, 2 + n + i, 1, d, 0);
        }
    }
    let mut handles = Vec::with_capacity(pairs.len());
    for p in pairs {
        let (s, r) = (p.sender as usize, p.receiver as usize);
        if s >= n || r >= n || p.cap == 0 {
            handles.push(None);
            continue;
        }
        handles.push(Some(add(&mut arcs, 2 + s, 2 + n + r, p.cap, -p.utility)));
    }

    // Initial potentials: shortest distances from the super source. The graph is layered
    // (source → senders → receivers → sink), so one pass in layer order suffices.
    const INF: i64 = i64::MAX / 4;
    let mut pot = vec![INF; v];
    pot[0] = 0;
    for i in 0..n {
        if supply[i] > 0 {
            pot[2 + i] = 0;
        }
    }
    for i in 0..n {
        if pot[2 + i] == INF {
            continue;
        }
        for a in &arcs[2 + i] {
            if a.cap > 0 && a.to >= 2 + n {
                pot[a.to] = pot[a.to].min(pot[2 + i] + a.cost);
            }
        }
    }
    for i in 0..n {
        if pot[2 + n + i] < INF && demand[i] > 0 {
            pot[1] = pot[1].min(pot[2 + n + i]);
        }
    }
    // Unreachable nodes keep a finite potential; only reachable ones matter for reduced costs
    // until they become reachable, and then Dijkstra's update fixes them.
    let floor = pot.iter().copied().filter(|&p| p < INF).min().unwrap_or(0);
    for p in &mut pot {
        if *p == INF {
            *p = floor;
        }
    }

    let mut dist = vec![INF; v];
    let mut prev: Vec<(usize, usize)> = vec![(usize::MAX, 0); v];
    let mut done = vec![false; v];
    loop {
        dist.fill(INF);
        done.fill(false);
        dist[0] = 0;
        let mut heap = BinaryHeap::new();
        heap.push(Reverse((0i64, 0usize)));
        while let Some(Reverse((d, u))) = heap.pop() {
            if done[u] {
                continue;
            }
            done[u] = true;
            if u == 1 {
                break;
            }
            for (ai, a) in arcs[u].iter().enumerate() {
                if a.cap == 0 || done[a.to] {
                    continue;
                }
                let reduced = a.cost + pot[u] - pot[a.to];
                let nd = d + reduced.max(0);
                if nd < dist[a.to] {
                    dist[a.to] = nd;
                    prev[a.to] = (u, ai);
                    heap.push(Reverse((nd, a.to)));
                }
            }
        }
        if !done[1] {
            break;
        }
        // Potentials: shortest distances so far (capped at the sink's for nodes not settled).
        let dt = dist[1];
        for (p, (&d, &settled)) in pot.iter_mut().zip(dist.iter().zip(done.iter())) {
            *p += if settled { d } else { dt };
        }
        // The path's true cost is now pot[1] - pot[0].
        if pot[1] - pot[0] >= 0 {
            break;
        }
        let mut push = u32::MAX;
        let mut x = 1;
        while x != 0 {
            let (u, ai) = prev[x];
            push = push.min(arcs[u][ai].cap);
            x = u;
        }
        let mut x = 1;
        while x != 0 {
            let (u, ai) = prev[x];
            arcs[u][ai].cap -= push;
            let (to, rev) = (arcs[u][ai].to, arcs[u][ai].rev);
            arcs[to][rev].cap += push;
            x = u;
        }
    }
    handles
        .iter()
        .zip(pairs)
        .map(|(h, p)| h.map_or(0, |(a, i)| p.cap - arcs[a][i].cap))
        .collect()
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// The best total over every subset of pairs that respects the capacities (each pair used
    /// 0..=cap times).
    fn brute_force(supply: &[u32], demand: &[u32], pairs: &[Pair]) -> i64 {
        fn go(i: usize, pairs: &[Pair], sup: &mut [u32], dem: &mut [u32]) -> i64 {
            if i == pairs.len() {
                return 0;
            }
            let p = pairs[i];
            let (s, r) = (p.sender as usize, p.receiver as usize);
            let mut best = go(i + 1, pairs, sup, dem);
            let most = p.cap.min(sup[s]).min(dem[r]);
            for k in 1..=most {
                sup[s] -= k;
                dem[r] -= k;
                best = best.max(i64::from(k) * p.utility + go(i + 1, pairs, sup, dem));
                sup[s] += k;
                dem[r] += k;
            }
            best
        }
        go(0, pairs, &mut supply.to_vec(), &mut demand.to_vec())
    }

    #[test]
    fn agrees_with_brute_force_on_small_random_instances() {
        let mut rng = StdRng::seed_from_u64(7);
        for case in 0..300 {
            let n = rng.gen_range(2..6);
            let supply: Vec<u32> = (0..n).map(|_| rng.gen_range(0..4)).collect();
            let demand: Vec<u32> = (0..n).map(|_| rng.gen_range(0..4)).collect();
            let mut pairs = Vec::new();
            for s in 0..n as u32 {
                for r in 0..n as u32 {
                    if s != r && rng.gen_bool(0.5) && pairs.len() < 9 {
                        pairs.push(Pair {
                            sender: s,
                            receiver: r,
                            cap: rng.gen_range(1..3),
                            // Some negative utilities: those pairs must stay unused.
                            utility: rng.gen_range(-20..100),
                        });
                    }
                }
            }
            let flows = max_utility(&supply, &demand, &pairs);
            let total: i64 = flows
                .iter()
                .zip(&pairs)
                .map(|(&f, p)| i64::from(f) * p.utility)
                .sum();
            assert_eq!(total, brute_force(&supply, &demand, &pairs), "case {case}");
            // Feasible: caps, supplies and demands respected.
            let mut used_s = vec![0; n];
            let mut used_d = vec![0; n];
            for (&f, p) in flows.iter().zip(&pairs) {
                assert!(f <= p.cap);
                used_s[p.sender as usize] += f;
                used_d[p.receiver as usize] += f;
            }
            for i in 0..n {
                assert!(
                    used_s[i] <= supply[i] && used_d[i] <= demand[i],
                    "case {case}"
                );
            }
        }
    }

    #[test]
    fn classic_assignment_matrix() {
        // 3×3 assignment (capacities 1): the best is 0→1, 1→0, 2→2 = 9 + 6 + 9... checked by
        // hand: rows (1,9,3), (6,2,8), (4,7,9) → 9 + 6 + 9 = 24.
        let m = [[1, 9, 3], [6, 2, 8], [4, 7, 9]];
        let mut pairs = Vec::new();
        for (s, row) in m.iter().enumerate() {
            for (r, &u) in row.iter().enumerate() {
                pairs.push(Pair {
                    sender: s as u32,
                    receiver: r as u32,
                    cap: 1,
                    utility: u,
                });
            }
        }
        let flows = max_utility(&[1, 1, 1], &[1, 1, 1], &pairs);
        let total: i64 = flows
            .iter()
            .zip(&pairs)
            .map(|(&f, p)| i64::from(f) * p.utility)
            .sum();
        assert_eq!(total, 24);
    }
}
