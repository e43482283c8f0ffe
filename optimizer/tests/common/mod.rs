//! Random swarms for the scenario tests.

#![allow(dead_code, missing_docs, clippy::unwrap_used)]

use std::collections::HashSet;

use optimizer::{Config, Connectivity, Coord, PeerReport, Plan, Snapshot, SourceReport, Upstream};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// 2 Mbit/s.
pub const BITRATE: u64 = 2_000_000;

/// How a random swarm is drawn.
#[derive(Clone, Debug)]
pub struct Shape {
    pub peers: usize,
    pub source_mbps: f64,
    /// Shares of fibre (6 Mbit/s up), DSL (2.5), weak (0.5), free-riders (0); the rest fibre.
    pub dsl: f64,
    pub weak: f64,
    pub free: f64,
    /// Share of peers behind port-restricted and symmetric NATs (the rest open or full cone).
    pub port_restricted: f64,
    pub symmetric: f64,
    /// Share of joiners (no lag yet).
    pub joiners: f64,
}

impl Shape {
    pub fn mixed(peers: usize) -> Self {
        Self {
            peers,
            source_mbps: 16.0,
            dsl: 0.5,
            weak: 0.2,
            free: 0.1,
            port_restricted: 0.3,
            symmetric: 0.2,
            joiners: 0.1,
        }
    }

    pub fn open(peers: usize) -> Self {
        Self {
            port_restricted: 0.0,
            symmetric: 0.0,
            ..Self::mixed(peers)
        }
    }
}

pub fn random_swarm(seed: u64, shape: &Shape) -> Snapshot<u32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let peers = (0..shape.peers as u32)
        .map(|i| {
            let c: f64 = rng.gen();
            let up_mbps = if c < shape.free {
                0.0
            } else if c < shape.free + shape.weak {
                rng.gen_range(0.2..0.8)
            } else if c < shape.free + shape.weak + shape.dsl {
                rng.gen_range(1.5..3.5)
            } else {
                rng.gen_range(4.0..12.0)
            };
            let n: f64 = rng.gen();
            let connectivity = if n < shape.symmetric {
                Connectivity::Symmetric
            } else if n < shape.symmetric + shape.port_restricted {
                Connectivity::PortRestricted
            } else if rng.gen_bool(0.5) {
                Connectivity::Open
            } else {
                Connectivity::FullCone
            };
            PeerReport {
                // Sparse, unordered ids.
                id: i.wrapping_mul(2_654_435_761) ^ 0x5a5a,
                upload_bps: (up_mbps * 1e6) as u64,
                need_bps: BITRATE,
                coord: Coord::new(
                    rng.gen_range(0.0..200.0),
                    rng.gen_range(0.0..200.0),
                    rng.gen_range(1.0..20.0),
                ),
                connectivity,
                lag_ms: if rng.gen_bool(shape.joiners) {
                    None
                } else {
                    Some(rng.gen_range(800..4000))
                },
                continuity: if rng.gen_bool(0.1) {
                    rng.gen_range(0.3..0.8)
                } else {
                    rng.gen_range(0.9..1.0)
                },
                partners: Vec::new(),
            }
        })
        .collect();
    Snapshot {
        bitrate_bps: BITRATE,
        source: SourceReport {
            upload_bps: (shape.source_mbps * 1e6) as u64,
            coord: Coord::new(100.0, 100.0, 2.0),
            connectivity: Connectivity::Open,
        },
        peers,
    }
}

/// Upload slots of `upload_bps` under `cfg` (the plan may count fewer, never more).
pub fn slots_of(upload_bps: u64, bitrate: u64, cfg: &Config) -> u64 {
    let slot = bitrate / u64::from(cfg.partners_per_peer);
    (upload_bps as f64 * cfg.upload_use / slot as f64 + 1.15).floor() as u64
}

/// Checks what every plan must satisfy, whatever the input:
/// - every peer of the snapshot appears once, in id order;
/// - a peer's partners are distinct, their slots sum to its need, Relay (if any) is last;
/// - a sender is in an earlier tier than its receiver, and the pair is NAT-compatible;
/// - peer senders give one slot per receiver, and no more slots in all than they can upload
///   (the source neither); leaves forward nothing.
pub fn check_plan(snap: &Snapshot<u32>, plan: &Plan<u32>, cfg: &Config) {
    let mut ids: Vec<u32> = snap.peers.iter().map(|p| p.id).collect();
    ids.sort_unstable();
    let planned: Vec<u32> = plan.peers.iter().map(|p| p.id).collect();
    assert_eq!(planned, ids, "every peer once, in id order");
    let k = u64::from(cfg.partners_per_peer);
    let slot = snap.bitrate_bps / k;
    let mut load = vec![0u64; plan.peers.len()];
    let mut source_load = 0u64;
    for pp in &plan.peers {
        let report = snap.peers.iter().find(|r| r.id == pp.id).unwrap();
        let need = report.need_bps.div_ceil(slot).min(k);
        let total: u64 = pp.partners.iter().map(|p| u64::from(p.slots)).sum();
        assert_eq!(total, need, "peer {}: partner slots sum to its need", pp.id);
        if need > 0 {
            let shares: f64 = pp.partners.iter().map(|p| pp.share(p)).sum();
            assert!(
                (shares - 1.0).abs() < 1e-9,
                "peer {}: shares sum to 1",
                pp.id
            );
        }
        let mut seen = HashSet::new();
        for (i, p) in pp.partners.iter().enumerate() {
            assert!(seen.insert(p.from), "peer {}: partners are distinct", pp.id);
            assert!(p.slots > 0);
            match p.from {
                Upstream::Relay => assert_eq!(i, pp.partners.len() - 1, "Relay comes last"),
                Upstream::Source => {
                    source_load += u64::from(p.slots);
                    assert!(
                        Connectivity::direct_possible(
                            snap.source.connectivity,
                            report.connectivity
                        ),
                        "peer {}: source NAT-compatible",
                        pp.id
                    );
                }
                Upstream::Peer(i) => {
                    let sender = &plan.peers[i as usize];
                    assert!(
                        sender.tier < pp.tier,
                        "peer {}: sender {} ahead",
                        pp.id,
                        sender.id
                    );
                    assert!(sender.tier < plan.leaf_tier, "leaves do not forward");
                    assert_eq!(p.slots, 1, "one slot per peer edge");
                    let s_report = snap.peers.iter().find(|r| r.id == sender.id).unwrap();
                    assert!(
                        Connectivity::direct_possible(s_report.connectivity, report.connectivity),
                        "{:?} {} -> {:?} {} assigned across incompatible NATs",
                        s_report.connectivity,
                        sender.id,
                        report.connectivity,
                        pp.id
                    );
                    load[i as usize] += 1;
                }
            }
        }
    }
    for (pp, &l) in plan.peers.iter().zip(&load) {
        let report = snap.peers.iter().find(|r| r.id == pp.id).unwrap();
        assert!(
            l <= u64::from(pp.upload_slots),
            "peer {} over its slots",
            pp.id
        );
        assert!(
            u64::from(pp.upload_slots) <= slots_of(report.upload_bps, snap.bitrate_bps, cfg),
            "peer {} given more slots than its upload",
            pp.id
        );
    }
    assert!(
        source_load <= snap.source.upload_bps / slot,
        "source over its upload"
    );
}
