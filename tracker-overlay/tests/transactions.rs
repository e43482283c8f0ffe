//! Transactions under failures: replicas lost, the manager or a participant crashing
//! mid-commit, a write during a network split.

#![allow(clippy::unwrap_used)]

mod harness;

use harness::sweep;

use std::time::Duration;

use harness::Net;
use tracker_overlay::tx::Abort;
use tracker_overlay::{TxOp, Value};

/// A ring of 8 and a key whose four replicas sit on four different nodes, none of them
/// `avoid`.
fn ring_and_key(seed: u64) -> (Net, Vec<usize>, String, Vec<usize>) {
    let mut net = Net::new(seed);
    let mut all = net.ring(8);
    loop {
        // A node that holds more than 1/r of the ring holds two replicas of some keys: its
        // crash alone would take their majority. Real rings are larger; thin this one out.
        let small_ranges = net.largest_range() < 0.25;
        for k in 0..if small_ranges { 1000 } else { 0 } {
            let key = format!("key-{k}");
            let mut holders = net.replica_holders(&key);
            holders.sort();
            holders.dedup();
            if holders.len() == 4 {
                let holders = net.replica_holders(&key);
                net.write(all[0], &key, Value::Int(100)).unwrap();
                // Until every replica has heard the outcome and let go of its lock.
                net.run_for(Duration::from_secs(1));
                return (net, all, key, holders);
            }
        }
        // One node holds a big share of the ring: thin it out.
        let via = all[0];
        all.push(net.join(via));
        net.settle();
    }
}

fn incr(key: &str) -> Vec<TxOp> {
    vec![TxOp::AddNumber(key.into(), 1)]
}

/// A node that holds none of the key's replicas.
fn outsider(all: &[usize], holders: &[usize]) -> usize {
    *all.iter().find(|i| !holders.contains(i)).unwrap()
}

#[test]
fn one_of_four_replicas_failed_commits_with_the_majority() {
    for seed in sweep(&[11, 12, 13]) {
        let (mut net, all, key, holders) = ring_and_key(seed);
        net.crash(holders[1]);
        let client = outsider(&all, &holders);
        // At once, before the ring noticed: three replicas still form a majority.
        assert_eq!(
            net.tx(client, incr(&key)),
            Ok(vec![Some(Value::Int(101))]),
            "seed {seed}"
        );
        // And after the repair, with the lost replica rebuilt.
        net.settle();
        assert_eq!(
            net.tx(client, incr(&key)),
            Ok(vec![Some(Value::Int(102))]),
            "seed {seed}"
        );
        assert_eq!(net.read(client, &key), Ok(Some(Value::Int(102))));
    }
}

#[test]
fn two_or_three_of_four_replicas_failed_abort_without_a_majority() {
    for failed in [2, 3] {
        for seed in [21, 22] {
            let (mut net, all, key, holders) = ring_and_key(seed);
            for &h in &holders[..failed] {
                net.crash(h);
            }
            let client = outsider(&all, &holders);
            let result = net.tx(client, incr(&key));
            assert!(
                matches!(result, Err(Abort::NoQuorum { .. } | Abort::Conflict { .. })),
                "{failed} failed, seed {seed}: {result:?}"
            );
            // Later too: the survivors cannot rebuild a majority by themselves.
            net.run_for(Duration::from_secs(20));
            let result = net.tx(client, incr(&key));
            assert!(result.is_err(), "{failed} failed, seed {seed}: {result:?}");
            // Nothing was written: the surviving replicas still hold version 1.
            let pos = tracker_overlay::RingId::of_key(key.as_bytes());
            for (j, &h) in holders.iter().enumerate().skip(failed) {
                let item = net.hosts[h]
                    .node
                    .store()
                    .get(pos.replica(j as u8, 4))
                    .cloned();
                assert_eq!(
                    item.map(|i| i.version),
                    Some(1),
                    "replica {j} after {failed} failed"
                );
            }
        }
    }
}

