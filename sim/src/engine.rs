//! The discrete-event engine: one queue, virtual time, a seeded RNG, and the hosts' cores.
//!
//! A core is any sans-IO state machine that implements [`Core`]: the engine feeds it inputs at
//! their simulated instants and carries out its outputs through the network model
//! ([`crate::net`]). No tokio, no threads, no wall clock: the same scenario and seed replay the
//! same run, event for event.
//!
//! Connections mirror the real node's QUIC connections: a dial completes after one round trip
//! at the dialler and half a round trip later at the other side, or fails after the handshake
//! timeout when the target is gone, unreachable through its NAT, or across a partition. Control
//! messages keep their order on a connection; bulk messages (segments) are flows that share
//! capacity. A crashed host's partners notice after the idle timeout; a host that leaves
//! closes its connections, and its partners notice one delay later.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use dary_heap::QuaternaryHeap;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rustc_hash::FxHashMap as HashMap;

use crate::metrics::Traffic;
use crate::net::{FlowDeadline, HostId, HostNet, Net, SimTime};
use crate::scenario::Traversal;

/// How long a dial to an unreachable host takes to fail, and how long a connection to a
/// crashed or cut-off host takes to be noticed (the real node's QUIC idle timeout).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// A sans-IO core as the engine hosts it.
pub trait Core {
    /// What travels between hosts.
    type Msg;
    /// What the core reports to the scenario (metrics).
    type Event;

    /// Feeds one input at `now`.
    fn handle(&mut self, now: Instant, input: Input<Self::Msg>);
    /// The next output, if any.
    fn poll(&mut self) -> Option<Output<Self::Msg, Self::Event>>;
    /// When the core next wants [`Input::Timeout`].
    fn poll_timeout(&self) -> Option<Instant>;
}

/// An input to a core.
#[derive(Debug)]
pub enum Input<M> {
    /// A connection to this host is up.
    Connected(HostId),
    /// The connection to this host is gone, or a dial to it failed.
    Disconnected(HostId),
    /// A message arrived.
    Message {
        /// The sender.
        from: HostId,
        /// The message.
        msg: M,
    },
    /// A bulk message this host sent was delivered, or abandoned because the receiver went
    /// away (QUIC tells the sender when a stream was acknowledged or reset).
    Sent {
        /// The receiver.
        to: HostId,
        /// The tag the send carried.
        tag: u64,
    },
    /// The instant from [`Core::poll_timeout`] has come.
    Timeout,
}

/// An output of a core.
#[derive(Debug)]
pub enum Output<M, E> {
    /// Open a connection.
    Dial(HostId),
    /// Close a connection.
    Close(HostId),
    /// Send a message on an established connection.
    Send {
        /// The receiver.
        to: HostId,
        /// The message.
        msg: M,
        /// Its size on the wire, in bytes.
        bytes: u64,
        /// True for bulk data (a flow sharing capacity), false for a small control message.
        bulk: bool,
        /// The message kind, for the protocol counters.
        kind: &'static str,
        /// For bulk messages: returned to the sender in [`Input::Sent`].
        tag: u64,
    },
    /// Something for the scenario's metrics.
    Event(E),
}

/// Things the engine schedules. Kept small (messages wait in a slab), because the queue moves
/// its entries around on every push and pop.
#[derive(Debug)]
enum Ev<X> {
    Deliver {
        to: HostId,
        from: HostId,
        slot: u32,
    },
    Flow(FlowDeadline),
    Timer {
        host: HostId,
        at: SimTime,
    },
    DialerReady {
        dialer: HostId,
        target: HostId,
    },
    AcceptorReady {
        dialer: HostId,
        target: HostId,
    },
    DialFailed {
        dialer: HostId,
        target: HostId,
    },
    /// `host` learns that its connection to `peer` is gone.
    Closed {
        host: HostId,
        peer: HostId,
    },
    /// A connection closes (gracefully, after the closer's last message arrived).
    CloseAt {
        a: HostId,
        b: HostId,
    },
    /// A connection across a partition times out, unless the partition healed first.
    Broken {
        a: HostId,
        b: HostId,
    },
    External(X),
}

struct Queued<X> {
    at: SimTime,
    seq: u64,
    ev: Ev<X>,
}

impl<X> PartialEq for Queued<X> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl<X> Eq for Queued<X> {}
impl<X> PartialOrd for Queued<X> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<X> Ord for Queued<X> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

