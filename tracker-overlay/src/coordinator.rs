//! The self-managed optimizer loop: the node responsible for a channel's plan key coordinates
//! that channel.
//!
//! # How it runs
//!
//! - **Reports.** Every peer of a channel (viewers and the broadcaster) sends a [`QosReport`]
//!   every round with [`send_report`]: one routed, best-effort overlay message
//!   ([`OverlayNode::deliver_to`]) to [`coordinator_key`], the position of the channel's plan
//!   header. Reports are soft state: only the coordinator needs them, each replaces the last,
//!   and a lost one is replaced a round later. Storing them instead would cost a transaction
//!   per report on one hot key (every viewer's test-and-set would conflict with the others'),
//!   or a key per viewer that the coordinator would have to find and read every round.
//! - **Who coordinates.** Whichever node the reports reach: the routed message is delivered
//!   to the node responsible for the key, which hands it to [`Coordinators`]; that creates the
//!   channel's [`Coordinator`] state on the first report. A coordinator that finds its node no
//!   longer responsible (a node joined in front of it) forgets what it knew of the store and
//!   waits; one that hears no report for a while forgets the channel.
//! - **Rounds.** A responsible coordinator first reads the stored plan (header, then every
//!   shard), then every [`CoordinatorConfig::round`] runs [`optimizer::plan`] over the live
//!   reports with the previous plan and stores the result as epoch + 1 by one transaction
//!   ([`swarm::publish_plan`]: a test-and-set of the header and a write of each changed
//!   shard). Any failed or uncertain transaction makes it read the store again before the next
//!   round, so a coordinator never plans from a plan that is not the stored one.
//! - **Takeover.** When the coordinator's node crashes, its successor becomes responsible for
//!   the key once the ring has repaired; the reports of the next round reach it, it reads the
//!   stored plan and continues with the next epoch. It plans as soon as the reports cover
//!   [`CoordinatorConfig::takeover_coverage`] of the stored plan's peers (or a round after the
//!   first report, whichever comes first), so peers that have not reported yet are not dropped
//!   from the plan. Two nodes that both believe they are responsible (during a ring change)
//!   both try; the header's test-and-set lets at most one of them store each epoch.
//!
//! # Call contract
//!
//! Sans-IO, like [`OverlayNode`], and layered on it: every input takes the node the
//! coordinators run on, and they start transactions on it themselves.
//! - Feed every [`crate::Event::Delivered`] to [`Coordinators::handle_delivered`] and every
//!   [`crate::Event::TxDone`] to [`Coordinators::handle_tx_done`] (it answers whether the
//!   transaction was its own).
//! - Call [`Coordinators::handle_timeout`] when [`Coordinators::poll_timeout`] has come.
//! - After any input, drain the node's outputs and [`Coordinators::poll_event`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use optimizer::{Coord, PeerReport, Plan, Snapshot, SourceReport, Upstream};
use rustc_hash::FxHashMap as HashMap;
use serde::{Deserialize, Serialize};

use crate::id::RingId;
use crate::node::{OverlayNode, Phase};
use crate::store::{Value, MAX_VALUE_LEN};
use crate::swarm::{
    self, ChannelKey, Field, MetaError, PartnerHint, PeerHint, PlanHeader, PlanShard,
    MAX_PLAN_SHARDS,
};
use crate::tx::{Abort, TxOp};

/// The first byte of a delivered payload that is a [`QosReport`].
pub const REPORT_TAG: u8 = 0x51;
/// The most current partners a report may name.
pub const MAX_REPORT_PARTNERS: usize = 64;

/// The position whose responsible node coordinates `channel`: its plan header's key.
pub fn coordinator_key(channel: &ChannelKey) -> RingId {
    RingId::of_key(&swarm::key(channel, Field::Plan))
}

/// Sends `report` to the channel's coordinator (best effort; send one every round).
pub fn send_report(node: &mut OverlayNode, now: Instant, report: &QosReport) -> bool {
    node.deliver_to(now, coordinator_key(&report.channel), report.encode())
}

/// What a reporting peer is to its channel.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Role {
    /// A viewer.
    Viewer,
    /// The broadcaster.
    Source {
        /// The stream's bitrate (bit/s).
        bitrate_bps: u64,
    },
}

