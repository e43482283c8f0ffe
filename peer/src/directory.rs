//! The swarm's directory in the overlay: a broadcaster registers its channel, viewers find the
//! channel's record and members there and register themselves (the overlay replaces a
//! central tracker; see `tracker_overlay::swarm`).

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::{debug, warn};
use tracker_overlay::coordinator::CoordinatorConfig;
use tracker_overlay::swarm::{self, Connectivity, Field, Holder, Member, PeerHint, Reach};
use tracker_overlay::{Abort, Phase, TxOp, Value};

use crate::exchange::{HOLDER_REFRESH, HOLDER_TTL, MAX_INDEX_HOLDERS};
use crate::identity::{ChannelId, PeerId};
use crate::nat::driver::Nat;
use crate::node::PlanPort;
use crate::overlay_net::OverlayHandle;
use crate::segment::SignedChannel;
use crate::wire::PeerAddr;

/// How long a membership entry lives without a refresh.
pub const MEMBER_TTL: Duration = Duration::from_secs(60);
/// How often members refresh their entry (and viewers look for new partners).
pub const REFRESH_EVERY: Duration = Duration::from_secs(15);
/// How soon a viewer first looks whether it holds something to announce in the holder index
/// (then twice as long each time it holds nothing yet, up to [`HOLDER_REFRESH`]), and how
/// soon it tries again after a failed announcement.
const FIRST_HOLDING_CHECK: Duration = Duration::from_secs(2);
/// How long a directory read keeps trying while the ring settles.
const READ_PATIENCE: Duration = Duration::from_secs(10);

