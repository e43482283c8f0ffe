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
//! messages keep their order on a connection, and those sent on one in the same instant arrive
//! together, delivered by one event; bulk messages (segments) are flows that share
//! capacity. A crashed host's partners notice after the idle timeout; a host that leaves
//! closes its connections, and its partners notice one delay later.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use dary_heap::QuaternaryHeap;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rustc_hash::FxHashMap as HashMap;

use crate::metrics::Traffic;
use crate::net::{Ended, FlowDeadline, FlowId, HostId, HostNet, Net, SimTime};
use crate::scenario::Traversal;

/// How long a dial to an unreachable host takes to fail, and how long a connection to a
/// crashed or cut-off host takes to be noticed (the real node's QUIC idle timeout).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// QUIC's first probe timeout for a handshake (quinn: three times the initial RTT estimate of
/// 333 ms).
const FIRST_PTO: Duration = Duration::from_secs(1);

/// A sans-IO core as the engine hosts it.
pub trait Core {
    /// What travels between hosts (cloned when a host forwards a flow as it arrives).
    type Msg: Clone;
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
    /// The first bytes of a bulk message from `from` arrived (its stream's header); the rest
    /// is on its way.
    Arriving {
        /// The sender.
        from: HostId,
        /// The tag the send carried.
        tag: u64,
    },
    /// A bulk message from `from` broke off: its sender reset it ([`Output::EndRelay`]).
    Failed {
        /// The sender.
        from: HostId,
        /// The tag the send carried.
        tag: u64,
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
    /// Send bulk data at most at `max_bps` (the sender paces it, leaving the rest of its
    /// uplink to its other transfers); otherwise as a bulk [`Output::Send`].
    SendPaced {
        /// The receiver.
        to: HostId,
        /// The message.
        msg: M,
        /// Its size on the wire, in bytes.
        bytes: u64,
        /// The pace.
        max_bps: f64,
        /// The message kind, for the protocol counters.
        kind: &'static str,
        /// Returned to the sender in [`Input::Sent`].
        tag: u64,
    },
    /// Pass on, to `to`, the bulk message with this tag that `from` is sending this host, as
    /// it arrives (cut-through). Its last bytes wait for [`Output::EndRelay`].
    Forward {
        /// The receiver.
        to: HostId,
        /// Who sends it to this host.
        from: HostId,
        /// The tag of both sends.
        tag: u64,
        /// The message kind, for the protocol counters.
        kind: &'static str,
    },
    /// The bulk message with this tag from `from` arrived and was checked (`ok`), or broke
    /// off: the forwards of it complete, or are reset (their receivers get [`Input::Failed`]).
    EndRelay {
        /// Who sent it to this host.
        from: HostId,
        /// Its tag.
        tag: u64,
        /// Whether it checked out.
        ok: bool,
    },
    /// Fetch `msg` from `server` (a host added with [`Engine::add_server`], such as an HTTP
    /// origin): a flow from it to this host, no connection needed.
    Fetch {
        /// The server.
        server: HostId,
        /// What it answers.
        msg: M,
        /// The answer's size on the wire.
        bytes: u64,
        /// The message kind, for the protocol counters.
        kind: &'static str,
        /// Returned in the receiver's [`Input::Arriving`].
        tag: u64,
    },
    /// Something for the scenario's metrics.
    Event(E),
}

/// The forwards of one bulk message a host is receiving, until the host has checked it.
#[derive(Debug)]
struct Relay<M> {
    /// Forwards under way: flow, serial, receiver.
    flows: Vec<(FlowId, u64, HostId)>,
    /// Forwards whose bytes are all out but the last, which waits for the check.
    parked: Vec<(HostId, M)>,
}

impl<M> Default for Relay<M> {
    fn default() -> Self {
        Self {
            flows: Vec::new(),
            parked: Vec::new(),
        }
    }
}

/// The last piece of a forwarded message, sent once the forwarder has checked the whole.
const FORWARD_TAIL_BITS: f64 = 16.0 * 1024.0 * 8.0;

/// Things the engine schedules. Kept small (16 bytes: messages and the driver's events wait in
/// slabs, and an event's instant is its queue entry's), because the queue moves its entries
/// around on every push and pop.
#[derive(Debug)]
enum Ev {
    Deliver {
        to: HostId,
        from: HostId,
        slot: u32,
    },
    /// A flow's deadline as computed at this flow version.
    Flow {
        flow: FlowId,
        version: u32,
    },
    /// A flow's first bytes reach its receiver.
    Head {
        flow: FlowId,
        serial: u64,
    },
    /// The host's timer, if it is still armed for this instant.
    Timer {
        host: HostId,
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
    /// A handshake cut off by a partition sends its Initial again (QUIC's probe timeout,
    /// doubling after each try), until the idle timeout since `started`.
    DialRetry {
        dialer: HostId,
        target: HostId,
        started: u64,
        wait: u64,
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
    /// A driver event, waiting in its slab.
    External {
        slot: u32,
    },
}

struct Queued {
    at: SimTime,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// The event queue, in (instant, sequence) order: a calendar of about one-millisecond buckets
/// over the next 4 s, plus a heap for events further ahead.
///
/// Nearly every event is due within a few hundred milliseconds of being queued (message and
/// transfer delays, timers), so it lands in a bucket a few steps ahead; the bucket in hand is
/// sorted once and drained from its front. A global heap of tens of thousands of entries
/// instead costs a walk through cold memory on every pop. The order is the heap's exactly.
struct Calendar {
    /// The current bucket's events, in order (new ones for it are inserted in place).
    active: VecDeque<Queued>,
    /// The bucket `active` holds.
    cur: u64,
    /// Bucket `k` (for `cur < k < cur + BUCKETS`) at index `k % BUCKETS`, unsorted.
    buckets: Vec<Vec<Queued>>,
    /// Events in `buckets`.
    bucketed: usize,
    /// Events of bucket `cur + BUCKETS` and later.
    later: QuaternaryHeap<Reverse<Queued>>,
    /// Empty buffers of drained buckets.
    spare: Vec<Vec<Queued>>,
}

impl Calendar {
    /// log2 of a bucket's width in nanoseconds (~1.05 ms).
    const SHIFT: u32 = 20;
    /// Buckets ahead of the current one (~4.3 s).
    const BUCKETS: u64 = 1 << 12;

    fn new() -> Self {
        Self {
            active: VecDeque::new(),
            cur: 0,
            buckets: (0..Self::BUCKETS).map(|_| Vec::new()).collect(),
            bucketed: 0,
            later: QuaternaryHeap::new(),
            spare: Vec::new(),
        }
    }

    fn push(&mut self, q: Queued) {
        let k = q.at >> Self::SHIFT;
        if k <= self.cur {
            // Due in the bucket in hand (or before it, after a look beyond the horizon):
            // insert in order; new events usually go at or near the back.
            let key = (q.at, q.seq);
            let pos = self.active.partition_point(|e| (e.at, e.seq) < key);
            self.active.insert(pos, q);
        } else if k < self.cur + Self::BUCKETS {
            self.bucket(k).push(q);
            self.bucketed += 1;
        } else {
            self.later.push(Reverse(q));
        }
    }

    /// Bucket `k`, with a reused buffer if it had none.
    fn bucket(&mut self, k: u64) -> &mut Vec<Queued> {
        let bucket = &mut self.buckets[(k % Self::BUCKETS) as usize];
        if bucket.capacity() == 0 {
            if let Some(spare) = self.spare.pop() {
                *bucket = spare;
            }
        }
        bucket
    }

    fn peek(&mut self) -> Option<&Queued> {
        self.fill();
        self.active.front()
    }

    fn pop(&mut self) -> Option<Queued> {
        self.fill();
        self.active.pop_front()
    }

    /// Moves on to the next non-empty bucket if the current one is drained.
    fn fill(&mut self) {
        while self.active.is_empty() {
            if self.bucketed == 0 {
                // Nothing in the calendar: jump to the first later event.
                let Some(Reverse(next)) = self.later.peek() else {
                    return;
                };
                self.cur = (next.at >> Self::SHIFT).max(self.cur + 1);
            } else {
                self.cur += 1;
            }
            // The calendar now reaches one bucket further: take in the later events it covers.
            while let Some(Reverse(next)) = self.later.peek() {
                let k = next.at >> Self::SHIFT;
                if k >= self.cur + Self::BUCKETS {
                    break;
                }
                let Some(Reverse(q)) = self.later.pop() else {
                    break;
                };
                if k == self.cur {
                    self.active.push_back(q);
                } else {
                    self.bucket(k).push(q);
                    self.bucketed += 1;
                }
            }
            let bucket = &mut self.buckets[(self.cur % Self::BUCKETS) as usize];
            self.bucketed -= bucket.len();
            let mut events = std::mem::take(bucket);
            self.active.extend(events.drain(..));
            // Drained buckets' buffers are reused for the next buckets that fill; a large one
            // (from a burst) is let go, so that buckets do not all grow to the busiest one.
            if events.capacity() <= 256 {
                self.spare.push(events);
            }
            self.active
                .make_contiguous()
                .sort_unstable_by_key(|e| (e.at, e.seq));
        }
    }
}

/// A message on its way, and the next one that arrives with it on the same connection (at the
/// same instant: sent in one burst, or held back behind the one before): one delivery carries
/// them all, in the order sent. Half the simulator's events were control messages' deliveries.
struct Carried<M> {
    msg: M,
    next: u32,
}

/// No slot: the end of a chain of [`Carried`] messages.
const NO_SLOT: u32 = u32::MAX;

/// Values waiting for their queue entry, referred to by index; freed slots are reused.
struct Slab<T> {
    slots: Vec<Option<T>>,
    free: Vec<u32>,
}

impl<T> Slab<T> {
    fn new() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
        }
    }

    fn insert(&mut self, value: T) -> u32 {
        match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(value);
                slot
            }
            None => {
                self.slots.push(Some(value));
                self.slots.len() as u32 - 1
            }
        }
    }