/// One peer's quality-of-service report: what the optimizer needs to know about it. The peer
/// is the report's sender (the routed message's origin).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QosReport {
    /// The channel.
    pub channel: ChannelKey,
    /// Viewer or broadcaster.
    pub role: Role,
    /// Upload capacity it can give to the swarm (bit/s).
    pub upload_bps: u64,
    /// What it must download (bit/s; 0 for the broadcaster).
    pub need_bps: u64,
    /// Its network coordinate (Vivaldi).
    pub coord: Coord,
    /// Its NAT class.
    pub connectivity: optimizer::Connectivity,
    /// How far behind the live edge it plays (ms); `None` while it joins.
    pub lag_ms: Option<u32>,
    /// Share of segments played on time recently, 0..=1.
    pub continuity: f32,
    /// The peers it is connected to now, at most [`MAX_REPORT_PARTNERS`].
    pub partners: Vec<[u8; 32]>,
}

/// Why a delivered payload is not a usable report.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// The payload is for another application.
    #[error("not a QoS report")]
    NotAReport,
    /// The payload is not a well-formed report.
    #[error("malformed QoS report")]
    Malformed,
    /// A field is out of bounds.
    #[error("QoS report out of bounds: {0}")]
    OutOfBounds(&'static str),
    /// The report was routed to a position that is not its channel's coordinator key.
    #[error("QoS report delivered at the wrong key")]
    WrongKey,
}

impl QosReport {
    /// The payload: [`REPORT_TAG`], then postcard.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain data into a Vec cannot fail; an empty report is rejected.
        postcard::to_extend(self, vec![REPORT_TAG]).unwrap_or_default()
    }

    /// Decodes and checks a payload.
    pub fn decode(payload: &[u8]) -> Result<Self, ReportError> {
        match payload.split_first() {
            Some((&REPORT_TAG, body)) => {
                let r: QosReport =
                    postcard::from_bytes(body).map_err(|_| ReportError::Malformed)?;
                if r.partners.len() > MAX_REPORT_PARTNERS {
                    return Err(ReportError::OutOfBounds("partners"));
                }
                let c = r.coord;
                if !(c.x.is_finite() && c.y.is_finite() && c.height.is_finite()) {
                    return Err(ReportError::OutOfBounds("coordinate"));
                }
                if !r.continuity.is_finite() {
                    return Err(ReportError::OutOfBounds("continuity"));
                }
                if let Role::Source { bitrate_bps: 0 } = r.role {
                    return Err(ReportError::OutOfBounds("bitrate"));
                }
                Ok(r)
            }
            _ => Err(ReportError::NotAReport),
        }
    }
}

/// How coordinators work.
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    /// Time between two plans (and between two reports of a peer).
    pub round: Duration,
    /// How often a coordinator checks whether its node is still (or has become) responsible
    /// and whether its load of the stored plan needs retrying.
    pub check_every: Duration,
    /// A report older than this is left out of the snapshot (its peer left or lost contact).
    pub report_ttl: Duration,
    /// A channel without any report for this long is forgotten.
    pub idle_after: Duration,
    /// A coordinator that took over a stored plan plans once reports cover this share of its
    /// peers (or a round after its first report).
    pub takeover_coverage: f64,
    /// Shards are sized for this many encoded bytes (below the store's value limit, so that
    /// a plan that grows a little still fits without resharding).
    pub shard_target_bytes: usize,
    /// The most channels one node coordinates (reports for more are dropped).
    pub max_channels: usize,
    /// The most peers one channel keeps reports of.
    pub max_peers: usize,
    /// The optimizer's settings.
    pub optimizer: optimizer::Config,
    /// Seed of the random back-off after a lost race (give each node its own).
    pub seed: u64,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            round: Duration::from_secs(5),
            check_every: Duration::from_millis(500),
            report_ttl: Duration::from_secs(16),
            idle_after: Duration::from_secs(60),
            takeover_coverage: 0.8,
            shard_target_bytes: 48 * 1024,
            max_channels: 1024,
            max_peers: 100_000,
            optimizer: optimizer::Config::default(),
            seed: 0,
        }
    }
}

