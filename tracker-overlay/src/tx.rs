//! Transactions: what a client asks for, what a transaction records, and how it ends.
//!
//! A transaction runs in two phases (Scalaris). First the node that runs it — its transaction
//! manager (TM) — reads every key it touches with a majority quorum and applies the operations
//! to what it read, which yields a log: one [`TxEntry`] per key with the version read and the
//! value to write. Then the log is committed by Paxos Commit: every replica of every key
//! validates its entry (still that version, no conflicting lock), locks it and sends its vote as
//! a ballot-0 proposal to the acceptors — the TM and its replicated managers (RTMs, the nodes
//! responsible for the TM's own symmetric positions). The leader learns a vote once a majority
//! of acceptors accepted it; a key is committable once a majority of its replicas voted
//! prepared, and the transaction commits iff every key is. If the TM crashes or is suspected,
//! an RTM takes over with a higher ballot, learns what the acceptors accepted and decides,
//! proposing *abort* for votes nobody accepted, so no participant stays locked. The message
//! handling is in `node`; this module holds the data and the pure parts.

use serde::{Deserialize, Serialize};

use crate::id::RingId;
use crate::msg::MAX_TX_KEYS;
use crate::store::{Item, Value};

/// A transaction's id, chosen at random by its manager.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TxId(pub u128);

/// What a transaction read at one key and wants written there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxEntry {
    /// The key's base position.
    pub key: RingId,
    /// The version read (0: the key was never written).
    pub read_version: u64,
    /// The value to write, or `None` for a key only read (it is validated, not changed).
    pub write: Option<Value>,
}

impl TxEntry {
    /// Checks the value's bounds.
    pub fn check(&self) -> Result<(), &'static str> {
        self.write.as_ref().map_or(Ok(()), Value::check)
    }
}

/// One operation of a transaction, on a user key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxOp {
    /// Read the value.
    Read(Vec<u8>),
    /// Write the value.
    Write(Vec<u8>, Value),
    /// Write `new` if the value is `expected` (`None`: the key was never written); abort
    /// otherwise.
    TestAndSet {
        /// The key.
        key: Vec<u8>,
        /// The value it must have.
        expected: Option<Value>,
        /// The value to write.
        new: Value,
    },
    /// Append elements to a list (a missing key is an empty list).
    AddToList(Vec<u8>, Vec<Vec<u8>>),
    /// Remove every occurrence of these elements from a list.
    DeleteFromList(Vec<u8>, Vec<Vec<u8>>),
    /// Add to a number (a missing key is 0).
    AddNumber(Vec<u8>, i64),
}

impl TxOp {
    /// The key the operation touches.
    pub fn key(&self) -> &[u8] {
        match self {
            TxOp::Read(k)
            | TxOp::Write(k, _)
            | TxOp::TestAndSet { key: k, .. }
            | TxOp::AddToList(k, _)
            | TxOp::DeleteFromList(k, _)
            | TxOp::AddNumber(k, _) => k,
        }
    }

    fn writes(&self) -> bool {
        !matches!(self, TxOp::Read(_))
    }
}

/// Why a transaction did not commit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Abort {
    /// Another transaction changed or locked the key between the read and the commit; the
    /// transaction may simply be retried.
    #[error("conflict on key {}", show(key))]
    Conflict {
        /// The key.
        key: Vec<u8>,
    },
    /// A test-and-set found another value.
    #[error("test-and-set on key {} found another value", show(key))]
    Mismatch {
        /// The key.
        key: Vec<u8>,
        /// What it found.
        found: Option<Value>,
    },
    /// A list operation on a non-list or a number operation on a non-number.
    #[error("key {} holds a value of another type", show(key))]
    WrongType {
        /// The key.
        key: Vec<u8>,
    },
    /// Fewer than a majority of the key's replicas answered (crashes, or this side of a
    /// partition holds a minority of them).
    #[error("no majority of replicas of key {} answered", show(key))]
    NoQuorum {
        /// The key.
        key: Vec<u8>,
    },
    /// The commit outcome did not arrive in time: the transaction may or may not have
    /// committed.
    #[error("the commit outcome did not arrive in time")]
    Timeout,
    /// The transaction is malformed: no keys, too many keys, or a value over the size limit.
    #[error("invalid transaction: {0}")]
    Invalid(&'static str),
    /// This node is not (or no longer) part of a ring.
    #[error("this node is not part of a ring")]
    NotJoined,
}

fn show(key: &[u8]) -> String {
    String::from_utf8(key.to_vec()).unwrap_or_else(|_| format!("{key:02x?}"))
}

/// The distinct keys of a transaction, in first-use order, with their positions.
pub(crate) fn distinct_keys(ops: &[TxOp]) -> Result<Vec<(Vec<u8>, RingId)>, Abort> {
    let mut keys: Vec<(Vec<u8>, RingId)> = Vec::new();
    for op in ops {
        if !keys.iter().any(|(k, _)| k.as_slice() == op.key()) {
            keys.push((op.key().to_vec(), RingId::of_key(op.key())));
        }
    }
    if keys.is_empty() {
        return Err(Abort::Invalid("no operations"));
    }
    if keys.len() > MAX_TX_KEYS {
        return Err(Abort::Invalid("too many keys"));
    }
    Ok(keys)
}

