//! The real segment exchange (`peer::exchange::Exchange`) as a simulated host's core.
//!
//! [`ExchangeCore`] translates between the exchange's world (peer ids, socket addresses,
//! frames) and the engine's (host ids, messages with sizes), exactly as the QUIC driver in
//! `peer::node` does: control frames on the ordered control connection, each segment as bulk
//! data, and a segment stream accepted only when the exchange expects it from that peer and no
//! longer than the broadcaster signed.

use std::cell::RefCell;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::rc::Rc;
use std::sync::Mutex;
use std::time::Instant;

use bytes::Bytes;
use peer::exchange::{self, Exchange};
use peer::identity::PeerId;
use peer::segment::{
    ChannelRecord, IntegrityError, SegmentId, SegmentMeta, SignedSegment, Strict, Verifier,
};
use peer::wire::{Frame, Part, PeerAddr};
use rustc_hash::FxHashMap as HashMap;

use crate::engine::{Core, Input, Output};
use crate::net::HostId;

/// Bytes of a segment stream's header (length prefix, version, segment id).
const SEGMENT_HEADER_BYTES: usize = 8;
/// Bytes of an HTTP response's headers.
const HTTP_HEADER_BYTES: u64 = 300;

/// The simulated address of a host: 10.x.y.z:4433 encodes its index.
pub fn host_addr(host: HostId) -> SocketAddr {
    let [_, a, b, c] = host.0.to_be_bytes();
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, a, b, c), 4433))
}

/// The host behind a simulated address.
pub fn addr_host(addr: SocketAddr) -> Option<HostId> {
    match addr {
        SocketAddr::V4(v4) => {
            let [ten, a, b, c] = v4.ip().octets();
            (ten == 10).then(|| HostId(u32::from_be_bytes([0, a, b, c])))
        }
        SocketAddr::V6(_) => None,
    }
}

/// Which peer id runs on which host, both ways, and the HTTP origin if there is one; shared
/// by every core of a run.
#[derive(Debug, Default)]
pub struct Directory {
    hosts: HashMap<PeerId, HostId>,
    /// Indexed by host: looked up for every input a core gets.
    peers: Vec<Option<PeerId>>,
    /// The origin's host and what it holds (every segment the broadcaster published).
    origin: Option<(HostId, HashMap<SegmentId, Bytes>)>,
}

impl Directory {
    /// Records that `peer` runs on `host`.
    pub fn insert(&mut self, peer: PeerId, host: HostId) {
        self.hosts.insert(peer, host);
        let i = host.0 as usize;
        if self.peers.len() <= i {
            self.peers.resize(i + 1, None);
        }
        self.peers[i] = Some(peer);
    }

    /// The host of `peer`.
    pub fn host(&self, peer: &PeerId) -> Option<HostId> {
        self.hosts.get(peer).copied()
    }

    /// The peer on `host`.
    pub fn peer(&self, host: HostId) -> Option<PeerId> {
        self.peers.get(host.0 as usize).copied().flatten()
    }

    /// An HTTP origin runs on `host`.
    pub fn set_origin(&mut self, host: HostId) {
        self.origin = Some((host, HashMap::default()));
    }

    /// The origin gets a copy of what the broadcaster published.
    pub fn mirror(&mut self, id: SegmentId, bytes: &Bytes) {
        if let Some((_, store)) = &mut self.origin {
            store.insert(id, bytes.clone());
        }
    }
}

/// The tag of a segment's bulk send: the segment's number, with a part's index and count less
/// one in the top byte (zero there: the whole segment; the init segment is never cut).
fn tag_of(id: SegmentId, part: Part) -> u64 {
    match id {
        SegmentId::Init => u64::MAX,
        SegmentId::Media(n) if part.is_whole() => n,
        SegmentId::Media(n) => {
            n & SEQ_MASK | u64::from(part.of - 1) << 60 | u64::from(part.index & 0xf) << 56
        }
    }
}

