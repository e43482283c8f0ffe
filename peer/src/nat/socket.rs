//! The UDP socket the node's quinn endpoint runs on, shared with STUN and the relay protocol, so
//! that the addresses STUN reports and the holes probes punch are the QUIC socket's own.
//!
//! [`NatSocket`] implements quinn's `AsyncUdpSocket`. Each datagram read is sorted by its first
//! byte ([`super::packet::kind`]):
//!
//! - QUIC goes to quinn as is;
//! - a STUN Binding request is answered at once (and one with CHANGE-REQUEST is passed to our
//!   partner); a response goes to the driver;
//! - a relayed QUIC packet ([`Packet::Deliver`]) goes to quinn without its relay header, from the
//!   sending peer's *virtual address* (see [`super::virtual_addr`]); what quinn sends to a
//!   virtual address leaves wrapped in [`Packet::Send`] toward that peer's relay;
//! - relay requests are forwarded here when this peer relays ([`RelayServer`]);
//! - the rest (registrations' answers, signals, probes, partner offers) goes to the driver.
//!
//! Anything malformed is dropped with a debug log. The socket is a plain tokio socket: one
//! datagram per call, no GSO/GRO (segments of relayed and direct packets would not mix in one
//! GRO batch), and fragmentation allowed (so quinn keeps its 1200-byte packets, which leaves
//! room for the relay's header).

use std::collections::HashMap;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::io::ReadBuf;
use tokio::sync::mpsc;
use tracing::debug;

use super::packet::{self, Kind, Packet};
use super::punch::Signal;
use super::relay::{RelayConfig, RelayServer, RelayStats};
use super::stun;
use crate::identity::PeerId;

/// What the socket hands to the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketEvent {
    /// A STUN Binding success response.
    Stun {
        /// Who sent it.
        from: SocketAddr,
        /// What it says.
        response: stun::Response,
    },
    /// A relay confirmed our registration.
    Registered {
        /// The relay's address.
        relay: SocketAddr,
        /// How long it holds.
        lifetime_s: u16,
    },
    /// A signal from another peer, through a relay.
    Signal {
        /// The relay that delivered it (answers go back through it).
        relay: SocketAddr,
        /// The peer, as the relay authenticated it.
        from: PeerId,
        /// The signal.
        signal: Signal,
    },
    /// A punch probe or acknowledgement.
    Probe {
        /// Where it came from.
        addr: SocketAddr,
        /// Its session.
        session: u64,
        /// The peer it claims to be from.
        from: PeerId,
        /// Whether it acknowledges one of ours.
        ack: bool,
    },
    /// Another open peer offers (or accepts) to be our STUN partner.
    Partner {
        /// Its address.
        from: SocketAddr,
        /// True when it accepts our offer.
        accept: bool,
    },
}

/// Counters of what the socket saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SocketStats {
    /// STUN requests answered (including CHANGE-REQUESTs passed to the partner).
    pub stun_answered: u64,
    /// Datagrams dropped as malformed or unexpected.
    pub dropped: u64,
    /// QUIC packets received through a relay.
    pub relayed_in: u64,
    /// QUIC packets sent through a relay.
    pub relayed_out: u64,
}

#[derive(Default)]
struct State {
    relay: Option<RelayServer>,
    partner: Option<SocketAddr>,
    /// Relayed peers by virtual address: (their relay, the peer).
    virtuals: HashMap<SocketAddr, (SocketAddr, PeerId)>,
    by_peer: HashMap<(SocketAddr, PeerId), SocketAddr>,
    next_virtual: u32,
    stats: SocketStats,
}

impl State {
    fn virtual_for(&mut self, relay: SocketAddr, peer: PeerId) -> SocketAddr {
        if let Some(v) = self.by_peer.get(&(relay, peer)) {
            return *v;
        }
        let v = super::virtual_addr(self.next_virtual);
        self.next_virtual = self.next_virtual.wrapping_add(1);
        self.by_peer.insert((relay, peer), v);
        self.virtuals.insert(v, (relay, peer));
        v
    }
}

/// The node's UDP socket: QUIC, STUN and the relay protocol on one port.
pub struct NatSocket {
    io: tokio::net::UdpSocket,
    /// The same socket, for our own datagrams: a plain non-blocking send does not depend on
    /// tokio having seen the socket writable yet.
    raw: std::net::UdpSocket,
    local: SocketAddr,
    state: Mutex<State>,
    events: mpsc::UnboundedSender<SocketEvent>,
}

