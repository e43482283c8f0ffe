//! The segment exchange: a sans-IO state machine that moves verified segments between peers.
//!
//! One [`Exchange`] runs per peer. It never touches a socket, a clock or a thread: the driver
//! (the QUIC node in [`crate::node`], or `sim`) feeds it inputs and carries out its outputs.
//!
//! # Call contract
//!
//! - Inputs: [`Exchange::handle_input`] for everything that arrives (a connection came up or
//!   went down, a control frame, a complete segment stream), [`Exchange::publish`] on the source
//!   when ingest produced a segment, and [`Exchange::handle_timeout`] when the instant returned
//!   by [`Exchange::poll_timeout`] has passed. Every call takes `now`.
//! - Outputs: after any input, call [`Exchange::poll_output`] until it returns `None` and carry
//!   out each [`Output`]: send a frame, send a segment on its own stream, dial or close a peer,
//!   or take note of an [`Event`]. Then re-read [`Exchange::poll_timeout`].
//! - Before reading a segment stream, ask [`Exchange::expected_len`] with the segment and the
//!   part its header names: the exchange only accepts segments (and parts) it requested from
//!   that peer, and never more bytes than the broadcaster signed.
//!
//! # Protocol: a feeding tree inside a mesh
//!
//! Both sides of a new connection send `Hello`; the side that knows the channel sends its signed
//! record, a `Report` (measured upload, depth in the feeding tree, spare room), its recent
//! statements, what it holds (`Have`) and a sample of other peers. Viewers verify every
//! statement against the broadcaster's key and forward new ones to their partners.
//!
//! - Live, each viewer subscribes to a parent nearest the source with room, which pushes every
//!   segment as soon as it has it (`tree`); a viewer nobody feeds, or whose parent is late,
//!   requests missing segments itself, deadline first, from the holder expected to deliver
//!   soonest, the source only as a last resort (`schedule`). On demand there is no tree.
//! - The segment playback waits for (a newcomer's first) comes in parts from several holders
//!   at once (`RequestPart`, `parts`), and the new parent pushes it whole too.
//! - The optimizer's plan, when a driver passes it on ([`Exchange::apply_hint`]), names the
//!   parents to prefer and the children to make room for (`hints`).
//! - Uploads wait in a queue, pushes before requests, earliest deadline first (a request by
//!   the deadline its requester sends with it); a request that would wait too long, or on
//!   demand arrive after its requester plays it, is answered `Busy` at once (`upload`). A viewer that feeds others
//!   serves requests one at a time, paced at what its uplink has beyond its children's share.
//!   Upload capacity and partners' delivery rates are measured (`capacity`).
//! - Gossip stays small: a statement or `Have` goes only to partners not known to hold it;
//!   statements never go to the source, nor, live, `Have`s; and live, nothing goes to a viewer
//!   whose parent feeds it in time (it asked for `Quiet`) but its parent's statements and
//!   reports (`gossip`).
//! - A live viewer nobody can feed lets a useless partner go each second to meet others
//!   (`explore`). On demand, a viewer no partner can serve asks its partners who holds what it
//!   needs next (`Find`, answered by `Holders`) and the overlay's holder index
//!   ([`Output::LookupHolders`], answered by [`Exchange::add_holders`]; what it lists there is
//!   [`Exchange::held_ranges`]), and makes room for the holders named; a full peer of a film
//!   lets its longest-idle partner go for a newcomer (`finding`).
//! - Partners, segments and what each partner holds sit in compact tables (`maps`).
//!
//! Each segment's length and BLAKE3 hash are verified before it is stored, announced with `Have`
//! and served. A partner that sends a forged statement or bytes that fail verification gets a
//! strike; at [`ExchangeConfig::max_strikes`] it is disconnected. Nothing unverified is ever
//! stored, served or forwarded.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use tracing::{debug, warn};

use crate::identity::{ChannelId, Keypair, PeerId};
use crate::segment::{
    IntegrityError, SegmentId, SegmentMeta, SignedChannel, SignedSegment, StreamKind, Strict,
    Verifier,
};
use crate::wire::{Frame, Part, PeerAddr, MAX_LIST_LEN};

mod capacity;
mod finding;
mod gossip;
mod hints;
mod maps;
mod parts;
mod tree;
mod upload;

use capacity::{DeliveryRate, UploadMeter};
pub use finding::{HOLDER_REFRESH, HOLDER_TTL, MAX_HELD_RANGES, MAX_INDEX_HOLDERS};
use gossip::{QUIET_ALERT_S, QUIET_RETRY};
pub use hints::{Hint, HintedUpstream, ParentChoice, Upstream};
use maps::{id_prefix, HaveMap, PartnerMap, SegmentMap};
use parts::PartFetch;
use tree::{FIRST_CLIMB, MAX_DEPTH, MAX_PARENT_MISSES, NO_DEPTH};
use upload::{Queued, Upload};

/// Tuning of the exchange.
#[derive(Debug, Clone)]
pub struct ExchangeConfig {
    /// Viewers dial peers until they have this many partners. 10 rather than 6: more
    /// partners are more candidates for a parent with room and more holders to repair from
    /// (`sim`, means over seeds: `live-1k` 0.989 → 0.993, `live-churn` 0.960 → 0.976).
    pub max_partners: usize,
    /// The most partners a peer keeps, inbound ones included. A peer that is full answers a
    /// newcomer with other peers to try and closes the connection. About three times
    /// `max_partners`, as each peer is dialled about as often as it dials: at 24 with 10
    /// partners, `sim`'s live p95 latency and startup were 0.1–0.4 s later.
    pub partner_limit: usize,
    /// How many partners hear of a newcomer (introductions are bounded so that a peer with
    /// many partners does not send a message to all of them per arrival).
    pub introductions: usize,
    /// Requests outstanding at one partner at a time.
    pub max_inflight_per_peer: usize,
    /// Segments this peer sends at once; a request beyond that is answered `Missing` at once,
    /// so the requester asks someone else instead of waiting behind a queue that would make
    /// every transfer late.
    pub upload_slots: usize,
    /// A request not answered within this time is sent elsewhere.
    pub request_timeout: Duration,
    /// A live viewer starts this many segments behind the newest one announced.
    pub live_start_behind: u64,
    /// A live viewer that falls further behind the newest segment than this skips ahead, as a
    /// live player does: segments that old are past their playback deadline anyway.
    pub live_max_lag: u64,
    /// Media segments a live peer keeps in memory, and statements it keeps (older ones are
    /// evicted). Live viewers play within `live_max_lag` of the newest segment, so nobody asks
    /// for older ones; 30 segments kept the same `sim` results as 120 in `live-1k` (seeds 21
    /// and 8), `flash-crowd` and `live-churn` seed 24 (seed 23 diverged: 0.9597 against 0.9609)
    /// with a quarter of the memory.
    pub live_window: u64,
    /// How far past the earliest missing segment a viewer requests (live or VOD).
    pub lookahead: u64,
    /// Protocol violations tolerated from one partner before it is disconnected.
    pub max_strikes: u32,
    /// How often the exchange looks for new partners.
    pub maintenance_interval: Duration,
    /// How statements and segment bytes are checked.
    pub verifier: Arc<dyn Verifier>,
    /// A live viewer that heard of no new segment for this long dials the source again.
    pub stall_timeout: Duration,
    /// Whether this peer tells others about its partners (a CDN-like source does not).
    pub share_peers: bool,
    /// A live player's target latency: it plays each segment this long after it was
    /// announced, so that is the segment's deadline here.
    pub target_latency: Duration,
    /// The fewest peers the source feeds directly (more as its measured upload allows).
    pub source_min_children: usize,
    /// The most peers this one feeds, whatever its upload (e.g. on a metered link).
    pub max_children: usize,
    /// This peer's upload capacity in bit/s until it has measured its own.
    pub upload_guess_bps: f64,
    /// What this peer's uplink carries at most, if the user said so: measurements never go
    /// above it.
    pub upload_limit_bps: Option<f64>,
    /// An HTTP origin holds the stream too (a CDN, as SmoothCache had): the last resort for a
    /// segment no peer can deliver in time, instead of the broadcaster.
    pub origin: bool,
    /// How a viewer picks its parent in the feeding tree (the random choice is a baseline for
    /// measurements).
    pub parent_choice: ParentChoice,
}

impl Default for ExchangeConfig {
    fn default() -> Self {
        Self {
            max_partners: 10,
            partner_limit: 32,
            introductions: 6,
            max_inflight_per_peer: 4,
            upload_slots: 4,
            request_timeout: Duration::from_secs(3),
            live_start_behind: 3,
            live_max_lag: 6,
            live_window: 30,
            lookahead: 12,
            max_strikes: 3,
            maintenance_interval: Duration::from_secs(1),
            verifier: Arc::new(Strict),
            stall_timeout: Duration::from_secs(5),
            share_peers: true,
            target_latency: Duration::from_secs(3),
            source_min_children: 2,
            max_children: usize::MAX,
            upload_guess_bps: 2e6,
            upload_limit_bps: None,
            origin: false,
            parent_choice: ParentChoice::Nearest,
        }
    }
}

/// Something that happened to the exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A connection to `peer` is up (we dialled it or it dialled us).
    Connected {
        /// The authenticated peer.
        peer: PeerId,
    },
    /// The connection to `peer` is gone, or a dial to it failed.
    Disconnected {
        /// The peer.
        peer: PeerId,
    },
    /// A control frame arrived from `peer`.
    Frame {
        /// The sender.
        peer: PeerId,
        /// The frame.
        frame: Frame,
    },
    /// A complete segment stream arrived from `peer`.
    Segment {
        /// The sender.
        peer: PeerId,
        /// The segment named in the stream header.
        id: SegmentId,
        /// The part of it named in the stream header.
        part: Part,
        /// The stream's payload.
        bytes: Bytes,
    },
    /// The header of a segment stream from `peer` arrived (after [`Exchange::expected_len`]
    /// accepted it); the bytes are on their way. The exchange may forward them to the peers it
    /// feeds as they arrive ([`Output::ForwardSegment`]).
    SegmentArriving {
        /// The sender.
        peer: PeerId,
        /// The segment named in the stream header.
        id: SegmentId,
    },
    /// A segment this peer sent (after [`Output::SendSegment`] or [`Output::ForwardSegment`])
    /// was delivered or abandoned: its upload slot is free again.
    SegmentSent {
        /// The receiver.
        peer: PeerId,
        /// The segment.
        id: SegmentId,
    },
    /// The origin answered [`Output::FetchOrigin`] with these bytes.
    OriginSegment {
        /// The segment asked for.
        id: SegmentId,
        /// The response body.
        bytes: Bytes,
    },
    /// The origin could not deliver the segment (an error, a timeout, a body too long).
    OriginFailed {
        /// The segment asked for.
        id: SegmentId,
    },
    /// A segment stream from `peer` broke off or was refused before completing.
    SegmentFailed {
        /// The sender.
        peer: PeerId,
        /// The segment it was carrying.
        id: SegmentId,
    },
}

