//! The self-managed optimizer loop in the simulator: a ring of real `OverlayNode`s, each with
//! the real `tracker_overlay::coordinator::Coordinators` on top, whose nodes are the viewers
//! (and the broadcaster) of one channel; the coordinator's node crashes mid-run.
//!
//! Every host reports its QoS to the channel's coordinator once a round (a routed overlay
//! message) and reads its own part of the stored plan once a round (a transaction); the
//! partners its last read named go into its next report, so the loop is closed. The
//! experiment measures how long after the crash the next plan is stored, whether the stored
//! epochs stay consecutive (no gap, no epoch stored twice), and whether viewers kept finding
//! their plan while the coordinator changed.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use optimizer::{Connectivity, Coord};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tracker_overlay::coordinator::{
    self, CoordEvent, CoordinatorConfig, Coordinators, QosReport, Role,
};
use tracker_overlay::swarm::{self, ChannelKey, Field, MetaError, PlanHeader};
use tracker_overlay::{
    Abort, Config, Event, Message, NodeRef, OverlayNode, Phase, RingId, TxOp, Value,
};

use crate::engine::{Core, Engine, Input, Output, Step};
use crate::hosted::host_addr;
use crate::net::{HostId, HostNet, NatType};
use crate::overlay::OverlayCore;
use crate::scenario::Traversal;

/// What a host reports to the experiment.
#[derive(Debug)]
pub enum CoordSimEvent {
    /// The overlay node's own events.
    Overlay(Event),
    /// The coordinators' events.
    Coord(CoordEvent),
    /// A viewer read its part of the plan.
    HintRead {
        /// The plan's epoch, if one was found.
        epoch: Option<u64>,
        /// Whether the plan had an entry for the viewer.
        found: bool,
    },
}

/// A peer of the channel: what it reports, and its reads of the plan.
struct Agent {
    channel: ChannelKey,
    report: QosReport,
    next_report: Instant,
    next_read: Instant,
    round: Duration,
    /// The read in flight: the header's, or (with the header read) the shard's.
    reading: Option<(u64, Option<PlanHeader>)>,
}

/// An overlay node with coordinators and a viewer (or broadcaster) agent on top.
pub struct CoordCore {
    inner: OverlayCore,
    coords: Coordinators,
    agent: Option<Agent>,
    out: VecDeque<Output<Message, CoordSimEvent>>,
}

impl CoordCore {
    /// Wraps a node.
    pub fn new(node: OverlayNode, cfg: CoordinatorConfig) -> Self {
        Self {
            inner: OverlayCore::new(node),
            coords: Coordinators::new(cfg),
            agent: None,
            out: VecDeque::new(),
        }
    }

    /// The node.
    pub fn node(&self) -> &OverlayNode {
        self.inner.node()
    }

    /// The coordinators.
    pub fn coords(&self) -> &Coordinators {
        &self.coords
    }

    /// Starts reporting `report` every `round` (first at `first`).
    fn start_agent(&mut self, now: Instant, report: QosReport, round: Duration, first: Duration) {
        self.agent = Some(Agent {
            channel: report.channel,
            report,
            next_report: now + first,
            next_read: now + first + round / 2,
            round,
            reading: None,
        });
        self.pump(now);
    }

    fn run_agent(&mut self, now: Instant) {
        let Some(a) = self.agent.as_mut() else {
            return;
        };
        let node = self.inner.node_mut();
        if node.phase() != Phase::Member {
            return;
        }
        if a.next_report <= now {
            a.next_report = now + a.round;
            coordinator::send_report(node, now, &a.report);
        }
        if a.next_read <= now && a.reading.is_none() {
            a.next_read = now + a.round;
            // Header and shard are read one at a time: a transaction of one read takes no
            // lock, so readers never hold up the coordinator's writes.
            let ops = vec![TxOp::Read(swarm::key(&a.channel, Field::Plan))];
            a.reading = Some((node.transact(now, ops), None));
        }
    }

