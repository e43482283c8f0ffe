//! The Chandelier optimizer: Selfcast's swarm topology planner.
//!
//! Pure: no I/O, no clock, no threads, no randomness. A swarm snapshot in, a plan out, with its
//! diff from the previous plan. The overlay node responsible for a channel's key runs it every
//! few seconds; its plans reach the peers' swarm cores as hints.
//!
//! # Map
//!
//! ```text
//!   Snapshot (source + per peer: upload, need, Vivaldi coordinate, NAT class, lag,
//!             continuity, current partners)          + previous Plan
//!        │
//!        ▼
//!   swarm: dense indices (id order); upload and need in slots of bitrate / partners_per_peer;
//!          tiers: forwarders by decreasing upload, each tier's demand within the upload of the
//!          tier ahead (and what its NAT classes can use of it); free-riders, weak and
//!          unreliable peers at the leaves; target lag per tier; utility of a slot
//!        │
//!        ▼
//!   candidates: per receiver the nearest compatible senders of the tiers ahead (grids per
//!               tier and NAT class), plus the source, previous partners, current connections
//!        │
//!        ▼
//!   assign: keep the previous plan's valid edges, then greedy + switching sweeps (Deep Greedy
//!           Switching style) within a move budget and a hysteresis margin
//!           (exact: the Hungarian method generalized to slots, for grading small instances)
//!        │
//!        ▼
//!   plan: Plan (per peer: tier, target lag, ranked partners with shares), PlanDiff, RoundStats
//! ```
//!
//! - [`model`]: inputs ([`Snapshot`], [`PeerReport`], [`Connectivity`], [`Coord`]) and
//!   [`Config`].
//! - [`plan`](mod@plan): outputs ([`Plan`], [`PlanDiff`], [`RoundStats`]) and the two entry
//!   points, [`plan()`] (the heuristic, incremental) and [`plan_exact`] (the reference).

mod assign;
mod candidates;
mod exact;
pub mod model;
pub mod plan;
mod swarm;

pub use model::{
    Config, Connectivity, Coord, PeerId, PeerReport, PlanError, Snapshot, SourceReport,
};
pub use plan::{
    plan, plan_exact, Edge, Partner, PeerPlan, Plan, PlanDiff, Retier, Round, RoundStats, Upstream,
};
