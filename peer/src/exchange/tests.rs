//! The exchange driven without sockets: a harness that routes outputs between exchanges in
//! virtual time, in the style of quinn-proto's `Pair`.

use std::collections::HashMap;

use super::*;
use crate::segment::ChannelRecord;

const SEGMENT: Duration = Duration::from_secs(1);

/// Tampering applied to segment payloads sent by one peer.
type Tamper = Box<dyn FnMut(SegmentId, Bytes) -> Option<Bytes>>;

struct Harness {
    now: Instant,
    key: Keypair,
    nodes: HashMap<PeerId, Exchange>,
    addrs: HashMap<SocketAddr, PeerId>,
    links: HashSet<(PeerId, PeerId)>,
    events: Vec<(PeerId, Event)>,
    tamper: HashMap<PeerId, Tamper>,
    /// Frames a peer sends are dropped (to simulate a peer that stopped answering).
    mute: HashSet<PeerId>,
    /// Forwards under way: (forwarder, who sends it the segment, segment) → receivers.
    forwards: HashMap<(PeerId, PeerId, SegmentId), Vec<PeerId>>,
    /// What the HTTP origin answers instead of the broadcaster's bytes (a broken origin).
    origin_bytes: Option<Bytes>,
    /// Fetches from the origin so far.
    origin_fetches: usize,
    /// Control frames delivered: sender, receiver, frame.
    frames: Vec<(PeerId, PeerId, Frame)>,
    next_seq: u64,
}

impl Harness {
    fn new(kind: StreamKind) -> (Self, PeerId) {
        let now = Instant::now();
        let key = Keypair::from_seed([42; 32]);
        let record = ChannelRecord {
            broadcaster: key.public(),
            name: "harness".into(),
            kind,
            segment_target_ms: 1000,
            started_unix_ms: 0,
        }
        .sign(&key);
        let source_id = key.peer_id();
        let addr: SocketAddr = "10.0.0.1:1".parse().unwrap();
        // The harness's segments are about a kilobyte; the source's upload is set to carry
        // one stream and a half of them, so that it feeds one viewer and the others get the
        // stream from viewers.
        let source_config = ExchangeConfig {
            upload_guess_bps: 12_000.0,
            source_min_children: 1,
            ..config()
        };
        let source = Exchange::source(now, source_config, key.clone(), record, Some(addr));
        let mut h = Self {
            now,
            key,
            nodes: HashMap::default(),
            addrs: HashMap::default(),
            links: HashSet::default(),
            events: Vec::new(),
            tamper: HashMap::default(),
            mute: HashSet::default(),
            forwards: HashMap::default(),
            origin_bytes: None,
            origin_fetches: 0,
            frames: Vec::new(),
            next_seq: 0,
        };
        h.nodes.insert(source_id, source);
        h.addrs.insert(addr, source_id);
        (h, source_id)
    }

    fn channel(&self) -> ChannelId {
        self.key.public().channel_id()
    }

    fn add_viewer(&mut self, n: u8, bootstrap: PeerId) -> PeerId {
        self.add_hinted_viewer(n, bootstrap, None)
    }

    /// A viewer that holds `hint` from the start.
    fn add_hinted_viewer(&mut self, n: u8, bootstrap: PeerId, hint: Option<Hint>) -> PeerId {
        let id = Keypair::from_seed([n; 32]).peer_id();
        let addr: SocketAddr = format!("10.0.1.{n}:1").parse().unwrap();
        let mut viewer = Exchange::viewer(self.now, config(), id, self.channel(), Some(addr));
        if let Some(hint) = hint {
            viewer.apply_hint(self.now, hint);
        }
        let boot_addr = *self.addrs.iter().find(|(_, p)| **p == bootstrap).unwrap().0;
        viewer.add_candidates(
            self.now,
            [PeerAddr {
                id: bootstrap,
                addr: boot_addr,
            }],
        );
        self.nodes.insert(id, viewer);
        self.addrs.insert(addr, id);
        self.run();
        id
    }

    fn publish(&mut self, source: PeerId, bytes: &[u8]) {
        let id = if self.next_seq == 0 && !self.nodes[&source].store.contains_key(&SegmentId::Init)
        {
            SegmentId::Init
        } else {
            let id = SegmentId::Media(self.next_seq);
            self.next_seq += 1;
            id
        };
        let duration = if id == SegmentId::Init {
            Duration::ZERO
        } else {
            SEGMENT
        };
        let now = self.now;
        let node = self.nodes.get_mut(&source).unwrap();
        node.publish(now, id, duration, 0, Bytes::copy_from_slice(bytes), false)
            .unwrap();
        self.run();
    }

    /// Routes outputs until every exchange is quiet.
    fn run(&mut self) {
        for _ in 0..10_000 {
            let mut work = Vec::new();
            for (id, node) in self.nodes.iter_mut() {
                while let Some(out) = node.poll_output() {
                    work.push((*id, out));
                }
            }
            if work.is_empty() {
                return;
            }
            for (from, out) in work {
                self.carry_out(from, out);
            }
        }
        panic!("the exchanges did not quiesce");
    }

    fn carry_out(&mut self, from: PeerId, out: Output) {
        let now = self.now;
        match out {
            Output::Send { to, frame } => {
                if self.linked(from, to) && !self.mute.contains(&from) {
                    self.frames.push((from, to, frame.clone()));
                    let peer = from;
                    self.nodes
                        .get_mut(&to)
                        .unwrap()
                        .handle_input(now, Input::Frame { peer, frame });
                }
            }
            Output::SendSegment {
                to,
                id,
                part,
                bytes,
                ..
            } => {
                if !self.linked(from, to) || self.mute.contains(&from) {
                    return;
                }
                let bytes = match self.tamper.get_mut(&from) {
                    Some(tamper) => match tamper(id, bytes) {
                        Some(b) => b,
                        None => return,
                    },
                    None => bytes,
                };
                self.deliver(from, to, id, part, bytes);
            }
            Output::ForwardSegment {
                to,
                id,
                from: upstream,
            } => {
                self.forwards
                    .entry((from, upstream, id))
                    .or_default()
                    .push(to);
            }
            Output::EndForwards {
                from: upstream,
                id,
                verified,
            } => {
                for to in self
                    .forwards
                    .remove(&(from, upstream, id))
                    .unwrap_or_default()
                {
                    let bytes = self.nodes[&from].segment(id).cloned();
                    let delivered = verified && self.linked(from, to) && !self.mute.contains(&from);
                    match bytes.filter(|_| delivered) {
                        Some(bytes) => self.deliver(from, to, id, Part::WHOLE, bytes),
                        None => {
                            // Reset: the sender's slot frees, the receiver sees the stream fail.
                            let sender = self.nodes.get_mut(&from).unwrap();
                            sender.handle_input(now, Input::SegmentSent { peer: to, id });
                            if let Some(receiver) = self.nodes.get_mut(&to) {
                                receiver.handle_input(now, Input::SegmentFailed { peer: from, id });
                            }
                        }
                    }
                }
            }
            Output::Dial(target) => {
                let Some(&to) = self.addrs.get(&target.addr) else {
                    return;
                };
                assert_eq!(to, target.id, "dialled an address under the wrong id");
                if self.linked(from, to) {
                    self.nodes
                        .get_mut(&from)
                        .unwrap()
                        .handle_input(now, Input::Connected { peer: to });
                    return;
                }
                self.links.insert((from.min(to), from.max(to)));
                self.nodes
                    .get_mut(&from)
                    .unwrap()
                    .handle_input(now, Input::Connected { peer: to });
                self.nodes
                    .get_mut(&to)
                    .unwrap()
                    .handle_input(now, Input::Connected { peer: from });
            }
            // The harness keeps no holder index: a look-up goes unanswered, as when the index
            // lists nobody (tests that need an answer call `add_holders`).
            Output::LookupHolders { .. } => {}
            Output::FetchOrigin { id } => {
                // The origin mirrors the broadcaster (or serves `origin_bytes` instead).
                let source = self.key.peer_id();
                let bytes = match &self.origin_bytes {
                    Some(b) => Some(b.clone()),
                    None => self.nodes[&source].segment(id).cloned(),
                };
                let node = self.nodes.get_mut(&from).unwrap();
                let input =
                    match bytes.filter(|b| node.origin_len(id).is_some_and(|l| b.len() <= l)) {
                        Some(bytes) => Input::OriginSegment { id, bytes },
                        None => Input::OriginFailed { id },
                    };
                self.origin_fetches += 1;
                node.handle_input(now, input);
            }
            Output::Close { peer, .. } => self.disconnect(from, peer),
            Output::Event(e) => self.events.push((from, e)),
        }
    }

    /// A segment stream from `from` reaches `to` whole: its header first (the receiver may
    /// forward it as it comes), then its end.
    fn deliver(&mut self, from: PeerId, to: PeerId, id: SegmentId, part: Part, bytes: Bytes) {
        let now = self.now;
        // The stream is done (delivered or refused): the sender's slot is free again.
        self.nodes
            .get_mut(&from)
            .unwrap()
            .handle_input(now, Input::SegmentSent { peer: to, id });
        let receiver = self.nodes.get_mut(&to).unwrap();
        let input = match receiver.expected_len(&from, id, part) {
            Some(len) if bytes.len() <= len => {
                if part.is_whole() {
                    receiver.handle_input(now, Input::SegmentArriving { peer: from, id });
                }
                Input::Segment {
                    peer: from,
                    id,
                    part,
                    bytes,
                }
            }
            _ => Input::SegmentFailed { peer: from, id },
        };
        receiver.handle_input(now, input);
    }

