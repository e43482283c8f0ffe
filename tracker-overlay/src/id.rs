//! Positions on the ring, the nodes that sit on them, and sets of ring ranges.
//!
//! The identifier space is the integers modulo 2^128. A node sits at the first 16 bytes of its
//! peer id (a BLAKE3 hash of its public key, so nobody chooses where it lands); a user key sits
//! at the BLAKE3 hash of its bytes, and its `r` replicas at the symmetric positions
//! `k + i·2^128/r` (Scalaris' symmetric replication). A node is responsible for the positions in
//! `(predecessor, itself]`.

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// A position on the ring: an integer modulo 2^128.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RingId(pub u128);

impl RingId {
    /// The position of a user key: the first 16 bytes of its BLAKE3 hash.
    pub fn of_key(key: &[u8]) -> Self {
        let hash = blake3::derive_key("selfcast overlay key v1", key);
        Self::from_prefix(&hash)
    }

    /// The position of a node: the first 16 bytes of its peer id.
    pub fn from_prefix(bytes: &[u8; 32]) -> Self {
        let mut prefix = [0; 16];
        prefix.copy_from_slice(&bytes[..16]);
        Self(u128::from_be_bytes(prefix))
    }

    /// The position `steps` ahead, wrapping around the ring.
    pub fn plus(self, steps: u128) -> Self {
        Self(self.0.wrapping_add(steps))
    }

    /// The clockwise distance from `self` to `to`.
    pub fn distance_to(self, to: RingId) -> u128 {
        to.0.wrapping_sub(self.0)
    }

    /// The `i`-th of `r` symmetric replica positions of this key (`i = 0` is the key itself).
    pub fn replica(self, i: u8, r: u8) -> Self {
        self.plus(replica_stride(r).wrapping_mul(u128::from(i)))
    }

    /// Whether `self` lies in the ring interval `(from, to]`. `(a, a]` is the whole ring (a
    /// node alone is responsible for everything).
    pub fn in_half_open(self, from: RingId, to: RingId) -> bool {
        from == to || from.distance_to(self) != 0 && from.distance_to(self) <= from.distance_to(to)
    }

    /// Whether `self` lies strictly between `from` and `to`, clockwise. `(a, a)` is the whole
    /// ring without `a`.
    pub fn in_open(self, from: RingId, to: RingId) -> bool {
        let d = from.distance_to(self);
        d != 0 && (from == to || d < from.distance_to(to))
    }
}

/// The distance between two symmetric replicas: 2^128 / r.
pub fn replica_stride(r: u8) -> u128 {
    match r {
        0 | 1 => 0,
        r => (u128::MAX / u128::from(r)).wrapping_add(1),
    }
}

impl fmt::Debug for RingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The top 32 bits are enough to tell nodes apart in logs.
        write!(f, "{:08x}…", (self.0 >> 96) as u32)
    }
}

impl fmt::Display for RingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A node of the overlay: where it sits, who it is, where it listens. On the wire only the
/// peer id and the address travel; the position is derived again on arrival, so no message can
/// place a node anywhere but where its key puts it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "NodeWire", into = "NodeWire")]
pub struct NodeRef {
    /// Its position, derived from `peer`.
    pub id: RingId,
    /// Its peer id (the BLAKE3 hash of its public key); transports authenticate it.
    pub peer: [u8; 32],
    /// The address it accepts connections on.
    pub addr: SocketAddr,
}

#[derive(Clone, Copy, Serialize, Deserialize)]
struct NodeWire {
    peer: [u8; 32],
    addr: SocketAddr,
}

impl From<NodeWire> for NodeRef {
    fn from(w: NodeWire) -> Self {
        NodeRef::new(w.peer, w.addr)
    }
}

impl From<NodeRef> for NodeWire {
    fn from(n: NodeRef) -> Self {
        NodeWire {
            peer: n.peer,
            addr: n.addr,
        }
    }
}

impl NodeRef {
    /// The node with peer id `peer` listening on `addr`.
    pub fn new(peer: [u8; 32], addr: SocketAddr) -> Self {
        Self {
            id: RingId::from_prefix(&peer),
            peer,
            addr,
        }
    }

    /// Whether this reference is well formed: its position is the one its peer id gives.
    pub fn is_consistent(&self) -> bool {
        self.id == RingId::from_prefix(&self.peer)
    }
}

impl fmt::Debug for NodeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}@{}", self.id, self.addr)
    }
}

/// A set of ring positions, kept as sorted, disjoint, non-adjacent inclusive ranges of the
/// unrolled space `[0, 2^128)`. The store uses it for the ranges whose data a node holds with
/// authority.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeSet {
    ranges: Vec<(u128, u128)>,
}

impl RangeSet {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// The ring interval `(from, to]` as a set.
    pub fn interval(from: RingId, to: RingId) -> Self {
        let mut set = Self::new();
        set.insert(from, to);
        set
    }

