//! Turns what a `sim run` measured into files a person reads: `summary.json`, `timeseries.csv`,
//! five plots (each as SVG and PNG) and `report.html`, which ties them together.
//!
//! Everything here is a pure function of the [`Report`]: no clocks, no hash-map iteration, no
//! randomness. `summary.json` in particular is byte-identical for identical input, which is how
//! the simulator's determinism is tested.
//!
//! Plots are drawn with `plotters` and its pure-Rust `ab_glyph` text renderer, which needs a TTF
//! at run time: [`FONT_PATH`], from the Debian package `fonts-dejavu-core`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use plotters::coord::Shift;
use plotters::prelude::*;
use serde::Serialize;

use crate::metrics::{RunSeries, Summary};

/// The font the plots are drawn with (Debian package `fonts-dejavu-core`).
pub const FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Size of the PNG plots, in pixels (the SVGs use the same coordinate size).
const PLOT_SIZE: (u32, u32) = (1000, 560);

/// At most this many points are drawn per latency CDF line, however many segments there were.
const CDF_POINTS: usize = 2000;

/// Line colours, one per run in input order (the first two are Selfcast and the baseline).
const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(230, 110, 0),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Everything one `sim run` produced.
#[derive(Debug, Clone, Copy)]
pub struct Report<'a> {
    /// The scenario's name, shown in titles.
    pub scenario_name: &'a str,
    /// The scenario file's text, shown in the HTML.
    pub scenario_toml: &'a str,
    /// The seed the runs used.
    pub seed: u64,
    /// The runs to compare, usually two: "selfcast" and "source-only" (the baseline). Plots and
    /// tables keep this order; labels must be distinct.
    pub runs: &'a [RunSeries],
}

/// The files [`write`] created, in the order it wrote them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    /// Paths of the files written, each inside the report directory.
    pub files: Vec<PathBuf>,
}

/// Why a report could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// Creating the directory or writing a file failed.
    #[error("cannot write {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Drawing or encoding a plot failed.
    #[error("cannot draw plot {}: {reason}", path.display())]
    Plot {
        /// The plot file.
        path: PathBuf,
        /// What plotters reported.
        reason: String,
    },
    /// The font the plots need is missing or unreadable.
    #[error(
        "cannot load the plot font {}: {reason} (install the Debian package fonts-dejavu-core)",
        path.display()
    )]
    Font {
        /// The font file looked for.
        path: PathBuf,
        /// What went wrong reading or parsing it.
        reason: String,
    },
    /// Two runs carry the same label, so their figures cannot be told apart.
    #[error("two runs are labelled {label:?}; run labels must be distinct")]
    DuplicateRun {
        /// The repeated label.
        label: String,
    },
    /// Serialising `summary.json` failed.
    #[error("cannot serialise summary.json: {0}")]
    Json(#[from] serde_json::Error),
}

/// Writes into `dir` (created if missing): `summary.json`, `timeseries.csv`, the plots
/// `continuity`, `offload`, `latency_cdf`, `viewers` and `source_upload` as SVG and PNG, and
/// `report.html`. Existing files of those names are replaced.
///
/// The data files come first: if the plot font is missing ([`ReportError::Font`]),
/// `summary.json` and `timeseries.csv` have already been written.
pub fn write(report: &Report<'_>, dir: &Path) -> Result<Written, ReportError> {
    check_labels(report.runs)?;
    std::fs::create_dir_all(dir).map_err(|source| ReportError::Io {
        path: dir.into(),
        source,
    })?;
    let mut written = Written::default();

    let json = summary_json(report)?;
    written
        .files
        .push(write_file(dir, "summary.json", json.as_bytes())?);
    written.files.push(write_file(
        dir,
        "timeseries.csv",
        timeseries_csv(report.runs).as_bytes(),
    )?);

    load_font()?;
    for chart in charts(report) {
        for ext in ["svg", "png"] {
            let path = dir.join(format!("{}.{ext}", chart.file));
            draw(&chart, &path)?;
            written.files.push(path);
        }
    }

    written
        .files
        .push(write_file(dir, "report.html", html(report).as_bytes())?);
    Ok(written)
}

fn check_labels(runs: &[RunSeries]) -> Result<(), ReportError> {
    let mut seen = BTreeSet::new();
    for run in runs {
        if !seen.insert(run.label.as_str()) {
            return Err(ReportError::DuplicateRun {
                label: run.label.clone(),
            });
        }
    }
    Ok(())
}

