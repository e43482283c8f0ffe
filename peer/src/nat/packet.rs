//! The datagrams that share the QUIC socket besides QUIC and STUN, and the demultiplexing rule
//! that tells the three apart by their first byte (RFC 7983 / RFC 9443 style):
//!
//! ```text
//!   0x00..=0x03 + magic cookie at bytes 4..8   STUN
//!   0x20..=0x2f                                ours (this module)
//!   fixed bit 0x40 set                         QUIC (our endpoints never grease that bit)
//! ```
//!
//! Ours:
//!
//! | byte | packet | body |
//! |---|---|---|
//! | 0x20 | [`Packet::Register`] | public key, observed address, time, signature |
//! | 0x21 | [`Packet::Registered`] | lifetime in seconds |
//! | 0x22 | [`Packet::Send`] | destination peer, QUIC packet |
//! | 0x23 | [`Packet::Deliver`] | source peer, QUIC packet |
//! | 0x24 | [`Packet::SignalTo`] | destination peer, signal |
//! | 0x25 | [`Packet::SignalFrom`] | source peer, signal |
//! | 0x26 | [`Packet::Probe`] | session, sender, ack flag |
//! | 0x27 | [`Packet::Partner`] | accept flag |
//! | 0x28 | [`Packet::Changed`] | client address, STUN request |
//!
//! Parsing never panics: every length is checked, and anything malformed is an error the
//! socket logs at debug level and drops.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::identity::{Keypair, PeerId, PublicKey, Signature};

/// What a datagram on the shared socket is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A QUIC packet.
    Quic,
    /// A STUN message.
    Stun,
    /// One of ours.
    Ours,
}

/// The STUN magic cookie (RFC 8489 §5).
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];

/// Tells QUIC, STUN and our datagrams apart; `None` for anything else.
pub fn kind(datagram: &[u8]) -> Option<Kind> {
    let first = *datagram.first()?;
    if first < 0x04 {
        (datagram.len() >= 20 && datagram[4..8] == MAGIC_COOKIE).then_some(Kind::Stun)
    } else if first & 0x40 != 0 {
        Some(Kind::Quic)
    } else if (0x20..=0x2f).contains(&first) {
        Some(Kind::Ours)
    } else {
        None
    }
}

/// Why a datagram of ours did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PacketError {
    /// Shorter than its fixed part.
    #[error("truncated packet")]
    Truncated,
    /// A type byte we do not know.
    #[error("unknown packet type {0:#04x}")]
    UnknownType(u8),
    /// An address family byte that is neither 4 nor 6.
    #[error("bad address family")]
    BadAddress,
    /// A public key that is not a curve point.
    #[error("bad public key")]
    BadKey,
}

/// A relay registration: "deliver packets for me to `observed`", signed by the peer's key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Register {
    /// The registering peer's key (its id is the key's hash).
    pub key: PublicKey,
    /// The peer's address as the relay sees it (learned by STUN from the relay itself), so that
    /// a registration replayed from elsewhere is refused. (Replayed at another relay from the
    /// same address it registers the peer where it really is, so it names no relay.)
    pub observed: SocketAddr,
    /// When it was signed, Unix milliseconds.
    pub unix_ms: u64,
    /// The signature over the above.
    pub signature: Signature,
}

/// The signing domain of registrations.
const REGISTER_DOMAIN: &[u8] = b"selfcast/relay-register/v1";

impl Register {
    /// Signs a registration of `key`'s peer, seen by the relay at `observed`.
    pub fn sign(key: &Keypair, observed: SocketAddr, unix_ms: u64) -> Self {
        let signature = key.sign(&Self::message(observed, unix_ms));
        Self {
            key: key.public(),
            observed,
            unix_ms,
            signature,
        }
    }

    /// Whether the signature holds.
    pub fn verify(&self) -> bool {
        self.key
            .verify(&Self::message(self.observed, self.unix_ms), &self.signature)
    }

    fn message(observed: SocketAddr, unix_ms: u64) -> Vec<u8> {
        let mut m = REGISTER_DOMAIN.to_vec();
        put_addr(&mut m, observed);
        m.extend_from_slice(&unix_ms.to_be_bytes());
        m
    }
}