    /// A read of the plan header or of the agent's shard finished.
    fn on_read(&mut self, now: Instant, result: Result<Vec<Option<Value>>, Abort>) {
        let me = self.inner.node().me().peer;
        let Some(a) = self.agent.as_mut() else {
            return;
        };
        let Some((_, header)) = a.reading.take() else {
            return;
        };
        let value = result.ok().and_then(|mut v| v.pop()).flatten();
        let (epoch, found) = match header {
            None => match swarm::plan_header(value.as_ref()) {
                Ok(Some(header)) => {
                    let op = swarm::read_plan_for(&a.channel, &me, &header);
                    let req = self.inner.node_mut().transact(now, vec![op]);
                    a.reading = Some((req, Some(header)));
                    return;
                }
                Ok(None) | Err(_) => (None, false),
            },
            Some(header) => match swarm::plan_for(&me, &header, value.as_ref()) {
                Ok(hint) => {
                    if let Some(hint) = &hint {
                        // The planned partners are the ones it will be connected to: report
                        // them.
                        a.report.partners = hint
                            .partners
                            .iter()
                            .filter_map(|p| match p.from {
                                optimizer::Upstream::Peer(id) => Some(id),
                                _ => None,
                            })
                            .collect();
                    }
                    (Some(header.epoch), hint.is_some())
                }
                // A newer plan came in between the two reads: read the header again.
                Err(MetaError::StaleShard { .. }) => {
                    a.next_read = now;
                    return;
                }
                Err(_) => (Some(header.epoch), false),
            },
        };
        self.out
            .push_back(Output::Event(CoordSimEvent::HintRead { epoch, found }));
    }

    /// Moves the node's outputs out, handing its deliveries and transactions to the
    /// coordinators and the agent first.
    fn pump(&mut self, now: Instant) {
        while let Some(o) = self.inner.poll() {
            let event = match o {
                Output::Event(e) => e,
                Output::Dial(h) => {
                    self.out.push_back(Output::Dial(h));
                    continue;
                }
                Output::Close(h) => {
                    self.out.push_back(Output::Close(h));
                    continue;
                }
                // The overlay sends no bulk messages, so it forwards and paces none.
                Output::Forward { .. }
                | Output::EndRelay { .. }
                | Output::Fetch { .. }
                | Output::SendPaced { .. } => continue,
                Output::Send {
                    to,
                    msg,
                    bytes,
                    bulk,
                    kind,
                    tag,
                } => {
                    self.out.push_back(Output::Send {
                        to,
                        msg,
                        bytes,
                        bulk,
                        kind,
                        tag,
                    });
                    continue;
                }
            };
            match event {
                Event::Delivered {
                    key,
                    origin,
                    payload,
                } => {
                    // A payload that is not a report, or a bad one, is dropped here.
                    let _ = self.coords.handle_delivered(
                        now,
                        key,
                        origin.peer,
                        &payload,
                        self.inner.node_mut(),
                    );
                }
                Event::TxDone { req, result } => {
                    if self
                        .agent
                        .as_ref()
                        .is_some_and(|a| a.reading.as_ref().is_some_and(|r| r.0 == req))
                    {
                        self.on_read(now, result);
                    } else if !self
                        .coords
                        .handle_tx_done(now, req, &result, self.inner.node_mut())
                    {
                        self.out
                            .push_back(Output::Event(CoordSimEvent::Overlay(Event::TxDone {
                                req,
                                result,
                            })));
                    }
                }
                other => self
                    .out
                    .push_back(Output::Event(CoordSimEvent::Overlay(other))),
            }
        }
        while let Some(e) = self.coords.poll_event() {
            self.out.push_back(Output::Event(CoordSimEvent::Coord(e)));
        }
    }
}

impl Core for CoordCore {
    type Msg = Message;
    type Event = CoordSimEvent;

    fn handle(&mut self, now: Instant, input: Input<Message>) {
        let timeout = matches!(input, Input::Timeout);
        self.inner.handle(now, input);
        self.pump(now);
        if timeout {
            if self.coords.poll_timeout().is_some_and(|t| t <= now) {
                self.coords.handle_timeout(now, self.inner.node_mut());
            }
            self.run_agent(now);
            self.pump(now);
        }
    }

