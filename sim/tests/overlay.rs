//! The overlay in the simulator: lookups on a 1,000-node ring, and under churn.

use std::time::Duration;

use sim::overlay::{run_ring, RingExperiment};

#[test]
fn lookups_on_a_thousand_node_ring_take_at_most_half_log2_n_plus_one_hops() {
    let report = run_ring(&RingExperiment {
        nodes: 1000,
        seed: 7,
        measure: Duration::from_secs(60),
        ..RingExperiment::default()
    });
    assert!(report.lookups > 4000, "{report:?}");
    assert_eq!(report.answered, report.lookups, "{report:?}");
    assert_eq!(report.correct, report.answered, "{report:?}");
    assert!(report.mean_hops <= report.hop_bound, "{report:?}");
    assert!(report.ring_consistent, "{report:?}");
}

#[test]
fn lookups_succeed_under_churn() {
    // Sessions with a median of 10 minutes, half of them ending in a crash.
    let report = run_ring(&RingExperiment {
        nodes: 300,
        seed: 8,
        measure: Duration::from_secs(300),
        lookups_per_min: 20.0,
        churn_median: Some(Duration::from_secs(600)),
        ..RingExperiment::default()
    });
    assert!(report.departures > 50, "{report:?}");
    assert!(report.lookups > 20_000, "{report:?}");
    assert!(report.success_ratio >= 0.999, "{report:?}");
    assert!(
        report.correct as f64 >= 0.995 * report.answered as f64,
        "{report:?}"
    );
}

#[test]
fn a_fifty_fifty_split_for_a_minute_heals_into_one_ring_within_thirty_seconds() {
    let report = run_ring(&RingExperiment {
        nodes: 200,
        seed: 9,
        measure: Duration::from_secs(150),
        lookups_per_min: 2.0,
        partition: Some((Duration::from_secs(10), Duration::from_secs(60))),
        ..RingExperiment::default()
    });
    println!("{report:?}");
    let merged = report.merge_seconds.unwrap_or(f64::INFINITY);
    assert!(merged <= 30.0, "{report:?}");
    assert!(report.ring_consistent, "{report:?}");
    assert!(report.unify_messages > 0, "the rings unified by gossip");
}
