//! NAT compatibility is a hard constraint; a peer nobody can reach still gets an answer.

#![allow(clippy::unwrap_used)]

mod common;

use common::{check_plan, random_swarm, Shape};
use optimizer::{plan, plan_exact, Config, Connectivity, Upstream};

#[test]
fn nat_incompatible_pairs_are_never_assigned() {
    let cfg = Config::default();
    for seed in 0..30 {
        let shape = Shape {
            port_restricted: 0.4,
            symmetric: 0.4,
            ..Shape::mixed(50 + 30 * seed as usize)
        };
        let snap = random_swarm(seed, &shape);
        // check_plan asserts direct_possible for every edge.
        check_plan(&snap, &plan(&snap, None, &cfg).unwrap().plan, &cfg);
        if seed < 6 {
            check_plan(&snap, &plan_exact(&snap, &cfg).unwrap().plan, &cfg);
        }
    }
}

#[test]
fn symmetric_peers_are_swapped_below_compatible_senders() {
    // Half the peers behind symmetric NATs, the rest port-restricted except a few open ones:
    // the symmetric ones can only pull from the open ones and the source.
    let cfg = Config::default();
    let mut snap = random_swarm(5, &Shape::open(200));
    for (i, r) in snap.peers.iter_mut().enumerate() {
        r.connectivity = match i % 10 {
            0 => Connectivity::Open,
            1..=5 => Connectivity::Symmetric,
            _ => Connectivity::PortRestricted,
        };
    }
    let round = plan(&snap, None, &cfg).unwrap();
    check_plan(&snap, &round.plan, &cfg);
    // Symmetric forwarders sit where the tier ahead has enough open upload for them.
    let served: u64 = round.stats.served_slots;
    assert!(served > 0);
    for pp in &round.plan.peers {
        let conn = snap
            .peers
            .iter()
            .find(|r| r.id == pp.id)
            .unwrap()
            .connectivity;
        if conn != Connectivity::Symmetric {
            continue;
        }
        for p in &pp.partners {
            if let Upstream::Peer(i) = p.from {
                let s = round.plan.peers[i as usize].id;
                let sc = snap.peers.iter().find(|r| r.id == s).unwrap().connectivity;
                assert_eq!(sc, Connectivity::Open);
            }
        }
    }
}

#[test]
fn a_peer_with_no_compatible_sender_pulls_from_the_source_or_a_relay() {
    let cfg = Config::default();
    // Everyone symmetric except the source: peers cannot reach each other at all.
    let mut snap = random_swarm(9, &Shape::open(40));
    for r in &mut snap.peers {
        r.connectivity = Connectivity::Symmetric;
    }
    let round = plan(&snap, None, &cfg).unwrap();
    check_plan(&snap, &round.plan, &cfg);
    let source_slots = snap.source.upload_bps / (snap.bitrate_bps / 4);
    assert_eq!(
        round.stats.served_slots,
        source_slots.min(round.stats.demand_slots)
    );
    for pp in &round.plan.peers {
        assert!(pp
            .partners
            .iter()
            .all(|p| matches!(p.from, Upstream::Source | Upstream::Relay)));
    }
    assert!(round
        .plan
        .peers
        .iter()
        .any(|pp| pp.partners.iter().any(|p| p.from == Upstream::Relay)));

    // And a symmetric source with port-restricted peers: nobody can reach the source.
    snap.source.connectivity = Connectivity::Symmetric;
    for r in &mut snap.peers {
        r.connectivity = Connectivity::PortRestricted;
    }
    let round = plan(&snap, None, &cfg).unwrap();
    check_plan(&snap, &round.plan, &cfg);
    assert_eq!(round.stats.served_slots, 0);
    for pp in &round.plan.peers {
        assert_eq!(pp.partners.len(), 1);
        assert_eq!(pp.partners[0].from, Upstream::Relay);
        assert_eq!(pp.partners[0].slots, 4);
    }
}
