//! Join and leave: grow a ring of 1 by 9 nodes, then remove 5; the ring stays consistent and
//! every key reads back.

#![allow(clippy::unwrap_used)]

mod harness;

use harness::sweep;

use harness::Net;
use tracker_overlay::Value;

#[test]
fn grow_by_nine_then_remove_five() {
    for seed in sweep(&[1, 2, 3]) {
        let mut net = Net::new(seed);
        let first = net.create();
        let mut all = vec![first];
        // Keys written while the ring is still one node, and as it grows.
        net.write(first, "key-0", Value::Int(0)).unwrap();
        for k in 1..10 {
            let via = all[k - 1];
            all.push(net.join(via));
            let writer = all[k % all.len()];
            net.write(writer, &format!("key-{k}"), Value::Int(k as i64))
                .unwrap();
        }
        net.settle();
        assert_eq!(net.ring_errors(), Vec::<String>::new(), "seed {seed}");
        for k in 10..40 {
            let writer = all[k % all.len()];
            net.write(writer, &format!("key-{k}"), Value::Int(k as i64))
                .unwrap();
        }
        for &gone in &all[2..7] {
            net.leave(gone);
            net.run_for(std::time::Duration::from_millis(300));
        }
        net.settle();
        assert_eq!(net.alive().len(), 5);
        assert_eq!(net.ring_errors(), Vec::<String>::new(), "seed {seed}");
        let reader = all[8];
        for k in 0..40 {
            let got = net.read(reader, &format!("key-{k}")).unwrap();
            assert_eq!(got, Some(Value::Int(k as i64)), "seed {seed} key-{k}");
        }
        // Every live node holds its share: each key's r replicas sit on live nodes, sure.
        for node in net.alive() {
            assert!(net.unsure_nodes().is_empty(), "node {node} unsure");
        }
    }
}
