//! The `peer` command: broadcast, watch, run the demo swarm, or run a benchmark.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use peer::app::{watch, Broadcast, BroadcastOptions, Demo};

/// See the workspace's Cargo.toml: glibc malloc's locks cost more than anything else in the
/// node's message paths.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use peer::identity::{ChannelId, Keypair};
use peer::media::Input;
use peer::node::{Bootstrap, NodeConfig, NodeHandle};

/// Selfcast: peer-to-peer live and on-demand video.
///
/// Broadcast with `peer --source <INPUT>`; watch with `peer watch <CHANNEL> --bootstrap <PEER>`;
/// try it all on one machine with `peer demo`.
#[derive(Debug, Parser)]
#[command(name = "peer", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    source: SourceArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Watch a channel: join its swarm and serve it to the local browser.
    Watch(WatchArgs),
    /// Run a source on the test pattern and several viewers in this process, on loopback.
    Demo(DemoArgs),
    /// Run a benchmark; it prints its figures as a final JSON line.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Args)]
struct SourceArgs {
    /// What to broadcast: a media file, a URL ffmpeg opens (rtmp://, srt://, udp://, http://),
    /// or `testsrc` for the built-in test pattern with a tone.
    #[arg(long, value_name = "INPUT")]
    source: Option<String>,
    /// Import the whole input as fast as possible for on-demand viewing (with seek).
    #[arg(long, requires = "source")]
    vod: bool,
    /// The channel's title.
    #[arg(long, requires = "source")]
    name: Option<String>,
    /// The broadcaster's key file; created (mode 0600) on first use.
    #[arg(long, value_name = "PATH", requires = "source")]
    key: Option<PathBuf>,
    /// Target segment duration in milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(200..=10_000))]
    segment_ms: u64,
    #[command(flatten)]
    net: NetArgs,
}

#[derive(Debug, Args)]
struct NetArgs {
    /// UDP address to accept peers on [broadcaster: 0.0.0.0:4433; viewer: 0.0.0.0 on any
    /// free port].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The UDP address other peers should dial us at (e.g. a port forwarded on a router)
    /// [the listen address; for a wildcard one, the interface that routes toward the
    /// bootstrap peer].
    #[arg(long)]
    advertise: Option<SocketAddr>,
    /// Your upload capacity in kbit/s: the node's own measurement starts there and never
    /// goes above it (it decides how many peers this node feeds) [measured, from 2000].
    #[arg(long, value_name = "KBPS")]
    upload_kbps: Option<u32>,
    /// HTTP address of the local gateway (player page, HLS, status API) [broadcaster:
    /// 127.0.0.1 on any free port; viewer: 127.0.0.1:8080].
    #[arg(long)]
    http: Option<SocketAddr>,
    /// The web-player directory (defaults to the one in the source tree, or $SELFCAST_WEB_ROOT).
    #[arg(long, value_name = "DIR")]
    web_root: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct WatchArgs {
    /// The channel id the broadcaster printed.
    channel: ChannelId,
    /// A peer of the swarm to start from: `ADDR` or `PEER_ID@ADDR` (repeatable).
    #[arg(long, required = true, value_name = "PEER")]
    bootstrap: Vec<Bootstrap>,
    /// An HTTP origin laid out like the gateway (`/init.mp4`, `/seg/N.m4s`), e.g. a CDN in
    /// front of the broadcaster's gateway: asked for what no peer can deliver in time,
    /// instead of the broadcaster. Plain http:// only.
    #[arg(long, value_name = "URL")]
    origin: Option<peer::node::origin::OriginUrl>,
    #[command(flatten)]
    net: NetArgs,
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// Number of viewers.
    #[arg(long, default_value_t = 3)]
    viewers: usize,
    /// HTTP port of the source's gateway; viewer i gets the port + i (0: any free ports).
    #[arg(long, default_value_t = 8080)]
    http_port: u16,
    /// The web-player directory.
    #[arg(long, value_name = "DIR")]
    web_root: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Segment throughput between two peers over QUIC on loopback.
    Transfer {
        /// Segments to transfer.
        #[arg(long, default_value_t = 2000)]
        segments: u32,
        /// Segment size in KiB (a 1 s segment at 2 Mbit/s is about 250 KiB).
        #[arg(long, default_value_t = 256)]
        segment_kib: u32,
    },
    /// Transactions per second of a ring of overlay nodes in this process.
    Store {
        /// Nodes in the ring.
        #[arg(long, default_value_t = 4)]
        nodes: usize,
        /// Concurrent clients, spread over the nodes.
        #[arg(long, default_value_t = 10)]
        clients: usize,
        /// Operations per client.
        #[arg(long, default_value_t = 1000)]
        ops: usize,
        /// What the clients do.
        #[arg(long, value_enum, default_value = "increment")]
        workload: peer::bench::store::Workload,
        /// How the nodes talk: real QUIC on loopback, or messages handed over in memory.
        #[arg(long, value_enum, default_value = "quic")]
        transport: peer::bench::store::Transport,
        /// Replicas per key.
        #[arg(long, default_value_t = 4)]
        replicas: u8,
    },
    /// `--vod` import speed of a 60 s 1080p H.264 file, as × real time.
    Ingest {
        /// Length of the generated test file in seconds.
        #[arg(long, default_value_t = 60)]
        seconds: u32,
        /// Where to keep the generated file between runs.
        #[arg(long)]
        work_dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,quinn=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Watch(args)) => run_watch(args).await,
        Some(Command::Demo(args)) => run_demo(args).await,
        Some(Command::Bench(bench)) => run_bench(bench).await,
        None => match cli.source.source.clone() {
            Some(input) => run_source(cli.source, input).await,
            None => {
                use clap::CommandFactory;
                Cli::command().print_help()?;
                anyhow::bail!("nothing to do: give --source <INPUT>, or a command such as `demo`")
            }
        },
    }
}

