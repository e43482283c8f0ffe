//! Hole punching: the signalling and probing state machine, sans-IO.
//!
//! The dialler knows the other peer's [`NatRecord`] (from its membership entry or the overlay's
//! store). If the peer can be dialled as is, or the two classes cannot punch, it decides at
//! once (`Direct` or `Relayed`). Otherwise it punches:
//!
//! ```text
//!   dialler A                              B's relay R                          listener B
//!   Offer{session, A's candidates} ──────────────▶ R ─────────────────────────▶ (responder)
//!   ◀──────────────────────────── R ◀──────────── Answer{session, B's class, B's candidates}
//!   Probe(session) ─▶ B's candidates                 Probe(session) ─▶ A's candidates
//!      (dropped by B's NAT until B has sent toward A; B's probes open it)
//!   ◀──────────────────────────────── Probe or Ack from B at address X
//!   Event::Direct { X }: quinn dials X, on the path both NATs now let through
//! ```
//!
//! Without the record the dialler punches on a guess (B's address, signalled through its own
//! relay): a probe that gets through decides as usual, and B's answer (or the record, when a
//! read brings it: [`Punch::learn`]) tells it within one trip through the relay whether B can
//! be dialled as is, or that the pair cannot punch and the relay is the path.
//!
//! Both sides resend with backoff (100 ms doubling to 800 ms) until a probe or an
//! acknowledgement arrives or the attempt's deadline passes; then the dialler falls back to
//! the relay. A probe is answered only if it carries a session we know from that peer, and a
//! session is a random number carried only through the relay (which authenticated the sender
//! when it registered), so a stranger cannot steer a dial elsewhere; QUIC's TLS checks the
//! peer's identity on whatever path is chosen.
//!
//! # Call contract
//!
//! Inputs: [`Punch::connect`], [`Punch::learn`], [`Punch::handle_signal`],
//! [`Punch::handle_probe`], [`Punch::handle_timeout`] (at [`Punch::poll_timeout`]), each with
//! the current time; outputs:
//! [`Punch::poll_output`] until it returns `None`, after every input.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::packet::Packet;
use super::{can_punch, dialable, Connectivity, NatRecord};
use crate::identity::PeerId;

/// Timing of punch attempts.
#[derive(Debug, Clone)]
pub struct PunchConfig {
    /// The first resend interval; it doubles up to `max_interval`.
    pub first_interval: Duration,
    /// The longest resend interval.
    pub max_interval: Duration,
    /// How long an attempt may take before the relay is used.
    pub deadline: Duration,
    /// Seed of the session numbers.
    pub seed: u64,
}

impl Default for PunchConfig {
    fn default() -> Self {
        Self {
            first_interval: Duration::from_millis(100),
            max_interval: Duration::from_millis(800),
            deadline: Duration::from_millis(2500),
            seed: 0,
        }
    }
}

/// A signal between two peers, carried by a relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Signal {
    /// "I am dialling you: send probes to these addresses."
    Offer {
        /// The attempt.
        session: u64,
        /// The dialler's candidates.
        candidates: Vec<SocketAddr>,
    },
    /// "I got your offer; this is how I am reached": the listener's class and candidates, so
    /// that a dialler that punches on a guess learns within one trip through the relay whether
    /// punching can work at all.
    Answer {
        /// The attempt answered.
        session: u64,
        /// The listener's class.
        class: Connectivity,
        /// The listener's candidates.
        candidates: Vec<SocketAddr>,
    },
}

impl Signal {
    /// The most candidates an offer may carry.
    pub const MAX_CANDIDATES: usize = 8;

    /// The encoded signal.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain data into a Vec cannot fail.
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Decodes a signal; `None` if malformed or too large.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let signal: Self = postcard::from_bytes(bytes).ok()?;
        match &signal {
            Signal::Offer { candidates, .. } | Signal::Answer { candidates, .. }
                if candidates.len() > Self::MAX_CANDIDATES =>
            {
                None
            }
            _ => Some(signal),
        }
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send this datagram (one of ours) to `to`.
    Transmit {
        /// The destination.
        to: SocketAddr,
        /// The datagram.
        datagram: Vec<u8>,
    },
    /// An attempt ended.
    Event(Event),
}

