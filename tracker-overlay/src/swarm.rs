//! Typed swarm metadata on top of the store: what replaces the central tracker.
//!
//! Per channel (its 20-byte id), four keys:
//!
//! - `record`: the broadcaster's signed channel record, as opaque bytes (the peer verifies the
//!   signature; the overlay only keeps the bytes);
//! - `members`: a bounded sample of current viewers ([`Member`]: address, connectivity class,
//!   upload capacity, an expiry), refreshed by each member and pruned of expired entries;
//! - `vod`: which peers hold which segment ranges of an on-demand channel ([`Holder`]);
//! - `plan`: the optimizer's current plan and its epoch ([`Plan`]); a plan replaces the stored
//!   one only if its epoch is the next one, so two optimizers never both win a round.
//!
//! Updates are read-then-test-and-set: the caller reads the current value, [`Update`] computes
//! the new one, and a test-and-set commits it only if nobody changed it in between (on
//! [`crate::Abort::Mismatch`] the caller reads again and retries).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::store::{Value, MAX_VALUE_LEN};
use crate::tx::TxOp;

/// The most members a channel's sample keeps.
pub const MAX_MEMBERS: usize = 64;
/// The most VOD holders a channel keeps.
pub const MAX_HOLDERS: usize = 128;

/// A channel id (the keyed BLAKE3 of the broadcaster's key, as `peer` computes it).
pub type ChannelKey = [u8; 20];

/// Which of a channel's keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// The signed channel record.
    Record,
    /// The membership sample.
    Members,
    /// The VOD holder index.
    Vod,
    /// The optimizer's plan.
    Plan,
}

/// The store key of a channel's field.
pub fn key(channel: &ChannelKey, field: Field) -> Vec<u8> {
    let name = match field {
        Field::Record => "record",
        Field::Members => "members",
        Field::Vod => "vod",
        Field::Plan => "plan",
    };
    let mut k = b"selfcast/channel/".to_vec();
    k.extend_from_slice(channel);
    k.push(b'/');
    k.extend_from_slice(name.as_bytes());
    k
}

/// How a peer can be reached (the NAT issue fills this in; it decides who can dial whom).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Connectivity {
    /// A public address, or a NAT that forwards a port.
    Open,
    /// A full-cone NAT.
    Cone,
    /// A port-restricted NAT.
    PortRestricted,
    /// A symmetric NAT.
    Symmetric,
}

/// A viewer in a channel's membership sample.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its peer id.
    pub peer: [u8; 32],
    /// Where it accepts connections.
    pub addr: SocketAddr,
    /// How it can be reached.
    pub connectivity: Connectivity,
    /// Its measured upload capacity, kbit/s.
    pub upload_kbps: u32,
    /// When the entry lapses unless refreshed (Unix seconds).
    pub expires_unix_s: u64,
}

/// A peer that holds segments of an on-demand channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// Its peer id.
    pub peer: [u8; 32],
    /// Where it accepts connections.
    pub addr: SocketAddr,
    /// The media segment numbers it holds, as inclusive ranges.
    pub ranges: Vec<(u64, u64)>,
    /// When the entry lapses unless refreshed (Unix seconds).
    pub expires_unix_s: u64,
}

/// The optimizer's plan for a channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Rounds since the channel started; each new plan takes the next one.
    pub epoch: u64,
    /// The plan itself, encoded by the optimizer.
    pub body: Vec<u8>,
}

