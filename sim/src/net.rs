//! The network model: where hosts are, how long messages take, how bulk transfers share
//! capacity, who can reach whom, and partitions.
//!
//! - **Latency**: hosts sit in a square measured in milliseconds; the one-way delay between two
//!   hosts is their distance plus both access-link delays, varied by a jitter fraction. QUIC is
//!   reliable, so a lost packet shows up as one retransmission timeout (1.5 RTT) of extra delay,
//!   not as a lost message.
//! - **Bandwidth** (flow level, not packets): every bulk transfer is a flow from one host's
//!   upload to another's download. A flow's rate is the smaller of its fair shares at both ends
//!   (capacity / number of flows there), recomputed whenever a flow starts or ends at either
//!   end. A transfer of `size` bytes alone on its path takes `size / min(up, down)`.
//! - **Connectivity**: every host has a NAT type; [`Net::can_connect`] applies the RFC 4787
//!   matrix (with or without hole punching) and the current partition.
//! - **Partitions** split the hosts into two sides; nothing crosses until the split heals.

use std::time::Duration;

use rand::Rng;

use crate::scenario::Traversal;

/// Simulated time in nanoseconds since the start of the run.
pub type SimTime = u64;

/// A host's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostId(pub u32);

/// A NAT's behaviour toward inbound connections (RFC 4787 terms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum NatType {
    /// No NAT: publicly reachable.
    Open,
    /// Endpoint-independent mapping and filtering.
    FullCone,
    /// Endpoint-independent mapping, address-and-port-dependent filtering.
    PortRestricted,
    /// Address-and-port-dependent mapping: a new port per destination.
    Symmetric,
}

impl NatType {
    /// Whether a host behind `dialer` can open a direct connection to a host behind `target`.
    ///
    /// Without traversal only hosts that accept unsolicited packets can be dialled: open ones,
    /// and full-cone ones (their mapping, made when they first talked to anyone, accepts
    /// packets from everybody). With hole punching both sides send at once, which works unless
    /// a symmetric NAT meets a symmetric or port-restricted one (the symmetric side's new port
    /// is unknown to the other side's filter).
    pub fn can_connect(dialer: NatType, target: NatType, traversal: Traversal) -> bool {
        use NatType::*;
        match traversal {
            Traversal::None => matches!(target, Open | FullCone),
            Traversal::Punching => !matches!(
                (dialer, target),
                (Symmetric, Symmetric | PortRestricted) | (PortRestricted, Symmetric)
            ),
        }
    }
}

/// A host's place in the network.
#[derive(Debug, Clone)]
pub struct HostNet {
    /// Position, in milliseconds.
    pub pos: (f64, f64),
    /// Access-link one-way delay, in milliseconds.
    pub access_ms: f64,
    /// Upload capacity in bit/s (may be infinite).
    pub up_bps: f64,
    /// Download capacity in bit/s.
    pub down_bps: f64,
    /// NAT type.
    pub nat: NatType,
    /// Which side of the current partition the host is on.
    pub side: u8,
    up_flows: Vec<FlowId>,
    down_flows: Vec<FlowId>,
}

impl HostNet {
    /// A host at `pos` with the given access delay, capacities and NAT.
    pub fn new(pos: (f64, f64), access_ms: f64, up_bps: f64, down_bps: f64, nat: NatType) -> Self {
        Self {
            pos,
            access_ms,
            up_bps,
            down_bps,
            nat,
            side: 0,
            up_flows: Vec::new(),
            down_flows: Vec::new(),
        }
    }
}

/// A flow's handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlowId(pub u32);

#[derive(Debug)]
struct Flow<P> {
    from: HostId,
    to: HostId,
    /// Its size.
    bytes: u64,
    /// Unique over the run (slots are reused; a serial names one flow for good).
    serial: u64,
    /// A forward: the host whose flow into `from` this one passes on (see [`Ended::gate`]).
    gate: Option<HostId>,
    /// The most it goes at (a sender pacing it), or infinity.
    cap_bps: f64,
    remaining_bits: f64,
    rate_bps: f64,
    updated: SimTime,
    version: u32,
    payload: P,
}

/// A flow that ended (finished or aborted).
#[derive(Debug)]
pub struct Ended<P> {
    /// The sender.
    pub from: HostId,
    /// The receiver.
    pub to: HostId,
    /// What it carried.
    pub payload: P,
    /// For a flow that forwards another one as it arrives (cut-through), the sender of that
    /// other flow: the forward's last bytes cannot arrive before the forwarder has checked
    /// the whole of what it passes on, which the engine waits for.
    pub gate: Option<HostId>,
}

