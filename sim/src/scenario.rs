//! Scenario files: what to simulate, in TOML, validated before anything runs.
//!
//! A scenario names the stream, the source, the network and the viewers' workload. Unknown keys
//! and out-of-range values are errors that name the key, so a typo never silently falls back to
//! a default. See `sim/scenarios/` for examples.

use std::path::Path;

use serde::Deserialize;

/// A whole scenario.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// A short name, used in reports.
    pub name: String,
    /// Simulated duration in seconds.
    pub duration_s: f64,
    /// The seed used when the command line gives none.
    #[serde(default)]
    pub seed: u64,
    /// How often the time series is sampled, in seconds.
    #[serde(default = "defaults::sample_every_s")]
    pub sample_every_s: f64,
    /// The stream.
    pub stream: Stream,
    /// The broadcaster's host.
    pub source: Source,
    /// The network between hosts.
    #[serde(default)]
    pub network: Network,
    /// Who watches, with what capacity, and when they come and go.
    pub viewers: Viewers,
    /// Protocol settings (the exchange's tuning).
    #[serde(default)]
    pub protocol: Protocol,
    /// An HTTP origin (a CDN) that viewers ask instead of the broadcaster as a last resort.
    #[serde(default)]
    pub origin: Option<OriginServer>,
    /// The optimizer's loop (reports, plans, hints). When present, `sim run` adds a run with
    /// it and a random-mesh baseline beside Selfcast and the source-only baseline.
    #[serde(default)]
    pub optimizer: Option<OptimizerLoop>,
}

/// An HTTP origin holding every segment the broadcaster published.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OriginServer {
    /// Its upload capacity in Mbit/s.
    pub up_mbps: f64,
}

/// The optimizer's loop in a run: viewers report to a coordinator on the source's host, which
/// plans and sends each viewer its hint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerLoop {
    /// Seconds between two plans (and between two reports of a viewer).
    #[serde(default = "defaults::round_s")]
    pub round_s: f64,
}

/// The stream being broadcast.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stream {
    /// Live or on demand.
    #[serde(default)]
    pub kind: StreamKind,
    /// Bitrate in kbit/s.
    pub bitrate_kbps: f64,
    /// Segment duration in milliseconds.
    #[serde(default = "defaults::segment_ms")]
    pub segment_ms: u64,
    /// VOD: length of the film in seconds (all segments exist from the start).
    #[serde(default)]
    pub vod_length_s: Option<f64>,
}

/// Live or on demand.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StreamKind {
    /// Segments appear in real time.
    #[default]
    Live,
    /// The whole stream exists from the start.
    Vod,
}

/// The broadcaster's host.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// Upload capacity in Mbit/s.
    pub up_mbps: f64,
    /// Times the source fails (crashes) and comes back.
    #[serde(default)]
    pub failures: Vec<Outage>,
}

/// A source failure.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outage {
    /// When it crashes, in seconds.
    pub at_s: f64,
    /// How long it stays away, in seconds.
    pub down_s: f64,
}

/// The network model's parameters.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Hosts sit uniformly in a square of this side, in milliseconds of one-way delay.
    #[serde(default = "defaults::area_ms")]
    pub area_ms: f64,
    /// Each host's access-link delay is uniform in this range, in milliseconds.
    #[serde(default = "defaults::access_ms")]
    pub access_ms: [f64; 2],
    /// Each message's delay varies by up to this fraction, up or down.
    #[serde(default = "defaults::jitter")]
    pub jitter: f64,
    /// Packet loss probability; QUIC recovers a lost packet one retransmission timeout later.
    #[serde(default)]
    pub loss: f64,
    /// The viewers' NAT types, as shares summing to 1.
    #[serde(default)]
    pub nat: NatMix,
    /// Whether peers behind NATs punch holes (then the RFC 4787 matrix decides) or only reach
    /// publicly reachable peers.
    #[serde(default)]
    pub traversal: Traversal,
    /// Network partitions.
    #[serde(default)]
    pub partitions: Vec<Partition>,
}

/// Shares of NAT types among viewers.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatMix {
    /// Publicly reachable.
    #[serde(default = "defaults::one")]
    pub open: f64,
    /// Endpoint-independent mapping and filtering.
    #[serde(default)]
    pub full_cone: f64,
    /// Endpoint-independent mapping, address-and-port-dependent filtering.
    #[serde(default)]
    pub port_restricted: f64,
    /// Address-and-port-dependent mapping.
    #[serde(default)]
    pub symmetric: f64,
}

