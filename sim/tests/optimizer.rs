//! The optimizer's loop in `sim run`: viewers report, the coordinator on the source's host
//! plans, and the viewers' exchanges take the hints and follow them.

#![allow(clippy::unwrap_used)] // tests: a panic is a failed test with its location

use sim::report::{summary_json, Report};
use sim::run::{run, Mode};
use sim::scenario::Scenario;

const SCENARIO: &str = r#"
name = "optimizer-loop"
duration_s = 45
[stream]
bitrate_kbps = 1000
[source]
up_mbps = 6
[network]
nat = { open = 0.5, full_cone = 0.5 }
traversal = "punching"
[viewers]
initial = 60
join_over_s = 10
classes = [
  { name = "fibre", share = 0.2, up_mbps = 8, down_mbps = 100 },
  { name = "dsl", share = 0.5, up_mbps = 1.5, down_mbps = 20 },
  { name = "restricted", share = 0.3, up_mbps = 1.5, down_mbps = 20, nat = { open = 0, port_restricted = 0.5, symmetric = 0.5 } },
]
[optimizer]
round_s = 2
"#;

#[test]
fn viewers_take_the_plans_hints_and_follow_them() {
    let s = Scenario::parse(SCENARIO, "optimizer.toml").unwrap();
    assert_eq!(
        Mode::for_scenario(&s),
        [
            Mode::Optimizer,
            Mode::Selfcast,
            Mode::RandomMesh,
            Mode::SourceOnly
        ]
    );
    let series = run(&s, 3, Mode::Optimizer);
    let summary = &series.summary;
    let o = summary.optimizer.unwrap();
    let line = serde_json::to_string(&o).unwrap();
    // A plan every 2 s once reports came in, over the viewers that reported.
    assert!(o.rounds >= 18, "{line}");
    assert_eq!(o.planned_peers, 60, "{line}");
    assert!(o.tiers >= 2, "{line}");
    assert!(o.reports >= 60 * 15, "{line}");
    // Hints went out and every viewer holds one; most of them are fed by the sender their
    // plan ranks first (its designated parent).
    assert!(o.hints_sent >= 60, "{line}");
    assert_eq!(o.hinted_viewers, 60, "{line}");
    assert!(o.parents_as_planned >= 0.6, "{line}");
    // Reports sent; the last ones were still on their way when the run ended.
    let sent = summary.messages["qos-report"].count;
    assert!(sent >= o.reports && sent <= o.reports + 60, "{sent} {line}");
    assert!(
        summary.messages["plan-hint"].count == o.hints_sent,
        "{line}"
    );
    // The swarm works under the plan.
    assert!(summary.continuity > 0.9, "{}", summary.continuity);
    assert!(summary.source_offload > 0.5, "{}", summary.source_offload);
    assert!(summary.unfed_viewers <= 3, "{}", summary.unfed_viewers);

    // Without the loop nothing is reported or hinted.
    let plain = run(&s, 3, Mode::Selfcast);
    assert!(plain.summary.optimizer.is_none());
    assert!(!plain.summary.messages.contains_key("plan-hint"));
}

#[test]
fn the_optimizer_run_is_deterministic() {
    let s = Scenario::parse(
        &SCENARIO.replace("duration_s = 45", "duration_s = 25"),
        "o.toml",
    )
    .unwrap();
    let summary = |seed| {
        let runs = vec![
            run(&s, seed, Mode::Optimizer),
            run(&s, seed, Mode::RandomMesh),
        ];
        let report = Report {
            scenario_name: &s.name,
            scenario_toml: "",
            seed,
            runs: &runs,
        };
        summary_json(&report).unwrap()
    };
    assert_eq!(summary(8), summary(8));
}