/// A flow under way, as [`Net::find_flow`] reports it.
#[derive(Debug, Clone, Copy)]
pub struct Running<'a, P> {
    /// Its handle.
    pub id: FlowId,
    /// Its serial (see [`Net::abort_flow`]).
    pub serial: u64,
    /// Its size.
    pub bytes: u64,
    /// What it carries.
    pub payload: &'a P,
}

/// A payload that carries a tag (the engine's `(tag, message)` pairs).
pub trait Tagged {
    /// The tag.
    fn tag(&self) -> u64;
}

impl<M> Tagged for (u64, M) {
    fn tag(&self) -> u64 {
        self.0
    }
}

impl<P> Flow<P> {
    fn ended(self) -> Ended<P> {
        Ended {
            from: self.from,
            to: self.to,
            payload: self.payload,
            gate: self.gate,
        }
    }
}

/// When a flow will finish, for the engine's queue. Events whose version no longer matches the
/// flow's are stale and ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowDeadline {
    /// The flow.
    pub flow: FlowId,
    /// Its version when this deadline was computed.
    pub version: u32,
    /// When it finishes at its current rate.
    pub at: SimTime,
}

/// The network: hosts, flows and the partition state.
#[derive(Debug)]
pub struct Net<P> {
    hosts: Vec<HostNet>,
    flows: Vec<Option<Flow<P>>>,
    /// The version each slot's last flow ended at: the next flow in that slot counts on from
    /// there, so a deadline queued for the old flow never matches the new one.
    slot_versions: Vec<u32>,
    free: Vec<u32>,
    next_serial: u64,
    traversal: Traversal,
    jitter: f64,
    loss: f64,
    partitioned: bool,
}

impl<P> Net<P> {
    /// An empty network.
    pub fn new(traversal: Traversal, jitter: f64, loss: f64) -> Self {
        Self {
            hosts: Vec::new(),
            flows: Vec::new(),
            slot_versions: Vec::new(),
            free: Vec::new(),
            next_serial: 0,
            traversal,
            jitter,
            loss,
            partitioned: false,
        }
    }

    /// Adds a host; its id is the next index.
    pub fn add_host(&mut self, host: HostNet) -> HostId {
        self.hosts.push(host);
        HostId(self.hosts.len() as u32 - 1)
    }

    /// A host's network state.
    pub fn host(&self, id: HostId) -> &HostNet {
        &self.hosts[id.0 as usize]
    }

    /// Sets a host's capacities (e.g. a source restarted with other settings).
    pub fn set_capacity(&mut self, id: HostId, up_bps: f64, down_bps: f64) {
        let h = &mut self.hosts[id.0 as usize];
        h.up_bps = up_bps;
        h.down_bps = down_bps;
    }

    /// The base one-way delay between two hosts, without jitter.
    pub fn base_delay(&self, a: HostId, b: HostId) -> Duration {
        let (ha, hb) = (self.host(a), self.host(b));
        let dist = ((ha.pos.0 - hb.pos.0).powi(2) + (ha.pos.1 - hb.pos.1).powi(2)).sqrt();
        Duration::from_secs_f64((dist + ha.access_ms + hb.access_ms) / 1000.0)
    }

    /// The one-way delay of one message, with jitter and loss recovery drawn from `rng`.
    pub fn message_delay(&self, a: HostId, b: HostId, rng: &mut impl Rng) -> Duration {
        self.jittered(self.base_delay(a, b), rng)
    }

    /// The one-way delay of one message over a path of base delay `base` (from
    /// [`Net::base_delay`]), with jitter and loss recovery drawn from `rng`.
    pub fn jittered(&self, base: Duration, rng: &mut impl Rng) -> Duration {
        let mut delay = if self.jitter > 0.0 {
            base.mul_f64(1.0 + rng.gen_range(-self.jitter..=self.jitter))
        } else {
            base
        };
        if self.loss > 0.0 && rng.gen_bool(self.loss) {
            delay += base.mul_f64(3.0); // one retransmission timeout ≈ 1.5 RTT
        }
        delay
    }