/// What the coordinators report to the application.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum CoordEvent {
    /// This node stored a plan.
    PlanStored {
        /// The channel.
        channel: ChannelKey,
        /// Its epoch.
        epoch: u64,
        /// Peers in it.
        peers: usize,
        /// Its shard count.
        shards: usize,
        /// Shards written this round (the others did not change).
        written: usize,
        /// Bytes of the shards written (encoded).
        written_bytes: usize,
        /// The largest shard written (encoded bytes).
        max_shard_bytes: usize,
        /// Edges of the previous plan the round replaced (within the move budget).
        moves: usize,
        /// Whether this plan continued a plan another node stored.
        took_over: bool,
    },
    /// This node became responsible for a channel and read its stored plan.
    Loaded {
        /// The channel.
        channel: ChannelKey,
        /// The stored epoch (0: none yet).
        epoch: u64,
        /// Peers in the stored plan.
        peers: usize,
    },
    /// This node is no longer responsible for a channel.
    Resigned {
        /// The channel.
        channel: ChannelKey,
    },
    /// A plan could not be stored: another coordinator stored that epoch, or the transaction
    /// failed. The coordinator reads the store again before its next round.
    PublishFailed {
        /// The channel.
        channel: ChannelKey,
        /// The epoch it tried.
        epoch: u64,
        /// Why.
        cause: Abort,
    },
    /// The stored plan could not be used (the coordinator continues its epochs without it,
    /// from scratch).
    BadStoredPlan {
        /// The channel.
        channel: ChannelKey,
        /// What was wrong.
        error: MetaError,
    },
    /// The optimizer or the plan's encoding failed this round.
    PlanFailed {
        /// The channel.
        channel: ChannelKey,
        /// Why.
        error: String,
    },
}

/// What a coordinator knows of the stored plan.
#[derive(Clone, Debug)]
struct Stored {
    /// The header's value as read or written (the test-and-set's expectation).
    header_value: Option<Value>,
    /// The header, if well formed.
    header: Option<PlanHeader>,
    /// Every shard of that header (empty if none or unreadable).
    shards: Vec<PlanShard>,
    /// The plan they make up.
    plan: Option<Plan<[u8; 32]>>,
}

impl Stored {
    fn epoch(&self) -> u64 {
        self.header.as_ref().map_or(0, |h| h.epoch)
    }
}

/// A transaction a coordinator waits for.
enum Pending {
    ReadHeader,
    ReadShards {
        header_value: Option<Value>,
        header: PlanHeader,
    },
    Publish {
        stored: Box<Stored>,
        written: usize,
        written_bytes: usize,
        max_shard_bytes: usize,
        moves: usize,
    },
}

/// One channel's coordination state on this node.
pub struct Coordinator {
    channel: ChannelKey,
    pos: RingId,
    source: Option<([u8; 32], Instant, QosReport)>,
    reports: HashMap<[u8; 32], (Instant, QosReport)>,
    last_report: Instant,
    first_report: Instant,
    stored: Option<Stored>,
    /// Whether the stored plan was loaded from the store (not written by this node since).
    took_over: bool,
    /// Whether it may plan before the round is up (it just became responsible and its
    /// reports cover the stored plan's peers).
    early: bool,
    pending: Option<(u64, Pending)>,
    next_check: Instant,
    next_round: Instant,
    responsible: bool,
}

impl Coordinator {
    fn new(now: Instant, channel: ChannelKey, cfg: &CoordinatorConfig) -> Self {
        Self {
            channel,
            pos: coordinator_key(&channel),
            source: None,
            reports: HashMap::default(),
            last_report: now,
            first_report: now,
            stored: None,
            took_over: false,
            early: false,
            pending: None,
            next_check: now,
            next_round: now + cfg.round,
            responsible: false,
        }
    }

    /// The channel.
    pub fn channel(&self) -> &ChannelKey {
        &self.channel
    }

    /// The epoch of the plan this coordinator knows is stored (0: none, or not loaded).
    pub fn epoch(&self) -> u64 {
        self.stored.as_ref().map_or(0, Stored::epoch)
    }

    /// Peers with a live report.
    pub fn reporting(&self) -> usize {
        self.reports.len()
    }

    fn report(&mut self, now: Instant, peer: [u8; 32], report: QosReport, max_peers: usize) {
        if self.reports.is_empty() && self.source.is_none() {
            self.first_report = now;
        }
        self.last_report = now;
        match report.role {
            Role::Source { .. } => {
                self.reports.remove(&peer);
                self.source = Some((peer, now, report));
            }
            Role::Viewer => {
                if self.source.as_ref().is_some_and(|(s, _, _)| *s == peer) {
                    self.source = None;
                }
                if self.reports.len() < max_peers || self.reports.contains_key(&peer) {
                    self.reports.insert(peer, (now, report));
                }
            }
        }
    }