    fn disconnect(&mut self, a: PeerId, b: PeerId) {
        if self.links.remove(&(a.min(b), a.max(b))) {
            let now = self.now;
            if let Some(n) = self.nodes.get_mut(&a) {
                n.handle_input(now, Input::Disconnected { peer: b });
            }
            if let Some(n) = self.nodes.get_mut(&b) {
                n.handle_input(now, Input::Disconnected { peer: a });
            }
        }
    }

    fn linked(&self, a: PeerId, b: PeerId) -> bool {
        self.links.contains(&(a.min(b), a.max(b)))
    }

    /// Moves virtual time forward by `by`, firing every timer that falls due on the way.
    fn advance(&mut self, by: Duration) {
        let target = self.now + by;
        for _ in 0..1_000_000 {
            let next = self.nodes.values().filter_map(Exchange::poll_timeout).min();
            let Some(next) = next.filter(|t| *t <= target) else {
                break;
            };
            self.now = self.now.max(next);
            let now = self.now;
            for node in self.nodes.values_mut() {
                if node.poll_timeout().is_some_and(|t| t <= now) {
                    node.handle_timeout(now);
                }
            }
            self.run();
        }
        assert!(
            self.now >= target
                || self
                    .nodes
                    .values()
                    .all(|n| n.poll_timeout().is_none_or(|t| t > target)),
            "a timer keeps firing without moving on"
        );
        self.now = target;
    }

    fn remove(&mut self, peer: PeerId) {
        let linked: Vec<PeerId> = self
            .nodes
            .keys()
            .copied()
            .filter(|p| self.linked(*p, peer))
            .collect();
        for other in linked {
            self.disconnect(peer, other);
        }
        self.nodes.remove(&peer);
        self.addrs.retain(|_, p| *p != peer);
    }

    fn stored(&self, peer: PeerId) -> Vec<SegmentId> {
        self.nodes[&peer].store.keys().collect()
    }

    /// The media segments in `range` that `peer` does not hold.
    fn missing(&self, peer: PeerId, range: std::ops::Range<u64>) -> Vec<u64> {
        range
            .filter(|n| self.nodes[&peer].segment(SegmentId::Media(*n)).is_none())
            .collect()
    }
}

fn config() -> ExchangeConfig {
    ExchangeConfig {
        live_window: 1000,
        ..ExchangeConfig::default()
    }
}

fn payload(n: u8) -> Vec<u8> {
    vec![n; 1000 + n as usize]
}

#[test]
fn viewers_receive_every_segment_verified_and_byte_identical() {
    let (mut h, source) = Harness::new(StreamKind::Live);
    h.publish(source, b"init");
    let a = h.add_viewer(1, source);
    let b = h.add_viewer(2, source);
    for n in 0..10 {
        h.publish(source, &payload(n));
        h.advance(Duration::from_secs(1));
    }
    for viewer in [a, b] {
        let node = &h.nodes[&viewer];
        assert_eq!(node.segment(SegmentId::Init).unwrap().as_ref(), b"init");
        for n in 0..10u8 {
            assert_eq!(
                node.segment(SegmentId::Media(n as u64)).unwrap().as_ref(),
                &payload(n)[..]
            );
        }
    }
    let rejected = h
        .events
        .iter()
        .filter(|(_, e)| matches!(e, Event::SegmentRejected { .. }))
        .count();
    assert_eq!(rejected, 0);
    // The source feeds one viewer; the other gets the stream from it.
    let from_peers: u64 = [a, b]
        .iter()
        .map(|v| h.nodes[v].stats().bytes_from_peers)
        .sum();
    assert!(from_peers > 0, "no segment went viewer to viewer");
    // The viewer the source feeds passes each segment on as it arrives.
    let forwarded: u64 = [a, b]
        .iter()
        .map(|v| h.nodes[v].stats().segments_forwarded)
        .sum();
    assert!(forwarded > 0, "no segment was forwarded as it arrived");
}

#[test]
fn a_corrupted_segment_forwarded_as_it_arrives_never_completes_downstream() {
    let (mut h, source) = Harness::new(StreamKind::Live);
    h.publish(source, b"init");
    let viewers = [h.add_viewer(1, source), h.add_viewer(2, source)];
    for n in 0..4 {
        h.publish(source, &payload(n));
        h.advance(Duration::from_secs(1));
    }
    // The source feeds one viewer, which feeds the other.
    let fed = |h: &Harness, parent: PeerId| {
        viewers
            .into_iter()
            .find(|v| h.nodes[v].tree().0 == Some(parent))
            .unwrap()
    };
    let first = fed(&h, source);
    let second = fed(&h, first);
    // The source's next copy to `first` is corrupted, once.
    let mut once = true;
    h.tamper.insert(
        source,
        Box::new(move |id, bytes| {
            if id != SegmentId::Media(4) || !once {
                return Some(bytes);
            }
            once = false;
            let mut v = bytes.to_vec();
            v[0] ^= 0xff;
            Some(Bytes::from(v))
        }),
    );
    h.publish(source, &payload(4));
    assert!(
        h.nodes[&first].stats().segments_forwarded >= 1,
        "the segment was not forwarded as it arrived"
    );
    let rejected = |h: &Harness, at: PeerId| {
        h.events
            .iter()
            .filter(|(v, e)| *v == at && matches!(e, Event::SegmentRejected { .. }))
            .count()
    };
    // `first` caught it; `second` never completed the forwarded stream, so it rejected
    // nothing and holds nothing against `first`.
    assert_eq!(rejected(&h, first), 1);
    assert_eq!(rejected(&h, second), 0);
    let strikes = h.nodes[&second]
        .partners()
        .find(|p| p.peer == first)
        .map(|p| p.strikes);
    assert_eq!(strikes, Some(0));
    // Both fetch a good copy again in time.
    h.advance(Duration::from_secs(3));
    for v in viewers {
        assert_eq!(
            h.nodes[&v].segment(SegmentId::Media(4)).unwrap().as_ref(),
            &payload(4)[..]
        );
    }
}

#[test]
fn a_late_viewer_learns_about_other_viewers_and_fetches_from_them() {
    let (mut h, source) = Harness::new(StreamKind::Vod);
    h.publish(source, b"init");
    for n in 0..5 {
        h.publish(source, &payload(n));
    }
    let a = h.add_viewer(1, source);
    h.advance(Duration::from_secs(2));
    assert_eq!(h.stored(a).len(), 6);
    // The second viewer bootstraps from the source, hears of `a` and prefers it.
    let b = h.add_viewer(2, source);
    h.advance(Duration::from_millis(10));
    assert_eq!(h.stored(b).len(), 6);
    assert!(h.linked(a, b), "b should have dialled a");
    let stats = h.nodes[&b].stats().clone();
    assert!(stats.bytes_from_peers > 0, "{stats:?}");
}

#[test]
fn corrupted_bytes_are_rejected_and_fetched_again_elsewhere() {
    let (mut h, source) = Harness::new(StreamKind::Vod);
    h.publish(source, b"init");
    h.publish(source, &payload(0));
    let liar = h.add_viewer(1, source);
    h.advance(Duration::from_secs(2));
    h.tamper.insert(
        liar,
        Box::new(|_, bytes| {
            let mut v = bytes.to_vec();
            v[0] ^= 0xff;
            Some(Bytes::from(v))
        }),
    );
    // The victim knows only the liar at first.
    let victim = h.add_viewer(2, liar);
    h.advance(Duration::from_secs(3));
    assert_eq!(
        h.nodes[&victim]
            .segment(SegmentId::Media(0))
            .unwrap()
            .as_ref(),
        &payload(0)[..]
    );
    let rejected: Vec<_> = h
        .events
        .iter()
        .filter(|(at, e)| *at == victim && matches!(e, Event::SegmentRejected { .. }))
        .collect();
    assert!(!rejected.is_empty(), "the corrupted copy must be reported");
    assert!(
        rejected.iter().all(|(_, e)| matches!(e,
        Event::SegmentRejected { peer, error: IntegrityError::HashMismatch, .. } if *peer == liar))
    );
}

#[test]
fn forged_statements_are_dropped_never_forwarded_and_cost_a_strike() {
    let (mut h, source) = Harness::new(StreamKind::Live);
    h.publish(source, b"init");
    let a = h.add_viewer(1, source);
    let b = h.add_viewer(2, a);
    let forger = Keypair::from_seed([66; 32]);
    let forged = SegmentMeta::describe(h.channel(), 0, SegmentId::Media(0), SEGMENT, 0, b"evil")
        .unwrap()
        .sign(&forger);
    let now = h.now;
    h.nodes
        .get_mut(&b)
        .unwrap()
        .hear(now, a, Frame::Announce(vec![forged]));
    h.run();
    assert!(h.events.iter().any(|(at, e)| *at == b
        && matches!(
            e,
            Event::StatementRejected {
                error: IntegrityError::BadSignature,
                ..
            }
        )));
    assert!(!h.nodes[&b].statements.contains_key(&SegmentId::Media(0)));
    // The real segment 0 still arrives afterwards.
    h.publish(source, &payload(0));
    h.advance(Duration::from_secs(2));
    assert_eq!(
        h.nodes[&b].segment(SegmentId::Media(0)).unwrap().as_ref(),
        &payload(0)[..]
    );
    assert_eq!(
        h.nodes[&b]
            .partners()
            .find(|p| p.peer == a)
            .unwrap()
            .strikes,
        1
    );
}

