//! The self-managed optimizer loop on a ring: viewers report to the node responsible for the
//! channel's plan key, which plans every round and stores the plan by a transaction; when it
//! crashes its successor continues from the stored plan; coordinators that race for an epoch
//! never both store it.

#![allow(clippy::unwrap_used)]

mod harness;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use harness::Net;
use optimizer::{Connectivity, Coord};
use tracker_overlay::coordinator::{
    self, CoordEvent, CoordinatorConfig, Coordinators, QosReport, Role,
};
use tracker_overlay::swarm::{self, Field, MetaError, PeerHint};
use tracker_overlay::{Event, TxOp, Value};

const CHANNEL: [u8; 20] = [0x5c; 20];
const ROUND: Duration = Duration::from_secs(5);
const TICK: Duration = Duration::from_millis(20);

fn config(seed: u64) -> CoordinatorConfig {
    CoordinatorConfig {
        round: ROUND,
        seed,
        report_ttl: ROUND * 3 + Duration::from_millis(500),
        ..CoordinatorConfig::default()
    }
}

/// A ring whose nodes all run coordinators, and whose nodes (but `silent` ones) report QoS
/// every round.
struct Swarm {
    net: Net,
    start: Instant,
    coords: Vec<Vec<Coordinators>>,
    source: usize,
    next_report: Vec<Duration>,
    /// (time since start, node, epoch) of every plan stored.
    stored: Vec<(Duration, usize, u64)>,
    failed: Vec<(usize, u64)>,
    loaded: Vec<(usize, u64)>,
}

impl Swarm {
    /// A ring of `n`; node `source` broadcasts; each node runs `per_node` coordinator
    /// instances (two on one node make two coordinators that race).
    fn new(seed: u64, n: usize, per_node: usize) -> Self {
        let mut net = Net::new(seed);
        net.ring(n);
        let start = net.now;
        let coords = (0..n)
            .map(|i| {
                (0..per_node)
                    .map(|k| Coordinators::new(config((i * per_node + k) as u64)))
                    .collect()
            })
            .collect();
        let next_report = (0..n)
            .map(|i| Duration::from_millis(137 * i as u64 % ROUND.as_millis() as u64))
            .collect();
        Self {
            net,
            start,
            coords,
            source: 0,
            next_report,
            stored: Vec::new(),
            failed: Vec::new(),
            loaded: Vec::new(),
        }
    }

    fn coordinator_node(&self) -> usize {
        let key = coordinator::coordinator_key(&CHANNEL);
        self.net
            .alive()
            .into_iter()
            .find(|&i| self.net.hosts[i].node.is_responsible(key))
            .unwrap()
    }

    fn report(&self, i: usize) -> QosReport {
        let source = i == self.source;
        QosReport {
            channel: CHANNEL,
            role: if source {
                Role::Source {
                    bitrate_bps: 1_000_000,
                }
            } else {
                Role::Viewer
            },
            upload_bps: if source {
                8_000_000
            } else {
                600_000 * (i as u64 % 5)
            },
            need_bps: if source { 0 } else { 1_000_000 },
            coord: Coord::new((i * 13 % 100) as f32, (i * 29 % 100) as f32, 5.0),
            connectivity: Connectivity::FullCone,
            lag_ms: Some(2000),
            continuity: 0.99,
            partners: Vec::new(),
        }
    }

    fn run(&mut self, d: Duration) {
        let end = self.net.now + d;
        while self.net.now < end {
            self.net.run_for(TICK);
            let since = self.net.now - self.start;
            for i in self.net.alive() {
                if self.next_report[i] <= since {
                    self.next_report[i] += ROUND;
                    let report = self.report(i);
                    let now = self.net.now;
                    coordinator::send_report(&mut self.net.hosts[i].node, now, &report);
                    self.net.flush(i);
                }
            }
            self.pump();
        }
    }

    /// Hands the nodes' events to their coordinators and runs the coordinators' timers.
    fn pump(&mut self) {
        let now = self.net.now;
        let since = now - self.start;
        let events = std::mem::take(&mut self.net.events);
        for (i, e) in events {
            if !self.net.hosts[i].alive {
                continue;
            }
            let node = &mut self.net.hosts[i].node;
            match &e {
                Event::Delivered {
                    key,
                    origin,
                    payload,
                } => {
                    for c in &mut self.coords[i] {
                        c.handle_delivered(now, *key, origin.peer, payload, node)
                            .unwrap();
                    }
                }
                Event::TxDone { req, result } => {
                    let mine = self.coords[i]
                        .iter_mut()
                        .any(|c| c.handle_tx_done(now, *req, result, node));
                    if !mine {
                        self.net.events.push((i, e));
                    }
                }
                _ => self.net.events.push((i, e)),
            }
            self.net.flush(i);
        }
        for i in self.net.alive() {
            for c in &mut self.coords[i] {
                if c.poll_timeout().is_some_and(|t| t <= now) {
                    c.handle_timeout(now, &mut self.net.hosts[i].node);
                }
                while let Some(ev) = c.poll_event() {
                    match ev {
                        CoordEvent::PlanStored { epoch, .. } => self.stored.push((since, i, epoch)),
                        CoordEvent::PublishFailed { epoch, .. } => self.failed.push((i, epoch)),
                        CoordEvent::Loaded { epoch, .. } => self.loaded.push((i, epoch)),
                        _ => {}
                    }
                }
            }
            self.net.flush(i);
        }
    }

