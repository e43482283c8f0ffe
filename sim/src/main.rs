//! The `sim` command: run a scenario, or benchmark the simulator.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use serde_json::json;

use sim::run::{run, Mode};
use sim::scenario::Scenario;

mod bench_optimizer;

/// mimalloc, as in the `peer` binary: the hosted cores allocate and free small buffers on
/// nearly every event (frames, output queues), and mimalloc's size-class pages keep one host's
/// allocations close together.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Selfcast's simulator: the real protocol cores on thousands of simulated peers.
#[derive(Debug, Parser)]
#[command(name = "sim", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a scenario (with the source-only baseline beside it; with the optimizer's loop and a
    /// random mesh too when the scenario has an `[optimizer]` table) and write a report.
    Run {
        /// The scenario file (see sim/scenarios/).
        scenario: PathBuf,
        /// The seed (default: the scenario's own).
        #[arg(long)]
        seed: Option<u64>,
        /// Where to write the report.
        #[arg(long, default_value = "sim-out")]
        out: PathBuf,
    },
    /// Grow a ring of overlay nodes, measure lookups (hops, success) with optional churn, and
    /// print the figures as a final JSON line.
    Overlay {
        /// Nodes.
        #[arg(long, default_value_t = 1000)]
        nodes: usize,
        /// Simulated minutes of measurement.
        #[arg(long, default_value_t = 5.0)]
        minutes: f64,
        /// Median session length in minutes (exponential sessions, half crash); no churn if
        /// absent.
        #[arg(long)]
        churn_median_min: Option<f64>,
        /// Split the nodes 50/50 for this many seconds, 10 s into the measurement, then heal
        /// (the figures then include `merge_seconds`).
        #[arg(long)]
        partition_s: Option<f64>,
        /// Seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// A ring of N overlay nodes that all watch one channel: they report QoS to the channel's
    /// coordinator every round, which plans and stores the plan; its node crashes mid-run.
    /// Prints the time to the next plan, the epochs and the plan's size as a final JSON line.
    Coordinator {
        /// Nodes (all viewers; one broadcasts).
        #[arg(long, default_value_t = 200)]
        nodes: usize,
        /// Seconds between two plans.
        #[arg(long, default_value_t = 5.0)]
        round_s: f64,
        /// Crash the coordinator's node this many seconds after the peers start reporting.
        #[arg(long, default_value_t = 60.0)]
        crash_at_s: f64,
        /// Seconds the run goes on after the crash.
        #[arg(long, default_value_t = 60.0)]
        after_s: f64,
        /// Seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Run a live 2 Mbit/s stream to N peers for M simulated minutes; print events/s, the
    /// real-time factor and peak memory as a final JSON line. `sim bench optimizer` times the
    /// optimizer instead.
    Bench {
        #[command(subcommand)]
        what: Option<BenchWhat>,
        /// Viewers.
        #[arg(long, default_value_t = 1000)]
        peers: u32,
        /// Simulated minutes.
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// Seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

#[derive(Debug, Subcommand)]
enum BenchWhat {
    /// Plan a random heterogeneous swarm from scratch, then incrementally after perturbing it;
    /// print round times, plan size and quality as a final JSON line.
    Optimizer(bench_optimizer::Args),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match real_main(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run {
            scenario,
            seed,
            out,
        } => {
            let text = std::fs::read_to_string(&scenario)
                .map_err(|e| anyhow::anyhow!("cannot read scenario {}: {e}", scenario.display()))?;
            let parsed = Scenario::parse(&text, &scenario.display().to_string())?;
            let seed = seed.unwrap_or(parsed.seed);
            let started = Instant::now();
            let runs: Vec<_> = Mode::for_scenario(&parsed)
                .into_iter()
                .map(|mode| run(&parsed, seed, mode))
                .collect();
            let wall = started.elapsed();
            let report = sim::report::Report {
                scenario_name: &parsed.name,
                scenario_toml: &text,
                seed,
                runs: &runs,
            };
            let written = sim::report::write(&report, &out)?;
            for r in &runs {
                let s = &r.summary;
                println!(
                    "{:<12} continuity {:.4}  offload {:.4}  latency p95 {:.2} s  startup p95 {:.2} s  peak viewers {}  tree depth p50/p95 {}/{}, unfed {}",
                    r.label,
                    s.continuity,
                    s.source_offload,
                    s.latency_ms.p95 / 1000.0,
                    s.startup_ms.p95 / 1000.0,
                    s.peak_viewers,
                    s.tree_depth.p50,
                    s.tree_depth.p95,
                    s.unfed_viewers
                );
            }
            // The optimizer's run against the others: the comparison.
            if let Some(opt) = runs.iter().find(|r| r.summary.optimizer.is_some()) {
                for other in runs.iter().filter(|r| r.label != opt.label) {
                    let (a, b) = (&opt.summary, &other.summary);
                    println!(
                        "{} vs {:<12} latency p95 {:+.1}%  continuity {:+.4}  offload {:+.4}",
                        opt.label,
                        other.label,
                        100.0 * (a.latency_ms.p95 / b.latency_ms.p95.max(1e-9) - 1.0),
                        a.continuity - b.continuity,
                        a.source_offload - b.source_offload
                    );
                }
            }
            println!("report: {}", out.join("report.html").display());
            let events: u64 = runs.iter().map(|r| r.summary.events).sum();
            println!(
                "{}",
                json!({
                    "scenario": parsed.name, "seed": seed, "wall_seconds": wall.as_secs_f64(),
                    "events": events, "files": written.files.len(),
                })
            );
            Ok(())
        }
        Command::Bench {
            what: Some(BenchWhat::Optimizer(args)),
            ..
        } => {
            println!("{}", bench_optimizer::run(&args)?);
            Ok(())
        }
        Command::Bench {
            what: None,
            peers,
            minutes,
            seed,
        } => {
            let result = sim::bench::run(peers, minutes, seed)?;
            println!("{result}");
            Ok(())
        }
        Command::Coordinator {
            nodes,
            round_s,
            crash_at_s,
            after_s,
            seed,
        } => {
            anyhow::ensure!(nodes >= 2, "--nodes must be at least 2");
            anyhow::ensure!(round_s > 0.0, "--round-s must be positive");
            anyhow::ensure!(
                crash_at_s >= 0.0 && after_s >= 0.0,
                "--crash-at-s and --after-s must not be negative"
            );
            let secs = std::time::Duration::from_secs_f64;
            let experiment = sim::coordinator::CoordExperiment {
                nodes,
                seed,
                round: secs(round_s),
                crash_at: secs(crash_at_s),
                after: secs(after_s),
                ..Default::default()
            };
            let start = std::time::Instant::now();
            let report = sim::coordinator::run_coordinator(&experiment);
            let mut line = serde_json::to_value(&report)?;
            line["bench"] = json!("coordinator");
            line["seed"] = json!(seed);
            line["wall_seconds"] = json!((start.elapsed().as_secs_f64() * 1000.0).round() / 1000.0);
            println!("{line}");
            Ok(())
        }
        Command::Overlay {
            nodes,
            minutes,
            churn_median_min,
            partition_s,
            seed,
        } => {
            anyhow::ensure!(nodes >= 1, "--nodes must be at least 1");
            anyhow::ensure!(minutes > 0.0, "--minutes must be positive");
            let experiment = sim::overlay::RingExperiment {
                nodes,
                seed,
                measure: std::time::Duration::from_secs_f64(minutes * 60.0),
                churn_median: churn_median_min
                    .map(|m| std::time::Duration::from_secs_f64(m * 60.0)),
                partition: partition_s.map(|s| {
                    let after = std::time::Duration::from_secs(10);
                    (after, std::time::Duration::from_secs_f64(s))
                }),
                ..Default::default()
            };
            let start = std::time::Instant::now();
            let report = sim::overlay::run_ring(&experiment);
            let mut line = serde_json::to_value(&report)?;
            line["bench"] = json!("overlay");
            line["seed"] = json!(seed);
            line["minutes"] = json!(minutes);
            line["churn_median_min"] = json!(churn_median_min);
            line["wall_seconds"] = json!((start.elapsed().as_secs_f64() * 1000.0).round() / 1000.0);
            println!("{line}");
            Ok(())
        }
    }
}