/// One of our datagrams, borrowing its payload from the buffer it was parsed from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    /// Client → relay: register (or refresh) at the relay.
    Register(Box<Register>),
    /// Relay → client: the registration holds for this many seconds.
    Registered {
        /// Lifetime of the registration.
        lifetime_s: u16,
    },
    /// Client → relay: forward a QUIC packet to `to`.
    Send {
        /// The destination peer.
        to: PeerId,
        /// The QUIC packet.
        payload: &'a [u8],
    },
    /// Relay → client: a QUIC packet from `from`.
    Deliver {
        /// The source peer, as registered at the relay.
        from: PeerId,
        /// The QUIC packet.
        payload: &'a [u8],
    },
    /// Client → relay: forward a signal to `to`.
    SignalTo {
        /// The destination peer.
        to: PeerId,
        /// The encoded [`super::punch::Signal`].
        payload: &'a [u8],
    },
    /// Relay → client: a signal from `from`.
    SignalFrom {
        /// The source peer, as registered at the relay.
        from: PeerId,
        /// The encoded [`super::punch::Signal`].
        payload: &'a [u8],
    },
    /// Peer → peer, directly: a punch probe (or its acknowledgement).
    Probe {
        /// The punch session it belongs to.
        session: u64,
        /// Who sends it.
        from: PeerId,
        /// True for an acknowledgement of a probe.
        ack: bool,
    },
    /// Open peer → open peer: "I can answer your clients' CHANGE-REQUESTs from my address"
    /// (`accept` when answering such an offer).
    Partner {
        /// True when accepting an offer.
        accept: bool,
    },
    /// STUN server → its partner: answer `request` (a Binding request) to `client` from your
    /// address, which is the RFC 5780 "other address" of the server.
    Changed {
        /// Where the client's request came from.
        client: SocketAddr,
        /// The client's STUN request.
        request: &'a [u8],
    },
}

const REGISTER: u8 = 0x20;
const REGISTERED: u8 = 0x21;
const SEND: u8 = 0x22;
const DELIVER: u8 = 0x23;
const SIGNAL_TO: u8 = 0x24;
const SIGNAL_FROM: u8 = 0x25;
const PROBE: u8 = 0x26;
const PARTNER: u8 = 0x27;
const CHANGED: u8 = 0x28;

/// Bytes a relay adds in front of a QUIC packet.
pub const RELAY_OVERHEAD: usize = 33;

impl<'a> Packet<'a> {
    /// Parses one of our datagrams.
    pub fn parse(buf: &'a [u8]) -> Result<Self, PacketError> {
        let (&ty, body) = buf.split_first().ok_or(PacketError::Truncated)?;
        let mut r = Reader(body);
        let packet = match ty {
            REGISTER => {
                let key = r.array::<32>()?;
                let key = PublicKey::from_bytes(&key).ok_or(PacketError::BadKey)?;
                let observed = r.addr()?;
                let unix_ms = u64::from_be_bytes(r.array()?);
                let signature = Signature(r.array()?);
                Packet::Register(Box::new(Register {
                    key,
                    observed,
                    unix_ms,
                    signature,
                }))
            }
            REGISTERED => Packet::Registered {
                lifetime_s: u16::from_be_bytes(r.array()?),
            },
            SEND => Packet::Send {
                to: PeerId(r.array()?),
                payload: r.rest(),
            },
            DELIVER => Packet::Deliver {
                from: PeerId(r.array()?),
                payload: r.rest(),
            },
            SIGNAL_TO => Packet::SignalTo {
                to: PeerId(r.array()?),
                payload: r.rest(),
            },
            SIGNAL_FROM => Packet::SignalFrom {
                from: PeerId(r.array()?),
                payload: r.rest(),
            },
            PROBE => Packet::Probe {
                session: u64::from_be_bytes(r.array()?),
                from: PeerId(r.array()?),
                ack: r.array::<1>()?[0] != 0,
            },
            PARTNER => Packet::Partner {
                accept: r.array::<1>()?[0] != 0,
            },
            CHANGED => Packet::Changed {
                client: r.addr()?,
                request: r.rest(),
            },
            other => return Err(PacketError::UnknownType(other)),
        };
        Ok(packet)
    }

    /// Appends the packet's encoding to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Packet::Register(reg) => {
                out.push(REGISTER);
                out.extend_from_slice(&reg.key.to_bytes());
                put_addr(out, reg.observed);
                out.extend_from_slice(&reg.unix_ms.to_be_bytes());
                out.extend_from_slice(&reg.signature.0);
            }
            Packet::Registered { lifetime_s } => {
                out.push(REGISTERED);
                out.extend_from_slice(&lifetime_s.to_be_bytes());
            }
            Packet::Send { to, payload } => tagged(out, SEND, to, payload),
            Packet::Deliver { from, payload } => tagged(out, DELIVER, from, payload),
            Packet::SignalTo { to, payload } => tagged(out, SIGNAL_TO, to, payload),
            Packet::SignalFrom { from, payload } => tagged(out, SIGNAL_FROM, from, payload),
            Packet::Probe { session, from, ack } => {
                out.push(PROBE);
                out.extend_from_slice(&session.to_be_bytes());
                out.extend_from_slice(&from.0);
                out.push(u8::from(*ack));
            }
            Packet::Partner { accept } => {
                out.push(PARTNER);
                out.push(u8::from(*accept));
            }
            Packet::Changed { client, request } => {
                out.push(CHANGED);
                put_addr(out, *client);
                out.extend_from_slice(request);
            }
        }
    }

    /// The packet's encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }
}