struct Host<C> {
    core: Option<C>,
    timer: Option<SimTime>,
    uploaded: u64,
    received: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conn {
    /// The handshake is under way.
    Dialling,
    /// Up.
    Established,
}

/// A step's result for the scenario driver.
#[derive(Debug)]
pub enum Step<X, E> {
    /// An external event the driver scheduled has come due.
    External(X),
    /// Core events came out while processing an internal event.
    Events(Vec<(HostId, E)>),
    /// Nothing left before the horizon.
    Idle,
}

/// The engine. `X` is the scenario driver's own event type.
pub struct Engine<C: Core, X> {
    base: Instant,
    now: SimTime,
    seq: u64,
    queue: QuaternaryHeap<Reverse<Queued<X>>>,
    /// Messages on their way, referred to by `Ev::Deliver`.
    msgs: Vec<Option<C::Msg>>,
    free_msgs: Vec<u32>,
    hosts: Vec<Host<C>>,
    net: Net<(u64, C::Msg)>,
    conns: BTreeMap<(HostId, HostId), Conn>,
    /// Per direction: the arrival time of the last control message (they arrive in order).
    last_arrival: HashMap<(HostId, HostId), SimTime>,
    rng: ChaCha8Rng,
    events: Vec<(HostId, C::Event)>,
    traffic: BTreeMap<&'static str, Traffic>,
    processed: u64,
}

impl<C: Core, X> Engine<C, X> {
    /// An engine with a network model of the given traversal, jitter and loss, seeded.
    pub fn new(seed: u64, traversal: Traversal, jitter: f64, loss: f64) -> Self {
        Self {
            base: Instant::now(),
            now: 0,
            seq: 0,
            queue: QuaternaryHeap::new(),
            msgs: Vec::new(),
            free_msgs: Vec::new(),
            hosts: Vec::new(),
            net: Net::new(traversal, jitter, loss),
            conns: BTreeMap::new(),
            last_arrival: HashMap::default(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            events: Vec::new(),
            traffic: BTreeMap::new(),
            processed: 0,
        }
    }

    /// Current simulated time.
    pub fn now(&self) -> SimTime {
        self.now
    }

    /// The `Instant` cores see for simulated time `t`.
    pub fn instant(&self, t: SimTime) -> Instant {
        self.base + Duration::from_nanos(t)
    }

    /// Events processed so far.
    pub fn processed(&self) -> u64 {
        self.processed
    }

    /// Control messages and bytes by kind, so far.
    pub fn traffic(&self) -> &BTreeMap<&'static str, Traffic> {
        &self.traffic
    }

    /// Bulk bytes a host has uploaded and received so far.
    pub fn bulk_bytes(&self, host: HostId) -> (u64, u64) {
        let h = &self.hosts[host.0 as usize];
        (h.uploaded, h.received)
    }

    /// The network model.
    pub fn net(&self) -> &Net<(u64, C::Msg)> {
        &self.net
    }

    /// The network model, to change capacities or partitions.
    pub fn net_mut(&mut self) -> &mut Net<(u64, C::Msg)> {
        &mut self.net
    }

    /// Whether the host runs a core now.
    pub fn is_alive(&self, host: HostId) -> bool {
        self.hosts
            .get(host.0 as usize)
            .is_some_and(|h| h.core.is_some())
    }

    /// The host's core, if alive.
    pub fn core(&self, host: HostId) -> Option<&C> {
        self.hosts.get(host.0 as usize)?.core.as_ref()
    }

    /// Adds a host to the network (without a core yet).
    pub fn add_host(&mut self, net: HostNet) -> HostId {
        let id = self.net.add_host(net);
        self.hosts.push(Host {
            core: None,
            timer: None,
            uploaded: 0,
            received: 0,
        });
        id
    }

    /// Starts `core` on `host` (a join, or a restart after a crash).
    pub fn start(&mut self, host: HostId, core: C) {
        self.hosts[host.0 as usize].core = Some(core);
        self.hosts[host.0 as usize].timer = None;
        self.after_input(host);
    }

    /// Runs `f` on the host's core at the current time and carries out its outputs.
    pub fn with_core(&mut self, host: HostId, f: impl FnOnce(&mut C, Instant)) {
        let now = self.instant(self.now);
        let Some(core) = self.hosts[host.0 as usize].core.as_mut() else {
            return;
        };
        f(core, now);
        self.after_input(host);
    }

