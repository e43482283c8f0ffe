//! One simulated run of a scenario: the workload drives the engine, the engine hosts the real
//! exchange on every host, and the QoS definitions of `peer::qos` measure what viewers got.
//!
//! The modes share everything but the protocol's freedom: [`Mode::Selfcast`] lets viewers find
//! and use each other; [`Mode::Optimizer`] adds the optimizer's loop (`optimizer_loop`: QoS
//! reports in, plans, hints out); [`Mode::RandomMesh`] is Selfcast with random parents (no
//! capacity-aware tree, no hints); [`Mode::SourceOnly`] is the baseline where every viewer is
//! served by the source alone, as a CDN would serve them (the source's upload is then
//! unlimited).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use peer::exchange::{
    Event, Exchange, ExchangeConfig, Hint, ParentChoice, HOLDER_REFRESH, HOLDER_TTL,
    MAX_HELD_RANGES, MAX_INDEX_HOLDERS,
};
use peer::identity::{Keypair, PeerId};
use peer::qos::{source_offload, ViewerQos};
use peer::segment::{ChannelRecord, SegmentId, SignedChannel, StreamKind as PeerStreamKind};
use peer::wire::PeerAddr;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp, Pareto, Weibull};

use crate::engine::{Engine, Step};
use crate::hosted::{host_addr, Directory, ExchangeCore, HostEvent, MemoVerifier};
use crate::metrics::{percentiles, RunSeries, Sample, Summary, Traffic};
use crate::net::{HostId, HostNet, NatType, SimTime};
use crate::optimizer_loop::{self, Coordinator};
use crate::scenario::{Network, Scenario, SessionLength, StreamKind, VodStart};
use tracker_overlay::coordinator::{QosReport, Role, MAX_REPORT_PARTNERS};
use tracker_overlay::swarm::{self, Holder};
use tracker_overlay::Value;

/// The Unix time (ms) that simulated time 0 stands for; fixed so that runs are reproducible.
const EPOCH_UNIX_MS: u64 = 1_700_000_000_000;
/// Size of the simulated init segment.
const INIT_BYTES: usize = 1200;

/// Which protocol the viewers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Selfcast: viewers exchange segments among themselves.
    Selfcast,
    /// Selfcast with the optimizer's loop: viewers report, the coordinator plans, viewers take
    /// the plan's hints.
    Optimizer,
    /// Selfcast with random partners and random parents: no hints, no capacity-aware tree.
    RandomMesh,
    /// The baseline: every viewer fetches everything from the source.
    SourceOnly,
}

impl Mode {
    /// The label used in reports.
    pub fn label(self) -> &'static str {
        match self {
            Self::Selfcast => "selfcast",
            Self::Optimizer => "optimizer",
            Self::RandomMesh => "random-mesh",
            Self::SourceOnly => "source-only",
        }
    }

    /// The runs `sim run` makes of `scenario`, in report order: Selfcast and the source-only
    /// baseline; with the optimizer's loop enabled, the optimizer first and the random mesh
    /// beside them.
    pub fn for_scenario(scenario: &Scenario) -> Vec<Mode> {
        if scenario.optimizer.is_some() {
            vec![
                Self::Optimizer,
                Self::Selfcast,
                Self::RandomMesh,
                Self::SourceOnly,
            ]
        } else {
            vec![Self::Selfcast, Self::SourceOnly]
        }
    }

    /// Whether viewers use each other (all but the source-only baseline).
    fn peer_to_peer(self) -> bool {
        self != Self::SourceOnly
    }
}

/// The driver's own events.
#[derive(Debug, Clone, Copy)]
enum Ext {
    Publish(u64),
    Join,
    Depart {
        host: HostId,
        crash: bool,
    },
    Seek {
        host: HostId,
    },
    SourceFail {
        down: SimTime,
    },
    SourceReturn,
    PartitionStart {
        index: usize,
    },
    PartitionEnd,
    Sample,
    /// Viewers whose turn it is send their QoS reports (second `n` of the run).
    Report(u64),
    /// The coordinator plans.
    Plan,
    /// A hint (index into the runner's hints in flight) reaches its viewer.
    Hint(usize),
    /// On demand, viewers put their entry into the holder index: those that hold something
    /// for the first time, and those whose turn it is (second `n` of the run).
    AnnounceHolders(u64),
    /// The holder index answers a viewer's look-up for media segment `seq`.
    Holders {
        host: HostId,
        seq: u64,
    },
}

struct Viewer {
    qos: ViewerQos,
    peer: PeerId,
    nat: NatType,
    /// Segments due and on time at the last report.
    reported: peer::qos::Judged,
}

