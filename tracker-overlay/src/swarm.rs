//! Typed swarm metadata on top of the store: what replaces the central tracker.
//!
//! Per channel (its 20-byte id), these keys:
//!
//! - `record`: the broadcaster's signed channel record, as opaque bytes (the peer verifies the
//!   signature; the overlay only keeps the bytes);
//! - `members`: a bounded sample of current viewers ([`Member`]: address, connectivity class,
//!   punch candidates and relay ([`Reach`]), upload capacity, an expiry), refreshed by each
//!   member and pruned of expired entries;
//! - `vod/<bucket>`: which peers hold which segment ranges of an on-demand channel
//!   ([`Holder`]), one key per [`HOLDER_BUCKET`] segments of the film (at most
//!   [`MAX_HOLDERS`] entries each), so that a film watched by many has room for many holders
//!   and a look-up reads one key of a few kilobytes, not the whole film's;
//! - `plan`: the optimizer's current plan: a small [`PlanHeader`] (epoch, shard count, the
//!   epoch each shard was last written in) at this key and the peers' entries ([`PeerHint`])
//!   in [`PlanShard`]s at `plan/<i>` (split by id prefix, [`shard_of`], each under the store's
//!   value limit), written together by one transaction; a plan replaces the stored one only if
//!   its epoch is the next one, so two coordinators never both win a round. A viewer reads the
//!   header, then its own shard ([`read_plan_for`], [`plan_for`]), each by itself.
//!
//! Updates are read-then-test-and-set: the caller reads the current value, [`Update`] computes
//! the new one, and a test-and-set commits it only if nobody changed it in between (on
//! [`crate::Abort::Mismatch`] the caller reads again and retries).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::msg::MAX_TX_KEYS;
use crate::store::{Value, MAX_VALUE_LEN};
use crate::tx::TxOp;

/// The most members a channel's sample keeps.
pub const MAX_MEMBERS: usize = 64;
/// The most VOD holders one bucket of a film's holder index keeps.
pub const MAX_HOLDERS: usize = 128;
/// Media segments per bucket of the holder index.
pub const HOLDER_BUCKET: u64 = 64;
/// The most buckets one holder's entry goes into (each is written by a transaction of its
/// own).
pub const MAX_HOLDER_BUCKETS: usize = 16;

/// A channel id (the keyed BLAKE3 of the broadcaster's key, as `peer` computes it).
pub type ChannelKey = [u8; 20];

/// Which of a channel's keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// The signed channel record.
    Record,
    /// The membership sample.
    Members,
    /// The VOD holder index (its buckets are at [`holder_key`]).
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

/// The longest an entry may say it lives from now: a writer whose clock is far ahead (or a
/// hostile one) would otherwise keep its entry in a bucket for good.
pub const MAX_HOLDER_LIFETIME_S: u64 = 300;
/// The most ranges one holder entry names.
pub const MAX_HOLDER_RANGES: usize = 8;

impl Holder {
    /// Whether the entry is within its bounds: a few ranges, none reversed.
    pub fn is_valid(&self) -> bool {
        !self.ranges.is_empty()
            && self.ranges.len() <= MAX_HOLDER_RANGES
            && self.ranges.iter().all(|(a, b)| a <= b)
    }
}

/// The store key of bucket `bucket` of a channel's holder index (segments
/// `bucket * HOLDER_BUCKET ..` up to the next bucket).
pub fn holder_key(channel: &ChannelKey, bucket: u64) -> Vec<u8> {
    let mut k = key(channel, Field::Vod);
    k.push(b'/');
    k.extend_from_slice(bucket.to_string().as_bytes());
    k
}

/// The bucket of the holder index that lists holders of media segment `seq`.
pub fn holder_bucket(seq: u64) -> u64 {
    seq / HOLDER_BUCKET
}