fn write_file(dir: &Path, name: &str, contents: &[u8]) -> Result<PathBuf, ReportError> {
    let path = dir.join(name);
    std::fs::write(&path, contents).map_err(|source| ReportError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

// ---------------------------------------------------------------------------------------------
// summary.json and timeseries.csv

/// The shape of `summary.json`. Maps are `BTreeMap`s so that keys come out sorted.
#[derive(Serialize)]
struct SummaryFile<'a> {
    scenario: &'a str,
    seed: u64,
    runs: BTreeMap<&'a str, &'a Summary>,
    /// How much data each run's figures rest on.
    series: BTreeMap<&'a str, SeriesInfo>,
}

#[derive(Serialize)]
struct SeriesInfo {
    /// Time-series samples.
    samples: usize,
    /// Simulated seconds at the last sample.
    duration_s: f64,
    /// Latency values behind the latency percentiles.
    latencies: usize,
    /// Startup delays behind the startup percentiles.
    startups: usize,
}

/// The text of `summary.json` (pretty JSON ending in a newline), byte-identical for identical
/// input: `{"scenario", "seed", "runs": {label: Summary}, "series": {label: sizes}}`, keys of
/// the maps sorted. A determinism test can compare this without drawing any plot.
pub fn summary_json(report: &Report<'_>) -> Result<String, ReportError> {
    check_labels(report.runs)?;
    let file = SummaryFile {
        scenario: report.scenario_name,
        seed: report.seed,
        runs: report
            .runs
            .iter()
            .map(|r| (r.label.as_str(), &r.summary))
            .collect(),
        series: report
            .runs
            .iter()
            .map(|r| {
                let info = SeriesInfo {
                    samples: r.samples.len(),
                    duration_s: r.samples.last().map_or(0.0, |s| s.t_s),
                    latencies: r.latencies_ms.len(),
                    startups: r.startups_ms.len(),
                };
                (r.label.as_str(), info)
            })
            .collect(),
    };
    let mut json = serde_json::to_string_pretty(&file)?;
    json.push('\n');
    Ok(json)
}

fn timeseries_csv(runs: &[RunSeries]) -> String {
    let mut out = String::from(
        "run,t_s,viewers,continuity,source_offload,source_mbps,p2p_mbps,latency_p50_ms\n",
    );
    for run in runs {
        let label = csv_field(&run.label);
        for s in &run.samples {
            // `{}` on f64 is the shortest representation that parses back to the same value,
            // so the CSV is as deterministic as the input. Writing to a String cannot fail.
            let _ = writeln!(
                out,
                "{label},{},{},{},{},{},{},{}",
                s.t_s,
                s.viewers,
                s.continuity,
                s.source_offload,
                s.source_mbps,
                s.p2p_mbps,
                s.latency_p50_ms
            );
        }
    }
    out
}

/// Quotes a CSV field if it needs it (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

// ---------------------------------------------------------------------------------------------
// Plots

/// Registers [`FONT_PATH`] with plotters as "sans-serif", once per process.
fn load_font() -> Result<(), ReportError> {
    static LOADED: Mutex<bool> = Mutex::new(false);
    // A poisoned lock only means another thread panicked while loading; the flag is still right.
    let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    if *loaded {
        return Ok(());
    }
    let bytes = read_font(Path::new(FONT_PATH))?;
    // plotters keeps registered fonts for the life of the process and wants them `'static`;
    // the flag above makes this a single leak of one font file.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).map_err(|_| {
        ReportError::Font {
            path: FONT_PATH.into(),
            reason: "not a valid TrueType font".into(),
        }
    })?;
    *loaded = true;
    Ok(())
}

fn read_font(path: &Path) -> Result<Vec<u8>, ReportError> {
    std::fs::read(path).map_err(|e| ReportError::Font {
        path: path.into(),
        reason: e.to_string(),
    })
}

/// One labelled line of a chart: the run's label and its points.
type Line = (String, Vec<(f64, f64)>);

/// One line chart, independent of the backend it is drawn on.
struct Chart {
    /// File name without extension.
    file: &'static str,
    title: String,
    x_desc: &'static str,
    y_desc: &'static str,
    x_range: (f64, f64),
    y_range: (f64, f64),
    legend: SeriesLabelPosition,
    /// (label, points) per run, in input order.
    lines: Vec<Line>,
}