/// How hosts behind NATs connect.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Traversal {
    /// No hole punching: only open and full-cone hosts accept connections.
    #[default]
    None,
    /// Coordinated hole punching: every pair except those involving a symmetric NAT and a
    /// port-restricted or symmetric one.
    Punching,
}

/// A network split.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partition {
    /// When the split happens, in seconds.
    pub at_s: f64,
    /// How long it lasts, in seconds.
    pub duration_s: f64,
    /// The share of hosts cut off from the rest (the source stays on the other side).
    pub fraction: f64,
}

/// The viewers' workload.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Viewers {
    /// Viewers present from the start (joining over `join_over_s`).
    #[serde(default)]
    pub initial: u32,
    /// The initial viewers join uniformly over this many seconds.
    #[serde(default = "defaults::join_over_s")]
    pub join_over_s: f64,
    /// Upload/download capacity classes.
    pub classes: Vec<CapacityClass>,
    /// Session lengths and how sessions end.
    #[serde(default)]
    pub churn: Option<Churn>,
    /// Sudden arrivals.
    #[serde(default)]
    pub flash_crowds: Vec<FlashCrowd>,
    /// On demand: where viewers start watching and how often they seek.
    #[serde(default)]
    pub vod: Option<VodViewing>,
}

/// How on-demand viewers watch.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VodViewing {
    /// Where a viewer starts.
    #[serde(default)]
    pub start: VodStart,
    /// Time between a viewer's seeks (each to a random position), if they seek.
    #[serde(default)]
    pub seek_every: Option<SessionLength>,
}

/// Where an on-demand viewer starts watching.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VodStart {
    /// At the first segment.
    #[default]
    Beginning,
    /// At a position drawn uniformly from the film (not in its last tenth).
    Random,
}

/// A class of access links.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapacityClass {
    /// A label (e.g. "dsl").
    pub name: String,
    /// The share of viewers in this class.
    pub share: f64,
    /// Upload capacity in Mbit/s.
    pub up_mbps: f64,
    /// Download capacity in Mbit/s.
    pub down_mbps: f64,
    /// This class's NAT types, if not the network's (e.g. a class of viewers behind
    /// restrictive NATs).
    #[serde(default)]
    pub nat: Option<NatMix>,
}

/// Session lengths and departures.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Churn {
    /// The session length distribution.
    pub session: SessionLength,
    /// The share of departures that are crashes (the rest leave gracefully).
    #[serde(default)]
    pub crash_fraction: f64,
    /// Whether each departing viewer is replaced by a newcomer (a steady population).
    #[serde(default = "defaults::yes")]
    pub replace: bool,
}

impl SessionLength {
    /// Checks the parameters; `keys` name them for errors (mean, shape, scale, alpha, min).
    fn validate(self, keys: [&'static str; 5]) -> Result<(), (&'static str, String)> {
        match self {
            Self::Exponential { mean_s } => positive(keys[0], mean_s),
            Self::Weibull { shape, scale_s } => {
                positive(keys[1], shape)?;
                positive(keys[2], scale_s)
            }
            Self::Pareto { alpha, min_s } => {
                positive(keys[3], alpha)?;
                positive(keys[4], min_s)
            }
        }
    }
}

/// A session length distribution, in seconds.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(tag = "dist", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SessionLength {
    /// Exponential with the given mean.
    Exponential {
        /// Mean session length in seconds.
        mean_s: f64,
    },
    /// Weibull with shape k and scale λ.
    Weibull {
        /// Shape.
        shape: f64,
        /// Scale in seconds.
        scale_s: f64,
    },
    /// Pareto with shape α and minimum x_m.
    Pareto {
        /// Shape.
        alpha: f64,
        /// Minimum in seconds.
        min_s: f64,
    },
}

/// `peers` viewers arriving within `over_s` seconds from `at_s`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlashCrowd {
    /// Start, in seconds.
    pub at_s: f64,
    /// How many arrive.
    pub peers: u32,
    /// Over how many seconds.
    pub over_s: f64,
}