impl fmt::Debug for NatSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatSocket")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl NatSocket {
    /// Binds `addr`; the receiver gets what the driver must handle.
    pub fn bind(addr: SocketAddr) -> io::Result<(Arc<Self>, mpsc::UnboundedReceiver<SocketEvent>)> {
        let std = std::net::UdpSocket::bind(addr)?;
        std.set_nonblocking(true)?;
        let raw = std.try_clone()?;
        let io = tokio::net::UdpSocket::from_std(std)?;
        let local = io.local_addr()?;
        let (events, rx) = mpsc::unbounded_channel();
        let socket = Self {
            io,
            raw,
            local,
            state: Mutex::new(State::default()),
            events,
        };
        Ok((Arc::new(socket), rx))
    }

    /// Sends one of our datagrams (best effort, like any UDP send).
    pub fn send_to(&self, datagram: &[u8], to: SocketAddr) {
        if let Err(e) = self.raw.send_to(datagram, to) {
            debug!(%to, error = %e, "datagram not sent");
        }
    }

    /// Starts relaying for others, within `config`'s bounds.
    pub fn enable_relay(&self, config: RelayConfig) {
        let mut state = self.state();
        if state.relay.is_none() {
            state.relay = Some(RelayServer::new(Instant::now(), config));
        }
    }

    /// Whether this socket relays for others.
    pub fn is_relay(&self) -> bool {
        self.state().relay.is_some()
    }

    /// What the relay did, if this peer relays.
    pub fn relay_stats(&self) -> Option<RelayStats> {
        self.state().relay.as_ref().map(|r| r.stats().clone())
    }

    /// Where `peer` is registered with us, if we relay for it: its NAT keeps that mapping open
    /// toward us, so it is a direct path.
    pub fn relay_client(&self, peer: &PeerId) -> Option<SocketAddr> {
        let state = self.state();
        state.relay.as_ref()?.client(Instant::now(), peer)
    }

    /// Counters of the socket.
    pub fn stats(&self) -> SocketStats {
        self.state().stats.clone()
    }

    /// Our STUN partner (RFC 5780 other address), once one agreed.
    pub fn partner(&self) -> Option<SocketAddr> {
        self.state().partner
    }

    /// Sets our STUN partner.
    pub fn set_partner(&self, partner: SocketAddr) {
        self.state().partner = Some(partner);
    }

    /// The virtual address under which quinn reaches `peer` through the relay at `relay`.
    pub fn virtual_for(&self, relay: SocketAddr, peer: PeerId) -> SocketAddr {
        self.state().virtual_for(relay, peer)
    }

    /// The relay and peer behind a virtual address.
    pub fn relayed(&self, addr: SocketAddr) -> Option<(SocketAddr, PeerId)> {
        self.state().virtuals.get(&addr).copied()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug in this module; the state stays usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn drop_datagram(&self, from: SocketAddr, why: &dyn fmt::Display) {
        debug!(%from, %why, "dropped a datagram");
        self.state().stats.dropped += 1;
    }

    fn on_stun(&self, from: SocketAddr, datagram: &[u8]) {
        if let Some(req) = stun::parse_request(datagram) {
            let partner = self.state().partner;
            if req.change {
                match partner {
                    Some(partner) => {
                        let changed = Packet::Changed {
                            client: from,
                            request: datagram,
                        };
                        self.send_to(&changed.encode(), partner);
                    }
                    // RFC 5780 would answer 420; the client's timeout tells it the same.
                    None => debug!(%from, "CHANGE-REQUEST without a partner; not answered"),
                }
            } else {
                self.send_to(&stun::binding_response(req.tx, from, partner), from);
            }
            self.state().stats.stun_answered += 1;
        } else if let Some(response) = stun::parse_response(datagram) {
            let _ = self.events.send(SocketEvent::Stun { from, response });
        } else {
            self.drop_datagram(from, &"not a STUN Binding message");
        }
    }

    /// Handles one of our datagrams; for a relayed QUIC packet, returns the virtual address it
    /// comes from and where its QUIC bytes start in `datagram`.
    fn on_ours(&self, from: SocketAddr, datagram: &[u8]) -> Option<(SocketAddr, usize)> {
        let packet = match Packet::parse(datagram) {
            Ok(p) => p,
            Err(e) => {
                self.drop_datagram(from, &e);
                return None;
            }
        };
        let event = match packet {
            Packet::Deliver { from: peer, .. } => {
                let mut state = self.state();
                state.stats.relayed_in += 1;
                let v = state.virtual_for(from, peer);
                return Some((v, packet::RELAY_OVERHEAD));
            }
            Packet::Register(_) | Packet::Send { .. } | Packet::SignalTo { .. } => {
                let unix_ms = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                let forward = {
                    let mut state = self.state();
                    match state.relay.as_mut() {
                        Some(relay) => relay.handle(Instant::now(), unix_ms, from, &packet),
                        None => {
                            drop(state);
                            self.drop_datagram(from, &"a relay request, but we do not relay");
                            return None;
                        }
                    }
                };
                if let Some((to, bytes)) = forward {
                    self.send_to(&bytes, to);
                }
                return None;
            }
            Packet::Changed { client, request } => {
                // Only our partner may make us answer someone else.
                if self.state().partner != Some(from) {
                    self.drop_datagram(from, &"a changed request from a stranger");
                    return None;
                }
                match stun::parse_request(request) {
                    Some(req) => {
                        self.send_to(&stun::binding_response(req.tx, client, None), client)
                    }
                    None => self.drop_datagram(from, &"a changed request without STUN"),
                }
                return None;
            }
            Packet::Registered { lifetime_s } => SocketEvent::Registered {
                relay: from,
                lifetime_s,
            },
            Packet::SignalFrom {
                from: peer,
                payload,
            } => match Signal::decode(payload) {
                Some(signal) => SocketEvent::Signal {
                    relay: from,
                    from: peer,
                    signal,
                },
                None => {
                    self.drop_datagram(from, &"a malformed signal");
                    return None;
                }
            },
            Packet::Probe {
                session,
                from: peer,
                ack,
            } => SocketEvent::Probe {
                addr: from,
                session,
                from: peer,
                ack,
            },
            Packet::Partner { accept } => SocketEvent::Partner { from, accept },
        };
        let _ = self.events.send(event);
        None
    }
}