/// Something the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send a control frame.
    Send {
        /// The receiver.
        to: PeerId,
        /// The frame.
        frame: Frame,
    },
    /// Send a segment (or a part of one) on a stream of its own.
    SendSegment {
        /// The receiver.
        to: PeerId,
        /// Which segment.
        id: SegmentId,
        /// Which part of it, for the stream header.
        part: Part,
        /// Its verified bytes (the part's).
        bytes: Bytes,
        /// Send it at most this fast (kbit/s): a request served beside pushes to the peers we
        /// feed, paced so that it takes only what they leave of the uplink.
        pace_kbps: Option<u32>,
    },
    /// Send a segment on a stream of its own while it is still arriving from `from` (after
    /// [`Input::SegmentArriving`]): pass its bytes on as they come, and end the stream as
    /// [`Output::EndForwards`] says (cut-through: a segment crosses each hop of the feeding
    /// tree behind its first bytes, not behind its last).
    ForwardSegment {
        /// The receiver.
        to: PeerId,
        /// Which segment.
        id: SegmentId,
        /// Who is sending it to us.
        from: PeerId,
    },
    /// The segment `id` from `from` has arrived whole and was checked (`verified`), or broke
    /// off (`verified: false`): finish every stream forwarding it, or reset them, so that no
    /// receiver ever completes a stream of unverified bytes.
    EndForwards {
        /// The peer it came from.
        from: PeerId,
        /// Which segment.
        id: SegmentId,
        /// Whether its bytes verified.
        verified: bool,
    },
    /// Fetch a segment from the HTTP origin (see [`ExchangeConfig::origin`]); answer with
    /// [`Input::OriginSegment`] (at most the signed length: [`Exchange::origin_len`]) or
    /// [`Input::OriginFailed`].
    FetchOrigin {
        /// The segment.
        id: SegmentId,
    },
    /// On demand: look up in the overlay's holder index who holds media segment `seq`
    /// (`tracker_overlay::swarm::holders`), and hand the peers whose ranges cover it to
    /// [`Exchange::add_holders`]. Asked when no partner can serve what playback needs next.
    LookupHolders {
        /// The segment.
        seq: u64,
    },
    /// Open a connection to a peer.
    Dial(PeerAddr),
    /// Close the connection to a peer, after the frames already sent to it.
    Close {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: CloseReason,
    },
    /// Something the application may want to know.
    Event(Event),
}

/// Why the exchange closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// This peer has as many partners as it takes; it sent the newcomer others to try.
    Full,
    /// The peer follows another channel.
    WrongChannel,
    /// The peer broke the protocol too often (forged statements, corrupt segments, …).
    Misbehaved,
    /// Nobody feeds this peer and no partner has room to: it lets one go to meet others.
    Exploring,
    /// On demand, a full peer lets go of a partner it exchanged no segment with for a while,
    /// to take a newcomer.
    Idle,
}

impl CloseReason {
    /// A short text for logs and close frames.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full: try the peers sent",
            Self::WrongChannel => "wrong channel",
            Self::Misbehaved => "too many protocol violations",
            Self::Exploring => "looking for a peer with room to feed us",
            Self::Idle => "making room: no segment exchanged for a while",
        }
    }
}

/// What the exchange reports to its application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The channel record arrived and verified.
    ChannelVerified(Box<SignedChannel>),
    /// A verified statement announced a media segment (it may not be here yet).
    Announced {
        /// The segment.
        seq: u64,
        /// Its playback duration.
        duration: Duration,
    },
    /// A segment was verified and stored (or published, at the source).
    Stored {
        /// The segment.
        id: SegmentId,
        /// Its statement.
        meta: SegmentMeta,
        /// Its bytes.
        bytes: Bytes,
        /// Who sent it; `None` when this peer published it or it came from the origin.
        from: Option<PeerId>,
        /// It came from the HTTP origin.
        origin: bool,
    },
    /// The broadcaster marked `last` as the final segment.
    Ended {
        /// The final segment number.
        last: u64,
    },
    /// Media segments before `seq` left the live window.
    Evicted {
        /// The first segment still kept.
        seq: u64,
    },
    /// A partner sent a statement that failed verification; it was dropped.
    StatementRejected {
        /// The sender.
        peer: PeerId,
        /// The segment it claimed to describe.
        id: Option<SegmentId>,
        /// Why.
        error: IntegrityError,
    },
    /// A partner sent segment bytes that failed verification; they were dropped.
    SegmentRejected {
        /// The sender.
        peer: PeerId,
        /// The segment.
        id: SegmentId,
        /// Why.
        error: IntegrityError,
    },
}

/// Counters kept by the exchange (QoS inputs and protocol counters).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExchangeStats {
    /// Segments verified and stored (received or published).
    pub segments_stored: u64,
    /// Payload bytes received from the broadcaster's peer.
    pub bytes_from_source: u64,
    /// Payload bytes received from other viewers.
    pub bytes_from_peers: u64,
    /// Payload bytes sent to partners.
    pub bytes_uploaded: u64,
    /// Segments whose bytes failed verification.
    pub segments_rejected: u64,
    /// Statements whose signature failed.
    pub statements_rejected: u64,
    /// Requests that timed out or failed and were sent again.
    pub requests_retried: u64,
    /// Requests answered by `Missing`.
    pub requests_missed: u64,
    /// Requests this peer turned down because all its upload slots were busy.
    pub requests_refused: u64,
    /// Requests partners turned down because their upload slots were busy.
    pub requests_busy: u64,
    /// Segments pushed to the peers this one feeds.
    pub segments_pushed: u64,
    /// Segments received from our parent's pushes.
    pub pushes_received: u64,
    /// Segments passed on to a child while they were still arriving (cut-through).
    pub segments_forwarded: u64,
    /// Payload bytes received from the HTTP origin.
    pub bytes_from_origin: u64,
    /// Plan hints taken (see [`Exchange::apply_hint`]).
    pub hints_applied: u64,
    /// Segments fetched in parts from several partners at once.
    pub segments_split: u64,
}

/// A partner as the application may display it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartnerInfo {
    /// The partner.
    pub peer: PeerId,
    /// Where it listens, if it said.
    pub listen: Option<SocketAddr>,
    /// True if it is the channel's broadcaster.
    pub is_source: bool,
    /// Requests outstanding at it.
    pub inflight: usize,
    /// Protocol violations seen from it.
    pub strikes: u32,
}

#[derive(Debug)]
struct Partner {
    listen: Option<SocketAddr>,
    greeted: bool,
    have: HaveMap,
    /// Statements it is known to hold (it sent them, or we did, or it holds the segment):
    /// not announced to it again.
    told: HaveMap,
    inflight: usize,
    strikes: u32,
    /// It answered `Busy`: not asked again before this instant.
    busy_until: Option<Instant>,
    /// Reached through a relay: asked only when no direct partner can serve.
    relayed: bool,
    /// How fast it delivered to us.
    rate: DeliveryRate,
    /// The upload capacity it reported.
    upload_kbps: Option<u32>,
    /// The rate it said it would serve a request at.
    serve_kbps: Option<u32>,
    /// Its depth in the feeding tree, as it reported.
    depth: u8,
    /// How many more peers it said it would feed.
    spare: u8,
    /// It refused to feed us: not asked again before this instant.
    refused_until: Option<Instant>,
    /// When a frame from it last arrived.
    last_heard: Option<Instant>,
    /// When it connected, or last asked us for a segment or we asked it.
    last_used: Instant,
    /// It asked for no statements or `Have`s (`Quiet`): its parent feeds it.
    quiet: bool,
    /// We feed it from this segment on (its first, when it subscribed as a newcomer).
    fed_from: u64,
}

impl Partner {
    fn new(now: Instant) -> Self {
        Self {
            last_used: now,
            quiet: false,
            listen: None,
            greeted: false,
            have: HaveMap::default(),
            told: HaveMap::default(),
            inflight: 0,
            strikes: 0,
            busy_until: None,
            relayed: false,
            rate: DeliveryRate::default(),
            upload_kbps: None,
            serve_kbps: None,
            depth: NO_DEPTH,
            spare: 0,
            refused_until: None,
            last_heard: None,
            fed_from: 0,
        }
    }

    /// The rate at which we expect it to deliver one more segment: what we measured, but
    /// no more than it said it would serve at (a peer feeding others serves requests with
    /// what they leave), else a guess.
    fn expected_bps(&self, guess: f64) -> f64 {
        let serve = self.serve_kbps.map(|k| f64::from(k) * 1000.0);
        let measured = self.rate.bps();
        match (measured, serve) {
            (Some(m), Some(s)) => m.min(s),
            (Some(r), None) | (None, Some(r)) => r,
            (None, None) => guess,
        }
        .max(1.0)
    }
}

/// A segment stream under way to us.
#[derive(Debug, Clone, Copy)]
struct Arrival {
    from: PeerId,
    since: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    peer: PeerId,
    /// When it was asked for.
    sent: Instant,
    /// When it is asked elsewhere if it has not arrived.
    deadline: Instant,
}