fn charts(report: &Report<'_>) -> Vec<Chart> {
    let runs = report.runs;
    let title = |what: &str| format!("{what} — {} (seed {})", report.scenario_name, report.seed);
    let series = |f: &dyn Fn(&crate::metrics::Sample) -> f64| -> Vec<Line> {
        runs.iter()
            .map(|r| {
                (
                    r.label.clone(),
                    r.samples.iter().map(|s| (s.t_s, f(s))).collect(),
                )
            })
            .collect()
    };
    let t_max = runs
        .iter()
        .filter_map(|r| r.samples.last().map(|s| s.t_s))
        .filter(|t| t.is_finite())
        .fold(0.0, f64::max);
    let x_time = (0.0, if t_max > 0.0 { t_max } else { 1.0 });

    let continuity = series(&|s| 100.0 * s.continuity);
    let (low, _) = finite_extent(&continuity);
    // Zoom in when every interval was above 90 %: a line glued to the top of a 0–100 axis says
    // nothing. The zoomed axis still ends a little above 100 so that the line stays visible.
    let c_lo = match low {
        Some(low) if low >= 90.0 => ((low - 0.5).floor()).clamp(0.0, 99.0),
        _ => 0.0,
    };
    let c_hi = 100.0 + (100.0 - c_lo) * 0.03;

    let offload = series(&|s| 100.0 * s.source_offload);
    let (o_low, o_high) = finite_extent(&offload);
    let o_lo = o_low.map_or(0.0, |v| v.min(0.0)).max(-1000.0);
    let o_hi = o_high.map_or(100.0, |v| v.max(100.0)) + 3.0;

    let viewers = series(&|s| s.viewers as f64);
    let v_hi = finite_extent(&viewers).1.map_or(1.0, |v| v.max(1.0)) * 1.08;

    let upload = series(&|s| s.source_mbps);
    let u_hi = finite_extent(&upload)
        .1
        .map_or(1.0, |v| if v > 0.0 { v } else { 1.0 })
        * 1.1;

    let (cdf, cdf_x_max) = latency_cdfs(runs);

    vec![
        Chart {
            file: "continuity",
            title: title("Playback continuity"),
            x_desc: "simulated time (s)",
            y_desc: "continuity (% of segments on time)",
            x_range: x_time,
            y_range: (c_lo, c_hi),
            legend: SeriesLabelPosition::LowerLeft,
            lines: continuity,
        },
        Chart {
            file: "offload",
            title: title("Source offload"),
            x_desc: "simulated time (s)",
            y_desc: "source offload (% of viewer bytes)",
            x_range: x_time,
            y_range: (o_lo, o_hi),
            legend: SeriesLabelPosition::MiddleRight,
            lines: offload,
        },
        Chart {
            file: "latency_cdf",
            title: title("Live latency CDF"),
            x_desc: "live latency (ms)",
            y_desc: "fraction of segments",
            x_range: (0.0, cdf_x_max),
            y_range: (0.0, 1.02),
            legend: SeriesLabelPosition::LowerRight,
            lines: cdf,
        },
        Chart {
            file: "viewers",
            title: title("Viewers present"),
            x_desc: "simulated time (s)",
            y_desc: "viewers",
            x_range: x_time,
            y_range: (0.0, v_hi),
            legend: SeriesLabelPosition::UpperLeft,
            lines: viewers,
        },
        Chart {
            file: "source_upload",
            title: title("Source upload"),
            x_desc: "simulated time (s)",
            y_desc: "source upload (Mbit/s)",
            x_range: x_time,
            y_range: (0.0, u_hi),
            legend: SeriesLabelPosition::UpperLeft,
            lines: upload,
        },
    ]
}

/// Smallest and largest finite y over all lines.
fn finite_extent(lines: &[Line]) -> (Option<f64>, Option<f64>) {
    let ys = lines
        .iter()
        .flat_map(|(_, pts)| pts.iter().map(|p| p.1))
        .filter(|y| y.is_finite());
    ys.fold((None, None), |(lo, hi): (Option<f64>, Option<f64>), y| {
        (
            Some(lo.map_or(y, |l| l.min(y))),
            Some(hi.map_or(y, |h| h.max(y))),
        )
    })
}

/// The empirical CDF of each run's latencies, at most [`CDF_POINTS`] + 1 points each, and the
/// x-axis end: the largest 99.5th percentile, so that a long tail does not squash the body.
fn latency_cdfs(runs: &[RunSeries]) -> (Vec<Line>, f64) {
    let mut x_max = 0.0f64;
    let lines = runs
        .iter()
        .map(|run| {
            let mut sorted: Vec<f64> = run
                .latencies_ms
                .iter()
                .copied()
                .filter(|v| v.is_finite())
                .collect();
            // Values equal under total_cmp are bit-identical, so an unstable sort is exact.
            sorted.sort_unstable_by(f64::total_cmp);
            let n = sorted.len();
            if n > 0 {
                let i995 = ((0.995 * n as f64).ceil() as usize).clamp(1, n) - 1;
                x_max = x_max.max(sorted[i995]);
            }
            (run.label.clone(), cdf_points(&sorted))
        })
        .collect();
    let x_max = if x_max > 0.0 { x_max * 1.05 } else { 1.0 };
    (lines, x_max)
}

/// Points (value, fraction of values ≤ it) of an ascending slice, evenly spaced in rank.
fn cdf_points(sorted: &[f64]) -> Vec<(f64, f64)> {
    let n = sorted.len();
    if n == 0 {
        return Vec::new();
    }
    let point = |i: usize| (sorted[i], (i + 1) as f64 / n as f64);
    if n <= CDF_POINTS {
        return (0..n).map(point).collect();
    }
    // Ranks 0, (n-1)/M, 2(n-1)/M … n-1 in integer arithmetic: the same input always picks the
    // same points, and both the minimum and the maximum are kept.
    (0..=CDF_POINTS)
        .map(|k| point(k * (n - 1) / CDF_POINTS))
        .collect()
}