/// Who runs the node, for the defaults of its addresses.
#[derive(Debug, Clone, Copy)]
enum Role {
    Broadcaster,
    Viewer,
}

fn node_config(net: &NetArgs, role: Role) -> NodeConfig {
    let (listen, http) = match role {
        Role::Broadcaster => (([0, 0, 0, 0], 4433), ([127, 0, 0, 1], 0)),
        Role::Viewer => (([0, 0, 0, 0], 0), ([127, 0, 0, 1], 8080)),
    };
    NodeConfig {
        listen: net.listen.unwrap_or_else(|| listen.into()),
        http: Some(net.http.unwrap_or_else(|| http.into())),
        advertise: net.advertise,
        exchange: peer::exchange::ExchangeConfig {
            upload_guess_bps: f64::from(net.upload_kbps.unwrap_or(2000)) * 1000.0,
            upload_limit_bps: net.upload_kbps.map(|k| f64::from(k) * 1000.0),
            ..peer::exchange::ExchangeConfig::default()
        },
        web_root: net
            .web_root
            .clone()
            .unwrap_or_else(gateway::default_web_root),
        ..NodeConfig::default()
    }
}

fn default_key_path() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("selfcast").join("broadcaster.key")
}

async fn run_source(args: SourceArgs, input: String) -> anyhow::Result<()> {
    let key_path = args.key.clone().unwrap_or_else(default_key_path);
    let (key, created) = Keypair::load_or_create(&key_path)?;
    if created {
        eprintln!("created broadcaster key {}", key_path.display());
    }
    let input = Input::parse(&input);
    let name = args.name.clone().unwrap_or_else(|| match &input {
        Input::File(p) => p
            .file_name()
            .map_or("Selfcast".into(), |n| n.to_string_lossy().into()),
        Input::Url(u) => u.clone(),
        Input::TestPattern => "Test pattern".into(),
    });
    let options = BroadcastOptions {
        input,
        vod: args.vod,
        name,
        segment_target: Duration::from_millis(args.segment_ms),
        progress: args.vod,
        node: node_config(&args.net, Role::Broadcaster),
    };
    let mut broadcast = Broadcast::start(options, key).await?;
    let node = broadcast.node().clone();
    println!("channel   {}", broadcast.channel());
    print_node(&node);
    println!(
        "watch it: peer watch {} --bootstrap {}@{}",
        broadcast.channel(),
        node.peer_id(),
        shown_addr(node.local_addr())
    );
    tokio::select! {
        r = broadcast.wait_ingest() => {
            let summary = r?;
            println!(
                "input ended after {} segments ({:.1} s of media in {:.1} s); serving until Ctrl-C",
                summary.segments,
                summary.media_duration.as_secs_f64(),
                summary.wall.as_secs_f64()
            );
            tokio::signal::ctrl_c().await?;
        }
        r = tokio::signal::ctrl_c() => {
            r?;
            if args.vod && !broadcast.ingest_finished() {
                eprintln!("import interrupted: the channel holds only the segments imported so far");
            }
        }
    }
    broadcast.shutdown().await;
    Ok(())
}