    /// The snapshot of the live reports, if the broadcaster reported.
    fn snapshot(&mut self, now: Instant, ttl: Duration) -> Option<Snapshot<[u8; 32]>> {
        self.reports
            .retain(|_, (at, _)| now.duration_since(*at) <= ttl);
        let (source_id, at, source) = self.source.as_ref()?;
        if now.duration_since(*at) > ttl {
            return None;
        }
        snapshot_of(
            source_id,
            source,
            self.reports.iter().map(|(id, (_, r))| (id, r)),
        )
    }

    /// Whether a coordinator that took over has heard from enough of the stored plan's peers.
    fn covered(&self, share: f64) -> bool {
        let Some(plan) = self.stored.as_ref().and_then(|s| s.plan.as_ref()) else {
            return false;
        };
        if plan.peers.is_empty() {
            return true;
        }
        let heard = plan
            .peers
            .iter()
            .filter(|p| self.reports.contains_key(&p.id))
            .count();
        heard as f64 >= share * plan.peers.len() as f64
    }
}

/// The coordinators one node runs: one per channel whose reports reach it. See the module
/// docs for the call contract.
pub struct Coordinators {
    cfg: CoordinatorConfig,
    channels: HashMap<ChannelKey, Coordinator>,
    txs: HashMap<u64, ChannelKey>,
    events: VecDeque<CoordEvent>,
    rng: u64,
}

impl Coordinators {
    /// No channel yet.
    pub fn new(cfg: CoordinatorConfig) -> Self {
        Self {
            rng: cfg.seed,
            cfg,
            channels: HashMap::default(),
            txs: HashMap::default(),
            events: VecDeque::new(),
        }
    }

    /// The channel's coordinator on this node, if it has heard of the channel.
    pub fn channel(&self, channel: &ChannelKey) -> Option<&Coordinator> {
        self.channels.get(channel)
    }

    /// Whether this node is coordinating `channel` now (responsible, and knows the stored
    /// plan).
    pub fn is_coordinating(&self, channel: &ChannelKey) -> bool {
        self.channels
            .get(channel)
            .is_some_and(|c| c.responsible && c.stored.is_some())
    }

    /// A message delivered to this node ([`crate::Event::Delivered`]). A payload that is not
    /// a report is left alone (`Err(NotAReport)`); a bad report is dropped with the error.
    pub fn handle_delivered(
        &mut self,
        now: Instant,
        key: RingId,
        origin: [u8; 32],
        payload: &[u8],
        node: &mut OverlayNode,
    ) -> Result<(), ReportError> {
        let report = QosReport::decode(payload)?;
        if coordinator_key(&report.channel) != key {
            return Err(ReportError::WrongKey);
        }
        let channel = report.channel;
        if !self.channels.contains_key(&channel) {
            if self.channels.len() >= self.cfg.max_channels {
                return Ok(());
            }
            self.channels
                .insert(channel, Coordinator::new(now, channel, &self.cfg));
        }
        if let Some(c) = self.channels.get_mut(&channel) {
            c.report(now, origin, report, self.cfg.max_peers);
        }
        self.step(now, &channel, node);
        Ok(())
    }

