//! Serving partners: the upload queue (pushes to the peers we feed first, then requests,
//! each earliest deadline first, a request's deadline being its requester's), how many uploads run at once, and the measurement of the
//! uplink that both depend on.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{Exchange, Output};
use crate::identity::PeerId;
use crate::segment::SegmentId;
use crate::wire::{Frame, Part};

impl Exchange {
    /// A partner asks for a segment (or a part of one) that it plays at `deadline`. It is
    /// queued, earliest deadline first, if this peer's measured upload can send everything
    /// queued before it and the segment itself soon enough; otherwise the partner hears `Busy`
    /// at once and asks someone else. (The deadline is the requester's word: a peer that
    /// always claims to need its segments soon gets served first, but no more than its own
    /// requests' worth.)
    pub(super) fn on_request(
        &mut self,
        now: Instant,
        peer: PeerId,
        id: SegmentId,
        part: Part,
        deadline: Instant,
    ) {
        let Some(len) = self.store.get(&id).map(Bytes::len) else {
            self.send(peer, Frame::Missing(id));
            return;
        };
        let Some(len) = part.range(len).map(|r| r.len()) else {
            // A part that does not exist: not something a correct peer asks for.
            self.strike(peer);
            return;
        };
        let already = self.uploads.contains_key(&(peer, id))
            || self.upload_queue.iter().any(|q| q.to == peer && q.id == id);
        // On demand, a segment its requester should be playing already waits behind those
        // that can still come in time (earliest deadline first would otherwise let late
        // requests make the others late too, when a holder has more asked of it than it can
        // send).
        let deadline = if !self.is_live() && deadline <= now && id != SegmentId::Init {
            now + MAX_UPLOAD_WAIT
        } else {
            deadline
        };
        let pace = self.request_pace();
        let queued = |q: &&Queued| {
            // A paced request waits only for earlier requests; otherwise pushes go first.
            (!q.request && pace.is_none()) || q.request && q.deadline <= deadline
        };
        // Everything that goes before it: what is being sent, every push, earlier requests.
        let ahead: usize = self
            .uploads
            .values()
            .filter(|u| pace.is_none() || u.paced)
            .map(|u| u.bytes)
            .sum::<usize>()
            + self
                .upload_queue
                .iter()
                .filter(queued)
                .map(|q| self.queued_len(q))
                .sum::<usize>();
        let rate = pace.unwrap_or_else(|| self.meter.estimate_bps()).max(1.0);
        let finish = Duration::from_secs_f64((ahead + len) as f64 * 8.0 / rate);
        // The wait is bounded. On demand, where a holder serves viewers far apart in the
        // film, a request that would arrive after the requester plays it is turned down as
        // well, so that it asks elsewhere at once; one already late is served if the wait is
        // short. (Live, turning repairs down this way cost `live-churn` 0.006–0.013.)
        // Without a limit from the user the estimate starts as a guess: an idle uplink then
        // serves whatever the estimate says (that is how it gets measured at all).
        let idle = self.config.upload_limit_bps.is_none()
            && self.uploads.is_empty()
            && self.upload_queue.is_empty();
        let late = self.config.upload_slots != usize::MAX
            && !idle
            && (finish > MAX_UPLOAD_WAIT
                || self.upload_queue.len() >= MAX_UPLOAD_QUEUE
                || (!self.is_live() && deadline > now && now + finish > deadline));
        if already || late {
            self.stats.requests_refused += 1;
            self.send(peer, Frame::Busy(id));
            return;
        }
        self.queued_total += 1;
        self.upload_queue.insert(Queued {
            request: true,
            deadline,
            order: self.queued_total,
            to: peer,
            id,
            part,
        });
        self.start_uploads(now);
    }

    /// Adds the time since the last call, times the number of uploads under way, to each
    /// upload's sharing integral (called whenever that number is about to change).
    pub(super) fn account_sharing(&mut self, now: Instant) {
        if let Some(last) = self.uploads_accounted {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            let n = self.uploads.len() as f64;
            for up in self.uploads.values_mut() {
                up.shared += dt * n;
            }
        }
        self.uploads_accounted = Some(now);
    }