/// The segment exchange of one peer. See the module docs for the call contract.
#[derive(Debug)]
pub struct Exchange {
    config: ExchangeConfig,
    me: PeerId,
    channel: ChannelId,
    listen: Option<SocketAddr>,
    /// Present on the broadcaster only.
    key: Option<Keypair>,
    record: Option<SignedChannel>,
    statements: SegmentMap<SignedSegment>,
    /// When each statement reached this peer.
    seen: SegmentMap<Instant>,
    /// The earliest instant at which a deferred request becomes due.
    next_schedule: Option<Instant>,
    store: SegmentMap<Bytes>,
    /// Ordered, so that the exchange's outputs come in the same order in every run.
    partners: PartnerMap,
    /// Peers we heard of and may dial, with their listening addresses.
    candidates: HashMap<PeerId, SocketAddr>,
    dialing: HashSet<PeerId>,
    /// Candidates not to dial again before the given instant (they just failed or left us).
    backoff: HashMap<PeerId, Instant>,
    pending: HashMap<SegmentId, Pending>,
    /// Segments fetched in parts (see `parts`), instead of whole.
    parts: HashMap<SegmentId, PartFetch>,
    /// The last segment whose parts failed verification together: fetched whole.
    split_failed: Option<SegmentId>,
    /// Segments asked of the HTTP origin, and when the fetch is given up.
    origin_pending: HashMap<SegmentId, Instant>,
    /// The origin failed: not asked again before this instant (the broadcaster is the last
    /// resort meanwhile).
    origin_paused_until: Option<Instant>,
    /// Segments on their way to us that we do not hold yet, and who sends each: pushes to the
    /// peers we feed forward them as they arrive.
    arriving: HashMap<SegmentId, Arrival>,
    /// Segments being sent, to whom (each holds an upload slot).
    uploads: HashMap<(PeerId, SegmentId), Upload>,
    /// When the uploads' sharing was last accounted.
    uploads_accounted: Option<Instant>,
    /// Uploads waiting for a slot: pushes to the peers we feed first, then accepted
    /// requests, each earliest deadline first.
    upload_queue: std::collections::BTreeSet<Queued>,
    /// Arrival counter for `upload_queue`.
    queued_total: u64,
    /// Our own upload capacity, measured.
    meter: UploadMeter,
    /// What we last reported to partners, and when.
    reported: Option<(Instant, u32)>,
    /// The tree depth and spare room we last reported.
    reported_tree: (u8, u8),
    /// The partner that feeds us every segment it gets (pushes it).
    parent: Option<PeerId>,
    /// The first segment our parent pushes: the newest we knew of when it took us (it pushes
    /// no backlog).
    pushed_from: u64,
    /// The partner we asked to feed us, and when.
    asked_parent: Option<(PeerId, Instant)>,
    /// The partners we feed.
    children: Vec<PeerId>,
    /// Peers we were last referred to for a parent.
    referred: Vec<PeerId>,
    /// The optimizer's plan for this peer, if one came (`hints`).
    hint: Option<Hint>,
    /// Segments in a row our parent held but we had to fetch elsewhere.
    parent_misses: u32,
    /// On demand: when playback started (or last sought) and from which segment.
    vod_anchor: Option<(Instant, u64)>,
    /// Climbing the tree: when we may try next, how long we wait after that, and until when
    /// referrals count as part of the climb.
    next_climb: Instant,
    climb_backoff: Duration,
    /// Partners let go to meet others (see `explore`): varies which one goes next.
    explored: u64,
    /// When `explore` may let the next partner go.
    next_explore: Option<Instant>,
    /// On demand: the segment we last asked partners to find holders of, how many times in
    /// a row, and when we may ask next (`Find`).
    finding: Option<(SegmentId, u32)>,
    next_find: Option<Instant>,
    /// On demand: peers named as holders of the segment we need next, to dial first.
    found: Vec<PeerId>,
    /// Live: segments in a row our parent pushed to us, and which parent.
    fed_streak: (Option<PeerId>, u32),
    /// We asked our partners to announce nothing to us (`Quiet`).
    quiet: bool,
    /// How often the candidates were thinned out (see `remember`).
    forgotten_rounds: u64,
    climbing_until: Option<Instant>,
    /// The first media segment this viewer wants.
    start: Option<u64>,
    /// VOD: the segment the player asked for last; fetching continues from there.
    playhead: Option<u64>,
    /// No media segment before this one (from the start or the playhead) is missing.
    cursor: u64,
    last: Option<u64>,
    /// Live: media segments before this one were evicted and are not wanted again.
    floor: u64,
    /// When the last new statement arrived.
    last_fresh: Option<Instant>,
    next_maintenance: Instant,
    /// Reused by each round of requests.
    wanted_buf: Vec<SegmentId>,
    outputs: VecDeque<Output>,
    stats: ExchangeStats,
}

impl Exchange {
    /// The exchange of the channel's broadcaster: it publishes and serves, and never requests.
    pub fn source(
        now: Instant,
        config: ExchangeConfig,
        key: Keypair,
        record: SignedChannel,
        listen: Option<SocketAddr>,
    ) -> Self {
        let mut exchange = Self::new(now, config, key.peer_id(), record.record.channel_id());
        exchange.listen = listen;
        exchange.record = Some(record);
        exchange.key = Some(key);
        exchange
    }

    /// The exchange of a viewer of `channel`.
    pub fn viewer(
        now: Instant,
        config: ExchangeConfig,
        me: PeerId,
        channel: ChannelId,
        listen: Option<SocketAddr>,
    ) -> Self {
        let mut exchange = Self::new(now, config, me, channel);
        exchange.listen = listen;
        exchange
    }

    fn new(now: Instant, config: ExchangeConfig, me: PeerId, channel: ChannelId) -> Self {
        let meter = UploadMeter::new(config.upload_guess_bps, config.upload_limit_bps);
        Self {
            next_maintenance: now + config.maintenance_interval,
            config,
            me,
            channel,
            listen: None,
            key: None,
            record: None,
            statements: SegmentMap::default(),
            seen: SegmentMap::default(),
            next_schedule: None,
            store: SegmentMap::default(),
            partners: PartnerMap::default(),
            candidates: HashMap::default(),
            dialing: HashSet::default(),
            backoff: HashMap::default(),
            pending: HashMap::default(),
            parts: HashMap::default(),
            split_failed: None,
            origin_pending: HashMap::default(),
            origin_paused_until: None,
            arriving: HashMap::default(),
            uploads: HashMap::default(),
            uploads_accounted: None,
            upload_queue: std::collections::BTreeSet::new(),
            queued_total: 0,
            meter,
            reported: None,
            reported_tree: (NO_DEPTH, 0),
            parent: None,
            pushed_from: 0,
            asked_parent: None,
            children: Vec::new(),
            referred: Vec::new(),
            hint: None,
            parent_misses: 0,
            vod_anchor: None,
            next_climb: now + FIRST_CLIMB,
            climb_backoff: FIRST_CLIMB,
            explored: 0,
            next_explore: None,
            finding: None,
            next_find: None,
            found: Vec::new(),
            fed_streak: (None, 0),
            quiet: false,
            forgotten_rounds: 0,
            climbing_until: None,
            start: None,
            playhead: None,
            cursor: 0,
            last: None,
            floor: 0,
            last_fresh: None,
            wanted_buf: Vec::new(),
            outputs: VecDeque::new(),
            stats: ExchangeStats::default(),
        }
    }

    /// Peers to try when the exchange has no partners yet: the bootstrap peers.
    pub fn add_candidates(&mut self, now: Instant, peers: impl IntoIterator<Item = PeerAddr>) {
        for peer in peers {
            if peer.id != self.me {
                self.remember(peer.id, peer.addr);
                // Asked for explicitly: worth a dial now, whatever happened before.
                self.backoff.remove(&peer.id);
            }
        }
        self.maintain(now);
    }

    /// Feeds one input.
    pub fn handle_input(&mut self, now: Instant, input: Input) {
        // Whether the input may have made a request of ours possible. Most inputs are a
        // partner's announcement of something we already know of or already asked for; looking
        // for requests after those would find none, and they are most of the traffic. (Time
        // alone makes requests possible only at `next_schedule`, a timer of its own.)
        let may_request = match input {
            Input::Connected { peer } => {
                self.on_connected(now, peer);
                true
            }
            Input::Disconnected { peer } => {
                self.on_disconnected(now, peer);
                true
            }
            Input::Frame { peer, frame } => self.on_frame(now, peer, frame),
            Input::Segment {
                peer,
                id,
                part,
                bytes,
            } => {
                if part.is_whole() {
                    self.on_segment(now, peer, id, bytes);
                } else {
                    self.take_part(now, peer, id, part, bytes);
                }
                true
            }
            Input::SegmentArriving { peer, id } => {
                self.on_arriving(now, peer, id);
                false
            }
            Input::SegmentSent { peer, id } => {
                // Serving others cannot make a request of ours possible.
                self.account_sharing(now);
                // A forward went at its arrival's pace, a paced request at ours: neither says
                // what the uplink can do.
                let sample = self.uploads.remove(&(peer, id));
                if let Some(up) = sample.filter(|u| !u.forwarded && !u.paced) {
                    let took = now.saturating_duration_since(up.started).as_secs_f64();
                    let sharing = up.shared / took.max(1e-3);
                    self.meter.completed(now, up.started, up.bytes, sharing);
                }
                self.start_uploads(now);
                false
            }
            Input::OriginSegment { id, bytes } => {
                self.on_origin_segment(now, id, bytes);
                true
            }
            Input::OriginFailed { id } => {
                if self.origin_pending.remove(&id).is_some() {
                    debug!(%id, "origin fetch failed");
                    self.stats.requests_retried += 1;
                    self.origin_paused_until = Some(now + ORIGIN_BACKOFF);
                }
                true
            }
            Input::SegmentFailed { peer, id } => {
                self.end_forwards(peer, id, false);
                self.part_failed(peer, id);
                if self.take_pending(peer, id) {
                    self.stats.requests_retried += 1;
                    if let Some(partner) = self.partners.get_mut(&peer) {
                        partner.have.remove(id);
                    }
                }
                true
            }
        };
        if may_request {
            self.schedule(now);
        }
    }

    /// Publishes a segment (broadcaster only): signs its statement, stores it, announces it.
    pub fn publish(
        &mut self,
        now: Instant,
        id: SegmentId,
        duration: Duration,
        created_unix_ms: u64,
        bytes: Bytes,
        last: bool,
    ) -> Result<(), PublishError> {
        let key = self.key.as_ref().ok_or(PublishError::NotTheSource)?;
        let session = self.record.as_ref().map_or(0, |r| r.record.started_unix_ms);
        let mut meta =
            SegmentMeta::describe(self.channel, session, id, duration, created_unix_ms, &bytes)?;
        meta.last = last;
        let signed = meta.sign(key);
        self.accept_statement(now, signed);
        self.announce(&[signed]);
        if !meta.is_end_marker() {
            self.store_segment(id, meta, bytes, None);
            self.announce_held(id);
            self.push_children(now, id);
        }
        self.schedule(now);
        Ok(())
    }

    /// Tells the exchange whether the connection to `peer` goes through a relay (the driver
    /// knows, after [`Input::Connected`]): a relayed partner is asked for a segment only when no
    /// direct partner holds it, so that the swarm prefers direct paths and spares relays.
    pub fn set_relayed(&mut self, peer: PeerId, relayed: bool) {
        if let Some(p) = self.partners.get_mut(&peer) {
            p.relayed = relayed;
        }
    }

    /// Tells a VOD viewer where playback is (the player asked for segment `seq`, e.g. after
    /// a seek): it fetches from there on, earliest first.
    pub fn set_playhead(&mut self, now: Instant, seq: u64) {
        if self.is_live() || self.playhead == Some(seq) {
            return;
        }
        self.playhead = Some(seq);
        self.cursor = seq;
        self.vod_anchor = Some((now, seq));
        self.schedule(now);
    }