    /// The host crashes: its core is gone, its flows stop, its partners notice after the idle
    /// timeout.
    pub fn crash(&mut self, host: HostId) {
        self.remove(host, IDLE_TIMEOUT);
    }

    /// The host leaves gracefully: it closes its connections, and its partners notice one
    /// message delay later.
    pub fn leave(&mut self, host: HostId) {
        self.remove(host, Duration::ZERO);
    }

    /// Schedules a driver event at simulated time `at`.
    pub fn schedule(&mut self, at: SimTime, x: X) {
        self.push(at, Ev::External(x));
    }

    /// Splits the network (see [`Net::partition`]); connections across the cut break after the
    /// idle timeout.
    pub fn partition(&mut self, cut_off: impl FnMut(HostId) -> bool) {
        self.net.partition(cut_off);
        let cut: Vec<(HostId, HostId)> = self
            .conns
            .keys()
            .copied()
            .filter(|(a, b)| !self.net.same_side(*a, *b))
            .collect();
        let at = self.now + IDLE_TIMEOUT.as_nanos() as u64;
        for (a, b) in cut {
            self.push(at, Ev::Broken { a, b });
        }
    }

    /// Heals the partition.
    pub fn heal(&mut self) {
        self.net.heal();
    }

    /// Processes events until one is external, some core events came out, or `horizon` passes.
    pub fn step(&mut self, horizon: SimTime) -> Step<X, C::Event> {
        loop {
            let Some(Reverse(next)) = self.queue.peek() else {
                return Step::Idle;
            };
            if next.at > horizon {
                self.now = horizon;
                return Step::Idle;
            }
            let Some(Reverse(Queued { at, ev, .. })) = self.queue.pop() else {
                return Step::Idle;
            };
            self.now = at;
            self.processed += 1;
            if let Ev::External(x) = ev {
                return Step::External(x);
            }
            self.process(ev);
            if !self.events.is_empty() {
                return Step::Events(std::mem::take(&mut self.events));
            }
        }
    }

    fn process(&mut self, ev: Ev<X>) {
        match ev {
            Ev::Deliver { to, from, slot } => {
                let msg = self.msgs[slot as usize].take();
                self.free_msgs.push(slot);
                let Some(msg) = msg else { return };
                if self.conns.contains_key(&key(to, from)) && self.net.same_side(to, from) {
                    self.input(to, Input::Message { from, msg });
                }
            }
            Ev::Flow(deadline) => {
                let now = self.now;
                if let Some((from, to, (tag, msg), changed)) = self.net.finish_flow(now, deadline) {
                    self.reschedule(changed);
                    let delay = self.net.base_delay(from, to);
                    let at = now + delay.as_nanos() as u64;
                    self.deliver(at, to, from, msg);
                    self.input(from, Input::Sent { to, tag });
                }
            }
            Ev::Timer { host, at } => {
                let now = self.now;
                let h = &mut self.hosts[host.0 as usize];
                if h.timer != Some(at) {
                    return;
                }
                h.timer = None;
                let Some(core) = h.core.as_ref() else { return };
                // The core may have moved its deadline later since this timer was queued.
                let due = core.poll_timeout().is_some_and(|t| self.sim_time(t) <= now);
                if due {
                    self.input(host, Input::Timeout);
                } else {
                    self.after_input(host);
                }
            }
            Ev::DialerReady { dialer, target } => {
                let k = key(dialer, target);
                let ok = self.is_alive(dialer)
                    && self.is_alive(target)
                    && self.net.same_side(dialer, target);
                if ok && self.conns.get(&k) == Some(&Conn::Dialling) {
                    self.conns.insert(k, Conn::Established);
                    self.input(dialer, Input::Connected(target));
                } else if !self.conns.get(&k).is_some_and(|c| *c == Conn::Established) {
                    self.conns.remove(&k);
                    self.input(dialer, Input::Disconnected(target));
                }
            }
            Ev::AcceptorReady { dialer, target } => {
                if self.conns.get(&key(dialer, target)) == Some(&Conn::Established) {
                    self.input(target, Input::Connected(dialer));
                }
            }
            Ev::DialFailed { dialer, target } => {
                if self.conns.get(&key(dialer, target)) == Some(&Conn::Dialling) {
                    self.conns.remove(&key(dialer, target));
                }
                self.input(dialer, Input::Disconnected(target));
            }
            Ev::Closed { host, peer } => self.input(host, Input::Disconnected(peer)),
            Ev::CloseAt { a, b } => {
                if self.conns.remove(&key(a, b)).is_some() {
                    self.input(a, Input::Disconnected(b));
                    self.input(b, Input::Disconnected(a));
                }
            }
            Ev::Broken { a, b } => {
                if !self.net.same_side(a, b) && self.conns.remove(&key(a, b)).is_some() {
                    self.input(a, Input::Disconnected(b));
                    self.input(b, Input::Disconnected(a));
                }
            }
            Ev::External(_) => {}
        }
    }

