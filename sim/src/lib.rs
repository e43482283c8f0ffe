//! Selfcast's discrete-event simulator (not built yet).
//!
//! # Map (planned; see `ARCHITECTURE.md`)
//!
//! `sim` hosts the same sans-IO cores as the real node (today `peer::exchange`; the overlay,
//! swarm and optimizer cores as they land) for thousands of simulated peers, in virtual time,
//! deterministic from a seed:
//!
//! - `engine`: one event queue, virtual time, a seeded RNG, the host trait the cores plug into.
//! - `net`: flow-level network model: per-host upload/download capacity shared fairly, latency
//!   from a synthetic topology, jitter, loss, NAT classes, partitions.
//! - `workload`: capacity classes, churn, flash crowds, source failures.
//! - `scenario`: TOML scenario files, validated.
//! - `report`: `summary.json`, time series, plots and `report.html`.

pub mod bench;
pub mod engine;
pub mod hosted;
pub mod metrics;
pub mod net;
pub mod report;
pub mod run;
pub mod scenario;
