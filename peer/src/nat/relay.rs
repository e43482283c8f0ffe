//! A relay's forwarding table: which peer is registered at which address, and a token bucket
//! that bounds the bandwidth the relay gives away.
//!
//! Sans-IO: [`RelayServer::handle`] takes the time, the sender's address and a parsed packet
//! and says what to send where. The relay sees only opaque QUIC packets (encrypted and
//! authenticated end to end by the two peers) and the sender's registered identity; it cannot
//! read or alter what it forwards without the peers noticing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::packet::Packet;
use crate::identity::PeerId;

/// A relay's limits.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Sustained forwarding rate, bytes per second (all clients together).
    pub rate_bytes_per_s: u64,
    /// Bytes that may be forwarded in a burst above the rate.
    pub burst_bytes: u64,
    /// The most registered clients.
    pub max_clients: usize,
    /// How long a registration lasts without a refresh.
    pub lifetime: Duration,
    /// How far a registration's timestamp may be from the relay's clock.
    pub max_skew: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            // 8 Mbit/s: a few relayed viewers of a typical live stream.
            rate_bytes_per_s: 1_000_000,
            burst_bytes: 256 * 1024,
            max_clients: 1024,
            lifetime: Duration::from_secs(60),
            max_skew: Duration::from_secs(120),
        }
    }
}

/// What the relay did, counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Registrations accepted (including refreshes).
    pub registrations: u64,
    /// Registrations refused (bad signature, wrong relay, replayed elsewhere, stale, full).
    pub refused: u64,
    /// Packets forwarded.
    pub forwarded: u64,
    /// Bytes forwarded.
    pub forwarded_bytes: u64,
    /// Packets dropped because the bandwidth bound was reached.
    pub over_budget: u64,
    /// Packets dropped because the sender or the destination is not registered.
    pub unknown: u64,
}

#[derive(Debug, Clone, Copy)]
struct Client {
    addr: SocketAddr,
    expires: Instant,
}

/// The relay side of the relay protocol.
#[derive(Debug)]
pub struct RelayServer {
    config: RelayConfig,
    clients: HashMap<PeerId, Client>,
    by_addr: HashMap<SocketAddr, PeerId>,
    tokens: f64,
    refilled: Instant,
    stats: RelayStats,
}

impl RelayServer {
    /// A relay with these limits.
    pub fn new(now: Instant, config: RelayConfig) -> Self {
        Self {
            tokens: config.burst_bytes as f64,
            config,
            clients: HashMap::new(),
            by_addr: HashMap::new(),
            refilled: now,
            stats: RelayStats::default(),
        }
    }

    /// Handles a packet from `from`; returns the datagram to send and where, if any.
    /// `unix_ms` is the wall clock, for the freshness of registrations.
    pub fn handle(
        &mut self,
        now: Instant,
        unix_ms: u64,
        from: SocketAddr,
        packet: &Packet<'_>,
    ) -> Option<(SocketAddr, Vec<u8>)> {
        match packet {
            Packet::Register(reg) => {
                let skew = reg.unix_ms.abs_diff(unix_ms);
                let ok = reg.observed == from
                    && skew <= self.config.max_skew.as_millis() as u64
                    && reg.verify();
                let peer = reg.key.peer_id();
                if !ok || !self.admit(now, peer) {
                    self.stats.refused += 1;
                    return None;
                }
                if let Some(old) = self.clients.get(&peer) {
                    self.by_addr.remove(&old.addr);
                }
                if let Some(previous) = self.by_addr.insert(from, peer) {
                    // Another peer was registered at this address: it moved away.
                    if previous != peer {
                        self.clients.remove(&previous);
                    }
                }
                self.clients.insert(
                    peer,
                    Client {
                        addr: from,
                        expires: now + self.config.lifetime,
                    },
                );
                self.stats.registrations += 1;
                let lifetime_s = self.config.lifetime.as_secs().min(u64::from(u16::MAX)) as u16;
                Some((from, Packet::Registered { lifetime_s }.encode()))
            }
            Packet::Send { to, payload } => {
                let (src, dst) = self.route(now, from, to)?;
                if !self.spend(now, payload.len()) {
                    return None;
                }
                let out = Packet::Deliver { from: src, payload }.encode();
                Some((dst, out))
            }
            Packet::SignalTo { to, payload } => {
                let (src, dst) = self.route(now, from, to)?;
                if !self.spend(now, payload.len()) {
                    return None;
                }
                Some((dst, Packet::SignalFrom { from: src, payload }.encode()))
            }
            _ => None,
        }
    }

    /// The registered address of `peer`, if its registration holds.
    pub fn client(&self, now: Instant, peer: &PeerId) -> Option<SocketAddr> {
        self.clients
            .get(peer)
            .filter(|c| c.expires > now)
            .map(|c| c.addr)
    }

    /// What the relay did so far.
    pub fn stats(&self) -> &RelayStats {
        &self.stats
    }

    /// Whether a registration of `peer` fits (a refresh always does).
    fn admit(&mut self, now: Instant, peer: PeerId) -> bool {
        if self.clients.contains_key(&peer) || self.clients.len() < self.config.max_clients {
            return true;
        }
        let by_addr = &mut self.by_addr;
        self.clients.retain(|_, c| {
            let live = c.expires > now;
            if !live {
                by_addr.remove(&c.addr);
            }
            live
        });
        self.clients.len() < self.config.max_clients
    }