fn draw(chart: &Chart, path: &Path) -> Result<(), ReportError> {
    let plot_err = |reason: String| ReportError::Plot {
        path: path.into(),
        reason,
    };
    let is_svg = path.extension().is_some_and(|e| e == "svg");
    if is_svg {
        let root = SVGBackend::new(path, PLOT_SIZE).into_drawing_area();
        draw_chart(&root, chart).map_err(|e| plot_err(e.to_string()))?;
        root.present().map_err(|e| plot_err(e.to_string()))
    } else {
        let root = BitMapBackend::new(path, PLOT_SIZE).into_drawing_area();
        draw_chart(&root, chart).map_err(|e| plot_err(e.to_string()))?;
        root.present().map_err(|e| plot_err(e.to_string()))
    }
}

fn draw_chart<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    chart: &Chart,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let (x0, x1) = chart.x_range;
    let (y0, y1) = chart.y_range;
    let mut ctx = ChartBuilder::on(root)
        .caption(&chart.title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    ctx.configure_mesh()
        .x_desc(chart.x_desc)
        .y_desc(chart.y_desc)
        .axis_desc_style(("sans-serif", 17))
        .label_style(("sans-serif", 14))
        .x_label_formatter(&|v| tick(*v))
        .y_label_formatter(&|v| tick(*v))
        .max_light_lines(4)
        .light_line_style(RGBColor(240, 240, 240))
        .bold_line_style(RGBColor(210, 210, 210))
        .draw()?;
    for (i, (label, points)) in chart.lines.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let finite = points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite());
        // Later runs are drawn thinner on top of the first, so that where two runs coincide
        // (the same workload gives the same viewer counts) both stay visible.
        let width = if i == 0 { 4 } else { 2 };
        ctx.draw_series(LineSeries::new(finite, color.stroke_width(width)))?
            .label(label.as_str())
            .legend(move |(x, y)| {
                PathElement::new([(x, y), (x + 24, y)], color.stroke_width(width))
            });
    }
    if !chart.lines.is_empty() {
        ctx.configure_series_labels()
            .position(chart.legend.clone())
            .margin(12)
            .label_font(("sans-serif", 16))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(160, 160, 160))
            .draw()?;
    }
    Ok(())
}

/// An axis tick label: "100" rather than "100.0", "0.3" rather than "0.30000000000000004".
fn tick(v: f64) -> String {
    let r = (v * 1e6).round() / 1e6;
    // Avoid "-0".
    format!("{}", if r == 0.0 { 0.0 } else { r })
}

// ---------------------------------------------------------------------------------------------
// report.html

/// Which way a headline figure is better, for highlighting.
#[derive(Clone, Copy, PartialEq)]
enum Better {
    Higher,
    Lower,
    /// Context, not a score (e.g. how many viewers came).
    Neither,
}

/// The headline table's rows: name, which way is better, decimals shown. The values are
/// [`headline_values`], in the same order.
const HEADLINE: [(&str, Better, usize); 15] = [
    ("Continuity (%)", Better::Higher, 2),
    ("Source offload (%)", Better::Higher, 1),
    ("Live latency p50 (s)", Better::Lower, 2),
    ("Live latency p95 (s)", Better::Lower, 2),
    ("Live latency p99 (s)", Better::Lower, 2),
    ("Startup p50 (s)", Better::Lower, 2),
    ("Startup p95 (s)", Better::Lower, 2),
    ("Viewers started / joined (%)", Better::Higher, 1),
    ("Peak viewers", Better::Neither, 0),
    ("Source upload (GB)", Better::Lower, 3),
    ("Viewer download (GB)", Better::Neither, 3),
    ("Events processed", Better::Neither, 0),
    ("Hops from the source p50", Better::Lower, 0),
    ("Hops from the source p95", Better::Lower, 0),
    ("Viewers unfed at the end", Better::Lower, 0),
];

/// One run's figures for the rows of [`HEADLINE`].
fn headline_values(s: &Summary) -> [f64; 15] {
    let started = if s.viewers_joined == 0 {
        100.0
    } else {
        100.0 * s.viewers_started as f64 / s.viewers_joined as f64
    };
    [
        100.0 * s.continuity,
        100.0 * s.source_offload,
        s.latency_ms.p50 / 1e3,
        s.latency_ms.p95 / 1e3,
        s.latency_ms.p99 / 1e3,
        s.startup_ms.p50 / 1e3,
        s.startup_ms.p95 / 1e3,
        started,
        s.peak_viewers as f64,
        s.source_bytes as f64 / 1e9,
        s.viewer_bytes as f64 / 1e9,
        s.events as f64,
        s.tree_depth.p50,
        s.tree_depth.p95,
        s.unfed_viewers as f64,
    ]
}