/// The buckets a holder of `ranges` is listed in: every bucket its ranges touch, at most
/// [`MAX_HOLDER_BUCKETS`] (those of its first ranges).
pub fn holder_buckets(ranges: &[(u64, u64)]) -> Vec<u64> {
    let mut buckets = std::collections::BTreeSet::new();
    for (a, b) in ranges {
        for bucket in holder_bucket(*a)..=holder_bucket(*b.max(a)) {
            if buckets.len() >= MAX_HOLDER_BUCKETS {
                return buckets.into_iter().collect();
            }
            buckets.insert(bucket);
        }
    }
    buckets.into_iter().collect()
}

/// How a peer can be reached: its NAT class, as STUN classified it. The optimizer's own type,
/// so the class a member publishes is the constraint the optimizer plans with
/// ([`optimizer::Connectivity::direct_possible`] decides who can reach whom directly).
pub use optimizer::Connectivity;

/// A viewer in a channel's membership sample.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its peer id.
    pub peer: [u8; 32],
    /// Where it accepts connections.
    pub addr: SocketAddr,
    /// How it can be reached.
    pub connectivity: Connectivity,
    /// What a peer needs to punch a hole to it or relay to it, so that the directory read that
    /// finds a member is all a dialler needs.
    pub reach: Reach,
    /// Its measured upload capacity, kbit/s.
    pub upload_kbps: u32,
    /// When the entry lapses unless refreshed (Unix seconds).
    pub expires_unix_s: u64,
}

/// A member's punch candidates and relay (empty for a peer that needs no help: dial `addr`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reach {
    /// Its reflexive addresses (as STUN servers saw them), the one to try first first.
    pub reflexive: Vec<SocketAddr>,
    /// Its own addresses (reachable from its own network).
    pub local: Vec<SocketAddr>,
    /// The relay it keeps registered with: it carries punch signals to the member, and its
    /// traffic when no hole can be punched.
    pub relay: Option<SocketAddr>,
}

impl Reach {
    /// The most addresses of each kind an entry may carry; entries with more are left out.
    pub const MAX_ADDRS: usize = 4;