#[test]
fn a_partner_that_stops_answering_is_replaced_after_the_timeout() {
    let (mut h, source) = Harness::new(StreamKind::Vod);
    h.publish(source, b"init");
    h.publish(source, &payload(0));
    let a = h.add_viewer(1, source);
    h.advance(Duration::from_secs(2));
    h.tamper.insert(a, Box::new(|_, _| None)); // a swallows every segment it should send
    let b = h.add_viewer(2, a);
    h.advance(Duration::from_millis(10));
    assert!(
        h.nodes[&b].segment(SegmentId::Media(0)).is_none(),
        "b asks a first"
    );
    h.advance(config().request_timeout * 2);
    assert_eq!(
        h.nodes[&b].segment(SegmentId::Media(0)).unwrap().as_ref(),
        &payload(0)[..]
    );
    assert!(h.nodes[&b].stats().requests_retried >= 1);
}

#[test]
fn a_viewer_leaving_mid_transfer_costs_the_others_nothing() {
    let (mut h, source) = Harness::new(StreamKind::Vod);
    h.publish(source, b"init");
    for n in 0..3 {
        h.publish(source, &payload(n));
    }
    let a = h.add_viewer(1, source);
    h.advance(Duration::from_secs(2));
    h.mute.insert(a);
    let b = h.add_viewer(2, source);
    h.advance(Duration::from_millis(100));
    h.remove(a);
    h.advance(Duration::from_secs(2));
    assert_eq!(h.stored(b).len(), 4);
}

#[test]
fn unsolicited_segments_are_refused() {
    let (mut h, source) = Harness::new(StreamKind::Live);
    h.publish(source, b"init");
    let a = h.add_viewer(1, source);
    assert_eq!(
        h.nodes[&a].expected_len(&source, SegmentId::Media(5), Part::WHOLE),
        None
    );
    let now = h.now;
    h.nodes.get_mut(&a).unwrap().handle_input(
        now,
        Input::Segment {
            peer: source,
            id: SegmentId::Media(5),
            part: Part::WHOLE,
            bytes: Bytes::from_static(b"x"),
        },
    );
    h.run();
    assert!(h.nodes[&a].segment(SegmentId::Media(5)).is_none());
}

#[test]
fn a_live_viewer_starts_near_the_live_edge_and_evicts_old_segments() {
    let (mut h, source) = Harness::new(StreamKind::Live);
    h.nodes.get_mut(&source).unwrap().config.live_window = 5;
    h.publish(source, b"init");
    for n in 0..10 {
        h.publish(source, &payload(n));
    }
    let a = h.add_viewer(1, source);
    h.advance(Duration::from_secs(2));
    let stored = h.stored(a);
    let behind = config().live_start_behind;
    assert_eq!(stored.first(), Some(&SegmentId::Init));
    assert_eq!(
        stored.get(1),
        Some(&SegmentId::Media(9 - behind)),
        "{stored:?}"
    );
    assert!(
        h.stored(source).len() <= 7,
        "source keeps only its window: {:?}",
        h.stored(source)
    );
}

/// The statements and `Have`s `from` sent `to` when they connected: (announced, held).
fn greeting_news(h: &Harness, from: PeerId, to: PeerId) -> (Vec<SegmentId>, Vec<SegmentId>) {
    let (mut announced, mut held) = (Vec::new(), Vec::new());
    for (f, t, frame) in &h.frames {
        match frame {
            Frame::Announce(list) if (*f, *t) == (from, to) => {
                announced.extend(list.iter().map(|s| s.meta.id));
            }
            Frame::Have(ids) if (*f, *t) == (from, to) => held.extend(ids),
            _ => {}
        }
    }
    (announced, held)
}

#[test]
fn a_live_newcomer_hears_of_the_newest_segments_and_a_film_viewer_of_all() {
    // Live: the init segment and the newest few, not the whole window the source keeps.
    let (mut h, source) = Harness::new(StreamKind::Live);
    h.publish(source, b"init");
    for n in 0..30 {
        h.publish(source, &payload(n));
    }
    let viewer = h.add_viewer(1, source);
    let (announced, held) = greeting_news(&h, source, viewer);
    let from = 29 - gossip::LIVE_CATCH_UP;
    let recent: Vec<SegmentId> = std::iter::once(SegmentId::Init)
        .chain((from..30).map(SegmentId::Media))
        .collect();
    assert_eq!(announced, recent);
    assert_eq!(held, recent);
    assert!(h.nodes[&source]
        .statements
        .contains_key(&SegmentId::Media(0)));

    // On demand a viewer may seek anywhere: it hears of the whole film.
    let (mut h, source) = published_film(30);
    let viewer = h.add_viewer(1, source);
    let (announced, held) = greeting_news(&h, source, viewer);
    assert_eq!(announced.len(), 31);
    assert_eq!(held.len(), 31);
}

#[test]
fn a_vod_viewer_that_seeks_fetches_from_the_new_position_first() {
    let (mut h, source) = published_film(40);
    let id = Keypair::from_seed([1; 32]).peer_id();
    let mut viewer = Exchange::viewer(h.now, config(), id, h.channel(), None);
    // The player asked for segment 30 before anything arrived (a seek into the film).
    viewer.set_playhead(h.now, 30);
    let boot = PeerAddr {
        id: source,
        addr: "10.0.0.1:1".parse().unwrap(),
    };
    viewer.add_candidates(h.now, [boot]);
    h.nodes.insert(id, viewer);
    h.run();
    h.advance(Duration::from_secs(1));
    let media: Vec<u64> = h
        .events
        .iter()
        .filter_map(|(at, e)| match e {
            Event::Stored {
                id: SegmentId::Media(n),
                from: Some(_),
                ..
            } if *at == id => Some(*n),
            _ => None,
        })
        .collect();
    assert_eq!(media.first(), Some(&30), "{media:?}");
    assert!(
        media.iter().all(|n| *n >= 30),
        "nothing before the playhead yet: {media:?}"
    );
    // The rest follows as playback needs it (from the source only ahead of its deadline,
    // as nobody else holds it).
    h.advance(Duration::from_secs(10));
    assert_eq!(h.missing(id, 30..40), Vec::<u64>::new());
    // What it holds is what it would list in the overlay's holder index; the source lists
    // nothing (everyone finds it anyway).
    assert_eq!(h.nodes[&id].held_ranges(8), vec![(30, 39)]);
    assert_eq!(h.nodes[&source].held_ranges(8), Vec::<(u64, u64)>::new());
}

#[test]
fn a_restarted_broadcaster_starts_a_new_session_and_viewers_drop_the_old_one() {
    let (mut h, source) = Harness::new(StreamKind::Live);
    h.publish(source, b"init one");
    h.publish(source, &payload(0));
    h.publish(source, &payload(1));
    let a = h.add_viewer(1, source);
    let b = h.add_viewer(2, a);
    h.advance(Duration::from_secs(2));
    assert_eq!(
        h.nodes[&b].segment(SegmentId::Init).unwrap().as_ref(),
        b"init one"
    );

    // The broadcaster restarts with the same key: a new record, numbering from 0 again.
    h.remove(source);
    let record = ChannelRecord {
        broadcaster: h.key.public(),
        name: "harness, take two".into(),
        kind: StreamKind::Live,
        segment_target_ms: 1000,
        started_unix_ms: 10,
    }
    .sign(&h.key);
    let addr: SocketAddr = "10.0.0.1:1".parse().unwrap();
    let restarted = Exchange::source(h.now, config(), h.key.clone(), record, Some(addr));
    h.nodes.insert(source, restarted);
    h.addrs.insert(addr, source);
    h.next_seq = 0;
    h.publish(source, b"init two");
    h.publish(source, &payload(7));
    // Only `a` reconnects to the source; `b` hears of the new session from `a`.
    let now = h.now;
    h.nodes
        .get_mut(&a)
        .unwrap()
        .add_candidates(now, [PeerAddr { id: source, addr }]);
    h.run();
    h.advance(Duration::from_secs(3));
    for viewer in [a, b] {
        let node = &h.nodes[&viewer];
        assert_eq!(node.record().unwrap().record.name, "harness, take two");
        assert_eq!(node.segment(SegmentId::Init).unwrap().as_ref(), b"init two");
        assert_eq!(
            node.segment(SegmentId::Media(0)).unwrap().as_ref(),
            &payload(7)[..]
        );
        assert!(
            node.segment(SegmentId::Media(1)).is_none(),
            "old session's segment kept"
        );
    }
}

/// `node`'s uplink carries `bps`, measured, and `peers` connected to it (what it sent them on
/// connecting is drained).
fn serve_at(node: &mut Exchange, now: Instant, bps: f64, peers: &[PeerId]) {
    node.meter = UploadMeter::new(bps, Some(bps));
    for &peer in peers {
        node.handle_input(now, Input::Connected { peer });
    }
    while node.poll_output().is_some() {}
}