    fn input(&mut self, host: HostId, input: Input<C::Msg>) {
        let now = self.instant(self.now);
        let Some(core) = self.hosts[host.0 as usize].core.as_mut() else {
            return;
        };
        core.handle(now, input);
        self.after_input(host);
    }

    /// Carries out a core's outputs and re-arms its timer.
    fn after_input(&mut self, host: HostId) {
        loop {
            let Some(core) = self.hosts[host.0 as usize].core.as_mut() else {
                return;
            };
            let Some(output) = core.poll() else { break };
            self.carry_out(host, output);
        }
        let Some(core) = self.hosts[host.0 as usize].core.as_ref() else {
            return;
        };
        let Some(wanted) = core
            .poll_timeout()
            .map(|at| self.sim_time(at).max(self.now))
        else {
            return;
        };
        // A timer already queued for no later than `wanted` will re-arm when it fires, so a
        // deadline that moves later costs no queue entry.
        let h = &mut self.hosts[host.0 as usize];
        if h.timer.is_none_or(|queued| wanted < queued) {
            h.timer = Some(wanted);
            self.push(wanted, Ev::Timer { host, at: wanted });
        }
    }

    fn carry_out(&mut self, host: HostId, output: Output<C::Msg, C::Event>) {
        match output {
            Output::Dial(target) => self.dial(host, target),
            Output::Close(peer) => {
                // Graceful: what was sent before the close arrives first.
                if self.conns.contains_key(&key(host, peer)) {
                    let sent = self.last_arrival.get(&(host, peer)).copied().unwrap_or(0);
                    self.push(sent.max(self.now), Ev::CloseAt { a: host, b: peer });
                }
            }
            Output::Send {
                to,
                msg,
                bytes,
                bulk,
                kind,
                tag,
            } => {
                let t = self.traffic.entry(kind).or_default();
                t.count += 1;
                t.bytes += bytes;
                if self.conns.get(&key(host, to)) != Some(&Conn::Established)
                    || !self.net.same_side(host, to)
                {
                    return;
                }
                if bulk {
                    self.hosts[host.0 as usize].uploaded += bytes;
                    self.hosts[to.0 as usize].received += bytes;
                    let changed = self.net.start_flow(self.now, host, to, bytes, (tag, msg));
                    self.reschedule(changed);
                } else {
                    let delay = self.net.message_delay(host, to, &mut self.rng).as_nanos() as u64;
                    let earliest = self.last_arrival.get(&(host, to)).copied().unwrap_or(0);
                    let at = (self.now + delay).max(earliest);
                    self.last_arrival.insert((host, to), at);
                    self.deliver(at, to, host, msg);
                }
            }
            Output::Event(e) => self.events.push((host, e)),
        }
    }

    fn dial(&mut self, dialer: HostId, target: HostId) {
        let k = key(dialer, target);
        if self.conns.contains_key(&k) {
            if self.conns.get(&k) == Some(&Conn::Established) {
                self.push(
                    self.now,
                    Ev::AcceptorReady {
                        dialer: target,
                        target: dialer,
                    },
                );
            }
            return;
        }
        if !self.is_alive(target) || !self.net.can_connect(dialer, target) {
            let at = self.now + IDLE_TIMEOUT.as_nanos() as u64;
            self.push(at, Ev::DialFailed { dialer, target });
            return;
        }
        self.conns.insert(k, Conn::Dialling);
        let one_way = self.net.base_delay(dialer, target).as_nanos() as u64;
        self.push(self.now + 2 * one_way, Ev::DialerReady { dialer, target });
        let accepted = self.now + 3 * one_way;
        self.push(accepted, Ev::AcceptorReady { dialer, target });
        // The dialler's first messages cannot overtake the handshake.
        self.last_arrival.insert((dialer, target), accepted);
        self.last_arrival
            .insert((target, dialer), self.now + 2 * one_way);
    }

