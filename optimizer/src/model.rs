//! What the optimizer reads: a swarm snapshot, and how it is tuned.

use std::fmt::Debug;
use std::hash::Hash;

use serde::{Deserialize, Serialize};

/// What a peer id must be.
///
/// The optimizer is generic over the id so that both call sites pass their own ids unchanged:
/// the node's 32-byte peer ids (`[u8; 32]`) and the simulator's host indices (`u32`). A newtype
/// over `u64` would force the node to keep a side table from its real ids and back. Inside, the
/// optimizer works on dense indices; plans name partners by index into the plan's own peer
/// list (sorted by id), so a plan stores each id once.
pub trait PeerId: Copy + Eq + Hash + Ord + Debug {}

impl<T: Copy + Eq + Hash + Ord + Debug> PeerId for T {}

/// A host's NAT behaviour, in RFC 4787 terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Connectivity {
    /// No NAT: publicly reachable.
    Open,
    /// Endpoint-independent mapping and filtering.
    FullCone,
    /// Endpoint-independent mapping, address-and-port-dependent filtering.
    PortRestricted,
    /// Address-and-port-dependent mapping: a new port per destination.
    Symmetric,
}

impl Connectivity {
    /// Whether two hosts can open a direct connection, with hole punching if needed.
    ///
    /// Both sides send at once; that works unless a symmetric NAT meets a symmetric or
    /// port-restricted one (the symmetric side's new port is unknown to the other side's
    /// filter). The relation is symmetric.
    pub fn direct_possible(a: Connectivity, b: Connectivity) -> bool {
        use Connectivity::*;
        !matches!(
            (a, b),
            (Symmetric, Symmetric) | (Symmetric, PortRestricted) | (PortRestricted, Symmetric)
        )
    }

    /// The compatibility group: 0 = open or full cone (reachable by all), 1 = port-restricted,
    /// 2 = symmetric.
    pub(crate) fn group(self) -> usize {
        match self {
            Connectivity::Open | Connectivity::FullCone => 0,
            Connectivity::PortRestricted => 1,
            Connectivity::Symmetric => 2,
        }
    }

    /// Which sender groups a receiver of this class can use (see [`Self::group`]).
    pub(crate) fn sender_groups(self) -> &'static [usize] {
        match self.group() {
            0 => &[0, 1, 2],
            1 => &[0, 1],
            _ => &[0],
        }
    }
}

/// A Vivaldi network coordinate: a point in a 2-D plane plus a height, all in milliseconds.
///
/// The estimated round-trip time between two hosts is the Euclidean distance of their points
/// plus both heights (the height models the access link, which every path crosses). One
/// coordinate per peer keeps the input linear in the swarm's size; there is no RTT matrix.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Coord {
    /// First plane coordinate (ms).
    pub x: f32,
    /// Second plane coordinate (ms).
    pub y: f32,
    /// Height (ms, non-negative).
    pub height: f32,
}

impl Coord {
    /// A coordinate at `(x, y)` with the given height.
    pub fn new(x: f32, y: f32, height: f32) -> Self {
        Self { x, y, height }
    }

    /// The estimated round-trip time to `other`, in milliseconds.
    pub fn rtt_ms(&self, other: &Coord) -> f32 {
        let dx = self.x - other.x;
        let dy = self.y - other.y;
        (dx * dx + dy * dy).sqrt() + self.height + other.height
    }

    /// The same coordinate with non-finite values replaced by 0 and a negative height by 0, so
    /// that a bad report cannot poison distances.
    pub(crate) fn sanitized(self) -> Self {
        let finite = |v: f32| if v.is_finite() { v } else { 0.0 };
        Self {
            x: finite(self.x),
            y: finite(self.y),
            height: finite(self.height).max(0.0),
        }
    }
}

/// The broadcaster, as the optimizer sees it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceReport {
    /// Upload capacity the source gives to the swarm (bit/s).
    pub upload_bps: u64,
    /// Its network coordinate.
    pub coord: Coord,
    /// Its NAT class.
    pub connectivity: Connectivity,
}

/// One viewer's report: what the optimizer knows about it this round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerReport<Id> {
    /// The peer's id.
    pub id: Id,
    /// Upload capacity it can give to the swarm (bit/s).
    pub upload_bps: u64,
    /// What it must download (bit/s): the stream's bitrate for a viewer, 0 for a peer that does
    /// not watch (it then gets no partners).
    pub need_bps: u64,
    /// Its network coordinate.
    pub coord: Coord,
    /// Its NAT class.
    pub connectivity: Connectivity,
    /// How far behind the live edge it plays (ms); `None` for a joiner that does not play yet.
    pub lag_ms: Option<u32>,
    /// Share of segments it played on time recently, 0..=1 (values outside are clamped).
    pub continuity: f32,
    /// The peers it is connected to now (in either direction).
    pub partners: Vec<Id>,
}

/// The swarm of one channel at one instant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot<Id> {
    /// The stream's bitrate (bit/s).
    pub bitrate_bps: u64,
    /// The broadcaster.
    pub source: SourceReport,
    /// The viewers, in any order; ids must be distinct.
    pub peers: Vec<PeerReport<Id>>,
}