#[test]
fn a_peer_turns_away_at_once_what_it_cannot_send_soon() {
    let (mut h, source) = Harness::new(StreamKind::Vod);
    h.publish(source, b"init");
    h.publish(source, &payload(0));
    let now = h.now;
    let node = h.nodes.get_mut(&source).unwrap();
    let (a, b) = (PeerId([1; 32]), PeerId([2; 32]));
    // An uplink that carries one of these segments per second: a second one queued behind
    // it would wait longer than a requester should.
    serve_at(node, now, 8_000.0, &[a, b]);
    let request = |peer| Input::Frame {
        peer,
        frame: Frame::Request(SegmentId::Media(0), 2_000),
    };
    node.handle_input(now, request(a));
    node.handle_input(now, request(b));
    let outputs: Vec<Output> = std::iter::from_fn(|| node.poll_output()).collect();
    assert!(
        matches!(&outputs[..], [
        Output::SendSegment { to, .. },
        Output::Send { to: refused, frame: Frame::Busy(SegmentId::Media(0)) },
    ] if *to == a && *refused == b),
        "{outputs:?}"
    );
    assert_eq!(node.stats().requests_refused, 1);
    // Once a's transfer is done, the uplink serves b.
    node.handle_input(
        now + Duration::from_secs(1),
        Input::SegmentSent {
            peer: a,
            id: SegmentId::Media(0),
        },
    );
    node.handle_input(now + Duration::from_secs(1), request(b));
    assert!(matches!(node.poll_output(), Some(Output::SendSegment { to, .. }) if to == b));
}

#[test]
fn a_holder_of_a_film_serves_the_requester_that_plays_soonest_first() {
    let (mut h, source) = Harness::new(StreamKind::Vod);
    h.publish(source, b"init");
    for n in 0..3 {
        h.publish(source, &payload(n));
    }
    let now = h.now;
    let node = h.nodes.get_mut(&source).unwrap();
    let [a, b, c, d] = [1, 2, 3, 4].map(|n| PeerId([n; 32]));
    // One upload at a time, each segment in about a tenth of a second.
    node.config.upload_slots = 1;
    serve_at(node, now, 80_000.0, &[a, b, c, d]);
    let request = |n: u64, due_ms: u32| Frame::Request(SegmentId::Media(n), due_ms);
    node.hear(now, a, request(0, 10_000));
    node.hear(now, b, request(1, 9_000));
    // c plays its segment soonest: it goes before b's, though it asked later.
    node.hear(now, c, request(2, 3_000));
    // d plays within 150 ms, and a's upload and c's would take longer: it asks elsewhere.
    node.hear(now, d, request(1, 150));
    let outputs: Vec<Output> = std::iter::from_fn(|| node.poll_output()).collect();
    assert!(
        matches!(&outputs[..], [
            Output::SendSegment { to, .. },
            Output::Send { to: refused, frame: Frame::Busy(SegmentId::Media(1)) },
        ] if *to == a && *refused == d),
        "{outputs:?}"
    );
    let done = now + Duration::from_millis(100);
    node.handle_input(
        done,
        Input::SegmentSent {
            peer: a,
            id: SegmentId::Media(0),
        },
    );
    assert!(
        matches!(node.poll_output(), Some(Output::SendSegment { to, id: SegmentId::Media(2), .. }) if to == c)
    );
}

/// A VOD viewer of a film of ten segments with an HTTP origin, bootstrapped at the source.
fn viewer_with_origin(h: &mut Harness, source: PeerId) -> PeerId {
    h.publish(source, b"init");
    for n in 0..10 {
        h.publish(source, &payload(n));
    }
    let id = Keypair::from_seed([1; 32]).peer_id();
    let origin = ExchangeConfig {
        origin: true,
        ..config()
    };
    let mut viewer = Exchange::viewer(h.now, origin, id, h.channel(), None);
    let boot = PeerAddr {
        id: source,
        addr: "10.0.0.1:1".parse().unwrap(),
    };
    viewer.add_candidates(h.now, [boot]);
    h.nodes.insert(id, viewer);
    h.run();
    id
}

#[test]
fn an_origin_is_the_last_resort_instead_of_the_broadcaster() {
    let (mut h, source) = Harness::new(StreamKind::Vod);
    let viewer = viewer_with_origin(&mut h, source);
    h.advance(Duration::from_secs(15));
    for n in 0..10u8 {
        assert_eq!(
            h.nodes[&viewer]
                .segment(SegmentId::Media(u64::from(n)))
                .unwrap()
                .as_ref(),
            &payload(n)[..]
        );
    }
    let stats = h.nodes[&viewer].stats();
    assert!(stats.bytes_from_origin > 0, "{stats:?}");
    assert_eq!(stats.bytes_from_source, 0, "{stats:?}");
    let from_origin = h
        .events
        .iter()
        .filter(|(at, e)| *at == viewer && matches!(e, Event::Stored { origin: true, .. }))
        .count();
    assert_eq!(from_origin, 11, "the init segment and ten media segments");
}

#[test]
fn an_origin_that_sends_wrong_bytes_is_refused_and_the_broadcaster_serves_meanwhile() {
    let (mut h, source) = Harness::new(StreamKind::Vod);
    h.origin_bytes = Some(Bytes::from_static(b"not what the broadcaster signed"));
    let viewer = viewer_with_origin(&mut h, source);
    h.advance(Duration::from_secs(15));
    let node = &h.nodes[&viewer];
    for n in 0..10u8 {
        let held = node.segment(SegmentId::Media(u64::from(n))).unwrap();
        assert_eq!(held.as_ref(), &payload(n)[..]);
    }
    let stats = node.stats();
    assert!(stats.segments_rejected > 0, "{stats:?}");
    assert_eq!(stats.bytes_from_origin, 0, "{stats:?}");
    assert!(stats.bytes_from_source > 0, "{stats:?}");
    // Nobody is blamed, and the origin is tried again after its pause, not in a loop.
    assert!(node.partners().all(|p| p.strikes == 0));
    assert!(
        h.origin_fetches > 1 && h.origin_fetches < 20,
        "{}",
        h.origin_fetches
    );
}

/// The hint of a plan that has `peer` fed by `from` (the source when `None`).
fn hint_from(h: &Harness, epoch: u64, from: Option<PeerId>) -> Hint {
    let addr = from.and_then(|f| h.addrs.iter().find(|(_, p)| **p == f).map(|(a, _)| *a));
    Hint {
        epoch,
        tier: 2,
        target_lag: Duration::from_millis(2000),
        upstream: vec![HintedUpstream {
            from: from.map_or(Upstream::Source, Upstream::Peer),
            addr,
            slots: 4,
        }],
        downstream: Vec::new(),
    }
}

/// Publishes a live segment a second for `secs` seconds.
fn stream_for(h: &mut Harness, source: PeerId, secs: u8) {
    for n in 0..secs {
        h.publish(source, &payload(n));
        h.advance(SEGMENT);
    }
}

#[test]
fn a_viewer_subscribes_to_the_parent_its_hint_names() {
    let (mut h, source) = Harness::new(StreamKind::Live);
    h.publish(source, b"init");
    let a = h.add_viewer(1, source);
    stream_for(&mut h, source, 3);
    let b = h.add_viewer(2, a);
    stream_for(&mut h, source, 3);
    let c = h.add_viewer(3, a);
    stream_for(&mut h, source, 3);
    // The tree alone feeds a newcomer from the partner nearest the source: a.
    assert_eq!(h.nodes[&a].tree().0, Some(source));
    assert_eq!(h.nodes[&b].tree().0, Some(a));
    assert_eq!(h.nodes[&c].tree().0, Some(a));
    assert!(h.nodes[&c].hint().is_none() && h.nodes[&c].follows_hint().is_none());

    // The plan has b feed d: d dials b (it only knows a) and subscribes to it.
    let hint = hint_from(&h, 1, Some(b));
    let d = h.add_hinted_viewer(4, a, Some(hint));
    stream_for(&mut h, source, 3);
    assert!(h.linked(b, d));
    assert_eq!(h.nodes[&d].tree().0, Some(b));
    assert_eq!(h.nodes[&d].follows_hint(), Some(true));
    assert_eq!(h.nodes[&d].stats().hints_applied, 1);
    // An older plan's hint is ignored.
    let now = h.now;
    let stale = hint_from(&h, 0, Some(a));
    h.nodes.get_mut(&d).unwrap().apply_hint(now, stale);
    assert_eq!(h.nodes[&d].hint().map(|h| h.epoch), Some(1));
    // The segments keep coming, through b.
    let before = h.stored(d).len();
    stream_for(&mut h, source, 2);
    assert_eq!(h.stored(d).len(), before + 2);
    assert!(h.nodes[&b].stats().segments_pushed > 0);
}