    /// A transaction finished ([`crate::Event::TxDone`]); `false` if it was not one of ours.
    pub fn handle_tx_done(
        &mut self,
        now: Instant,
        req: u64,
        result: &Result<Vec<Option<Value>>, Abort>,
        node: &mut OverlayNode,
    ) -> bool {
        let Some(channel) = self.txs.remove(&req) else {
            return false;
        };
        let pending = self
            .channels
            .get_mut(&channel)
            .and_then(|c| c.pending.take_if(|(r, _)| *r == req))
            .map(|(_, p)| p);
        match (pending, result) {
            (None, _) => return true,
            (Some(Pending::ReadHeader), Ok(values)) => {
                let header_value = values.first().cloned().flatten();
                match swarm::plan_header(header_value.as_ref()) {
                    Ok(None) => self.loaded(&channel, header_value, None, Vec::new()),
                    Ok(Some(header)) => {
                        let ops = (0..header.shards.len())
                            .map(|i| TxOp::Read(swarm::plan_shard_key(&channel, i)))
                            .collect();
                        let req = node.transact(now, ops);
                        self.txs.insert(req, channel);
                        if let Some(c) = self.channels.get_mut(&channel) {
                            c.pending = Some((
                                req,
                                Pending::ReadShards {
                                    header_value,
                                    header,
                                },
                            ));
                        }
                        return true;
                    }
                    Err(error) => {
                        self.events
                            .push_back(CoordEvent::BadStoredPlan { channel, error });
                        // Planned from scratch; the test-and-set still expects the bad value.
                        self.loaded(&channel, header_value, None, Vec::new());
                    }
                }
            }
            (
                Some(Pending::ReadShards {
                    header_value,
                    header,
                }),
                Ok(values),
            ) => {
                let shards: Result<Vec<PlanShard>, MetaError> = (0..header.shards.len())
                    .map(|i| swarm::plan_shard(&header, i, values.get(i).and_then(Option::as_ref)))
                    .collect();
                match shards {
                    Ok(shards) => self.loaded(&channel, header_value, Some(header), shards),
                    // A newer plan landed between the two reads: read again.
                    Err(MetaError::StaleShard { .. }) => {}
                    Err(error) => {
                        self.events
                            .push_back(CoordEvent::BadStoredPlan { channel, error });
                        self.loaded(&channel, header_value, Some(header), Vec::new());
                    }
                }
            }
            (
                Some(Pending::Publish {
                    stored,
                    written,
                    written_bytes,
                    max_shard_bytes,
                    moves,
                }),
                Ok(_),
            ) => {
                if let Some(c) = self.channels.get_mut(&channel) {
                    self.events.push_back(CoordEvent::PlanStored {
                        channel,
                        epoch: stored.epoch(),
                        peers: stored.plan.as_ref().map_or(0, |p| p.peers.len()),
                        shards: stored.shards.len(),
                        written,
                        written_bytes,
                        max_shard_bytes,
                        moves,
                        took_over: c.took_over,
                    });
                    c.took_over = false;
                    c.stored = Some(*stored);
                }
            }
            (Some(Pending::Publish { stored, .. }), Err(cause)) => {
                // Lost the epoch to another coordinator, or not sure whether it committed:
                // read the store before planning again, and wait for the round.
                self.events.push_back(CoordEvent::PublishFailed {
                    channel,
                    epoch: stored.epoch(),
                    cause: cause.clone(),
                });
                // Two coordinators that lost to each other (optimistic concurrency can make both
                // lose) must not meet again in lockstep: back off by up to half a round.
                let jitter = self.random() % (self.cfg.round.as_millis() as u64 / 2).max(1);
                if let Some(c) = self.channels.get_mut(&channel) {
                    c.stored = None;
                    c.early = false;
                    c.next_round = c.next_round.max(now) + Duration::from_millis(jitter);
                }
            }
            (Some(Pending::ReadHeader | Pending::ReadShards { .. }), Err(_)) => {}
        }
        self.step(now, &channel, node);
        true
    }

    /// Runs the coordinators whose time has come.
    pub fn handle_timeout(&mut self, now: Instant, node: &mut OverlayNode) {
        let idle = self.cfg.idle_after;
        self.channels
            .retain(|_, c| now.duration_since(c.last_report) < idle);
        let due: Vec<ChannelKey> = self
            .channels
            .iter()
            .filter(|(_, c)| c.next_check <= now)
            .map(|(k, _)| *k)
            .collect();
        for channel in due {
            self.step(now, &channel, node);
        }
    }