    fn get_mut(&mut self, slot: u32) -> Option<&mut T> {
        self.slots.get_mut(slot as usize)?.as_mut()
    }

    fn take(&mut self, slot: u32) -> Option<T> {
        let value = self.slots.get_mut(slot as usize)?.take();
        if value.is_some() {
            self.free.push(slot);
        }
        value
    }
}

struct Host<C> {
    core: Option<C>,
    /// A server (an HTTP origin): it runs no core and answers fetches without a connection.
    server: bool,
    timer: Option<SimTime>,
    uploaded: u64,
    received: u64,
    /// This host's end of each of its connections (a few dozen at most: a scan is faster than
    /// a map, and the connection's state sits next to the host's).
    links: Vec<Link>,
}

/// One end of a connection; both hosts keep one, with the same state.
#[derive(Debug, Clone, Copy)]
struct Link {
    peer: HostId,
    state: Conn,
    /// When the last control message this host sent on it arrives (they arrive in order).
    last_arrival: SimTime,
    /// The slot of that message, last in its delivery's chain: a message that arrives at the
    /// same instant joins that delivery instead of queueing one of its own.
    last_slot: u32,
    /// When that message was sent: what is sent in the same instant goes out together, in
    /// the same packets, and arrives together.
    last_sent: SimTime,
    /// The path's base one-way delay in nanoseconds (the same both ways), kept here so that
    /// a message needs no look at the two hosts' positions.
    base_delay: u64,
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
pub enum Step<X> {
    /// An external event the driver scheduled has come due.
    External(X),
    /// Core events came out while processing an internal event. The vector the driver passed
    /// to [`Engine::step`] now holds them (it is handed back and forth, so that no step
    /// allocates one).
    Events,
    /// Nothing left before the horizon.
    Idle,
}

/// The engine. `X` is the scenario driver's own event type.
pub struct Engine<C: Core, X> {
    base: Instant,
    now: SimTime,
    seq: u64,
    queue: Calendar,
    /// Messages on their way, referred to by `Ev::Deliver`.
    msgs: Slab<Carried<C::Msg>>,
    /// Driver events, referred to by `Ev::External`.
    externals: Slab<X>,
    hosts: Vec<Host<C>>,
    net: Net<(u64, C::Msg)>,
    /// Forwards by (sender of the forwarded flow, forwarder, tag).
    relays: HashMap<(HostId, HostId, u64), Relay<C::Msg>>,
    rng: ChaCha8Rng,
    events: Vec<(HostId, C::Event)>,
    /// Messages and bytes by kind, in order of first use (a handful of kinds: a scan that
    /// compares the static strings' addresses first beats a map keyed by their text).
    traffic: Vec<(&'static str, Traffic)>,
    processed: u64,
}

impl<C: Core, X> Engine<C, X> {
    /// An engine with a network model of the given traversal, jitter and loss, seeded.
    pub fn new(seed: u64, traversal: Traversal, jitter: f64, loss: f64) -> Self {
        Self {
            base: Instant::now(),
            now: 0,
            seq: 0,
            queue: Calendar::new(),
            msgs: Slab::new(),
            externals: Slab::new(),
            hosts: Vec::new(),
            net: Net::new(traversal, jitter, loss),
            relays: HashMap::default(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            events: Vec::new(),
            traffic: Vec::new(),
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
    pub fn traffic(&self) -> BTreeMap<&'static str, Traffic> {
        let mut by_kind: BTreeMap<&'static str, Traffic> = BTreeMap::new();
        for (kind, t) in &self.traffic {
            let total = by_kind.entry(kind).or_default();
            total.count += t.count;
            total.bytes += t.bytes;
        }
        by_kind
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
            server: false,
            timer: None,
            uploaded: 0,
            received: 0,
            links: Vec::new(),
        });
        id
    }

