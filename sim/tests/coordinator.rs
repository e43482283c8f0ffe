//! The optimizer's coordinator on a simulated ring: its node crashes mid-run and the node that
//! takes over the channel's key stores the next plan within two rounds, continuing the epochs.

use std::time::Duration;

use sim::coordinator::{run_coordinator, CoordExperiment};

#[test]
fn a_crashed_coordinator_is_replaced_within_two_rounds() {
    let x = CoordExperiment {
        nodes: 60,
        seed: 7,
        round: Duration::from_secs(5),
        join_every: Duration::from_millis(50),
        warmup: Duration::from_secs(10),
        crash_at: Duration::from_secs(30),
        after: Duration::from_secs(30),
    };
    let r = run_coordinator(&x);
    let line = serde_json::to_string(&r).unwrap_or_default();
    assert!(r.plans_before_crash >= 4, "{line}");
    let next = r.next_plan_after_crash_s.expect("a plan after the crash");
    assert!(next <= 2.0 * x.round.as_secs_f64(), "{line}");
    assert!(
        r.continued_epoch,
        "another node continued the epochs: {line}"
    );
    assert!(r.epochs_consecutive && r.forked_epochs == 0, "{line}");
    assert!(r.plans_after_crash >= 4, "planning goes on: {line}");
    assert!(r.peers_in_plan >= 50, "{line}");
    // Viewers keep reading their part of the stored plan while the coordinator changes.
    assert!(r.takeover_reads > 0, "{line}");
    assert!(
        r.takeover_found as f64 >= 0.9 * r.takeover_reads as f64,
        "{line}"
    );
    assert!(r.hint_found as f64 >= 0.8 * r.hint_reads as f64, "{line}");
}
