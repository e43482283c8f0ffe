//! `sim bench optimizer`: how long the Chandelier optimizer takes to plan a large swarm.
//!
//! A random heterogeneous swarm from the seed (a 2 Mbit/s stream; 10% fibre, 50% DSL, 25%
//! weak and 15% free-riders; a NAT mix with a third of the peers port-restricted and a fifth
//! symmetric; Vivaldi coordinates in a few regional clusters), one full round from scratch, then
//! incremental rounds, each after perturbing 5% of the peers (new measurements for most, the
//! rest leave and are replaced by joiners). Only `optimizer::plan` is timed, on this thread.
//! Prints a JSON line with the round times, the plan's postcard size and its quality.

use std::time::Instant;

use optimizer::{Config, Connectivity, Coord, PeerReport, Plan, Snapshot, SourceReport};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

/// The stream's bitrate.
const BITRATE: u64 = 2_000_000;

/// `sim bench optimizer`'s options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Peers in the swarm.
    #[arg(long, default_value_t = 10_000)]
    pub peers: u32,
    /// Incremental rounds after the first.
    #[arg(long, default_value_t = 20)]
    pub rounds: u32,
    /// Share of peers perturbed before each incremental round.
    #[arg(long, default_value_t = 0.05)]
    pub perturb: f64,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Runs the benchmark and returns its JSON result.
pub fn run(args: &Args) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(args.peers >= 1, "--peers must be at least 1");
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.perturb),
        "--perturb must be within 0..=1"
    );
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    // A round may replace 2% of the plan's edges: with 5% of the peers changing per round, a
    // fixed default bound would not let a large swarm repair what churn broke.
    let config = Config {
        max_moves: (args.peers as usize * 4 / 50).max(Config::default().max_moves),
        ..Config::default()
    };
    let mut next_id = 0u32;
    let mut snapshot = Snapshot {
        bitrate_bps: BITRATE,
        source: SourceReport {
            upload_bps: 20_000_000,
            coord: Coord::new(0.0, 0.0, 2.0),
            connectivity: Connectivity::Open,
        },
        peers: (0..args.peers)
            .map(|_| new_peer(&mut rng, &mut next_id))
            .collect(),
    };

    let started = Instant::now();
    let first = optimizer::plan(&snapshot, None, &config)?;
    let first_ms = ms(started);
    let utility_vs_bound = first
        .stats
        .bound
        .filter(|&b| b > 0)
        .map(|b| first.stats.utility as f64 / b as f64);
    let tiers = first.stats.tiers;

    let mut plan: Plan<u32> = first.plan;
    let mut times = Vec::with_capacity(args.rounds as usize);
    let (mut moves_max, mut forced, mut changed, mut examined) = (0usize, 0usize, 0usize, 0usize);
    let mut last_stats = first.stats;
    for _ in 0..args.rounds {
        // Peers report the partners the plan gave them; joiners now play at their target lag.
        for report in &mut snapshot.peers {
            let Some(p) = plan.peer(&report.id) else {
                continue;
            };
            report.partners = p
                .partners
                .iter()
                .filter_map(|x| match plan.resolve(x.from) {
                    Some(optimizer::Upstream::Peer(id)) => Some(id),
                    _ => None,
                })
                .collect();
            report.lag_ms.get_or_insert(p.target_lag_ms);
        }
        perturb(&mut snapshot, args.perturb, &mut rng, &mut next_id);
        let started = Instant::now();
        let round = optimizer::plan(&snapshot, Some(&plan), &config)?;
        times.push(ms(started));
        moves_max = moves_max.max(round.stats.moves);
        forced += round.stats.forced_removals;
        changed += round.diff.added.len() + round.diff.removed.len();
        examined += round.stats.examined;
        plan = round.plan;
        last_stats = round.stats;
    }
    let plan_bytes = postcard::to_stdvec(&plan)?.len();
    // The last snapshot planned from scratch: what incremental planning gave up for stability.
    let scratch = optimizer::plan(&snapshot, None, &config)?;
    let incremental_vs_scratch = if scratch.stats.utility > 0 {
        Some(last_stats.utility as f64 / scratch.stats.utility as f64)
    } else {
        None
    };

    times.sort_by(f64::total_cmp);
    let rounds = times.len().max(1) as f64;
    let round3 = |v: f64| (v * 1000.0).round() / 1000.0;
    Ok(json!({
        "bench": "optimizer",
        "peers": args.peers,
        "seed": args.seed,
        "rounds": args.rounds,
        "first_round_ms": round3(first_ms),
        "round_ms_p50": times.get(times.len() / 2).copied().map(round3),
        "round_ms_max": times.last().copied().map(round3),
        "plan_bytes": plan_bytes,
        "utility_vs_bound": utility_vs_bound.map(round3),
        "incremental_vs_scratch": incremental_vs_scratch.map(round3),
        "served_share": round3(
            last_stats.served_slots as f64 / last_stats.demand_slots.max(1) as f64
        ),
        "tiers": tiers,
        "examined_per_round": (examined as f64 / rounds).round(),
        "edges_changed_per_round": (changed as f64 / rounds).round(),
        "forced_removals_per_round": (forced as f64 / rounds).round(),
        "moves_max": moves_max,
        "max_moves": config.max_moves,
    }))
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// Regional clusters (centres in ms of the coordinate plane).
const REGIONS: [(f32, f32); 4] = [(0.0, 0.0), (80.0, 20.0), (-60.0, 90.0), (150.0, -120.0)];

