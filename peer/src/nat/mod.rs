//! NAT traversal: classification, hole punching and relaying, so that peers behind NATs reach
//! each other directly where the NATs allow it and through a reachable peer where they do not.
//!
//! # Map
//!
//! Pure, sans-IO parts (built with and without the `node` feature; `sim` can use them):
//!
//! - this module: a NAT's behaviour in RFC 4787 terms ([`NatClass`]), the class published in
//!   membership records ([`Connectivity`], the optimizer's type), which pairs can punch
//!   ([`can_punch`]), and how a peer is reached ([`NatRecord`]: in its membership entry, and
//!   under its own key in the overlay's store for peers outside a channel);
//! - [`packet`]: the non-QUIC, non-STUN datagrams that share the QUIC socket (relay
//!   registration and forwarding, signalling, punch probes, STUN partner requests);
//! - [`punch`]: the signalling and punching state machine (`handle_*(now, …)` in,
//!   `poll_output()` / `poll_timeout()` out);
//! - [`relay`]: a relay's forwarding table with its bandwidth bound.
//!
//! The real node (feature `node`):
//!
//! - [`stun`]: STUN Binding requests and answers (stun-rs), RFC 5780's CHANGE-REQUEST and
//!   OTHER-ADDRESS;
//! - [`socket`]: the UDP socket quinn runs on ([`socket::NatSocket`], an `AsyncUdpSocket`): it
//!   tells QUIC from STUN and our own datagrams by their first byte, answers STUN, relays, and
//!   presents relayed QUIC packets to quinn under virtual addresses;
//! - [`driver`]: the tokio task around the cores: classification at start, the relay
//!   registration, and [`driver::Nat::path_to`], which the node calls before it dials a peer.
//!
//! ```text
//!  quinn ⇄ NatSocket ⇄ UDP            STUN answers, relay forwarding: inside the socket
//!              │ events (STUN responses, probes, signals)
//!              ▼
//!        driver::Nat ─ punch::Punch (sans-IO) ─ NatRecords from directory reads or the store
//! ```
//!
//! QUIC and TLS stay end to end on every path: a relay forwards opaque QUIC packets between
//! two registered peers and can neither read nor alter them.

pub mod packet;
pub mod punch;
pub mod relay;

#[cfg(feature = "node")]
pub mod driver;
#[cfg(feature = "node")]
pub mod socket;
#[cfg(feature = "node")]
pub mod stun;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};
pub use tracker_overlay::swarm::Connectivity;
use tracker_overlay::swarm::{Member, Reach};

use crate::identity::PeerId;

/// How a NAT maps a local address to public ones (RFC 4787 §4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mapping {
    /// No NAT: the address the servers see is our own.
    None,
    /// One public address for every destination (endpoint-independent mapping).
    EndpointIndependent,
    /// A public address per destination address or port (address- or
    /// address-and-port-dependent mapping: a "symmetric" NAT).
    Dependent,
    /// Fewer than two servers answered.
    Unknown,
}

/// Which inbound packets a NAT lets through to a mapping (RFC 4787 §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Filtering {
    /// Anyone may send to the mapping (endpoint-independent filtering).
    EndpointIndependent,
    /// Only addresses we sent to may. Peers as STUN servers have one address each, so address-
    /// and address-and-port-dependent filtering are not told apart; we assume the stricter.
    Dependent,
    /// The test could not run (no second server).
    Unknown,
}

/// What classification found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatClass {
    /// Mapping behaviour.
    pub mapping: Mapping,
    /// Filtering behaviour.
    pub filtering: Filtering,
}

impl NatClass {
    /// A peer with a public address.
    pub const OPEN: Self = Self {
        mapping: Mapping::None,
        filtering: Filtering::EndpointIndependent,
    };

    /// The class published in membership records. An unknown mapping is taken as
    /// endpoint-independent with dependent filtering: punching is tried, and the relay is the
    /// fallback when it fails.
    pub fn connectivity(&self) -> Connectivity {
        match (self.mapping, self.filtering) {
            (Mapping::None, _) => Connectivity::Open,
            (Mapping::Dependent, _) => Connectivity::Symmetric,
            (_, Filtering::EndpointIndependent) => Connectivity::FullCone,
            _ => Connectivity::PortRestricted,
        }
    }
}