    /// Handles timer expiry. Call when `now` reaches [`Exchange::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut expired: Vec<(SegmentId, PeerId)> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, p)| (*id, p.peer))
            .collect();
        expired.sort();
        // On demand, the source holds the whole film for good.
        let source = self.source_peer().filter(|_| !self.is_live());
        for (id, peer) in expired {
            debug!(peer = %peer.short(), %id, "request timed out");
            self.take_pending(peer, id);
            self.stats.requests_retried += 1;
            if let Some(partner) = self.partners.get_mut(&peer) {
                // A partner that did not deliver in time is asked for other segments first.
                // A film's source still holds it: forgetting that would leave a segment only
                // it holds (a part nobody watched yet) never asked for again.
                if Some(peer) != source {
                    partner.have.remove(id);
                }
                partner.rate.penalize();
            }
        }
        self.expire_parts(now);
        let before = self.origin_pending.len();
        self.origin_pending.retain(|id, deadline| {
            let keep = *deadline > now;
            if !keep {
                debug!(%id, "origin fetch timed out");
            }
            keep
        });
        if self.origin_pending.len() < before {
            self.origin_paused_until = Some(now + ORIGIN_BACKOFF);
        }
        if now >= self.next_maintenance {
            self.next_maintenance = now + self.config.maintenance_interval;
            self.expire_arrivals(now);
            self.maintain(now);
        }
        self.schedule(now);
    }

    /// The next instant at which [`Exchange::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let request = self.pending.values().map(|p| p.deadline).min();
        let part = self
            .parts
            .values()
            .filter_map(PartFetch::next_deadline)
            .min();
        let origin = self.origin_pending.values().min().copied();
        [
            request,
            part,
            origin,
            self.next_schedule,
            Some(self.next_maintenance),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The next thing to do, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// How many payload bytes to accept for part `part` of `id` from `peer`, or `None` if we
    /// did not ask that peer for it (the stream must then be refused).
    pub fn expected_len(&self, peer: &PeerId, id: SegmentId, part: Part) -> Option<usize> {
        if !part.is_whole() {
            return self.expected_part_len(peer, id, part);
        }
        let asked = self.pending.get(&id).map(|p| p.peer == *peer);
        // Our parent pushes what we do not hold (a request of ours elsewhere gives way).
        let pushed = self.parent == Some(*peer) && !self.store.contains_key(&id);
        // A stream that started while it was expected is read to its end (a parent we just
        // left may still be sending).
        if asked != Some(true) && !pushed && !self.is_arriving(id, *peer) {
            return None;
        }
        self.statements.get(&id).map(|s| s.meta.len as usize)
    }

    /// How many bytes to accept from the origin for `id`, or `None` if we did not ask it
    /// (the response must then be dropped).
    pub fn origin_len(&self, id: SegmentId) -> Option<usize> {
        if !self.origin_pending.contains_key(&id) {
            return None;
        }
        self.statements.get(&id).map(|s| s.meta.len as usize)
    }

    /// This peer's place in the feeding tree: its parent, how many peers it feeds, its depth
    /// (0 at the source, 255 when not fed).
    pub fn tree(&self) -> (Option<PeerId>, usize, u8) {
        (self.parent, self.children.len(), self.depth())
    }

    /// This peer's measured upload capacity in bit/s, and the uploads under way and queued.
    pub fn upload_state(&self) -> (f64, usize, usize) {
        (
            self.meter.estimate_bps(),
            self.uploads.len(),
            self.upload_queue.len(),
        )
    }

    /// This peer's id.
    pub fn me(&self) -> PeerId {
        self.me
    }

    /// The channel.
    pub fn channel(&self) -> ChannelId {
        self.channel
    }

    /// The verified channel record, once known.
    pub fn record(&self) -> Option<&SignedChannel> {
        self.record.as_ref()
    }

    /// True on the broadcaster's exchange.
    pub fn is_source(&self) -> bool {
        self.key.is_some()
    }

    /// The counters.
    pub fn stats(&self) -> &ExchangeStats {
        &self.stats
    }

    /// The current partners.
    pub fn partners(&self) -> impl Iterator<Item = PartnerInfo> + '_ {
        let source = self.source_peer();
        self.partners.iter().map(move |(id, p)| PartnerInfo {
            peer: *id,
            listen: p.listen,
            is_source: Some(*id) == source,
            inflight: p.inflight,
            strikes: p.strikes,
        })
    }

    /// The verified bytes of a segment, if held.
    pub fn segment(&self, id: SegmentId) -> Option<&Bytes> {
        self.store.get(&id)
    }

    /// The final media segment, once the broadcaster has marked one.
    pub fn last(&self) -> Option<u64> {
        self.last
    }

    /// The newest media segment announced, if any.
    pub fn newest(&self) -> Option<u64> {
        self.statements
            .values()
            .rev()
            .find(|s| !s.meta.is_end_marker())
            .and_then(|s| match s.meta.id {
                SegmentId::Media(n) => Some(n),
                SegmentId::Init => None,
            })
    }

    fn source_peer(&self) -> Option<PeerId> {
        self.record.as_ref().map(|r| r.record.broadcaster.peer_id())
    }

    fn on_connected(&mut self, now: Instant, peer: PeerId) {
        self.dialing.remove(&peer);
        if self.partners.contains_key(&peer) {
            return;
        }
        // A peer the plan has us feed gets in even when we are full (`hints`); on demand, in
        // place of one we have not exchanged a segment with for a while.
        let limit = self.partner_limit();
        if self.partners.len() >= limit && !self.hinted_downstream(&peer) {
            self.let_idle_go(now);
        }
        if self.partners.len() >= limit && !self.hinted_downstream(&peer) {
            // Full: point the newcomer elsewhere, then let it go.
            self.send(
                peer,
                Frame::Hello {
                    channel: self.channel,
                    listen: self.listen,
                },
            );
            // The peers we feed first: a newcomer finds its place in the feeding tree below.
            let mut others = self.referrals(peer);
            for p in self.partner_sample(peer, 16) {
                if others.len() < 16 && !others.contains(&p) {
                    others.push(p);
                }
            }
            if !others.is_empty() {
                self.send(peer, Frame::Peers(others));
            }
            self.outputs.push_back(Output::Close {
                peer,
                reason: CloseReason::Full,
            });
            return;
        }
        self.partners.insert(peer, Partner::new(now));
        self.send(
            peer,
            Frame::Hello {
                channel: self.channel,
                listen: self.listen,
            },
        );
        // Other peers first, so that a newcomer can dial them before it decides whom to ask.
        let others = self.partner_sample(peer, 16);
        if !others.is_empty() {
            self.send(peer, Frame::Peers(others));
        }
        let Some(record) = self.record.clone() else {
            return;
        };
        self.send(peer, Frame::Channel(Box::new(record)));
        self.send(peer, self.report_frame());
        if self.quiet {
            self.send(peer, Frame::Quiet(true));
        }
        // Live, a partner plays and fetches only the newest few segments (a newcomer starts a
        // few behind, a viewer further behind skips ahead): it hears of those, not of the
        // whole window (up to 31 statements; 121, 15 kB, when peers kept 120 segments).
        let from = self.catch_up_from();
        let recent = |id: SegmentId| match id {
            SegmentId::Media(n) => n >= from,
            SegmentId::Init => true,
        };
        let statements: Vec<SignedSegment> = self
            .statements
            .values()
            .filter(|s| recent(s.meta.id))
            .copied()
            .collect();
        if let Some(partner) = self.partners.get_mut(&peer) {
            for statement in &statements {
                partner.told.insert(statement.meta.id);
            }
        }
        for chunk in statements.chunks(MAX_LIST_LEN) {
            self.send(peer, Frame::Announce(chunk.to_vec()));
        }
        let held: Vec<SegmentId> = self.store.keys().filter(|id| recent(*id)).collect();
        for chunk in held.chunks(MAX_LIST_LEN) {
            self.send(peer, Frame::Have(chunk.to_vec()));
        }
    }

    fn on_disconnected(&mut self, now: Instant, peer: PeerId) {
        self.dialing.remove(&peer);
        self.backoff.insert(peer, now + REDIAL_BACKOFF);
        if self.partners.remove(&peer).is_none() {
            return;
        }
        self.account_sharing(now);
        self.uploads.retain(|(to, _), _| *to != peer);
        self.upload_queue.retain(|q| q.to != peer);
        self.start_uploads(now);
        let lost: Vec<SegmentId> = self
            .pending
            .iter()
            .filter(|(_, p)| p.peer == peer)
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            self.pending.remove(&id);
            self.stats.requests_retried += 1;
        }
        self.parts_lost(peer);
        let broken: Vec<SegmentId> = self
            .arriving
            .iter()
            .filter(|(_, a)| a.from == peer)
            .map(|(id, _)| *id)
            .collect();
        for id in broken {
            self.end_forwards(peer, id, false);
        }
        self.children.retain(|p| *p != peer);
        if self.parent == Some(peer) {
            self.parent = None;
        }
        if self.asked_parent.is_some_and(|(p, _)| p == peer) {
            self.asked_parent = None;
        }
        self.maintain(now);
    }

    /// Handles a frame from a partner; returns whether it may have made a request possible.
    fn on_frame(&mut self, now: Instant, peer: PeerId, frame: Frame) -> bool {
        let Some(partner) = self.partners.get_mut(&peer) else {
            return false;
        };
        partner.last_heard = Some(now);
        match frame {
            Frame::Hello { channel, listen } => {
                if channel != self.channel {
                    self.close(peer, CloseReason::WrongChannel);
                    return false;
                }
                if let Some(partner) = self.partners.get_mut(&peer) {
                    partner.greeted = true;
                    partner.listen = listen;
                }
                if let Some(addr) = listen {
                    self.remember(peer, addr);
                    // Introduce the newcomer to a few others, so the mesh forms without the
                    // source in the middle.
                    let intro = Frame::Peers(vec![PeerAddr { id: peer, addr }]);
                    let hearers: Vec<PeerId> = self
                        .partner_sample(peer, self.config.introductions)
                        .into_iter()
                        .map(|p| p.id)
                        .collect();
                    for hearer in hearers {
                        self.send(hearer, intro.clone());
                    }
                }
            }
            Frame::Channel(record) => self.on_channel(peer, *record),
            Frame::Announce(statements) => return self.on_announce(now, peer, statements),
            Frame::Have(ids) => {
                let Some(partner) = self.partners.get_mut(&peer) else {
                    return false;
                };
                let mut useful = false;
                for id in ids {
                    partner.have.insert(id);
                    partner.told.insert(id);
                    // Worth a look only if we may still ask for it: not held, not asked for,
                    // not behind the first segment we miss.
                    useful |= !self.store.contains_key(&id)
                        && !self.pending.contains_key(&id)
                        && !matches!(id, SegmentId::Media(n) if n < self.cursor);
                }
                // A partner we cannot ask now is looked at again when it can be: when a
                // request to it ends (which schedules) or its pause ends (`next_schedule`).
                let max = self.config.max_inflight_per_peer;
                return useful
                    && partner.greeted
                    && partner.inflight < max
                    && partner.busy_until.is_none_or(|t| t <= now);
            }
            Frame::Request(id, due_ms) => {
                if let Some(partner) = self.partners.get_mut(&peer) {
                    partner.last_used = now;
                }
                // Serving others cannot make a request of ours possible.
                let deadline = now + Duration::from_millis(due_ms.into());
                self.on_request(now, peer, id, Part::WHOLE, deadline);
                return false;
            }
            Frame::RequestPart(id, part, due_ms) => {
                if let Some(partner) = self.partners.get_mut(&peer) {
                    partner.last_used = now;
                }
                let deadline = now + Duration::from_millis(due_ms.into());
                self.on_request(now, peer, id, part, deadline);
                return false;
            }
            Frame::Busy(id) => {
                // It has the segment; its slots are full. Leave it alone for a moment.
                self.take_pending(peer, id);
                self.part_failed(peer, id);
                self.stats.requests_busy += 1;
                let backoff = if self.is_live() {
                    BUSY_BACKOFF
                } else {
                    VOD_BUSY_BACKOFF
                };
                if let Some(partner) = self.partners.get_mut(&peer) {
                    partner.busy_until = Some(now + backoff);
                }
            }
            Frame::Missing(id) => {
                if self.take_pending(peer, id) | self.part_failed(peer, id) {
                    self.stats.requests_missed += 1;
                }
                if let Some(partner) = self.partners.get_mut(&peer) {
                    partner.have.remove(id);
                }
            }
            Frame::Report {
                upload_kbps,
                serve_kbps,
                depth,
                spare,
            } => {
                if let Some(partner) = self.partners.get_mut(&peer) {
                    partner.upload_kbps = Some(upload_kbps);
                    partner.serve_kbps = Some(serve_kbps);
                    partner.depth = depth;
                    partner.spare = spare;
                }
                if self.parent == Some(peer) && depth.saturating_add(1) > MAX_DEPTH {
                    // A feeding loop (depths grow around it) or a chain too long: leave it.
                    self.leave_parent(now);
                }
                return false;
            }
            Frame::Subscribe { on, first } => {
                self.on_subscribe(now, peer, on, first);
                return false;
            }
            Frame::Feed(on) => self.on_feed(now, peer, on),
            Frame::Find(id) => {
                self.on_find(peer, id);
                return false;
            }
            Frame::Holders(id, peers) => {
                self.on_holders(now, id, peers);
                return false;
            }
            Frame::Quiet(on) => {
                self.on_quiet(peer, on);
                return false;
            }
            Frame::Peers(peers) => {
                let climbing = self.climbing_until.is_some_and(|t| now < t);
                if self.parent.is_none() || climbing {
                    // A refusal to feed us comes with referrals: try those first.
                    self.referred = peers.iter().map(|p| p.id).collect();
                }
                for p in peers {
                    if p.id != self.me && !self.partners.contains_key(&p.id) {
                        self.remember(p.id, p.addr);
                    }
                }
                self.maintain(now);
                // Hearing of peers cannot make a request of ours possible.
                return false;
            }
        }
        true
    }

    fn on_channel(&mut self, peer: PeerId, record: SignedChannel) {
        if self.is_source() {
            return;
        }
        let restarted = match &self.record {
            // The same session again, or an older one: nothing new.
            Some(current) if record.record.started_unix_ms <= current.record.started_unix_ms => {
                return
            }
            Some(_) => true,
            None => false,
        };
        match record.verify(self.channel) {
            Ok(()) => {
                debug!(peer = %peer.short(), name = %record.record.name, restarted, "channel record verified");
                if restarted {
                    self.reset_session();
                }
                self.record = Some(record.clone());
                if restarted {
                    // Partners may still be in the old session; tell them.
                    self.broadcast(Some(peer), Frame::Channel(Box::new(record.clone())));
                }
                self.outputs
                    .push_back(Output::Event(Event::ChannelVerified(Box::new(record))));
            }
            Err(error) => {
                warn!(peer = %peer.short(), %error, "channel record rejected");
                self.stats.statements_rejected += 1;
                self.outputs
                    .push_back(Output::Event(Event::StatementRejected {
                        peer,
                        id: None,
                        error,
                    }));
                self.strike(peer);
            }
        }
    }

    /// Handles statements from a partner; returns whether any was new.
    fn on_announce(&mut self, now: Instant, peer: PeerId, statements: Vec<SignedSegment>) -> bool {
        let Some(session) = self.record.as_ref().map(|r| r.record.started_unix_ms) else {
            return false;
        };
        let mut fresh = Vec::new();
        for statement in statements {
            let id = statement.meta.id;
            if statement.meta.session != session {
                // Another session's statement (a partner not caught up yet, or behind us):
                // not ours to judge.
                continue;
            }
            if let Some(partner) = self.partners.get_mut(&peer) {
                partner.told.insert(id);
            }
            if self.statements.contains_key(&id) || self.is_evicted(id) {
                continue;
            }
            let Some(record) = self.record.as_ref() else {
                return false;
            };
            if let Err(error) = self
                .config
                .verifier
                .verify_statement(&record.record, &statement)
            {
                warn!(peer = %peer.short(), %id, %error, "statement rejected");
                self.stats.statements_rejected += 1;
                self.outputs
                    .push_back(Output::Event(Event::StatementRejected {
                        peer,
                        id: Some(id),
                        error,
                    }));
                self.strike(peer);
                continue;
            }
            self.accept_statement(now, statement);
            fresh.push(statement);
        }
        if fresh.is_empty() {
            return false;
        }
        self.announce(&fresh);
        true
    }

    fn on_segment(&mut self, now: Instant, peer: PeerId, id: SegmentId, bytes: Bytes) {
        let forwarded = self.is_arriving(id, peer);
        let verified = self.take_segment(now, peer, id, bytes);
        if forwarded {
            self.end_forwards(peer, id, verified);
        }
    }

    /// A segment stream from `peer` started: what we feed others of it goes out as it comes.
    fn on_arriving(&mut self, now: Instant, peer: PeerId, id: SegmentId) {
        if self.store.contains_key(&id)
            || self.arriving.contains_key(&id)
            || self.expected_len(&peer, id, Part::WHOLE).is_none()
        {
            return;
        }
        self.arriving.insert(
            id,
            Arrival {
                from: peer,
                since: now,
            },
        );
        self.push_children(now, id);
    }

    /// The segment `id` from `peer` is complete (`verified`) or is not coming: the driver
    /// finishes or resets the streams that forward it.
    fn end_forwards(&mut self, peer: PeerId, id: SegmentId, verified: bool) {
        if !self.is_arriving(id, peer) {
            return;
        }
        self.arriving.remove(&id);
        self.outputs.push_back(Output::EndForwards {
            from: peer,
            id,
            verified,
        });
    }

    /// A live parent tells us of every segment it gets; one that has been silent while the
    /// stream went on has crashed or lost its link (QUIC's idle timeout would say so only
    /// after 10 s): we leave it, and the segments it was sending us are missing again.
    fn leave_silent_parent(&mut self, now: Instant) {
        let Some(parent) = self.parent else { return };
        let heard = self.partners.get(&parent).and_then(|p| p.last_heard);
        let silent = heard.is_none_or(|t| now.saturating_duration_since(t) > PARENT_SILENCE);
        let stream_on = self
            .last_fresh
            .is_some_and(|t| now.saturating_duration_since(t) < PARENT_SILENCE);
        if !silent || !stream_on {
            return;
        }
        debug!(parent = %parent.short(), "parent silent; looking for another");
        let arriving: Vec<SegmentId> = self
            .arriving
            .iter()
            .filter(|(_, a)| a.from == parent)
            .map(|(id, _)| *id)
            .collect();
        for id in arriving {
            self.end_forwards(parent, id, false);
        }
        self.leave_parent(now);
    }

    /// The origin's answer: checked against the broadcaster's statement like any peer's.
    fn on_origin_segment(&mut self, now: Instant, id: SegmentId, bytes: Bytes) {
        if self.origin_pending.remove(&id).is_none() || self.store.contains_key(&id) {
            return;
        }
        let Some(statement) = self.statements.get(&id).copied() else {
            return;
        };
        if let Err(error) = self.config.verifier.check_payload(&statement.meta, &bytes) {
            // Not a peer's fault: nobody gets a strike; the segment is missing again, and the
            // origin is left alone for a while.
            warn!(%id, %error, "origin sent bytes that fail verification");
            self.stats.segments_rejected += 1;
            self.origin_paused_until = Some(now + ORIGIN_BACKOFF);
            return;
        }
        self.stats.bytes_from_origin += bytes.len() as u64;
        self.store_segment(id, statement.meta, bytes, None);
        self.announce_held(id);
        self.push_children(now, id);
    }

    /// Whether segment `id` is arriving from `peer` (its stream started, we do not hold it).
    fn is_arriving(&self, id: SegmentId, peer: PeerId) -> bool {
        self.arriving.get(&id).is_some_and(|a| a.from == peer)
    }

    /// Ends arrivals that have taken too long (a stalled stream): their forwards are reset
    /// and the segment is missing again, for the scheduler to fetch elsewhere.
    fn expire_arrivals(&mut self, now: Instant) {
        let stalled: Vec<(SegmentId, PeerId)> = self
            .arriving
            .iter()
            .filter(|(_, a)| now.saturating_duration_since(a.since) > ARRIVAL_TIMEOUT)
            .map(|(id, a)| (*id, a.from))
            .collect();
        for (id, from) in stalled {
            debug!(peer = %from.short(), %id, "segment stream stalled");
            self.end_forwards(from, id, false);
        }
    }

    /// Checks and stores a complete segment from `peer`; returns whether it verified.
    fn take_segment(&mut self, now: Instant, peer: PeerId, id: SegmentId, bytes: Bytes) -> bool {
        let expected = self.is_arriving(id, peer)
            || self.parent == Some(peer)
            || self.pending.get(&id).is_some_and(|p| p.peer == peer);
        if expected && self.store.contains_key(&id) {
            // A second copy (a push crossed a request of ours): not stored again, but checked,
            // for the peers it was forwarded to as it came.
            self.take_pending(peer, id);
            return self
                .statements
                .get(&id)
                .is_some_and(|s| self.config.verifier.check_payload(&s.meta, &bytes).is_ok());
        }
        let asked = self
            .pending
            .get(&id)
            .filter(|p| p.peer == peer)
            .map(|p| p.sent);
        if let (Some(asked), Some(partner)) = (asked, self.partners.get_mut(&peer)) {
            partner
                .rate
                .sample(bytes.len(), now.saturating_duration_since(asked));
        }
        // Our parent's push, or a push that started while it was our parent (we may have
        // left it since: the stream was accepted, so it is no violation).
        let pushed = (self.parent == Some(peer) || self.is_arriving(id, peer))
            && !self.store.contains_key(&id);
        if pushed {
            self.stats.pushes_received += 1;
            // Whoever else we asked is too late now.
            if let Some(other) = self.pending.get(&id).map(|p| p.peer).filter(|p| *p != peer) {
                self.take_pending(other, id);
            }
        }
        if !self.take_pending(peer, id) && !pushed && self.store.contains_key(&id) {
            // An answer to a request we withdrew (a push or another partner got there first,
            // or it timed out): the driver accepted its stream while it was expected (see
            // `expected_len`), so it is no violation. A segment we still lack is kept if it
            // verifies.
            return false;
        }
        let Some(statement) = self.statements.get(&id).copied() else {
            return false;
        };
        if let Err(error) = self.config.verifier.check_payload(&statement.meta, &bytes) {
            warn!(peer = %peer.short(), %id, %error, "segment rejected");
            self.stats.segments_rejected += 1;
            self.outputs
                .push_back(Output::Event(Event::SegmentRejected { peer, id, error }));
            if let Some(partner) = self.partners.get_mut(&peer) {
                partner.have.remove(id);
            }
            self.strike(peer);
            return false;
        }
        if Some(peer) == self.source_peer() {
            self.stats.bytes_from_source += bytes.len() as u64;
        } else {
            self.stats.bytes_from_peers += bytes.len() as u64;
        }
        // A parent that had the segment and did not push it in time missed; three misses in
        // a row and we look for another.
        match self.parent {
            Some(p) if p == peer => self.parent_misses = 0,
            Some(p) if self.partners.get(&p).is_some_and(|pp| pp.have.contains(id)) => {
                self.parent_misses += 1;
                if self.parent_misses >= MAX_PARENT_MISSES {
                    debug!(parent = %p.short(), "parent too slow; looking for another");
                    self.parent_misses = 0;
                    self.leave_parent(now);
                }
            }
            _ => {}
        }
        self.fed_streak = match self.fed_streak {
            _ if !pushed || self.parent != Some(peer) => (self.parent, 0),
            (Some(p), n) if p == peer => (Some(p), n + 1),
            _ => (Some(peer), 1),
        };
        self.update_quiet(now);
        if let Some(partner) = self.partners.get_mut(&peer) {
            // It sent the segment, so it holds it (and needs no `Have` of ours).
            partner.have.insert(id);
            partner.told.insert(id);
        }
        self.store_segment(id, statement.meta, bytes, Some(peer));
        self.announce_held(id);
        // Pushes queued while it arrived now send it from the store; children that joined
        // since get it too.
        self.push_children(now, id);
        true
    }

    /// Forgets everything of the current session (the broadcaster restarted).
    fn reset_session(&mut self) {
        let split: Vec<SegmentId> = self.parts.keys().copied().collect();
        for id in split {
            self.drop_parts(id);
        }
        self.split_failed = None;
        self.statements.clear();
        self.seen.clear();
        self.store.clear();
        let arrivals: Vec<(SegmentId, PeerId)> =
            self.arriving.iter().map(|(id, a)| (*id, a.from)).collect();
        for (id, from) in arrivals {
            self.end_forwards(from, id, false);
        }
        for (_, pending) in self.pending.drain() {
            if let Some(partner) = self.partners.get_mut(&pending.peer) {
                partner.inflight = partner.inflight.saturating_sub(1);
            }
        }
        for partner in self.partners.values_mut() {
            partner.have.clear();
            partner.told.clear();
        }
        // The feeding tree and the playback position were the old session's.
        self.vod_anchor = None;
        self.parent = None;
        self.asked_parent = None;
        self.children.clear();
        self.upload_queue.clear();
        self.start = None;
        self.playhead = None;
        self.cursor = 0;
        self.floor = 0;
        self.last = None;
        self.next_schedule = None;
    }

    fn accept_statement(&mut self, now: Instant, statement: SignedSegment) {
        let meta = statement.meta;
        if !self.statements.insert(meta.id, statement) {
            warn!(id = %meta.id, "statement too far from the others; ignored");
            return;
        }
        self.last_fresh = Some(now);
        self.seen.insert(meta.id, now);
        if let SegmentId::Media(seq) = meta.id {
            if meta.is_end_marker() {
                let last = seq.saturating_sub(1);
                self.last = Some(last);
                self.outputs.push_back(Output::Event(Event::Ended { last }));
            } else {
                self.outputs.push_back(Output::Event(Event::Announced {
                    seq,
                    duration: meta.duration(),
                }));
            }
            // A live peer keeps the window behind the newest segment even when it stores
            // nothing (a viewer that cannot keep up must not hoard every statement).
            self.evict_before(seq.saturating_sub(self.config.live_window));
        }
    }

    fn store_segment(
        &mut self,
        id: SegmentId,
        meta: SegmentMeta,
        bytes: Bytes,
        from: Option<PeerId>,
    ) {
        let origin = from.is_none() && !self.is_source();
        self.drop_parts(id);
        self.stats.segments_stored += 1;
        self.store.insert(id, bytes.clone());
        self.outputs.push_back(Output::Event(Event::Stored {
            id,
            meta,
            bytes,
            from,
            origin,
        }));
        if let SegmentId::Media(seq) = id {
            self.evict_before(seq.saturating_sub(self.config.live_window));
        }
    }

    fn evict_before(&mut self, keep_from: u64) {
        if !self.is_live() || keep_from <= self.floor {
            return;
        }
        let oldest = self.statements.keys().find_map(|id| match id {
            SegmentId::Media(n) => Some(n),
            SegmentId::Init => None,
        });
        for n in oldest.unwrap_or(keep_from).max(self.floor)..keep_from {
            let id = SegmentId::Media(n);
            self.store.remove(&id);
            self.statements.remove(&id);
            self.seen.remove(&id);
        }
        self.floor = keep_from;
        for partner in self.partners.values_mut() {
            partner.have.forget_before(keep_from);
            partner.told.forget_before(keep_from);
        }
        self.outputs
            .push_back(Output::Event(Event::Evicted { seq: keep_from }));
    }

    fn is_live(&self) -> bool {
        self.record
            .as_ref()
            .is_some_and(|r| r.record.kind == StreamKind::Live)
    }

    fn is_evicted(&self, id: SegmentId) -> bool {
        matches!(id, SegmentId::Media(n) if n < self.floor)
    }

    /// Sends requests for missing segments, most urgent first, each to the holder expected to
    /// deliver it soonest (its measured rate and queue); the source only if it feeds us, if it
    /// is our only partner, or if no viewer can deliver before the deadline.
    fn schedule(&mut self, now: Instant) {
        // Recomputed below; a deadline left over from an earlier round would fire forever.
        self.next_schedule = None;
        if self.is_source() || self.record.is_none() {
            return;
        }
        let max = self.config.max_inflight_per_peer;
        let usable =
            |p: &Partner| p.greeted && p.inflight < max && p.busy_until.is_none_or(|t| t <= now);
        // A partner that said `Busy` is worth asking again when its pause ends.
        self.next_schedule = self
            .partners
            .values()
            .filter_map(|p| p.busy_until)
            .filter(|t| *t > now)
            .min();
        // Nothing to do while every partner is busy (the common case under load), unless an
        // origin can serve.
        let origin = self.config.origin && self.origin_paused_until.is_none_or(|t| t <= now);
        if let Some(t) = self.origin_paused_until.filter(|t| *t > now) {
            self.next_schedule = Some(self.next_schedule.map_or(t, |n| n.min(t)));
        }
        if !self.partners.values().any(usable) && !origin {
            return;
        }
        // The buffer is reused: this runs after most inputs.
        let mut wanted = std::mem::take(&mut self.wanted_buf);
        self.wanted(&mut wanted);
        if !self.is_live() && self.vod_anchor.is_none() {
            self.vod_anchor = self.start.map(|start| (now, start));
        }
        let source = self.source_peer().and_then(|s| self.partners.find(&s).ok());
        let parent = self.parent.and_then(|p| self.partners.find(&p).ok());
        // While dials are in flight, a newcomer may soon have partners other than the source.
        let only_source =
            self.dialing.is_empty() && (0..self.partners.len()).all(|i| Some(i) == source);
        let guess = self.bitrate_bps();
        // How close to its deadline a segment must be before the source is asked for it: on
        // demand, with the whole film there to prefetch, early enough to keep a buffer.
        let source_margin = if self.is_live() {
            SOURCE_MARGIN_S
        } else {
            VOD_SOURCE_MARGIN_S
        };
        let mut late = false;
        // While a viewer waits for its first segment (live, or on demand where it started or
        // sought), that one alone is asked for (and the init segment): the partners' spare
        // upload goes to it, not to the next ones too (which would also leave them `Busy` for
        // its parts). On demand this took startup p95 from 2.4 s to 1.6 s (`vod`, seed 16).
        let first = SegmentId::Media(self.cursor);
        let first_alone = self.playback_waits_for(first);
        for &id in &wanted {
            if first_alone && id != first && id != SegmentId::Init {
                continue;
            }
            // A segment on its way (a push, or forwarded to us as it arrives) is not asked for
            // again: if its stream breaks off, it is missing again.
            if self.store.contains_key(&id)
                || self.pending.contains_key(&id)
                || self.arriving.contains_key(&id)
                || self.origin_pending.contains_key(&id)
            {
                continue;
            }
            if self.parts.contains_key(&id) && self.ask_parts(now, id) {
                continue;
            }
            let Some(bits) = self
                .statements
                .get(&id)
                .map(|s| f64::from(s.meta.len) * 8.0)
            else {
                continue;
            };
            let slack = self
                .deadline(id, now)
                .saturating_duration_since(now)
                .as_secs_f64();
            // Our parent pushes what it gets; fetch elsewhere only if it is late: if it has
            // the segment, its push is on the way. What it had before it took us it does not
            // push (a newcomer's first segments).
            let pushed = !matches!(id, SegmentId::Media(seq) if seq < self.pushed_from);
            let window = match parent.and_then(|i| self.partners.at(i)) {
                _ if !pushed => f64::INFINITY,
                Some(p) if p.have.contains(id) => PUSH_WAIT_S,
                Some(_) => REPAIR_WINDOW_S,
                None => f64::INFINITY,
            };
            // Quiet, we know only what our parent holds: ask for announcements again a
            // little before a repair would start.
            let window = if self.quiet {
                window.max(QUIET_ALERT_S)
            } else {
                window
            };
            if slack > window {
                let wait = Duration::from_secs_f64(slack - window);
                let due = now + wait.max(MIN_RESCHEDULE);
                self.next_schedule = Some(self.next_schedule.map_or(due, |t| t.min(due)));
                continue;
            }
            if self.quiet {
                late = true;
                continue;
            }
            // Seconds until each holder would deliver: its queue, then this segment.
            let mut viewer: Option<(f64, usize)> = None;
            let mut from_source: Option<f64> = None;
            let splits = self.playback_waits_for(id);
            let mut direct_holders = 0;
            for (i, p) in self.partners.values().enumerate() {
                if !usable(p) || !p.have.contains(id) {
                    continue;
                }
                let eta = bits / p.expected_bps(guess) * (p.inflight + 1) as f64;
                if Some(i) == source {
                    from_source = Some(eta);
                    continue;
                }
                direct_holders += usize::from(!p.relayed);
                // A relayed path costs the relay's bandwidth: direct holders first unless a
                // relayed one is much sooner.
                // Our parent's push of this segment did not come: ask it only if nobody
                // else has the segment.
                let eta = if Some(i) == parent {
                    eta + PARENT_PENALTY_S
                } else {
                    eta
                };
                let cost = if p.relayed {
                    eta + RELAY_PENALTY_S
                } else {
                    eta
                };
                if viewer.is_none_or(|(c, _)| cost < c) {
                    viewer = Some((cost, i));
                }
            }
            // Playback waits for this one: several holders, a part each at a time.
            if splits {
                // Right after joining (or seeking) partners are still greeting us: better
                // wait a moment for more holders than ask the first one alone.
                let greeting =
                    !self.dialing.is_empty() || self.partners.values().any(|p| !p.greeted);
                let known = self.seen.get(&id).map_or(now, |t| *t);
                if direct_holders < SPLIT_HOLDERS && greeting && now < known + SPLIT_WAIT {
                    let due = known + SPLIT_WAIT;
                    self.next_schedule = Some(self.next_schedule.map_or(due, |t| t.min(due)));
                    continue;
                }
                if direct_holders >= 2 && self.split(now, id) {
                    continue;
                }
            }
            // With an origin, it is the last resort instead of the broadcaster (whose uplink
            // feeds the tree): asked when no viewer can deliver in time and its transfer
            // would just make it.
            let fed_by_source = source.is_some() && source == parent;
            if origin && !fed_by_source && viewer.is_none_or(|(eta, _)| eta > slack) {
                let o_eta = bits / ORIGIN_BPS;
                if slack <= o_eta + source_margin {
                    let timeout = Duration::from_secs_f64(
                        (2.0 * o_eta + 1.0).min(self.config.request_timeout.as_secs_f64()),
                    );
                    self.origin_pending.insert(id, now + timeout);
                    self.outputs.push_back(Output::FetchOrigin { id });
                } else {
                    let wait = Duration::from_secs_f64(slack - o_eta - source_margin);
                    let due = now + wait.max(MIN_RESCHEDULE);
                    self.next_schedule = Some(self.next_schedule.map_or(due, |t| t.min(due)));
                }
                continue;
            }
            let choice = match (viewer, from_source) {
                (Some((eta, i)), _) if eta <= slack => Some((i, eta)),
                (_, Some(s_eta)) if only_source || slack <= s_eta + source_margin => {
                    source.map(|s| (s, s_eta))
                }
                (_, Some(s_eta)) => {
                    // Only the source could deliver in time, and it need not yet: another
                    // viewer may get the segment first. Look again when the source becomes
                    // the last resort.
                    let wait = Duration::from_secs_f64((slack - s_eta - source_margin).max(0.0));
                    let due = now + wait.max(MIN_RESCHEDULE);
                    self.next_schedule = Some(self.next_schedule.map_or(due, |t| t.min(due)));
                    None
                }
                // Late whoever we ask: the soonest viewer still.
                (Some((eta, i)), None) => Some((i, eta)),
                (None, None) => None,
            };
            let Some((index, eta)) = choice else {
                continue;
            };
            let timeout = Duration::from_secs_f64(
                (2.0 * eta + 0.5).clamp(1.0, self.config.request_timeout.as_secs_f64()),
            );
            let (peer, partner) = self.partners.at_mut(index);
            partner.inflight += 1;
            partner.last_used = now;
            self.pending.insert(
                id,
                Pending {
                    peer,
                    sent: now,
                    deadline: now + timeout,
                },
            );
            self.send(peer, Frame::Request(id, self.due_ms(id, now)));
        }
        wanted.clear();
        self.wanted_buf = wanted;
        if late {
            // The partners' answers make requests possible; if none comes, look again soon.
            self.fed_streak.1 = 0;
            self.update_quiet(now);
            let due = now + QUIET_RETRY;
            self.next_schedule = Some(self.next_schedule.map_or(due, |t| t.min(due)));
        }
    }

    /// When segment `id` must be here: live, the target latency after its announcement
    /// reached us; on demand, when the player gets to it from the first missing segment.
    fn deadline(&self, id: SegmentId, now: Instant) -> Instant {
        let SegmentId::Media(seq) = id else {
            return now;
        };
        if self.is_live() {
            let seen = self.seen.get(&id).copied().unwrap_or(now);
            return seen + self.config.target_latency.saturating_sub(PLAYBACK_MARGIN);
        }
        let duration = self
            .statements
            .get(&id)
            .map_or(Duration::from_secs(1), |s| s.meta.duration());
        // Playback runs from where it started (or last sought) at one segment per duration.
        let (since, from) = self.vod_anchor.unwrap_or((now, self.cursor));
        let ahead = u32::try_from(seq.saturating_sub(from)).unwrap_or(u32::MAX);
        since + duration.saturating_mul(ahead) + VOD_HEADROOM
    }

    /// Milliseconds until playback needs `id` (0 when it is late), as a request tells the
    /// peer that serves it.
    fn due_ms(&self, id: SegmentId, now: Instant) -> u32 {
        let due = self.deadline(id, now).saturating_duration_since(now);
        u32::try_from(due.as_millis()).unwrap_or(u32::MAX)
    }

    /// The stream's bit rate, from the newest segment's statement (2 Mbit/s before any).
    pub fn bitrate_bps(&self) -> f64 {
        self.statements
            .values()
            .rev()
            .find(|s| s.meta.duration_us > 0 && s.meta.len > 0)
            .map_or(2e6, |s| {
                f64::from(s.meta.len) * 8.0 / s.meta.duration().as_secs_f64()
            })
    }

    /// Tells partners our measured upload (when it changed by a tenth, at most every two
    /// seconds, else every ten) and our place in the tree (whenever it changed).
    fn report(&mut self, now: Instant) {
        let kbps = (self.meter.estimate_bps() / 1000.0) as u32;
        let depth = self.depth();
        let spare = self.spare();
        let due = match self.reported {
            None => true,
            Some((at, last)) => {
                let since = now.saturating_duration_since(at);
                since >= REPORT_EVERY || since >= REPORT_GAP && kbps.abs_diff(last) * 10 > last
            }
        };
        let changed = self.reported_tree != (depth, spare);
        if (due || changed) && self.partners.len() > 0 {
            self.reported = Some((now, kbps));
            self.reported_tree = (depth, spare);
            let report = self.report_frame();
            // A quiet partner (its parent feeds it) neither asks us for segments nor looks
            // for a parent: it gets our report when it asks for news again (`on_quiet`). The
            // peers we feed need our depth for theirs.
            for index in 0..self.partners.len() {
                let (peer, partner) = self.partners.at_mut(index);
                if gossip::hears_news(partner, self.children.contains(&peer)) {
                    self.outputs.push_back(Output::Send {
                        to: peer,
                        frame: report.clone(),
                    });
                }
            }
        }
    }

    /// What we tell partners of ourselves: measured upload, the rate we serve a request at,
    /// and our place in the tree.
    pub(super) fn report_frame(&self) -> Frame {
        Frame::Report {
            upload_kbps: (self.meter.estimate_bps() / 1000.0) as u32,
            serve_kbps: self.serve_kbps(),
            depth: self.depth(),
            spare: self.spare(),
        }
    }

    /// Puts the segments this viewer wants now in `wanted`, in the order it wants them.
    fn wanted(&mut self, wanted: &mut Vec<SegmentId>) {
        let newest = self.newest();
        let live = self.is_live();
        if self.start.is_none() {
            self.start = match (live, newest) {
                (false, _) => Some(0),
                (true, Some(newest)) => {
                    let oldest = self.statements.keys().find_map(|id| match id {
                        SegmentId::Media(n) => Some(n),
                        SegmentId::Init => None,
                    });
                    let behind = newest.saturating_sub(self.config.live_start_behind);
                    Some(behind.max(oldest.unwrap_or(0)))
                }
                (true, None) => None,
            };
        }
        if self.statements.contains_key(&SegmentId::Init) {
            wanted.push(SegmentId::Init);
        }
        let from = if live {
            self.start
        } else {
            self.playhead.or(self.start)
        };
        if let (Some(start), Some(newest)) = (from, newest) {
            self.cursor = self.cursor.max(start).max(self.floor);
            if live {
                self.cursor = self
                    .cursor
                    .max(newest.saturating_sub(self.config.live_max_lag));
            }
            while self.cursor <= newest && self.store.contains_key(&SegmentId::Media(self.cursor)) {
                self.cursor += 1;
            }
            let first_missing = self.cursor;
            let end = newest.min(first_missing + self.config.lookahead);
            wanted.extend((first_missing..=end).map(SegmentId::Media).filter(|id| {
                self.statements
                    .get(id)
                    .is_some_and(|s| !s.meta.is_end_marker())
            }));
        }
    }

    /// Dials candidates while this viewer has fewer partners than it wants.
    fn maintain(&mut self, now: Instant) {
        self.backoff.retain(|_, until| *until > now);
        self.shed_children();
        self.report(now);
        if self.is_source() {
            return;
        }
        self.update_quiet(now);
        self.leave_silent_parent(now);
        self.climb(now);
        self.find_parent(now);
        self.dial_hinted();
        self.redial_stalled_source(now);
        // A viewer nobody feeds yet makes room for the peers it was referred to.
        let climbing = self.climbing_until.is_some_and(|t| now < t);
        let want = self.config.max_partners
            + if (self.parent.is_none() || climbing) && !self.referred.is_empty() {
                MAX_EXTRA_PARTNERS
            } else {
                0
            };
        self.find_holders(now);
        if self.partners.len() + self.dialing.len() >= want {
            self.explore(now);
            self.make_room_for_holders(now);
        }
        let mut missing = want.saturating_sub(self.partners.len() + self.dialing.len());
        if missing == 0 {
            return;
        }
        // Peers we were referred to (nearer the tree's top, with room, or holding what we need
        // next) first, then the others in an order of our own: live, by distance from our id
        // (XOR of the ids' first eight bytes), so that the viewers' dials spread over the
        // swarm. In a common order, every viewer dialled the same few peers first; they were
        // full, and in `sim` 7 dials in 10 ended in a refusal (bench, 1,000 peers: 87 k dials,
        // 60 k refused; spread: 21 k, 9 k). On demand the common order is kept: the peers
        // everyone dials first become well-connected meeting points that answer `Find`, and
        // spread dials lost a twentieth of the continuity of `vod` over three seeds.
        let (referred, found) = (&self.referred, &self.found);
        let mine = if self.is_live() {
            id_prefix(&self.me)
        } else {
            0
        };
        let mut candidates: Vec<((bool, u64, PeerId), SocketAddr)> = self
            .candidates
            .iter()
            .filter(|(id, _)| {
                !self.partners.contains_key(id)
                    && !self.dialing.contains(id)
                    && !self.backoff.contains_key(id)
            })
            .map(|(id, addr)| {
                let first = referred.contains(id) || found.contains(id);
                ((!first, id_prefix(id) ^ mine, *id), *addr)
            })
            .collect();
        // Only the first `missing` are dialled: pick them out, then sort those (the keys are
        // distinct, so this is the order a sort of all of them gives).
        if candidates.len() > missing {
            candidates.select_nth_unstable_by_key(missing - 1, |(key, _)| *key);
            candidates.truncate(missing);
        }
        candidates.sort_unstable_by_key(|(key, _)| *key);
        for ((_, _, id), addr) in candidates {
            if missing == 0 {
                break;
            }
            missing -= 1;
            self.dialing.insert(id);
            self.outputs.push_back(Output::Dial(PeerAddr { id, addr }));
        }
    }

    /// Remembers where peer `id` listens. A peer needs a few hundred to choose from, not the
    /// whole swarm it hears of over time: past [`MAX_CANDIDATES`], about half of those it does
    /// not deal with now are forgotten, drawn anew each time.
    pub(super) fn remember(&mut self, id: PeerId, addr: SocketAddr) {
        self.candidates.insert(id, addr);
        if self.candidates.len() <= MAX_CANDIDATES {
            return;
        }
        self.forgotten_rounds += 1;
        let salt = self.forgotten_rounds.to_le_bytes();
        let source = self.source_peer();
        let hinted: Vec<PeerId> = self
            .hint
            .iter()
            .flat_map(|h| h.upstream.iter())
            .filter_map(|u| match u.from {
                Upstream::Peer(id) => Some(id),
                _ => None,
            })
            .collect();
        let me = self.me;
        let (partners, dialing) = (&self.partners, &self.dialing);
        let (referred, found) = (&self.referred, &self.found);
        self.candidates.retain(|id, _| {
            let needed = Some(*id) == source
                || partners.contains_key(id)
                || dialing.contains(id)
                || referred.contains(id)
                || found.contains(id)
                || hinted.contains(id);
            needed || {
                let mut h = blake3::Hasher::new();
                h.update(&me.0);
                h.update(&id.0);
                h.update(&salt);
                h.finalize().as_bytes()[0] & 1 == 0
            }
        });
    }

    /// A live viewer nobody feeds, none of whose partners has room to, lets one partner go
    /// (one that gives it nothing and has no room) so that `maintain` dials someone new:
    /// without this it would keep the same full partners, and pull every segment, for good.
    /// Meanwhile it pulls every segment, so while its partners together would serve its
    /// requests at less than [`PULL_STREAMS`] streams it also lets go of those with under
    /// half a stream to spare, even if one of the others may have room for it later.
    fn explore(&mut self, now: Instant) {
        let unfed = self.is_live() && self.parent.is_none() && self.asked_parent.is_none();
        let due = self.next_explore.is_none_or(|t| t <= now);
        if !unfed || !due || self.candidates.len() <= self.partners.len() {
            return;
        }
        let could_feed = |p: &Partner| p.spare > 0 && p.depth < MAX_DEPTH;
        let asked_soon = self
            .partners
            .values()
            .any(|p| could_feed(p) && p.refused_until.is_none_or(|t| t <= now));
        // Unfed, it pulls every segment: its partners must have the upload to spare for that.
        let stream_kbps = self.bitrate_bps() / 1000.0;
        let pull_kbps: f64 = self
            .partners
            .values()
            .filter(|p| p.greeted)
            .map(|p| f64::from(p.serve_kbps.unwrap_or(0)))
            .sum();
        let starved = pull_kbps < PULL_STREAMS * stream_kbps;
        if asked_soon && !starved {
            return; // `find_parent` asks it.
        }
        // Also kept: partners that have not reported yet, that may have room later, those we
        // feed, and (when short of upload to pull from) those with upload to spare.
        let children = &self.children;
        let keep = |id: &PeerId, p: &Partner| {
            p.upload_kbps.is_none()
                || could_feed(p)
                || children.contains(id)
                || starved && f64::from(p.serve_kbps.unwrap_or(0)) >= stream_kbps / 2.0
        };
        let Some(peer) = self.useless_partner(keep) else {
            return;
        };
        debug!(peer = %peer.short(), "no partner can feed us; letting one go");
        self.let_go(now, peer);
    }

    /// A partner drawn at random (a new draw each time one goes) among those `keep` does not
    /// keep, always keeping partners not heard from yet, the source, and those we exchange
    /// segments with.
    fn useless_partner(&self, keep: impl Fn(&PeerId, &Partner) -> bool) -> Option<PeerId> {
        let source = self.source_peer();
        self.partners
            .iter()
            .filter(|(id, p)| {
                let kept = !p.greeted
                    || Some(**id) == source
                    || p.inflight > 0
                    || self.sending_to(id)
                    || keep(id, p);
                !kept
            })
            .map(|(id, _)| (self.random_rank(id) ^ self.explored, *id))
            .min()
            .map(|(_, id)| id)
    }

    /// Whether a segment of ours is on its way to `peer`.
    fn sending_to(&self, peer: &PeerId) -> bool {
        self.uploads.keys().any(|(to, _)| to == peer)
    }

    /// Closes the link to a partner to make room for others (see `explore`).
    fn let_go(&mut self, now: Instant, peer: PeerId) {
        self.explored = self.explored.wrapping_add(1);
        self.next_explore = Some(now + EXPLORE_EVERY);
        self.close(peer, CloseReason::Exploring);
        // Gone for us now (the driver's word that the link closed changes nothing more); it
        // may have room later, after the redial backoff.
        self.on_disconnected(now, peer);
    }

    /// Up to `n` partners with known addresses, other than `around`: those that follow
    /// `around` in id order, wrapping, so that different newcomers get different samples.
    fn partner_sample(&self, around: PeerId, n: usize) -> Vec<PeerAddr> {
        if !self.config.share_peers {
            return Vec::new();
        }
        self.partners
            .from(around)
            .filter(|(id, _)| **id != around)
            .filter_map(|(id, p)| p.listen.map(|addr| PeerAddr { id: *id, addr }))
            .take(n)
            .collect()
    }

    fn take_pending(&mut self, peer: PeerId, id: SegmentId) -> bool {
        match self.pending.get(&id) {
            Some(p) if p.peer == peer => {
                self.pending.remove(&id);
                if let Some(partner) = self.partners.get_mut(&peer) {
                    partner.inflight = partner.inflight.saturating_sub(1);
                }
                true
            }
            _ => false,
        }
    }

    fn strike(&mut self, peer: PeerId) {
        let Some(partner) = self.partners.get_mut(&peer) else {
            return;
        };
        partner.strikes += 1;
        if partner.strikes >= self.config.max_strikes {
            self.close(peer, CloseReason::Misbehaved);
        }
    }

    fn close(&mut self, peer: PeerId, reason: CloseReason) {
        if matches!(reason, CloseReason::WrongChannel | CloseReason::Misbehaved) {
            self.candidates.remove(&peer);
        }
        self.outputs.push_back(Output::Close { peer, reason });
    }

    fn send(&mut self, to: PeerId, frame: Frame) {
        self.outputs.push_back(Output::Send { to, frame });
    }
}

