//! Swarm metadata through the ring: a channel record, viewers joining its membership sample
//! concurrently, two optimizers racing for the next plan epoch.

#![allow(clippy::unwrap_used)]

mod harness;

use std::net::SocketAddr;

use harness::Net;
use tracker_overlay::swarm::{self, Connectivity, Field, Member, PeerHint, PlanHeader, PlanShard};
use tracker_overlay::tx::Abort;
use tracker_overlay::{TxOp, Value};

const NOW: u64 = 1_000_000;

fn member(n: u8) -> Member {
    Member {
        peer: [n; 32],
        addr: SocketAddr::from(([10, 0, 0, n], 4433)),
        connectivity: Connectivity::Open,
        reach: Default::default(),
        upload_kbps: 2500,
        expires_unix_s: NOW + 60,
    }
}

fn read(net: &mut Net, node: usize, key: Vec<u8>) -> Option<Value> {
    net.tx(node, vec![TxOp::Read(key)]).unwrap().remove(0)
}

#[test]
fn viewers_find_the_channel_and_each_other() {
    let mut net = Net::new(81);
    let all = net.ring(6);
    let channel = [3u8; 20];
    let update = swarm::publish_record(&channel, None, b"signed record".to_vec()).unwrap();
    net.tx(all[0], vec![update.op]).unwrap();

    // Five viewers join at once: each reads the sample, then test-and-sets it; one that lost
    // the race reads again and retries.
    #[derive(Clone, Copy)]
    enum Step {
        Read,
        Update,
    }
    let members_key = swarm::key(&channel, Field::Members);
    let mut pending: Vec<(usize, u8, Step, u64)> = Vec::new();
    for (i, &node) in all[1..].iter().enumerate() {
        let req = net.transact(node, vec![TxOp::Read(members_key.clone())]);
        pending.push((node, i as u8 + 1, Step::Read, req));
    }
    let mut joined = 0;
    let mut retries = 0;
    while joined < 5 {
        let mut next = Vec::new();
        for (node, n, step, req) in pending.drain(..) {
            match (step, net.wait_tx(node, req)) {
                (Step::Read, Ok(values)) => {
                    let read = values[0].clone();
                    let up = swarm::join_members(&channel, read.as_ref(), member(n), NOW).unwrap();
                    next.push((node, n, Step::Update, net.transact(node, vec![up.op])));
                }
                (Step::Update, Ok(_)) => joined += 1,
                (_, Err(Abort::Mismatch { .. } | Abort::Conflict { .. })) => {
                    retries += 1;
                    let req = net.transact(node, vec![TxOp::Read(members_key.clone())]);
                    next.push((node, n, Step::Read, req));
                }
                (_, Err(e)) => panic!("viewer {n}: {e}"),
            }
        }
        pending = next;
    }
    assert!(
        retries > 0,
        "concurrent joins should have collided at least once"
    );

    // Any node finds the channel and all five members.
    let reader = all[3];
    let record = read(&mut net, reader, swarm::key(&channel, Field::Record));
    assert_eq!(
        swarm::record(record.as_ref()).unwrap(),
        Some(b"signed record".to_vec())
    );
    let sample = read(&mut net, reader, swarm::key(&channel, Field::Members));
    let mut peers: Vec<u8> = swarm::members(sample.as_ref(), NOW)
        .unwrap()
        .iter()
        .map(|m| m.peer[0])
        .collect();
    peers.sort();
    assert_eq!(peers, vec![1, 2, 3, 4, 5]);

    // Two optimizers race for epoch 1: never both win (optimistic concurrency may make both
    // lose a round; they then try again, as an optimizer would, until one wins).
    let key = swarm::key(&channel, Field::Plan);
    let header = PlanHeader {
        epoch: 1,
        leaf_tier: 2,
        peers: 1,
        shards: vec![1],
    };
    let shard = |tier: u8| PlanShard {
        epoch: 1,
        index: 0,
        peers: vec![PeerHint {
            peer: [9; 32],
            tier,
            target_lag_ms: 1000,
            upload_slots: 0,
            partners: vec![],
        }],
    };
    let winner = loop {
        let current = read(&mut net, all[3], key.clone());
        let a = swarm::publish_plan(&channel, current.as_ref(), &header, &[shard(1)]);
        let b = swarm::publish_plan(&channel, current.as_ref(), &header, &[shard(2)]);
        let (Ok(a), Ok(b)) = (a, b) else {
            panic!("epoch 1 already taken before anyone won")
        };
        let ra = net.transact(all[1], a.into_iter().map(|u| u.op).collect());
        let rb = net.transact(all[2], b.into_iter().map(|u| u.op).collect());
        let (res_a, res_b) = (net.wait_tx(all[1], ra), net.wait_tx(all[2], rb));
        assert!(
            !(res_a.is_ok() && res_b.is_ok()),
            "both won: {res_a:?} {res_b:?}"
        );
        if res_a.is_ok() {
            break 1;
        }
        if res_b.is_ok() {
            break 2;
        }
    };
    // The winner's header and shard were stored together.
    let viewer = [9u8; 32];
    let stored = read(&mut net, all[4], key);
    let stored = swarm::plan_header(stored.as_ref()).unwrap().unwrap();
    assert_eq!(stored, header);
    let op = swarm::read_plan_for(&channel, &viewer, &stored);
    let shard = net.tx(all[4], vec![op]).unwrap().remove(0);
    let hint = swarm::plan_for(&viewer, &stored, shard.as_ref())
        .unwrap()
        .unwrap();
    assert_eq!(hint.tier, winner);
}