    /// When [`Coordinators::handle_timeout`] should run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.channels.values().map(|c| c.next_check).min()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<CoordEvent> {
        self.events.pop_front()
    }

    /// The next pseudo-random number (splitmix64 over the seeded state).
    fn random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn loaded(
        &mut self,
        channel: &ChannelKey,
        header_value: Option<Value>,
        header: Option<PlanHeader>,
        shards: Vec<PlanShard>,
    ) {
        let Some(c) = self.channels.get_mut(channel) else {
            return;
        };
        let plan = header.as_ref().and_then(|h| assemble(h, &shards));
        let stored = Stored {
            header_value,
            header,
            shards,
            plan,
        };
        self.events.push_back(CoordEvent::Loaded {
            channel: *channel,
            epoch: stored.epoch(),
            peers: stored.plan.as_ref().map_or(0, |p| p.peers.len()),
        });
        c.took_over = stored.header.is_some();
        c.stored = Some(stored);
    }

    /// One look at a channel: responsibility, loading, planning.
    fn step(&mut self, now: Instant, channel: &ChannelKey, node: &mut OverlayNode) {
        let cfg = &self.cfg;
        let Some(c) = self.channels.get_mut(channel) else {
            return;
        };
        c.next_check = now + cfg.check_every;
        let responsible = node.phase() == Phase::Member && node.is_responsible(c.pos);
        if !responsible {
            if c.responsible {
                self.events
                    .push_back(CoordEvent::Resigned { channel: *channel });
            }
            c.responsible = false;
            c.stored = None;
            return;
        }
        if !c.responsible {
            // Just became responsible: collect a round of reports, or plan as soon as they
            // cover a stored plan's peers.
            c.responsible = true;
            c.early = true;
            c.next_round = c.next_round.max(now + cfg.round);
        }
        if c.pending.is_some() {
            return;
        }
        if c.stored.is_none() {
            let req = node.transact(now, vec![TxOp::Read(swarm::key(channel, Field::Plan))]);
            c.pending = Some((req, Pending::ReadHeader));
            self.txs.insert(req, *channel);
            return;
        }
        let early = c.early && c.took_over && c.covered(cfg.takeover_coverage);
        if now < c.next_round && !early {
            return;
        }
        let Some(snapshot) = c.snapshot(now, cfg.report_ttl) else {
            return;
        };
        c.early = false;
        // The next round is counted from this one, not from its commit.
        c.next_round = now + cfg.round;
        let Some(stored) = c.stored.as_ref() else {
            return;
        };
        let round = match optimizer::plan(&snapshot, stored.plan.as_ref(), &cfg.optimizer) {
            Ok(round) => round,
            Err(e) => {
                self.events.push_back(CoordEvent::PlanFailed {
                    channel: *channel,
                    error: e.to_string(),
                });
                return;
            }
        };
        let mut plan = round.plan;
        plan.epoch = stored.epoch() + 1;
        let publish = shard_plan(&plan, stored, cfg.shard_target_bytes).and_then(
            |(header, shards, written)| {
                let fresh: Vec<PlanShard> = written.iter().map(|&i| shards[i].clone()).collect();
                let updates =
                    swarm::publish_plan(channel, stored.header_value.as_ref(), &header, &fresh)?;
                Ok((header, shards, updates))
            },
        );
        let (header, shards, updates) = match publish {
            Ok(p) => p,
            Err(e) => {
                self.events.push_back(CoordEvent::PlanFailed {
                    channel: *channel,
                    error: e.to_string(),
                });
                return;
            }
        };
        let sizes: Vec<usize> = updates
            .iter()
            .skip(1)
            .map(|u| match &u.op {
                TxOp::Write(_, Value::Bytes(b)) => b.len(),
                _ => 0,
            })
            .collect();
        let header_value = updates.first().and_then(|u| match &u.op {
            TxOp::TestAndSet { new, .. } => Some(new.clone()),
            _ => None,
        });
        let pending = Pending::Publish {
            stored: Box::new(Stored {
                header_value,
                header: Some(header),
                shards,
                plan: Some(plan),
            }),
            written: sizes.len(),
            written_bytes: sizes.iter().sum(),
            max_shard_bytes: sizes.iter().copied().max().unwrap_or(0),
            moves: round.stats.moves,
        };
        let req = node.transact(now, updates.into_iter().map(|u| u.op).collect());
        c.pending = Some((req, pending));
        self.txs.insert(req, *channel);
    }
}

/// The optimizer's snapshot from the broadcaster's report and the viewers' (any order; the
/// broadcaster's own id among them is skipped): `None` if `source` is not a broadcaster's
/// report. Peers come out sorted by id, so that the plan does not depend on the input order.
pub fn snapshot_of<'a>(
    source_id: &[u8; 32],
    source: &QosReport,
    viewers: impl Iterator<Item = (&'a [u8; 32], &'a QosReport)>,
) -> Option<Snapshot<[u8; 32]>> {
    let Role::Source { bitrate_bps } = source.role else {
        return None;
    };
    let mut peers: Vec<PeerReport<[u8; 32]>> = viewers
        .filter(|(id, _)| *id != source_id)
        .map(|(id, r)| PeerReport {
            id: *id,
            upload_bps: r.upload_bps,
            need_bps: r.need_bps,
            coord: r.coord,
            connectivity: r.connectivity,
            lag_ms: r.lag_ms,
            continuity: r.continuity,
            partners: r.partners.clone(),
        })
        .collect();
    peers.sort_unstable_by_key(|p| p.id);
    Some(Snapshot {
        bitrate_bps,
        source: SourceReport {
            upload_bps: source.upload_bps,
            coord: source.coord,
            connectivity: source.connectivity,
        },
        peers,
    })
}

