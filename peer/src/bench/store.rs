//! `peer bench store`: transactions per second of a ring of overlay nodes in one process.
//!
//! `--transport memory` hands the nodes' messages over in memory (no sockets, no encoding), as
//! Scalaris' own benchmark does inside one Erlang VM; `--transport quic` sends them over real
//! QUIC on loopback through [`crate::overlay_net`]. Each client runs its operations one after
//! another: `increment` is a read-modify-write transaction on the client's own key,
//! `increment-shared` the same on one key for all (aborts are retried and counted),
//! `quorum-read` a majority read. The figures are committed operations per second of wall time
//! and the latency of each operation, retries included.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use rand::RngCore;
use rustc_hash::FxHashMap as HashMap;
use serde_json::json;
use tracker_overlay::{Config, Event, Message, NodeRef, Output, OverlayNode, TxOp, Value};

/// What each client does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Each client increments its own key (read-modify-write transactions).
    Increment,
    /// All clients increment one key (contention: aborts are retried).
    IncrementShared,
    /// Majority reads of the clients' keys.
    QuorumRead,
}

/// How the nodes talk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// Real QUIC on loopback.
    Quic,
    /// In memory, without sockets or encoding.
    Memory,
}

/// Parameters of the store benchmark.
#[derive(Debug, Clone)]
pub struct StoreBenchArgs {
    /// Nodes in the ring.
    pub nodes: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Operations per client.
    pub ops: usize,
    /// What the clients do.
    pub workload: Workload,
    /// How the nodes talk.
    pub transport: Transport,
    /// Replicas per key.
    pub replicas: u8,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Increment => "increment",
            Workload::IncrementShared => "increment-shared",
            Workload::QuorumRead => "quorum-read",
        }
    }

    fn key(self, client: usize) -> Vec<u8> {
        match self {
            Workload::IncrementShared => b"bench-shared".to_vec(),
            _ => format!("bench-{client}").into_bytes(),
        }
    }

    fn op(self, client: usize) -> Vec<TxOp> {
        match self {
            Workload::QuorumRead => vec![TxOp::Read(self.key(client))],
            _ => vec![TxOp::AddNumber(self.key(client), 1)],
        }
    }
}

/// What a run measured.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) latencies: Vec<Duration>,
    pub(crate) aborts: u64,
    pub(crate) messages: u64,
}

impl Clients {
    /// The result line.
    pub(crate) fn tally_json(self, args: &StoreBenchArgs, wall: Duration) -> serde_json::Value {
        self.tally.json(args, wall)
    }
}

impl Tally {
    fn json(mut self, args: &StoreBenchArgs, wall: Duration) -> serde_json::Value {
        self.latencies.sort_unstable();
        let pct = |p: f64| {
            let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
            self.latencies
                .get(i)
                .map_or(0.0, |d| round3(d.as_secs_f64() * 1e3))
        };
        let done = self.latencies.len() as f64;
        json!({
            "bench": format!("store-{}", args.workload.name()),
            "transport": match args.transport { Transport::Quic => "quic", Transport::Memory => "memory" },
            "nodes": args.nodes,
            "replicas": args.replicas,
            "clients": args.clients,
            "ops": args.ops,
            "committed": self.latencies.len(),
            "aborts": self.aborts,
            "messages": self.messages,
            "tx_per_s": (done / wall.as_secs_f64()).round(),
            "p50_ms": pct(0.5),
            "p99_ms": pct(0.99),
            "wall_seconds": round3(wall.as_secs_f64()),
        })
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The nodes' configuration for a benchmark ring.
pub(crate) fn bench_config(replicas: u8) -> Config {
    Config {
        replicas,
        seed: rand::thread_rng().next_u64(),
        ..Config::default()
    }
}

/// A fresh node identity on loopback (the address is only a label for the memory transport).
pub(crate) fn bench_node(i: usize) -> NodeRef {
    let mut peer = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut peer);
    NodeRef::new(
        peer,
        SocketAddr::from((Ipv4Addr::LOCALHOST, 20_000 + i as u16)),
    )
}

/// Runs the benchmark and returns its JSON result.
pub async fn run(args: StoreBenchArgs) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(args.nodes >= 1, "--nodes must be at least 1");
    anyhow::ensure!(args.clients >= 1, "--clients must be at least 1");
    anyhow::ensure!(
        (1..=15).contains(&args.replicas),
        "--replicas must be 1 to 15"
    );
    match args.transport {
        Transport::Memory => {
            let a = args.clone();
            tokio::task::spawn_blocking(move || run_memory(&a)).await?
        }
        Transport::Quic => crate::overlay_net::bench(&args).await,
    }
}

