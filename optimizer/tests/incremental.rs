//! Rounds after the first: hysteresis, the move budget, departures and joins.

#![allow(clippy::unwrap_used)]

mod common;

use common::{check_plan, random_swarm, Shape};
use optimizer::{plan, Config, Snapshot};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[test]
fn a_stable_swarm_gets_an_unchanged_plan() {
    let cfg = Config::default();
    for seed in 0..8 {
        let snap = random_swarm(seed, &Shape::mixed(600));
        let mut prev = plan(&snap, None, &cfg).unwrap().plan;
        for round_no in 0..cfg.refresh_every + 2 {
            let round = plan(&snap, Some(&prev), &cfg).unwrap();
            assert!(
                round.diff.is_empty(),
                "seed {seed} round {round_no}: {:?}",
                round.diff
            );
            assert_eq!(round.plan.epoch, prev.epoch + 1);
            assert_eq!(round.plan.peers, prev.peers);
            prev = round.plan;
        }
    }
}

fn noisy(snap: &Snapshot<u32>, rng: &mut StdRng) -> Snapshot<u32> {
    let mut out = snap.clone();
    for r in &mut out.peers {
        r.coord.x += rng.gen_range(-3.0..3.0);
        r.coord.y += rng.gen_range(-3.0..3.0);
        r.upload_bps = (r.upload_bps as f64 * rng.gen_range(0.97..1.03)) as u64;
        r.continuity = (r.continuity + rng.gen_range(-0.02..0.02)).clamp(0.0, 1.0);
        if let Some(lag) = &mut r.lag_ms {
            *lag = lag.saturating_add_signed(rng.gen_range(-50..50));
        }
    }
    out
}

#[test]
fn measurement_noise_leaves_the_plan_unchanged() {
    let cfg = Config::default();
    let mut rng = StdRng::seed_from_u64(11);
    for seed in 0..6 {
        let snap = random_swarm(seed, &Shape::mixed(600));
        let mut prev = plan(&snap, None, &cfg).unwrap().plan;
        for round_no in 0..10 {
            let next = noisy(&snap, &mut rng);
            let round = plan(&next, Some(&prev), &cfg).unwrap();
            check_plan(&next, &round.plan, &cfg);
            assert!(
                round.diff.is_empty(),
                "seed {seed} round {round_no}: {} added, {} removed, {} reshared, {} retiered\n{:?}\n{:?}",
                round.diff.added.len(),
                round.diff.removed.len(),
                round.diff.reshared.len(),
                round.diff.retiered.len(),
                round.stats,
                round.diff
            );
            prev = round.plan;
        }
    }
}

#[test]
fn moved_edges_stay_within_the_bound() {
    for max_moves in [0, 5, 40] {
        let cfg = Config {
            max_moves,
            refresh_every: 1,
            ..Config::default()
        };
        let mut rng = StdRng::seed_from_u64(max_moves as u64);
        let snap = random_swarm(21, &Shape::mixed(800));
        let mut prev = plan(&snap, None, &cfg).unwrap().plan;
        let mut moved_in_all = 0;
        for _ in 0..5 {
            // Peers move far (new coordinates), nothing else changes: no edge becomes invalid,
            // so every removal is a voluntary move.
            let mut next = snap.clone();
            for r in &mut next.peers {
                if rng.gen_bool(0.3) {
                    r.coord.x = rng.gen_range(0.0..200.0);
                    r.coord.y = rng.gen_range(0.0..200.0);
                }
            }
            let round = plan(&next, Some(&prev), &cfg).unwrap();
            check_plan(&next, &round.plan, &cfg);
            assert_eq!(round.stats.forced_removals, 0);
            assert!(round.stats.moves <= max_moves);
            // A swap removes at most two edges per move counted; each removed edge is a move.
            assert!(
                round.diff.removed.len() <= max_moves,
                "{} edges removed with a bound of {max_moves}",
                round.diff.removed.len()
            );
            moved_in_all += round.diff.removed.len();
            prev = round.plan;
        }
        if max_moves > 0 {
            assert!(moved_in_all > 0, "far moves make the plan improve");
        }
    }
}

#[test]
fn departures_free_their_partners_and_joiners_are_served() {
    let cfg = Config::default();
    let full = random_swarm(4, &Shape::mixed(700));
    let mut first = full.clone();
    first.peers.truncate(600);
    let prev = plan(&first, None, &cfg).unwrap().plan;
    // 50 leave (the first 50), 100 join (the last 100).
    let mut next = full.clone();
    next.peers.drain(..50);
    let round = plan(&next, Some(&prev), &cfg).unwrap();
    check_plan(&next, &round.plan, &cfg);
    let left: Vec<u32> = full.peers[..50].iter().map(|r| r.id).collect();
    let joined: Vec<u32> = full.peers[600..].iter().map(|r| r.id).collect();
    assert_eq!(
        round
            .diff
            .retiered
            .iter()
            .filter(|r| r.to.is_none())
            .count(),
        50
    );
    for id in &left {
        assert!(round.plan.peer(id).is_none());
    }
    assert!(round
        .diff
        .retiered
        .iter()
        .filter(|r| r.from.is_none())
        .all(|r| joined.contains(&r.id)));
    // Joiners were given partners.
    let served_joiners = joined
        .iter()
        .filter(|id| !round.plan.peer(id).unwrap().partners.is_empty())
        .count();
    assert_eq!(served_joiners, joined.len());
    assert!(
        round.stats.forced_removals > 0,
        "edges from departed peers are dropped"
    );
    // Most of the plan stays.
    assert!(round.diff.removed.len() < prev.edges().len() / 3);
}