    /// Whether the set holds `id`.
    pub fn contains(&self, id: RingId) -> bool {
        let i = self.ranges.partition_point(|&(_, hi)| hi < id.0);
        self.ranges.get(i).is_some_and(|&(lo, _)| lo <= id.0)
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Whether the set holds all of `(from, to]`.
    pub fn covers(&self, from: RingId, to: RingId) -> bool {
        Self::interval(from, to).difference(self).is_empty()
    }

    /// Adds the ring interval `(from, to]`.
    pub fn insert(&mut self, from: RingId, to: RingId) {
        for (lo, hi) in unroll(from, to) {
            self.insert_linear(lo, hi);
        }
    }

    /// Removes the ring interval `(from, to]`.
    pub fn remove(&mut self, from: RingId, to: RingId) {
        let cut = Self::interval(from, to);
        *self = self.difference(&cut);
    }

    /// Adds every range of `other`.
    pub fn union_with(&mut self, other: &RangeSet) {
        for &(lo, hi) in &other.ranges {
            self.insert_linear(lo, hi);
        }
    }

    /// The positions in `self` that are not in `other`.
    pub fn difference(&self, other: &RangeSet) -> RangeSet {
        let mut out = Vec::new();
        for &(lo, hi) in &self.ranges {
            let mut lo = lo;
            let mut done = false;
            for &(olo, ohi) in &other.ranges {
                if ohi < lo || olo > hi {
                    continue;
                }
                if olo > lo {
                    out.push((lo, olo - 1));
                }
                if ohi >= hi {
                    done = true;
                    break;
                }
                lo = ohi + 1;
            }
            if !done {
                out.push((lo, hi));
            }
        }
        RangeSet { ranges: out }
    }

    /// The positions in both sets.
    pub fn intersection(&self, other: &RangeSet) -> RangeSet {
        self.difference(&self.difference(other))
    }

    /// The set as ring intervals `(from, to]`, each no longer than the unrolled space.
    pub fn intervals(&self) -> impl Iterator<Item = (RingId, RingId)> + '_ {
        self.ranges
            .iter()
            .map(|&(lo, hi)| (RingId(lo.wrapping_sub(1)), RingId(hi)))
    }

    /// The set shifted `steps` clockwise.
    pub fn shifted(&self, steps: u128) -> RangeSet {
        let mut out = RangeSet::new();
        for (from, to) in self.intervals() {
            if from.0.wrapping_add(1) == 0 && to.0 == u128::MAX {
                return self.clone();
            }
            out.insert(from.plus(steps), to.plus(steps));
        }
        out
    }

    fn insert_linear(&mut self, lo: u128, hi: u128) {
        // Ranges that overlap or touch [lo, hi] merge with it.
        let start = self
            .ranges
            .partition_point(|&(_, h)| h < lo.saturating_sub(1));
        let mut end = start;
        let (mut lo, mut hi) = (lo, hi);
        while end < self.ranges.len() && self.ranges[end].0 <= hi.saturating_add(1) {
            lo = lo.min(self.ranges[end].0);
            hi = hi.max(self.ranges[end].1);
            end += 1;
        }
        self.ranges.splice(start..end, [(lo, hi)]);
    }
}

/// The ring interval `(from, to]` as at most two linear inclusive ranges.
fn unroll(from: RingId, to: RingId) -> Vec<(u128, u128)> {
    if from == to {
        return vec![(0, u128::MAX)];
    }
    let lo = from.0.wrapping_add(1);
    if lo <= to.0 {
        vec![(lo, to.0)]
    } else {
        vec![(lo, u128::MAX), (0, to.0)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_wrap_around_the_ring() {
        let (a, b) = (RingId(10), RingId(20));
        assert!(RingId(15).in_half_open(a, b));
        assert!(RingId(20).in_half_open(a, b));
        assert!(!RingId(10).in_half_open(a, b));
        assert!(RingId(5).in_half_open(b, a));
        assert!(RingId(u128::MAX).in_half_open(b, a));
        assert!(!RingId(15).in_half_open(b, a));
        assert!(RingId(3).in_half_open(a, a));
        assert!(RingId(15).in_open(a, b));
        assert!(!RingId(20).in_open(a, b));
        assert!(RingId(11).in_open(a, a) && !RingId(10).in_open(a, a));
    }

    #[test]
    fn replicas_are_symmetric() {
        let k = RingId(7);
        assert_eq!(k.replica(0, 4), k);
        assert_eq!(k.replica(1, 4), RingId(7 + (1 << 126)));
        assert_eq!(k.replica(3, 4).plus(1 << 126), k);
        assert_eq!(replica_stride(3), u128::MAX / 3 + 1);
    }

    #[test]
    fn range_sets_insert_merge_and_subtract() {
        let mut s = RangeSet::new();
        s.insert(RingId(10), RingId(20));
        s.insert(RingId(20), RingId(30));
        assert_eq!(s.ranges, vec![(11, 30)]);
        s.insert(RingId(u128::MAX - 5), RingId(3));
        assert!(s.contains(RingId(0)) && s.contains(RingId(u128::MAX)) && !s.contains(RingId(5)));
        s.remove(RingId(14), RingId(16));
        assert!(s.contains(RingId(14)) && !s.contains(RingId(15)) && s.contains(RingId(17)));
        assert!(s.covers(RingId(16), RingId(30)));
        assert!(!s.covers(RingId(13), RingId(30)));
        let full = RangeSet::interval(RingId(9), RingId(9));
        assert!(full.covers(RingId(1), RingId(1)));
        let rest = full.difference(&s);
        assert!(rest.contains(RingId(5)) && !rest.contains(RingId(11)));
        assert_eq!(rest.intersection(&s), RangeSet::new());
        let shifted = RangeSet::interval(RingId(10), RingId(20)).shifted(u128::MAX - 14);
        assert!(shifted.contains(RingId(u128::MAX)) && shifted.contains(RingId(5)));
        assert!(!shifted.contains(RingId(6)));
    }
}