/// How an attempt to reach a peer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Dial the peer at `addr`: a direct path.
    Direct {
        /// The peer.
        peer: PeerId,
        /// Where to dial it.
        addr: SocketAddr,
        /// How long punching took (zero when none was needed).
        elapsed: Duration,
    },
    /// Dial the peer through its relay.
    Relayed {
        /// The peer.
        peer: PeerId,
        /// Its relay.
        relay: SocketAddr,
        /// How long it took to decide.
        elapsed: Duration,
    },
    /// Neither a direct path nor a relay.
    Unreachable {
        /// The peer.
        peer: PeerId,
    },
}

#[derive(Debug)]
struct Attempt {
    session: u64,
    started: Instant,
    /// Started on a guess; [`Punch::learn`] may still correct it.
    guessed: bool,
    candidates: Vec<SocketAddr>,
    relay: Option<SocketAddr>,
    next_send: Instant,
    interval: Duration,
    deadline: Instant,
}

#[derive(Debug)]
struct Responder {
    session: u64,
    candidates: Vec<SocketAddr>,
    next_send: Instant,
    interval: Duration,
    deadline: Instant,
}

/// One peer's punching: its attempts as a dialler and its answers as a listener.
#[derive(Debug)]
pub struct Punch {
    me: PeerId,
    class: Connectivity,
    candidates: Vec<SocketAddr>,
    config: PunchConfig,
    rng: rand::rngs::StdRng,
    attempts: HashMap<PeerId, Attempt>,
    responders: HashMap<PeerId, Responder>,
    out: VecDeque<Output>,
}

impl Punch {
    /// Punching for peer `me` of class `class` with these candidates (reflexive first).
    pub fn new(
        me: PeerId,
        class: Connectivity,
        candidates: Vec<SocketAddr>,
        config: PunchConfig,
    ) -> Self {
        Self {
            me,
            class,
            candidates,
            rng: rand::rngs::StdRng::seed_from_u64(config.seed),
            config,
            attempts: HashMap::new(),
            responders: HashMap::new(),
            out: VecDeque::new(),
        }
    }

    /// Updates what we know about ourselves (after a new classification).
    pub fn set_self(&mut self, class: Connectivity, candidates: Vec<SocketAddr>) {
        self.class = class;
        self.candidates = candidates;
    }

    /// Whether an attempt to `peer` is under way.
    pub fn is_punching(&self, peer: &PeerId) -> bool {
        self.attempts.contains_key(peer)
    }

    /// Starts reaching `peer`, whose record is `record`; an attempt already under way goes on.
    /// A `guessed` record (its record is not at hand yet: its address and our own relay) is
    /// always punched, whatever its class says: the first answer to a probe decides, and
    /// [`Punch::learn`] brings in the real record when it arrives.
    pub fn connect(&mut self, now: Instant, peer: PeerId, record: &NatRecord, guessed: bool) {
        if self.attempts.contains_key(&peer) {
            return;
        }
        let candidates = record.candidates();
        if dialable(record.connectivity) && !guessed {
            if let Some(&addr) = candidates.first() {
                let elapsed = Duration::ZERO;
                let event = Event::Direct {
                    peer,
                    addr,
                    elapsed,
                };
                self.out.push_back(Output::Event(event));
                return;
            }
        }
        let hopeless = !guessed && !can_punch(self.class, record.connectivity);
        if hopeless || candidates.is_empty() {
            self.fall_back(peer, record.relay, Duration::ZERO);
            return;
        }
        let session = self.rng.gen();
        self.attempts.insert(
            peer,
            Attempt {
                session,
                started: now,
                guessed,
                candidates,
                relay: record.relay,
                next_send: now,
                interval: self.config.first_interval,
                deadline: now + self.config.deadline,
            },
        );
        self.handle_timeout(now);
    }

