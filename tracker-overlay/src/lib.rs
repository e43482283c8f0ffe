//! Selfcast's structured overlay and replicated transactional store: the SELFMAN stack under
//! PeerTV (Beernet's relaxed ring, Scalaris' store and Paxos Commit), in place of a central
//! tracker.
//!
//! # Map
//!
//! Everything here is sans-IO: [`OverlayNode`] takes messages, timeouts and commands with the
//! current instant and hands back messages to send and events; the real node in `peer` and
//! `sim` drive the same code.
//!
//! - [`id`]: ring positions (`u128`), [`NodeRef`], symmetric replica positions, range sets.
//! - [`msg`]: every message, its wire form (version byte + postcard) and its bounds.
//! - `node`: [`OverlayNode`] itself: the call contract, timers, routing (greedy over fingers
//!   and successors, with the relaxed ring's branch rule), lookups.
//! - `ring`: join through the successor, stabilization as heartbeat, the eventually perfect
//!   failure detector, successor lists, fingers, graceful leave, crash repair, and the probes
//!   of suspected nodes that merge rings after a partition.
//! - [`store`]: one node's items, versions, locks and the ranges it is *sure* of.
//! - `repair`: hand-over on join and leave, recovery of ranges taken over from crashed nodes
//!   (a majority of sibling replicas must answer: the rule that keeps partitions from
//!   committing twice), anti-entropy.
//! - [`swarm`]: the typed swarm metadata on top (channel records, membership samples, VOD
//!   holders, optimizer plans with epochs), as read-then-test-and-set updates.
//! - [`coordinator`]: the self-managed optimizer loop on top: QoS reports routed to the node
//!   responsible for a channel's plan key, which runs `optimizer::plan` every round and
//!   stores the plan (sharded, with its epoch) by a transaction; its successor takes over
//!   from the stored plan.
//! - [`tx`]: transaction operations, logs and aborts; `commit`: quorum reads, Paxos Commit's
//!   participants, acceptors and leaders, and the takeover by replicated managers.
//!
//! Data flow of a transaction: `transact(ops)` → quorum reads of every key (routed to its `r`
//! replica positions) → the log → `Prepare` to every replica → each votes to the acceptors
//! (the manager and its replicated managers) → they forward to the leader → the leader decides
//! → `Decide` to participants, which apply and unlock → [`Event::TxDone`].

pub mod coordinator;
pub mod id;
pub mod msg;
pub mod store;
pub mod swarm;
pub mod tx;

mod commit;
mod node;
mod repair;
mod ring;

pub use id::{NodeRef, RangeSet, RingId};
pub use msg::{DecodeError, Message};
pub use node::{Config, Event, Output, OverlayNode, Phase, Stats};
pub use store::{Item, Value};
pub use tx::{Abort, TxOp};