async fn run_watch(args: WatchArgs) -> anyhow::Result<()> {
    let node = watch(
        args.channel,
        args.bootstrap,
        NodeConfig {
            origin: args.origin,
            ..node_config(&args.net, Role::Viewer)
        },
        Keypair::generate(),
    )
    .await?;
    print_node(&node);
    tokio::signal::ctrl_c().await?;
    node.shutdown().await;
    Ok(())
}

async fn run_demo(args: DemoArgs) -> anyhow::Result<()> {
    let web_root = args.web_root.unwrap_or_else(gateway::default_web_root);
    let demo = Demo::start(args.viewers, web_root, args.http_port).await?;
    println!("channel   {}", demo.broadcast.channel());
    if let Some(viewer) = demo.viewers.first() {
        if let Some(http) = viewer.http_addr() {
            println!("player    http://{http}/");
            println!("playlist  http://{http}/stream.m3u8");
        }
    }
    for (i, viewer) in demo.viewers.iter().enumerate().skip(1) {
        if let Some(http) = viewer.http_addr() {
            println!("viewer {} http://{http}/", i + 1);
        }
    }
    println!("Ctrl-C stops the demo.");
    let mut ticker = tokio::time::interval(Duration::from_secs(5));
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => println!("{}", demo.status_line()),
            r = tokio::signal::ctrl_c() => { r?; break; }
        }
    }
    println!("stopping…");
    demo.shutdown().await;
    Ok(())
}

async fn run_bench(bench: BenchCommand) -> anyhow::Result<()> {
    let result = match bench {
        BenchCommand::Transfer {
            segments,
            segment_kib,
        } => {
            peer::bench::transfer::run(peer::bench::transfer::TransferBenchArgs {
                segments,
                segment_kib,
            })
            .await?
        }
        BenchCommand::Store {
            nodes,
            clients,
            ops,
            workload,
            transport,
            replicas,
        } => {
            let args = peer::bench::store::StoreBenchArgs {
                nodes,
                clients,
                ops,
                workload,
                transport,
                replicas,
            };
            peer::bench::store::run(args).await?
        }
        BenchCommand::Ingest { seconds, work_dir } => {
            let args = peer::bench::ingest::IngestBenchArgs { seconds, work_dir };
            tokio::task::spawn_blocking(move || peer::bench::ingest::run(args))
                .await
                .context("benchmark thread")??
        }
    };
    println!("{result}");
    Ok(())
}

fn print_node(node: &NodeHandle) {
    println!("peer      {}", node.peer_id());
    println!("listening {} (udp)", node.local_addr());
    if let Some(http) = node.http_addr() {
        println!("player    http://{http}/");
        println!("playlist  http://{http}/stream.m3u8");
    }
}

/// The address to print for others to dial: a wildcard bind is shown with a placeholder.
fn shown_addr(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        format!("<this-host-ip>:{}", addr.port())
    } else {
        addr.to_string()
    }
}