/// Why the directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// The overlay could not run the transaction.
    #[error("overlay: {0}")]
    Overlay(#[from] Abort),
    /// The stored metadata is malformed.
    #[error("swarm metadata: {0}")]
    Meta(#[from] swarm::MetaError),
    /// No record for this channel in the overlay (yet).
    #[error("the channel is not registered in the overlay")]
    Unknown,
    /// The stored record is not a valid, signed record of this channel.
    #[error("the channel record in the overlay does not verify: {0}")]
    BadRecord(String),
}

fn now_unix_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn me_as_member(peer: PeerId, addr: SocketAddr, nat: Option<&Nat>) -> Member {
    // As classified by STUN, with the candidates and relay that dialling peers punch and
    // relay with; a node without traversal says it is reachable at its address.
    let (connectivity, reach) = match nat.map(Nat::record) {
        Some(record) => (record.connectivity, record.reach()),
        None => (Connectivity::Open, Reach::default()),
    };
    Member {
        peer: peer.0,
        addr,
        connectivity,
        reach,
        upload_kbps: 0,
        expires_unix_s: now_unix_s() + MEMBER_TTL.as_secs(),
    }
}

/// Whether a failed transaction may go through if simply run again: it raced with another
/// member, or the ring is still settling (a joining node is not in yet, replicas move).
fn transient(e: &Abort) -> bool {
    matches!(
        e,
        Abort::Mismatch { .. }
            | Abort::Conflict { .. }
            | Abort::NoQuorum { .. }
            | Abort::Timeout
            | Abort::NotJoined
    )
}

/// Reads the channel's record and membership sample in one transaction, again with
/// randomized backoff (50 ms doubling to 1 s) while the ring answers that it cannot yet, for
/// up to [`READ_PATIENCE`].
async fn read(
    overlay: &OverlayHandle,
    channel: ChannelId,
) -> Result<(Option<Value>, Option<Value>), DirectoryError> {
    let give_up = tokio::time::Instant::now() + READ_PATIENCE;
    let mut ceiling = Duration::from_millis(50);
    loop {
        let ops = vec![
            TxOp::Read(swarm::key(&channel.0, Field::Record)),
            TxOp::Read(swarm::key(&channel.0, Field::Members)),
        ];
        match overlay.transact(ops).await {
            Ok(mut values) => {
                let members = values.pop().flatten();
                let record = values.pop().flatten();
                return Ok((record, members));
            }
            Err(e) if transient(&e) && tokio::time::Instant::now() < give_up => {
                debug!(error = %e, "directory read did not go through; retrying");
                let pause = ceiling.mul_f64(0.5 + rand::random::<f64>() / 2.0);
                tokio::time::sleep(pause).await;
                ceiling = (ceiling * 2).min(Duration::from_secs(1));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Hands the NAT records that members publish in their entries to our traversal, so that
/// dialling one of them needs no read of its own.
fn learn(nat: Option<&Nat>, members: Option<&Value>) {
    if let (Some(nat), Ok(list)) = (nat, swarm::members(members, now_unix_s())) {
        nat.learn(&list);
    }
}

/// Stores the signed record (if `record` is given) and adds or refreshes `peer` in the
/// membership sample, retrying when another member changed the sample in between. With `nat`,
/// the entry carries its NAT class, candidates and relay (what dialling peers punch and relay
/// with), the same transaction publishes its NAT record on its own (for overlay peers outside
/// the channel), and the members read on the way teach `nat` theirs.
pub async fn register(
    overlay: &OverlayHandle,
    channel: ChannelId,
    record: Option<&SignedChannel>,
    peer: PeerId,
    addr: SocketAddr,
    nat: Option<&Nat>,
) -> Result<(), DirectoryError> {
    let signed = record.map(|r| postcard::to_stdvec(r).unwrap_or_default());
    let mut last = None;
    for attempt in 0..16u32 {
        if attempt > 0 {
            // Randomized exponential backoff, so that racing members spread out.
            let ceiling = 20u64 << attempt.min(6);
            tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % ceiling)).await;
        }
        let result = async {
            let (stored_record, members) = read(overlay, channel).await?;
            learn(nat, members.as_ref());
            let mut ops = Vec::new();
            if let Some(bytes) = &signed {
                if stored_record.as_ref() != Some(&Value::Bytes(bytes.clone())) {
                    let update =
                        swarm::publish_record(&channel.0, stored_record.as_ref(), bytes.clone())?;
                    ops.push(update.op);
                }
            }
            let me = me_as_member(peer, addr, nat);
            ops.push(swarm::join_members(&channel.0, members.as_ref(), me, now_unix_s())?.op);
            ops.extend(nat.map(Nat::publish_op));
            overlay.transact(ops).await?;
            Ok::<_, DirectoryError>(())
        }
        .await;
        match result {
            Ok(()) => return Ok(()),
            // Raced with another member, or the ring is still settling: try again.
            Err(DirectoryError::Overlay(e)) if transient(&e) => {
                debug!(attempt, error = %e, "directory update did not go through; retrying");
                last = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or(Abort::Timeout).into())
}

/// The channel's verified record and its live members other than `me`. A ring that cannot
/// answer yet (a node that has just joined) is asked again for a few seconds.
pub async fn find(
    overlay: &OverlayHandle,
    channel: ChannelId,
    me: PeerId,
) -> Result<(SignedChannel, Vec<PeerAddr>), DirectoryError> {
    find_teaching(overlay, channel, me, None).await
}

/// [`find`], handing the members' NAT records to `nat` on the way.
pub async fn find_teaching(
    overlay: &OverlayHandle,
    channel: ChannelId,
    me: PeerId,
    nat: Option<&Nat>,
) -> Result<(SignedChannel, Vec<PeerAddr>), DirectoryError> {
    let (record, members) = read(overlay, channel).await?;
    learn(nat, members.as_ref());
    let bytes = swarm::record(record.as_ref())?.ok_or(DirectoryError::Unknown)?;
    let signed: SignedChannel =
        postcard::from_bytes(&bytes).map_err(|e| DirectoryError::BadRecord(e.to_string()))?;
    signed
        .verify(channel)
        .map_err(|e| DirectoryError::BadRecord(e.to_string()))?;
    let peers = swarm::members(members.as_ref(), now_unix_s())?
        .into_iter()
        .filter(|m| m.peer != me.0)
        .map(|m| PeerAddr {
            id: PeerId(m.peer),
            addr: m.addr,
        })
        .collect();
    Ok((signed, peers))
}

/// Keeps `peer` registered as a member of `channel` until the overlay goes away; with
/// `on_members`, also hands the current members over on each round (a viewer's new partner
/// candidates).
pub async fn keep_registered(
    overlay: OverlayHandle,
    channel: ChannelId,
    record: Option<SignedChannel>,
    peer: PeerId,
    addr: SocketAddr,
    nat: Option<Nat>,
    on_members: Option<Box<dyn Fn(Vec<PeerAddr>) + Send + Sync>>,
) {
    loop {
        if let Err(e) = register(&overlay, channel, record.as_ref(), peer, addr, nat.as_ref()).await
        {
            warn!(error = %e, "cannot register in the overlay's directory");
        }
        if let Some(f) = &on_members {
            match find_teaching(&overlay, channel, peer, nat.as_ref()).await {
                Ok((_, members)) => f(members),
                Err(e) => debug!(error = %e, "directory lookup failed"),
            }
        }
        // Jittered, so that members that started together do not refresh in lockstep.
        let jitter = 0.75 + rand::random::<f64>() / 2.0;
        tokio::time::sleep(REFRESH_EVERY.mul_f64(jitter)).await;
        if overlay.status().await.is_none() {
            return;
        }
    }
}

/// On demand: the peers the channel's holder index lists as holders of media segment `seq`,
/// other than `me` (at most [`MAX_INDEX_HOLDERS`], the most recently refreshed first).
pub async fn find_holders(
    overlay: &OverlayHandle,
    channel: ChannelId,
    seq: u64,
    me: PeerId,
) -> Result<Vec<PeerAddr>, DirectoryError> {
    let key = swarm::holder_key(&channel.0, swarm::holder_bucket(seq));
    let value = read_one(overlay, TxOp::Read(key)).await?;
    let list = swarm::holders(value.as_ref(), now_unix_s())?;
    Ok(swarm::holders_of(&list, seq, &me.0, MAX_INDEX_HOLDERS)
        .into_iter()
        .map(PeerAddr::from)
        .collect())
}

/// On demand: puts `peer` (reachable at `addr`) into the holder index with the segment
/// `ranges` it holds, in every bucket the ranges touch. Each bucket is its own read and
/// test-and-set (a plain quorum read takes no lock, and one busy bucket holds up no other);
/// a test-and-set that finds another holder's write retries on what it found. Fails only
/// if some bucket could not be written after a few tries.
pub async fn announce_holding(
    overlay: &OverlayHandle,
    channel: ChannelId,
    peer: PeerId,
    addr: SocketAddr,
    ranges: Vec<(u64, u64)>,
) -> Result<(), DirectoryError> {
    let buckets = swarm::holder_buckets(&ranges);
    let me = Holder {
        peer: peer.0,
        addr,
        ranges,
        expires_unix_s: now_unix_s() + HOLDER_TTL.as_secs(),
    };
    let mut all_written = true;
    for bucket in buckets {
        let key = swarm::holder_key(&channel.0, bucket);
        let mut stored = read_one(overlay, TxOp::Read(key.clone())).await?;
        let mut written = false;
        for attempt in 0..6u32 {
            if attempt > 0 {
                let ceiling = 20u64 << attempt;
                tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % ceiling)).await;
            }
            let update = swarm::announce_holder(
                &channel.0,
                bucket,
                stored.as_ref(),
                me.clone(),
                now_unix_s(),
            )?;
            match overlay.transact(vec![update.op]).await {
                Ok(_) => {
                    written = true;
                    break;
                }
                // Another holder wrote the bucket meanwhile: try again on top of its write.
                Err(Abort::Mismatch { found, .. }) => stored = found,
                Err(e) if transient(&e) => {
                    stored = read_one(overlay, TxOp::Read(key.clone())).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        all_written &= written;
    }
    if all_written {
        Ok(())
    } else {
        Err(Abort::Timeout.into())
    }
}

/// Takes `peer`'s entry out of the holder index's buckets that `ranges` touch (a viewer that
/// leaves gracefully: others would otherwise keep dialling it until the entry lapses). One
/// try per bucket; what fails lapses by itself.
pub async fn withdraw_holding(
    overlay: &OverlayHandle,
    channel: ChannelId,
    peer: PeerId,
    ranges: &[(u64, u64)],
) {
    for bucket in swarm::holder_buckets(ranges) {
        let key = swarm::holder_key(&channel.0, bucket);
        let result = async {
            let stored = read_one(overlay, TxOp::Read(key)).await?;
            let update =
                swarm::leave_holder(&channel.0, bucket, stored.as_ref(), &peer.0, now_unix_s())?;
            overlay.transact(vec![update.op]).await?;
            Ok::<_, DirectoryError>(())
        }
        .await;
        if let Err(e) = result {
            debug!(bucket, error = %e, "holder entry left to lapse");
        }
    }
}

/// Keeps this node's entry in the channel's holder index fresh while it watches a film
/// (every [`HOLDER_REFRESH`], jittered), until the node stops; a viewer of a live channel
/// holds nothing to announce (`held_ranges` is empty) and only looks.
pub(crate) async fn keep_holding(
    overlay: OverlayHandle,
    channel: ChannelId,
    me: PeerId,
    addr: SocketAddr,
    node: PlanPort,
) {
    // Until the first entry is in, it looks every few seconds: a viewer that just started
    // holds its first segments within seconds, and others may seek there.
    let mut every = FIRST_HOLDING_CHECK;
    loop {
        let jitter = 0.75 + rand::random::<f64>() / 2.0;
        tokio::select! {
            () = tokio::time::sleep(every.mul_f64(jitter)) => {}
            // The node's shutdown waits for this task: end at once.
            () = node.closed() => return,
        }
        let Some(ranges) = node.held_ranges().await else {
            return; // The node stopped.
        };
        if ranges.is_empty() {
            // Nothing yet (or a live channel: never): look less often.
            every = (every * 2).min(HOLDER_REFRESH);
            continue;
        }
        // After a failure it tries again soon: two missed refreshes and the entry lapses.
        match announce_holding(&overlay, channel, me, addr, ranges).await {
            Ok(()) => every = HOLDER_REFRESH,
            Err(e) => {
                debug!(error = %e, "holder index not updated");
                every = FIRST_HOLDING_CHECK;
            }
        }
    }
}

/// Reads one key by itself (a plain quorum read that takes no lock, so plan readers never
/// hold up the coordinator's writes).
async fn read_one(overlay: &OverlayHandle, op: TxOp) -> Result<Option<Value>, Abort> {
    let mut values = overlay.transact(vec![op]).await?;
    Ok(values.pop().flatten())
}

/// This peer's entry of the channel's stored plan, with the plan's epoch: the header, then
/// the shard that holds the entry, each read alone. `Ok(None)` when no plan is stored or it
/// does not name the peer (it has not reported yet). A shard written by a newer plan
/// between the two reads is read again once, with the new header.
pub async fn read_plan(
    overlay: &OverlayHandle,
    channel: ChannelId,
    me: PeerId,
) -> Result<Option<(u64, PeerHint)>, DirectoryError> {
    let mut last = None;
    for _ in 0..2 {
        let header = read_one(overlay, TxOp::Read(swarm::key(&channel.0, Field::Plan))).await?;
        let Some(header) = swarm::plan_header(header.as_ref())? else {
            return Ok(None);
        };
        let shard = read_one(overlay, swarm::read_plan_for(&channel.0, &me.0, &header)).await?;
        match swarm::plan_for(&me.0, &header, shard.as_ref()) {
            Ok(entry) => return Ok(entry.map(|e| (header.epoch, e))),
            Err(e @ swarm::MetaError::StaleShard { .. }) => last = Some(e),
            Err(e) => return Err(e.into()),
        }
    }
    Err(last.map_or(DirectoryError::Unknown, DirectoryError::from))
}

/// Takes part in the optimizer's loop until the node stops: once a round sends the node's
/// QoS report to the channel's coordinator, then (half a round later) reads the node's entry
/// of the stored plan and, when its epoch is new, hands it to the node with the addresses
/// the membership records give for the peers it names.
pub(crate) async fn keep_planned(
    overlay: OverlayHandle,
    channel: ChannelId,
    me: PeerId,
    node: PlanPort,
) {
    let round = CoordinatorConfig::default().round;
    let mut applied = 0u64;
    // A random phase, so that the members of a channel do not report in lockstep.
    tokio::time::sleep(round.mul_f64(rand::random::<f64>() / 2.0)).await;
    loop {
        if node.stopped() {
            return;
        }
        let Some(status) = overlay.status().await else {
            return; // The overlay node stopped.
        };
        let member = status.phase == Phase::Member;
        if member {
            match node.qos_report().await {
                Some(report) => overlay.report(report),
                None => debug!("no QoS report yet: the channel is not verified"),
            }
        }
        tokio::time::sleep(round / 2).await;
        if member {
            match read_plan(&overlay, channel, me).await {
                Ok(Some((epoch, entry))) if epoch > applied => {
                    let addrs = match read_one(
                        &overlay,
                        TxOp::Read(swarm::key(&channel.0, Field::Members)),
                    )
                    .await
                    {
                        Ok(members) => swarm::members(members.as_ref(), now_unix_s())
                            .unwrap_or_default()
                            .into_iter()
                            .map(|m| PeerAddr {
                                id: PeerId(m.peer),
                                addr: m.addr,
                            })
                            .collect(),
                        Err(e) => {
                            debug!(error = %e, "members not read; the plan goes without addresses");
                            Vec::new()
                        }
                    };
                    debug!(epoch, tier = entry.tier, "new plan entry");
                    node.apply_plan(epoch, entry, addrs);
                    applied = epoch;
                }
                Ok(_) => {}
                Err(e) => debug!(error = %e, "plan not read"),
            }
        }
        tokio::time::sleep(round / 2).await;
    }
}