    /// Whether the entry is within its bounds.
    pub fn is_valid(&self) -> bool {
        self.reflexive.len() <= Self::MAX_ADDRS && self.local.len() <= Self::MAX_ADDRS
    }
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

/// Why stored metadata could not be used.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetaError {
    /// The stored value is not what this field holds.
    #[error("stored {0} is malformed")]
    Malformed(&'static str),
    /// The new value would exceed the store's value size limit.
    #[error("{0} too large for the store")]
    TooLarge(&'static str),
    /// A plan shard read does not belong to the header read with it (a newer plan was
    /// stored in between, or the shard count changed): read both again.
    #[error("plan shard {index} is not the one header epoch {epoch} names")]
    StaleShard {
        /// The shard's index.
        index: usize,
        /// The header's epoch.
        epoch: u64,
    },
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
    /// The value the update writes (what a simulated store that applies it at once keeps).
    pub fn new_value(&self) -> Option<&Value> {
        match &self.op {
            TxOp::TestAndSet { new, .. } | TxOp::Write(_, new) => Some(new),
            _ => None,
        }
    }

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

/// The live members of a sample (expired entries, and entries with more candidates than
/// [`Reach::MAX_ADDRS`], left out).
pub fn members(value: Option<&Value>, now_unix_s: u64) -> Result<Vec<Member>, MetaError> {
    let all: Vec<Member> = decode_list(value, "membership sample")?;
    Ok(all
        .into_iter()
        .filter(|m| m.expires_unix_s > now_unix_s && m.reach.is_valid())
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

/// The live holders in one bucket of a film's holder index. Each entry is read on its own:
/// one that does not decode, is out of bounds ([`Holder::is_valid`]) or claims to live longer
/// than [`MAX_HOLDER_LIFETIME_S`] is left out (and so dropped by the next write), instead of
/// making the bucket unreadable for everyone.
pub fn holders(value: Option<&Value>, now_unix_s: u64) -> Result<Vec<Holder>, MetaError> {
    let items = match value {
        None => return Ok(Vec::new()),
        Some(Value::List(items)) => items,
        Some(_) => return Err(MetaError::Malformed("VOD holder index")),
    };
    let latest = now_unix_s.saturating_add(MAX_HOLDER_LIFETIME_S);
    Ok(items
        .iter()
        .filter_map(|b| postcard::from_bytes::<Holder>(b).ok())
        .filter(|h| h.is_valid() && h.expires_unix_s > now_unix_s && h.expires_unix_s <= latest)
        .collect())
}

/// The holders in `list` whose ranges cover media segment `seq`, other than `me`: at most
/// `max`, the most recently refreshed first (likeliest to be there still, and to hold what
/// follows: in `sim`, `vod` seed 16 lost 0.002 of its continuity without this), and among
/// those refreshed in the same second in an order of `me`'s own (by the XOR of the ids' first
/// bytes), so that viewers looking for the same segment do not all dial the same few.
pub fn holders_of(list: &[Holder], seq: u64, me: &[u8; 32], max: usize) -> Vec<Holder> {
    let prefix = |id: &[u8; 32]| {
        let [a, b, c, d, e, f, g, h, ..] = *id;
        u64::from_be_bytes([a, b, c, d, e, f, g, h])
    };
    let mine = prefix(me);
    let mut found: Vec<&Holder> = list
        .iter()
        .filter(|h| &h.peer != me && h.ranges.iter().any(|(a, b)| (*a..=*b).contains(&seq)))
        .collect();
    found.sort_by_key(|h| {
        (
            std::cmp::Reverse(h.expires_unix_s),
            prefix(&h.peer) ^ mine,
            h.peer,
        )
    });
    found.into_iter().take(max).cloned().collect()
}

/// Adds or refreshes `me` in bucket `bucket` of the holder index (`read`: that bucket's
/// stored value).
pub fn announce_holder(
    channel: &ChannelKey,
    bucket: u64,
    read: Option<&Value>,
    me: Holder,
    now_unix_s: u64,
) -> Result<Update, MetaError> {
    if !me.is_valid() {
        return Err(MetaError::Malformed("VOD holder entry"));
    }
    let mut list = holders(read, now_unix_s)?;
    list.retain(|h| h.peer != me.peer);
    // The entries closest to lapsing make room: for the count, and for the size.
    list.sort_by_key(|h| std::cmp::Reverse(h.expires_unix_s));
    list.truncate(MAX_HOLDERS - 1);
    list.push(me);
    loop {
        let value = encode_list(&list);
        if value.check().is_ok() {
            return Update::new(holder_key(channel, bucket), read.cloned(), value);
        }
        if list.len() <= 1 {
            return Err(MetaError::TooLarge("VOD holder index"));
        }
        // `me` is last; the one before it lapses soonest.
        list.remove(list.len() - 2);
    }
}

/// Takes `peer`'s entry out of bucket `bucket` of the holder index (a viewer that leaves
/// gracefully).
pub fn leave_holder(
    channel: &ChannelKey,
    bucket: u64,
    read: Option<&Value>,
    peer: &[u8; 32],
    now_unix_s: u64,
) -> Result<Update, MetaError> {
    let mut list = holders(read, now_unix_s)?;
    list.retain(|h| &h.peer != peer);
    Update::new(
        holder_key(channel, bucket),
        read.cloned(),
        encode_list(&list),
    )
}

/// The most shards a plan is split into: one transaction writes the header and every shard
/// that changed, and a transaction touches at most [`MAX_TX_KEYS`] keys.
pub const MAX_PLAN_SHARDS: usize = MAX_TX_KEYS - 1;

/// The store key of shard `index` of a channel's plan (the header is at [`Field::Plan`]).
pub fn plan_shard_key(channel: &ChannelKey, index: usize) -> Vec<u8> {
    let mut k = key(channel, Field::Plan);
    k.push(b'/');
    k.extend_from_slice(index.to_string().as_bytes());
    k
}

/// Which of `shards` shards holds `peer`'s entry: peers are split by the first four bytes of
/// their id into equal ranges, so a shard is a contiguous run of the plan's id order and a
/// peer's shard moves only when the shard count changes.
pub fn shard_of(peer: &[u8; 32], shards: usize) -> usize {
    let prefix = u64::from(u32::from_be_bytes([peer[0], peer[1], peer[2], peer[3]]));
    ((prefix * shards.max(1) as u64) >> 32) as usize
}

/// The stored plan's header, at the channel's [`Field::Plan`] key: the epoch and where the
/// peers' entries are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanHeader {
    /// Rounds since the channel's first plan (1 for the first); each new plan takes the next.
    pub epoch: u64,
    /// The tier of peers that do not forward.
    pub leaf_tier: u8,
    /// Peers in the plan.
    pub peers: u32,
    /// Per shard, the epoch it was last written in (a round rewrites only the shards whose
    /// entries changed); the length is the shard count, 1..=[`MAX_PLAN_SHARDS`].
    pub shards: Vec<u64>,
}

/// Where one share of a peer's stream comes from, by peer id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartnerHint {
    /// The sender.
    pub from: optimizer::Upstream<[u8; 32]>,
    /// How many slots of the stream it sends.
    pub slots: u8,
}

/// What the plan says to one peer: the hints its swarm core takes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerHint {
    /// The peer.
    pub peer: [u8; 32],
    /// Its tier (1 pulls from the source).
    pub tier: u8,
    /// How far behind the live edge it should play (ms).
    pub target_lag_ms: u32,
    /// Upload slots the plan counts on.
    pub upload_slots: u16,
    /// Its partners, best first.
    pub partners: Vec<PartnerHint>,
}

/// One shard of a stored plan: the entries of the peers whose ids fall in its range.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanShard {
    /// The epoch it was written in.
    pub epoch: u64,
    /// Its index.
    pub index: u32,
    /// Its peers, sorted by id.
    pub peers: Vec<PeerHint>,
}

impl PlanShard {
    /// `peer`'s entry, if the shard holds one.
    pub fn plan_for(&self, peer: &[u8; 32]) -> Option<&PeerHint> {
        self.peers
            .binary_search_by(|h| h.peer.cmp(peer))
            .ok()
            .map(|i| &self.peers[i])
    }
}

/// The stored plan header.
pub fn plan_header(value: Option<&Value>) -> Result<Option<PlanHeader>, MetaError> {
    let bad = MetaError::Malformed("plan header");
    let header: PlanHeader = match value {
        None => return Ok(None),
        Some(Value::Bytes(b)) => postcard::from_bytes(b).map_err(|_| bad.clone())?,
        Some(_) => return Err(bad),
    };
    if header.epoch == 0
        || header.shards.is_empty()
        || header.shards.len() > MAX_PLAN_SHARDS
        || header.shards.iter().any(|&e| e == 0 || e > header.epoch)
    {
        return Err(bad);
    }
    Ok(Some(header))
}

/// Shard `index` of the plan whose header is `header`, checked against it: it must be the
/// shard the header names (same index, written in the epoch the header records for it) and
/// its peers must be sorted and belong to it.
pub fn plan_shard(
    header: &PlanHeader,
    index: usize,
    value: Option<&Value>,
) -> Result<PlanShard, MetaError> {
    let stale = MetaError::StaleShard {
        index,
        epoch: header.epoch,
    };
    let shard: PlanShard = match value {
        None => return Err(stale),
        Some(Value::Bytes(b)) => {
            postcard::from_bytes(b).map_err(|_| MetaError::Malformed("plan shard"))?
        }
        Some(_) => return Err(MetaError::Malformed("plan shard")),
    };
    if header.shards.get(index) != Some(&shard.epoch) || shard.index as usize != index {
        return Err(stale);
    }
    let count = header.shards.len();
    let sorted = shard.peers.windows(2).all(|w| w[0].peer < w[1].peer);
    if !sorted
        || shard
            .peers
            .iter()
            .any(|h| shard_of(&h.peer, count) != index)
    {
        return Err(MetaError::Malformed("plan shard"));
    }
    Ok(shard)
}

/// The operation that reads `peer`'s shard of the plan whose header is `header` (read first,
/// by itself: a transaction of one read is a plain quorum read that takes no lock, so viewers
/// never hold up the coordinator's writes). Pass the value to [`plan_for`].
pub fn read_plan_for(channel: &ChannelKey, peer: &[u8; 32], header: &PlanHeader) -> TxOp {
    TxOp::Read(plan_shard_key(channel, shard_of(peer, header.shards.len())))
}

/// `peer`'s entry (`None` if the plan does not name it: it has not reported yet) in the shard
/// read by [`read_plan_for`]. [`MetaError::StaleShard`] means a newer plan was stored between
/// the two reads: read the header again.
pub fn plan_for(
    peer: &[u8; 32],
    header: &PlanHeader,
    shard: Option<&Value>,
) -> Result<Option<PeerHint>, MetaError> {
    let index = shard_of(peer, header.shards.len());
    let shard = plan_shard(header, index, shard)?;
    Ok(shard.plan_for(peer).cloned())
}

/// Stores plan `next` with the shards that changed: a test-and-set of the header read as
/// `read_header` (so only the next epoch wins, and two coordinators never both store one)
/// and a write of each shard, all in one transaction. Every shard `next` records as written
/// in its own epoch must be among `written`. A malformed stored header counts as epoch 0: it
/// is replaced (still only if nobody changed it in between).
pub fn publish_plan(
    channel: &ChannelKey,
    read_header: Option<&Value>,
    next: &PlanHeader,
    written: &[PlanShard],
) -> Result<Vec<Update>, MetaError> {
    let stored = plan_header(read_header)
        .ok()
        .flatten()
        .map_or(0, |h| h.epoch);
    if next.epoch != stored + 1 {
        return Err(MetaError::StaleEpoch {
            stored,
            got: next.epoch,
        });
    }
    if next.shards.is_empty() || next.shards.len() > MAX_PLAN_SHARDS {
        return Err(MetaError::TooLarge("plan"));
    }
    let fresh = next.shards.iter().filter(|&&e| e == next.epoch).count();
    let complete = written.len() == fresh
        && written.iter().all(|s| {
            s.epoch == next.epoch && next.shards.get(s.index as usize) == Some(&next.epoch)
        });
    if !complete || next.shards.iter().any(|&e| e == 0 || e > next.epoch) {
        return Err(MetaError::Malformed("plan shards"));
    }
    let header = postcard::to_stdvec(next).map_err(|_| MetaError::Malformed("plan header"))?;
    let mut ops = vec![Update::new(
        key(channel, Field::Plan),
        read_header.cloned(),
        Value::Bytes(header),
    )?];
    for shard in written {
        let bytes = postcard::to_stdvec(shard).map_err(|_| MetaError::Malformed("plan shard"))?;
        if bytes.len() > MAX_VALUE_LEN {
            return Err(MetaError::TooLarge("plan shard"));
        }
        ops.push(Update {
            op: TxOp::Write(
                plan_shard_key(channel, shard.index as usize),
                Value::Bytes(bytes),
            ),
        });
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(n: u8, expires: u64) -> Member {
        Member {
            peer: [n; 32],
            addr: SocketAddr::from(([10, 0, 0, n], 4433)),
            connectivity: Connectivity::FullCone,
            reach: Reach {
                reflexive: vec![SocketAddr::from(([203, 0, 113, n], 4433))],
                local: vec![SocketAddr::from(([10, 0, 0, n], 4433))],
                relay: Some(SocketAddr::from(([198, 51, 100, 1], 4433))),
            },
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

    fn holder(n: u8, ranges: Vec<(u64, u64)>, expires: u64) -> Holder {
        Holder {
            peer: [n; 32],
            addr: SocketAddr::from(([10, 0, 0, n], 4433)),
            ranges,
            expires_unix_s: expires,
        }
    }

    #[test]
    fn holders_announce_refresh_expire_and_are_found_by_segment() {
        let ch = [3u8; 20];
        let v =
            new_value(&announce_holder(&ch, 0, None, holder(1, vec![(0, 99)], 100), 50).unwrap());
        let v = new_value(
            &announce_holder(
                &ch,
                0,
                Some(&v),
                holder(2, vec![(50, 60), (300, 400)], 120),
                50,
            )
            .unwrap(),
        );
        // A refresh replaces the entry, ranges and all.
        let v = new_value(
            &announce_holder(&ch, 0, Some(&v), holder(1, vec![(0, 140)], 130), 50).unwrap(),
        );
        let list = holders(Some(&v), 50).unwrap();
        assert_eq!(list.len(), 2);
        let ids = |found: Vec<Holder>| found.iter().map(|h| h.peer[0]).collect::<Vec<_>>();
        assert_eq!(
            ids(holders_of(&list, 55, &[9; 32], 8)),
            vec![1, 2],
            "freshest first"
        );
        // Refreshed in the same second: in an order of the asker's own.
        let same: Vec<Holder> = [1, 2].map(|n| holder(n, vec![(0, 9)], 100)).into();
        assert_eq!(ids(holders_of(&same, 5, &[9; 32], 8)), vec![1, 2]);
        assert_eq!(ids(holders_of(&same, 5, &[3; 32], 8)), vec![2, 1]);
        assert_eq!(ids(holders_of(&list, 120, &[9; 32], 8)), vec![1]);
        assert_eq!(ids(holders_of(&list, 350, &[9; 32], 8)), vec![2]);
        assert!(
            holders_of(&list, 200, &[9; 32], 8).is_empty(),
            "a gap is held by nobody"
        );
        assert_eq!(
            ids(holders_of(&list, 55, &[1; 32], 8)),
            vec![2],
            "not the asker itself"
        );
        assert_eq!(
            ids(holders_of(&list, 55, &[9; 32], 1)),
            vec![1],
            "at most max"
        );
        // Past its expiry an entry is gone; one that leaves is gone at once.
        assert_eq!(ids(holders(Some(&v), 125).unwrap()), vec![1]);
        let left = new_value(&leave_holder(&ch, 0, Some(&v), &[1; 32], 50).unwrap());
        assert_eq!(ids(holders(Some(&left), 50).unwrap()), vec![2]);
        // The index stays bounded: the entries closest to expiry make room.
        let mut v = v;
        for n in 10..(10 + MAX_HOLDERS as u8 + 3) {
            v = new_value(
                &announce_holder(
                    &ch,
                    0,
                    Some(&v),
                    holder(n, vec![(0, 9)], 200 + u64::from(n)),
                    50,
                )
                .unwrap(),
            );
        }
        let list = holders(Some(&v), 50).unwrap();
        assert_eq!(list.len(), MAX_HOLDERS);
        let mut kept: Vec<u8> = list.iter().map(|h| h.peer[0]).collect();
        kept.sort_unstable();
        assert_eq!(kept, (13..(13 + MAX_HOLDERS as u8)).collect::<Vec<_>>());
    }

    #[test]
    fn entries_out_of_bounds_or_undecodable_are_left_out_not_fatal() {
        let good = holder(1, vec![(0, 9)], 100);
        let far_future = holder(2, vec![(0, 9)], 50 + MAX_HOLDER_LIFETIME_S + 1);
        let reversed = holder(3, vec![(9, 0)], 100);
        let too_many = holder(4, (0..9).map(|i| (i * 10, i * 10 + 1)).collect(), 100);
        let mut items: Vec<Vec<u8>> = [&good, &far_future, &reversed, &too_many]
            .iter()
            .map(|h| postcard::to_stdvec(h).unwrap())
            .collect();
        items.push(vec![0xff; 7]);
        let v = Value::List(items);
        assert_eq!(holders(Some(&v), 50).unwrap(), vec![good.clone()]);
        // A writer rewrites the bucket without them.
        let me = holder(5, vec![(3, 4)], 110);
        let v = new_value(&announce_holder(&[3; 20], 0, Some(&v), me.clone(), 50).unwrap());
        assert_eq!(holders(Some(&v), 50).unwrap(), vec![good, me]);
        // Its own entry must be in bounds.
        assert!(announce_holder(&[3; 20], 0, None, holder(6, vec![], 100), 50).is_err());
        assert!(holders(Some(&Value::Bytes(vec![1])), 50).is_err());
    }

    #[test]
    fn a_holder_is_listed_in_every_bucket_its_ranges_touch() {
        let b = HOLDER_BUCKET;
        assert_eq!(holder_buckets(&[(0, 0)]), vec![0]);
        assert_eq!(holder_buckets(&[(b - 1, b)]), vec![0, 1]);
        assert_eq!(
            holder_buckets(&[(5, 6), (3 * b, 3 * b + 2), (10, 12)]),
            vec![0, 3]
        );
        assert_eq!(
            holder_buckets(&[(0, 1000 * b)]),
            (0..MAX_HOLDER_BUCKETS as u64).collect::<Vec<_>>()
        );
        assert_eq!(holder_buckets(&[(0, u64::MAX)]).len(), MAX_HOLDER_BUCKETS);
        assert_eq!(
            holder_buckets(&[(2 * b, b)]),
            vec![2],
            "a reversed range is its start"
        );
        // The cap counts distinct buckets: ranges within one bucket do not use it up.
        let mut ranges: Vec<(u64, u64)> = (0..6).map(|i| (i * 10, i * 10 + 5)).collect();
        ranges.push((b, 20 * b));
        assert_eq!(
            holder_buckets(&ranges),
            (0..MAX_HOLDER_BUCKETS as u64).collect::<Vec<_>>()
        );
        assert_eq!(holder_bucket(b + 3), 1);
        let ch = [3u8; 20];
        assert_ne!(holder_key(&ch, 1), holder_key(&ch, 10));
        assert!(holder_key(&ch, 2).starts_with(&key(&ch, Field::Vod)));
    }

    fn hint(first: u8) -> PeerHint {
        let mut peer = [0u8; 32];
        peer[0] = first;
        PeerHint {
            peer,
            tier: 1,
            target_lag_ms: 1500,
            upload_slots: 4,
            partners: vec![PartnerHint {
                from: optimizer::Upstream::Source,
                slots: 4,
            }],
        }
    }

    fn value_of(u: &Update) -> Value {
        match &u.op {
            TxOp::TestAndSet { new, .. } | TxOp::Write(_, new) => new.clone(),
            other => panic!("not a write: {other:?}"),
        }
    }

    #[test]
    fn plans_advance_one_epoch_at_a_time_and_viewers_find_their_shard() {
        let ch = [1u8; 20];
        // Two shards: ids below 0x80.. in shard 0, the rest in shard 1.
        let header = PlanHeader {
            epoch: 1,
            leaf_tier: 2,
            peers: 2,
            shards: vec![1, 1],
        };
        let shards = vec![
            PlanShard {
                epoch: 1,
                index: 0,
                peers: vec![hint(0x10)],
            },
            PlanShard {
                epoch: 1,
                index: 1,
                peers: vec![hint(0x90)],
            },
        ];
        assert_eq!(
            publish_plan(&ch, None, &header, &shards[..1]),
            Err(MetaError::Malformed("plan shards")),
            "a shard the header says was written must be written"
        );
        let ops = publish_plan(&ch, None, &header, &shards).unwrap();
        assert_eq!(ops.len(), 3);
        let (h, s0, s1) = (value_of(&ops[0]), value_of(&ops[1]), value_of(&ops[2]));
        assert_eq!(plan_header(Some(&h)).unwrap(), Some(header.clone()));
        let me = hint(0x90).peer;
        assert_eq!(
            read_plan_for(&ch, &me, &header),
            TxOp::Read(plan_shard_key(&ch, 1))
        );
        assert_eq!(plan_for(&me, &header, Some(&s1)).unwrap(), Some(hint(0x90)));
        assert_eq!(plan_for(&[0xff; 32], &header, Some(&s1)).unwrap(), None);
        assert!(matches!(
            plan_for(&me, &header, Some(&s0)),
            Err(MetaError::StaleShard { .. } | MetaError::Malformed(_))
        ));
        // Epoch 2 rewrites shard 1 only; shard 0 keeps epoch 1.
        let next = PlanHeader {
            epoch: 2,
            shards: vec![1, 2],
            ..header.clone()
        };
        let s1b = PlanShard {
            epoch: 2,
            index: 1,
            peers: vec![],
        };
        assert_eq!(
            publish_plan(&ch, Some(&h), &header, &shards),
            Err(MetaError::StaleEpoch { stored: 1, got: 1 })
        );
        let ops = publish_plan(&ch, Some(&h), &next, std::slice::from_ref(&s1b)).unwrap();
        assert_eq!(ops.len(), 2);
        let h2 = plan_header(Some(&value_of(&ops[0]))).unwrap().unwrap();
        assert_eq!(
            plan_for(&me, &h2, Some(&s1)),
            Err(MetaError::StaleShard { index: 1, epoch: 2 }),
            "the old shard 1 does not belong to epoch 2"
        );
        assert_eq!(
            plan_for(&hint(0x10).peer, &h2, Some(&s0)).unwrap(),
            Some(hint(0x10)),
            "the unchanged shard 0 still belongs to epoch 2"
        );
    }

    #[test]
    fn shards_split_the_id_space_in_order() {
        let mut last = 0;
        for first in 0..=255u8 {
            let s = shard_of(&hint(first).peer, 7);
            assert!(s >= last && s < 7);
            last = s;
        }
        assert_eq!(last, 6);
        assert_eq!(shard_of(&[0xff; 32], 1), 0);
        assert_eq!(shard_of(&[0xff; 32], 0), 0, "no shard count behaves as one");
    }

    #[test]
    fn members_carry_their_candidates_and_oversized_entries_are_left_out() {
        let ch = [9u8; 20];
        let v = new_value(&join_members(&ch, None, member(1, 100), 50).unwrap());
        let mut greedy = member(2, 100);
        greedy.reach.local = vec![SocketAddr::from(([10, 0, 0, 2], 1)); Reach::MAX_ADDRS + 1];
        let v = new_value(&join_members(&ch, Some(&v), greedy, 50).unwrap());
        let live = members(Some(&v), 50).unwrap();
        assert_eq!(
            live,
            vec![member(1, 100)],
            "the candidates survive the store"
        );
        assert_eq!(live[0].reach.relay, member(1, 0).reach.relay);
    }

    #[test]
    fn malformed_values_are_reported() {
        assert_eq!(
            members(Some(&Value::Int(3)), 0),
            Err(MetaError::Malformed("membership sample"))
        );
        // A holder index that is not a list is malformed; a bad entry in one is skipped
        // (`entries_out_of_bounds_or_undecodable_are_left_out_not_fatal`).
        assert!(holders(Some(&Value::Int(3)), 0).is_err());
        let junk = Value::List(vec![vec![0xff; 3]]);
        assert_eq!(holders(Some(&junk), 0), Ok(Vec::new()));
        assert!(plan_header(Some(&Value::Bytes(vec![0xff]))).is_err());
        let zero_epoch = PlanHeader {
            epoch: 0,
            leaf_tier: 1,
            peers: 0,
            shards: vec![0],
        };
        let bytes = postcard::to_stdvec(&zero_epoch).unwrap();
        assert!(plan_header(Some(&Value::Bytes(bytes))).is_err());
    }
}
