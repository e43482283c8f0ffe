//! Plan quality: the switching heuristic against the exact solver on random swarms.

#![allow(clippy::unwrap_used)]

mod common;

use common::{random_swarm, Shape};
use optimizer::{plan, plan_exact, Config};

fn grade(seed: u64, shape: &Shape, cfg: &Config) -> (f64, f64) {
    let snap = random_swarm(seed, shape);
    let heuristic = plan(&snap, None, cfg).unwrap();
    let exact = plan_exact(&snap, cfg).unwrap();
    let (h, e) = (&heuristic.stats, &exact.stats);
    assert!(
        h.utility <= e.utility,
        "seed {seed}: the heuristic ({}) beat the exact optimum ({})",
        h.utility,
        e.utility
    );
    eprintln!(
        "  served {}/{} vs exact {}/{}, quality {} vs {}",
        h.served_slots, h.demand_slots, e.served_slots, e.demand_slots, h.quality, e.quality
    );
    let ratio = if e.utility == 0 {
        1.0
    } else {
        h.utility as f64 / e.utility as f64
    };
    let quality = if e.quality == 0 {
        1.0
    } else {
        h.quality as f64 / e.quality as f64
    };
    (ratio, quality)
}

#[test]
fn heuristic_within_five_percent_of_exact_on_random_swarms_up_to_200_peers() {
    let cfg = Config::default();
    let mut worst = f64::MAX;
    let mut sum = 0.0;
    let mut worst_q = f64::MAX;
    let mut count = 0;
    for seed in 0..40u64 {
        let peers = [10, 25, 50, 100, 150, 200][seed as usize % 6];
        let shape = match seed % 3 {
            0 => Shape::mixed(peers),
            1 => Shape::open(peers),
            // Tight: a weak source and many weak peers.
            _ => Shape {
                source_mbps: 6.0,
                weak: 0.35,
                dsl: 0.45,
                ..Shape::mixed(peers)
            },
        };
        let (ratio, quality) = grade(seed, &shape, &cfg);
        eprintln!("seed {seed:2} peers {peers:3}: utility {ratio:.4} quality {quality:.4}");
        assert!(
            ratio >= 0.95,
            "seed {seed} ({peers} peers): {ratio:.4} of the optimum"
        );
        worst = worst.min(ratio);
        worst_q = worst_q.min(quality);
        sum += ratio;
        count += 1;
    }
    eprintln!(
        "heuristic/exact utility: worst {worst:.4}, mean {:.4}; quality terms worst {worst_q:.4}",
        sum / count as f64
    );
}