fn tagged(out: &mut Vec<u8>, ty: u8, peer: &PeerId, payload: &[u8]) {
    out.reserve(RELAY_OVERHEAD + payload.len());
    out.push(ty);
    out.extend_from_slice(&peer.0);
    out.extend_from_slice(payload);
}

fn put_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

/// A cursor over a packet body that fails instead of panicking.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn array<const N: usize>(&mut self) -> Result<[u8; N], PacketError> {
        let (head, rest) = self.0.split_at_checked(N).ok_or(PacketError::Truncated)?;
        self.0 = rest;
        let mut out = [0; N];
        out.copy_from_slice(head);
        Ok(out)
    }

    fn addr(&mut self) -> Result<SocketAddr, PacketError> {
        let ip = match self.array::<1>()?[0] {
            4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>()?)),
            6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>()?)),
            _ => return Err(PacketError::BadAddress),
        };
        Ok(SocketAddr::new(ip, u16::from_be_bytes(self.array()?)))
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demultiplexing_by_first_byte() {
        let mut stun = vec![0x00, 0x01, 0x00, 0x00];
        stun.extend_from_slice(&MAGIC_COOKIE);
        stun.extend_from_slice(&[0; 12]);
        assert_eq!(kind(&stun), Some(Kind::Stun));
        assert_eq!(kind(&stun[..10]), None, "too short for STUN");
        assert_eq!(kind(&[0xc3, 0, 0, 0, 1]), Some(Kind::Quic), "long header");
        assert_eq!(kind(&[0x41, 7]), Some(Kind::Quic), "short header");
        assert_eq!(kind(&[0x26, 1]), Some(Kind::Ours));
        assert_eq!(kind(&[0x80]), None, "QUIC with the fixed bit clear");
        assert_eq!(kind(&[]), None);
    }

    #[test]
    fn packets_round_trip() {
        let key = Keypair::from_seed([3; 32]);
        let addr: SocketAddr = "203.0.113.9:1234".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:99".parse().unwrap();
        let reg = Register::sign(&key, addr, 77);
        assert!(reg.verify());
        let packets = [
            Packet::Register(Box::new(reg)),
            Packet::Registered { lifetime_s: 60 },
            Packet::Send {
                to: PeerId([2; 32]),
                payload: b"\x40quic",
            },
            Packet::Deliver {
                from: PeerId([2; 32]),
                payload: b"",
            },
            Packet::SignalTo {
                to: PeerId([4; 32]),
                payload: b"sig",
            },
            Packet::SignalFrom {
                from: PeerId([4; 32]),
                payload: b"sig",
            },
            Packet::Probe {
                session: 42,
                from: PeerId([5; 32]),
                ack: true,
            },
            Packet::Partner { accept: false },
            Packet::Changed {
                client: v6,
                request: b"stun",
            },
        ];
        for p in packets {
            let bytes = p.encode();
            assert_eq!(kind(&bytes), Some(Kind::Ours));
            assert_eq!(Packet::parse(&bytes), Ok(p));
        }
    }

    #[test]
    fn malformed_packets_are_errors_not_panics() {
        let key = Keypair::from_seed([3; 32]);
        let reg = Packet::Register(Box::new(Register::sign(
            &key,
            "10.0.0.1:5".parse().unwrap(),
            1,
        )))
        .encode();
        for n in 0..reg.len() {
            assert!(Packet::parse(&reg[..n]).is_err(), "prefix of {n} bytes");
        }
        assert_eq!(Packet::parse(&[0x2f]), Err(PacketError::UnknownType(0x2f)));
        assert_eq!(
            Packet::parse(&[CHANGED, 5, 1, 2]),
            Err(PacketError::BadAddress)
        );
        // A registration whose fields were altered no longer verifies.
        let mut bad = reg.clone();
        let last = bad.len() - 70;
        bad[last] ^= 1;
        match Packet::parse(&bad) {
            Ok(Packet::Register(r)) => assert!(!r.verify()),
            other => panic!("{other:?}"),
        }
        // Random bytes never panic.
        let mut x = 0x9e3779b97f4a7c15u64;
        for _ in 0..2000 {
            let len = (x % 80) as usize;
            let mut buf = Vec::with_capacity(len);
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf.push(x as u8);
            }
            if let Some(first) = buf.first_mut() {
                *first = 0x20 | (*first & 0x0f);
            }
            let _ = Packet::parse(&buf);
        }
    }
}
