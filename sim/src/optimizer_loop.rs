//! The optimizer's loop inside `sim run`: viewers report, a coordinator plans, viewers take
//! hints.
//!
//! Every round each viewer sends a [`QosReport`] (the overlay's own report type, encoded and
//! decoded for real) with what it measured: the upload its exchange measured, its live lag (the
//! median latency of the segments it got since its last report), its continuity since then, its
//! partners, and its NAT class; its coordinate is its true position (what a converged Vivaldi
//! estimate gives). Viewers report at staggered seconds of the round.
//!
//! The coordinator runs on the source's host rather than on the overlay node responsible for
//! the channel's key: hosting a full overlay ring beside every simulated exchange would double
//! the run's cost for nothing the plan depends on (`sim coordinator` measures that part: routing
//! to the responsible node, storage by transaction, takeover after a crash). What it runs is the
//! overlay coordinator's own code path: [`coordinator::snapshot_of`] over the live reports,
//! [`optimizer::plan`] incrementally from the previous plan, and [`coordinator::hint_of`] for
//! each peer's entry. Reports reach it, and hints reach viewers, after the simulated network's
//! one-way delay between the viewer and the source; a hint goes out only when the viewer's entry
//! changed. The viewer's exchange takes it through [`peer::exchange::Exchange::apply_hint`],
//! with the addresses of the peers it names and the peers the plan has it feed; the source
//! gets the list of tier-1 peers it is to feed.

use std::collections::BTreeMap;

use optimizer::{Connectivity, Coord, Plan, Upstream};
use peer::exchange::{Hint, HintedUpstream};
use peer::identity::PeerId;
use rustc_hash::FxHashMap as HashMap;
use serde::Serialize;
use tracker_overlay::coordinator::{self, QosReport, Role};
use tracker_overlay::swarm::{ChannelKey, PeerHint};

use crate::net::{HostNet, NatType, SimTime};

/// What the loop did in one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LoopSummary {
    /// Plans made.
    pub rounds: u64,
    /// Peers in the last plan.
    pub planned_peers: u64,
    /// Tiers in the last plan (leaves included).
    pub tiers: u8,
    /// Reports the coordinator received and decoded.
    pub reports: u64,
    /// Hints sent to viewers (entries that changed).
    pub hints_sent: u64,
    /// Viewers holding a hint at the end.
    pub hinted_viewers: u64,
    /// Of the hinted viewers that had a parent at the end, the share whose parent is a sender
    /// their hint names.
    pub parents_as_planned: f64,
}

/// The NAT class the optimizer sees for a simulated NAT.
pub fn connectivity(nat: NatType) -> Connectivity {
    match nat {
        NatType::Open => Connectivity::Open,
        NatType::FullCone => Connectivity::FullCone,
        NatType::PortRestricted => Connectivity::PortRestricted,
        NatType::Symmetric => Connectivity::Symmetric,
    }
}

/// A host's network coordinate: its position and access delay, as round-trip milliseconds.
pub fn coord(host: &HostNet) -> Coord {
    Coord::new(
        (2.0 * host.pos.0) as f32,
        (2.0 * host.pos.1) as f32,
        (2.0 * host.access_ms) as f32,
    )
}

/// The coordinator's state for one run.
pub struct Coordinator {
    channel: ChannelKey,
    source: [u8; 32],
    source_report: QosReport,
    config: optimizer::Config,
    /// Reports older than this are left out of the plan (the viewer left).
    ttl: SimTime,
    /// Reports on their way: arrival, sender, payload.
    in_flight: Vec<(SimTime, [u8; 32], Vec<u8>)>,
    /// The last report of each viewer, and when it arrived.
    reports: BTreeMap<[u8; 32], (SimTime, QosReport)>,
    plan: Option<Plan<[u8; 32]>>,
    /// The entry last sent to each viewer, with the peers it feeds.
    sent: HashMap<[u8; 32], (PeerHint, Vec<[u8; 32]>)>,
    /// Each receiver's tree parent among its planned senders, as designated last round.
    designated: HashMap<[u8; 32], Upstream<[u8; 32]>>,
    bitrate_bps: u64,
    /// Message counts and encoded bytes: reports, hints.
    pub report_traffic: (u64, u64),
    /// See [`Coordinator::report_traffic`].
    pub hint_traffic: (u64, u64),
    /// What the loop did so far.
    pub summary: LoopSummary,
}