impl AsyncUdpSocket for NatSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(Poller { socket: self })
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let result = if super::is_virtual(transmit.destination) {
            let Some((relay, peer)) = self.relayed(transmit.destination) else {
                debug!(to = %transmit.destination, "no relay for a virtual address; dropped");
                return Ok(());
            };
            self.state().stats.relayed_out += 1;
            let wrapped = Packet::Send {
                to: peer,
                payload: transmit.contents,
            }
            .encode();
            self.io.try_send_to(&wrapped, relay)
        } else {
            self.io.try_send_to(transmit.contents, transmit.destination)
        };
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(e),
            // Like quinn's own socket: an unreachable destination must not fail the endpoint.
            Err(e) => {
                debug!(to = %transmit.destination, error = %e, "QUIC datagram not sent");
                Ok(())
            }
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let (Some(buf), Some(meta)) = (bufs.first_mut(), meta.first_mut()) else {
            return Poll::Ready(Ok(0));
        };
        loop {
            let mut read = ReadBuf::new(buf);
            let from = match self.io.poll_recv_from(cx, &mut read) {
                Poll::Ready(Ok(from)) => from,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            let len = read.filled().len();
            let (addr, start) = match packet::kind(&buf[..len]) {
                Some(Kind::Quic) => (from, 0),
                Some(Kind::Stun) => {
                    self.on_stun(from, &buf[..len]);
                    continue;
                }
                Some(Kind::Ours) => match self.on_ours(from, &buf[..len]) {
                    Some(relayed) => relayed,
                    None => continue,
                },
                None => {
                    self.drop_datagram(from, &"neither QUIC, STUN nor ours");
                    continue;
                }
            };
            buf.copy_within(start..len, 0);
            *meta = RecvMeta {
                addr,
                len: len - start,
                stride: len - start,
                ecn: None,
                dst_ip: None,
            };
            return Poll::Ready(Ok(1));
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn may_fragment(&self) -> bool {
        true
    }
}

/// Waits until the socket can send again.
#[derive(Debug)]
struct Poller {
    socket: Arc<NatSocket>,
}

impl UdpPoller for Poller {
    fn poll_writable(self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        self.socket.io.poll_send_ready(cx)
    }
}