/// An origin that failed is not asked again for this long.
const ORIGIN_BACKOFF: Duration = Duration::from_secs(2);
/// What an HTTP origin is expected to deliver one segment at (a CDN edge), until measured.
const ORIGIN_BPS: f64 = 20e6;
/// A parent silent this long while the stream goes on is left.
const PARENT_SILENCE: Duration = Duration::from_millis(2500);
/// A segment stream still arriving after this long is given up (its sender stalled).
const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(6);
/// How long a partner that answered `Busy` is left alone.
const BUSY_BACKOFF: Duration = Duration::from_millis(1000);
/// The same on demand, where a segment has fewer holders and a viewer more time to wait for
/// one of them.
const VOD_BUSY_BACKOFF: Duration = Duration::from_millis(200);

/// Seconds a parent that failed to push a segment is handicapped by when it is asked.
const PARENT_PENALTY_S: f64 = 10.0;
/// Seconds a relayed holder is handicapped by against a direct one.
const RELAY_PENALTY_S: f64 = 0.5;
/// Seconds of margin the source is asked before a segment's deadline, as a last resort.
const SOURCE_MARGIN_S: f64 = 0.3;
/// The same on demand.
const VOD_SOURCE_MARGIN_S: f64 = 3.0;
/// The shortest wait before looking at a deferred request again.
const MIN_RESCHEDULE: Duration = Duration::from_millis(20);
/// A live segment's deadline comes this long before the player's target latency (the
/// announcement reaches us a little after the segment was made).
const PLAYBACK_MARGIN: Duration = Duration::from_millis(300);
/// On demand: how far ahead of the player a segment is due.
const VOD_HEADROOM: Duration = Duration::from_secs(1);
/// Within this many seconds of a segment's deadline a fed viewer stops waiting for its
/// parent and fetches it from whoever holds it.
const REPAIR_WINDOW_S: f64 = 1.2;
/// ... and if the parent has it already (its push is under way), until this close.
const PUSH_WAIT_S: f64 = 0.5;
/// Partners hear our upload capacity at least this often.
const REPORT_EVERY: Duration = Duration::from_secs(10);
/// ... and at most this often.
const REPORT_GAP: Duration = Duration::from_secs(2);