    fn remove(&mut self, host: HostId, notice: Duration) {
        if self.hosts[host.0 as usize].core.take().is_none() {
            return;
        }
        self.hosts[host.0 as usize].timer = None;
        let (aborted, changed) = self.net.drop_host_flows(self.now, host);
        self.reschedule(changed);
        for (from, to, (tag, _)) in aborted {
            if from != host {
                self.input(from, Input::Sent { to, tag });
            }
        }
        let peers: BTreeSet<HostId> = self
            .conns
            .keys()
            .filter_map(|(a, b)| (*a == host).then_some(*b).or((*b == host).then_some(*a)))
            .collect();
        for peer in peers {
            self.conns.remove(&key(host, peer));
            let delay = notice.max(self.net.base_delay(host, peer));
            let at = self.now + delay.as_nanos() as u64;
            self.push(
                at,
                Ev::Closed {
                    host: peer,
                    peer: host,
                },
            );
        }
        self.last_arrival
            .retain(|(a, b), _| *a != host && *b != host);
    }

    fn reschedule(&mut self, changed: Vec<FlowDeadline>) {
        for d in changed {
            if d.at != SimTime::MAX {
                self.push(d.at, Ev::Flow(d));
            }
        }
    }

    fn deliver(&mut self, at: SimTime, to: HostId, from: HostId, msg: C::Msg) {
        let slot = match self.free_msgs.pop() {
            Some(slot) => {
                self.msgs[slot as usize] = Some(msg);
                slot
            }
            None => {
                self.msgs.push(Some(msg));
                self.msgs.len() as u32 - 1
            }
        };
        self.push(at, Ev::Deliver { to, from, slot });
    }

    fn push(&mut self, at: SimTime, ev: Ev<X>) {
        self.seq += 1;
        self.queue.push(Reverse(Queued {
            at,
            seq: self.seq,
            ev,
        }));
    }