    /// The registered sender at `from` and the destination's address.
    fn route(
        &mut self,
        now: Instant,
        from: SocketAddr,
        to: &PeerId,
    ) -> Option<(PeerId, SocketAddr)> {
        let src = self
            .by_addr
            .get(&from)
            .copied()
            .filter(|p| self.client(now, p) == Some(from));
        let dst = self.client(now, to);
        match (src, dst) {
            (Some(src), Some(dst)) => Some((src, dst)),
            _ => {
                self.stats.unknown += 1;
                None
            }
        }
    }

    /// Takes `len` bytes from the bucket, or refuses.
    fn spend(&mut self, now: Instant, len: usize) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * self.config.rate_bytes_per_s as f64)
            .min(self.config.burst_bytes as f64);
        let cost = (len + super::packet::RELAY_OVERHEAD) as f64;
        if self.tokens < cost {
            self.stats.over_budget += 1;
            return false;
        }
        self.tokens -= cost;
        self.stats.forwarded += 1;
        self.stats.forwarded_bytes += len as u64;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Keypair;
    use crate::nat::packet::Register;

    const T0: u64 = 1_700_000_000_000;

    fn setup() -> (Instant, RelayServer, Keypair, Keypair) {
        let now = Instant::now();
        let config = RelayConfig {
            rate_bytes_per_s: 10_000,
            burst_bytes: 5_000,
            ..RelayConfig::default()
        };
        let server = RelayServer::new(now, config);
        (
            now,
            server,
            Keypair::from_seed([2; 32]),
            Keypair::from_seed([3; 32]),
        )
    }

    fn register(s: &mut RelayServer, now: Instant, key: &Keypair, at: SocketAddr) -> bool {
        let reg = Register::sign(key, at, T0);
        s.handle(now, T0, at, &Packet::Register(Box::new(reg)))
            .is_some()
    }

    #[test]
    fn registered_peers_reach_each_other_and_no_one_else() {
        let (now, mut s, a, b) = setup();
        let (addr_a, addr_b): (SocketAddr, SocketAddr) = (
            "198.51.100.1:1000".parse().unwrap(),
            "198.51.100.2:2000".parse().unwrap(),
        );
        assert!(register(&mut s, now, &a, addr_a));
        let send = Packet::Send {
            to: b.peer_id(),
            payload: b"\x40opaque",
        };
        assert_eq!(
            s.handle(now, T0, addr_a, &send),
            None,
            "b is not registered"
        );
        assert!(register(&mut s, now, &b, addr_b));
        let (to, bytes) = s.handle(now, T0, addr_a, &send).unwrap();
        assert_eq!(to, addr_b);
        assert_eq!(
            Packet::parse(&bytes).unwrap(),
            Packet::Deliver {
                from: a.peer_id(),
                payload: b"\x40opaque"
            },
            "the payload passes unchanged, stamped with the registered sender"
        );
        let stranger: SocketAddr = "198.51.100.3:3000".parse().unwrap();
        assert_eq!(
            s.handle(now, T0, stranger, &send),
            None,
            "unregistered sender"
        );
        // Registrations lapse.
        let later = now + Duration::from_secs(61);
        assert_eq!(s.handle(later, T0, addr_a, &send), None);
    }

    #[test]
    fn registrations_must_be_signed_fresh_and_from_the_observed_address() {
        let (now, mut s, a, _) = setup();
        let at: SocketAddr = "198.51.100.1:1000".parse().unwrap();
        let elsewhere: SocketAddr = "198.51.100.9:1000".parse().unwrap();
        let reg = Register::sign(&a, at, T0);
        let replayed = Packet::Register(Box::new(reg.clone()));
        assert_eq!(
            s.handle(now, T0, elsewhere, &replayed),
            None,
            "replayed elsewhere"
        );
        let stale = Packet::Register(Box::new(Register::sign(&a, at, T0 - 600_000)));
        assert_eq!(s.handle(now, T0, at, &stale), None, "too old");
        let mut forged = reg;
        forged.observed = elsewhere;
        assert_eq!(
            s.handle(now, T0, elsewhere, &Packet::Register(Box::new(forged))),
            None,
            "altered after signing"
        );
        assert_eq!(s.stats().refused, 3);
        assert_eq!(s.client(now, &a.peer_id()), None);
    }

    #[test]
    fn the_bandwidth_bound_holds() {
        let (now, mut s, a, b) = setup();
        let (addr_a, addr_b): (SocketAddr, SocketAddr) = (
            "198.51.100.1:1000".parse().unwrap(),
            "198.51.100.2:2000".parse().unwrap(),
        );
        register(&mut s, now, &a, addr_a);
        register(&mut s, now, &b, addr_b);
        let payload = [0x40u8; 967]; // 1000 bytes with the relay's header
        let send = Packet::Send {
            to: b.peer_id(),
            payload: &payload,
        };
        let mut sent = 0;
        let mut t = now;
        // Two seconds of offered load at 100 kB/s against a bound of 10 kB/s.
        for _ in 0..200 {
            t += Duration::from_millis(10);
            sent += usize::from(s.handle(t, T0, addr_a, &send).is_some());
        }
        // The burst (5 packets) plus 2 s at 10 packets/s.
        assert!((20..=26).contains(&sent), "{sent} packets forwarded");
        assert_eq!(s.stats().over_budget, 200 - sent as u64);
    }
}