impl Coordinator {
    /// A coordinator for `channel`, whose broadcaster `source` uploads `source_up_bps` from a
    /// host at `source_coord`; plans every `round` (reports expire after three rounds).
    pub fn new(
        channel: ChannelKey,
        source: [u8; 32],
        bitrate_bps: u64,
        source_up_bps: u64,
        source_coord: Coord,
        round: SimTime,
    ) -> Self {
        let source_report = QosReport {
            channel,
            role: Role::Source { bitrate_bps },
            upload_bps: source_up_bps,
            need_bps: 0,
            coord: source_coord,
            connectivity: Connectivity::Open,
            lag_ms: Some(0),
            continuity: 1.0,
            partners: Vec::new(),
        };
        Self {
            channel,
            source,
            source_report,
            config: optimizer::Config::default(),
            ttl: round * 3,
            in_flight: Vec::new(),
            reports: BTreeMap::new(),
            plan: None,
            sent: HashMap::default(),
            designated: HashMap::default(),
            bitrate_bps,
            report_traffic: (0, 0),
            hint_traffic: (0, 0),
            summary: LoopSummary::default(),
        }
    }

    /// The channel the reports must name.
    pub fn channel(&self) -> ChannelKey {
        self.channel
    }

    /// A viewer sent `report`; it arrives at `arrival`.
    pub fn send_report(&mut self, arrival: SimTime, from: [u8; 32], report: &QosReport) {
        let payload = report.encode();
        self.report_traffic.0 += 1;
        self.report_traffic.1 += payload.len() as u64;
        self.in_flight.push((arrival, from, payload));
    }

    /// One round at `now`, the source's exchange having measured `source_upload_bps`: takes
    /// the reports that have arrived, plans, and returns each viewer's hint whose entry changed
    /// (with the peers it feeds), and the source's list of tier-1 peers. `None` if there was
    /// nothing to plan.
    pub fn round(&mut self, now: SimTime, source_upload_bps: u64) -> Option<RoundOut> {
        self.source_report.upload_bps = source_upload_bps;
        let mut arrived = Vec::new();
        self.in_flight.retain(|(at, from, payload)| {
            let here = *at <= now;
            if here {
                arrived.push((*from, payload.clone()));
            }
            !here
        });
        for (from, payload) in arrived {
            // The real decoder's checks; a report for another channel is dropped.
            if let Ok(report) = QosReport::decode(&payload) {
                if report.channel == self.channel && matches!(report.role, Role::Viewer) {
                    self.summary.reports += 1;
                    self.reports.insert(from, (now, report));
                }
            }
        }
        let ttl = self.ttl;
        self.reports
            .retain(|_, (at, _)| now.saturating_sub(*at) <= ttl);
        if self.reports.is_empty() {
            return None;
        }
        let snapshot = coordinator::snapshot_of(
            &self.source,
            &self.source_report,
            self.reports.iter().map(|(id, (_, r))| (id, r)),
        )?;
        let round = optimizer::plan(&snapshot, self.plan.as_ref(), &self.config).ok()?;
        let mut plan = round.plan;
        plan.epoch = self.plan.as_ref().map_or(0, |p| p.epoch) + 1;
        self.summary.rounds += 1;
        self.summary.planned_peers = plan.peers.len() as u64;
        self.summary.tiers = round.stats.tiers;

        // Who feeds whom in the tree: each receiver's parent among its planned senders.
        let parents = self.tree_parents(&plan);
        let mut downstream: Vec<Vec<[u8; 32]>> = vec![Vec::new(); plan.peers.len()];
        let mut from_source = Vec::new();
        for (p, parent) in plan.peers.iter().zip(&parents) {
            match parent {
                Some(Upstream::Peer(i)) => {
                    if let Some(d) = downstream.get_mut(*i as usize) {
                        d.push(p.id);
                    }
                }
                Some(Upstream::Source) => from_source.push(p.id),
                _ => {}
            }
        }
        let mut hints = Vec::new();
        for (i, d) in downstream.into_iter().enumerate() {
            let Some(mut entry) = coordinator::hint_of(&plan, i) else {
                continue;
            };
            // The designated parent first: the entry's best sender for a whole-stream tree.
            if let Some(parent) = parents[i].and_then(|u| plan.resolve(u)) {
                if let Some(at) = entry.partners.iter().position(|p| p.from == parent) {
                    let first = entry.partners.remove(at);
                    entry.partners.insert(0, first);
                }
            }
            let changed = self
                .sent
                .get(&entry.peer)
                .is_none_or(|(e, ds)| *e != entry || *ds != d);
            if changed {
                // The entry as stored, plus the epoch.
                let bytes = postcard::to_stdvec(&entry).map_or(0, |b| b.len()) + 8;
                self.hint_traffic.0 += 1;
                self.hint_traffic.1 += bytes as u64;
                self.summary.hints_sent += 1;
                self.sent.insert(entry.peer, (entry.clone(), d.clone()));
                hints.push((entry, d));
            }
        }
        let epoch = plan.epoch;
        self.plan = Some(plan);
        Some(RoundOut {
            epoch,
            hints,
            from_source,
        })
    }