    /// Whether `dialer` can open a connection to `target` now.
    pub fn can_connect(&self, dialer: HostId, target: HostId) -> bool {
        let (d, t) = (self.host(dialer), self.host(target));
        self.same_side(dialer, target) && NatType::can_connect(d.nat, t.nat, self.traversal)
    }

    /// Whether packets between the two hosts get through (no partition between them).
    pub fn same_side(&self, a: HostId, b: HostId) -> bool {
        !self.partitioned || self.host(a).side == self.host(b).side
    }

    /// Splits the network: hosts for which `cut_off` is true go to side 1.
    pub fn partition(&mut self, mut cut_off: impl FnMut(HostId) -> bool) {
        self.partitioned = true;
        for (i, h) in self.hosts.iter_mut().enumerate() {
            h.side = u8::from(cut_off(HostId(i as u32)));
        }
    }

    /// Heals the partition.
    pub fn heal(&mut self) {
        self.partitioned = false;
    }

    /// Starts a bulk transfer of `bytes` from `from` to `to`. Returns the new deadlines of every
    /// flow whose rate changed, the new one included.
    pub fn start_flow(
        &mut self,
        now: SimTime,
        from: HostId,
        to: HostId,
        bytes: u64,
        payload: P,
    ) -> Vec<FlowDeadline> {
        self.start_capped_flow(now, from, to, bytes, payload, None, f64::INFINITY)
            .2
    }

    /// Starts a bulk transfer that goes at most at `cap_bps` (its sender paces it; infinite for
    /// none); the sender's other flows share what it leaves. `gate` marks a forward of what
    /// `gate` sends `from` (see [`Ended::gate`]). Returns the flow's handle and serial, and the
    /// new deadlines of every flow whose rate changed, the new one included.
    #[allow(clippy::too_many_arguments)]
    pub fn start_capped_flow(
        &mut self,
        now: SimTime,
        from: HostId,
        to: HostId,
        bytes: u64,
        payload: P,
        gate: Option<HostId>,
        cap_bps: f64,
    ) -> (FlowId, u64, Vec<FlowDeadline>) {
        let serial = self.next_serial;
        self.next_serial += 1;
        let mut flow = Flow {
            from,
            to,
            bytes,
            serial,
            gate,
            cap_bps,
            remaining_bits: bytes as f64 * 8.0,
            rate_bps: 0.0,
            updated: now,
            version: 0,
            payload,
        };
        let id = match self.free.pop() {
            Some(i) => {
                flow.version = self.slot_versions[i as usize];
                self.flows[i as usize] = Some(flow);
                FlowId(i)
            }
            None => {
                self.flows.push(Some(flow));
                self.slot_versions.push(0);
                FlowId(self.flows.len() as u32 - 1)
            }
        };
        self.hosts[from.0 as usize].up_flows.push(id);
        self.hosts[to.0 as usize].down_flows.push(id);
        (id, serial, self.rebalance(now, &[from], &[to]))
    }

