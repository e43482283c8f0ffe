//! Inputs at the edges: nothing to plan, nothing to give, garbage measurements, bad configs.

#![allow(clippy::unwrap_used)]

mod common;

use common::{check_plan, random_swarm, Shape, BITRATE};
use optimizer::{plan, plan_exact, Config, Coord, PlanError, Upstream};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[test]
fn no_peers_gives_an_empty_plan() {
    let cfg = Config::default();
    let snap = random_swarm(1, &Shape::mixed(0));
    let round = plan(&snap, None, &cfg).unwrap();
    assert!(round.plan.peers.is_empty());
    assert!(round.diff.is_empty());
    assert_eq!(round.stats.utility, 0);
    let again = plan(&snap, Some(&round.plan), &cfg).unwrap();
    assert!(again.diff.is_empty());
    assert!(plan_exact(&snap, &cfg).unwrap().plan.peers.is_empty());
}

#[test]
fn all_free_riders_pull_from_the_source_then_relays() {
    let cfg = Config::default();
    let mut snap = random_swarm(2, &Shape::open(30));
    for r in &mut snap.peers {
        r.upload_bps = 0;
    }
    let round = plan(&snap, None, &cfg).unwrap();
    check_plan(&snap, &round.plan, &cfg);
    assert_eq!(round.stats.tiers, 0);
    assert!(round
        .plan
        .peers
        .iter()
        .all(|p| p.tier == 1 && p.upload_slots == 0));
    // 16 Mbit/s of source = 32 slots of 0.5 Mbit/s, for 30 × 4 wanted.
    assert_eq!(round.stats.served_slots, 32);
    assert_eq!(round.stats.demand_slots, 120);
}

#[test]
fn a_source_with_no_upload_leaves_everyone_on_relays() {
    let cfg = Config::default();
    let mut snap = random_swarm(3, &Shape::mixed(100));
    snap.source.upload_bps = 0;
    let round = plan(&snap, None, &cfg).unwrap();
    check_plan(&snap, &round.plan, &cfg);
    assert_eq!(round.stats.served_slots, 0);
    for pp in &round.plan.peers {
        assert_eq!(pp.partners.len(), 1);
        assert_eq!(pp.partners[0].from, Upstream::Relay);
    }
}

#[test]
fn garbage_measurements_do_not_panic() {
    let cfg = Config::default();
    let mut rng = StdRng::seed_from_u64(5);
    for seed in 0..30 {
        let mut snap = random_swarm(seed, &Shape::mixed(120));
        let n = snap.peers.len() as u32;
        for r in &mut snap.peers {
            match rng.gen_range(0..8) {
                0 => r.coord = Coord::new(f32::NAN, f32::INFINITY, -5.0),
                1 => r.upload_bps = u64::MAX,
                2 => r.need_bps = u64::MAX,
                3 => r.need_bps = 0,
                4 => r.continuity = f32::NAN,
                5 => r.continuity = -3.0,
                6 => r.lag_ms = Some(u32::MAX),
                _ => r.partners = vec![r.id, 12345, n],
            }
        }
        if seed % 3 == 0 {
            snap.source.upload_bps = u64::MAX;
            snap.source.coord = Coord::new(f32::MAX, f32::MIN, f32::NAN);
        }
        let round = plan(&snap, None, &cfg).unwrap();
        check_plan(&snap, &round.plan, &cfg);
        let again = plan(&snap, Some(&round.plan), &cfg).unwrap();
        check_plan(&snap, &again.plan, &cfg);
        // A peer that needs nothing gets nothing.
        for r in snap.peers.iter().filter(|r| r.need_bps == 0) {
            assert!(round.plan.peer(&r.id).unwrap().partners.is_empty());
        }
    }
}

#[test]
fn a_plan_from_another_swarm_is_only_a_hint() {
    // The previous plan names peers that are gone and edges that make no sense now.
    let cfg = Config::default();
    let a = random_swarm(7, &Shape::mixed(300));
    let b = random_swarm(8, &Shape::mixed(300));
    let old = plan(&a, None, &cfg).unwrap().plan;
    let round = plan(&b, Some(&old), &cfg).unwrap();
    check_plan(&b, &round.plan, &cfg);
}

#[test]
fn unusable_inputs_are_errors() {
    let cfg = Config::default();
    let mut snap = random_swarm(1, &Shape::mixed(10));
    snap.bitrate_bps = 0;
    assert_eq!(plan(&snap, None, &cfg).unwrap_err(), PlanError::ZeroBitrate);
    let mut snap = random_swarm(1, &Shape::mixed(10));
    snap.bitrate_bps = BITRATE;
    snap.peers[3].id = snap.peers[7].id;
    assert!(matches!(
        plan(&snap, None, &cfg),
        Err(PlanError::DuplicatePeer(_))
    ));
    let snap = random_swarm(1, &Shape::mixed(10));
    for bad in [
        Config {
            partners_per_peer: 0,
            ..Config::default()
        },
        Config {
            partners_per_peer: 17,
            ..Config::default()
        },
        Config {
            candidates: 0,
            ..Config::default()
        },
        Config {
            tier_fill: f64::NAN,
            ..Config::default()
        },
        Config {
            upload_use: 1.5,
            ..Config::default()
        },
        Config {
            max_tiers: 0,
            ..Config::default()
        },
        Config {
            refresh_every: 0,
            ..Config::default()
        },
    ] {
        assert!(matches!(
            plan(&snap, None, &bad),
            Err(PlanError::InvalidConfig(_))
        ));
    }
}

#[test]
fn a_tiny_bitrate_and_one_partner_per_peer_still_plan() {
    let cfg = Config {
        partners_per_peer: 1,
        ..Config::default()
    };
    let mut snap = random_swarm(6, &Shape::mixed(200));
    snap.bitrate_bps = 3;
    let round = plan(&snap, None, &cfg).unwrap();
    check_plan(&snap, &round.plan, &cfg);
}