/// The first backoff ceiling after an abort; it doubles with each further abort.
const RETRY_BASE: Duration = Duration::from_micros(100);

/// Clients' bookkeeping, shared by both transports.
pub(crate) struct Clients {
    workload: Workload,
    remaining: Vec<usize>,
    /// Consecutive aborts of each client's current operation.
    attempts: Vec<u32>,
    started: Vec<Instant>,
    pub(crate) tally: Tally,
}

impl Clients {
    pub(crate) fn new(args: &StoreBenchArgs) -> Self {
        Self {
            workload: args.workload,
            remaining: vec![args.ops; args.clients],
            attempts: vec![0; args.clients],
            started: vec![Instant::now(); args.clients],
            tally: Tally::default(),
        }
    }

    /// The client's next operation, if it has any left.
    pub(crate) fn next(&mut self, client: usize, retry: bool) -> Option<Vec<TxOp>> {
        if !retry {
            if self.remaining[client] == 0 {
                return None;
            }
            self.remaining[client] -= 1;
            self.started[client] = Instant::now();
        }
        Some(self.workload.op(client))
    }

    /// A client's operation ended; whether it must be retried.
    pub(crate) fn done(
        &mut self,
        client: usize,
        result: &Result<Vec<Option<Value>>, tracker_overlay::Abort>,
    ) -> anyhow::Result<bool> {
        match result {
            Ok(_) => {
                self.tally.latencies.push(self.started[client].elapsed());
                self.attempts[client] = 0;
                Ok(false)
            }
            Err(tracker_overlay::Abort::Conflict { .. }) => {
                self.tally.aborts += 1;
                self.attempts[client] += 1;
                Ok(true)
            }
            Err(e) => anyhow::bail!("client {client}: {e}"),
        }
    }

    /// How long a client waits before it retries an aborted operation: randomized exponential
    /// backoff, as any client of an optimistic store does, so that contenders spread out
    /// instead of colliding again.
    pub(crate) fn backoff(&self, client: usize) -> Duration {
        let attempts = self.attempts[client].min(8);
        let ceiling = RETRY_BASE.as_micros() as u64 * (1 << attempts);
        Duration::from_micros(rand::thread_rng().next_u64() % ceiling.max(1))
    }

    pub(crate) fn finished(&self) -> bool {
        self.remaining.iter().all(|&r| r == 0)
    }

