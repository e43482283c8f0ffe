//! Ring merge: a 50/50 partition for 60 s, then heal: one ring again within 30 s of simulated
//! time, every committed value present and consistent.

#![allow(clippy::unwrap_used)]

mod harness;

use harness::sweep;

use std::time::Duration;

use harness::Net;
use tracker_overlay::{TxOp, Value};

#[test]
fn split_fifty_fifty_for_a_minute_then_heal_into_one_ring() {
    for seed in sweep(&[61, 62, 63]) {
        let mut net = Net::new(seed);
        let all = net.ring(16);
        for k in 0..40 {
            net.write(all[k % 16], &format!("key-{k}"), Value::Int(k as i64))
                .unwrap();
        }
        let (left, right): (Vec<usize>, Vec<usize>) = all.iter().partition(|&&i| i % 2 == 0);
        net.partition(&left);
        // During the split, each side writes to every key; a write may commit only where its
        // side holds a majority of the key's replicas.
        let mut committed = vec![None; 40];
        net.run_for(Duration::from_secs(15));
        for k in 0..40 {
            for (side, writer) in [(0i64, left[k % left.len()]), (1, right[k % right.len()])] {
                let v = Value::Int(1000 * (side + 1) + k as i64);
                let op = vec![TxOp::Write(format!("key-{k}").into(), v.clone())];
                if net.tx(writer, op).is_ok() {
                    assert!(
                        committed[k].is_none(),
                        "seed {seed}: key-{k} committed on both sides"
                    );
                    committed[k] = Some(v);
                }
            }
        }
        let during = committed.iter().filter(|c| c.is_some()).count();
        assert!(
            during > 0,
            "seed {seed}: no side held a majority of any key"
        );
        net.run_for(Duration::from_secs(45));
        assert!(
            net.ring_errors().is_empty(),
            "seed {seed}: each side is a ring"
        );
        net.heal();
        let merged = net.run_until(Duration::from_secs(30), |net| net.ring_errors().is_empty());
        assert!(
            merged,
            "seed {seed}: not one ring 30 s after healing: {:?}",
            net.ring_errors()
        );
        net.settle();
        for (k, committed) in committed.iter().enumerate() {
            let want = committed.clone().unwrap_or(Value::Int(k as i64));
            for &reader in &[left[0], right[0]] {
                let got = net.read(reader, &format!("key-{k}")).unwrap();
                assert_eq!(
                    got,
                    Some(want.clone()),
                    "seed {seed}: key-{k} read at {reader}"
                );
            }
        }
        // Every replica agrees once anti-entropy has run.
        net.run_for(Duration::from_secs(20));
        for k in 0..40 {
            let key = format!("key-{k}");
            let pos = tracker_overlay::RingId::of_key(key.as_bytes());
            let holders = net.replica_holders(&key);
            let versions: Vec<Option<Value>> = holders
                .iter()
                .enumerate()
                .map(|(j, &h)| {
                    let item = net.hosts[h].node.store().get(pos.replica(j as u8, 4));
                    item.map(|i| i.value.clone())
                })
                .collect();
            assert!(
                versions.windows(2).all(|w| w[0] == w[1]),
                "seed {seed} {key}: {versions:?}"
            );
        }
    }
}