/// The state of one run.
struct Runner<'a> {
    scenario: &'a Scenario,
    mode: Mode,
    engine: Engine<ExchangeCore, Ext>,
    rng: ChaCha8Rng,
    directory: Rc<RefCell<Directory>>,
    config: ExchangeConfig,
    key: Keypair,
    record: SignedChannel,
    source: HostId,
    source_peer: PeerId,
    source_up: bool,
    viewers: BTreeMap<HostId, Viewer>,
    /// Viewers present, in join order (bootstrap samples are drawn from it).
    present: Vec<HostId>,
    end: SimTime,
    // Totals.
    due: u64,
    on_time: u64,
    joined: u64,
    peak: u64,
    from_source: u64,
    received: u64,
    delivered: u64,
    latencies_ms: Vec<f64>,
    startups_ms: Vec<f64>,
    samples: Vec<Sample>,
    // Since the last sample.
    window: Window,
    /// The optimizer's coordinator ([`Mode::Optimizer`] only).
    coordinator: Option<Coordinator>,
    /// Seconds per round of the optimizer's loop.
    round_ticks: u64,
    /// Hints on their way to viewers.
    hints: Vec<Option<(HostId, Hint)>>,
    /// On demand: the stored values of the buckets of the channel's holder index in the
    /// overlay.
    holder_index: BTreeMap<u64, Value>,
    /// Look-ups in the holder index so far.
    holder_lookups: u64,
    /// Viewers that put an entry into the holder index at least once.
    announced: std::collections::BTreeSet<HostId>,
    /// Delays of holder-index look-ups.
    holder_rng: ChaCha8Rng,
    /// Randomness of the loop's message delays (its own stream: the other modes' runs do not
    /// change when the loop does).
    loop_rng: ChaCha8Rng,
}

#[derive(Default)]
struct Window {
    due: u64,
    on_time: u64,
    from_source: u64,
    received: u64,
    latencies_ms: Vec<f64>,
}

/// Runs `scenario` with `seed` in `mode` and returns what it measured.
pub fn run(scenario: &Scenario, seed: u64, mode: Mode) -> RunSeries {
    let mut runner = Runner::new(scenario, seed, mode);
    runner.schedule_workload();
    runner.drive();
    runner.finish()
}