    /// The flow from `from` to `to` under way whose payload satisfies `matches`, if any.
    pub fn find_flow(
        &self,
        from: HostId,
        to: HostId,
        matches: impl Fn(&P) -> bool,
    ) -> Option<Running<'_, P>> {
        self.host(to).down_flows.iter().find_map(|id| {
            let f = self.flows.get(id.0 as usize)?.as_ref()?;
            (f.from == from && matches(&f.payload)).then_some(Running {
                id: *id,
                serial: f.serial,
                bytes: f.bytes,
                payload: &f.payload,
            })
        })
    }

    /// The sender, receiver and payload's tag of flow `id`, if it is still the one with this
    /// serial.
    pub fn running(&self, id: FlowId, serial: u64) -> Option<(HostId, HostId, u64)>
    where
        P: Tagged,
    {
        let f = self.flows.get(id.0 as usize)?.as_ref()?;
        (f.serial == serial).then(|| (f.from, f.to, f.payload.tag()))
    }

    /// Whether flow `id` is still the one with this serial (it has not ended).
    pub fn is_running(&self, id: FlowId, serial: u64) -> bool {
        self.flows
            .get(id.0 as usize)
            .and_then(Option::as_ref)
            .is_some_and(|f| f.serial == serial)
    }

    /// Aborts flow `id` if it is still the one with this serial. Returns it, and the new
    /// deadlines of the flows that now go faster.
    pub fn abort_flow(
        &mut self,
        now: SimTime,
        id: FlowId,
        serial: u64,
    ) -> Option<(Ended<P>, Vec<FlowDeadline>)> {
        if !self.is_running(id, serial) {
            return None;
        }
        let flow = self.remove_flow(id)?;
        let changed = self.rebalance(now, &[flow.from], &[flow.to]);
        Some((flow.ended(), changed))
    }

    /// Completes a flow if `deadline` is current; returns its endpoints and payload, and the new
    /// deadlines of the flows that now go faster.
    pub fn finish_flow(
        &mut self,
        now: SimTime,
        deadline: FlowDeadline,
    ) -> Option<(Ended<P>, Vec<FlowDeadline>)> {
        let current = self.flows.get(deadline.flow.0 as usize)?.as_ref()?;
        if current.version != deadline.version {
            return None;
        }
        let flow = self.remove_flow(deadline.flow)?;
        let changed = self.rebalance(now, &[flow.from], &[flow.to]);
        Some((flow.ended(), changed))
    }

    /// Aborts every flow to or from `host` (it crashed or left). Returns the aborted flows'
    /// endpoints and payloads, and the new deadlines of flows that sped up.
    pub fn drop_host_flows(
        &mut self,
        now: SimTime,
        host: HostId,
    ) -> (Vec<(HostId, HostId, P)>, Vec<FlowDeadline>) {
        let h = &mut self.hosts[host.0 as usize];
        let ids: Vec<FlowId> = h
            .up_flows
            .iter()
            .chain(h.down_flows.iter())
            .copied()
            .collect();
        let mut aborted = Vec::new();
        let (mut senders, mut receivers) = (Vec::new(), Vec::new());
        for id in ids {
            if let Some(flow) = self.remove_flow(id) {
                senders.push(flow.from);
                receivers.push(flow.to);
                aborted.push((flow.from, flow.to, flow.payload));
            }
        }
        senders.sort();
        senders.dedup();
        receivers.sort();
        receivers.dedup();
        let changed = self.rebalance(now, &senders, &receivers);
        (aborted, changed)
    }

    /// The rate each uncapped flow leaving `host` gets: its uplink shared equally, except
    /// that a flow capped below the equal share takes only its cap and leaves the rest to the
    /// others (max-min fairness at the sender).
    fn upload_level(&self, host: HostId) -> f64 {
        let h = self.host(host);
        let mut caps: Vec<f64> = h
            .up_flows
            .iter()
            .filter_map(|id| self.flows.get(id.0 as usize)?.as_ref())
            .map(|f| f.cap_bps)
            .filter(|c| c.is_finite())
            .collect();
        let (mut left, mut n) = (h.up_bps, h.up_flows.len().max(1));
        if caps.is_empty() {
            return left / n as f64;
        }
        caps.sort_by(f64::total_cmp);
        for cap in caps {
            if n <= 1 || cap >= left / n as f64 {
                break;
            }
            left -= cap;
            n -= 1;
        }
        left / n as f64
    }

    /// The rate at which `host` sends one more flow now: its uplink's fair share.
    pub fn upload_share_bps(&self, host: HostId) -> f64 {
        let h = self.host(host);
        h.up_bps / (h.up_flows.len() as f64).max(1.0)
    }

    /// Flows currently leaving `host`.
    pub fn uploads(&self, host: HostId) -> usize {
        self.host(host).up_flows.len()
    }

    fn remove_flow(&mut self, id: FlowId) -> Option<Flow<P>> {
        let flow = self.flows.get_mut(id.0 as usize)?.take()?;
        self.slot_versions[id.0 as usize] = flow.version;
        self.free.push(id.0);
        let up = &mut self.hosts[flow.from.0 as usize].up_flows;
        if let Some(i) = up.iter().position(|f| *f == id) {
            up.swap_remove(i);
        }
        let down = &mut self.hosts[flow.to.0 as usize].down_flows;
        if let Some(i) = down.iter().position(|f| *f == id) {
            down.swap_remove(i);
        }
        Some(flow)
    }

    /// Recomputes the rate of every flow leaving `senders` or entering `receivers`.
    fn rebalance(
        &mut self,
        now: SimTime,
        senders: &[HostId],
        receivers: &[HostId],
    ) -> Vec<FlowDeadline> {
        let mut affected: Vec<FlowId> = Vec::new();
        for s in senders {
            let h = &self.hosts[s.0 as usize];
            // An unlimited uplink (the source-only baseline's broadcaster, with a flow per
            // viewer) gives each flow what its receiver takes, however many there are: a flow
            // that starts or ends there changes no other flow's rate.
            if h.up_bps.is_finite() {
                affected.extend_from_slice(&h.up_flows);
            }
        }
        for r in receivers {
            affected.extend_from_slice(&self.hosts[r.0 as usize].down_flows);
        }
        affected.sort();
        affected.dedup();
        let mut changed = Vec::with_capacity(affected.len());
        // Each sender's level once: a sender with n flows would otherwise cost n² (the
        // source-only baseline's broadcaster has one flow per viewer).
        let mut levels: Vec<(HostId, f64)> = Vec::new();
        for id in affected {
            let rate = {
                let Some(flow) = self.flows[id.0 as usize].as_ref() else {
                    continue;
                };
                let r = self.host(flow.to);
                let level = match levels.iter().find(|(h, _)| *h == flow.from) {
                    Some((_, level)) => *level,
                    None => {
                        let level = self.upload_level(flow.from);
                        levels.push((flow.from, level));
                        level
                    }
                };
                let up = flow.cap_bps.min(level);
                up.min(r.down_bps / r.down_flows.len() as f64)
            };
            let Some(flow) = self.flows[id.0 as usize].as_mut() else {
                continue;
            };
            let elapsed = (now - flow.updated) as f64 / 1e9;
            flow.remaining_bits = (flow.remaining_bits - flow.rate_bps * elapsed).max(0.0);
            flow.updated = now;
            if flow.rate_bps == rate && flow.version > 0 {
                continue;
            }
            flow.rate_bps = rate;
            flow.version += 1;
            let secs = if rate > 0.0 {
                flow.remaining_bits / rate
            } else {
                f64::INFINITY
            };
            let at = if secs.is_finite() {
                now + (secs * 1e9).ceil() as u64
            } else {
                SimTime::MAX
            };
            changed.push(FlowDeadline {
                flow: id,
                version: flow.version,
                at,
            });
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MBIT: f64 = 1e6;

    fn net_with(hosts: &[(f64, f64)]) -> Net<u32> {
        let mut net = Net::new(Traversal::None, 0.0, 0.0);
        for (i, (up, down)) in hosts.iter().enumerate() {
            net.add_host(HostNet::new(
                (i as f64 * 10.0, 0.0),
                5.0,
                *up,
                *down,
                NatType::Open,
            ));
        }
        net
    }

    /// Runs flows to completion, returning (payload, finish time) in finishing order.
    fn drain(net: &mut Net<u32>, mut deadlines: Vec<FlowDeadline>) -> Vec<(u32, SimTime)> {
        let mut done = Vec::new();
        loop {
            deadlines.sort_by_key(|d| d.at);
            let Some(next) = deadlines.first().copied() else {
                return done;
            };
            deadlines.remove(0);
            if let Some((ended, changed)) = net.finish_flow(next.at, next) {
                let payload = ended.payload;
                done.push((payload, next.at));
                deadlines.extend(changed);
            }
        }
    }

    #[test]
    fn one_transfer_takes_size_over_bandwidth() {
        let mut net = net_with(&[(10.0 * MBIT, 100.0 * MBIT), (10.0 * MBIT, 100.0 * MBIT)]);
        // 250 kB at 10 Mbit/s: 0.2 s.
        let d = net.start_flow(0, HostId(0), HostId(1), 250_000, 7);
        let done = drain(&mut net, d);
        assert_eq!(done, vec![(7, 200_000_000)]);
        // Latency is separate: distance 10 ms plus 2 × 5 ms access.
        assert_eq!(
            net.base_delay(HostId(0), HostId(1)),
            Duration::from_millis(20)
        );
    }

    #[test]
    fn concurrent_flows_share_an_upload_fairly() {
        let mut net = net_with(&[
            (8.0 * MBIT, 100.0 * MBIT),
            (1.0, 100.0 * MBIT),
            (1.0, 100.0 * MBIT),
            (1.0, 100.0 * MBIT),
            (1.0, 100.0 * MBIT),
        ]);
        let mut deadlines = Vec::new();
        for i in 1..=4 {
            // 1 MB each; alone 1 s, four at once 4 s each.
            deadlines.extend(net.start_flow(0, HostId(0), HostId(i), 1_000_000, i));
        }
        let done = drain(&mut net, deadlines);
        assert_eq!(done.len(), 4);
        for (_, at) in &done {
            assert!((*at as f64 / 1e9 - 4.0).abs() < 1e-6, "{done:?}");
        }
    }

    #[test]
    fn a_paced_flow_takes_its_cap_and_leaves_the_rest_to_the_others() {
        let mut net = net_with(&[
            (8.0 * MBIT, 100.0 * MBIT),
            (1.0, 100.0 * MBIT),
            (1.0, 100.0 * MBIT),
        ]);
        // 2 Mbit/s for the paced one, 6 for the other: 1 MB takes 4 s and 1.33 s.
        let (_, _, mut d) =
            net.start_capped_flow(0, HostId(0), HostId(1), 1_000_000, 1, None, 2.0 * MBIT);
        d.extend(net.start_flow(0, HostId(0), HostId(2), 1_000_000, 2));
        let done = drain(&mut net, d);
        assert_eq!(done[0].0, 2);
        assert!(
            (done[0].1 as f64 / 1e9 - 8.0 / 6.0).abs() < 1e-6,
            "{done:?}"
        );
        assert!((done[1].1 as f64 / 1e9 - 4.0).abs() < 1e-6, "{done:?}");
    }

    #[test]
    fn a_flow_speeds_up_when_a_neighbour_finishes() {
        let mut net = net_with(&[
            (8.0 * MBIT, 100.0 * MBIT),
            (1.0, 100.0 * MBIT),
            (1.0, 100.0 * MBIT),
        ]);
        let mut d = net.start_flow(0, HostId(0), HostId(1), 500_000, 1);
        d.extend(net.start_flow(0, HostId(0), HostId(2), 1_500_000, 2));
        let done = drain(&mut net, d);
        // Both at 4 Mbit/s until the first (4 Mbit) ends at 1 s; the second then has 8 Mbit
        // left at 8 Mbit/s: done at 2 s.
        assert_eq!(done[0], (1, 1_000_000_000));
        assert!((done[1].1 as f64 / 1e9 - 2.0).abs() < 1e-6, "{done:?}");
    }

    #[test]
    fn the_download_side_limits_too() {
        let mut net = net_with(&[(100.0 * MBIT, 1.0), (100.0 * MBIT, 1.0), (1.0, 2.0 * MBIT)]);
        let mut d = net.start_flow(0, HostId(0), HostId(2), 250_000, 1);
        d.extend(net.start_flow(0, HostId(1), HostId(2), 250_000, 2));
        let done = drain(&mut net, d);
        // Two flows into a 2 Mbit/s download: 1 Mbit/s each, 2 Mbit each: 2 s.
        assert!(
            done.iter()
                .all(|(_, at)| (*at as f64 / 1e9 - 2.0).abs() < 1e-6),
            "{done:?}"
        );
    }

    #[test]
    fn a_partition_blocks_and_healing_restores() {
        let mut net = net_with(&[(1.0, 1.0), (1.0, 1.0), (1.0, 1.0)]);
        assert!(net.can_connect(HostId(0), HostId(2)));
        net.partition(|h| h == HostId(2));
        assert!(!net.can_connect(HostId(0), HostId(2)) && !net.same_side(HostId(2), HostId(1)));
        assert!(net.can_connect(HostId(0), HostId(1)));
        net.heal();
        assert!(net.can_connect(HostId(0), HostId(2)));
    }

    #[test]
    fn the_nat_matrix_follows_rfc_4787() {
        use NatType::*;
        let all = [Open, FullCone, PortRestricted, Symmetric];
        for d in all {
            assert!(NatType::can_connect(d, Open, Traversal::None));
            assert!(!NatType::can_connect(d, PortRestricted, Traversal::None));
            assert!(!NatType::can_connect(d, Symmetric, Traversal::None));
        }
        assert!(NatType::can_connect(
            PortRestricted,
            PortRestricted,
            Traversal::Punching
        ));
        assert!(NatType::can_connect(
            Symmetric,
            FullCone,
            Traversal::Punching
        ));
        assert!(NatType::can_connect(Open, Symmetric, Traversal::Punching));
        assert!(!NatType::can_connect(
            Symmetric,
            PortRestricted,
            Traversal::Punching
        ));
        assert!(!NatType::can_connect(
            PortRestricted,
            Symmetric,
            Traversal::Punching
        ));
        assert!(!NatType::can_connect(
            Symmetric,
            Symmetric,
            Traversal::Punching
        ));
    }
}