/// Entry `i` of `plan` as stored and handed to its peer: partners by id.
pub fn hint_of(plan: &Plan<[u8; 32]>, i: usize) -> Option<PeerHint> {
    let p = plan.peers.get(i)?;
    Some(PeerHint {
        peer: p.id,
        tier: p.tier,
        target_lag_ms: p.target_lag_ms,
        upload_slots: p.upload_slots,
        partners: p
            .partners
            .iter()
            .filter_map(|partner| {
                Some(PartnerHint {
                    from: plan.resolve(partner.from)?,
                    slots: partner.slots,
                })
            })
            .collect(),
    })
}

/// Splits `plan` into shards: the previous shard count if it still suits the plan's size
/// (hysteresis: between one and two targets per shard), otherwise as many as the target asks,
/// more if one would still exceed the store's limit. Returns the header, every shard, and the
/// indices of the shards to write (those whose entries changed since `stored`).
fn shard_plan(
    plan: &Plan<[u8; 32]>,
    stored: &Stored,
    target: usize,
) -> Result<(PlanHeader, Vec<PlanShard>, Vec<usize>), MetaError> {
    let hints: Vec<PeerHint> = (0..plan.peers.len())
        .filter_map(|i| hint_of(plan, i))
        .collect();
    let sizes: Vec<usize> = hints
        .iter()
        .map(|h| postcard::to_stdvec(h).map_or(0, |b| b.len()))
        .collect();
    let total: usize = sizes.iter().sum();
    let needed = total.div_ceil(target.max(1)).max(1);
    let previous = stored.header.as_ref().map_or(0, |h| h.shards.len());
    let mut count = if previous >= needed && previous <= needed * 2 {
        previous
    } else {
        needed
    };
    // Room for a shard's own fields and the list's length prefix.
    let limit = MAX_VALUE_LEN - 32;
    loop {
        if count > MAX_PLAN_SHARDS {
            return Err(MetaError::TooLarge("plan"));
        }
        let mut bytes = vec![0usize; count];
        for (h, s) in hints.iter().zip(&sizes) {
            bytes[swarm::shard_of(&h.peer, count)] += s;
        }
        if bytes.iter().all(|&b| b <= limit) {
            break;
        }
        count += 1;
    }
    let mut shards: Vec<PlanShard> = (0..count)
        .map(|i| PlanShard {
            epoch: plan.epoch,
            index: i as u32,
            peers: Vec::new(),
        })
        .collect();
    for h in hints {
        let i = swarm::shard_of(&h.peer, count);
        shards[i].peers.push(h);
    }
    let same_layout = previous == count && stored.shards.len() == count;
    let mut written = Vec::new();
    let mut epochs = Vec::with_capacity(count);
    for (i, shard) in shards.iter_mut().enumerate() {
        match stored.shards.get(i) {
            Some(old) if same_layout && old.peers == shard.peers => {
                shard.epoch = old.epoch;
            }
            _ => written.push(i),
        }
        epochs.push(shard.epoch);
    }
    let header = PlanHeader {
        epoch: plan.epoch,
        leaf_tier: plan.leaf_tier,
        peers: u32::try_from(plan.peers.len()).unwrap_or(u32::MAX),
        shards: epochs,
    };
    Ok((header, shards, written))
}