/// Whether two peers of these classes can open a direct path by punching (or plain dialling).
///
/// A side with an endpoint-independent mapping has a predictable address (its reflexive
/// address); a side with a dependent mapping gets a new one toward the other peer, which the
/// other side learns only from the packets it receives. So a direct path needs at least one
/// predictable side, and if the other side is not, the predictable side must accept packets
/// from an address it has not sent to (an open or full-cone peer). The same rule the optimizer
/// plans with ([`Connectivity::direct_possible`]).
pub fn can_punch(a: Connectivity, b: Connectivity) -> bool {
    Connectivity::direct_possible(a, b)
}

/// Whether peers may dial this class without any help (no NAT, or a full cone whose reflexive
/// address accepts anyone).
pub fn dialable(c: Connectivity) -> bool {
    matches!(c, Connectivity::Open | Connectivity::FullCone)
}

/// What a peer publishes so that others can reach it: its class, its candidates and the relay
/// it is registered with; in its membership entry ([`NatRecord::reach`]) and under its own key
/// in the overlay's store ([`record_key`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatRecord {
    /// Its class.
    pub connectivity: Connectivity,
    /// Its reflexive address, as the first STUN server saw it.
    pub reflexive: Option<SocketAddr>,
    /// Its own addresses (useful to peers on the same network).
    pub local: Vec<SocketAddr>,
    /// The address of the relay it keeps registered with, if it is behind a NAT.
    pub relay: Option<SocketAddr>,
}

impl NatRecord {
    /// The most local candidates a record carries.
    pub const MAX_LOCAL: usize = 4;

    /// The addresses to punch toward: reflexive first, then local ones, without repeats.
    pub fn candidates(&self) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = Vec::with_capacity(1 + self.local.len());
        for a in self.reflexive.iter().chain(&self.local) {
            if !out.contains(a) && out.len() < 1 + Self::MAX_LOCAL {
                out.push(*a);
            }
        }
        out
    }

    /// The candidates and relay as a membership entry carries them ([`Member::reach`]).
    pub fn reach(&self) -> Reach {
        Reach {
            reflexive: self.reflexive.into_iter().collect(),
            local: self.local.iter().take(Reach::MAX_ADDRS).copied().collect(),
            relay: self.relay,
        }
    }

    /// The record a membership entry carries: its class, candidates and relay. A member that
    /// published no candidates (a node without traversal) is reached at its address.
    pub fn from_member(m: &Member) -> Self {
        let mut addrs = m.reach.reflexive.iter().chain(&m.reach.local).copied();
        let reflexive = addrs.next().or(Some(m.addr));
        let mut local: Vec<SocketAddr> = Vec::new();
        for a in addrs {
            if Some(a) != reflexive && !local.contains(&a) && local.len() < Self::MAX_LOCAL {
                local.push(a);
            }
        }
        Self {
            connectivity: m.connectivity,
            reflexive,
            local,
            relay: m.reach.relay,
        }
    }

    /// The encoded form stored in the overlay.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain data into a Vec cannot fail.
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Decodes a stored record; `None` if it is malformed.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let record: Self = postcard::from_bytes(bytes).ok()?;
        (record.local.len() <= Self::MAX_LOCAL).then_some(record)
    }
}

/// The store key of a peer's [`NatRecord`].
pub fn record_key(peer: &PeerId) -> Vec<u8> {
    let mut k = b"selfcast/nat/".to_vec();
    k.extend_from_slice(&peer.0);
    k
}

/// The first octet of the addresses relayed peers get: 240.0.0.0/4 is reserved and never
/// routed, so a virtual address cannot be mistaken for a real one.
const VIRTUAL_OCTET: u8 = 240;

/// The virtual address of the `n`th relayed peer (what quinn sees as its remote address).
pub fn virtual_addr(n: u32) -> SocketAddr {
    let [a, b, c, d] = n.to_be_bytes();
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(VIRTUAL_OCTET, b, c, d)),
        1 + u16::from(a),
    )
}