/// Why stored metadata could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetaError {
    /// The stored value is not what this field holds.
    #[error("stored {0} is malformed")]
    Malformed(&'static str),
    /// The new value would exceed the store's value size limit.
    #[error("{0} too large for the store")]
    TooLarge(&'static str),
    /// A plan must take the epoch after the stored one.
    #[error("plan epoch {got} does not follow the stored epoch {stored}")]
    StaleEpoch {
        /// The stored plan's epoch.
        stored: u64,
        /// The epoch offered.
        got: u64,
    },
}

/// A test-and-set that takes a field from what was read to a new value.
#[derive(Clone, Debug, PartialEq)]
pub struct Update {
    /// The operation to run as (part of) a transaction.
    pub op: TxOp,
}

impl Update {
    fn new(key: Vec<u8>, expected: Option<Value>, new: Value) -> Result<Self, MetaError> {
        new.check().map_err(|_| MetaError::TooLarge("metadata"))?;
        Ok(Self {
            op: TxOp::TestAndSet { key, expected, new },
        })
    }
}

fn decode_list<T: for<'de> Deserialize<'de>>(
    value: Option<&Value>,
    what: &'static str,
) -> Result<Vec<T>, MetaError> {
    match value {
        None => Ok(Vec::new()),
        Some(Value::List(items)) => items
            .iter()
            .map(|b| postcard::from_bytes(b).map_err(|_| MetaError::Malformed(what)))
            .collect(),
        Some(_) => Err(MetaError::Malformed(what)),
    }
}

fn encode_list<T: Serialize>(items: &[T]) -> Value {
    // Serializing plain data into a Vec cannot fail.
    Value::List(
        items
            .iter()
            .map(|i| postcard::to_stdvec(i).unwrap_or_default())
            .collect(),
    )
}

/// The channel's record bytes as stored.
pub fn record(value: Option<&Value>) -> Result<Option<Vec<u8>>, MetaError> {
    match value {
        None => Ok(None),
        Some(Value::Bytes(b)) => Ok(Some(b.clone())),
        Some(_) => Err(MetaError::Malformed("channel record")),
    }
}

/// Stores the signed channel record (replacing an older one of the same broadcaster: the peer
/// checks that before it calls this).
pub fn publish_record(
    channel: &ChannelKey,
    read: Option<&Value>,
    signed: Vec<u8>,
) -> Result<Update, MetaError> {
    Update::new(
        key(channel, Field::Record),
        read.cloned(),
        Value::Bytes(signed),
    )
}

/// The live members of a sample (expired entries left out).
pub fn members(value: Option<&Value>, now_unix_s: u64) -> Result<Vec<Member>, MetaError> {
    let all: Vec<Member> = decode_list(value, "membership sample")?;
    Ok(all
        .into_iter()
        .filter(|m| m.expires_unix_s > now_unix_s)
        .collect())
}

/// Adds or refreshes `me` in the sample read as `read`: expired entries and `me`'s old entry
/// go; if the sample is full, the entry closest to expiry makes room.
pub fn join_members(
    channel: &ChannelKey,
    read: Option<&Value>,
    me: Member,
    now_unix_s: u64,
) -> Result<Update, MetaError> {
    let mut list = members(read, now_unix_s)?;
    list.retain(|m| m.peer != me.peer);
    if list.len() >= MAX_MEMBERS {
        list.sort_by_key(|m| std::cmp::Reverse(m.expires_unix_s));
        list.truncate(MAX_MEMBERS - 1);
    }
    list.push(me);
    Update::new(
        key(channel, Field::Members),
        read.cloned(),
        encode_list(&list),
    )
}

/// Removes `peer` from the sample (a viewer that leaves gracefully).
pub fn leave_members(
    channel: &ChannelKey,
    read: Option<&Value>,
    peer: &[u8; 32],
    now_unix_s: u64,
) -> Result<Update, MetaError> {
    let mut list = members(read, now_unix_s)?;
    list.retain(|m| &m.peer != peer);
    Update::new(
        key(channel, Field::Members),
        read.cloned(),
        encode_list(&list),
    )
}

/// The live holders of an on-demand channel.
pub fn holders(value: Option<&Value>, now_unix_s: u64) -> Result<Vec<Holder>, MetaError> {
    let all: Vec<Holder> = decode_list(value, "VOD holder index")?;
    Ok(all
        .into_iter()
        .filter(|h| h.expires_unix_s > now_unix_s)
        .collect())
}

/// Adds or refreshes `me` in the holder index.
pub fn announce_holder(
    channel: &ChannelKey,
    read: Option<&Value>,
    me: Holder,
    now_unix_s: u64,
) -> Result<Update, MetaError> {
    let mut list = holders(read, now_unix_s)?;
    list.retain(|h| h.peer != me.peer);
    if list.len() >= MAX_HOLDERS {
        list.sort_by_key(|h| std::cmp::Reverse(h.expires_unix_s));
        list.truncate(MAX_HOLDERS - 1);
    }
    list.push(me);
    let value = encode_list(&list);
    if value.check().is_err() {
        return Err(MetaError::TooLarge("VOD holder index"));
    }
    Update::new(key(channel, Field::Vod), read.cloned(), value)
}

/// The stored plan.
pub fn plan(value: Option<&Value>) -> Result<Option<Plan>, MetaError> {
    match value {
        None => Ok(None),
        Some(Value::Bytes(b)) => postcard::from_bytes(b)
            .map(Some)
            .map_err(|_| MetaError::Malformed("plan")),
        Some(_) => Err(MetaError::Malformed("plan")),
    }
}

/// Replaces the stored plan with `next`, which must carry the next epoch.
pub fn publish_plan(
    channel: &ChannelKey,
    read: Option<&Value>,
    next: &Plan,
) -> Result<Update, MetaError> {
    let stored = plan(read)?.map_or(0, |p| p.epoch);
    if next.epoch != stored + 1 {
        return Err(MetaError::StaleEpoch {
            stored,
            got: next.epoch,
        });
    }
    let bytes = postcard::to_stdvec(next).map_err(|_| MetaError::Malformed("plan"))?;
    if bytes.len() > MAX_VALUE_LEN {
        return Err(MetaError::TooLarge("plan"));
    }
    Update::new(
        key(channel, Field::Plan),
        read.cloned(),
        Value::Bytes(bytes),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(n: u8, expires: u64) -> Member {
        Member {
            peer: [n; 32],
            addr: SocketAddr::from(([10, 0, 0, n], 4433)),
            connectivity: Connectivity::Cone,
            upload_kbps: 3000,
            expires_unix_s: expires,
        }
    }

    fn new_value(u: &Update) -> Value {
        match &u.op {
            TxOp::TestAndSet { new, .. } => new.clone(),
            other => panic!("not a test-and-set: {other:?}"),
        }
    }

    #[test]
    fn members_join_refresh_expire_and_stay_bounded() {
        let ch = [7u8; 20];
        let v = new_value(&join_members(&ch, None, member(1, 100), 50).unwrap());
        let v = new_value(&join_members(&ch, Some(&v), member(2, 60), 50).unwrap());
        let v = new_value(&join_members(&ch, Some(&v), member(1, 200), 50).unwrap());
        let live = members(Some(&v), 50).unwrap();
        assert_eq!(live.len(), 2, "a refresh replaces the old entry");
        assert_eq!(
            members(Some(&v), 70).unwrap(),
            vec![member(1, 200)],
            "expired entries hide"
        );
        let mut v = v;
        for n in 10..(10 + MAX_MEMBERS as u8 + 5) {
            v = new_value(
                &join_members(&ch, Some(&v), member(n, 1000 + u64::from(n)), 50).unwrap(),
            );
        }
        let live = members(Some(&v), 50).unwrap();
        assert_eq!(live.len(), MAX_MEMBERS);
        assert!(
            !live.contains(&member(2, 60)),
            "the entry closest to expiry made room"
        );
        let v = new_value(&leave_members(&ch, Some(&v), &[40; 32], 50).unwrap());
        assert_eq!(members(Some(&v), 50).unwrap().len(), MAX_MEMBERS - 1);
    }

    #[test]
    fn plans_advance_one_epoch_at_a_time() {
        let ch = [1u8; 20];
        let p1 = Plan {
            epoch: 1,
            body: vec![1, 2, 3],
        };
        let v = new_value(&publish_plan(&ch, None, &p1).unwrap());
        assert_eq!(plan(Some(&v)).unwrap(), Some(p1));
        let stale = Plan {
            epoch: 1,
            body: vec![],
        };
        assert_eq!(
            publish_plan(&ch, Some(&v), &stale),
            Err(MetaError::StaleEpoch { stored: 1, got: 1 })
        );
        assert!(publish_plan(
            &ch,
            Some(&v),
            &Plan {
                epoch: 2,
                body: vec![]
            }
        )
        .is_ok());
    }

    #[test]
    fn malformed_values_are_reported() {
        assert_eq!(
            members(Some(&Value::Int(3)), 0),
            Err(MetaError::Malformed("membership sample"))
        );
        let junk = Value::List(vec![vec![0xff; 3]]);
        assert!(holders(Some(&junk), 0).is_err());
        assert!(plan(Some(&Value::Bytes(vec![0xff]))).is_err());
    }
}
