//! Selfcast's discrete-event simulator: the real protocol cores on thousands of simulated peers,
//! in virtual time, deterministic from a seed.
//!
//! # Map
//!
//! ```text
//!   scenario (TOML, validated) ──▶ run: workload (joins, churn, flash crowds, source outages,
//!                                        partitions, publishing) + metrics (peer::qos)
//!                                   │ drives
//!                                   ▼
//!   engine: one event queue, virtual time, seeded RNG ──▶ net: latency, jitter, loss, flows
//!                                   │ hosts, through the `Core` trait      sharing capacity,
//!                                   ▼                                      NAT matrix, partitions
//!   hosted: peer::exchange::Exchange (the node's own code) + MemoVerifier
//!           ▲ hints (optimizer_loop: reports → optimizer::plan → hints, on the source's host)
//!                                   │
//!                                   ▼
//!   metrics (RunSeries) ──▶ report: summary.json, timeseries.csv, SVG/PNG plots, report.html
//! ```
//!
//! - [`engine`]: the event loop and the [`engine::Core`] trait any sans-IO core implements.
//! - [`net`]: the network model.
//! - [`hosted`]: the segment exchange as a simulated host.
//! - [`overlay`]: the overlay node as a simulated host, and the ring experiment (lookups,
//!   churn) behind `sim overlay`.
//! - [`coordinator`]: the overlay node with the optimizer's coordinators and a viewer agent on
//!   top, and the coordinator-crash experiment behind `sim coordinator`.
//! - [`scenario`]: scenario files and their validation.
//! - [`run`]: one run of a scenario: Selfcast, Selfcast with the optimizer's loop, the random
//!   mesh, or the source-only baseline.
//! - [`optimizer_loop`]: QoS reports to a coordinator on the source's host, plans
//!   (`optimizer::plan`), hints back to the viewers' exchanges.
//! - [`metrics`], [`report`]: what a run measured, and the files made from it.
//! - [`bench`]: `sim bench`, the simulator's own speed.

pub mod bench;
pub mod coordinator;
pub mod engine;
pub mod hosted;
pub mod metrics;
pub mod net;
pub mod optimizer_loop;
pub mod overlay;
pub mod report;
pub mod run;
pub mod scenario;