    /// Adds a server: a host without a core that answers [`Output::Fetch`].
    pub fn add_server(&mut self, net: HostNet) -> HostId {
        let id = self.add_host(net);
        self.hosts[id.0 as usize].server = true;
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
        let slot = self.externals.insert(x);
        self.push(at, Ev::External { slot });
    }

    /// Splits the network (see [`Net::partition`]); connections across the cut break after the
    /// idle timeout.
    pub fn partition(&mut self, cut_off: impl FnMut(HostId) -> bool) {
        self.net.partition(cut_off);
        let mut cut: Vec<(HostId, HostId)> = Vec::new();
        for (i, h) in self.hosts.iter().enumerate() {
            let a = HostId(i as u32);
            cut.extend(
                h.links
                    .iter()
                    .filter(|l| a < l.peer && !self.net.same_side(a, l.peer))
                    .map(|l| (a, l.peer)),
            );
        }
        cut.sort();
        let at = self.now + IDLE_TIMEOUT.as_nanos() as u64;
        for (a, b) in cut {
            self.push(at, Ev::Broken { a, b });
        }
    }

    /// Heals the partition.
    pub fn heal(&mut self) {
        self.net.heal();
    }

    /// Processes events until one is external, some core events came out (then swapped into
    /// `events`, which should be empty), or `horizon` passes.
    pub fn step(&mut self, horizon: SimTime, events: &mut Vec<(HostId, C::Event)>) -> Step<X> {
        loop {
            let Some(next) = self.queue.peek() else {
                return Step::Idle;
            };
            if next.at > horizon {
                self.now = horizon;
                return Step::Idle;
            }
            let Some(Queued { at, ev, .. }) = self.queue.pop() else {
                return Step::Idle;
            };
            self.now = at;
            self.processed += 1;
            if let Ev::External { slot } = ev {
                match self.externals.take(slot) {
                    Some(x) => return Step::External(x),
                    None => continue,
                }
            }
            self.process(ev);
            if !self.events.is_empty() {
                std::mem::swap(&mut self.events, events);
                return Step::Events;
            }
        }
    }

