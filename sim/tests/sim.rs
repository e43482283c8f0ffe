//! The simulator end to end: determinism, the workload's schedule, and bad scenario files.

#![allow(clippy::unwrap_used)] // tests: a panic is a failed test with its location

use std::process::Command;

use sim::report::{summary_json, Report};
use sim::run::{run, Mode};
use sim::scenario::Scenario;

const BASE: &str = r#"
name = "test"
duration_s = 60
sample_every_s = 1
[stream]
bitrate_kbps = 1000
[source]
up_mbps = 20
[network]
jitter = 0.2
loss = 0.01
nat = { open = 0.5, full_cone = 0.2, port_restricted = 0.2, symmetric = 0.1 }
traversal = "punching"
[viewers]
initial = 30
join_over_s = 5
classes = [
  { name = "dsl", share = 0.5, up_mbps = 2, down_mbps = 20 },
  { name = "fibre", share = 0.5, up_mbps = 10, down_mbps = 100 },
]
"#;

fn scenario(extra: &str) -> Scenario {
    Scenario::parse(&format!("{BASE}{extra}"), "test.toml").unwrap()
}

fn summary(scenario: &Scenario, seed: u64) -> String {
    let runs = vec![
        run(scenario, seed, Mode::Selfcast),
        run(scenario, seed, Mode::SourceOnly),
    ];
    let report = Report {
        scenario_name: &scenario.name,
        scenario_toml: "",
        seed,
        runs: &runs,
    };
    summary_json(&report).unwrap()
}

const CHURN: &str = r#"
[viewers.churn]
session = { dist = "exponential", mean_s = 20 }
crash_fraction = 0.5
"#;

#[test]
fn the_same_scenario_and_seed_give_a_byte_identical_summary() {
    let s = scenario(CHURN);
    let first = summary(&s, 42);
    assert_eq!(first, summary(&s, 42));
    assert_ne!(first, summary(&s, 43), "the seed must matter");
}

#[test]
fn churn_replaces_viewers_on_schedule() {
    let s = scenario(CHURN);
    let series = run(&s, 1, Mode::Selfcast);
    // Mean session 20 s over 60 s: every viewer leaves about three times, and is replaced.
    let joined = series.summary.viewers_joined;
    assert!((90..=200).contains(&joined), "{joined} joins");
    for sample in series.samples.iter().filter(|s| s.t_s >= 6.0) {
        assert_eq!(
            sample.viewers, 30,
            "a steady population at {} s",
            sample.t_s
        );
    }

    let without_replacement = scenario(&CHURN.replace(
        "crash_fraction = 0.5",
        "crash_fraction = 0.5\nreplace = false",
    ));
    let series = run(&without_replacement, 1, Mode::Selfcast);
    assert_eq!(series.summary.viewers_joined, 30);
    let last = series.samples.last().unwrap().viewers;
    assert!(last < 15, "{last} viewers left after three mean sessions");
}

#[test]
fn a_flash_crowd_arrives_within_its_window() {
    let s = scenario("flash_crowds = [{ at_s = 10, peers = 100, over_s = 10 }]\n").clone();
    let s = Scenario {
        viewers: sim::scenario::Viewers {
            initial: 0,
            ..s.viewers
        },
        ..s
    };
    let series = run(&s, 1, Mode::Selfcast);
    for sample in &series.samples {
        let v = sample.viewers;
        match sample.t_s {
            t if t < 10.0 => assert_eq!(v, 0, "at {t} s"),
            t if t >= 20.0 => assert_eq!(v, 100, "at {t} s"),
            t => assert!(v > 0 && v <= 100, "{v} at {t} s"),
        }
    }
    assert_eq!(series.summary.peak_viewers, 100);
}

#[test]
fn a_malformed_scenario_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        BASE.replace("bitrate_kbps = 1000", "bitrate_kbps = 1000\nbitrat = 5"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sim"))
        .args(["run", path.to_str().unwrap(), "--out"])
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.toml") && stderr.contains("unknown field `bitrat`"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("out").exists(),
        "nothing written for a bad scenario"
    );
}