/// Applies `ops` to what was read (`read[i]` for `keys[i]`) and returns each op's result (the
/// value after it) and the log (one entry per key).
pub(crate) fn apply(
    ops: &[TxOp],
    keys: &[(Vec<u8>, RingId)],
    read: &[Option<Item>],
) -> Result<(Vec<Option<Value>>, Vec<TxEntry>), Abort> {
    let mut current: Vec<Option<Value>> = read
        .iter()
        .map(|i| i.as_ref().map(|i| i.value.clone()))
        .collect();
    let mut written = vec![false; keys.len()];
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        let Some(i) = keys.iter().position(|(k, _)| k.as_slice() == op.key()) else {
            return Err(Abort::Invalid("operation on an unknown key"));
        };
        let key = || op.key().to_vec();
        let new = match (op, &current[i]) {
            (TxOp::Read(_), v) => v.clone(),
            (TxOp::Write(_, v), _) => Some(v.clone()),
            (TxOp::TestAndSet { expected, new, .. }, found) => {
                if found != expected {
                    return Err(Abort::Mismatch {
                        key: key(),
                        found: found.clone(),
                    });
                }
                Some(new.clone())
            }
            (TxOp::AddToList(_, add), None) => Some(Value::List(add.clone())),
            (TxOp::AddToList(_, add), Some(Value::List(list))) => {
                Some(Value::List(list.iter().chain(add).cloned().collect()))
            }
            (TxOp::DeleteFromList(_, _), None) => Some(Value::List(Vec::new())),
            (TxOp::DeleteFromList(_, del), Some(Value::List(list))) => Some(Value::List(
                list.iter().filter(|e| !del.contains(e)).cloned().collect(),
            )),
            (TxOp::AddNumber(_, d), None) => Some(Value::Int(*d)),
            (TxOp::AddNumber(_, d), Some(Value::Int(n))) => Some(Value::Int(n.wrapping_add(*d))),
            (TxOp::AddToList(..) | TxOp::DeleteFromList(..) | TxOp::AddNumber(..), Some(_)) => {
                return Err(Abort::WrongType { key: key() })
            }
        };
        if op.writes() {
            if let Some(v) = &new {
                v.check().map_err(Abort::Invalid)?;
            }
            written[i] = true;
        }
        current[i] = new.clone();
        results.push(new);
    }
    let entries = keys
        .iter()
        .enumerate()
        .map(|(i, (_, pos))| TxEntry {
            key: *pos,
            read_version: read[i].as_ref().map_or(0, |it| it.version),
            write: if written[i] { current[i].clone() } else { None },
        })
        .collect();
    Ok((results, entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_apply_in_order_to_what_was_read() {
        let ops = vec![
            TxOp::AddNumber(b"n".to_vec(), 2),
            TxOp::AddNumber(b"n".to_vec(), 3),
            TxOp::AddToList(b"l".to_vec(), vec![b"a".to_vec(), b"b".to_vec()]),
            TxOp::DeleteFromList(b"l".to_vec(), vec![b"a".to_vec()]),
            TxOp::Read(b"r".to_vec()),
        ];
        let keys = distinct_keys(&ops).unwrap();
        assert_eq!(keys.len(), 3);
        let read = vec![
            Some(Item {
                version: 4,
                value: Value::Int(10),
            }),
            None,
            None,
        ];
        let (results, entries) = apply(&ops, &keys, &read).unwrap();
        assert_eq!(results[1], Some(Value::Int(15)));
        assert_eq!(results[3], Some(Value::List(vec![b"b".to_vec()])));
        assert_eq!(results[4], None);
        assert_eq!(entries[0].read_version, 4);
        assert_eq!(entries[0].write, Some(Value::Int(15)));
        assert_eq!(
            entries[2].write, None,
            "a read-only key is validated, not written"
        );
    }

    #[test]
    fn failed_operations_say_why() {
        let keys = distinct_keys(&[TxOp::Read(b"k".to_vec())]).unwrap();
        let read = vec![Some(Item {
            version: 1,
            value: Value::Bytes(b"x".to_vec()),
        })];
        let tas = TxOp::TestAndSet {
            key: b"k".to_vec(),
            expected: None,
            new: Value::Int(1),
        };
        assert!(matches!(
            apply(&[tas], &keys, &read),
            Err(Abort::Mismatch { .. })
        ));
        let add = TxOp::AddNumber(b"k".to_vec(), 1);
        assert!(matches!(
            apply(&[add], &keys, &read),
            Err(Abort::WrongType { .. })
        ));
        assert!(distinct_keys(&[]).is_err());
    }
}