    /// The record of `peer` arrived while an attempt on a guess runs: a peer that can be dialled
    /// as is is dialled now, a pair that cannot punch goes to the peer's relay now, and
    /// otherwise the attempt goes on toward the record's candidates as well, signalling
    /// through the peer's relay. Nothing changes once the attempt has ended (a probe answered
    /// first) or when it was not a guess.
    pub fn learn(&mut self, now: Instant, peer: PeerId, record: &NatRecord) {
        let Some(a) = self.attempts.get_mut(&peer).filter(|a| a.guessed) else {
            return;
        };
        let elapsed = now.saturating_duration_since(a.started);
        let candidates = record.candidates();
        if dialable(record.connectivity) {
            if let Some(&addr) = candidates.first() {
                self.attempts.remove(&peer);
                let event = Event::Direct {
                    peer,
                    addr,
                    elapsed,
                };
                self.out.push_back(Output::Event(event));
                return;
            }
        }
        if !can_punch(self.class, record.connectivity) {
            let relay = record.relay.or(a.relay);
            self.attempts.remove(&peer);
            self.fall_back(peer, relay, elapsed);
            return;
        }
        a.guessed = false;
        let mut news = false;
        for c in candidates {
            if !a.candidates.contains(&c) {
                a.candidates.push(c);
                news = true;
            }
        }
        if record.relay.is_some() && record.relay != a.relay {
            a.relay = record.relay;
            news = true;
        }
        if news {
            // Tell the peer and probe the new candidates now rather than at the next resend.
            a.next_send = now;
            self.handle_timeout(now);
        }
    }

    /// A signal from `from`, delivered by the relay at `relay`. An offer is answered through
    /// that relay (every time: answers can be lost too) and starts our probes toward the
    /// dialler; an answer to an attempt of ours on a guess tells us the listener's class and
    /// candidates, which [`Punch::learn`] takes.
    pub fn handle_signal(&mut self, now: Instant, relay: SocketAddr, from: PeerId, signal: Signal) {
        match signal {
            Signal::Offer {
                session,
                candidates,
            } => {
                let answer = Signal::Answer {
                    session,
                    class: self.class,
                    candidates: self.candidates.clone(),
                };
                self.out.push_back(signal_to(from, relay, &answer));
                if self
                    .responders
                    .get(&from)
                    .is_some_and(|r| r.session == session)
                {
                    return; // A resent offer: our probes are going out already.
                }
                self.responders.insert(
                    from,
                    Responder {
                        session,
                        candidates,
                        next_send: now,
                        interval: self.config.first_interval,
                        deadline: now + self.config.deadline,
                    },
                );
                self.handle_timeout(now);
            }
            Signal::Answer {
                session,
                class,
                candidates,
            } => {
                if self
                    .attempts
                    .get(&from)
                    .is_none_or(|a| a.session != session)
                {
                    return;
                }
                let mut addrs = candidates.into_iter();
                let record = NatRecord {
                    connectivity: class,
                    reflexive: addrs.next(),
                    local: addrs.take(NatRecord::MAX_LOCAL).collect(),
                    relay: Some(relay),
                };
                self.learn(now, from, &record);
            }
        }
    }

    /// A probe (or acknowledgement) that arrived directly from `addr`.
    pub fn handle_probe(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        session: u64,
        from: PeerId,
        ack: bool,
    ) {
        let ours = self
            .attempts
            .get(&from)
            .is_some_and(|a| a.session == session);
        let theirs = self
            .responders
            .get(&from)
            .is_some_and(|r| r.session == session);
        if !ack {
            // Every probe is acknowledged (a reflection no larger than the probe): a dialler
            // that guessed our record learns that its path works. Only an acknowledgement
            // that carries a session of ours makes us dial.
            let reply = Packet::Probe {
                session,
                from: self.me,
                ack: true,
            };
            self.out.push_back(Output::Transmit {
                to: addr,
                datagram: reply.encode(),
            });
        }
        if !ours && !theirs {
            return;
        }
        if theirs {
            // The dialler hears us: it will start QUIC on this path.
            self.responders.remove(&from);
        }
        if ours {
            if let Some(attempt) = self.attempts.remove(&from) {
                let elapsed = now.saturating_duration_since(attempt.started);
                self.out.push_back(Output::Event(Event::Direct {
                    peer: from,
                    addr,
                    elapsed,
                }));
            }
        }
    }