impl<'a> Runner<'a> {
    fn new(scenario: &'a Scenario, seed: u64, mode: Mode) -> Self {
        let net = &scenario.network;
        let mut engine = Engine::new(derive_seed(seed, 1), net.traversal, net.jitter, net.loss);
        let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(seed, 2));
        let key = Keypair::from_seed(rng.gen());
        let kind = match scenario.stream.kind {
            StreamKind::Live => PeerStreamKind::Live,
            StreamKind::Vod => PeerStreamKind::Vod,
        };
        let record = ChannelRecord {
            broadcaster: key.public(),
            name: scenario.name.clone(),
            kind,
            segment_target_ms: scenario.stream.segment_ms as u32,
            started_unix_ms: EPOCH_UNIX_MS,
        }
        .sign(&key);
        let protocol = &scenario.protocol;
        let config = ExchangeConfig {
            max_partners: match mode {
                Mode::SourceOnly => 1,
                _ => protocol.max_partners,
            },
            parent_choice: match mode {
                Mode::RandomMesh => ParentChoice::Random,
                _ => ParentChoice::Nearest,
            },
            live_start_behind: protocol.live_start_behind,
            target_latency: Duration::from_secs_f64(protocol.playback_latency_s),
            verifier: Arc::new(MemoVerifier::default()),
            origin: scenario.origin.is_some() && mode.peer_to_peer(),
            ..ExchangeConfig::default()
        };
        let up_bps = match mode {
            Mode::SourceOnly => f64::INFINITY,
            _ => scenario.source.up_mbps * 1e6,
        };
        let source = engine.add_host(server_net(&mut rng, net, up_bps));
        let directory = Rc::new(RefCell::new(Directory::default()));
        let source_peer = key.peer_id();
        directory.borrow_mut().insert(source_peer, source);
        // The origin serves the peer-to-peer runs' viewers; the baseline's source already serves
        // everyone.
        let origin = scenario.origin.filter(|_| mode.peer_to_peer());
        if let Some(origin) = origin {
            let host = engine.add_server(server_net(&mut rng, net, origin.up_mbps * 1e6));
            directory.borrow_mut().set_origin(host);
        }
        let end = secs(scenario.duration_s);
        let round_s = scenario.optimizer.as_ref().map_or(5.0, |o| o.round_s);
        let coordinator = (mode == Mode::Optimizer).then(|| {
            Coordinator::new(
                record.record.channel_id().0,
                source_peer.0,
                (scenario.stream.bitrate_kbps * 1000.0) as u64,
                (scenario.source.up_mbps * 1e6) as u64,
                optimizer_loop::coord(engine.net().host(source)),
                secs(round_s),
            )
        });
        let mut runner = Self {
            scenario,
            mode,
            engine,
            rng,
            directory,
            config,
            key,
            record,
            source,
            source_peer,
            source_up: false,
            viewers: BTreeMap::new(),
            present: Vec::new(),
            end,
            due: 0,
            on_time: 0,
            joined: 0,
            peak: 0,
            from_source: 0,
            received: 0,
            delivered: 0,
            latencies_ms: Vec::new(),
            startups_ms: Vec::new(),
            samples: Vec::new(),
            window: Window::default(),
            coordinator,
            round_ticks: (round_s.round() as u64).max(1),
            hints: Vec::new(),
            holder_index: BTreeMap::new(),
            holder_lookups: 0,
            announced: std::collections::BTreeSet::new(),
            holder_rng: ChaCha8Rng::seed_from_u64(derive_seed(seed, 4)),
            loop_rng: ChaCha8Rng::seed_from_u64(derive_seed(seed, 3)),
        };
        runner.start_source();
        runner
    }

    fn start_source(&mut self) {
        let now = self.engine.instant(self.engine.now());
        let mut config = self.config.clone();
        config.upload_guess_bps = self.scenario.source.up_mbps * 1e6;
        config.upload_limit_bps = Some(config.upload_guess_bps);
        if self.mode == Mode::SourceOnly {
            // A CDN takes every viewer, feeds each one itself (none is turned away to be fed by
            // another viewer) and serves every request at once.
            config.partner_limit = usize::MAX;
            config.upload_slots = usize::MAX;
            config.source_min_children = usize::MAX;
            config.upload_limit_bps = None;
            config.share_peers = false;
        }
        let exchange = Exchange::source(
            now,
            config,
            self.key.clone(),
            self.record.clone(),
            Some(host_addr(self.source)),
        );
        self.engine.start(
            self.source,
            ExchangeCore::new(exchange, self.directory.clone()),
        );
        self.source_up = true;
    }

    fn schedule_workload(&mut self) {
        let s = self.scenario;
        // The init segment, and for VOD the whole film, exist from the start.
        self.publish(
            SegmentId::Init,
            Duration::ZERO,
            Bytes::from(vec![0u8; INIT_BYTES]),
            false,
        );
        match s.stream.kind {
            StreamKind::Live => self.engine.schedule(segment_ns(s), Ext::Publish(0)),
            StreamKind::Vod => {
                let count = s.film_segments().unwrap_or(0);
                for seq in 0..count {
                    let bytes = self.segment_payload(seq);
                    self.publish(SegmentId::Media(seq), s.segment(), bytes, false);
                }
                self.publish(SegmentId::Media(count), Duration::ZERO, Bytes::new(), true);
            }
        }
        let v = &s.viewers;
        for i in 0..v.initial {
            let at = if v.initial > 1 {
                v.join_over_s * f64::from(i) / f64::from(v.initial)
            } else {
                0.0
            };
            self.engine.schedule(secs(at), Ext::Join);
        }
        for crowd in &v.flash_crowds {
            for i in 0..crowd.peers {
                let at = crowd.at_s + crowd.over_s * f64::from(i) / f64::from(crowd.peers.max(1));
                self.engine.schedule(secs(at), Ext::Join);
            }
        }
        for outage in &s.source.failures {
            self.engine.schedule(
                secs(outage.at_s),
                Ext::SourceFail {
                    down: secs(outage.down_s),
                },
            );
        }
        for (index, p) in s.network.partitions.iter().enumerate() {
            self.engine
                .schedule(secs(p.at_s), Ext::PartitionStart { index });
            self.engine
                .schedule(secs(p.at_s + p.duration_s), Ext::PartitionEnd);
        }
        self.engine.schedule(secs(s.sample_every_s), Ext::Sample);
        if self.coordinator.is_some() {
            self.engine.schedule(secs(1.0), Ext::Report(1));
            // Half a second after the reports of a round's last second went out.
            let round = secs(self.round_ticks as f64);
            self.engine.schedule(round + secs(0.5), Ext::Plan);
        }
        if s.stream.kind == StreamKind::Vod && self.mode.peer_to_peer() {
            self.engine.schedule(secs(1.0), Ext::AnnounceHolders(1));
        }
    }

    fn drive(&mut self) {
        let mut events = Vec::new();
        loop {
            match self.engine.step(self.end, &mut events) {
                Step::External(ext) => self.on_ext(ext),
                Step::Events => {
                    for (host, event) in events.drain(..) {
                        match event {
                            HostEvent::Exchange(event) => self.on_event(host, event),
                            HostEvent::LookupHolders(seq) => self.look_up_holders(host, seq),
                        }
                    }
                }
                Step::Idle => return,
            }
        }
    }

    fn on_ext(&mut self, ext: Ext) {
        let now = self.engine.now();
        match ext {
            Ext::Publish(seq) => {
                if self.source_up {
                    let bytes = self.segment_payload(seq);
                    self.publish(SegmentId::Media(seq), self.scenario.segment(), bytes, false);
                }
                let next = now + segment_ns(self.scenario);
                if next <= self.end {
                    self.engine.schedule(next, Ext::Publish(seq + 1));
                }
            }
            Ext::Join => self.join(),
            Ext::Depart { host, crash } => self.depart(host, crash),
            Ext::Seek { host } => self.seek(host),
            Ext::SourceFail { down } => {
                self.engine.crash(self.source);
                self.source_up = false;
                self.engine.schedule(now + down, Ext::SourceReturn);
            }
            Ext::SourceReturn => self.start_source(),
            Ext::PartitionStart { index } => {
                let fraction = self.scenario.network.partitions[index].fraction;
                let cut: std::collections::BTreeSet<HostId> = self
                    .present
                    .iter()
                    .copied()
                    .filter(|_| self.rng.gen_bool(fraction))
                    .collect();
                self.engine.partition(|h| cut.contains(&h));
            }
            Ext::PartitionEnd => self.engine.heal(),
            Ext::Sample => {
                self.sample();
                let next = now + secs(self.scenario.sample_every_s);
                if next <= self.end {
                    self.engine.schedule(next, Ext::Sample);
                }
            }
            Ext::Report(tick) => {
                self.send_reports(tick);
                let next = now + secs(1.0);
                if next <= self.end {
                    self.engine.schedule(next, Ext::Report(tick + 1));
                }
            }
            Ext::AnnounceHolders(tick) => {
                self.announce_holders(tick);
                let next = now + secs(1.0);
                if next <= self.end {
                    self.engine.schedule(next, Ext::AnnounceHolders(tick + 1));
                }
            }
            Ext::Holders { host, seq } => self.answer_holders(host, seq),
            Ext::Plan => {
                self.plan_round();
                let next = now + secs(self.round_ticks as f64);
                if next <= self.end {
                    self.engine.schedule(next, Ext::Plan);
                }
            }
            Ext::Hint(index) => {
                let Some((host, hint)) = self.hints.get_mut(index).and_then(Option::take) else {
                    return;
                };
                if self.viewers.contains_key(&host) {
                    self.engine
                        .with_core(host, |core, now| core.exchange().apply_hint(now, hint));
                }
                // The slab empties when nothing is in flight.
                if self.hints.iter().all(Option::is_none) {
                    self.hints.clear();
                }
            }
        }
    }

    /// On demand, viewers put what they hold into the channel's holder index: once as soon as
    /// they hold something, then in their turn (one second in [`HOLDER_REFRESH`] each). It is
    /// the same `swarm` update a real node commits, applied here at once: the store's
    /// transactions are not simulated (a real refresh lands a few round trips later, and may
    /// be retried after another holder's write to the same bucket).
    fn announce_holders(&mut self, tick: u64) {
        let every = HOLDER_REFRESH.as_secs().max(1);
        let now_unix_s = self.unix_s();
        let channel = self.record.record.channel_id().0;
        for host in self.viewers.keys() {
            let turn = u64::from(host.0) % every == tick % every;
            if !turn && self.announced.contains(host) {
                continue;
            }
            let Some(core) = self.engine.core(*host) else {
                continue;
            };
            let exchange = core.exchange_ref();
            let ranges = exchange.held_ranges(MAX_HELD_RANGES);
            if ranges.is_empty() {
                continue;
            }
            self.announced.insert(*host);
            let buckets = swarm::holder_buckets(&ranges);
            let me = Holder {
                peer: exchange.me().0,
                addr: host_addr(*host),
                ranges,
                expires_unix_s: now_unix_s + HOLDER_TTL.as_secs(),
            };
            for bucket in buckets {
                let stored = self.holder_index.get(&bucket);
                match swarm::announce_holder(&channel, bucket, stored, me.clone(), now_unix_s) {
                    Ok(update) => {
                        if let Some(value) = update.new_value() {
                            self.holder_index.insert(bucket, value.clone());
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "holder index not updated"),
                }
            }
        }
    }

    /// A viewer asks the holder index who holds `seq`: the answer comes after a read through
    /// the overlay (modelled as two round trips to a random other viewer: the route to the
    /// key's replicas and the quorum read).
    fn look_up_holders(&mut self, host: HostId, seq: u64) {
        self.holder_lookups += 1;
        let others = self.present.len().saturating_sub(1);
        if others == 0 {
            return;
        }
        // Another viewer than the asker.
        let pick = self.holder_rng.gen_range(0..others);
        let Some(other) = self
            .present
            .iter()
            .filter(|h| **h != host)
            .nth(pick)
            .copied()
        else {
            return;
        };
        let net = self.engine.net();
        let delay = (0..4)
            .map(|_| net.message_delay(host, other, &mut self.holder_rng))
            .sum::<Duration>();
        let at = self.engine.now() + delay.as_nanos() as SimTime;
        self.engine.schedule(at, Ext::Holders { host, seq });
    }

    fn answer_holders(&mut self, host: HostId, seq: u64) {
        let Some(viewer) = self.viewers.get(&host) else {
            return;
        };
        let me = viewer.peer.0;
        let stored = self.holder_index.get(&swarm::holder_bucket(seq));
        let list = swarm::holders(stored, self.unix_s()).unwrap_or_default();
        let peers: Vec<PeerAddr> = swarm::holders_of(&list, seq, &me, MAX_INDEX_HOLDERS)
            .into_iter()
            .map(PeerAddr::from)
            .collect();
        if !peers.is_empty() {
            self.engine.with_core(host, |core, now| {
                core.exchange().add_holders(now, seq, peers)
            });
        }
    }

    /// Simulated time as Unix seconds (the clock the overlay's entries expire by).
    fn unix_s(&self) -> u64 {
        (EPOCH_UNIX_MS + self.engine.now() / 1_000_000) / 1000
    }

    /// The viewers whose second of the round `tick` is send what they measured to the
    /// coordinator.
    fn send_reports(&mut self, tick: u64) {
        let Some(coordinator) = self.coordinator.as_mut() else {
            return;
        };
        let now = self.engine.now();
        let bitrate_bps = (self.scenario.stream.bitrate_kbps * 1000.0) as u64;
        let channel = coordinator.channel();
        for (host, viewer) in &mut self.viewers {
            if u64::from(host.0) % self.round_ticks != tick % self.round_ticks {
                continue;
            }
            let Some(core) = self.engine.core(*host) else {
                continue;
            };
            let exchange = core.exchange_ref();
            let (upload_bps, ..) = exchange.upload_state();
            let mut partners: Vec<[u8; 32]> = exchange
                .partners()
                .filter(|p| !p.is_source)
                .map(|p| p.peer.0)
                .collect();
            partners.truncate(MAX_REPORT_PARTNERS);
            // Lag: the median latency of what arrived since the last report.
            let mut latencies = viewer.qos.take_latencies();
            latencies.sort_unstable();
            let lag_ms = latencies
                .get(latencies.len() / 2)
                .map(|d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX));
            let totals = viewer.qos.totals();
            let due = totals.due - viewer.reported.due;
            let on_time = totals.on_time - viewer.reported.on_time;
            viewer.reported = totals;
            let continuity = if due > 0 {
                on_time as f32 / due as f32
            } else {
                1.0
            };
            let net = self.engine.net();
            let report = QosReport {
                channel,
                role: Role::Viewer,
                upload_bps: upload_bps as u64,
                need_bps: bitrate_bps,
                coord: optimizer_loop::coord(net.host(*host)),
                connectivity: optimizer_loop::connectivity(viewer.nat),
                lag_ms,
                continuity,
                partners,
            };
            let delay = net.message_delay(*host, self.source, &mut self.loop_rng);
            let arrival = now + delay.as_nanos() as SimTime;
            coordinator.send_report(arrival, viewer.peer.0, &report);
        }
    }

    /// The coordinator plans from the reports that arrived and sends the hints that changed.
    fn plan_round(&mut self) {
        let Some(coordinator) = self.coordinator.as_mut() else {
            return;
        };
        let now = self.engine.now();
        // The source reports what its exchange measured, as a viewer does.
        let source_upload = self
            .engine
            .core(self.source)
            .map_or(0.0, |c| c.exchange_ref().upload_state().0);
        let Some(out) = coordinator.round(now, source_upload as u64) else {
            return;
        };
        // The source is the coordinator's host: its list of tier-1 peers needs no message.
        let source_hint = optimizer_loop::source_hint(out.epoch, &out.from_source);
        if self.source_up {
            self.engine.with_core(self.source, |core, now| {
                core.exchange().apply_hint(now, source_hint)
            });
        }
        for (entry, downstream) in out.hints {
            let hint = {
                let directory = self.directory.borrow();
                optimizer_loop::exchange_hint(out.epoch, &entry, &downstream, |id| {
                    directory.host(id).map(host_addr)
                })
            };
            let Some(host) = self.directory.borrow().host(&PeerId(entry.peer)) else {
                continue;
            };
            let delay = self
                .engine
                .net()
                .message_delay(self.source, host, &mut self.loop_rng);
            let index = self.hints.len();
            self.hints.push(Some((host, hint)));
            self.engine
                .schedule(now + delay.as_nanos() as SimTime, Ext::Hint(index));
        }
    }

    fn on_event(&mut self, host: HostId, event: Event) {
        let Event::Stored {
            id,
            meta,
            bytes,
            from,
            origin,
        } = event
        else {
            return;
        };
        if from.is_none() && !origin {
            return; // published here
        }
        let now = self.engine.now();
        let Some(viewer) = self.viewers.get_mut(&host) else {
            return;
        };
        let instant = self.engine.instant(now);
        let len = bytes.len() as u64;
        self.received += len;
        self.window.received += len;
        // The origin, like the source, is what the swarm spares (DESIGN.md's source offload).
        if origin || from == Some(self.source_peer) {
            self.from_source += len;
            self.window.from_source += len;
        }
        match id {
            SegmentId::Init => {
                viewer.qos.on_init(instant);
            }
            SegmentId::Media(seq) => {
                self.delivered += 1;
                let now_ms = EPOCH_UNIX_MS + now / 1_000_000;
                let latency = Duration::from_millis(now_ms.saturating_sub(meta.created_unix_ms));
                // Live latency means nothing for a film that exists before anyone watches.
                if self.scenario.stream.kind == StreamKind::Live {
                    let latency_ms = latency.as_secs_f64() * 1000.0;
                    self.latencies_ms.push(latency_ms);
                    self.window.latencies_ms.push(latency_ms);
                }
                viewer.qos.on_segment(instant, seq, latency);
            }
        }
    }

    fn join(&mut self) {
        let s = self.scenario;
        let net = &s.network;
        let class = pick(&mut self.rng, s.viewers.classes.iter().map(|c| c.share))
            .and_then(|i| s.viewers.classes.get(i));
        let Some(class) = class else { return };
        let mix = class.nat.unwrap_or(net.nat);
        let nat = match pick(
            &mut self.rng,
            [mix.open, mix.full_cone, mix.port_restricted, mix.symmetric],
        ) {
            Some(1) => NatType::FullCone,
            Some(2) => NatType::PortRestricted,
            Some(3) => NatType::Symmetric,
            _ => NatType::Open,
        };
        let pos = (
            self.rng.gen_range(0.0..=net.area_ms),
            self.rng.gen_range(0.0..=net.area_ms),
        );
        let access = self.rng.gen_range(net.access_ms[0]..=net.access_ms[1]);
        let host = self.engine.add_host(HostNet::new(
            pos,
            access,
            class.up_mbps * 1e6,
            class.down_mbps * 1e6,
            nat,
        ));
        let peer = PeerId(*blake3::hash(format!("sim viewer {}", host.0).as_bytes()).as_bytes());
        self.directory.borrow_mut().insert(peer, host);

        let now = self.engine.instant(self.engine.now());
        // A viewer's user configured its upload capacity (here its class): the exchange
        // starts from it and measures below it.
        let config = ExchangeConfig {
            upload_guess_bps: class.up_mbps * 1e6,
            upload_limit_bps: Some(class.up_mbps * 1e6),
            ..self.config.clone()
        };
        let exchange = Exchange::viewer(
            now,
            config,
            peer,
            self.record.record.channel_id(),
            Some(host_addr(host)),
        );
        let mut candidates = vec![PeerAddr {
            id: self.source_peer,
            addr: host_addr(self.source),
        }];
        if self.mode.peer_to_peer() {
            let others: Vec<HostId> = self
                .present
                .choose_multiple(&mut self.rng, s.protocol.bootstrap_peers)
                .copied()
                .collect();
            let directory = self.directory.borrow();
            candidates.extend(others.into_iter().filter_map(|h| {
                directory.peer(h).map(|id| PeerAddr {
                    id,
                    addr: host_addr(h),
                })
            }));
        }
        self.engine
            .start(host, ExchangeCore::new(exchange, self.directory.clone()));
        self.engine.with_core(host, |core, now| {
            core.exchange().add_candidates(now, candidates)
        });
        let live_target = (s.stream.kind == StreamKind::Live)
            .then(|| Duration::from_secs_f64(s.protocol.playback_latency_s));
        let vod = s.viewers.vod;
        let first = match vod.map(|v| v.start) {
            Some(VodStart::Random) => {
                let first = self.random_position();
                self.engine
                    .with_core(host, |core, now| core.exchange().set_playhead(now, first));
                first
            }
            Some(VodStart::Beginning) | None => 0,
        };
        self.viewers.insert(
            host,
            Viewer {
                qos: viewer_qos(now, s, live_target, first),
                peer,
                nat,
                reported: peer::qos::Judged::default(),
            },
        );
        if let Some(every) = vod.and_then(|v| v.seek_every) {
            let at = self.engine.now() + secs(session_length(&mut self.rng, every));
            if at <= self.end {
                self.engine.schedule(at, Ext::Seek { host });
            }
        }
        self.present.push(host);
        self.joined += 1;
        self.peak = self.peak.max(self.present.len() as u64);

        if let Some(churn) = &s.viewers.churn {
            let length = session_length(&mut self.rng, churn.session);
            let crash = self.rng.gen_bool(churn.crash_fraction);
            let at = self.engine.now() + secs(length);
            if at <= self.end {
                self.engine.schedule(at, Ext::Depart { host, crash });
            }
        }
    }

    /// A uniformly drawn segment of the film, outside its last tenth.
    fn random_position(&mut self) -> u64 {
        let segments = self.scenario.film_segments().unwrap_or(0) as f64;
        let end = (segments * 0.9).max(1.0) as u64;
        self.rng.gen_range(0..end)
    }

    /// An on-demand viewer jumps to a random position: playback there is judged afresh (the
    /// wait for it counts as a startup delay), from what the viewer holds already and what
    /// it fetches next.
    fn seek(&mut self, host: HostId) {
        let instant = self.engine.instant(self.engine.now());
        let Some(viewer) = self.viewers.get_mut(&host) else {
            return;
        };
        let judged = viewer.qos.advance(instant);
        self.window.due += judged.due;
        self.window.on_time += judged.on_time;
        let totals = viewer.qos.totals();
        self.due += totals.due;
        self.on_time += totals.on_time;
        let first = self.random_position();
        let s = self.scenario;
        let mut qos = viewer_qos(instant, s, None, first);
        let end = s.film_segments().unwrap_or(0);
        let mut held = Vec::new();
        self.engine.with_core(host, |core, now| {
            let exchange = core.exchange();
            exchange.set_playhead(now, first);
            let init = exchange.segment(SegmentId::Init).is_some();
            // Everything from there on that it holds, not only the run up to the first gap:
            // what it fetched before the seek further on is played from its store too.
            held.extend(
                (first..end)
                    .filter(|n| exchange.segment(SegmentId::Media(*n)).is_some())
                    .map(Some),
            );
            if init {
                held.push(None);
            }
        });
        // What it already holds is playable at once.
        for seq in held {
            match seq {
                Some(seq) => qos.on_segment(instant, seq, Duration::ZERO),
                None => qos.on_init(instant),
            }
        }
        if let Some(viewer) = self.viewers.get_mut(&host) {
            let sought_from = std::mem::replace(&mut viewer.qos, qos);
            self.startups_ms.extend(startup_ms(&sought_from));
        }
        if let Some(every) = s.viewers.vod.and_then(|v| v.seek_every) {
            let at = self.engine.now() + secs(session_length(&mut self.rng, every));
            if at <= self.end {
                self.engine.schedule(at, Ext::Seek { host });
            }
        }
    }

    fn depart(&mut self, host: HostId, crash: bool) {
        let instant = self.engine.instant(self.engine.now());
        if let Some(mut viewer) = self.viewers.remove(&host) {
            if let Some(c) = self.coordinator.as_mut() {
                c.forget(&viewer.peer.0);
            }
            self.startups_ms.extend(startup_ms(&viewer.qos));
            let judged = viewer.qos.advance(instant);
            self.window.due += judged.due;
            self.window.on_time += judged.on_time;
            let totals = viewer.qos.totals();
            self.due += totals.due;
            self.on_time += totals.on_time;
        }
        self.present.retain(|h| *h != host);
        if crash {
            self.engine.crash(host);
        } else {
            self.engine.leave(host);
        }
        if self
            .scenario
            .viewers
            .churn
            .as_ref()
            .is_some_and(|c| c.replace)
        {
            self.join();
        }
    }

    fn sample(&mut self) {
        let now = self.engine.now();
        let instant = self.engine.instant(now);
        let vod = self.record.record.kind == PeerStreamKind::Vod;
        let mut playheads = Vec::new();
        for (host, viewer) in self.viewers.iter_mut() {
            let judged = viewer.qos.advance(instant);
            self.window.due += judged.due;
            self.window.on_time += judged.on_time;
            if let Some(seq) = viewer.qos.playhead().filter(|_| vod) {
                playheads.push((*host, seq));
            }
        }
        // An on-demand player asks for the segment it plays next, as the gateway tells the
        // real node: what it skipped is not fetched any more.
        for (host, seq) in playheads {
            self.engine
                .with_core(host, |core, now| core.exchange().set_playhead(now, seq));
        }
        let w = std::mem::take(&mut self.window);
        let interval = self.scenario.sample_every_s;
        let mbps = |bytes: u64| bytes as f64 * 8.0 / 1e6 / interval;
        self.samples.push(Sample {
            t_s: now as f64 / 1e9,
            viewers: self.present.len() as u64,
            continuity: if w.due > 0 {
                w.on_time as f64 / w.due as f64
            } else {
                1.0
            },
            source_offload: source_offload(w.from_source, w.received),
            source_mbps: mbps(w.from_source),
            p2p_mbps: mbps(w.received - w.from_source),
            latency_p50_ms: percentiles(&w.latencies_ms).p50,
        });
    }

    fn finish(mut self) -> RunSeries {
        let mut depths = Vec::new();
        let mut unfed = 0;
        let (mut hinted, mut following, mut fed_hinted) = (0u64, 0u64, 0u64);
        for host in self.viewers.keys() {
            if let Some(core) = self.engine.core(*host) {
                let exchange = core.exchange_ref();
                match exchange.tree() {
                    (Some(_), _, depth) => depths.push(f64::from(depth)),
                    (None, ..) => unfed += 1,
                }
                hinted += u64::from(exchange.hint().is_some());
                if let Some(follows) = exchange.follows_hint() {
                    fed_hinted += 1;
                    following += u64::from(follows);
                }
            }
        }
        let instant = self.engine.instant(self.engine.now());
        for viewer in self.viewers.values_mut() {
            self.startups_ms.extend(startup_ms(&viewer.qos));
            viewer.qos.advance(instant);
            let totals = viewer.qos.totals();
            self.due += totals.due;
            self.on_time += totals.on_time;
        }
        let mut messages: BTreeMap<String, Traffic> = self
            .engine
            .traffic()
            .iter()
            .map(|(kind, t)| {
                (
                    (*kind).to_owned(),
                    Traffic {
                        count: t.count,
                        bytes: t.bytes,
                    },
                )
            })
            .collect();
        let optimizer = self.coordinator.as_ref().map(|c| {
            for (kind, (count, bytes)) in [
                ("qos-report", c.report_traffic),
                ("plan-hint", c.hint_traffic),
            ] {
                messages.insert(kind.to_owned(), Traffic { count, bytes });
            }
            optimizer_loop::LoopSummary {
                hinted_viewers: hinted,
                parents_as_planned: if fed_hinted > 0 {
                    following as f64 / fed_hinted as f64
                } else {
                    0.0
                },
                ..c.summary
            }
        });
        let summary = Summary {
            continuity: if self.due > 0 {
                self.on_time as f64 / self.due as f64
            } else {
                0.0
            },
            source_offload: source_offload(self.from_source, self.received),
            latency_ms: percentiles(&self.latencies_ms),
            startup_ms: percentiles(&self.startups_ms),
            viewers_joined: self.joined,
            viewers_started: self.startups_ms.len() as u64,
            peak_viewers: self.peak,
            source_bytes: self.from_source,
            viewer_bytes: self.received,
            segments_delivered: self.delivered,
            messages,
            events: self.engine.processed(),
            tree_depth: percentiles(&depths),
            unfed_viewers: unfed,
            holder_lookups: self.holder_lookups,
            optimizer,
        };
        RunSeries {
            label: self.mode.label().to_owned(),
            summary,
            samples: self.samples,
            latencies_ms: self.latencies_ms,
            startups_ms: self.startups_ms,
        }
    }

    fn publish(&mut self, id: SegmentId, duration: Duration, bytes: Bytes, last: bool) {
        let created = EPOCH_UNIX_MS + self.engine.now() / 1_000_000;
        self.directory.borrow_mut().mirror(id, &bytes);
        self.engine.with_core(self.source, |core, now| {
            // Publishing our own well-formed segment at the source cannot fail.
            let _ = core
                .exchange()
                .publish(now, id, duration, created, bytes, last);
        });
    }

    /// A segment's bytes: its number, then zeros up to the stream's segment size.
    fn segment_payload(&self, seq: u64) -> Bytes {
        let mut bytes = vec![0u8; self.scenario.segment_bytes().max(8)];
        bytes[..8].copy_from_slice(&seq.to_le_bytes());
        Bytes::from(bytes)
    }
}