    /// The plan counts upload in quarter-stream slots from up to four senders; the exchange's
    /// tree feeds whole streams from one parent. So each receiver gets one of its planned senders
    /// as its parent, within the whole streams each sender's reported upload carries (the
    /// source's but one, as the exchange counts them): tier by tier from the source, keeping
    /// last round's choice while it is still planned and fits, else the planned sender with the
    /// most room left. `None` where no planned sender has room (the exchange then chooses).
    fn tree_parents(&mut self, plan: &Plan<[u8; 32]>) -> Vec<Option<Upstream<u32>>> {
        let bitrate = self.bitrate_bps.max(1) as f64;
        let streams = |bps: u64| bps as f64 / bitrate;
        let mut room: Vec<i64> = plan
            .peers
            .iter()
            .map(|p| {
                self.reports
                    .get(&p.id)
                    .map_or(0, |(_, r)| (streams(r.upload_bps) + 0.05) as i64)
            })
            .collect();
        let mut source_room = ((streams(self.source_report.upload_bps) - 1.0) as i64).max(2);
        let mut order: Vec<usize> = (0..plan.peers.len()).collect();
        order.sort_by_key(|&i| (plan.peers[i].tier, plan.peers[i].id));
        let mut parents = vec![None; plan.peers.len()];
        for i in order {
            let p = &plan.peers[i];
            let left = |u: Upstream<u32>, room: &[i64], source_room: i64| match u {
                Upstream::Source => source_room,
                Upstream::Peer(j) => room.get(j as usize).copied().unwrap_or(0),
                Upstream::Relay => 0,
            };
            let previous = self.designated.get(&p.id).copied().and_then(|d| {
                p.partners
                    .iter()
                    .map(|q| q.from)
                    .find(|u| plan.resolve(*u) == Some(d))
            });
            let choice = previous
                .filter(|u| left(*u, &room, source_room) > 0)
                .or_else(|| {
                    p.partners
                        .iter()
                        .map(|q| q.from)
                        .filter(|u| left(*u, &room, source_room) > 0)
                        .max_by_key(|u| left(*u, &room, source_room))
                });
            match choice {
                Some(Upstream::Source) => source_room -= 1,
                Some(Upstream::Peer(j)) => {
                    if let Some(r) = room.get_mut(j as usize) {
                        *r -= 1;
                    }
                }
                _ => {}
            }
            match choice.and_then(|u| plan.resolve(u)) {
                Some(d) => {
                    self.designated.insert(p.id, d);
                }
                None => {
                    self.designated.remove(&p.id);
                }
            }
            parents[i] = choice;
        }
        parents
    }

    /// A viewer left: its entry is sent again if it comes back.
    pub fn forget(&mut self, peer: &[u8; 32]) {
        self.sent.remove(peer);
        self.designated.remove(peer);
    }
}

/// What one round hands out.
pub struct RoundOut {
    /// The plan's epoch.
    pub epoch: u64,
    /// Entries that changed, with the peers each feeds.
    pub hints: Vec<(PeerHint, Vec<[u8; 32]>)>,
    /// The peers the source feeds.
    pub from_source: Vec<[u8; 32]>,
}

/// The exchange's hint from an entry, with addresses from `addr`.
pub fn exchange_hint(
    epoch: u64,
    entry: &PeerHint,
    downstream: &[[u8; 32]],
    addr: impl Fn(&PeerId) -> Option<std::net::SocketAddr>,
) -> Hint {
    let mut hint = Hint::from_peer_hint(epoch, entry, addr);
    hint.downstream = downstream.iter().map(|d| PeerId(*d)).collect();
    hint
}

/// The source's hint: no senders, the tier-1 peers as the peers it feeds.
pub fn source_hint(epoch: u64, from_source: &[[u8; 32]]) -> Hint {
    Hint {
        epoch,
        tier: 0,
        target_lag: std::time::Duration::ZERO,
        upstream: Vec::<HintedUpstream>::new(),
        downstream: from_source.iter().map(|d| PeerId(*d)).collect(),
    }
}