fn new_peer(rng: &mut ChaCha8Rng, next_id: &mut u32) -> PeerReport<u32> {
    let id = *next_id;
    *next_id += 1;
    let class: f64 = rng.gen();
    let upload_mbps: f64 = if class < 0.10 {
        rng.gen_range(10.0..50.0) // fibre
    } else if class < 0.60 {
        rng.gen_range(1.0..4.0) // DSL
    } else if class < 0.85 {
        rng.gen_range(0.1..0.9) // weak
    } else {
        0.0 // free-rider
    };
    let nat: f64 = rng.gen();
    let connectivity = match nat {
        x if x < 0.25 => Connectivity::Open,
        x if x < 0.45 => Connectivity::FullCone,
        x if x < 0.80 => Connectivity::PortRestricted,
        _ => Connectivity::Symmetric,
    };
    let (cx, cy) = REGIONS[rng.gen_range(0..REGIONS.len())];
    PeerReport {
        id,
        upload_bps: (upload_mbps * 1e6) as u64,
        need_bps: BITRATE,
        coord: Coord::new(
            cx + rng.gen_range(-30.0..30.0),
            cy + rng.gen_range(-30.0..30.0),
            rng.gen_range(1.0..25.0),
        ),
        connectivity,
        lag_ms: None,
        continuity: if rng.gen_bool(0.1) {
            rng.gen_range(0.4..0.8)
        } else {
            rng.gen_range(0.92..1.0)
        },
        partners: Vec::new(),
    }
}

/// Perturbs `share` of the peers: three quarters get new measurements, a quarter leave and are
/// replaced by joiners.
fn perturb(snapshot: &mut Snapshot<u32>, share: f64, rng: &mut ChaCha8Rng, next_id: &mut u32) {
    for report in &mut snapshot.peers {
        if !rng.gen_bool(share) {
            continue;
        }
        if rng.gen_bool(0.25) {
            *report = new_peer(rng, next_id);
            continue;
        }
        report.coord.x += rng.gen_range(-10.0..10.0);
        report.coord.y += rng.gen_range(-10.0..10.0);
        report.upload_bps = (report.upload_bps as f64 * rng.gen_range(0.6..1.4)) as u64;
        report.continuity = (report.continuity + rng.gen_range(-0.2..0.2)).clamp(0.0, 1.0);
        report.lag_ms = Some(rng.gen_range(800..5000));
    }
}
