//! Gossip: statements and `Have`s go only to partners not known to hold them, statements
//! never to the source, and, live, nothing to a viewer whose parent feeds it in time (it asked
//! for `Quiet`) but its parent's statements and reports. A viewer asks for quiet once its parent has pushed
//! it several segments in a row, and for news again when a segment is due that has not started
//! arriving, when its parent changes, or when statements stop coming.

use std::time::{Duration, Instant};

use tracing::debug;

use super::{Exchange, Output, Partner};
use crate::identity::PeerId;
use crate::segment::{SegmentId, SignedSegment};
use crate::wire::Frame;

impl Exchange {
    /// Live, a viewer its parent has fed every segment in time for a while asks its partners
    /// to stop announcing segments to it ([`QUIET_AFTER`] pushes in a row): the statements
    /// and `Have`s it would get from each of them are most of a swarm's messages, and it
    /// needs none while the pushes come. It asks for them again as soon as a segment is late
    /// (`schedule`), its parent changes, or no new statement came for 1.5 segments' time (its
    /// parent may be gone: `leave_silent_parent` needs to know the stream goes on).
    pub(super) fn update_quiet(&mut self, now: Instant) {
        let fed = self.is_live()
            && self.parent.is_some()
            && self.fed_streak.0 == self.parent
            && self.fed_streak.1 >= QUIET_AFTER;
        let silence = self
            .statements
            .values()
            .next_back()
            .map_or(Duration::ZERO, |s| s.meta.duration())
            .mul_f64(1.5)
            .max(MIN_QUIET_SILENCE);
        let flowing = self
            .last_fresh
            .is_some_and(|t| now.saturating_duration_since(t) < silence);
        let quiet = fed && flowing;
        if quiet != self.quiet {
            self.quiet = quiet;
            debug!(quiet, "asking partners for announcements");
            self.broadcast(None, Frame::Quiet(quiet));
        }
    }

    /// A partner asks for no announcements (`on`), or for them again: then it gets our
    /// report (not sent to it while it was quiet), and the statements and `Have`s of the
    /// newest segments it may lack.
    pub(super) fn on_quiet(&mut self, peer: PeerId, on: bool) {
        let from = self.catch_up_from();
        let report = self.report_frame();
        let Some(partner) = self.partners.get_mut(&peer) else {
            return;
        };
        let was = std::mem::replace(&mut partner.quiet, on);
        if on || !was {
            return;
        }
        self.outputs.push_back(Output::Send {
            to: peer,
            frame: report,
        });
        let recent = |id: &SegmentId| matches!(id, SegmentId::Media(n) if *n >= from);
        let news: Vec<SignedSegment> = self
            .statements
            .values()
            .filter(|s| recent(&s.meta.id) && !partner.told.contains(s.meta.id))
            .copied()
            .collect();
        for statement in &news {
            partner.told.insert(statement.meta.id);
        }
        let held: Vec<SegmentId> = self
            .store
            .keys()
            .filter(|id| recent(id) && !partner.have.contains(*id))
            .collect();
        if !news.is_empty() {
            self.send(peer, Frame::Announce(news));
        }
        if !held.is_empty() {
            self.send(peer, Frame::Have(held));
        }
    }

    /// The first media segment a partner is told of when it connects or asks for news again:
    /// live, [`LIVE_CATCH_UP`] behind the newest (it plays nothing older); on demand, the
    /// film's first (a viewer may seek anywhere).
    pub(super) fn catch_up_from(&self) -> u64 {
        match self.newest() {
            Some(newest) if self.is_live() => newest.saturating_sub(LIVE_CATCH_UP),
            _ => 0,
        }
    }

    /// Announces statements to the partners not known to hold them already, except to the
    /// source and to quiet partners we do not feed: the partner that sent one to us never
    /// hears it back. (Skipping partners nearer the source as well saved
    /// a third of the announcements in `sim`, but a swarm fell into a long stall once in six
    /// runs with it and never without, so it is not done.)
    pub(super) fn announce(&mut self, statements: &[SignedSegment]) {
        let source = self.source_peer();
        for index in 0..self.partners.len() {
            let (peer, partner) = self.partners.at_mut(index);
            // The peers we feed need the statements to take our pushes; the source made them.
            if !hears_news(partner, self.children.contains(&peer)) || Some(peer) == source {
                continue;
            }
            let news: Vec<SignedSegment> = statements
                .iter()
                .filter(|s| !partner.told.contains(s.meta.id))
                .copied()
                .collect();
            if news.is_empty() {
                continue;
            }
            for statement in &news {
                partner.told.insert(statement.meta.id);
            }
            self.outputs.push_back(Output::Send {
                to: peer,
                frame: Frame::Announce(news),
            });
        }
    }

    /// Tells every partner not known to hold segment `id` that we now hold it (but quiet ones
    /// and, live, the source).
    pub(super) fn announce_held(&mut self, id: SegmentId) {
        // Live, the source asks nobody for anything; a film's source names holders (`Find`).
        let source = self.source_peer().filter(|_| self.is_live());
        for index in 0..self.partners.len() {
            let (peer, partner) = self.partners.at_mut(index);
            if partner.quiet || partner.have.contains(id) || Some(peer) == source {
                continue;
            }
            self.outputs.push_back(Output::Send {
                to: peer,
                frame: Frame::Have(vec![id]),
            });
        }
    }

    pub(super) fn broadcast(&mut self, except: Option<PeerId>, frame: Frame) {
        // The last partner gets the frame itself, the others a copy each.
        let mut last = None;
        for &peer in self.partners.keys() {
            if Some(peer) == except {
                continue;
            }
            if let Some(to) = last.replace(peer) {
                self.outputs.push_back(Output::Send {
                    to,
                    frame: frame.clone(),
                });
            }
        }
        if let Some(to) = last {
            self.outputs.push_back(Output::Send { to, frame });
        }
    }
}

/// Whether `partner` gets our statements and reports: not while it is quiet (its parent feeds
/// it), unless we are that parent (`fed_by_us`).
pub(super) fn hears_news(partner: &Partner, fed_by_us: bool) -> bool {
    !partner.quiet || fed_by_us
}

/// Live, a viewer asks its partners to stop announcing to it once its parent pushed this many
/// segments in a row (`Quiet`).
const QUIET_AFTER: u32 = 4;
/// A quiet viewer asks for announcements again when no new statement came for one segment's
/// time and a half, and at least this long.
const MIN_QUIET_SILENCE: Duration = Duration::from_millis(1200);
/// A quiet viewer asks for announcements again when a segment that has not started arriving
/// is due within this many seconds (before `REPAIR_WINDOW_S`: the answers take a round trip).
pub(super) const QUIET_ALERT_S: f64 = 1.4;
/// A viewer that stopped being quiet because a segment was late looks again this soon, in case
/// no partner's answer does.
pub(super) const QUIET_RETRY: Duration = Duration::from_millis(100);
/// How many segments behind the newest a partner is told of when it connects or asks for
/// announcements again (live: it plays nothing older).
pub(super) const LIVE_CATCH_UP: u64 = 8;