/// The segment and part a bulk send's tag names.
fn segment_of(tag: u64) -> (SegmentId, Part) {
    if tag == u64::MAX {
        return (SegmentId::Init, Part::WHOLE);
    }
    match (tag >> 60) as u8 {
        0 => (SegmentId::Media(tag), Part::WHOLE),
        less_one => (
            SegmentId::Media(tag & SEQ_MASK),
            Part {
                index: (tag >> 56) as u8 & 0xf,
                of: less_one + 1,
            },
        ),
    }
}

/// The bits of a tag that carry the segment's number.
const SEQ_MASK: u64 = (1 << 56) - 1;
const _: () = assert!(
    peer::wire::MAX_PARTS <= 16,
    "a part index and count fit four bits each"
);

/// What travels between simulated exchanges.
#[derive(Debug, Clone)]
pub enum Wire {
    /// A control frame.
    Frame(Frame),
    /// A segment stream's content.
    Segment {
        /// The segment.
        id: SegmentId,
        /// The part of it.
        part: Part,
        /// Its bytes.
        bytes: Bytes,
    },
    /// The HTTP origin's answer for a segment: its bytes, or nothing (a 404).
    Origin {
        /// The segment.
        id: SegmentId,
        /// Its bytes, if the origin has it.
        bytes: Option<Bytes>,
    },
}

/// An exchange hosted by the engine.
pub struct ExchangeCore {
    exchange: Exchange,
    directory: Rc<RefCell<Directory>>,
}

impl ExchangeCore {
    /// Wraps an exchange; `directory` maps peer ids to hosts.
    pub fn new(exchange: Exchange, directory: Rc<RefCell<Directory>>) -> Self {
        Self {
            exchange,
            directory,
        }
    }

    /// The exchange, e.g. to publish at the source.
    pub fn exchange(&mut self) -> &mut Exchange {
        &mut self.exchange
    }

    /// The exchange, read-only.
    pub fn exchange_ref(&self) -> &Exchange {
        &self.exchange
    }
}

/// What a hosted exchange tells the scenario.
#[derive(Debug)]
pub enum HostEvent {
    /// An event of the exchange (for the metrics).
    Exchange(exchange::Event),
    /// The exchange asks the overlay's holder index who holds media segment `seq`
    /// ([`exchange::Output::LookupHolders`]).
    LookupHolders(u64),
}

impl Core for ExchangeCore {
    type Msg = Wire;
    type Event = HostEvent;

    fn handle(&mut self, now: Instant, input: Input<Wire>) {
        let peer_of = |h: HostId| self.directory.borrow().peer(h);
        let input = match input {
            Input::Timeout => {
                self.exchange.handle_timeout(now);
                return;
            }
            Input::Connected(h) => {
                let Some(peer) = peer_of(h) else { return };
                exchange::Input::Connected { peer }
            }
            Input::Disconnected(h) => {
                let Some(peer) = peer_of(h) else { return };
                exchange::Input::Disconnected { peer }
            }
            Input::Sent { to, tag } => {
                let Some(peer) = peer_of(to) else { return };
                exchange::Input::SegmentSent {
                    peer,
                    id: segment_of(tag).0,
                }
            }
            Input::Arriving { from, tag } => {
                let Some(peer) = peer_of(from) else { return };
                let (id, part) = segment_of(tag);
                // As the real driver does: a stream the exchange does not expect is stopped at
                // its header, and the exchange never hears of it; only whole segments are
                // forwarded as they arrive.
                if !part.is_whole() || self.exchange.expected_len(&peer, id, part).is_none() {
                    return;
                }
                exchange::Input::SegmentArriving { peer, id }
            }
            Input::Failed { from, tag } => {
                let Some(peer) = peer_of(from) else { return };
                exchange::Input::SegmentFailed {
                    peer,
                    id: segment_of(tag).0,
                }
            }
            Input::Message {
                from,
                msg: Wire::Frame(frame),
            } => {
                let Some(peer) = peer_of(from) else { return };
                exchange::Input::Frame { peer, frame }
            }
            Input::Message {
                msg: Wire::Origin { id, bytes },
                ..
            } => match (bytes, self.exchange.origin_len(id)) {
                (Some(bytes), Some(limit)) if bytes.len() <= limit => {
                    exchange::Input::OriginSegment { id, bytes }
                }
                _ => exchange::Input::OriginFailed { id },
            },
            Input::Message {
                from,
                msg: Wire::Segment { id, part, bytes },
            } => {
                let Some(peer) = peer_of(from) else { return };
                match self.exchange.expected_len(&peer, id, part) {
                    Some(limit) if bytes.len() <= limit => exchange::Input::Segment {
                        peer,
                        id,
                        part,
                        bytes,
                    },
                    // The real driver stops such a stream; the exchange never hears of it.
                    _ => return,
                }
            }
        };
        self.exchange.handle_input(now, input);
    }