    /// Starts queued uploads: pushes one at a time to each child (the oldest segment first,
    /// as QUIC's stream priorities would order them anyway), forwards of segments still
    /// arriving at once (they go at the pace of their arrival, so they take no slot), the
    /// rest while slots are free.
    pub(super) fn start_uploads(&mut self, now: Instant) {
        let busy = self
            .uploads
            .values()
            .filter(|u| !u.forwarded && !u.paced)
            .count();
        let mut free = self.upload_slots().saturating_sub(busy);
        let pace = self.request_pace();
        let mut pacing = self.uploads.values().any(|u| u.paced);
        let mut starts: Vec<(Queued, Result<Bytes, PeerId>)> = Vec::new();
        let mut done: Vec<Queued> = Vec::new();
        let mut receiving: Vec<PeerId> = self.uploads.keys().map(|(to, _)| *to).collect();
        for q in &self.upload_queue {
            if !q.request && receiving.contains(&q.to) {
                continue;
            }
            if !q.request && q.deadline + STALE_PUSH < now {
                // Our child plays it already (or skipped it): pushing it now wastes upload.
                done.push(*q);
                continue;
            }
            let source = match (self.store.get(&q.id), self.arriving.get(&q.id)) {
                (Some(bytes), _) => Ok(bytes.clone()),
                (None, Some(arrival)) if !q.request => Err(arrival.from),
                (None, _) => {
                    // Evicted while it waited, or its arrival broke off (a push is then
                    // dropped: the child repairs from its partners).
                    if q.request {
                        self.outputs.push_back(Output::Send {
                            to: q.to,
                            frame: Frame::Missing(q.id),
                        });
                    }
                    done.push(*q);
                    continue;
                }
            };
            let holds = self
                .partners
                .get(&q.to)
                .is_none_or(|p| p.have.contains(q.id));
            if !q.request && holds {
                // Gone, or it got the segment elsewhere meanwhile: the push is not needed
                // any more. (A request is served whatever we heard: the requester knows.)
                done.push(*q);
                continue;
            }
            if q.request && pace.is_some() {
                // Beside pushes, one request at a time, at the pace the pushes leave free.
                if pacing {
                    continue;
                }
                pacing = true;
            } else if source.is_ok() {
                if free == 0 {
                    continue;
                }
                free -= 1;
            }
            done.push(*q);
            receiving.push(q.to);
            starts.push((*q, source));
        }
        for q in &done {
            self.upload_queue.remove(q);
        }
        if starts.is_empty() {
            return;
        }
        self.account_sharing(now);
        for (
            Queued {
                to: peer,
                id,
                part,
                request,
                ..
            },
            source,
        ) in starts
        {
            // The part was checked against the segment's length when it was queued.
            let source = source.map(|bytes| {
                let range = part.range(bytes.len()).unwrap_or(0..bytes.len());
                bytes.slice(range)
            });
            let len = match &source {
                Ok(bytes) => bytes.len(),
                Err(_) => self.statements.get(&id).map_or(0, |s| s.meta.len as usize),
            };
            let pace_kbps = pace.filter(|_| request).map(|p| {
                let floor = self.bitrate_bps() * MIN_PACE;
                (p.max(floor) / 1000.0) as u32
            });
            self.uploads.insert(
                (peer, id),
                Upload {
                    bytes: len,
                    started: now,
                    shared: 0.0,
                    forwarded: source.is_err(),
                    paced: pace_kbps.is_some(),
                },
            );
            self.stats.bytes_uploaded += len as u64;
            self.stats.segments_forwarded += u64::from(source.is_err());
            self.outputs.push_back(match source {
                Ok(bytes) => Output::SendSegment {
                    to: peer,
                    id,
                    part,
                    bytes,
                    pace_kbps,
                },
                Err(from) => Output::ForwardSegment { to: peer, id, from },
            });
        }
    }