    /// Resends what is due and gives up on attempts past their deadline.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut expired = Vec::new();
        for (peer, a) in &mut self.attempts {
            if now >= a.deadline {
                expired.push(*peer);
                continue;
            }
            if now < a.next_send {
                continue;
            }
            if let Some(relay) = a.relay {
                let offer = offer(*peer, relay, a.session, &self.candidates);
                self.out.push_back(offer);
            }
            probes(&mut self.out, self.me, a.session, &a.candidates);
            a.next_send = now + a.interval;
            a.interval = (a.interval * 2).min(self.config.max_interval);
        }
        for peer in expired {
            if let Some(a) = self.attempts.remove(&peer) {
                self.fall_back(peer, a.relay, now.saturating_duration_since(a.started));
            }
        }
        self.responders.retain(|_, r| now < r.deadline);
        for r in self.responders.values_mut() {
            if now >= r.next_send {
                probes(&mut self.out, self.me, r.session, &r.candidates);
                r.next_send = now + r.interval;
                r.interval = (r.interval * 2).min(self.config.max_interval);
            }
        }
    }

    /// When [`Punch::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let attempts = self.attempts.values().map(|a| a.next_send.min(a.deadline));
        let responders = self
            .responders
            .values()
            .map(|r| r.next_send.min(r.deadline));
        attempts.chain(responders).min()
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn fall_back(&mut self, peer: PeerId, relay: Option<SocketAddr>, elapsed: Duration) {
        let event = match relay {
            Some(relay) => Event::Relayed {
                peer,
                relay,
                elapsed,
            },
            None => Event::Unreachable { peer },
        };
        self.out.push_back(Output::Event(event));
    }
}

/// An offer to `peer` through `relay`.
fn offer(peer: PeerId, relay: SocketAddr, session: u64, candidates: &[SocketAddr]) -> Output {
    let offer = Signal::Offer {
        session,
        candidates: candidates.to_vec(),
    };
    signal_to(peer, relay, &offer)
}

/// `signal` to `peer` through `relay`.
fn signal_to(peer: PeerId, relay: SocketAddr, signal: &Signal) -> Output {
    Output::Transmit {
        to: relay,
        datagram: Packet::SignalTo {
            to: peer,
            payload: &signal.encode(),
        }
        .encode(),
    }
}