/// Whether `addr` is a relayed peer's virtual address.
pub fn is_virtual(addr: SocketAddr) -> bool {
    matches!(addr.ip(), IpAddr::V4(ip) if ip.octets()[0] & 0xf0 == VIRTUAL_OCTET)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Connectivity::*;

    #[test]
    fn punchable_pairs_follow_the_mapping_and_filtering_rules() {
        let all = [Open, FullCone, PortRestricted, Symmetric];
        let direct: Vec<_> = all
            .iter()
            .flat_map(|a| all.iter().map(move |b| (*a, *b)))
            .filter(|(a, b)| can_punch(*a, *b))
            .collect();
        assert_eq!(direct.len(), 16 - 3, "{direct:?}");
        assert!(!can_punch(Symmetric, Symmetric));
        assert!(!can_punch(Symmetric, PortRestricted));
        assert!(!can_punch(PortRestricted, Symmetric));
        assert!(can_punch(Symmetric, FullCone));
        assert!(can_punch(PortRestricted, PortRestricted));
        for a in all {
            for b in all {
                assert_eq!(can_punch(a, b), can_punch(b, a));
            }
        }
    }

    #[test]
    fn classes_map_to_connectivity() {
        let class = |mapping, filtering| NatClass { mapping, filtering }.connectivity();
        assert_eq!(NatClass::OPEN.connectivity(), Open);
        use Filtering as F;
        use Mapping as M;
        assert_eq!(
            class(M::EndpointIndependent, F::EndpointIndependent),
            FullCone
        );
        assert_eq!(class(M::EndpointIndependent, F::Dependent), PortRestricted);
        assert_eq!(class(M::EndpointIndependent, F::Unknown), PortRestricted);
        assert_eq!(class(M::Dependent, F::EndpointIndependent), Symmetric);
        assert_eq!(class(M::Unknown, F::Unknown), PortRestricted);
    }

    #[test]
    fn virtual_addresses_are_distinct_and_recognised() {
        let mut seen = std::collections::HashSet::new();
        for n in (0..5000).chain([u32::MAX - 1, u32::MAX]) {
            let a = virtual_addr(n);
            assert!(is_virtual(a), "{a}");
            assert!(seen.insert(a), "{n} repeats {a}");
        }
        assert!(!is_virtual("10.0.0.1:4433".parse().unwrap()));
        assert!(!is_virtual("[::1]:4433".parse().unwrap()));
    }

    #[test]
    fn records_round_trip_and_bound_their_candidates() {
        let r = NatRecord {
            connectivity: PortRestricted,
            reflexive: Some("203.0.113.7:4433".parse().unwrap()),
            local: vec![
                "10.0.0.2:4433".parse().unwrap(),
                "203.0.113.7:4433".parse().unwrap(),
            ],
            relay: Some("203.0.113.1:4433".parse().unwrap()),
        };
        assert_eq!(NatRecord::decode(&r.encode()), Some(r.clone()));
        assert_eq!(
            r.candidates().len(),
            2,
            "the reflexive address is not repeated"
        );
        assert_eq!(NatRecord::decode(&[0xff, 0xff]), None);
    }

    #[test]
    fn a_membership_entry_carries_the_whole_record() {
        let r = NatRecord {
            connectivity: Symmetric,
            reflexive: Some("203.0.113.7:40001".parse().unwrap()),
            local: vec!["10.0.0.2:4433".parse().unwrap()],
            relay: Some("203.0.113.1:4433".parse().unwrap()),
        };
        let member = Member {
            peer: [1; 32],
            addr: "203.0.113.7:40001".parse().unwrap(),
            connectivity: r.connectivity,
            reach: r.reach(),
            upload_kbps: 0,
            expires_unix_s: 1,
        };
        assert_eq!(NatRecord::from_member(&member), r);
        let bare = Member {
            reach: Reach::default(),
            connectivity: Open,
            ..member
        };
        let record = NatRecord::from_member(&bare);
        assert_eq!(
            record.candidates(),
            vec![bare.addr],
            "dialled at its address"
        );
        assert_eq!(record.relay, None);
    }
}