    fn sim_time(&self, at: Instant) -> SimTime {
        at.saturating_duration_since(self.base).as_nanos() as u64
    }
}

fn key(a: HostId, b: HostId) -> (HostId, HostId) {
    (a.min(b), a.max(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::NatType;

    /// A core that pings every peer it connects to and records what happens.
    #[derive(Default)]
    struct Probe {
        log: Vec<String>,
        out: Vec<Output<u32, String>>,
        dial: Vec<HostId>,
    }

    impl Core for Probe {
        type Msg = u32;
        type Event = String;
        fn handle(&mut self, _now: Instant, input: Input<u32>) {
            match input {
                Input::Connected(p) => {
                    self.log.push(format!("up {}", p.0));
                    self.out.push(Output::Send {
                        to: p,
                        msg: 1,
                        bytes: 100,
                        bulk: false,
                        kind: "ping",
                        tag: 0,
                    });
                    self.out.push(Output::Send {
                        to: p,
                        msg: 2,
                        bytes: 250_000,
                        bulk: true,
                        kind: "seg",
                        tag: 2,
                    });
                }
                Input::Disconnected(p) => self.log.push(format!("down {}", p.0)),
                Input::Message { from, msg } => {
                    self.log.push(format!("msg {msg} from {}", from.0));
                    self.out.push(Output::Event(format!("got {msg}")));
                }
                Input::Sent { to, tag } => self.log.push(format!("sent {tag} to {}", to.0)),
                Input::Timeout => {}
            }
        }
        fn poll(&mut self) -> Option<Output<u32, String>> {
            if let Some(d) = self.dial.pop() {
                return Some(Output::Dial(d));
            }
            (!self.out.is_empty()).then(|| self.out.remove(0))
        }
        fn poll_timeout(&self) -> Option<Instant> {
            None
        }
    }

    fn engine() -> (Engine<Probe, ()>, HostId, HostId) {
        let mut e = Engine::new(1, Traversal::None, 0.0, 0.0);
        let a = e.add_host(HostNet::new((0.0, 0.0), 5.0, 10e6, 100e6, NatType::Open));
        let b = e.add_host(HostNet::new((10.0, 0.0), 5.0, 10e6, 100e6, NatType::Open));
        (e, a, b)
    }

    fn run(e: &mut Engine<Probe, ()>, until: SimTime) -> Vec<(SimTime, HostId, String)> {
        let mut events = Vec::new();
        loop {
            match e.step(until) {
                Step::Events(v) => events.extend(v.into_iter().map(|(h, s)| (e.now(), h, s))),
                Step::External(()) => {}
                Step::Idle => return events,
            }
        }
    }

    #[test]
    fn a_dial_connects_both_sides_and_messages_take_latency_and_bandwidth() {
        let (mut e, a, b) = engine();
        e.start(b, Probe::default());
        e.start(
            a,
            Probe {
                dial: vec![b],
                ..Probe::default()
            },
        );
        let events = run(&mut e, 5_000_000_000);
        // One-way 20 ms: a is up at 40 ms, b at 60 ms. a's ping reaches b at 60 ms; a's
        // 250 kB segment at 10 Mbit/s takes 200 ms plus 20 ms of delay.
        let at_b: Vec<_> = events.iter().filter(|(_, h, _)| *h == b).collect();
        assert_eq!(at_b[0], &(60_000_000, b, "got 1".to_owned()));
        assert_eq!(at_b[1], &(260_000_000, b, "got 2".to_owned()));
        let log = &e.core(a).unwrap().log;
        assert_eq!(log[0], "up 1");
    }

    #[test]
    fn a_crash_is_noticed_after_the_idle_timeout_and_a_leave_at_once() {
        let (mut e, a, b) = engine();
        e.start(b, Probe::default());
        e.start(
            a,
            Probe {
                dial: vec![b],
                ..Probe::default()
            },
        );
        run(&mut e, 1_000_000_000);
        e.crash(b);
        run(&mut e, 10_000_000_000);
        assert!(
            !e.core(a).unwrap().log.iter().any(|l| l == "down 1"),
            "not before the timeout"
        );
        run(&mut e, 11_100_000_000);
        assert!(e.core(a).unwrap().log.iter().any(|l| l == "down 1"));

        let c = e.add_host(HostNet::new((0.0, 10.0), 5.0, 10e6, 100e6, NatType::Open));
        e.start(
            c,
            Probe {
                dial: vec![a],
                ..Probe::default()
            },
        );
        run(&mut e, 12_000_000_000);
        e.leave(c);
        run(&mut e, 12_100_000_000);
        assert!(e.core(a).unwrap().log.iter().any(|l| l == "down 2"));
    }

    #[test]
    fn a_partition_breaks_connections_and_blocks_dials_until_it_heals() {
        let (mut e, a, b) = engine();
        e.start(b, Probe::default());
        e.start(
            a,
            Probe {
                dial: vec![b],
                ..Probe::default()
            },
        );
        run(&mut e, 1_000_000_000);
        e.partition(|h| h == b);
        run(&mut e, 12_000_000_000);
        assert!(e.core(a).unwrap().log.iter().any(|l| l == "down 1"));
        e.with_core(a, |p, _| p.dial.push(b));
        run(&mut e, 23_000_000_000);
        assert_eq!(
            e.core(a)
                .unwrap()
                .log
                .iter()
                .filter(|l| *l == "down 1")
                .count(),
            2,
            "dial failed"
        );
        e.heal();
        e.with_core(a, |p, _| p.dial.push(b));
        run(&mut e, 24_000_000_000);
        assert_eq!(
            e.core(a)
                .unwrap()
                .log
                .iter()
                .filter(|l| *l == "up 1")
                .count(),
            2
        );
    }

    #[test]
    fn a_nat_without_traversal_refuses_inbound_dials() {
        let mut e: Engine<Probe, ()> = Engine::new(1, Traversal::None, 0.0, 0.0);
        let a = e.add_host(HostNet::new((0.0, 0.0), 5.0, 1e6, 1e6, NatType::Open));
        let natted = e.add_host(HostNet::new(
            (0.0, 0.0),
            5.0,
            1e6,
            1e6,
            NatType::PortRestricted,
        ));
        e.start(natted, Probe::default());
        e.start(a, Probe::default());
        e.with_core(a, |p, _| p.dial.push(natted));
        run(&mut e, 20_000_000_000);
        assert_eq!(
            e.core(a).unwrap().log,
            ["down 1"],
            "an inbound dial to a NAT fails"
        );
        e.with_core(natted, |p, _| p.dial.push(a));
        run(&mut e, 21_000_000_000);
        assert_eq!(
            e.core(a).unwrap().log[1],
            "up 1",
            "an outbound dial from a NAT works"
        );
    }
}