/// Protocol settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Protocol {
    /// Partners a viewer keeps.
    #[serde(default = "defaults::max_partners")]
    pub max_partners: usize,
    /// Bootstrap peers a joining viewer is given besides the source.
    #[serde(default = "defaults::bootstrap_peers")]
    pub bootstrap_peers: usize,
    /// Segments behind the live edge at which a viewer starts.
    #[serde(default = "defaults::live_start_behind")]
    pub live_start_behind: u64,
    /// A live player's target latency in seconds: it plays each segment this long after the
    /// source created it (for the continuity measure).
    #[serde(default = "defaults::playback_latency_s")]
    pub playback_latency_s: f64,
}

impl Default for Network {
    fn default() -> Self {
        Self {
            area_ms: defaults::area_ms(),
            access_ms: defaults::access_ms(),
            jitter: defaults::jitter(),
            loss: 0.0,
            nat: NatMix::default(),
            traversal: Traversal::None,
            partitions: Vec::new(),
        }
    }
}

impl Default for NatMix {
    fn default() -> Self {
        Self {
            open: 1.0,
            full_cone: 0.0,
            port_restricted: 0.0,
            symmetric: 0.0,
        }
    }
}

impl Default for Protocol {
    fn default() -> Self {
        Self {
            max_partners: defaults::max_partners(),
            bootstrap_peers: defaults::bootstrap_peers(),
            live_start_behind: defaults::live_start_behind(),
            playback_latency_s: defaults::playback_latency_s(),
        }
    }
}

mod defaults {
    pub fn sample_every_s() -> f64 {
        1.0
    }
    pub fn segment_ms() -> u64 {
        1000
    }
    pub fn area_ms() -> f64 {
        60.0
    }
    pub fn access_ms() -> [f64; 2] {
        [2.0, 15.0]
    }
    pub fn jitter() -> f64 {
        0.1
    }
    pub fn one() -> f64 {
        1.0
    }
    pub fn yes() -> bool {
        true
    }
    pub fn join_over_s() -> f64 {
        10.0
    }
    /// The real node's.
    pub fn max_partners() -> usize {
        peer::exchange::ExchangeConfig::default().max_partners
    }
    pub fn bootstrap_peers() -> usize {
        8
    }
    pub fn live_start_behind() -> u64 {
        3
    }
    pub fn playback_latency_s() -> f64 {
        3.0
    }
    pub fn round_s() -> f64 {
        5.0
    }
}

/// Why a scenario could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("cannot read scenario {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The text is not a valid scenario (syntax, unknown key, wrong type).
    #[error("scenario {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What the TOML parser said, with the line.
        message: String,
    },
    /// A value is out of range.
    #[error("scenario {path}: `{key}` {problem}")]
    Invalid {
        /// The file.
        path: String,
        /// The offending key.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
}