/// The most peers an exchange remembers the address of (see `Exchange::remember`).
const MAX_CANDIDATES: usize = 256;

/// A viewer nobody feeds lets a partner go to meet others at most this often (and so does an
/// on-demand viewer making room for holders it was named: `make_room_for_holders`; that took
/// `vod-500` seeds 24/25/26 from 0.965 / 0.972 / 0.970 to 0.971 / 0.978 / 0.970). Every second
/// instead: `sim bench` at 1,000 peers made 6.16 M events instead of 5.58 M, and `live-1k`
/// seeds 6/7/8 and `live-churn` seed 25 lost 0.0004–0.0024 continuity each (an unfed viewer
/// pulls every segment, and dialling costs less than that).
const EXPLORE_EVERY: Duration = Duration::from_millis(300);
/// Streams' worth of spare upload an unfed viewer wants among its partners to pull from.
const PULL_STREAMS: f64 = 2.0;
/// Holders of the segment playback waits for that a newcomer would like to know before it
/// asks for it (in parts) ...
const SPLIT_HOLDERS: usize = 3;
/// ... unless it has known of the segment this long, or no partner is still greeting it.
const SPLIT_WAIT: Duration = Duration::from_millis(300);

/// Extra partners a viewer nobody feeds may dial, for the peers it was referred to.
const MAX_EXTRA_PARTNERS: usize = 3;

/// How long a peer that failed a dial or dropped us is left alone before being dialled again.
const REDIAL_BACKOFF: Duration = Duration::from_secs(10);

/// Why [`Exchange::publish`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// Only the broadcaster's exchange publishes.
    #[error("only the broadcaster can publish")]
    NotTheSource,
    /// The segment could not be described.
    #[error(transparent)]
    Integrity(#[from] IntegrityError),
}

#[cfg(test)]
mod tests;