#[test]
fn a_full_source_makes_room_for_the_peer_its_plan_names() {
    let (mut h, source) = Harness::new(StreamKind::Live);
    h.publish(source, b"init");
    let a = h.add_viewer(1, source);
    stream_for(&mut h, source, 3);
    let b = h.add_viewer(2, source);
    stream_for(&mut h, source, 3);
    // The source feeds one viewer (its upload carries a stream and a half): a.
    assert_eq!(h.nodes[&a].tree().0, Some(source));
    assert_ne!(h.nodes[&b].tree().0, Some(source));

    // The plan puts b in tier 1: the source drops a (not named) for b.
    h.frames.clear();
    let now = h.now;
    let mut for_source = hint_from(&h, 1, None);
    for_source.upstream.clear();
    for_source.downstream = vec![b];
    h.nodes
        .get_mut(&source)
        .unwrap()
        .apply_hint(now, for_source);
    let to_b = hint_from(&h, 1, None);
    h.nodes.get_mut(&b).unwrap().apply_hint(now, to_b);
    h.run();
    // (b may have been refused by the full source before: it asks again after that pause.)
    stream_for(&mut h, source, 12);
    assert_eq!(h.nodes[&b].tree().0, Some(source));
    assert_eq!(h.nodes[&b].follows_hint(), Some(true));
    assert_ne!(h.nodes[&a].tree().0, Some(source));
    assert!(h.nodes[&a].tree().0.is_some(), "a found another parent");
    // Dropped, a heard of the peers the source feeds, b among them.
    let referred = h.frames.iter().any(|(f, t, frame)| {
        *f == source && *t == a && matches!(frame, Frame::Peers(l) if l.iter().any(|p| p.id == b))
    });
    assert!(referred);
}

#[test]
fn the_random_baseline_ignores_hints() {
    let (mut h, source) = Harness::new(StreamKind::Live);
    h.publish(source, b"init");
    let a = h.add_viewer(1, source);
    let now = h.now;
    let node = h.nodes.get_mut(&a).unwrap();
    node.config.parent_choice = ParentChoice::Random;
    let hint = hint_from(&h, 1, None);
    h.nodes.get_mut(&a).unwrap().apply_hint(now, hint);
    assert!(h.nodes[&a].hint().is_none());
    stream_for(&mut h, source, 3);
    // Alone with the source, it is still fed.
    assert_eq!(h.nodes[&a].tree().0, Some(source));
}

/// The source feeds `first`, which feeds `second`.
fn chain(h: &mut Harness, source: PeerId) -> (PeerId, PeerId) {
    h.publish(source, b"init");
    let viewers = [h.add_viewer(1, source), h.add_viewer(2, source)];
    for n in 0..4 {
        h.publish(source, &payload(n));
        h.advance(SEGMENT);
    }
    let fed = |h: &Harness, parent: PeerId| {
        viewers
            .into_iter()
            .find(|v| h.nodes[v].tree().0 == Some(parent))
            .unwrap()
    };
    let first = fed(h, source);
    (first, fed(h, first))
}

#[test]
fn a_segment_is_announced_only_to_partners_not_known_to_hold_it() {
    let (mut h, source) = Harness::new(StreamKind::Live);
    let (first, second) = chain(&mut h, source);
    h.frames.clear();
    for n in 4..8 {
        h.publish(source, &payload(n));
        h.advance(SEGMENT);
    }
    let sent = |from: PeerId, to: PeerId, have: bool| {
        h.frames
            .iter()
            .filter(|(f, t, frame)| {
                *f == from
                    && *t == to
                    && match frame {
                        Frame::Have(ids) => have && ids.iter().any(|id| *id != SegmentId::Init),
                        Frame::Announce(_) => !have,
                        _ => false,
                    }
            })
            .count()
    };
    // Each viewer got every segment from its parent, which holds it: it tells it nothing.
    // Statements never go back to the partner they came from.
    assert_eq!(sent(first, source, true), 0);
    assert_eq!(sent(second, first, true), 0);
    assert_eq!(sent(first, source, false), 0);
    assert_eq!(sent(second, source, false), 0);
    // The source announces every segment to the viewer it feeds (to the other, only until it
    // asks for quiet: see `a_viewer_its_parent_feeds_asks_for_quiet_…`).
    assert_eq!(sent(source, first, false), 4);
    assert_eq!(h.stored(second).len(), 9);
}

#[test]
fn a_peer_feeding_others_paces_requests_to_spare_its_pushes() {
    let (mut h, source) = Harness::new(StreamKind::Live);
    let (first, _) = chain(&mut h, source);
    let now = h.now;
    let node = h.nodes.get_mut(&first).unwrap();
    let bitrate = node.bitrate_bps();
    let stranger = PeerId([9; 32]);
    node.handle_input(now, Input::Connected { peer: stranger });
    while node.poll_output().is_some() {}
    let request = Input::Frame {
        peer: stranger,
        frame: Frame::Request(SegmentId::Media(3), 2_000),
    };
    // An uplink the user bounded at 1.2 streams: what the push to its child leaves is not
    // worth serving from. (An unbounded idle uplink serves at full speed, to be measured.)
    node.config.upload_limit_bps = Some(1.2 * bitrate);
    node.meter = UploadMeter::new(1.2 * bitrate, Some(1.2 * bitrate));
    node.handle_input(now, request.clone());
    let outputs: Vec<Output> = std::iter::from_fn(|| node.poll_output()).collect();
    assert!(
        matches!(
            &outputs[..],
            [Output::Send {
                frame: Frame::Busy(_),
                ..
            }]
        ),
        "{outputs:?}"
    );
    // Three streams' worth: the request goes at the pace of what the push leaves (1.9
    // streams), so that the push keeps 1.1.
    node.config.upload_limit_bps = Some(3.0 * bitrate);
    node.meter = UploadMeter::new(3.0 * bitrate, Some(3.0 * bitrate));
    node.handle_input(now, request.clone());
    let outputs: Vec<Output> = std::iter::from_fn(|| node.poll_output()).collect();
    let pace = outputs.iter().find_map(|o| match o {
        Output::SendSegment { to, pace_kbps, .. } if *to == stranger => Some(*pace_kbps),
        _ => None,
    });
    let expected = (1.9 * bitrate / 1000.0) as u32;
    assert!(
        pace.flatten().is_some_and(|k| k.abs_diff(expected) <= 1),
        "{pace:?} for {expected}"
    );
    // Unbounded and idle: at full speed, so that the uplink gets measured.
    node.config.upload_limit_bps = None;
    node.uploads.clear();
    let other = PeerId([10; 32]);
    node.handle_input(now, Input::Connected { peer: other });
    while node.poll_output().is_some() {}
    node.hear(now, other, Frame::Request(SegmentId::Media(3), 2_000));
    let outputs: Vec<Output> = std::iter::from_fn(|| node.poll_output()).collect();
    assert!(
        outputs.iter().any(|o| matches!(
            o,
            Output::SendSegment { to, pace_kbps: None, .. } if *to == other
        )),
        "{outputs:?}"
    );
}

#[test]
fn a_viewer_nobody_can_feed_lets_a_full_partner_go_to_meet_others() {
    let (mut viewer, dialled, mut now) = unfed_viewer_among_full_partners(&[4000, 4000, 4000]);
    now += Duration::from_secs(2);
    viewer.handle_timeout(now);
    let outputs: Vec<Output> = std::iter::from_fn(|| viewer.poll_output()).collect();
    let closed = exploring_closes(&outputs);
    assert_eq!(closed.len(), 1, "{outputs:?}");
    assert!(dialled.contains(&closed[0]));
    assert!(
        outputs
            .iter()
            .any(|o| matches!(o, Output::Dial(p) if !dialled.contains(&p.id) && p.id != PeerId([100; 32]))),
        "{outputs:?}"
    );
    assert_eq!(viewer.partners().count(), 2);
}

#[test]
fn an_unfed_viewer_short_of_upload_to_pull_from_keeps_the_partners_that_have_it() {
    // Together its partners would send its requests at 2.1 Mbit/s, about one stream: the one
    // with 1.5 Mbit/s to spare stays, the others go one by one for peers that may have more.
    let (mut viewer, dialled, mut now) = unfed_viewer_among_full_partners(&[300, 300, 1500]);
    let mut closed = Vec::new();
    for _ in 0..4 {
        now += Duration::from_secs(1);
        viewer.handle_timeout(now);
        let outputs: Vec<Output> = std::iter::from_fn(|| viewer.poll_output()).collect();
        closed.extend(exploring_closes(&outputs));
    }
    closed.sort();
    let mut slow = dialled[..2].to_vec();
    slow.sort();
    assert_eq!(closed, slow);
    assert_eq!(
        viewer.partners().map(|p| p.peer).collect::<Vec<_>>(),
        [dialled[2]]
    );
}

/// The peers an `Exploring` close lets go of.
fn exploring_closes(outputs: &[Output]) -> Vec<PeerId> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Close {
                peer,
                reason: CloseReason::Exploring,
            } => Some(*peer),
            _ => None,
        })
        .collect()
}

