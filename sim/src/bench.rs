//! `sim bench`: how fast the simulator runs a live stream to many peers.
//!
//! A live 2 Mbit/s stream, viewers joining over the first 30 s with upload capacities averaging
//! 1.5× the bitrate, no churn: the Selfcast run only (the figure is the simulator's speed, not
//! the protocol's quality). Prints events per second, the real-time factor (simulated time ÷
//! wall time) and the process's peak resident memory.

use std::time::Instant;

use serde_json::json;

use crate::run::{run as run_scenario, Mode};
use crate::scenario::Scenario;

/// Runs the benchmark and returns its JSON result.
pub fn run(peers: u32, minutes: f64, seed: u64) -> anyhow::Result<serde_json::Value> {
    let scenario = Scenario::parse(&scenario_text(peers, minutes), "sim bench")?;
    let started = Instant::now();
    let series = run_scenario(&scenario, seed, Mode::Selfcast);
    let wall = started.elapsed().as_secs_f64();
    let simulated = minutes * 60.0;
    let s = &series.summary;
    Ok(json!({
        "bench": "sim",
        "peers": peers,
        "minutes": minutes,
        "seed": seed,
        "events": s.events,
        "wall_seconds": (wall * 1000.0).round() / 1000.0,
        "events_per_s": (s.events as f64 / wall).round(),
        "realtime_factor": ((simulated / wall) * 100.0).round() / 100.0,
        "peak_rss_mib": peak_rss_mib(),
        // What the events are: most are these messages' deliveries.
        "messages": s.messages.iter().map(|(k, t)| (k.clone(), json!(t.count))).collect::<serde_json::Map<_, _>>(),
        "continuity": s.continuity,
        "source_offload": s.source_offload,
    }))
}

/// The bench workload as a scenario file.
pub fn scenario_text(peers: u32, minutes: f64) -> String {
    format!(
        r#"
name = "bench-{peers}"
duration_s = {duration}
sample_every_s = 5
[stream]
bitrate_kbps = 2000
[source]
up_mbps = 20
[viewers]
initial = {peers}
join_over_s = 30
classes = [
  {{ name = "weak", share = 0.3, up_mbps = 0.5, down_mbps = 8 }},
  {{ name = "dsl", share = 0.4, up_mbps = 2.5, down_mbps = 20 }},
  {{ name = "fibre", share = 0.3, up_mbps = 6.0, down_mbps = 100 }},
]
"#,
        duration = minutes * 60.0
    )
}

/// Peak resident set size of this process in MiB (Linux), or null elsewhere.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some((kib / 1024.0 * 10.0).round() / 10.0)
}
