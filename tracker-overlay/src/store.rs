//! One node's share of the replicated store: versioned items, the locks transactions hold on
//! them, and the ranges the node holds with authority.
//!
//! Every key lives at `r` symmetric positions; each position is stored by the node responsible
//! for it. A node is *sure* of a range when it has all committed data of it: the first node of
//! a ring is sure of everything, and sureness passes on with a graceful hand-over (join, leave).
//! A range a node takes over from a crashed predecessor is not sure until a majority of the
//! other replicas has given it their items (see `repair` in `node`). Only sure replicas vote
//! for a transaction or count towards a read quorum, so a partition side that holds fewer than
//! a majority of a key's replicas can neither commit nor read it, and two sides never commit
//! different values.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::id::{RangeSet, RingId};
use crate::tx::{TxEntry, TxId};

/// The largest value the store takes, in bytes (a list counts its elements' bytes).
pub const MAX_VALUE_LEN: usize = 64 * 1024;

/// The most value bytes one hand-over or repair message carries (a few items at the value
/// limit; more would push the message over [`crate::msg::MAX_MESSAGE_LEN`]).
pub const MAX_CHUNK_BYTES: usize = 4 * MAX_VALUE_LEN;

/// A stored value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Value {
    /// A number (the target of `add`).
    Int(i64),
    /// Opaque bytes.
    Bytes(Vec<u8>),
    /// A list of byte strings (the target of list add and delete).
    List(Vec<Vec<u8>>),
}

impl Value {
    /// The size the bound counts: a number's 8 bytes, the bytes, or the list's elements plus
    /// one byte each.
    pub fn size(&self) -> usize {
        match self {
            Value::Int(_) => 8,
            Value::Bytes(b) => b.len(),
            Value::List(l) => l.iter().map(|e| e.len() + 1).sum(),
        }
    }

    /// Checks the size bound.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.size() > MAX_VALUE_LEN {
            Err("value too large")
        } else {
            Ok(())
        }
    }
}

/// A committed value with its version (the number of committed writes to the key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// Starts at 1 with the first write.
    pub version: u64,
    /// The value.
    pub value: Value,
}

impl Item {
    /// Checks the value's bounds.
    pub fn check(&self) -> Result<(), &'static str> {
        self.value.check()
    }
}

#[derive(Debug, Default)]
struct Slot {
    item: Option<Item>,
    write_lock: Option<TxId>,
    read_locks: Vec<TxId>,
}

impl Slot {
    fn version(&self) -> u64 {
        self.item.as_ref().map_or(0, |i| i.version)
    }

    fn is_idle(&self) -> bool {
        self.item.is_none() && self.write_lock.is_none() && self.read_locks.is_empty()
    }
}

/// A node's items and locks, by position.
#[derive(Debug, Default)]
pub struct Store {
    slots: BTreeMap<RingId, Slot>,
    sure: RangeSet,
}

impl Store {
    /// An empty store, sure of nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// The item at `key`.
    pub fn get(&self, key: RingId) -> Option<&Item> {
        self.slots.get(&key).and_then(|s| s.item.as_ref())
    }

    /// Whether a prepared transaction holds `key`'s write lock.
    pub fn is_write_locked(&self, key: RingId) -> bool {
        self.slots.get(&key).is_some_and(|s| s.write_lock.is_some())
    }

    /// How many items the node holds.
    pub fn len(&self) -> usize {
        self.slots.values().filter(|s| s.item.is_some()).count()
    }

    /// Whether the node holds no items.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the node holds `key`'s range with authority.
    pub fn is_sure(&self, key: RingId) -> bool {
        self.sure.contains(key)
    }

    /// The ranges held with authority.
    pub fn sure(&self) -> &RangeSet {
        &self.sure
    }

    /// Marks `(from, to]` as held with authority.
    pub fn mark_sure(&mut self, from: RingId, to: RingId) {
        self.sure.insert(from, to);
    }

    /// Forgets the authority over `(from, to]` (the range moved away).
    pub fn unmark_sure(&mut self, from: RingId, to: RingId) {
        self.sure.remove(from, to);
    }

    /// Takes in a replica of `key` from elsewhere (hand-over, repair): the newer version wins.
    pub fn merge(&mut self, key: RingId, item: Item) {
        let slot = self.slots.entry(key).or_default();
        if item.version > slot.version() {
            slot.item = Some(item);
        }
    }