    fn poll(&mut self) -> Option<Output<Message, CoordSimEvent>> {
        self.out.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let agent = self.agent.as_ref().map(|a| {
            if a.reading.is_some() {
                a.next_report
            } else {
                a.next_report.min(a.next_read)
            }
        });
        [self.inner.poll_timeout(), self.coords.poll_timeout(), agent]
            .into_iter()
            .flatten()
            .min()
    }
}

/// A coordinator experiment.
#[derive(Debug, Clone)]
pub struct CoordExperiment {
    /// Nodes in the ring; all of them watch the channel (one broadcasts).
    pub nodes: usize,
    /// Seed of everything random.
    pub seed: u64,
    /// Time between two plans (and two reports of a peer).
    pub round: Duration,
    /// Time between two joins while the ring grows.
    pub join_every: Duration,
    /// Time after the last join before the peers start reporting.
    pub warmup: Duration,
    /// When the coordinator's node crashes, after the peers started reporting.
    pub crash_at: Duration,
    /// How long the run goes on after the crash.
    pub after: Duration,
}

impl Default for CoordExperiment {
    fn default() -> Self {
        Self {
            nodes: 200,
            seed: 1,
            round: Duration::from_secs(5),
            join_every: Duration::from_millis(50),
            warmup: Duration::from_secs(20),
            crash_at: Duration::from_secs(60),
            after: Duration::from_secs(60),
        }
    }
}

/// What a coordinator experiment measured.
#[derive(Debug, Clone, Serialize)]
pub struct CoordReport {
    /// Nodes.
    pub nodes: usize,
    /// The round (s).
    pub round_s: f64,
    /// Plans stored before the crash.
    pub plans_before_crash: usize,
    /// Plans stored after the crash.
    pub plans_after_crash: usize,
    /// The crash, in seconds after the peers started reporting.
    pub crash_at_s: f64,
    /// From the crash to the next plan stored (s); `None` if none came.
    pub next_plan_after_crash_s: Option<f64>,
    /// The same, in rounds.
    pub next_plan_after_crash_rounds: Option<f64>,
    /// From the last plan before the crash to the first after it (s).
    pub plan_gap_s: Option<f64>,
    /// The largest time between two consecutive plans outside the crash (s).
    pub max_regular_gap_s: f64,
    /// The highest epoch stored.
    pub last_epoch: u64,
    /// Every epoch from 1 to the last was stored exactly once.
    pub epochs_consecutive: bool,
    /// Epochs stored more than once (forks).
    pub forked_epochs: usize,
    /// Whether the first plan after the crash continued the epoch before it.
    pub continued_epoch: bool,
    /// Publications that lost (a race, a failed transaction).
    pub publish_failed: usize,
    /// Peers in the last plan.
    pub peers_in_plan: usize,
    /// Shards of the last plan.
    pub shards: usize,
    /// The largest shard written (encoded bytes).
    pub max_shard_bytes: usize,
    /// Mean shard bytes written per plan.
    pub mean_written_bytes: f64,
    /// Viewers' reads of their part of the plan.
    pub hint_reads: u64,
    /// Reads that found the viewer's entry.
    pub hint_found: u64,
    /// Reads between the crash and two rounds after it.
    pub takeover_reads: u64,
    /// Of those, reads that found the viewer's entry.
    pub takeover_found: u64,
    /// Engine events processed.
    pub events: u64,
}

enum Ext {
    Join,
    Start,
    Crash,
}

fn new_host(engine: &mut Engine<CoordCore, Ext>, rng: &mut ChaCha8Rng) -> (HostId, NodeRef, Coord) {
    let pos = (rng.gen_range(0.0..200.0), rng.gen_range(0.0..200.0));
    let access = rng.gen_range(2.0..15.0);
    let host = engine.add_host(HostNet::new(pos, access, 50e6, 100e6, NatType::Open));
    let peer = *blake3::hash(format!("sim coordinator node {}", host.0).as_bytes()).as_bytes();
    let coord = Coord::new(pos.0 as f32, pos.1 as f32, access as f32);
    (host, NodeRef::new(peer, host_addr(host)), coord)
}