/// How the optimizer plans.
///
/// Utilities are integer points per slot: serving a slot is worth 4,000, serving a peer that
/// forwards (not a leaf) 6,000 more, and the quality terms together at most 5,500: RTT (2,000 at
/// 0 ms down to none at 400 ms), sender capacity (1,000 at twice `partners_per_peer` slots),
/// sender at least a tier's lag ahead of the receiver's target (1,000), sender continuity
/// (1,000), an existing connection (500).
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Partners per receiver: the stream is split into this many slots of `bitrate /
    /// partners_per_peer` each, and a receiver pulls one slot from each partner (from the source
    /// it may pull several). 1..=16.
    pub partners_per_peer: u8,
    /// Candidate senders considered per receiver (nearest compatible ones in the tiers ahead).
    pub candidates: u8,
    /// Most upload slots a peer is given, however large its upload.
    pub max_fanout: u16,
    /// Share of a peer's reported upload the plan counts on, 0..=1.
    pub upload_use: f64,
    /// A tier takes receivers until their demand reaches this share of the tier ahead's upload;
    /// the rest is slack for leaves and for NAT and locality constraints. 0..=1.
    pub tier_fill: f64,
    /// A peer uploading less than this share of the bitrate is a leaf (a free-rider or weak).
    pub min_upload_fraction: f64,
    /// A peer whose continuity is below this is a leaf.
    pub min_continuity: f32,
    /// Most tiers of forwarding peers; peers beyond are leaves.
    pub max_tiers: u8,
    /// Target lag behind the live edge of the first tier (ms).
    pub base_lag_ms: u32,
    /// Extra target lag per tier (ms); a sender should be at least this far ahead of its
    /// receiver.
    pub per_tier_lag_ms: u32,
    /// Most edges of the previous plan that one round may replace to improve the plan. Edges
    /// that became invalid (a peer left, a tier or NAT class changed, upload dropped) are always
    /// removed and not counted.
    pub max_moves: usize,
    /// A move that replaces edges of the previous plan must gain at least this many utility
    /// points per replaced edge.
    pub hysteresis_margin: u32,
    /// An incremental round re-examines the receivers that changed and one in this many of the
    /// others (rotating with the epoch); 1 re-examines everyone every round.
    pub refresh_every: u32,
    /// Improvement sweeps of the switching heuristic per round.
    pub sweeps: u8,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            partners_per_peer: 4,
            candidates: 12,
            max_fanout: 32,
            upload_use: 0.9,
            tier_fill: 0.9,
            min_upload_fraction: 0.5,
            min_continuity: 0.8,
            max_tiers: 16,
            base_lag_ms: 1000,
            per_tier_lag_ms: 500,
            max_moves: 200,
            hysteresis_margin: 800,
            refresh_every: 16,
            sweeps: 8,
        }
    }
}

/// Why a plan could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// The snapshot's bitrate is zero.
    #[error("the stream bitrate is zero")]
    ZeroBitrate,
    /// Two reports carry the same id.
    #[error("peer {0} appears twice in the snapshot")]
    DuplicatePeer(String),
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(&'static str),
}

impl Config {
    /// Checks the ranges documented on each field.
    pub fn validate(&self) -> Result<(), PlanError> {
        let unit = |v: f64| v.is_finite() && (0.0..=1.0).contains(&v);
        if !(1..=16).contains(&self.partners_per_peer) {
            return Err(PlanError::InvalidConfig("partners_per_peer must be 1..=16"));
        }
        if self.candidates == 0 {
            return Err(PlanError::InvalidConfig("candidates must be at least 1"));
        }
        if !unit(self.upload_use) || !unit(self.tier_fill) || !unit(self.min_upload_fraction) {
            return Err(PlanError::InvalidConfig(
                "upload_use, tier_fill and min_upload_fraction must be within 0..=1",
            ));
        }
        if !self.min_continuity.is_finite() {
            return Err(PlanError::InvalidConfig("min_continuity must be finite"));
        }
        if self.max_tiers == 0 || self.max_tiers > 250 {
            return Err(PlanError::InvalidConfig("max_tiers must be 1..=250"));
        }
        if self.refresh_every == 0 {
            return Err(PlanError::InvalidConfig("refresh_every must be at least 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hole_punching_matrix_matches_rfc_4787_behaviour() {
        use Connectivity::*;
        let all = [Open, FullCone, PortRestricted, Symmetric];
        for a in all {
            for b in all {
                let expected = !matches!(
                    (a, b),
                    (Symmetric, Symmetric)
                        | (Symmetric, PortRestricted)
                        | (PortRestricted, Symmetric)
                );
                assert_eq!(Connectivity::direct_possible(a, b), expected, "{a:?} {b:?}");
                assert_eq!(
                    Connectivity::direct_possible(a, b),
                    Connectivity::direct_possible(b, a)
                );
                // The groups used to index per-class grids agree with the matrix.
                assert_eq!(a.sender_groups().contains(&b.group()), expected);
            }
        }
    }

    #[test]
    fn rtt_is_distance_plus_heights_and_survives_garbage() {
        let a = Coord::new(0.0, 0.0, 5.0);
        let b = Coord::new(30.0, 40.0, 2.0);
        assert_eq!(a.rtt_ms(&b), 57.0);
        let bad = Coord::new(f32::NAN, f32::INFINITY, -3.0).sanitized();
        assert_eq!(bad, Coord::new(0.0, 0.0, 0.0));
    }
}
