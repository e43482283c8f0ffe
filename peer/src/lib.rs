//! Selfcast's peer: everything one participant of a swarm runs.
//!
//! # Map
//!
//! Pure, sans-IO parts (built with and without the `node` feature; `sim` uses these):
//!
//! - [`identity`]: Ed25519 keys, peer ids, channel ids, key files.
//! - [`segment`]: what the broadcaster signs: the channel record and one statement (length +
//!   BLAKE3 hash) per segment.
//! - [`wire`]: versioned, length-prefixed control frames with a size bound, and segment stream
//!   headers.
//! - [`exchange`]: the segment exchange state machine (`handle_input(now, …)` /
//!   `poll_output()`): the feeding tree (and the optimizer's hints for it), who has what, what
//!   to request from whom, the upload queue, bandwidth measurement, verification before storing.
//! - [`nat`]: NAT classes, which pairs can punch, the punching state machine, the relay's
//!   forwarding table (and, with `node`, STUN, the shared UDP socket and the traversal task).
//! - [`qos`]: the QoS definitions (continuity, startup delay, live latency, offload) that the
//!   node and `sim` both compute.
//!
//! The real node (feature `node`):
//!
//! - [`media`]: ffmpeg ingest: file, URL or test pattern → init + keyframe-aligned fMP4
//!   segments (H.264/AAC passed through, anything else transcoded).
//! - [`node`]: the tokio + quinn driver of the exchange, with TLS identities ([`node::tls`]) and
//!   one QUIC connection per peer shared with the overlay, feeding the gateway's verified store.
//! - [`overlay_net`]: the overlay node's driver over the node's connections; [`directory`]:
//!   channel records and members in the overlay's store.
//! - [`app`]: broadcast, watch and the one-process demo, as the CLI and the tests run them.
//! - [`bench`](mod@bench): the `peer bench …` programs.
//!
//! Data flow at a broadcaster: `media` → `app::Broadcast` → `node` → `exchange::publish` →
//! statements and segments to partners. At a viewer: QUIC → `node` → `exchange` (verify) →
//! `gateway::MediaStore` → HLS to the browser.

pub mod exchange;
pub mod identity;
pub mod nat;
pub mod qos;
pub mod segment;
pub mod wire;

#[cfg(feature = "node")]
pub mod app;
#[cfg(feature = "node")]
pub mod bench;
#[cfg(feature = "node")]
pub mod directory;
#[cfg(feature = "node")]
pub mod media;
#[cfg(feature = "node")]
pub mod node;
#[cfg(feature = "node")]
pub mod overlay_net;
