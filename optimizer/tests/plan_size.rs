//! Plans are stored with postcard in the overlay's store: they must stay compact.

#![allow(clippy::unwrap_used)]

mod common;

use common::{check_plan, random_swarm, Shape};
use optimizer::{plan, Config, Plan};

#[test]
fn a_10k_peer_plan_round_trips_through_postcard_in_well_under_a_megabyte() {
    let cfg = Config::default();
    let snap = random_swarm(1, &Shape::mixed(10_000));
    let round = plan(&snap, None, &cfg).unwrap();
    check_plan(&snap, &round.plan, &cfg);
    let bytes = postcard::to_stdvec(&round.plan).unwrap();
    eprintln!("10k peers, u32 ids: {} bytes", bytes.len());
    assert!(bytes.len() < 500_000, "{} bytes", bytes.len());
    let back: Plan<u32> = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(back, round.plan);

    // The node's 32-byte ids: one copy per peer, partners by index.
    let wide = Plan {
        epoch: round.plan.epoch,
        leaf_tier: round.plan.leaf_tier,
        peers: round
            .plan
            .peers
            .iter()
            .map(|p| optimizer::PeerPlan {
                id: {
                    let mut id = [0u8; 32];
                    id[..4].copy_from_slice(&p.id.to_be_bytes());
                    id
                },
                tier: p.tier,
                target_lag_ms: p.target_lag_ms,
                upload_slots: p.upload_slots,
                partners: p.partners.clone(),
            })
            .collect(),
    };
    let bytes = postcard::to_stdvec(&wide).unwrap();
    eprintln!("10k peers, 32-byte ids: {} bytes", bytes.len());
    assert!(bytes.len() < 1_000_000);
}