/// A live viewer (id 100) greeted by one partner per entry of `serve_kbps`, each fed (depth 1)
/// but full, reporting that it would serve a request at that rate; the viewer knows of two
/// more candidates. Returns the partners in the order of `serve_kbps`.
fn unfed_viewer_among_full_partners(serve_kbps: &[u32]) -> (Exchange, Vec<PeerId>, Instant) {
    let (h, _) = Harness::new(StreamKind::Live);
    let record = h.nodes.values().next().unwrap().record().unwrap().clone();
    let now = h.now;
    let me = PeerId([100; 32]);
    let viewer_config = ExchangeConfig {
        max_partners: serve_kbps.len(),
        ..config()
    };
    let mut viewer = Exchange::viewer(now, viewer_config, me, h.channel(), None);
    let peers: Vec<PeerAddr> = (1..=serve_kbps.len() as u8 + 2)
        .map(|n| PeerAddr {
            id: PeerId([n; 32]),
            addr: format!("10.0.2.{n}:1").parse().unwrap(),
        })
        .collect();
    viewer.add_candidates(now, peers.iter().copied());
    let dialled: Vec<PeerId> = std::iter::from_fn(|| viewer.poll_output())
        .filter_map(|o| match o {
            Output::Dial(p) => Some(p.id),
            _ => None,
        })
        .collect();
    assert_eq!(dialled.len(), serve_kbps.len());
    for (i, (peer, serve)) in dialled.iter().copied().zip(serve_kbps).enumerate() {
        viewer.handle_input(now, Input::Connected { peer });
        let listen = peers.iter().find(|p| p.id == peer).map(|p| p.addr);
        let mut frames = vec![Frame::Hello {
            channel: h.channel(),
            listen,
        }];
        if i == 0 {
            frames.push(Frame::Channel(Box::new(record.clone())));
        }
        frames.push(Frame::Report {
            upload_kbps: 4000,
            serve_kbps: *serve,
            depth: 1,
            spare: 0,
        });
        for frame in frames {
            viewer.hear(now, peer, frame);
        }
    }
    while viewer.poll_output().is_some() {}
    (viewer, dialled, now)
}

#[test]
fn a_peer_remembers_a_bounded_sample_of_the_peers_it_hears_of() {
    let (mut h, source) = Harness::new(StreamKind::Live);
    h.publish(source, b"init");
    let viewer = h.add_viewer(1, source);
    let now = h.now;
    let node = h.nodes.get_mut(&viewer).unwrap();
    let heard: Vec<PeerAddr> = (0..2000u32)
        .map(|n| {
            let mut id = [7u8; 32];
            id[..4].copy_from_slice(&n.to_le_bytes());
            PeerAddr {
                id: PeerId(id),
                addr: SocketAddr::from(([10, 9, (n >> 8) as u8, n as u8], 1)),
            }
        })
        .collect();
    for chunk in heard.chunks(16) {
        node.hear(now, source, Frame::Peers(chunk.to_vec()));
        assert!(node.candidates.len() <= MAX_CANDIDATES);
    }
    // The source, a partner, is never forgotten; a good part of the rest is new.
    assert!(node.candidates.contains_key(&source));
    let late = heard[1500..]
        .iter()
        .filter(|p| node.candidates.contains_key(&p.id))
        .count();
    assert!(late > 20, "{late}");
}

/// A harness whose source published a film of `segments` media segments.
fn published_film(segments: u8) -> (Harness, PeerId) {
    let (mut h, source) = Harness::new(StreamKind::Vod);
    h.publish(source, b"init");
    for n in 0..segments {
        h.publish(source, &payload(n));
    }
    (h, source)
}

/// A film of 40 segments published at a harness source: its record and statements.
fn film() -> (SignedChannel, Vec<SignedSegment>) {
    let (h, source) = published_film(40);
    let node = &h.nodes[&source];
    let statements = node.statements.values().copied().collect();
    (node.record().unwrap().clone(), statements)
}

fn peer_addr(n: u8) -> PeerAddr {
    PeerAddr {
        id: PeerId([n; 32]),
        addr: format!("10.0.3.{n}:1").parse().unwrap(),
    }
}

impl Exchange {
    /// A frame from `peer` arrives.
    fn hear(&mut self, now: Instant, peer: PeerId, frame: Frame) {
        self.handle_input(now, Input::Frame { peer, frame });
    }
}

/// Connects `peer` to `node` and feeds it the frames a partner sends first.
fn greet(node: &mut Exchange, now: Instant, peer: PeerAddr, first: Vec<Frame>) {
    node.handle_input(now, Input::Connected { peer: peer.id });
    let hello = Frame::Hello {
        channel: node.channel(),
        listen: Some(peer.addr),
    };
    for frame in std::iter::once(hello).chain(first) {
        node.hear(now, peer.id, frame);
    }
}

/// A film's viewer that sought to segment 30 while its three partners hold only segments
/// 0–9 (the first partner also sent the record and the statements).
fn sought_past_its_partners(now: Instant) -> (Exchange, Vec<PeerAddr>) {
    let (record, statements) = film();
    let viewer_config = ExchangeConfig {
        max_partners: 3,
        ..config()
    };
    let mut viewer = Exchange::viewer(
        now,
        viewer_config,
        PeerId([100; 32]),
        record.record.channel_id(),
        None,
    );
    // The player sought to segment 30; the partners hold only the film's start.
    viewer.set_playhead(now, 30);
    let partners: Vec<PeerAddr> = (1..=3).map(peer_addr).collect();
    viewer.add_candidates(now, partners.iter().copied());
    while viewer.poll_output().is_some() {}
    for (i, p) in partners.iter().enumerate() {
        let mut first = Vec::new();
        if i == 0 {
            first.push(Frame::Channel(Box::new(record.clone())));
            first.push(Frame::Announce(statements.clone()));
        }
        first.push(Frame::Have((0..10).map(SegmentId::Media).collect()));
        greet(&mut viewer, now, *p, first);
    }
    while viewer.poll_output().is_some() {}
    (viewer, partners)
}

#[test]
fn an_on_demand_viewer_no_partner_can_serve_asks_who_can_and_makes_room_for_them() {
    let mut now = Instant::now();
    let (mut viewer, partners) = sought_past_its_partners(now);
    now += Duration::from_secs(1);
    viewer.handle_timeout(now);
    let outputs: Vec<Output> = std::iter::from_fn(|| viewer.poll_output()).collect();
    let asked: Vec<PeerId> = outputs
        .iter()
        .filter_map(|o| match o {
            Output::Send {
                to,
                frame: Frame::Find(SegmentId::Media(30)),
            } => Some(*to),
            _ => None,
        })
        .collect();
    assert_eq!(asked.len(), 3, "every partner is asked about segment 30");
    assert!(
        outputs.contains(&Output::LookupHolders { seq: 30 }),
        "and so is the overlay's holder index: {outputs:?}"
    );
    // One partner knows a holder: the viewer lets a partner that holds nothing it needs go
    // and dials the holder.
    let holder = peer_addr(9);
    viewer.hear(
        now,
        partners[0].id,
        Frame::Holders(SegmentId::Media(30), vec![holder]),
    );
    let outputs: Vec<Output> = std::iter::from_fn(|| viewer.poll_output()).collect();
    assert!(
        outputs
            .iter()
            .any(|o| matches!(o, Output::Dial(p) if p.id == holder.id)),
        "{outputs:?}"
    );
    let let_go = outputs
        .iter()
        .filter(|o| {
            matches!(o, Output::Close { peer, reason: CloseReason::Exploring } if partners.iter().any(|p| p.id == *peer))
        })
        .count();
    assert_eq!(let_go, 1, "{outputs:?}");
    // Still unserved a second later, it asks again (its two partners); then it waits twice
    // as long before the next time.
    let finds = |viewer: &mut Exchange, now| {
        viewer.handle_timeout(now);
        std::iter::from_fn(|| viewer.poll_output())
            .filter(|o| {
                matches!(
                    o,
                    Output::Send {
                        frame: Frame::Find(_),
                        ..
                    }
                )
            })
            .count()
    };
    now += Duration::from_millis(1100);
    assert_eq!(finds(&mut viewer, now), 2);
    now += Duration::from_millis(1100);
    assert_eq!(finds(&mut viewer, now), 0);
    now += Duration::from_millis(1100);
    assert_eq!(finds(&mut viewer, now), 2);
}

#[test]
fn holders_the_index_names_are_dialled_in_place_of_a_partner_that_holds_nothing_needed() {
    let mut now = Instant::now();
    let (mut viewer, partners) = sought_past_its_partners(now);
    now += Duration::from_secs(1);
    viewer.handle_timeout(now);
    while viewer.poll_output().is_some() {}
    // The index names two holders, one of them the viewer itself (it is not dialled).
    let holder = peer_addr(9);
    let me = PeerAddr {
        id: PeerId([100; 32]),
        addr: "10.0.3.100:1".parse().unwrap(),
    };
    viewer.add_holders(now, 30, vec![me, holder]);
    let outputs: Vec<Output> = std::iter::from_fn(|| viewer.poll_output()).collect();
    let dialled: Vec<PeerId> = outputs
        .iter()
        .filter_map(|o| match o {
            Output::Dial(p) => Some(p.id),
            _ => None,
        })
        .collect();
    assert_eq!(dialled, vec![holder.id], "{outputs:?}");
    assert!(
        outputs.iter().any(|o| matches!(
            o,
            Output::Close { peer, reason: CloseReason::Exploring } if partners.iter().any(|p| p.id == *peer)
        )),
        "a partner holding nothing it needs made room: {outputs:?}"
    );
    while viewer.poll_output().is_some() {}
    // Another answer names one more holder: it waits to be dialled (the partner count is
    // full until the next partner goes).
    viewer.add_holders(now, 30, vec![peer_addr(12)]);
    assert!(viewer.found.contains(&peer_addr(12).id));
    // An answer about a segment it no longer needs (it holds it, or sought elsewhere) is
    // dropped.
    viewer.add_holders(now, 5, vec![peer_addr(13)]);
    viewer
        .store
        .insert(SegmentId::Media(30), Bytes::from(payload(30)));
    viewer.add_holders(now, 30, vec![peer_addr(11)]);
    for late in [11, 13] {
        assert!(!viewer.found.contains(&peer_addr(late).id), "{late}");
    }
}