    fn process(&mut self, ev: Ev) {
        match ev {
            Ev::Deliver { to, from, mut slot } => {
                while let Some(Carried { msg, next }) = self.msgs.take(slot) {
                    let linked =
                        self.link(to, from).is_some() || self.hosts[from.0 as usize].server;
                    if linked && self.net.same_side(to, from) {
                        self.input(to, Input::Message { from, msg });
                    }
                    slot = next;
                }
            }
            Ev::Flow { flow, version } => {
                let now = self.now;
                let deadline = FlowDeadline {
                    flow,
                    version,
                    at: now,
                };
                if let Some((ended, changed)) = self.net.finish_flow(now, deadline) {
                    self.reschedule(changed);
                    self.flow_done(ended);
                }
            }
            Ev::Head { flow, serial } => {
                if let Some((from, to, tag)) = self.net.running(flow, serial) {
                    self.input(to, Input::Arriving { from, tag });
                }
            }
            Ev::Timer { host } => {
                let now = self.now;
                let h = &mut self.hosts[host.0 as usize];
                if h.timer != Some(now) {
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
                let ok = self.is_alive(dialer)
                    && self.is_alive(target)
                    && self.net.same_side(dialer, target);
                let state = self.conn(dialer, target);
                if ok && state == Some(Conn::Dialling) {
                    self.set_state(dialer, target, Conn::Established);
                    self.input(dialer, Input::Connected(target));
                } else if state != Some(Conn::Established) {
                    self.unlink(dialer, target);
                    self.input(dialer, Input::Disconnected(target));
                }
            }
            Ev::AcceptorReady { dialer, target } => {
                if self.conn(dialer, target) == Some(Conn::Established) {
                    self.input(target, Input::Connected(dialer));
                }
            }
            Ev::DialFailed { dialer, target } => {
                if self.conn(dialer, target) == Some(Conn::Dialling) {
                    self.unlink(dialer, target);
                }
                self.input(dialer, Input::Disconnected(target));
            }
            Ev::DialRetry {
                dialer,
                target,
                started,
                wait,
            } => {
                if !self.is_alive(dialer) {
                    return;
                }
                if self.conn(dialer, target).is_none()
                    && self.is_alive(target)
                    && self.net.can_connect(dialer, target)
                {
                    // The partition healed: this Initial gets through.
                    self.dial(dialer, target);
                } else if self.conn(dialer, target).is_none() {
                    self.retry_dial(dialer, target, started, wait);
                }
            }
            Ev::Closed { host, peer } => self.input(host, Input::Disconnected(peer)),
            Ev::CloseAt { a, b } => {
                if self.unlink(a, b) {
                    self.input(a, Input::Disconnected(b));
                    self.input(b, Input::Disconnected(a));
                }
            }
            Ev::Broken { a, b } => {
                if !self.net.same_side(a, b) && self.unlink(a, b) {
                    self.input(a, Input::Disconnected(b));
                    self.input(b, Input::Disconnected(a));
                }
            }
            Ev::External { .. } => {}
        }
    }

    /// `a`'s end of its connection to `b`, if any.
    fn link(&self, a: HostId, b: HostId) -> Option<&Link> {
        self.hosts[a.0 as usize].links.iter().find(|l| l.peer == b)
    }

    fn link_mut(&mut self, a: HostId, b: HostId) -> Option<&mut Link> {
        self.hosts[a.0 as usize]
            .links
            .iter_mut()
            .find(|l| l.peer == b)
    }

    fn conn(&self, a: HostId, b: HostId) -> Option<Conn> {
        self.link(a, b).map(|l| l.state)
    }

    fn set_state(&mut self, a: HostId, b: HostId, state: Conn) {
        for (x, y) in [(a, b), (b, a)] {
            if let Some(l) = self.link_mut(x, y) {
                l.state = state;
            }
        }
    }

    /// Removes the connection at both ends; false if there was none.
    fn unlink(&mut self, a: HostId, b: HostId) -> bool {
        let mut found = false;
        for (x, y) in [(a, b), (b, a)] {
            let links = &mut self.hosts[x.0 as usize].links;
            if let Some(i) = links.iter().position(|l| l.peer == y) {
                links.swap_remove(i);
                found = true;
            }
        }
        found
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
            self.push(wanted, Ev::Timer { host });
        }
    }