#[test]
fn sim_run_writes_the_report_with_the_baseline_beside_selfcast() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.toml");
    std::fs::write(&path, BASE.replace("duration_s = 60", "duration_s = 20")).unwrap();
    let out_dir = dir.path().join("out");
    let out = Command::new(env!("CARGO_BIN_EXE_sim"))
        .args(["run", path.to_str().unwrap(), "--seed", "3", "--out"])
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for file in [
        "summary.json",
        "timeseries.csv",
        "report.html",
        "continuity.svg",
        "continuity.png",
        "offload.svg",
        "latency_cdf.png",
        "viewers.svg",
        "source_upload.png",
    ] {
        assert!(out_dir.join(file).exists(), "{file} missing");
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["seed"], 3);
    let runs = summary["runs"].as_object().unwrap();
    assert!(runs.contains_key("selfcast") && runs.contains_key("source-only"));
    // The baseline serves everything from the source: no offload.
    assert_eq!(runs["source-only"]["source_offload"], 0.0);
    let html = std::fs::read_to_string(out_dir.join("report.html")).unwrap();
    assert!(html.contains("source-only") && html.contains("continuity.svg"));
}

#[test]
fn a_vod_run_delivers_the_film_and_ends() {
    let text = BASE
        .replace(
            "bitrate_kbps = 1000",
            "kind = \"vod\"\nbitrate_kbps = 1000\nvod_length_s = 120",
        )
        .replace("initial = 30", "initial = 10");
    let vod = Scenario::parse(&text, "vod.toml").unwrap();
    let series = run(&vod, 5, Mode::Selfcast);
    assert_eq!(series.summary.viewers_started, 10);
    assert!(
        series.summary.segments_delivered > 10 * 30,
        "{}",
        series.summary.segments_delivered
    );
    assert!(series.latencies_ms.is_empty(), "no live latency for VOD");
}

#[test]
fn viewers_find_a_source_that_crashed_and_came_back() {
    let text = BASE
        .replace(
            "up_mbps = 20\n",
            "up_mbps = 20\nfailures = [{ at_s = 15, down_s = 5 }]\n",
        )
        .replace("duration_s = 60", "duration_s = 90");
    let s = Scenario::parse(&text, "failure.toml").unwrap();
    for mode in [Mode::Selfcast, Mode::SourceOnly] {
        let series = run(&s, 2, mode);
        let during = series.samples.iter().find(|x| x.t_s == 20.0).unwrap();
        assert!(
            during.continuity < 0.5,
            "{mode:?}: the outage shows ({})",
            during.continuity
        );
        let late: Vec<f64> = series
            .samples
            .iter()
            .filter(|x| x.t_s > 75.0)
            .map(|x| x.continuity)
            .collect();
        assert!(
            late.iter().all(|c| *c > 0.9),
            "{mode:?} did not recover: {late:?}"
        );
    }
}

/// A film watched from random positions with seeks; `extra` adds to the scenario.
fn film(extra: &str) -> Scenario {
    let text = BASE.replace(
        "bitrate_kbps = 1000",
        "bitrate_kbps = 1000\nkind = \"vod\"\nvod_length_s = 300",
    );
    let vod = "\n[viewers.vod]\nstart = \"random\"\nseek_every = { dist = \"exponential\", mean_s = 20 }\n";
    Scenario::parse(&format!("{text}{vod}{extra}"), "film.toml").unwrap()
}

#[test]
fn on_demand_viewers_seek_and_an_origin_serves_what_nobody_holds() {
    let without = run(&film(""), 3, Mode::Selfcast).summary;
    let with = run(&film("\n[origin]\nup_mbps = 500\n"), 3, Mode::Selfcast).summary;
    // Seeks start playback afresh: more startups than viewers.
    assert!(
        without.viewers_started > without.viewers_joined,
        "{without:?}"
    );
    assert!(!without.messages.contains_key("origin"));
    let fetched = with.messages.get("origin").map_or(0, |t| t.count);
    assert!(fetched > 0, "{with:?}");
    // Viewers scattered over a film wait for what no partner holds; the origin cuts that wait.
    assert!(
        with.startup_ms.p95 < without.startup_ms.p95,
        "{} vs {}",
        with.startup_ms.p95,
        without.startup_ms.p95
    );
}

#[test]
fn a_cdn_serving_a_film_to_seeking_viewers_misses_nothing() {
    // The baseline's source serves every viewer at once: whatever a viewer plays, after any
    // seek (back to what it holds further on, or forward) and up to the film's end, is there
    // in time, and the measure must say so.
    let cdn = run(&film(""), 3, Mode::SourceOnly).summary;
    assert!(cdn.viewers_started > cdn.viewers_joined, "{cdn:?}");
    assert_eq!(cdn.continuity, 1.0, "{cdn:?}");
}