#[test]
fn a_viewer_lists_what_it_holds_as_ranges_the_longest_first_kept() {
    let (mut node, _) = sought_past_its_partners(Instant::now());
    assert_eq!(node.held_ranges(8), Vec::<(u64, u64)>::new());
    for seq in [2, 3, 4, 10, 20, 21, 22, 23, 30] {
        node.store
            .insert(SegmentId::Media(seq), Bytes::from(payload(seq as u8)));
    }
    node.store
        .insert(SegmentId::Init, Bytes::from_static(b"init"));
    assert_eq!(
        node.held_ranges(8),
        vec![(2, 4), (10, 10), (20, 23), (30, 30)]
    );
    // At most `max`: the longest, in segment order (ties: the earlier).
    assert_eq!(node.held_ranges(2), vec![(2, 4), (20, 23)]);
    assert_eq!(node.held_ranges(3), vec![(2, 4), (10, 10), (20, 23)]);
}

#[test]
fn a_peer_names_the_partners_that_hold_what_another_looks_for() {
    let (record, statements) = film();
    let now = Instant::now();
    let mut node = Exchange::viewer(
        now,
        config(),
        PeerId([100; 32]),
        record.record.channel_id(),
        None,
    );
    let (asker, holder, other) = (peer_addr(1), peer_addr(2), peer_addr(3));
    let frames = vec![
        Frame::Channel(Box::new(record)),
        Frame::Announce(statements),
        Frame::Have(vec![SegmentId::Media(30)]),
    ];
    greet(&mut node, now, holder, frames);
    greet(
        &mut node,
        now,
        other,
        vec![Frame::Have(vec![SegmentId::Media(5)])],
    );
    greet(&mut node, now, asker, Vec::new());
    while node.poll_output().is_some() {}
    node.hear(now, asker.id, Frame::Find(SegmentId::Media(30)));
    let answers: Vec<Output> = std::iter::from_fn(|| node.poll_output()).collect();
    assert_eq!(
        answers,
        vec![Output::Send {
            to: asker.id,
            frame: Frame::Holders(SegmentId::Media(30), vec![holder]),
        }]
    );
    // Nobody holds segment 31: no answer at all.
    node.hear(now, asker.id, Frame::Find(SegmentId::Media(31)));
    assert_eq!(node.poll_output(), None);
}

#[test]
fn a_full_source_of_a_film_lets_an_idle_partner_go_for_a_newcomer() {
    let (record, _) = film();
    let key = Keypair::from_seed([42; 32]);
    let mut now = Instant::now();
    let source_config = ExchangeConfig {
        partner_limit: 2,
        upload_guess_bps: 1.0,
        ..config()
    };
    let mut source = Exchange::source(now, source_config, key, record, None);
    let (idle, busy, newcomer) = (peer_addr(1), peer_addr(2), peer_addr(3));
    greet(&mut source, now, idle, Vec::new());
    greet(&mut source, now, busy, Vec::new());
    while source.poll_output().is_some() {}
    now += Duration::from_secs(4);
    source.hear(now, busy.id, Frame::Request(SegmentId::Media(3), 2_000));
    while source.poll_output().is_some() {}
    // A newcomer before anyone was idle long enough is turned away.
    now += Duration::from_millis(500);
    source.handle_input(now, Input::Connected { peer: newcomer.id });
    let outputs: Vec<Output> = std::iter::from_fn(|| source.poll_output()).collect();
    assert!(outputs.contains(&Output::Close {
        peer: newcomer.id,
        reason: CloseReason::Full
    }));
    source.handle_input(now, Input::Disconnected { peer: newcomer.id });
    // Later, the partner that asked for nothing goes; the one that asked stays.
    now += Duration::from_secs(1);
    source.handle_input(now, Input::Connected { peer: newcomer.id });
    let outputs: Vec<Output> = std::iter::from_fn(|| source.poll_output()).collect();
    assert!(
        outputs.contains(&Output::Close {
            peer: idle.id,
            reason: CloseReason::Idle
        }),
        "{outputs:?}"
    );
    let partners: Vec<PeerId> = source.partners().map(|p| p.peer).collect();
    assert!(partners.contains(&busy.id) && partners.contains(&newcomer.id));
    assert_eq!(partners.len(), 2);
}

#[test]
fn a_viewer_its_parent_feeds_asks_for_quiet_and_for_news_again_when_the_parent_falls_silent() {
    let (mut h, source) = Harness::new(StreamKind::Live);
    let (first, second) = chain(&mut h, source);
    h.frames.clear();
    for n in 4..10 {
        h.publish(source, &payload(n));
        h.advance(SEGMENT);
    }
    let asked = |h: &Harness, on: bool| {
        h.frames
            .iter()
            .position(|(f, t, frame)| *f == second && *t == source && *frame == Frame::Quiet(on))
    };
    let news = |h: &Harness, from: PeerId, since: usize| {
        h.frames[since..]
            .iter()
            .filter(|(f, t, frame)| {
                *f == from && *t == second && matches!(frame, Frame::Announce(_) | Frame::Have(_))
            })
            .count()
    };
    // Fed in time by its parent, the second viewer asked the source for quiet; from then on
    // only its parent announces segments to it, and it still gets every one.
    let quiet = asked(&h, true).expect("asked for quiet");
    assert_eq!(news(&h, source, quiet), 0);
    assert!(news(&h, first, quiet) > 0);
    assert_eq!(h.stored(second).len(), 11);
    // Nor does it get the source's reports, which the source's child does.
    let reports = |h: &Harness, from: PeerId, to: PeerId, since: usize| {
        h.frames[since..]
            .iter()
            .filter(|(f, t, frame)| *f == from && *t == to && matches!(frame, Frame::Report { .. }))
            .count()
    };
    assert_eq!(reports(&h, source, second, quiet), 0);
    assert!(reports(&h, source, first, quiet) > 0);
    // Its parent falls silent: it asks for news again, hears of the segments from the
    // source, and gets them.
    h.mute.insert(first);
    h.frames.clear();
    for n in 10..16 {
        h.publish(source, &payload(n));
        h.advance(SEGMENT);
    }
    h.advance(3 * SEGMENT);
    let loud = asked(&h, false).expect("asked for news again");
    assert!(news(&h, source, loud) > 0);
    assert!(reports(&h, source, second, loud) > 0);
    assert_eq!(h.missing(second, 12..16), Vec::<u64>::new());
}

#[test]
fn a_late_answer_to_a_withdrawn_request_costs_its_sender_no_strike() {
    let (h, source) = published_film(10);
    let mut now = h.now;
    let mut viewer = greeted_by_holders(&h, source, &[peer_addr(1), peer_addr(2)]);
    let requests = |viewer: &mut Exchange| -> Vec<(PeerId, SegmentId)> {
        std::iter::from_fn(|| viewer.poll_output())
            .filter_map(|o| match o {
                Output::Send {
                    to,
                    frame: Frame::Request(id, _),
                } => Some((to, id)),
                _ => None,
            })
            .collect()
    };
    // The init segment and the first one (the others wait until that is here); with their
    // copies below, four late answers, more than the three strikes that close a link.
    let first = requests(&mut viewer);
    assert!(first.len() >= 2, "{first:?}");
    // Nobody answers in time: the viewer asks again (elsewhere, or the same holder).
    now += Duration::from_secs(4);
    viewer.handle_timeout(now);
    while viewer.poll_output().is_some() {}
    // The first answers arrive late, all of them: kept, and no strike.
    for (peer, id) in &first {
        let bytes = h.nodes[&source].segment(*id).unwrap().clone();
        viewer.handle_input(
            now,
            Input::Segment {
                peer: *peer,
                id: *id,
                part: Part::WHOLE,
                bytes: bytes.clone(),
            },
        );
        // A copy of one we hold by now is dropped without a strike as well.
        viewer.handle_input(
            now,
            Input::Segment {
                peer: *peer,
                id: *id,
                part: Part::WHOLE,
                bytes,
            },
        );
    }
    let outputs: Vec<Output> = std::iter::from_fn(|| viewer.poll_output()).collect();
    assert!(
        !outputs.iter().any(|o| matches!(
            o,
            Output::Close {
                reason: CloseReason::Misbehaved,
                ..
            }
        )),
        "{outputs:?}"
    );
    assert_eq!(viewer.partners().count(), 2);
    for (_, id) in &first {
        assert!(viewer.segment(*id).is_some(), "{id}");
    }
}

/// A new viewer of `source`'s channel, greeted by `holders` (peers that are not in the
/// harness), each holding everything `source` published.
fn greeted_by_holders(h: &Harness, source: PeerId, holders: &[PeerAddr]) -> Exchange {
    let record = h.nodes[&source].record().unwrap().clone();
    let statements: Vec<SignedSegment> = h.nodes[&source].statements.values().copied().collect();
    let now = h.now;
    let mut viewer = Exchange::viewer(now, config(), PeerId([100; 32]), h.channel(), None);
    viewer.add_candidates(now, holders.iter().copied());
    while viewer.poll_output().is_some() {}
    let all: Vec<SegmentId> = statements.iter().map(|s| s.meta.id).collect();
    for p in holders {
        let first = vec![
            Frame::Channel(Box::new(record.clone())),
            Frame::Announce(statements.clone()),
            Frame::Have(all.clone()),
        ];
        greet(&mut viewer, now, *p, first);
    }
    viewer
}