impl Scenario {
    /// Reads and validates a scenario file.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let label = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: label.clone(),
            source,
        })?;
        Self::parse(&text, &label)
    }

    /// Parses and validates scenario text; `label` names it in errors.
    pub fn parse(text: &str, label: &str) -> Result<Self, ScenarioError> {
        let scenario: Self = toml::from_str(text).map_err(|e| ScenarioError::Parse {
            path: label.to_owned(),
            message: e.to_string(),
        })?;
        scenario
            .validate()
            .map_err(|(key, problem)| ScenarioError::Invalid {
                path: label.to_owned(),
                key: key.to_owned(),
                problem,
            })?;
        Ok(scenario)
    }

    /// The segment duration.
    pub fn segment(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.stream.segment_ms)
    }

    /// On demand: how many media segments the film has (its end marker's number).
    pub fn film_segments(&self) -> Option<u64> {
        let length = self
            .stream
            .vod_length_s
            .filter(|_| self.stream.kind == StreamKind::Vod)?;
        Some((length * 1000.0 / self.stream.segment_ms as f64).ceil() as u64)
    }

    /// Bytes in one segment at the stream's bitrate.
    pub fn segment_bytes(&self) -> usize {
        (self.stream.bitrate_kbps * 1000.0 / 8.0 * self.stream.segment_ms as f64 / 1000.0) as usize
    }

    fn validate(&self) -> Result<(), (&'static str, String)> {
        positive("duration_s", self.duration_s)?;
        positive("sample_every_s", self.sample_every_s)?;
        positive("stream.bitrate_kbps", self.stream.bitrate_kbps)?;
        if !(100..=20_000).contains(&self.stream.segment_ms) {
            return Err(("stream.segment_ms", "must be between 100 and 20000".into()));
        }
        match (self.stream.kind, self.stream.vod_length_s) {
            (StreamKind::Vod, None) => {
                return Err(("stream.vod_length_s", "is required for a VOD stream".into()))
            }
            (StreamKind::Vod, Some(len)) => positive("stream.vod_length_s", len)?,
            (StreamKind::Live, Some(_)) => {
                return Err((
                    "stream.vod_length_s",
                    "only applies to kind = \"vod\"".into(),
                ))
            }
            (StreamKind::Live, None) => {}
        }
        positive("source.up_mbps", self.source.up_mbps)?;
        if let Some(origin) = &self.origin {
            positive("origin.up_mbps", origin.up_mbps)?;
        }
        for o in &self.source.failures {
            non_negative("source.failures.at_s", o.at_s)?;
            positive("source.failures.down_s", o.down_s)?;
        }
        let net = &self.network;
        non_negative("network.area_ms", net.area_ms)?;
        if !(net.access_ms[0] >= 0.0 && net.access_ms[0] <= net.access_ms[1]) {
            return Err((
                "network.access_ms",
                "must be [low, high] with 0 ≤ low ≤ high".into(),
            ));
        }
        fraction("network.jitter", net.jitter)?;
        if !(0.0..0.5).contains(&net.loss) {
            return Err(("network.loss", "must be in [0, 0.5)".into()));
        }
        let nat = net.nat;
        for (key, v) in [
            ("network.nat.open", nat.open),
            ("network.nat.full_cone", nat.full_cone),
            ("network.nat.port_restricted", nat.port_restricted),
            ("network.nat.symmetric", nat.symmetric),
        ] {
            fraction(key, v)?;
        }
        sums_to_one(
            "network.nat",
            nat.open + nat.full_cone + nat.port_restricted + nat.symmetric,
        )?;
        for nat in self.viewers.classes.iter().filter_map(|c| c.nat) {
            for (key, v) in [
                ("viewers.classes.nat.open", nat.open),
                ("viewers.classes.nat.full_cone", nat.full_cone),
                ("viewers.classes.nat.port_restricted", nat.port_restricted),
                ("viewers.classes.nat.symmetric", nat.symmetric),
            ] {
                fraction(key, v)?;
            }
            sums_to_one(
                "viewers.classes.nat",
                nat.open + nat.full_cone + nat.port_restricted + nat.symmetric,
            )?;
        }
        for p in &net.partitions {
            non_negative("network.partitions.at_s", p.at_s)?;
            positive("network.partitions.duration_s", p.duration_s)?;
            if !(p.fraction > 0.0 && p.fraction < 1.0) {
                return Err((
                    "network.partitions.fraction",
                    "must be strictly between 0 and 1".into(),
                ));
            }
        }
        let v = &self.viewers;
        non_negative("viewers.join_over_s", v.join_over_s)?;
        if v.classes.is_empty() {
            return Err((
                "viewers.classes",
                "needs at least one capacity class".into(),
            ));
        }
        for c in &v.classes {
            fraction("viewers.classes.share", c.share)?;
            non_negative("viewers.classes.up_mbps", c.up_mbps)?;
            positive("viewers.classes.down_mbps", c.down_mbps)?;
        }
        sums_to_one(
            "viewers.classes.share",
            v.classes.iter().map(|c| c.share).sum(),
        )?;
        if let Some(churn) = &v.churn {
            fraction("viewers.churn.crash_fraction", churn.crash_fraction)?;
            churn.session.validate([
                "viewers.churn.session.mean_s",
                "viewers.churn.session.shape",
                "viewers.churn.session.scale_s",
                "viewers.churn.session.alpha",
                "viewers.churn.session.min_s",
            ])?;
        }
        if let Some(vod) = &v.vod {
            if self.stream.kind != StreamKind::Vod {
                return Err(("viewers.vod", "only applies to kind = \"vod\"".into()));
            }
            if let Some(seek) = vod.seek_every {
                seek.validate([
                    "viewers.vod.seek_every.mean_s",
                    "viewers.vod.seek_every.shape",
                    "viewers.vod.seek_every.scale_s",
                    "viewers.vod.seek_every.alpha",
                    "viewers.vod.seek_every.min_s",
                ])?;
            }
        }
        for f in &v.flash_crowds {
            non_negative("viewers.flash_crowds.at_s", f.at_s)?;
            non_negative("viewers.flash_crowds.over_s", f.over_s)?;
        }
        positive(
            "protocol.playback_latency_s",
            self.protocol.playback_latency_s,
        )?;
        if let Some(o) = &self.optimizer {
            if !(o.round_s.is_finite() && (0.5..=60.0).contains(&o.round_s)) {
                return Err((
                    "optimizer.round_s",
                    format!("must be between 0.5 and 60, not {}", o.round_s),
                ));
            }
        }
        if self.protocol.max_partners == 0 {
            return Err(("protocol.max_partners", "must be at least 1".into()));
        }
        Ok(())
    }
}