/// An index drawn with the given weights.
fn pick(rng: &mut impl Rng, weights: impl IntoIterator<Item = f64>) -> Option<usize> {
    let weights: Vec<f64> = weights.into_iter().collect();
    let total: f64 = weights.iter().sum();
    let mut x = rng.gen_range(0.0..total.max(f64::MIN_POSITIVE));
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            return Some(i);
        }
        x -= w;
    }
    weights.iter().rposition(|w| *w > 0.0)
}

/// A session length in seconds.
fn session_length(rng: &mut impl Rng, dist: SessionLength) -> f64 {
    match dist {
        SessionLength::Exponential { mean_s } => {
            Exp::new(1.0 / mean_s).map_or(mean_s, |d| d.sample(rng))
        }
        SessionLength::Weibull { shape, scale_s } => {
            Weibull::new(scale_s, shape).map_or(scale_s, |d| d.sample(rng))
        }
        SessionLength::Pareto { alpha, min_s } => {
            Pareto::new(min_s, alpha).map_or(min_s, |d| d.sample(rng))
        }
    }
}

/// The network of a well-connected machine (the source, an origin): anywhere in the area,
/// the shortest access delay, open, `up_bps` up and 1 Gbit/s down. Draws its place from `rng`.
fn server_net(rng: &mut impl Rng, net: &Network, up_bps: f64) -> HostNet {
    let pos = (
        rng.gen_range(0.0..=net.area_ms),
        rng.gen_range(0.0..=net.area_ms),
    );
    HostNet::new(pos, net.access_ms[0], up_bps, 1e9, NatType::Open)
}

