//! Selfcast's structured overlay and replicated transactional store (not built yet).
//!
//! # Map (planned; see `ARCHITECTURE.md`)
//!
//! A sans-IO `OverlayNode` (`handle_input(now, …)` / `poll_output()`), hosted by the real node
//! in `peer` and by `sim`:
//!
//! - `ring`: the relaxed ring of Beernet: join through the successor, predecessors on
//!   branches, successor lists, fingers for O(log N) lookups, an eventually-perfect failure
//!   detector with adaptive timeouts.
//! - `merge`: ring merge after a partition: suspected peers are kept and probed; a peer that
//!   answers from another ring starts a gossip-based unification.
//! - `store`: Scalaris-style symmetric replication (r = 4), majority quorums, versioned items,
//!   hand-over on join and leave, anti-entropy repair.
//! - `tx`: optimistic transactions committed by Paxos Commit with replicated transaction
//!   managers.
//! - `swarm`: the typed swarm metadata (channel records, membership samples, VOD holders,
//!   optimizer plans) on top of the store.
//!
//! Until this crate lands, a viewer finds the swarm through `--bootstrap` peers and the
//! exchange's peer lists (`peer::exchange`).