const CSS: &str = "
body { font-family: DejaVu Sans, Verdana, sans-serif; margin: 2em auto; max-width: 1060px;
  color: #1d2330; background: #fafbfc; line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #d6dae1; padding-bottom: 0.2em; }
.sub { color: #5b6472; margin-top: 0; }
table { border-collapse: collapse; margin: 0.8em 0; background: #fff; }
th, td { border: 1px solid #d6dae1; padding: 0.35em 0.8em; }
th { background: #eef1f5; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.best { background: #d8f3dc; font-weight: bold; }
tr.total td { font-weight: bold; }
figure { margin: 1.2em 0; }
figure img { width: 100%; max-width: 1000px; border: 1px solid #d6dae1; background: #fff; }
figcaption { color: #5b6472; font-size: 0.9em; }
pre { background: #f0f2f5; border: 1px solid #d6dae1; padding: 0.8em; overflow-x: auto;
  font-size: 0.9em; }
.legend { color: #5b6472; font-size: 0.9em; }
";

fn html(report: &Report<'_>) -> String {
    let name = escape(report.scenario_name);
    let seed = report.seed;
    let mut h = String::new();
    // Writing to a String cannot fail; the results of write! are ignored throughout.
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>{name} — seed {seed}</title>\n<style>{CSS}</style>\n</head>\n<body>\n\
         <h1>Scenario {name} — seed {seed}</h1>\n\
         <p class=\"sub\">Selfcast simulator report. Data: \
         <a href=\"summary.json\">summary.json</a>, <a href=\"timeseries.csv\">timeseries.csv</a>.\
         </p>\n"
    );

    h.push_str("<h2>Headline</h2>\n");
    if report.runs.is_empty() {
        h.push_str("<p>No runs.</p>\n");
    } else {
        headline_table(&mut h, report.runs);
        optimizer_section(&mut h, report.runs);
    }

    h.push_str("<h2>Plots</h2>\n");
    for (file, caption) in [
        ("continuity", "Playback continuity per sampling interval."),
        (
            "offload",
            "Share of the bytes viewers received that did not come from the source.",
        ),
        (
            "latency_cdf",
            "Live latency of every delivered segment (axis ends at the 99.5th percentile).",
        ),
        ("viewers", "Viewers present."),
        ("source_upload", "Upload rate of the source."),
    ] {
        let _ = writeln!(
            h,
            "<figure><a href=\"{file}.png\"><img src=\"{file}.svg\" alt=\"{caption}\"></a>\
             <figcaption>{caption}</figcaption></figure>"
        );
    }

    h.push_str("<h2>Messages by kind</h2>\n");
    messages_table(&mut h, report.runs);

    let _ = write!(
        h,
        "<h2>Scenario</h2>\n<pre>{}</pre>\n</body>\n</html>\n",
        escape(report.scenario_toml)
    );
    h
}

fn headline_table(h: &mut String, runs: &[RunSeries]) {
    h.push_str("<table>\n<tr><th></th>");
    for run in runs {
        let _ = write!(h, "<th>{}</th>", escape(&run.label));
    }
    h.push_str("</tr>\n");
    let values: Vec<[f64; 15]> = runs.iter().map(|r| headline_values(&r.summary)).collect();
    for (i, &(name, better, decimals)) in HEADLINE.iter().enumerate() {
        // Compare what is shown, so that two cells reading the same are highlighted alike.
        let shown: Vec<f64> = values.iter().map(|v| round_to(v[i], decimals)).collect();
        let finite = shown.iter().copied().filter(|v| v.is_finite());
        let best = match better {
            Better::Higher => finite.reduce(f64::max),
            Better::Lower => finite.reduce(f64::min),
            Better::Neither => None,
        };
        // Highlighting means something only if the runs differ.
        let all_equal = shown.windows(2).all(|w| w[0] == w[1]);
        let _ = write!(h, "<tr><th>{name}</th>");
        for &v in &shown {
            let class = if !all_equal && best == Some(v) {
                "num best"
            } else {
                "num"
            };
            let _ = write!(h, "<td class=\"{class}\">{}</td>", number(v, decimals));
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table>\n<p class=\"legend\">Best value in each scored row highlighted.</p>\n");
}

/// What the optimizer's loop did, and how its run compares with each other run.
fn optimizer_section(h: &mut String, runs: &[RunSeries]) {
    for run in runs {
        let Some(o) = &run.summary.optimizer else {
            continue;
        };
        let _ = writeln!(
            h,
            "<h2>Optimizer loop ({})</h2>\n<p>{} plans ({} tiers, {} peers in the last), {} \
             reports received, {} hints sent; at the end {} viewers held a hint and {}% of \
             those fed had the parent their hint ranks first.</p>",
            escape(&run.label),
            o.rounds,
            o.tiers,
            o.planned_peers,
            o.reports,
            o.hints_sent,
            o.hinted_viewers,
            number(100.0 * o.parents_as_planned, 1)
        );
        h.push_str(
            "<table>\n<tr><th>compared with</th><th>latency p95</th>\
                    <th>continuity</th><th>offload</th></tr>\n",
        );
        let me = &run.summary;
        for other in runs.iter().filter(|r| r.label != run.label) {
            let s = &other.summary;
            let change = if s.latency_ms.p95 > 0.0 {
                100.0 * (me.latency_ms.p95 / s.latency_ms.p95 - 1.0)
            } else {
                f64::NAN
            };
            let _ = writeln!(
                h,
                "<tr><th>{}</th><td class=\"num\">{}%</td><td class=\"num\">{} pts</td>\
                 <td class=\"num\">{} pts</td></tr>",
                escape(&other.label),
                signed(change, 1),
                signed(100.0 * (me.continuity - s.continuity), 2),
                signed(100.0 * (me.source_offload - s.source_offload), 2)
            );
        }
        h.push_str("</table>\n");
    }
}

/// `v` with a sign and `decimals` decimals; "–" if not finite.
fn signed(v: f64, decimals: usize) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    let sign = if v > 0.0 { "+" } else { "" };
    format!("{sign}{}", number(v, decimals))
}

fn messages_table(h: &mut String, runs: &[RunSeries]) {
    let kinds: BTreeSet<&str> = runs
        .iter()
        .flat_map(|r| r.summary.messages.keys().map(String::as_str))
        .collect();
    if kinds.is_empty() {
        h.push_str("<p>No control messages recorded.</p>\n");
        return;
    }
    h.push_str("<table>\n<tr><th rowspan=\"2\">kind</th>");
    for run in runs {
        let _ = write!(h, "<th colspan=\"2\">{}</th>", escape(&run.label));
    }
    h.push_str("</tr>\n<tr>");
    for _ in runs {
        h.push_str("<th>messages</th><th>kB</th>");
    }
    h.push_str("</tr>\n");
    for kind in &kinds {
        let _ = write!(h, "<tr><td>{}</td>", escape(kind));
        for run in runs {
            match run.summary.messages.get(*kind) {
                Some(t) => {
                    let _ = write!(
                        h,
                        "<td class=\"num\">{}</td><td class=\"num\">{}</td>",
                        number(t.count as f64, 0),
                        number(t.bytes as f64 / 1e3, 1)
                    );
                }
                None => h.push_str("<td class=\"num\">–</td><td class=\"num\">–</td>"),
            }
        }
        h.push_str("</tr>\n");
    }
    h.push_str("<tr class=\"total\"><td>total</td>");
    for run in runs {
        let count: u64 = run.summary.messages.values().map(|t| t.count).sum();
        let bytes: u64 = run.summary.messages.values().map(|t| t.bytes).sum();
        let _ = write!(
            h,
            "<td class=\"num\">{}</td><td class=\"num\">{}</td>",
            number(count as f64, 0),
            number(bytes as f64 / 1e3, 1)
        );
    }
    h.push_str("</tr>\n</table>\n");
}

fn round_to(v: f64, decimals: usize) -> f64 {
    let scale = 10f64.powi(decimals as i32);
    (v * scale).round() / scale
}

/// `v` with `decimals` decimals and thin-space thousands separators; "–" if not finite.
fn number(v: f64, decimals: usize) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    let s = format!("{:.*}", decimals, v.abs());
    let (int, frac) = s
        .split_once('.')
        .map_or((s.as_str(), None), |(i, f)| (i, Some(f)));
    let mut out = String::new();
    if v < 0.0 && s.bytes().any(|b| b != b'0' && b != b'.') {
        out.push('−');
    }
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            out.push('\u{2009}');
        }
        out.push(c);
    }
    if let Some(frac) = frac {
        out.push('.');
        out.push_str(frac);
    }
    out
}

/// Escapes text for HTML element content and double- or single-quoted attributes.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{percentiles, Sample, Traffic};

    /// A run shaped like a real one: `n` samples at 1 s, latencies and startups.
    fn run(label: &str, quality: f64, n: usize, latencies: usize) -> RunSeries {
        let samples: Vec<Sample> = (0..n)
            .map(|i| {
                let t = i as f64 + 1.0;
                Sample {
                    t_s: t,
                    viewers: (i as u64 * 3).min(500),
                    continuity: 1.0 - (1.0 - quality) * ((i % 17) as f64 / 17.0),
                    source_offload: quality * (1.0 - (-t / 30.0).exp()),
                    source_mbps: 5.0 + 40.0 * (1.0 - quality) * (i as f64 / n as f64),
                    p2p_mbps: 30.0 * quality,
                    latency_p50_ms: 2500.0 + 1000.0 * (1.0 - quality),
                }
            })
            .collect();
        // Deterministic pseudo-random latencies (xorshift), a long right tail.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let latencies_ms: Vec<f64> = (0..latencies)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let u = (x >> 11) as f64 / (1u64 << 53) as f64;
                2000.0 + 3000.0 * (1.0 - quality) - 800.0 * (1.0 - u).ln()
            })
            .collect();
        let startups_ms: Vec<f64> = (0..200).map(|i| 800.0 + 10.0 * i as f64).collect();
        let mut messages = BTreeMap::new();
        messages.insert(
            "have".to_owned(),
            Traffic {
                count: 123_456,
                bytes: 4_567_890,
            },
        );
        messages.insert(
            "request".to_owned(),
            Traffic {
                count: 7_890,
                bytes: 345_678,
            },
        );
        let summary = Summary {
            continuity: quality,
            source_offload: quality * 0.9,
            latency_ms: percentiles(&latencies_ms),
            startup_ms: percentiles(&startups_ms),
            viewers_joined: 520,
            viewers_started: 500,
            peak_viewers: 500,
            source_bytes: (4e9 * (1.0 - quality * 0.9)) as u64,
            viewer_bytes: 40_000_000_000,
            segments_delivered: latencies as u64,
            messages,
            events: 12_345_678,
            tree_depth: percentiles(&[3.0, 4.0, 5.0]),
            unfed_viewers: 2,
            holder_lookups: 0,
            optimizer: None,
        };
        RunSeries {
            label: label.to_owned(),
            summary,
            samples,
            latencies_ms,
            startups_ms,
        }
    }

    fn runs() -> Vec<RunSeries> {
        vec![
            run("selfcast", 0.995, 600, 50_000),
            run("source-only", 0.6, 600, 50_000),
        ]
    }

    const TOML: &str = "name = \"flash <script>alert(1)</script> & co\"\n[swarm]\nviewers = 500\n";

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sim-report-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn writes_every_file() {
        let runs = runs();
        let report = Report {
            scenario_name: "flash-crowd",
            scenario_toml: TOML,
            seed: 42,
            runs: &runs,
        };
        let base = scratch("all");
        let dir = base.join("nested");
        let written = write(&report, &dir).unwrap();
        let mut names: Vec<String> = written
            .files
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut expected = vec![
            "summary.json".to_owned(),
            "timeseries.csv".into(),
            "report.html".into(),
        ];
        for plot in [
            "continuity",
            "offload",
            "latency_cdf",
            "viewers",
            "source_upload",
        ] {
            expected.push(format!("{plot}.svg"));
            expected.push(format!("{plot}.png"));
        }
        expected.sort();
        assert_eq!(names, expected);
        for f in &written.files {
            assert!(f.starts_with(&dir));
            assert!(
                std::fs::metadata(f).unwrap().len() > 0,
                "{} is empty",
                f.display()
            );
        }

        for plot in [
            "continuity",
            "offload",
            "latency_cdf",
            "viewers",
            "source_upload",
        ] {
            let png = std::fs::read(dir.join(format!("{plot}.png"))).unwrap();
            assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{plot}.png is not a PNG");
            assert!(png.len() > 10_000, "{plot}.png is only {} bytes", png.len());
            let svg = std::fs::read_to_string(dir.join(format!("{plot}.svg"))).unwrap();
            assert!(
                svg.contains("<svg") && svg.contains("selfcast") && svg.contains("source-only")
            );
        }

        let csv = std::fs::read_to_string(dir.join("timeseries.csv")).unwrap();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(
            lines[0],
            "run,t_s,viewers,continuity,source_offload,source_mbps,p2p_mbps,latency_p50_ms"
        );
        assert_eq!(lines.len(), 1 + 600 + 600);
        assert!(lines[1].starts_with("selfcast,1,0,1,"));
        assert!(lines[601].starts_with("source-only,1,"));
        assert!(lines[1..].iter().all(|l| l.split(',').count() == 8));

        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap())
                .unwrap();
        assert_eq!(json["scenario"], "flash-crowd");
        assert_eq!(json["seed"], 42);
        assert_eq!(json["runs"]["selfcast"]["continuity"], 0.995);
        assert_eq!(json["runs"]["source-only"]["events"], 12_345_678);
        assert_eq!(json["series"]["selfcast"]["samples"], 600);

        let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
        assert!(html.contains("<title>flash-crowd — seed 42</title>"));
        assert!(html.contains("<img src=\"latency_cdf.svg\""));
        // The better continuity (selfcast's 99.50 against 60.00) is the highlighted one.
        assert!(html.contains("<td class=\"num best\">99.50</td><td class=\"num\">60.00</td>"));
        assert!(html.contains("<td>have</td>"));
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn summary_json_is_byte_identical() {
        let runs = runs();
        let report = Report {
            scenario_name: "det",
            scenario_toml: TOML,
            seed: 7,
            runs: &runs,
        };
        let (a, b) = (scratch("det-a"), scratch("det-b"));
        write(&report, &a).unwrap();
        // A clone, written to another directory: nothing may depend on addresses or time.
        let again = runs.clone();
        write(
            &Report {
                runs: &again,
                ..report
            },
            &b,
        )
        .unwrap();
        let ja = std::fs::read(a.join("summary.json")).unwrap();
        let jb = std::fs::read(b.join("summary.json")).unwrap();
        assert_eq!(ja, jb);
        assert_eq!(
            std::fs::read(a.join("timeseries.csv")).unwrap(),
            std::fs::read(b.join("timeseries.csv")).unwrap()
        );
        assert_eq!(
            std::fs::read(a.join("report.html")).unwrap(),
            std::fs::read(b.join("report.html")).unwrap()
        );
        std::fs::remove_dir_all(a).unwrap();
        std::fs::remove_dir_all(b).unwrap();
    }

    #[test]
    fn html_escapes_the_scenario() {
        let runs = runs();
        let report = Report {
            scenario_name: "<b>bold</b>",
            scenario_toml: TOML,
            seed: 1,
            runs: &runs,
        };
        let page = html(&report);
        assert!(!page.contains("<script>"));
        assert!(!page.contains("<b>bold"));
        assert!(page.contains("flash &lt;script&gt;alert(1)&lt;/script&gt; &amp; co"));
        assert!(page.contains("&lt;b&gt;bold&lt;/b&gt; — seed 1"));
    }

    #[test]
    fn duplicate_labels_are_rejected() {
        let runs = vec![run("selfcast", 0.9, 3, 10), run("selfcast", 0.8, 3, 10)];
        let report = Report {
            scenario_name: "dup",
            scenario_toml: "",
            seed: 0,
            runs: &runs,
        };
        let dir = scratch("dup");
        let err = write(&report, &dir).unwrap_err();
        assert!(matches!(err, ReportError::DuplicateRun { ref label } if label == "selfcast"));
        assert!(!dir.exists());
    }

    #[test]
    fn empty_runs_still_make_a_report() {
        let mut empty = run("selfcast", 1.0, 0, 0);
        empty.startups_ms.clear();
        empty.summary = Summary::default();
        let runs = vec![empty];
        let report = Report {
            scenario_name: "empty",
            scenario_toml: "",
            seed: 0,
            runs: &runs,
        };
        let dir = scratch("empty");
        let written = write(&report, &dir).unwrap();
        assert_eq!(written.files.len(), 13);
        let csv = std::fs::read_to_string(dir.join("timeseries.csv")).unwrap();
        assert_eq!(csv.lines().count(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn cdf_is_downsampled_deterministically() {
        let sorted: Vec<f64> = (0..1_000_003).map(f64::from).collect();
        let pts = cdf_points(&sorted);
        assert_eq!(pts.len(), CDF_POINTS + 1);
        assert_eq!(pts[0], (0.0, 1.0 / 1_000_003.0));
        assert_eq!(*pts.last().unwrap(), (1_000_002.0, 1.0));
        assert!(pts.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1));
        assert_eq!(pts, cdf_points(&sorted));
        assert_eq!(cdf_points(&[3.0, 5.0]), vec![(3.0, 0.5), (5.0, 1.0)]);
    }

    #[test]
    fn missing_font_says_what_to_install() {
        let err = read_font(Path::new("/nonexistent/DejaVuSans.ttf")).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("/nonexistent/DejaVuSans.ttf"), "{message}");
        assert!(message.contains("fonts-dejavu-core"), "{message}");
    }

    #[test]
    fn continuity_axis_zooms_only_when_all_high() {
        let high = vec![
            run("selfcast", 0.995, 100, 10),
            run("source-only", 0.98, 100, 10),
        ];
        let report = Report {
            scenario_name: "z",
            scenario_toml: "",
            seed: 0,
            runs: &high,
        };
        let (lo, hi) = charts(&report)[0].y_range;
        assert!(
            (97.0..98.0).contains(&lo) && hi > 100.0 && hi < 100.2,
            "{lo}..{hi}"
        );
        let mixed = vec![high[0].clone(), run("source-only", 0.5, 100, 10)];
        let report = Report {
            runs: &mixed,
            ..report
        };
        assert_eq!(charts(&report)[0].y_range.0, 0.0);
    }

    #[test]
    fn numbers_and_csv_fields_format() {
        assert_eq!(number(12_345_678.0, 0), "12\u{2009}345\u{2009}678");
        assert_eq!(number(99.5, 2), "99.50");
        assert_eq!(number(-3.26, 1), "−3.3");
        assert_eq!(number(-0.01, 1), "0.0");
        assert_eq!(number(f64::NAN, 1), "–");
        assert_eq!(csv_field("a,b\"c"), "\"a,b\"\"c\"");
        assert_eq!(csv_field("selfcast"), "selfcast");
    }
}