    /// Copies of the items in `(from, to]`, at most `limit` and [`MAX_CHUNK_BYTES`] of values
    /// (at least one item), in ring order from `from`; and
    /// where the copy stopped (`to` if it got everything).
    pub fn range(&self, from: RingId, to: RingId, limit: usize) -> (Vec<(RingId, Item)>, RingId) {
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut last = to;
        let parts: Vec<(RingId, RingId)> = RangeSet::interval(from, to).intervals().collect();
        // The interval unrolls into at most two linear pieces; walk them in ring order from
        // `from` (the piece after `from` first).
        let mut ordered = parts.clone();
        ordered.sort_by_key(|&(f, _)| from.distance_to(f.plus(1)));
        'outer: for (f, t) in ordered {
            let lo = f.plus(1);
            for (&key, slot) in self.slots.range(lo..=t) {
                let Some(item) = &slot.item else { continue };
                bytes += item.value.size();
                if out.len() == limit || (!out.is_empty() && bytes > MAX_CHUNK_BYTES) {
                    break 'outer;
                }
                out.push((key, item.clone()));
                last = key;
            }
        }
        if out.len() < limit {
            last = to;
        }
        (out, last)
    }

    /// Removes and returns the items of `(from, to]` that no transaction has locked; locked
    /// ones stay until their transaction ends (and then go by [`Store::drop_outside`]).
    pub fn take_range(&mut self, from: RingId, to: RingId) -> Vec<(RingId, Item)> {
        let keys: Vec<RingId> = self
            .slots
            .keys()
            .copied()
            .filter(|k| k.in_half_open(from, to))
            .collect();
        let mut out = Vec::new();
        for key in keys {
            if let Some(slot) = self.slots.get_mut(&key) {
                if let Some(item) = &slot.item {
                    out.push((key, item.clone()));
                }
                if slot.write_lock.is_none() && slot.read_locks.is_empty() {
                    self.slots.remove(&key);
                }
            }
        }
        out
    }

    /// Drops unlocked items outside `(from, to]` (data that moved to other nodes).
    pub fn drop_outside(&mut self, from: RingId, to: RingId) {
        self.slots.retain(|k, s| {
            k.in_half_open(from, to) || s.write_lock.is_some() || !s.read_locks.is_empty()
        });
    }

    /// A participant's validation of one transaction entry: the version it read is still the
    /// current one and no other transaction holds a conflicting lock. If so, the entry's lock
    /// is taken and the vote is prepared.
    pub fn prepare(&mut self, key: RingId, tid: TxId, entry: &TxEntry) -> bool {
        let slot = self.slots.entry(key).or_default();
        if slot.write_lock == Some(tid) || slot.read_locks.contains(&tid) {
            return true; // A retransmitted prepare.
        }
        let ok = slot.version() == entry.read_version
            && slot.write_lock.is_none()
            && (entry.write.is_none() || slot.read_locks.is_empty());
        if ok {
            if entry.write.is_some() {
                slot.write_lock = Some(tid);
            } else {
                slot.read_locks.push(tid);
            }
        } else if slot.is_idle() {
            self.slots.remove(&key);
        }
        ok
    }

    /// Ends a transaction at `key`: on commit, its write is applied (also by a replica that
    /// voted abort because it was behind: the decision stands and the value is newer); its
    /// locks are released either way.
    pub fn finish(&mut self, key: RingId, tid: TxId, entry: &TxEntry, commit: bool) {
        let slot = self.slots.entry(key).or_default();
        if slot.write_lock == Some(tid) {
            slot.write_lock = None;
        }
        slot.read_locks.retain(|t| *t != tid);
        if commit {
            if let Some(value) = &entry.write {
                let version = entry.read_version + 1;
                if version > slot.version() {
                    slot.item = Some(Item {
                        version,
                        value: value.clone(),
                    });
                }
            }
        }
        if slot.is_idle() {
            self.slots.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(read_version: u64, write: Option<i64>) -> TxEntry {
        TxEntry {
            key: RingId(0),
            read_version,
            write: write.map(Value::Int),
        }
    }

    #[test]
    fn locks_exclude_conflicting_transactions() {
        let mut s = Store::new();
        let k = RingId(5);
        assert!(s.prepare(k, TxId(1), &entry(0, Some(1))));
        assert!(
            !s.prepare(k, TxId(2), &entry(0, Some(1))),
            "write-write conflict"
        );
        assert!(
            !s.prepare(k, TxId(3), &entry(0, None)),
            "read of a write-locked key"
        );
        s.finish(k, TxId(1), &entry(0, Some(1)), true);
        assert_eq!(s.get(k).map(|i| i.version), Some(1));
        assert!(
            !s.prepare(k, TxId(2), &entry(0, Some(1))),
            "stale read version"
        );
        assert!(s.prepare(k, TxId(4), &entry(1, None)));
        assert!(s.prepare(k, TxId(5), &entry(1, None)), "readers share");
        assert!(
            !s.prepare(k, TxId(6), &entry(1, Some(2))),
            "write of a read-locked key"
        );
        s.finish(k, TxId(4), &entry(1, None), true);
        s.finish(k, TxId(5), &entry(1, None), false);
        assert!(s.prepare(k, TxId(6), &entry(1, Some(2))));
    }

    #[test]
    fn a_behind_replica_catches_up_on_commit() {
        let mut s = Store::new();
        let k = RingId(9);
        assert!(!s.prepare(k, TxId(1), &entry(3, Some(7))));
        s.finish(k, TxId(1), &entry(3, Some(7)), true);
        assert_eq!(
            s.get(k),
            Some(&Item {
                version: 4,
                value: Value::Int(7)
            })
        );
        s.merge(
            k,
            Item {
                version: 2,
                value: Value::Int(1),
            },
        );
        assert_eq!(
            s.get(k).map(|i| i.version),
            Some(4),
            "older versions do not win"
        );
    }

    #[test]
    fn ranges_come_out_in_ring_order_and_in_chunks() {
        let mut s = Store::new();
        for k in [1u128, 2, 3, u128::MAX - 1, u128::MAX] {
            s.merge(
                RingId(k),
                Item {
                    version: 1,
                    value: Value::Int(k as i64),
                },
            );
        }
        let (items, last) = s.range(RingId(u128::MAX - 2), RingId(2), 10);
        let keys: Vec<u128> = items.iter().map(|(k, _)| k.0).collect();
        assert_eq!(keys, vec![u128::MAX - 1, u128::MAX, 1, 2]);
        assert_eq!(last, RingId(2));
        let (items, last) = s.range(RingId(u128::MAX - 2), RingId(2), 2);
        assert_eq!(items.len(), 2);
        assert_eq!(last, RingId(u128::MAX));
        let taken = s.take_range(RingId(0), RingId(2));
        assert_eq!(taken.len(), 2);
        assert_eq!(s.len(), 3);
    }
}