    fn poll(&mut self) -> Option<Output<Wire, HostEvent>> {
        loop {
            let out = self.exchange.poll_output()?;
            let host_of = |p: &PeerId| self.directory.borrow().host(p);
            let mapped = match out {
                exchange::Output::Send { to, frame } => {
                    let Some(to) = host_of(&to) else { continue };
                    let kind = frame.kind();
                    let bytes = frame.encoded_len() as u64;
                    Output::Send {
                        to,
                        msg: Wire::Frame(frame),
                        bytes,
                        bulk: false,
                        kind,
                        tag: 0,
                    }
                }
                exchange::Output::SendSegment {
                    to,
                    id,
                    part,
                    bytes,
                    pace_kbps,
                } => {
                    let Some(to) = host_of(&to) else { continue };
                    // The stream header is a handful of bytes; its exact size does not matter at this scale.
                    let size = (bytes.len() + SEGMENT_HEADER_BYTES) as u64;
                    let msg = Wire::Segment { id, part, bytes };
                    let tag = tag_of(id, part);
                    match pace_kbps {
                        Some(kbps) => Output::SendPaced {
                            to,
                            msg,
                            bytes: size,
                            max_bps: f64::from(kbps) * 1000.0,
                            kind: "segment",
                            tag,
                        },
                        None => Output::Send {
                            to,
                            msg,
                            bytes: size,
                            bulk: true,
                            kind: "segment",
                            tag,
                        },
                    }
                }
                exchange::Output::ForwardSegment { to, id, from } => {
                    let (Some(to), Some(from)) = (host_of(&to), host_of(&from)) else {
                        continue;
                    };
                    Output::Forward {
                        to,
                        from,
                        tag: tag_of(id, Part::WHOLE),
                        kind: "segment",
                    }
                }
                exchange::Output::EndForwards { from, id, verified } => {
                    let Some(from) = host_of(&from) else { continue };
                    Output::EndRelay {
                        from,
                        tag: tag_of(id, Part::WHOLE),
                        ok: verified,
                    }
                }
                exchange::Output::Dial(PeerAddr { addr, .. }) => match addr_host(addr) {
                    Some(h) => Output::Dial(h),
                    None => continue,
                },
                exchange::Output::Close { peer, .. } => {
                    let Some(h) = host_of(&peer) else { continue };
                    Output::Close(h)
                }
                exchange::Output::FetchOrigin { id } => {
                    let directory = self.directory.borrow();
                    let Some((server, store)) = &directory.origin else {
                        continue;
                    };
                    let bytes = store.get(&id).cloned();
                    // An HTTP response: headers of a few hundred bytes, then the body.
                    let size = bytes.as_ref().map_or(0, Bytes::len) as u64 + HTTP_HEADER_BYTES;
                    Output::Fetch {
                        server: *server,
                        msg: Wire::Origin { id, bytes },
                        bytes: size,
                        kind: "origin",
                        tag: tag_of(id, Part::WHOLE),
                    }
                }
                exchange::Output::LookupHolders { seq } => {
                    Output::Event(HostEvent::LookupHolders(seq))
                }
                exchange::Output::Event(e) => Output::Event(HostEvent::Exchange(e)),
            };
            return Some(mapped);
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.exchange.poll_timeout()
    }
}

/// A checked payload: its allocation, its length and the hash it was checked against.
type PayloadKey = (usize, usize, [u8; 32]);
/// The checked buffer (kept alive so its address is not reused while cached) and the verdict.
type CheckedPayload = (Bytes, Result<(), IntegrityError>);

/// A verifier for simulations: the real checks, each distinct input checked once.
///
/// Ten thousand simulated viewers verify the same statement and hash the same segment; the
/// answer is the same every time, so it is computed once and remembered. A forged statement or
/// a tampered copy is a different input and is checked for real. Payloads are remembered by
/// allocation (the cache keeps each checked buffer alive, so an address is never reused for
/// other bytes while it is cached); a buffer that only the cache still holds is dropped from it
/// when the map fills up, as nobody can hand it in again.
///
/// A segment put together from parts is a fresh copy of one the broadcaster published; once it
/// checked out, the host keeps the first such buffer of that segment instead ([`Verifier::keep`]),
/// so that ten thousand viewers do not each hold a copy of their first segment for its window
/// (half the heap at 10,000 peers, which this machine pays for page by page when first touched).
#[derive(Debug, Default)]
pub struct MemoVerifier {
    statements: Mutex<HashMap<[u8; 64], Result<(), IntegrityError>>>,
    payloads: Mutex<HashMap<PayloadKey, CheckedPayload>>,
    /// One checked buffer per segment hash, while some host holds it.
    shared: Mutex<HashMap<[u8; 32], Bytes>>,
}

impl Verifier for MemoVerifier {
    fn verify_statement(
        &self,
        channel: &ChannelRecord,
        statement: &SignedSegment,
    ) -> Result<(), IntegrityError> {
        let Ok(mut memo) = self.statements.lock() else {
            return Strict.verify_statement(channel, statement);
        };
        memo.entry(statement.signature.0)
            .or_insert_with(|| Strict.verify_statement(channel, statement))
            .clone()
    }