/// A live viewer greeted by three holders (not the source) of the 10 segments so far.
fn newcomer_with_holders() -> (Harness, PeerId, Exchange, [PeerAddr; 3]) {
    let (mut h, source) = Harness::new(StreamKind::Live);
    h.publish(source, b"init");
    for n in 0..10 {
        h.publish(source, &payload(n));
    }
    let holders = [peer_addr(1), peer_addr(2), peer_addr(3)];
    let viewer = greeted_by_holders(&h, source, &holders);
    (h, source, viewer, holders)
}

/// The part requests among `outputs`, and whether a whole request for `id` is among them.
fn part_requests(outputs: &[Output], id: SegmentId) -> (Vec<(PeerId, Part)>, bool) {
    let mut parts = Vec::new();
    let mut whole = false;
    for o in outputs {
        match o {
            Output::Send {
                to,
                frame: Frame::RequestPart(i, part, _),
            } if *i == id => parts.push((*to, *part)),
            Output::Send {
                frame: Frame::Request(i, _),
                ..
            } if *i == id => whole = true,
            _ => {}
        }
    }
    (parts, whole)
}

#[test]
fn a_newcomer_fetches_its_first_segment_in_parts_from_several_partners_at_once() {
    let (h, source, mut viewer, holders) = newcomer_with_holders();
    let now = h.now;
    // It starts three segments behind the newest.
    let first = SegmentId::Media(9 - config().live_start_behind);
    let whole = h.nodes[&source].segment(first).unwrap().clone();
    let outputs: Vec<Output> = std::iter::from_fn(|| viewer.poll_output()).collect();
    let (mut asked, whole_asked) = part_requests(&outputs, first);
    assert!(!whole_asked, "{outputs:?}");
    let askers: HashSet<PeerId> = asked.iter().map(|(p, _)| *p).collect();
    assert_eq!(
        askers.len(),
        holders.len(),
        "one part of each holder at a time: {asked:?}"
    );
    // Each holder answers, and is asked for another part until all are here.
    let mut answered = 0;
    while let Some((peer, part)) = asked.pop() {
        let bytes = whole.slice(part.range(whole.len()).unwrap());
        viewer.handle_input(
            now,
            Input::Segment {
                peer,
                id: first,
                part,
                bytes,
            },
        );
        answered += 1;
        let outputs: Vec<Output> = std::iter::from_fn(|| viewer.poll_output()).collect();
        asked.extend(part_requests(&outputs, first).0);
        assert!(
            answered <= 2 * usize::from(crate::wire::MAX_PARTS),
            "{asked:?}"
        );
    }
    assert_eq!(viewer.segment(first), Some(&whole));
    assert_eq!(viewer.stats().segments_split, 1);
    assert_eq!(viewer.stats().segments_rejected, 0);
}

#[test]
fn parts_that_do_not_verify_together_cost_nobody_a_strike_and_the_segment_comes_whole() {
    let (h, source, mut viewer, holders) = newcomer_with_holders();
    let now = h.now;
    let first = SegmentId::Media(9 - config().live_start_behind);
    let whole = h.nodes[&source].segment(first).unwrap().clone();
    let liar = holders[0].id;
    let outputs: Vec<Output> = std::iter::from_fn(|| viewer.poll_output()).collect();
    let mut asked = part_requests(&outputs, first).0;
    let mut outputs = Vec::new();
    // The first copy of each part asked for is the one sent (the liar's among them).
    let mut answered = HashSet::default();
    while !asked.is_empty() {
        let (peer, part) = asked.remove(0);
        if !answered.insert(part.index) {
            continue;
        }
        let mut bytes = whole.slice(part.range(whole.len()).unwrap()).to_vec();
        if peer == liar {
            bytes[0] ^= 0xff;
        }
        viewer.handle_input(
            now,
            Input::Segment {
                peer,
                id: first,
                part,
                bytes: Bytes::from(bytes),
            },
        );
        outputs = std::iter::from_fn(|| viewer.poll_output()).collect();
        asked.extend(part_requests(&outputs, first).0);
    }
    assert!(viewer.segment(first).is_none());
    assert_eq!(viewer.stats().segments_rejected, 1);
    assert!(
        !outputs.iter().any(|o| matches!(o, Output::Close { .. })),
        "{outputs:?}"
    );
    // Asked for whole now, from one holder.
    let whole_from = outputs.iter().find_map(|o| match o {
        Output::Send {
            to,
            frame: Frame::Request(id, _),
        } if *id == first => Some(*to),
        _ => None,
    });
    let Some(from) = whole_from else {
        panic!("the segment is asked for whole: {outputs:?}");
    };
    viewer.handle_input(
        now,
        Input::Segment {
            peer: from,
            id: first,
            part: Part::WHOLE,
            bytes: whole.clone(),
        },
    );
    assert_eq!(viewer.segment(first), Some(&whole));
}

#[test]
fn a_peer_serves_the_part_asked_for_and_a_part_that_does_not_exist_is_a_violation() {
    let (mut h, source) = published_film(4);
    let id = SegmentId::Media(2);
    let whole = h.nodes[&source].segment(id).unwrap().clone();
    let now = h.now;
    let asker = peer_addr(9);
    let node = h.nodes.get_mut(&source).unwrap();
    greet(node, now, asker, Vec::new());
    while node.poll_output().is_some() {}
    let part = Part { index: 1, of: 4 };
    node.hear(now, asker.id, Frame::RequestPart(id, part, 2_000));
    let sent = std::iter::from_fn(|| node.poll_output()).find_map(|o| match o {
        Output::SendSegment {
            to,
            id: i,
            part: p,
            bytes,
            ..
        } if to == asker.id && i == id => Some((p, bytes)),
        _ => None,
    });
    assert_eq!(
        sent,
        Some((part, whole.slice(part.range(whole.len()).unwrap())))
    );
    for _ in 0..config().max_strikes {
        node.hear(
            now,
            asker.id,
            Frame::RequestPart(id, Part { index: 4, of: 4 }, 2_000),
        );
    }
    let outputs: Vec<Output> = std::iter::from_fn(|| node.poll_output()).collect();
    assert!(
        !outputs
            .iter()
            .any(|o| matches!(o, Output::SendSegment { .. })),
        "{outputs:?}"
    );
    assert!(
        outputs.iter().any(|o| matches!(o,
            Output::Close { peer, reason: CloseReason::Misbehaved } if *peer == asker.id)),
        "{outputs:?}"
    );
}

#[test]
fn a_parent_pushes_a_newcomer_nothing_older_than_its_first_segment() {
    let (mut h, source) = Harness::new(StreamKind::Live);
    h.publish(source, b"init");
    h.publish(source, &payload(0));
    let now = h.now;
    let child = peer_addr(9);
    let node = h.nodes.get_mut(&source).unwrap();
    greet(node, now, child, Vec::new());
    let subscribe = Frame::Subscribe {
        on: true,
        first: Some(2),
    };
    node.hear(now, child.id, subscribe);
    let mut pushed = Vec::new();
    for n in 1..=2u8 {
        let id = SegmentId::Media(u64::from(n));
        let bytes = Bytes::from(payload(n));
        node.publish(now, id, SEGMENT, 0, bytes, false).unwrap();
        pushed.extend(
            std::iter::from_fn(|| node.poll_output()).filter_map(|o| match o {
                Output::SendSegment { to, id, .. } if to == child.id => Some(id),
                _ => None,
            }),
        );
    }
    // Segments 0 and 1 came before the one it starts at: pushing them would delay that one.
    assert_eq!(pushed, [SegmentId::Media(2)]);
}

#[test]
fn a_peer_that_cannot_feed_a_newcomer_points_it_to_partners_with_room() {
    let (h, source) = Harness::new(StreamKind::Live);
    let record = h.nodes[&source].record().unwrap().clone();
    let now = h.now;
    // Not fed itself, this viewer can feed nobody; one of its partners has room.
    let mut node = Exchange::viewer(now, config(), PeerId([100; 32]), h.channel(), None);
    let roomy = peer_addr(1);
    let report = Frame::Report {
        upload_kbps: 8000,
        serve_kbps: 1000,
        depth: 2,
        spare: 1,
    };
    greet(
        &mut node,
        now,
        roomy,
        vec![Frame::Channel(Box::new(record)), report],
    );
    let asker = peer_addr(2);
    greet(&mut node, now, asker, Vec::new());
    while node.poll_output().is_some() {}
    let subscribe = Frame::Subscribe {
        on: true,
        first: None,
    };
    node.hear(now, asker.id, subscribe);
    let to_asker: Vec<Frame> = std::iter::from_fn(|| node.poll_output())
        .filter_map(|o| match o {
            Output::Send { to, frame } if to == asker.id => Some(frame),
            _ => None,
        })
        .collect();
    assert!(to_asker.contains(&Frame::Feed(false)), "{to_asker:?}");
    assert!(
        to_asker
            .iter()
            .any(|f| matches!(f, Frame::Peers(list) if list.iter().any(|p| p.id == roomy.id))),
        "{to_asker:?}"
    );
}