    /// Writes each quorum-read key once, so reads find values.
    pub(crate) fn setup_ops(&self, clients: usize) -> Vec<Vec<TxOp>> {
        match self.workload {
            Workload::QuorumRead => (0..clients)
                .map(|c| vec![TxOp::Write(self.workload.key(c), Value::Int(c as i64))])
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// The memory transport: every node in this thread, messages moved from one to the other.
struct Cluster {
    nodes: Vec<OverlayNode>,
    index: HashMap<[u8; 32], usize>,
    queue: VecDeque<(usize, Message)>,
    events: Vec<(usize, Event)>,
    messages: u64,
}

impl Cluster {
    fn collect(&mut self, i: usize) {
        while let Some(out) = self.nodes[i].poll_output() {
            match out {
                Output::Transmit { to, msg } => {
                    if let Some(&j) = self.index.get(&to.peer) {
                        self.queue.push_back((j, msg));
                    }
                }
                Output::Event(e) => self.events.push((i, e)),
            }
        }
    }

    /// Delivers queued messages and due timers until nothing is left to do right now.
    fn step(&mut self) {
        let now = Instant::now();
        for i in 0..self.nodes.len() {
            if self.nodes[i].poll_timeout().is_some_and(|t| t <= now) {
                self.nodes[i].handle_timeout(now);
                self.collect(i);
            }
        }
        // A batch of messages per clock reading: the clock is the costliest call here.
        let now = Instant::now();
        for _ in 0..self.queue.len() {
            let Some((j, msg)) = self.queue.pop_front() else {
                break;
            };
            self.messages += 1;
            self.nodes[j].handle_message(now, msg);
            self.collect(j);
        }
    }

    fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&mut Cluster) -> bool) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if done(self) {
                return true;
            }
            self.step();
            if self.queue.is_empty() {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        done(self)
    }
}

/// Builds a settled ring: every node joined, neighbours consistent, every range held with
/// authority, replicated managers found.
fn build(args: &StoreBenchArgs) -> anyhow::Result<Cluster> {
    let now = Instant::now();
    let refs: Vec<NodeRef> = (0..args.nodes).map(bench_node).collect();
    let nodes = refs
        .iter()
        .map(|r| OverlayNode::new(now, *r, bench_config(args.replicas)))
        .collect();
    let index = refs.iter().enumerate().map(|(i, r)| (r.peer, i)).collect();
    let mut c = Cluster {
        nodes,
        index,
        queue: VecDeque::new(),
        events: Vec::new(),
        messages: 0,
    };
    c.nodes[0].create(now);
    c.collect(0);
    for i in 1..args.nodes {
        c.nodes[i].join(Instant::now(), refs[0]);
        c.collect(i);
        let joined = c.run_until(Duration::from_secs(10), |c| {
            c.events.iter().any(|(n, e)| *n == i && *e == Event::Joined)
        });
        anyhow::ensure!(joined, "node {i} did not join the benchmark ring");
    }
    let settled = c.run_until(Duration::from_secs(30), |c| {
        crate::overlay_net::settled(c.nodes.iter())
    });
    anyhow::ensure!(settled, "the benchmark ring did not settle");
    Ok(c)
}

fn run_memory(args: &StoreBenchArgs) -> anyhow::Result<serde_json::Value> {
    let mut c = build(args)?;
    let mut clients = Clients::new(args);
    let n = args.nodes;
    // Setup writes, then the timed run.
    let setup = clients.setup_ops(args.clients);
    let mut pending: HashMap<(usize, u64), usize> = HashMap::default();
    for (client, ops) in setup.into_iter().enumerate() {
        let req = c.nodes[client % n].transact(Instant::now(), ops);
        pending.insert((client % n, req), client);
        c.collect(client % n);
    }
    while !pending.is_empty() {
        c.step();
        for (node, e) in std::mem::take(&mut c.events) {
            if let Event::TxDone { req, result } = e {
                if let Some(client) = pending.remove(&(node, req)) {
                    result.map_err(|e| anyhow::anyhow!("setup write of client {client}: {e}"))?;
                }
            }
        }
    }
    c.messages = 0;
    let start = Instant::now();
    for client in 0..args.clients {
        if let Some(ops) = clients.next(client, false) {
            let req = c.nodes[client % n].transact(Instant::now(), ops);
            pending.insert((client % n, req), client);
            c.collect(client % n);
        }
    }
    let mut waiting: Vec<(Instant, usize)> = Vec::new();
    while !pending.is_empty() || !waiting.is_empty() {
        c.step();
        let now = Instant::now();
        let start_op = |c: &mut Cluster,
                        pending: &mut HashMap<(usize, u64), usize>,
                        client: usize,
                        retry: bool,
                        clients: &mut Clients| {
            if let Some(ops) = clients.next(client, retry) {
                let node = client % n;
                let req = c.nodes[node].transact(Instant::now(), ops);
                pending.insert((node, req), client);
                c.collect(node);
            }
        };
        let due: Vec<usize> = waiting
            .iter()
            .filter(|(at, _)| *at <= now)
            .map(|&(_, cl)| cl)
            .collect();
        waiting.retain(|(at, _)| *at > now);
        for client in due {
            start_op(&mut c, &mut pending, client, true, &mut clients);
        }
        for (node, e) in std::mem::take(&mut c.events) {
            let Event::TxDone { req, result } = e else {
                continue;
            };
            let Some(client) = pending.remove(&(node, req)) else {
                continue;
            };
            if clients.done(client, &result)? {
                waiting.push((now + clients.backoff(client), client));
            } else {
                start_op(&mut c, &mut pending, client, false, &mut clients);
            }
        }
        if c.queue.is_empty() && pending.is_empty() {
            std::thread::yield_now();
        }
    }
    let wall = start.elapsed();
    clients.tally.messages = c.messages;
    debug_assert!(clients.finished());
    Ok(clients.tally_json(args, wall))
}