/// Runs a coordinator experiment.
pub fn run_coordinator(x: &CoordExperiment) -> CoordReport {
    let channel: ChannelKey = *blake3::hash(b"sim coordinator channel")
        .as_bytes()
        .first_chunk()
        .unwrap_or(&[0; 20]);
    let key: RingId = coordinator::coordinator_key(&channel);
    let mut engine: Engine<CoordCore, Ext> = Engine::new(x.seed, Traversal::None, 0.05, 0.0);
    let mut rng = ChaCha8Rng::seed_from_u64(x.seed ^ 0xc00d);
    let ocfg = Config {
        seed: x.seed,
        ..Config::default()
    };
    let ccfg = CoordinatorConfig {
        round: x.round,
        report_ttl: x.round * 3 + x.round / 5,
        ..CoordinatorConfig::default()
    };
    let mut hosts: Vec<(HostId, Coord)> = Vec::new();
    let start =
        |engine: &mut Engine<CoordCore, Ext>, rng: &mut ChaCha8Rng, bootstrap: Option<NodeRef>| {
            let (host, me, coord) = new_host(engine, rng);
            let now = engine.instant(engine.now());
            let mut node = OverlayNode::new(
                now,
                me,
                Config {
                    seed: rng.gen(),
                    ..ocfg.clone()
                },
            );
            match bootstrap {
                Some(b) => node.join(now, b),
                None => node.create(now),
            }
            let cfg = CoordinatorConfig {
                seed: rng.gen(),
                ..ccfg.clone()
            };
            engine.start(host, CoordCore::new(node, cfg));
            (host, coord)
        };
    hosts.push(start(&mut engine, &mut rng, None));
    let step = x.join_every.as_nanos() as u64;
    for i in 1..x.nodes {
        engine.schedule(step * i as u64, Ext::Join);
    }
    let start_at = step * x.nodes as u64 + x.warmup.as_nanos() as u64;
    let crash_at = start_at + x.crash_at.as_nanos() as u64;
    let end = crash_at + x.after.as_nanos() as u64;
    engine.schedule(start_at, Ext::Start);
    engine.schedule(crash_at, Ext::Crash);

    let mut events = Vec::new();
    // (time, host, epoch, peers, shards, max shard bytes, written bytes)
    let mut stored: Vec<(u64, HostId, u64, usize, usize, usize, usize)> = Vec::new();
    let mut publish_failed = 0;
    let (mut reads, mut found, mut t_reads, mut t_found) = (0u64, 0u64, 0u64, 0u64);
    let mut crashed: Option<u64> = None;
    let round_ns = x.round.as_nanos() as u64;
    loop {
        match engine.step(end, &mut events) {
            Step::Idle => break,
            Step::External(Ext::Join) => {
                let members: Vec<NodeRef> = hosts
                    .iter()
                    .filter_map(|(h, _)| engine.core(*h))
                    .map(CoordCore::node)
                    .filter(|n| n.phase() == Phase::Member)
                    .map(OverlayNode::me)
                    .collect();
                if members.is_empty() {
                    continue;
                }
                let b = members[rng.gen_range(0..members.len())];
                hosts.push(start(&mut engine, &mut rng, Some(b)));
            }
            Step::External(Ext::Start) => {
                // The broadcaster: a node that is not the coordinator (its crash is the
                // experiment, not the source's).
                let source = hosts.iter().map(|(h, _)| *h).find(|&h| {
                    engine
                        .core(h)
                        .is_some_and(|c| !c.node().is_responsible(key))
                });
                let round = x.round;
                for &(h, coord) in &hosts {
                    let is_source = Some(h) == source;
                    let upload = match rng.gen_range(0..10) {
                        0 => 20_000_000,
                        1..=5 => rng.gen_range(1_000_000..3_000_000),
                        _ => rng.gen_range(0..800_000),
                    };
                    let report = QosReport {
                        channel,
                        role: if is_source {
                            Role::Source {
                                bitrate_bps: 2_000_000,
                            }
                        } else {
                            Role::Viewer
                        },
                        upload_bps: if is_source { 10_000_000 } else { upload },
                        need_bps: if is_source { 0 } else { 2_000_000 },
                        coord,
                        connectivity: Connectivity::Open,
                        lag_ms: Some(rng.gen_range(1500..4000)),
                        continuity: rng.gen_range(0.9..1.0),
                        partners: Vec::new(),
                    };
                    let first = Duration::from_nanos(rng.gen_range(0..round_ns));
                    engine.with_core(h, |c, now| c.start_agent(now, report, round, first));
                }
            }
            Step::External(Ext::Crash) => {
                let coordinator = hosts.iter().map(|(h, _)| *h).find(|&h| {
                    engine
                        .core(h)
                        .is_some_and(|c| c.coords().is_coordinating(&channel))
                });
                if let Some(h) = coordinator {
                    engine.crash(h);
                    crashed = Some(engine.now());
                }
            }
            Step::Events => {
                let now = engine.now();
                let in_takeover = crashed.is_some_and(|c| now >= c && now < c + 2 * round_ns);
                for (host, e) in events.drain(..) {
                    match e {
                        CoordSimEvent::Coord(CoordEvent::PlanStored {
                            epoch,
                            peers,
                            shards,
                            max_shard_bytes,
                            written_bytes,
                            ..
                        }) => stored.push((
                            now,
                            host,
                            epoch,
                            peers,
                            shards,
                            max_shard_bytes,
                            written_bytes,
                        )),
                        CoordSimEvent::Coord(CoordEvent::PublishFailed { .. }) => {
                            publish_failed += 1
                        }
                        CoordSimEvent::HintRead { found: f, .. } => {
                            reads += 1;
                            found += u64::from(f);
                            if in_takeover {
                                t_reads += 1;
                                t_found += u64::from(f);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    let crash_ns = crashed.unwrap_or(crash_at);
    let before: Vec<_> = stored.iter().filter(|s| s.0 < crash_ns).collect();
    let after: Vec<_> = stored.iter().filter(|s| s.0 >= crash_ns).collect();
    let mut by_epoch: BTreeMap<u64, usize> = BTreeMap::new();
    for s in &stored {
        *by_epoch.entry(s.2).or_default() += 1;
    }
    let last_epoch = by_epoch.keys().next_back().copied().unwrap_or(0);
    let consecutive =
        by_epoch.keys().copied().eq(1..=last_epoch) && by_epoch.values().all(|&n| n == 1);
    let next = after.first().map(|s| (s.0 - crash_ns) as f64 / 1e9);
    let gap = match (before.last(), after.first()) {
        (Some(b), Some(a)) => Some((a.0 - b.0) as f64 / 1e9),
        _ => None,
    };
    let max_regular_gap = stored
        .windows(2)
        .filter(|w| !(w[0].0 < crash_ns && w[1].0 >= crash_ns))
        .map(|w| (w[1].0 - w[0].0) as f64 / 1e9)
        .fold(0.0, f64::max);
    let last = stored.last();
    CoordReport {
        nodes: x.nodes,
        round_s: x.round.as_secs_f64(),
        plans_before_crash: before.len(),
        plans_after_crash: after.len(),
        crash_at_s: (crash_ns - start_at) as f64 / 1e9,
        next_plan_after_crash_s: next,
        next_plan_after_crash_rounds: next.map(|s| s / x.round.as_secs_f64()),
        plan_gap_s: gap,
        max_regular_gap_s: max_regular_gap,
        last_epoch,
        epochs_consecutive: consecutive,
        forked_epochs: by_epoch.values().filter(|&&n| n > 1).count(),
        continued_epoch: match (before.last(), after.first()) {
            (Some(b), Some(a)) => a.2 == b.2 + 1 && a.1 != b.1,
            _ => false,
        },
        publish_failed,
        peers_in_plan: last.map_or(0, |s| s.3),
        shards: last.map_or(0, |s| s.4),
        max_shard_bytes: stored.iter().map(|s| s.5).max().unwrap_or(0),
        mean_written_bytes: stored.iter().map(|s| s.6 as f64).sum::<f64>()
            / stored.len().max(1) as f64,
        hint_reads: reads,
        hint_found: found,
        takeover_reads: t_reads,
        takeover_found: t_found,
        events: engine.processed(),
    }
}