fn secs(s: f64) -> SimTime {
    (s * 1e9).round() as SimTime
}

fn segment_ns(s: &Scenario) -> SimTime {
    s.stream.segment_ms * 1_000_000
}

/// Independent streams of randomness for the engine and the workload.
fn derive_seed(seed: u64, stream: u64) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.update(&stream.to_le_bytes());
    let bytes = h.finalize();
    u64::from_le_bytes(bytes.as_bytes()[..8].try_into().unwrap_or([0; 8]))
}

/// The startup delay of a playback that ends (the viewer sought, left, or the run ended) in
/// milliseconds, if it started: taken at the end because a live player waiting for its first
/// segment's target latency may still start sooner with an older one.
fn startup_ms(qos: &ViewerQos) -> Option<f64> {
    qos.startup_delay().map(|d| d.as_secs_f64() * 1000.0)
}

/// How a viewer's playback is judged: live, from the first segment it gets; on demand, from
/// segment `first` (where it started or sought) up to the film's end.
fn viewer_qos(
    joined: Instant,
    s: &Scenario,
    live_target: Option<Duration>,
    first: u64,
) -> ViewerQos {
    let qos = ViewerQos::new(joined, s.segment(), live_target);
    match s.film_segments() {
        Some(end) => qos.from_segment(first).ending_before(end),
        None => qos,
    }
}
