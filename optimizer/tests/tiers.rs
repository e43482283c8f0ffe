//! The Chandelier's shape: tiers by upload, each covering the next; leaves; joiners.

#![allow(clippy::unwrap_used)]

mod common;

use common::{check_plan, random_swarm, Shape, BITRATE};
use optimizer::{plan, Config, Plan, Snapshot, Upstream};

fn tier_sums(snap: &Snapshot<u32>, plan: &Plan<u32>) -> Vec<(u64, u64)> {
    // (upload of forwarders, need of all) per tier.
    let mut sums = vec![(0u64, 0u64); usize::from(plan.leaf_tier) + 1];
    for pp in &plan.peers {
        let r = snap.peers.iter().find(|r| r.id == pp.id).unwrap();
        let t = usize::from(pp.tier);
        if pp.tier < plan.leaf_tier {
            sums[t].0 += r.upload_bps;
        }
        sums[t].1 += r.need_bps;
    }
    sums
}

#[test]
fn each_tier_upload_covers_the_next_tier_demand() {
    let cfg = Config::default();
    for seed in 0..20 {
        let snap = random_swarm(seed, &Shape::mixed(500));
        let round = plan(&snap, None, &cfg).unwrap();
        check_plan(&snap, &round.plan, &cfg);
        assert!(
            round.plan.leaf_tier >= 3,
            "seed {seed}: a chandelier, not a star"
        );
        let sums = tier_sums(&snap, &round.plan);
        // Tier 1 within the source's upload; tier t + 1 within tier t's.
        assert!(sums[1].1 <= snap.source.upload_bps, "seed {seed}: tier 1");
        for t in 1..usize::from(round.plan.leaf_tier) - 1 {
            assert!(
                sums[t + 1].1 <= sums[t].0,
                "seed {seed}: tier {t} uploads {} < tier {} needs {}",
                sums[t].0,
                t + 1,
                sums[t + 1].1
            );
        }
    }
}

#[test]
fn higher_tiers_have_more_upload() {
    let cfg = Config::default();
    for seed in 0..10 {
        // Without NAT constraints nobody is swapped down, so tiers are ordered strictly.
        let snap = random_swarm(seed, &Shape::open(800));
        let round = plan(&snap, None, &cfg).unwrap();
        let leaf = round.plan.leaf_tier;
        let mut lowest = vec![u16::MAX; usize::from(leaf)];
        let mut highest = vec![0u16; usize::from(leaf)];
        for pp in round.plan.peers.iter().filter(|p| p.tier < leaf) {
            let t = usize::from(pp.tier);
            lowest[t] = lowest[t].min(pp.upload_slots);
            highest[t] = highest[t].max(pp.upload_slots);
        }
        for t in 1..usize::from(leaf) - 1 {
            assert!(
                lowest[t] >= highest[t + 1],
                "seed {seed}: tier {t} has a peer with {} slots, tier {} one with {}",
                lowest[t],
                t + 1,
                highest[t + 1]
            );
        }
    }
}

#[test]
fn free_riders_and_weak_or_unreliable_peers_are_leaves() {
    let cfg = Config::default();
    for seed in 0..10 {
        let snap = random_swarm(seed, &Shape::mixed(400));
        let round = plan(&snap, None, &cfg).unwrap();
        let mut leaves = 0;
        for r in &snap.peers {
            let weak = (r.upload_bps as f64) < cfg.min_upload_fraction * BITRATE as f64;
            let unreliable = r.continuity < cfg.min_continuity;
            if weak || unreliable {
                let pp = round.plan.peer(&r.id).unwrap();
                assert_eq!(
                    pp.tier, round.plan.leaf_tier,
                    "seed {seed}: peer {} is a leaf",
                    r.id
                );
                assert_eq!(pp.upload_slots, 0);
                leaves += 1;
            }
        }
        assert!(leaves > 50, "the shape has free-riders and weak peers");
        // Nobody pulls from a leaf.
        for pp in &round.plan.peers {
            for p in &pp.partners {
                if let Upstream::Peer(i) = p.from {
                    assert!(round.plan.peers[i as usize].tier < round.plan.leaf_tier);
                }
            }
        }
    }
}

#[test]
fn joiners_get_their_tier_target_lag_and_partners_ahead_of_it() {
    let cfg = Config::default();
    let mut snap = random_swarm(3, &Shape::mixed(300));
    // Everyone plays at their tier's target lag, then a few join.
    let settled = plan(&snap, None, &cfg).unwrap().plan;
    for r in &mut snap.peers {
        r.lag_ms = Some(settled.peer(&r.id).unwrap().target_lag_ms);
    }
    let joiners: Vec<u32> = snap.peers.iter().step_by(15).map(|r| r.id).collect();
    for r in &mut snap.peers {
        if joiners.contains(&r.id) {
            r.lag_ms = None;
        }
    }
    let round = plan(&snap, Some(&settled), &cfg).unwrap();
    check_plan(&snap, &round.plan, &cfg);
    let lag_of = |id: u32| snap.peers.iter().find(|r| r.id == id).unwrap().lag_ms;
    for id in joiners {
        let pp = round.plan.peer(&id).unwrap();
        let expected = cfg.base_lag_ms + u32::from(pp.tier - 1) * cfg.per_tier_lag_ms;
        assert_eq!(pp.target_lag_ms, expected);
        for p in &pp.partners {
            match round.plan.resolve(p.from).unwrap() {
                Upstream::Peer(s) => {
                    // A sender that joined too plays at its own tier's target.
                    let lag = lag_of(s).unwrap_or(round.plan.peer(&s).unwrap().target_lag_ms);
                    assert!(
                        lag < pp.target_lag_ms,
                        "joiner {id} (target {} ms) pulls from {s} at {lag} ms",
                        pp.target_lag_ms
                    );
                }
                Upstream::Source | Upstream::Relay => {}
            }
        }
    }
}