fn positive(key: &'static str, v: f64) -> Result<(), (&'static str, String)> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err((key, format!("must be a positive number, not {v}")))
    }
}

fn non_negative(key: &'static str, v: f64) -> Result<(), (&'static str, String)> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err((key, format!("must be zero or more, not {v}")))
    }
}

fn fraction(key: &'static str, v: f64) -> Result<(), (&'static str, String)> {
    if (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err((key, format!("must be between 0 and 1, not {v}")))
    }
}

fn sums_to_one(key: &'static str, sum: f64) -> Result<(), (&'static str, String)> {
    if (sum - 1.0).abs() < 1e-6 {
        Ok(())
    } else {
        Err((key, format!("shares must sum to 1, not {sum}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        name = "t"
        duration_s = 60
        [stream]
        bitrate_kbps = 2000
        [source]
        up_mbps = 10
        [viewers]
        initial = 10
        classes = [{ name = "dsl", share = 1.0, up_mbps = 1, down_mbps = 16 }]
    "#;

    #[test]
    fn a_minimal_scenario_gets_defaults() {
        let s = Scenario::parse(MINIMAL, "t.toml").unwrap();
        assert_eq!(s.stream.segment_ms, 1000);
        assert_eq!(s.segment_bytes(), 250_000);
        assert_eq!(s.protocol.max_partners, 10);
        assert_eq!(s.network.traversal, Traversal::None);
    }

    #[test]
    fn an_unknown_key_is_named_in_the_error() {
        let text = MINIMAL.replace("up_mbps = 10", "up_mbps = 10\nupload_mbps = 3");
        let err = Scenario::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(err.contains("unknown field `upload_mbps`"), "{err}");
        assert!(err.contains("t.toml"), "{err}");
    }

    #[test]
    fn bad_values_are_named_in_the_error() {
        let text = MINIMAL.replace("share = 1.0", "share = 0.7");
        let err = Scenario::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(
            err.contains("viewers.classes.share") && err.contains("sum to 1"),
            "{err}"
        );

        let text = MINIMAL.replace("duration_s = 60", "duration_s = -5");
        let err = Scenario::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(
            err.contains("`duration_s` must be a positive number"),
            "{err}"
        );

        let text = MINIMAL.replace("bitrate_kbps = 2000", "bitrate_kbps = \"fast\"");
        let err = Scenario::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(err.contains("bitrate_kbps"), "{err}");

        let text = format!(
            "{MINIMAL}\n[viewers.churn]\nsession = {{ dist = \"lognormal\", mean_s = 3 }}\n"
        );
        let err = Scenario::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(err.contains("lognormal"), "{err}");
    }

    #[test]
    fn on_demand_viewing_is_checked() {
        let text = format!("{MINIMAL}\n[viewers.vod]\nstart = \"random\"\n");
        let err = Scenario::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(err.contains("viewers.vod"), "{err}");
        let vod = MINIMAL.replace(
            "bitrate_kbps = 2000",
            "bitrate_kbps = 2000\nkind = \"vod\"\nvod_length_s = 600",
        );
        let text = format!(
            "{vod}\n[viewers.vod]\nseek_every = {{ dist = \"exponential\", mean_s = -1 }}\n"
        );
        let err = Scenario::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(err.contains("viewers.vod.seek_every.mean_s"), "{err}");
        let text = format!("{vod}\n[viewers.vod]\nstart = \"random\"\nseek_every = {{ dist = \"pareto\", alpha = 1.5, min_s = 30 }}\n");
        let ok = Scenario::parse(&text, "t.toml").unwrap();
        assert_eq!(ok.viewers.vod.map(|v| v.start), Some(VodStart::Random));
    }

    #[test]
    fn a_missing_file_is_a_clear_error() {
        let err = Scenario::load(Path::new("/no/such/scenario.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/no/such/scenario.toml"), "{err}");
    }
}
