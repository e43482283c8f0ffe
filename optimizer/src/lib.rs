//! The Chandelier optimizer: Selfcast's swarm topology planner (not built yet).
//!
//! # Map (planned; see `ARCHITECTURE.md`)
//!
//! Pure functions, no I/O and no clock: a swarm snapshot in (per peer: upload capacity,
//! download need, RTT estimates, connectivity class, lag behind the live edge, continuity,
//! current partners), a plan out (per peer: tier and ranked partners) with its diff from the
//! previous plan.
//!
//! - `tier`: tiers by upload capacity, the highest next to the source, each tier's upload
//!   covering the next tier's demand.
//! - `assign`: sender → receiver assignment as a linear sum assignment problem, solved by a
//!   Deep Greedy Switching heuristic, with an exact Hungarian solver for small instances.
//! - `plan`: incremental plans with hysteresis and a bound on edges moved per round.
//!
//! The overlay node responsible for a channel's key runs it; its plans reach the peers' swarm
//! cores as hints.