    /// The rate at which a viewer that feeds others serves a request: what its uplink has
    /// beyond its children's streams (with headroom). Connections share an uplink about fairly
    /// (QUIC's priorities order the streams of one connection only), so a request sent at full
    /// speed beside the pushes would slow them below the stream's rate, and every peer below
    /// us would fall behind. `None` when nothing needs sparing: a peer that feeds nobody, the
    /// source (which keeps a stream's worth out of its children's share), or an idle uplink
    /// the user gave no bound for (sent at full speed, it gets measured; paced on a guess, it
    /// would stay a guess).
    pub(super) fn request_pace(&self) -> Option<f64> {
        let unmeasured_idle = self.config.upload_limit_bps.is_none() && self.uploads.is_empty();
        if self.config.upload_slots == usize::MAX
            || self.is_source()
            || self.children.is_empty()
            || unmeasured_idle
        {
            return None;
        }
        let pushes = self.children.len() as f64 * self.bitrate_bps() * PUSH_HEADROOM;
        Some((self.meter.estimate_bps() - pushes).max(0.0))
    }

    /// The bytes a queued upload sends.
    fn queued_len(&self, q: &Queued) -> usize {
        let len = self
            .statements
            .get(&q.id)
            .map_or(0, |s| s.meta.len as usize);
        q.part.range(len).map_or(0, |r| r.len())
    }

    /// The rate (kbit/s) at which we would send one more requested segment now, for our
    /// reports: beside pushes, what they leave; otherwise a fair share of the uplink with what
    /// we send already.
    pub(super) fn serve_kbps(&self) -> u32 {
        let bps = self.request_pace().unwrap_or_else(|| {
            let sending = self.uploads.values().filter(|u| !u.forwarded).count();
            self.meter.estimate_bps() / (sending + 1) as f64
        });
        (bps / 1000.0) as u32
    }

    /// How many segments this peer sends at once: one per four streams' worth of measured
    /// upload capacity (at least one), up to the configured bound. Few at a time, each at a
    /// high rate, finish sooner than many sharing the uplink (requests wait in the
    /// earliest-deadline-first queue instead); but one at a time is too few for a source
    /// feeding ten streams' worth, which then waits on each receiver's downlink in turn (its
    /// queue grew to 30 in `live-1k`, and the whole swarm fell seconds behind).
    pub(super) fn upload_slots(&self) -> usize {
        if self.config.upload_slots == usize::MAX {
            return usize::MAX; // A CDN-like source: everything at once.
        }
        let slots =
            (self.meter.estimate_bps() / self.bitrate_bps() / UPLOAD_STREAMS_PER_SLOT).ceil();
        (slots as usize).clamp(1, self.config.upload_slots)
    }
}

/// A segment being sent.
#[derive(Debug, Clone, Copy)]
pub(super) struct Upload {
    pub(super) bytes: usize,
    pub(super) started: Instant,
    /// The integral over its lifetime of how many uploads ran at once (seconds × uploads),
    /// to measure the uplink from its rate.
    pub(super) shared: f64,
    /// Forwarded while it arrived (its pace was the arrival's, not our uplink's).
    pub(super) forwarded: bool,
    /// A request sent at a pace that spares our pushes (see `request_pace`).
    pub(super) paced: bool,
}

/// An upload waiting for a slot; the order of the fields is the order of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Queued {
    /// A partner's request (after every push to a peer we feed).
    pub(super) request: bool,
    pub(super) deadline: Instant,
    /// Arrival order, among equal deadlines.
    pub(super) order: u64,
    pub(super) to: PeerId,
    pub(super) id: SegmentId,
    /// The part asked for ([`Part::WHOLE`] for pushes and whole requests).
    pub(super) part: Part,
}

/// An upload is accepted if everything queued before it and itself can be sent within this
/// time; otherwise the requester hears `Busy` and asks someone else.
const MAX_UPLOAD_WAIT: Duration = Duration::from_millis(1500);
/// The share of the uplink a viewer keeps for each peer it feeds, in streams: a request goes
/// at the pace of what is left.
const PUSH_HEADROOM: f64 = 1.1;
/// A request is paced no slower than this share of the stream's rate (a small one, such as
/// a part of a segment, may be accepted however little the pushes leave).
const MIN_PACE: f64 = 0.25;
/// The most requests a peer queues.
const MAX_UPLOAD_QUEUE: usize = 64;
/// A push still queued this long after the segment's deadline is dropped.
const STALE_PUSH: Duration = Duration::from_secs(1);
/// Streams' worth of upload per concurrent upload.
const UPLOAD_STREAMS_PER_SLOT: f64 = 4.0;