#[test]
fn manager_crashes_mid_commit_and_a_replicated_manager_decides() {
    for seed in [31, 32, 33, 34] {
        let (mut net, all, key, holders) = ring_and_key(seed);
        let tm = outsider(&all, &holders);
        let req = net.transact(tm, incr(&key));
        // Until the first participant has locked its replica, then the manager dies.
        let locked = net.run_until(Duration::from_secs(5), |net| {
            holders.iter().any(|&h| net.hosts[h].node.pending() > 0)
        });
        assert!(locked, "seed {seed}");
        net.crash(tm);
        // The replicated managers take over and decide; no participant stays locked.
        let unlocked = net.run_until(Duration::from_secs(30), |net| {
            net.alive()
                .iter()
                .all(|&h| net.hosts[h].node.pending() == 0)
        });
        assert!(unlocked, "seed {seed}: participants still locked");
        assert!(
            net.take_tx(tm, req).is_none(),
            "a crashed manager reports nothing"
        );
        // The key stays usable, and its value is the old one or the new one, not both.
        let other = *all
            .iter()
            .find(|&&i| i != tm && !holders.contains(&i))
            .unwrap();
        let before = net.read(other, &key).unwrap();
        assert!(
            matches!(before, Some(Value::Int(100 | 101))),
            "seed {seed}: {before:?}"
        );
        let Some(Value::Int(b)) = before else {
            unreachable!()
        };
        assert_eq!(net.tx(other, incr(&key)), Ok(vec![Some(Value::Int(b + 1))]));
        let takeovers: u64 = all
            .iter()
            .map(|&i| net.hosts[i].node.stats().takeovers)
            .sum();
        assert!(takeovers >= 1, "seed {seed}: decided without a takeover?");
    }
}

#[test]
fn participant_crashes_mid_commit_and_the_majority_commits() {
    for seed in [41, 42, 43] {
        let (mut net, all, key, holders) = ring_and_key(seed);
        let client = outsider(&all, &holders);
        let req = net.transact(client, incr(&key));
        let locked = net.run_until(Duration::from_secs(5), |net| {
            net.hosts[holders[2]].node.pending() > 0
        });
        assert!(locked, "seed {seed}");
        net.crash(holders[2]);
        assert_eq!(
            net.wait_tx(client, req),
            Ok(vec![Some(Value::Int(101))]),
            "seed {seed}"
        );
        net.settle();
        assert_eq!(net.read(client, &key), Ok(Some(Value::Int(101))));
    }
}

#[test]
fn a_write_during_a_network_split_commits_only_on_the_majority_side() {
    for seed in [51, 52, 53] {
        let (mut net, all, key, holders) = ring_and_key(seed);
        // One replica holder and some others on the minority side.
        let mut minority: Vec<usize> = vec![holders[0]];
        minority.extend(all.iter().copied().filter(|i| !holders.contains(i)).take(2));
        net.partition(&minority);
        let in_minority = minority[1];
        let in_majority = outsider(&all, &minority);
        let (a, b) = (in_minority, in_majority);
        let ra = net.transact(a, vec![TxOp::Write(key.clone().into(), Value::Int(1))]);
        let rb = net.transact(b, vec![TxOp::Write(key.clone().into(), Value::Int(2))]);
        let result_a = net.wait_tx(a, ra);
        let mut result_b = net.wait_tx(b, rb);
        assert!(
            result_a.is_err(),
            "seed {seed}: the minority side committed: {result_a:?}"
        );
        // Until the majority side has routed around the cut, its client may see no quorum and
        // retries, as any client would.
        for _ in 0..3 {
            if !matches!(result_b, Err(Abort::NoQuorum { .. })) {
                break;
            }
            result_b = net.tx(b, vec![TxOp::Write(key.clone().into(), Value::Int(2))]);
        }
        assert_eq!(result_b, Ok(vec![Some(Value::Int(2))]), "seed {seed}");
        // Long enough for both sides to repair their rings; the minority still cannot write.
        net.run_for(Duration::from_secs(30));
        assert!(net
            .tx(a, vec![TxOp::Write(key.clone().into(), Value::Int(3))])
            .is_err());
        assert_eq!(net.tx(b, incr(&key)), Ok(vec![Some(Value::Int(3))]));
        net.heal();
        net.settle();
        for &reader in &[a, b] {
            assert_eq!(
                net.read(reader, &key),
                Ok(Some(Value::Int(3))),
                "seed {seed}"
            );
        }
    }
}