fn probes(out: &mut VecDeque<Output>, me: PeerId, session: u64, to: &[SocketAddr]) {
    let probe = Packet::Probe {
        session,
        from: me,
        ack: false,
    }
    .encode();
    for addr in to {
        out.push_back(Output::Transmit {
            to: *addr,
            datagram: probe.clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    //! Two `Punch` cores and a relay behind two simulated NATs, in virtual time.

    use std::collections::HashSet;

    use super::*;
    use crate::nat::packet::Packet;
    use Connectivity::*;

    /// A simulated NAT in front of one host (RFC 4787 behaviours).
    struct Nat {
        class: Connectivity,
        public_ip: [u8; 4],
        /// (destination, public port) of every mapping made.
        mappings: Vec<(SocketAddr, u16)>,
        /// Destinations the host sent to, per public port (for filtering).
        sent_to: HashSet<(u16, SocketAddr)>,
    }

    impl Nat {
        const HOST_PORT: u16 = 4433;

        fn new(class: Connectivity, ip: [u8; 4]) -> Self {
            Self {
                class,
                public_ip: ip,
                mappings: Vec::new(),
                sent_to: HashSet::new(),
            }
        }

        /// The source address an outbound packet to `dst` leaves with.
        fn outbound(&mut self, dst: SocketAddr) -> SocketAddr {
            let port = match self.class {
                Symmetric => match self.mappings.iter().find(|(d, _)| *d == dst) {
                    Some((_, p)) => *p,
                    None => {
                        let p = 20000 + self.mappings.len() as u16;
                        self.mappings.push((dst, p));
                        p
                    }
                },
                _ => Self::HOST_PORT,
            };
            self.sent_to.insert((port, dst));
            SocketAddr::from((self.public_ip, port))
        }

        /// Whether an inbound packet from `src` to our public `port` gets through.
        fn inbound(&self, src: SocketAddr, port: u16) -> bool {
            match self.class {
                Open | FullCone => port == Self::HOST_PORT,
                PortRestricted | Symmetric => self.sent_to.contains(&(port, src)),
            }
        }

        fn public(&self) -> SocketAddr {
            SocketAddr::from((self.public_ip, Self::HOST_PORT))
        }
    }

    struct Side {
        punch: Punch,
        nat: Nat,
    }

    const RELAY: [u8; 4] = [198, 51, 100, 1];

    /// Runs a dial from a (class `ca`) to b (class `cb`), with b's record or (`guessed`) only
    /// its address and the relay; returns the event and the time.
    fn run(ca: Connectivity, cb: Connectivity, seed: u64, guessed: bool) -> (Event, Duration) {
        let relay = SocketAddr::from((RELAY, 4433));
        let (a_id, b_id) = (PeerId([0xaa; 32]), PeerId([0xbb; 32]));
        let mut sides =
            [(a_id, ca, [203, 0, 113, 1]), (b_id, cb, [203, 0, 113, 2])].map(|(id, class, ip)| {
                let nat = Nat::new(class, ip);
                let config = PunchConfig {
                    seed: seed ^ u64::from(ip[3]),
                    ..PunchConfig::default()
                };
                Side {
                    punch: Punch::new(id, class, vec![nat.public()], config),
                    nat,
                }
            });
        let record_b = if guessed {
            NatRecord {
                connectivity: PortRestricted,
                reflexive: Some(sides[1].nat.public()),
                local: vec![],
                relay: Some(relay),
            }
        } else {
            NatRecord {
                connectivity: cb,
                reflexive: Some(sides[1].nat.public()),
                local: vec!["10.0.0.2:4433".parse().unwrap()],
                relay: Some(relay),
            }
        };
        let start = Instant::now();
        let mut now = start;
        sides[0].punch.connect(now, b_id, &record_b, guessed);
        // In flight: (arrival, to side, from address, to address, datagram).
        let mut wire: Vec<(Instant, usize, SocketAddr, SocketAddr, Vec<u8>)> = Vec::new();
        let one_way = Duration::from_millis(20);
        for _ in 0..10_000 {
            for i in 0..2 {
                while let Some(out) = sides[i].punch.poll_output() {
                    match out {
                        Output::Event(e) => {
                            assert_eq!(i, 0, "only the dialler reports");
                            return (e, now - start);
                        }
                        Output::Transmit { to, datagram } => {
                            let src = sides[i].nat.outbound(to);
                            if to.ip() == std::net::IpAddr::from(RELAY) {
                                // The relay forwards signals between the two (both registered
                                // with it), stamped with the sender.
                                let Ok(Packet::SignalTo { to, payload }) = Packet::parse(&datagram)
                                else {
                                    panic!("only signals go to the relay here");
                                };
                                let (j, from) = if to == b_id { (1, a_id) } else { (0, b_id) };
                                let fwd = Packet::SignalFrom { from, payload }.encode();
                                wire.push((now + 2 * one_way, j, relay, relay, fwd));
                                continue;
                            }
                            let j = 1 - i;
                            if to.ip() == sides[j].nat.public().ip() {
                                wire.push((now + one_way, j, src, to, datagram));
                            } // Local candidates lead nowhere.
                        }
                    }
                }
            }
            // The next event: a datagram or a timer.
            let next_timer = sides.iter().filter_map(|s| s.punch.poll_timeout()).min();
            let next_packet = wire.iter().map(|w| w.0).min();
            now = match (next_timer, next_packet) {
                (Some(t), Some(p)) => t.min(p),
                (Some(t), None) => t,
                (None, Some(p)) => p,
                (None, None) => panic!("stuck"),
            };
            let due: Vec<_> = wire.iter().filter(|w| w.0 <= now).cloned().collect();
            wire.retain(|w| w.0 > now);
            for (_, j, src, dst, datagram) in due {
                if src == relay {
                    let Ok(Packet::SignalFrom { from, payload }) = Packet::parse(&datagram) else {
                        panic!("bad signal");
                    };
                    let signal = Signal::decode(payload).unwrap();
                    sides[j].punch.handle_signal(now, relay, from, signal);
                    continue;
                }
                if !sides[j].nat.inbound(src, dst.port()) {
                    continue;
                }
                let Ok(Packet::Probe { session, from, ack }) = Packet::parse(&datagram) else {
                    panic!("not a probe");
                };
                sides[j].punch.handle_probe(now, src, session, from, ack);
            }
            for s in &mut sides {
                if s.punch.poll_timeout().is_some_and(|t| t <= now) {
                    s.punch.handle_timeout(now);
                }
            }
        }
        panic!("no outcome");
    }

    #[test]
    fn every_pair_of_classes_ends_direct_where_punching_can_work_and_relayed_elsewhere() {
        let all = [Open, FullCone, PortRestricted, Symmetric];
        for a in all {
            for b in all {
                for seed in 0..3 {
                    let (event, took) = run(a, b, seed, false);
                    match event {
                        Event::Direct { peer, .. } => {
                            assert!(can_punch(a, b), "{a:?} → {b:?} went direct");
                            assert_eq!(peer, PeerId([0xbb; 32]));
                            assert!(took < Duration::from_millis(500), "{a:?} → {b:?}: {took:?}");
                        }
                        Event::Relayed { elapsed, .. } => {
                            assert!(!can_punch(a, b), "{a:?} → {b:?} was relayed");
                            assert_eq!(elapsed, Duration::ZERO, "no time lost when hopeless");
                        }
                        Event::Unreachable { .. } => panic!("{a:?} → {b:?} unreachable"),
                    }
                }
            }
        }
    }

    #[test]
    fn a_punch_on_a_guess_ends_as_soon_as_a_probe_or_the_listeners_answer_decides() {
        // The dialler knows only b's address and a relay: probes that get through decide
        // direct paths, b's answer through the relay (two trips, 80 ms here) tells it when
        // punching cannot work. Nobody waits for the punch deadline.
        let all = [Open, FullCone, PortRestricted, Symmetric];
        for a in all {
            for b in all {
                for seed in 0..3 {
                    let (event, took) = run(a, b, seed, true);
                    assert!(took < Duration::from_millis(500), "{a:?} → {b:?}: {took:?}");
                    match event {
                        Event::Direct { .. } => assert!(can_punch(a, b), "{a:?} → {b:?} direct"),
                        Event::Relayed { relay, .. } => {
                            assert!(!can_punch(a, b), "{a:?} → {b:?} was relayed");
                            assert_eq!(relay.ip(), std::net::IpAddr::from(RELAY));
                        }
                        Event::Unreachable { .. } => panic!("{a:?} → {b:?} unreachable"),
                    }
                }
            }
        }
    }

    #[test]
    fn a_punch_that_gets_no_answer_falls_back_to_the_relay_after_its_deadline() {
        let relay: SocketAddr = "198.51.100.1:4433".parse().unwrap();
        let mut p = Punch::new(
            PeerId([2; 32]),
            PortRestricted,
            vec![],
            PunchConfig::default(),
        );
        let t0 = Instant::now();
        let record = NatRecord {
            connectivity: PortRestricted,
            reflexive: Some("203.0.113.5:4433".parse().unwrap()),
            local: vec![],
            relay: Some(relay),
        };
        p.connect(t0, PeerId([3; 32]), &record, false);
        let mut sends = 0;
        loop {
            while let Some(out) = p.poll_output() {
                match out {
                    Output::Transmit { .. } => sends += 1,
                    Output::Event(e) => {
                        assert_eq!(
                            e,
                            Event::Relayed {
                                peer: PeerId([3; 32]),
                                relay,
                                elapsed: PunchConfig::default().deadline
                            }
                        );
                        // Offer + probe at 0, 100, 300, 700, 1500 ms (then 2300 ms).
                        assert_eq!(sends, 12);
                        return;
                    }
                }
            }
            let now = p.poll_timeout().expect("a timer while punching");
            p.handle_timeout(now);
        }
    }

    #[test]
    fn probes_with_unknown_sessions_are_only_acknowledged_and_signals_are_bounded() {
        let mut p = Punch::new(PeerId([2; 32]), FullCone, vec![], PunchConfig::default());
        let stranger: SocketAddr = "1.2.3.4:5".parse().unwrap();
        p.handle_probe(Instant::now(), stranger, 7, PeerId([3; 32]), true);
        assert_eq!(
            p.poll_output(),
            None,
            "an unknown acknowledgement is ignored"
        );
        p.handle_probe(Instant::now(), stranger, 7, PeerId([3; 32]), false);
        match p.poll_output() {
            Some(Output::Transmit { to, datagram }) => {
                assert_eq!(to, stranger, "a probe is acknowledged to its source only");
                assert!(datagram.len() < 64);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(p.poll_output(), None, "and nothing else happens");
        let big = Signal::Offer {
            session: 1,
            candidates: vec!["1.2.3.4:5".parse().unwrap(); 9],
        };
        assert_eq!(Signal::decode(&big.encode()), None);
        assert_eq!(Signal::decode(&[0xff; 3]), None);
    }
}