    fn carry_out(&mut self, host: HostId, output: Output<C::Msg, C::Event>) {
        match output {
            Output::Dial(target) => self.dial(host, target),
            Output::Close(peer) => {
                // Graceful: what was sent before the close arrives first.
                if let Some(sent) = self.link(host, peer).map(|l| l.last_arrival) {
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
                self.count(kind, bytes);
                if bulk {
                    self.send_bulk(host, to, bytes, (tag, msg), f64::INFINITY);
                } else {
                    self.send_control(host, to, msg);
                }
            }
            Output::SendPaced {
                to,
                msg,
                bytes,
                max_bps,
                kind,
                tag,
            } => {
                self.count(kind, bytes);
                self.send_bulk(host, to, bytes, (tag, msg), max_bps);
            }
            Output::Forward {
                to,
                from,
                tag,
                kind,
            } => self.forward(host, to, from, tag, kind),
            Output::EndRelay { from, tag, ok } => self.end_relay(host, from, tag, ok),
            Output::Fetch {
                server,
                msg,
                bytes,
                kind,
                tag,
            } => {
                self.count(kind, bytes);
                if self.hosts.get(server.0 as usize).is_some_and(|h| h.server)
                    && self.net.same_side(host, server)
                {
                    self.start_flow(server, host, bytes, (tag, msg), None);
                }
            }
            Output::Event(e) => self.events.push((host, e)),
        }
    }

    /// Sends a control message on the connection's ordered stream: it arrives after the path's
    /// jittered delay, never before the one sent ahead of it.
    fn send_control(&mut self, host: HostId, to: HostId, msg: C::Msg) {
        if !self.net.same_side(host, to) {
            return;
        }
        let links = &mut self.hosts[host.0 as usize].links;
        let Some(link) = links
            .iter_mut()
            .find(|l| l.peer == to && l.state == Conn::Established)
        else {
            return;
        };
        let now = self.now;
        let at = if link.last_sent == now {
            link.last_arrival
        } else {
            let base = Duration::from_nanos(link.base_delay);
            (now + self.net.jittered(base, &mut self.rng).as_nanos() as u64).max(link.last_arrival)
        };
        link.last_sent = now;
        // A delivery due after now is still queued, and the last slot of its chain still
        // holds its last message.
        let join = at == link.last_arrival && at > now;
        let slot = self.msgs.insert(Carried { msg, next: NO_SLOT });
        let last = std::mem::replace(&mut link.last_slot, slot);
        link.last_arrival = at;
        match self.msgs.get_mut(last).filter(|_| join) {
            Some(previous) => previous.next = slot,
            None => self.push(
                at,
                Ev::Deliver {
                    to,
                    from: host,
                    slot,
                },
            ),
        }
    }

    /// Sends bulk data at most at `cap_bps`. If the receiver crashed (its peers learn only at
    /// the idle timeout) or is cut off, QUIC takes the bytes into its buffers all the same:
    /// the upload is over for the sender at once, which would otherwise wait for it until it
    /// hears the connection is gone.
    fn send_bulk(
        &mut self,
        host: HostId,
        to: HostId,
        bytes: u64,
        payload: (u64, C::Msg),
        cap_bps: f64,
    ) {
        if self.conn(host, to) != Some(Conn::Established) || !self.net.same_side(host, to) {
            self.input(host, Input::Sent { to, tag: payload.0 });
            return;
        }
        self.start_capped_flow(host, to, bytes, payload, None, cap_bps);
    }

    /// Starts a bulk flow; its receiver hears of it when its first bytes arrive.
    fn start_flow(
        &mut self,
        from: HostId,
        to: HostId,
        bytes: u64,
        payload: (u64, C::Msg),
        gate: Option<HostId>,
    ) -> (FlowId, u64) {
        self.start_capped_flow(from, to, bytes, payload, gate, f64::INFINITY)
    }

    /// Starts a bulk flow that goes at most at `cap_bps`.
    fn start_capped_flow(
        &mut self,
        from: HostId,
        to: HostId,
        bytes: u64,
        payload: (u64, C::Msg),
        gate: Option<HostId>,
        cap_bps: f64,
    ) -> (FlowId, u64) {
        self.hosts[from.0 as usize].uploaded += bytes;
        self.hosts[to.0 as usize].received += bytes;
        let (flow, serial, changed) = self
            .net
            .start_capped_flow(self.now, from, to, bytes, payload, gate, cap_bps);
        self.reschedule(changed);
        let head = self.now + self.net.base_delay(from, to).as_nanos() as u64;
        self.push(head, Ev::Head { flow, serial });
        (flow, serial)
    }

    /// A flow sent all its bytes: its message arrives one delay later, unless it forwards a
    /// message its sender has not checked yet (then its end waits, see [`Engine::end_relay`]).
    fn flow_done(&mut self, ended: Ended<(u64, C::Msg)>) {
        let Ended {
            from,
            to,
            payload: (tag, msg),
            gate,
        } = ended;
        if let Some(relay) = gate.and_then(|g| self.relays.get_mut(&(g, from, tag))) {
            relay.parked.push((to, msg));
            return;
        }
        let at = self.now + self.net.base_delay(from, to).as_nanos() as u64;
        self.deliver(at, to, from, msg);
        self.input(from, Input::Sent { to, tag });
    }

    /// `host` forwards to `to` what `from` is sending it with `tag`, as it arrives.
    fn forward(&mut self, host: HostId, to: HostId, from: HostId, tag: u64, kind: &'static str) {
        let upstream = self
            .net
            .find_flow(from, host, |(t, _)| *t == tag)
            .map(|f| (f.bytes, f.payload.1.clone()));
        let connected =
            self.conn(host, to) == Some(Conn::Established) && self.net.same_side(host, to);
        let Some((bytes, msg)) = upstream.filter(|_| connected) else {
            // Nothing (left) to pass on: the upload is over before it began.
            self.input(host, Input::Sent { to, tag });
            return;
        };
        self.count(kind, bytes);
        let (flow, serial) = self.start_flow(host, to, bytes, (tag, msg), Some(from));
        self.relays
            .entry((from, host, tag))
            .or_default()
            .flows
            .push((flow, serial, to));
    }

    /// `host` has the whole of what `from` sent it with `tag` (checked: `ok`), or it broke off:
    /// the forwards of it finish, their last piece one delay after the check, or are reset.
    fn end_relay(&mut self, host: HostId, from: HostId, tag: u64, ok: bool) {
        let Some(relay) = self.relays.remove(&(from, host, tag)) else {
            return;
        };
        if ok {
            let tail = FORWARD_TAIL_BITS / self.net.upload_share_bps(host).max(1.0);
            for (to, msg) in relay.parked {
                let delay = self.net.base_delay(host, to).as_secs_f64() + tail;
                let at = self.now + (delay * 1e9) as u64;
                self.deliver(at, to, host, msg);
                self.input(host, Input::Sent { to, tag });
            }
            return;
        }
        let mut reset: Vec<HostId> = relay.parked.into_iter().map(|(to, _)| to).collect();
        for (flow, serial, to) in relay.flows {
            if let Some((_, changed)) = self.net.abort_flow(self.now, flow, serial) {
                self.reschedule(changed);
                reset.push(to);
            }
        }
        for to in reset {
            self.input(host, Input::Sent { to, tag });
            self.input(to, Input::Failed { from: host, tag });
        }
    }

    fn count(&mut self, kind: &'static str, bytes: u64) {
        let i = match self
            .traffic
            .iter()
            .position(|(k, _)| std::ptr::eq(*k, kind) || *k == kind)
        {
            Some(i) => i,
            None => {
                self.traffic.push((kind, Traffic::default()));
                self.traffic.len() - 1
            }
        };
        let t = &mut self.traffic[i].1;
        t.count += 1;
        t.bytes += bytes;
    }

    fn dial(&mut self, dialer: HostId, target: HostId) {
        if let Some(state) = self.conn(dialer, target) {
            if state == Conn::Established {
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
            let (now, first) = (self.now, FIRST_PTO.as_nanos() as u64);
            self.retry_dial(dialer, target, now, first);
            return;
        }
        let one_way = self.net.base_delay(dialer, target).as_nanos() as u64;
        self.push(self.now + 2 * one_way, Ev::DialerReady { dialer, target });
        let accepted = self.now + 3 * one_way;
        self.push(accepted, Ev::AcceptorReady { dialer, target });
        // The dialler's first messages cannot overtake the handshake.
        self.hosts[dialer.0 as usize].links.push(Link {
            peer: target,
            state: Conn::Dialling,
            last_arrival: accepted,
            last_slot: NO_SLOT,
            last_sent: SimTime::MAX,
            base_delay: one_way,
        });
        self.hosts[target.0 as usize].links.push(Link {
            peer: dialer,
            state: Conn::Dialling,
            last_arrival: self.now + 2 * one_way,
            last_slot: NO_SLOT,
            last_sent: SimTime::MAX,
            base_delay: one_way,
        });
    }

    /// Schedules the next Initial of a handshake that got no answer, or its failure at the
    /// idle timeout.
    fn retry_dial(&mut self, dialer: HostId, target: HostId, started: u64, wait: u64) {
        let give_up = started + IDLE_TIMEOUT.as_nanos() as u64;
        if self.now + wait < give_up {
            let at = self.now + wait;
            self.push(
                at,
                Ev::DialRetry {
                    dialer,
                    target,
                    started,
                    wait: wait * 2,
                },
            );
        } else {
            self.push(give_up.max(self.now), Ev::DialFailed { dialer, target });
        }
    }

    fn remove(&mut self, host: HostId, notice: Duration) {
        if self.hosts[host.0 as usize].core.take().is_none() {
            return;
        }
        self.hosts[host.0 as usize].timer = None;
        // Its forwards end with its flows; forwards of what it was sending stop when their
        // forwarders learn it is gone.
        self.relays.retain(|(_, via, _), _| *via != host);
        let (aborted, changed) = self.net.drop_host_flows(self.now, host);
        self.reschedule(changed);
        for (from, to, (tag, _)) in aborted {
            if from != host {
                self.input(from, Input::Sent { to, tag });
            }
        }
        let peers: BTreeSet<HostId> = self.hosts[host.0 as usize]
            .links
            .iter()
            .map(|l| l.peer)
            .collect();
        for peer in peers {
            self.unlink(host, peer);
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
    }

    fn reschedule(&mut self, changed: Vec<FlowDeadline>) {
        for d in changed {
            if d.at != SimTime::MAX {
                self.push(
                    d.at,
                    Ev::Flow {
                        flow: d.flow,
                        version: d.version,
                    },
                );
            }
        }
    }

    fn deliver(&mut self, at: SimTime, to: HostId, from: HostId, msg: C::Msg) {
        let slot = self.msgs.insert(Carried { msg, next: NO_SLOT });
        self.push(at, Ev::Deliver { to, from, slot });
    }

    fn push(&mut self, at: SimTime, ev: Ev) {
        self.seq += 1;
        self.queue.push(Queued {
            at,
            seq: self.seq,
            ev,
        });
    }

    fn sim_time(&self, at: Instant) -> SimTime {
        at.saturating_duration_since(self.base).as_nanos() as u64
    }
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
        /// Sends nothing when a connection comes up.
        silent: bool,
        /// Forwards every bulk message to this host as it arrives, and ends the forward as
        /// the flag says when the message is whole.
        relay: Option<(HostId, bool)>,
        /// Sends this many control messages (numbered from 10) when a connection comes up,
        /// and nothing else.
        burst: u32,
    }

    impl Core for Probe {
        type Msg = u32;
        type Event = String;
        fn handle(&mut self, _now: Instant, input: Input<u32>) {
            match input {
                Input::Connected(p) if self.silent => self.log.push(format!("up {}", p.0)),
                Input::Connected(p) if self.burst > 0 => {
                    for msg in 10..10 + self.burst {
                        self.out.push(Output::Send {
                            to: p,
                            msg,
                            bytes: 100,
                            bulk: false,
                            kind: "ping",
                            tag: 0,
                        });
                    }
                }
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
                    if let (Some((_, ok)), 2) = (self.relay, msg) {
                        self.out.push(Output::EndRelay { from, tag: 2, ok });
                    }
                }
                Input::Arriving { from, tag } => {
                    self.log.push(format!("arriving {tag} from {}", from.0));
                    if let Some((to, _)) = self.relay {
                        let kind = "seg";
                        self.out.push(Output::Forward {
                            to,
                            from,
                            tag,
                            kind,
                        });
                    }
                }
                Input::Failed { from, tag } => {
                    self.log.push(format!("failed {tag} from {}", from.0));
                    self.out.push(Output::Event(format!("failed {tag}")));
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

    #[test]
    fn the_calendar_pops_in_instant_then_sequence_order_like_a_heap() {
        let mut calendar = Calendar::new();
        let mut heap = QuaternaryHeap::new();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut seq = 0;
        let mut now = 0;
        for round in 0..20_000u64 {
            // Mostly near deadlines, some at the same instant, some far past the calendar.
            for _ in 0..rand::Rng::gen_range(&mut rng, 0..3) {
                let ahead = match rand::Rng::gen_range(&mut rng, 0..10) {
                    0 => 0,
                    1 => rand::Rng::gen_range(&mut rng, 5_000_000_000..30_000_000_000),
                    _ => rand::Rng::gen_range(&mut rng, 0..300_000_000),
                };
                seq += 1;
                calendar.push(Queued {
                    at: now + ahead,
                    seq,
                    ev: Ev::Timer { host: HostId(0) },
                });
                heap.push(Reverse((now + ahead, seq)));
            }
            if round % 3 == 0 {
                let (Some(q), Some(Reverse(h))) = (calendar.pop(), heap.pop()) else {
                    continue;
                };
                assert_eq!((q.at, q.seq), h);
                now = q.at;
            }
        }
        while let Some(Reverse(h)) = heap.pop() {
            let q = calendar.pop().unwrap();
            assert_eq!((q.at, q.seq), h);
        }
        assert!(calendar.pop().is_none());
    }

    fn engine() -> (Engine<Probe, ()>, HostId, HostId) {
        let mut e = Engine::new(1, Traversal::None, 0.0, 0.0);
        let a = e.add_host(HostNet::new((0.0, 0.0), 5.0, 10e6, 100e6, NatType::Open));
        let b = e.add_host(HostNet::new((10.0, 0.0), 5.0, 10e6, 100e6, NatType::Open));
        (e, a, b)
    }

    /// Core events with when and where they came out.
    type Log = Vec<(SimTime, HostId, String)>;

    fn run(e: &mut Engine<Probe, ()>, until: SimTime) -> Log {
        let mut events = Vec::new();
        let mut batch = Vec::new();
        loop {
            match e.step(until, &mut batch) {
                Step::Events => {
                    let now = e.now();
                    events.extend(batch.drain(..).map(|(h, s)| (now, h, s)));
                }
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
    fn control_messages_sent_together_arrive_together_in_order_as_one_event() {
        let burst = |n: u32| {
            // Jitter of half the delay: messages sent one by one could arrive in any order.
            let mut e = Engine::new(1, Traversal::None, 0.5, 0.0);
            let a = e.add_host(HostNet::new((0.0, 0.0), 5.0, 10e6, 100e6, NatType::Open));
            let b = e.add_host(HostNet::new((10.0, 0.0), 5.0, 10e6, 100e6, NatType::Open));
            e.start(
                b,
                Probe {
                    silent: true,
                    ..Probe::default()
                },
            );
            e.start(
                a,
                Probe {
                    dial: vec![b],
                    burst: n,
                    ..Probe::default()
                },
            );
            let events = run(&mut e, 5_000_000_000);
            (events, e.processed())
        };
        let (one, one_processed) = burst(1);
        let (three, three_processed) = burst(3);
        let got: Vec<&str> = three.iter().map(|(_, _, s)| s.as_str()).collect();
        assert_eq!(got, ["got 10", "got 11", "got 12"]);
        assert!(three.iter().all(|(at, _, _)| *at == three[0].0));
        assert_eq!(one[0].0, three[0].0, "the same path, the same arrival");
        assert_eq!(
            one_processed, three_processed,
            "one delivery carries the three"
        );
    }

    /// a sends b a 250 kB bulk message (10 Mbit/s: whole at b at 260 ms); b forwards it to c as
    /// it arrives, over `b_up` bit/s to c's `c_down`, and vouches for it with `ok`.
    fn forward(b_up: f64, c_down: f64, ok: bool) -> (Engine<Probe, ()>, Log) {
        let mut e = Engine::new(1, Traversal::None, 0.0, 0.0);
        let a = e.add_host(HostNet::new((0.0, 0.0), 5.0, 10e6, 100e6, NatType::Open));
        let b = e.add_host(HostNet::new((10.0, 0.0), 5.0, b_up, 100e6, NatType::Open));
        let c = e.add_host(HostNet::new((20.0, 0.0), 5.0, 10e6, c_down, NatType::Open));
        let quiet = || Probe {
            silent: true,
            ..Probe::default()
        };
        e.start(c, quiet());
        e.start(
            b,
            Probe {
                dial: vec![c],
                relay: Some((c, ok)),
                ..quiet()
            },
        );
        e.start(
            a,
            Probe {
                dial: vec![b],
                ..Probe::default()
            },
        );
        let events = run(&mut e, 5_000_000_000);
        let at_c = events.into_iter().filter(|(_, h, _)| *h == c).collect();
        (e, at_c)
    }

    #[test]
    fn a_forward_runs_behind_its_arrival_not_after_it() {
        // b's head arrives at 60 ms and its forward starts; c's 5 Mbit/s downlink makes the
        // forward take 400 ms, so it arrives at 480 ms (store and forward: 680 ms).
        let (_, at_c) = forward(10e6, 5e6, true);
        assert_eq!(at_c, vec![(480_000_000, HostId(2), "got 2".to_owned())]);
        // A fast forward is all out long before b has the whole message: its last piece
        // (16 KiB at 100 Mbit/s) leaves when b has checked it, at 260 ms, and arrives one
        // delay later.
        let (_, at_c) = forward(100e6, 100e6, true);
        let tail = (16.0 * 1024.0 * 8.0 / 100e6 * 1e9) as u64;
        assert_eq!(
            at_c,
            vec![(
                260_000_000 + 20_000_000 + tail,
                HostId(2),
                "got 2".to_owned()
            )]
        );
    }

    #[test]
    fn a_forward_of_a_message_that_fails_its_check_is_reset() {
        let (e, at_c) = forward(100e6, 100e6, false);
        assert_eq!(at_c, vec![(260_000_000, HostId(2), "failed 2".to_owned())]);
        assert!(e
            .core(HostId(1))
            .unwrap()
            .log
            .contains(&"sent 2 to 2".to_owned()));
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
    fn a_bulk_send_to_a_crashed_host_is_over_for_the_sender_at_once() {
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
        // a does not know yet (the idle timeout is 10 s away) and sends b a segment: QUIC
        // buffers it, so a's upload is over and its slot free, as in the real node.
        e.with_core(a, |core, _| {
            core.out.push(Output::Send {
                to: b,
                msg: 3,
                bytes: 250_000,
                bulk: true,
                kind: "seg",
                tag: 3,
            });
        });
        run(&mut e, 1_001_000_000);
        let log = &e.core(a).unwrap().log;
        assert!(log.contains(&"sent 3 to 1".to_owned()), "{log:?}");
        assert!(!log.contains(&"down 1".to_owned()));
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