    /// Every epoch from 1 to the last stored exactly once.
    fn assert_epochs_consecutive(&self) {
        let mut by_epoch: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for &(_, node, epoch) in &self.stored {
            by_epoch.entry(epoch).or_default().push(node);
        }
        let epochs: Vec<u64> = by_epoch.keys().copied().collect();
        let expected: Vec<u64> = (1..=epochs.len() as u64).collect();
        assert_eq!(epochs, expected, "gaps in the stored epochs");
        for (epoch, nodes) in by_epoch {
            assert_eq!(nodes.len(), 1, "epoch {epoch} stored by {nodes:?}");
        }
    }

    fn wait(&mut self, via: usize, req: u64) -> Vec<Option<Value>> {
        loop {
            self.run(TICK);
            if let Some(r) = self.net.take_tx(via, req) {
                return r.unwrap();
            }
        }
    }

    /// What a viewer reads of the plan through the store: the header, then its shard.
    fn read_plan(&mut self, via: usize, viewer: usize) -> (u64, Option<PeerHint>) {
        let peer = self.net.hosts[viewer].node.me().peer;
        loop {
            let ops = vec![TxOp::Read(swarm::key(&CHANNEL, Field::Plan))];
            let req = self.net.transact(via, ops);
            let header = self.wait(via, req).remove(0);
            let header = swarm::plan_header(header.as_ref()).unwrap().unwrap();
            let req = self
                .net
                .transact(via, vec![swarm::read_plan_for(&CHANNEL, &peer, &header)]);
            let shard = self.wait(via, req).remove(0);
            match swarm::plan_for(&peer, &header, shard.as_ref()) {
                Ok(hint) => return (header.epoch, hint),
                Err(MetaError::StaleShard { .. }) => continue,
                Err(e) => panic!("{e}"),
            }
        }
    }
}

#[test]
fn the_successor_takes_over_from_the_stored_plan_after_a_crash() {
    let mut s = Swarm::new(61, 10, 1);
    let coord = s.coordinator_node();
    s.source = (coord + 1) % 10;
    s.run(ROUND * 6);
    let before = s.stored.len();
    assert!(before >= 3, "plans before the crash: {:?}", s.stored);
    assert!(s.stored.iter().all(|&(_, n, _)| n == coord));
    let last = s.stored.last().unwrap().2;

    let crash_at = s.net.now - s.start;
    s.net.crash(coord);
    s.run(ROUND * 5);
    s.assert_epochs_consecutive();
    let after: Vec<&(Duration, usize, u64)> = s.stored[before..].iter().collect();
    let &&(at, successor, epoch) = after.first().expect("no plan after the crash");
    assert_ne!(successor, coord);
    assert_eq!(epoch, last + 1, "the successor continues the stored epochs");
    assert!(
        at - crash_at <= ROUND * 2,
        "next plan {:?} after the crash",
        at - crash_at
    );
    assert!(
        s.loaded.iter().any(|&(n, e)| n == successor && e == last),
        "the successor read the stored plan of epoch {last}: {:?}",
        s.loaded
    );
    assert!(after.len() >= 3, "the successor keeps planning: {after:?}");

    // A viewer reads its own entry of the newest plan through the store.
    let viewer = (0..10).find(|&i| i != coord && i != s.source).unwrap();
    let newest = s.stored.last().unwrap().2;
    let (epoch, hint) = s.read_plan(viewer, viewer);
    assert!(
        epoch >= newest,
        "read epoch {epoch}, newest stored {newest}"
    );
    let hint = hint.expect("the viewer is in the plan");
    assert!(!hint.partners.is_empty());
}

#[test]
fn two_coordinators_racing_for_an_epoch_never_both_store_it() {
    // Two coordinator instances on the responsible node see the same reports at the same
    // instants: they plan the same epoch at once and race for it.
    let mut s = Swarm::new(62, 8, 2);
    let coord = s.coordinator_node();
    s.source = (coord + 1) % 8;
    s.run(ROUND * 8);
    s.assert_epochs_consecutive();
    assert!(
        s.stored.len() >= 4,
        "the pair keeps storing plans: {:?}",
        s.stored
    );
    assert!(
        s.failed.iter().any(|&(n, _)| n == coord),
        "the race was lost at least once: {:?}",
        s.failed
    );
}

#[test]
fn a_partitioned_coordinator_and_its_successor_never_both_store_an_epoch() {
    // The coordinator is cut off alone: it still believes it is responsible (a ring change
    // it cannot see), while the rest of the ring repairs around it and its successor takes
    // over. It cannot reach a majority of any replica set, so only one side stores; after
    // the heal both sides coordinate for a while and race.
    let mut s = Swarm::new(63, 10, 1);
    let coord = s.coordinator_node();
    s.source = (coord + 1) % 10;
    s.run(ROUND * 4);
    s.net.partition(&[coord]);
    s.run(ROUND * 6);
    let successor_plans = s.stored.iter().filter(|&&(_, n, _)| n != coord).count();
    assert!(successor_plans >= 2, "{:?}", s.stored);
    s.net.heal();
    s.run(ROUND * 10);
    s.assert_epochs_consecutive();
    let last = s.stored.last().unwrap();
    assert!(
        last.0 > s.net.now - s.start - ROUND * 3,
        "plans go on after the heal: {:?}",
        s.stored
    );
}