/// The optimizer's plan from a stored header and all its shards (partners the plan does not
/// hold are dropped); `None` if a shard is missing.
fn assemble(header: &PlanHeader, shards: &[PlanShard]) -> Option<Plan<[u8; 32]>> {
    if shards.len() != header.shards.len() {
        return None;
    }
    let mut hints: Vec<&PeerHint> = shards.iter().flat_map(|s| s.peers.iter()).collect();
    hints.sort_unstable_by_key(|h| h.peer);
    hints.dedup_by(|a, b| a.peer == b.peer);
    let index: HashMap<[u8; 32], u32> = hints
        .iter()
        .enumerate()
        .map(|(i, h)| (h.peer, i as u32))
        .collect();
    let peers = hints
        .iter()
        .map(|h| optimizer::PeerPlan {
            id: h.peer,
            tier: h.tier,
            target_lag_ms: h.target_lag_ms,
            upload_slots: h.upload_slots,
            partners: h
                .partners
                .iter()
                .filter_map(|p| {
                    let from = match p.from {
                        Upstream::Source => Upstream::Source,
                        Upstream::Relay => Upstream::Relay,
                        Upstream::Peer(id) => Upstream::Peer(*index.get(&id)?),
                    };
                    Some(optimizer::Partner {
                        from,
                        slots: p.slots,
                    })
                })
                .collect(),
        })
        .collect();
    Some(Plan {
        epoch: header.epoch,
        leaf_tier: header.leaf_tier,
        peers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plan of `n` peers with four peer partners each (the shape of a large live swarm).
    fn big_plan(n: usize, epoch: u64) -> Plan<[u8; 32]> {
        let mut ids: Vec<[u8; 32]> = (0..n)
            .map(|i| *blake3::hash(&(i as u64).to_le_bytes()).as_bytes())
            .collect();
        ids.sort();
        let peers = ids
            .iter()
            .enumerate()
            .map(|(i, id)| optimizer::PeerPlan {
                id: *id,
                tier: 2 + (i % 3) as u8,
                target_lag_ms: 2000,
                upload_slots: 4,
                partners: (1..=4)
                    .map(|k| optimizer::Partner {
                        from: Upstream::Peer(((i + k * 37) % n) as u32),
                        slots: 1,
                    })
                    .collect(),
            })
            .collect();
        Plan {
            epoch,
            leaf_tier: 5,
            peers,
        }
    }

    fn nothing() -> Stored {
        Stored {
            header_value: None,
            header: None,
            shards: Vec::new(),
            plan: None,
        }
    }

    #[test]
    fn a_10k_plan_splits_into_shards_under_the_value_limit_and_reassembles() {
        let plan = big_plan(10_000, 1);
        let (header, shards, written) = shard_plan(&plan, &nothing(), 48 * 1024).unwrap();
        let sizes: Vec<usize> = shards
            .iter()
            .map(|s| postcard::to_stdvec(s).unwrap().len())
            .collect();
        assert!(sizes.iter().all(|&b| b <= MAX_VALUE_LEN), "{sizes:?}");
        assert!(shards.len() < crate::msg::MAX_TX_KEYS);
        assert_eq!(written.len(), shards.len());
        let total: usize = sizes.iter().sum();
        eprintln!(
            "10k peers: {} shards, {total} bytes, largest {} bytes",
            shards.len(),
            sizes.iter().max().unwrap()
        );
        assert!(
            (150..=180).contains(&(total / 10_000)),
            "bytes per peer: {}",
            total / 10_000
        );
        let back = assemble(&header, &shards).unwrap();
        assert_eq!(back, plan);
        let ops = swarm::publish_plan(&[9; 20], None, &header, &shards).unwrap();
        assert_eq!(ops.len(), shards.len() + 1);
    }

    #[test]
    fn an_unchanged_shard_is_not_written_again() {
        let plan = big_plan(2_000, 1);
        let (header, shards, _) = shard_plan(&plan, &nothing(), 16 * 1024).unwrap();
        assert!(shards.len() > 2);
        let stored = Stored {
            header_value: None,
            header: Some(header),
            shards,
            plan: Some(plan.clone()),
        };
        let mut next = plan.clone();
        next.epoch = 2;
        next.peers[0].tier = 9;
        let (header2, shards2, written) = shard_plan(&next, &stored, 16 * 1024).unwrap();
        assert_eq!(written, vec![0], "only the first peer's shard changed");
        assert_eq!(header2.shards[0], 2);
        assert!(header2.shards[1..].iter().all(|&e| e == 1));
        assert_eq!(shards2[1].epoch, 1);
    }

    #[test]
    fn reports_round_trip_and_bad_ones_are_typed_errors() {
        let r = QosReport {
            channel: [4; 20],
            role: Role::Viewer,
            upload_bps: 2_000_000,
            need_bps: 1_000_000,
            coord: Coord::new(1.0, 2.0, 3.0),
            connectivity: optimizer::Connectivity::FullCone,
            lag_ms: Some(1800),
            continuity: 0.99,
            partners: vec![[1; 32]],
        };
        assert_eq!(QosReport::decode(&r.encode()).unwrap(), r);
        assert_eq!(QosReport::decode(&[]), Err(ReportError::NotAReport));
        assert_eq!(
            QosReport::decode(&[REPORT_TAG, 0xff]),
            Err(ReportError::Malformed)
        );
        let nan = QosReport {
            continuity: f32::NAN,
            ..r.clone()
        };
        assert!(QosReport::decode(&nan.encode()).is_err());
        let many = QosReport {
            partners: vec![[2; 32]; MAX_REPORT_PARTNERS + 1],
            ..r
        };
        assert_eq!(
            QosReport::decode(&many.encode()),
            Err(ReportError::OutOfBounds("partners"))
        );
    }
}