    fn check_payload(&self, meta: &SegmentMeta, bytes: &Bytes) -> Result<(), IntegrityError> {
        let Ok(mut memo) = self.payloads.lock() else {
            return Strict.check_payload(meta, bytes);
        };
        let key = (bytes.as_ptr() as usize, bytes.len(), meta.hash);
        if let Some((_, verdict)) = memo.get(&key) {
            return verdict.clone();
        }
        // A buffer only the cache still holds will not be checked again: dropping those now
        // and then keeps the cache (and memory) to the segments hosts still keep, not every
        // copy ever put together from parts.
        sweep_when_full(&mut memo, |(kept, _)| kept);
        let verdict = Strict.check_payload(meta, bytes);
        memo.insert(key, (bytes.clone(), verdict.clone()));
        verdict
    }

    fn keep(&self, meta: &SegmentMeta, bytes: Bytes) -> Bytes {
        let Ok(mut shared) = self.shared.lock() else {
            return bytes;
        };
        if let Some(kept) = shared.get(&meta.hash).filter(|k| k.len() == bytes.len()) {
            let kept = kept.clone();
            drop(shared);
            // The copy will not be handed in again: forgetting it lets it go now.
            if let Ok(mut memo) = self.payloads.lock() {
                memo.remove(&(bytes.as_ptr() as usize, bytes.len(), meta.hash));
            }
            return kept;
        }
        sweep_when_full(&mut shared, |kept| kept);
        shared.insert(meta.hash, bytes.clone());
        bytes
    }
}

/// When `map` is full, drops the buffers only the map still holds (nobody can hand them in
/// again), and makes room to grow if most are still in use, so that sweeps stay rare.
fn sweep_when_full<K: Eq + std::hash::Hash, V>(
    map: &mut HashMap<K, V>,
    buffer: impl Fn(&V) -> &Bytes,
) {
    if map.len() < map.capacity() {
        return;
    }
    map.retain(|_, v| !buffer(v).is_unique());
    let live = map.len();
    map.reserve(live);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-second media segment `seq` of channel 7 with these bytes, described.
    fn meta_of(seq: u64, bytes: &Bytes) -> SegmentMeta {
        let channel = peer::identity::ChannelId([7; peer::identity::ChannelId::LEN]);
        let second = std::time::Duration::from_secs(1);
        SegmentMeta::describe(channel, 1, SegmentId::Media(seq), second, 0, bytes)
            .expect("a small segment")
    }

    #[test]
    fn the_payload_memo_keeps_buffers_hosts_hold_and_lets_go_of_the_rest() {
        let memo = MemoVerifier::default();
        let held = Bytes::from(vec![1u8; 1000]);
        let meta = meta_of(0, &held);
        assert!(memo.check_payload(&meta, &held).is_ok());
        // A thousand copies put together and dropped, as parts' assemblies are.
        for _ in 0..1000 {
            let copy = Bytes::from(vec![1u8; 1000]);
            assert!(memo.check_payload(&meta, &copy).is_ok());
        }
        let cached = memo.payloads.lock().expect("not poisoned").len();
        assert!(cached < 100, "{cached} buffers cached, most held by nobody");
        let key = (held.as_ptr() as usize, held.len(), meta.hash);
        assert!(memo
            .payloads
            .lock()
            .expect("not poisoned")
            .contains_key(&key));
        // A tampered copy is still checked for real.
        let tampered = Bytes::from(vec![2u8; 1000]);
        assert!(memo.check_payload(&meta, &tampered).is_err());
    }

    #[test]
    fn hosts_keep_one_buffer_of_a_segment_they_put_together() {
        let memo = MemoVerifier::default();
        let first = Bytes::from(vec![1u8; 1000]);
        let meta = meta_of(0, &first);
        assert!(memo.check_payload(&meta, &first).is_ok());
        let kept = memo.keep(&meta, first.clone());
        assert_eq!(kept.as_ptr(), first.as_ptr());
        // A later copy of the same segment gives way to the first, and is forgotten.
        let copy = Bytes::from(vec![1u8; 1000]);
        assert!(memo.check_payload(&meta, &copy).is_ok());
        let copy_key = (copy.as_ptr() as usize, copy.len(), meta.hash);
        let kept = memo.keep(&meta, copy);
        assert_eq!(kept.as_ptr(), first.as_ptr());
        assert!(!memo
            .payloads
            .lock()
            .expect("not poisoned")
            .contains_key(&copy_key));
        // Another segment is its own.
        let other = Bytes::from(vec![3u8; 1000]);
        let other_meta = meta_of(1, &other);
        assert_eq!(
            memo.keep(&other_meta, other.clone()).as_ptr(),
            other.as_ptr()
        );
    }

    #[test]
    fn a_flow_tag_names_its_segment_and_part() {
        let cases = [
            (SegmentId::Init, Part::WHOLE),
            (SegmentId::Media(0), Part::WHOLE),
            (SegmentId::Media(123_456), Part::WHOLE),
            (SegmentId::Media(0), Part { index: 0, of: 8 }),
            (SegmentId::Media(123_456), Part { index: 7, of: 8 }),
            (SegmentId::Media(SEQ_MASK), Part { index: 2, of: 3 }),
        ];
        for (id, part) in cases {
            assert_eq!(segment_of(tag_of(id, part)), (id, part));
        }
    }
}
