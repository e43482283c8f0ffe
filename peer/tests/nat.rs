//! NAT traversal behind real NATs (Linux network namespaces and iptables, see `netns`).
//!
//! Two public peers (the bootstrap, which is also STUN server and relay, and its STUN
//! partner), four broadcasters, one behind each NAT type, and four viewer hosts, one behind
//! each type. In four rounds every viewer host watches another broadcaster, so that every
//! ordered pair (viewer's type, broadcaster's type) runs once. Each node is this test binary
//! run again inside its namespace (`nat_child`), using the library as the `peer` command does:
//! the broadcaster publishes synthetic segments; the viewer joins the overlay through the
//! bootstrap, finds the channel and its source in the directory, reaches it (directly, punched,
//! or relayed) and must receive segments from it.
//!
//! Checked for every pair: connected, segments transferred, direct exactly where punching can
//! work (no symmetric NAT facing a symmetric or port-restricted one), relayed elsewhere, and a
//! direct path within 2 s.

#![allow(clippy::unwrap_used)] // tests: a panic is a failed test with its location

mod netns;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use netns::{NatType, Net, HOST_PORT};

/// The prefix of the lines children report on.
const REPORT: &str = "NATCHILD ";

/// Each NAT type classifies itself right: STUN to the bootstrap peer and to its partner (the
/// RFC 5780 other address), CHANGE-REQUEST answered by the partner.
#[test]
fn hosts_behind_each_nat_type_classify_their_nat_through_two_public_peers() {
    run(false);
}

#[test]
fn every_pair_of_nat_types_connects_directly_where_punching_can_work_and_relayed_elsewhere() {
    run(true);
}

/// One network at a time: the tests of this file would otherwise share the machine's cores
/// (their nodes' timing is what they measure).
static ONE_NET: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn run(matrix: bool) {
    let _one = ONE_NET.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(why) = netns::unavailable() {
        eprintln!("SKIPPED: NAT traversal test needs network namespaces: {why}");
        return;
    }
    // Each node's log; kept in $SELFCAST_NAT_LOGS when that is set.
    let tmp = tempfile::tempdir().unwrap();
    let logs = std::env::var_os("SELFCAST_NAT_LOGS").map_or(tmp.path().to_owned(), Into::into);
    std::fs::create_dir_all(&logs).unwrap();
    let mut net = Net::new().unwrap();
    let pub1 = net.public_host("pub1", 1).unwrap();
    let pub2 = net.public_host("pub2", 2).unwrap();
    let bootstrap: SocketAddr = format!("{}:{HOST_PORT}", pub1.ip).parse().unwrap();
    let mut sources = Vec::new();
    let mut viewer_hosts = Vec::new();
    for (i, t) in NatType::ALL.into_iter().enumerate() {
        sources.push(net.host(10 + i as u8, t).unwrap());
        viewer_hosts.push(net.host(20 + i as u8, t).unwrap());
    }
    let started = Instant::now();

    let mut p1 = Node::spawn(
        &pub1.ns,
        "pub1",
        &logs,
        json!({"role": "public", "listen": format!("{}:{HOST_PORT}", pub1.ip)}),
    );
    p1.wait_ready(Duration::from_secs(20));
    let mut p2 = Node::spawn(
        &pub2.ns,
        "pub2",
        &logs,
        json!({"role": "public", "listen": format!("{}:{HOST_PORT}", pub2.ip), "bootstrap": bootstrap}),
    );
    let ready = p2.wait_ready(Duration::from_secs(20));
    assert_eq!(
        ready["connectivity"], "Open",
        "a public peer classifies itself open"
    );

    // The broadcasters, one per NAT type.
    let mut source_nodes = Vec::new();
    let mut channels = Vec::new();
    for (i, host) in sources.iter().enumerate() {
        let seed = [0x50 + i as u8; 32];
        let key = peer::identity::Keypair::from_seed(seed);
        channels.push((key.public().channel_id(), key.peer_id()));
        source_nodes.push(Node::spawn(
            &host.ns,
            &format!("source-{}", host.nat.label()),
            &logs,
            json!({"role": "source", "listen": format!("{}:{HOST_PORT}", host.ip), "bootstrap": bootstrap, "seed": hex(&seed)}),
        ));
    }
    for (node, host) in source_nodes.iter_mut().zip(&sources) {
        let ready = node.wait_ready(Duration::from_secs(30));
        assert_eq!(
            ready["connectivity"],
            expected_class(host.nat),
            "{} classified as {}",
            host.nat.label(),
            ready
        );
    }
    eprintln!(
        "public peers and broadcasters up after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if !matrix {
        return;
    }

    // Four rounds: viewer host x watches broadcaster (x + round) mod 4.
    let mut results: HashMap<(NatType, NatType), Value> = HashMap::new();
    for round in 0..NatType::ALL.len() {
        let mut viewers = Vec::new();
        for (x, host) in viewer_hosts.iter().enumerate() {
            let y = (x + round) % NatType::ALL.len();
            let (channel, source) = channels[y];
            let seed = [0x90 + (round * 4 + x) as u8; 32];
            let name = format!("viewer-{}-to-{}", host.nat.label(), sources[y].nat.label());
            let config = json!({
                // A new port per round: the NAT must not remember the last round's viewer.
                "role": "viewer", "listen": format!("{}:{}", host.ip, HOST_PORT + 1 + round as u16),
                "bootstrap": bootstrap, "seed": hex(&seed),
                "channel": channel.to_string(), "source": source.to_string(),
            });
            viewers.push((
                host.nat,
                sources[y].nat,
                Node::spawn(&host.ns, &name, &logs, config),
            ));
        }
        for (vt, st, mut node) in viewers {
            let report = node.wait_for("result", Duration::from_secs(60));
            node.finish();
            results.insert((vt, st), report);
        }
    }
    // A direct path set up by the broadcaster's side (its overlay may dial first) is timed there.
    for node in &mut source_nodes {
        node.close_stdin();
    }
    // By (broadcaster's type, viewer's id).
    let mut source_paths: HashMap<(NatType, String), Value> = HashMap::new();
    for (mut node, host) in source_nodes.into_iter().zip(&sources) {
        for line in node.drain(Duration::from_secs(10)) {
            if line["event"] == "path" {
                let viewer = line["peer"].as_str().unwrap_or("").to_owned();
                source_paths.insert((host.nat, viewer), line);
            }
        }
    }
    p2.close_stdin();
    p1.close_stdin();

    // The matrix.
    let mut table = String::from(
        "\nNAT pair matrix (viewer ↓ dials broadcaster →): path, time to connection\n",
    );
    table.push_str(&format!("{:>12}", ""));
    for t in NatType::ALL {
        table.push_str(&format!(" | {:>22}", t.label()));
    }
    table.push('\n');
    let mut failures = Vec::new();
    let (mut direct, mut relayed, mut failed) = (0, 0, 0);
    for vt in NatType::ALL {
        table.push_str(&format!("{:>12}", vt.label()));
        for st in NatType::ALL {
            let r = &results[&(vt, st)];
            let ok = r["ok"] == true;
            let kind = r["kind"].as_str().unwrap_or("none").to_owned();
            // Whoever dialled timed the connection.
            let viewer = r["viewer"].as_str().unwrap_or("").to_owned();
            let ms = r["connected_ms"].as_u64().or_else(|| {
                source_paths
                    .get(&(st, viewer))
                    .and_then(|p| p["connected_ms"].as_u64())
            });
            let cell = if ok {
                format!(
                    "{kind} {}",
                    ms.map_or("(accepted)".into(), |m| format!("{m} ms"))
                )
            } else {
                "FAILED".into()
            };
            table.push_str(&format!(" | {cell:>22}"));
            let want = if punchable(vt, st) {
                "direct"
            } else {
                "relayed"
            };
            match (ok, kind.as_str()) {
                (false, _) => {
                    failed += 1;
                    failures.push(format!("{} → {}: no segment ({r})", vt.label(), st.label()));
                }
                (true, k) => {
                    if k == "direct" {
                        direct += 1;
                    } else {
                        relayed += 1;
                    }
                    if k != want {
                        failures.push(format!(
                            "{} → {}: {k}, expected {want}",
                            vt.label(),
                            st.label()
                        ));
                    }
                    if k == "direct" && ms.is_none_or(|m| m > 2000) {
                        failures.push(format!(
                            "{} → {}: direct path after {ms:?} ms (2000 at most)",
                            vt.label(),
                            st.label()
                        ));
                    }
                }
            }
        }
        table.push('\n');
    }
    table.push_str(&format!(
        "{direct} direct, {relayed} relayed, {failed} failed of 16 ordered pairs; whole test {:.1} s\n",
        started.elapsed().as_secs_f64()
    ));
    println!("{table}");
    eprintln!("{table}");
    if !failures.is_empty() {
        for name in std::fs::read_dir(&logs).unwrap().flatten() {
            let text = std::fs::read_to_string(name.path()).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(25).collect();
            eprintln!(
                "--- {} (last lines) ---",
                name.file_name().to_string_lossy()
            );
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }
    assert!(
        failures.is_empty(),
        "NAT matrix failures:\n{}",
        failures.join("\n")
    );
}

/// The class a host behind `nat` must find for itself.
fn expected_class(nat: NatType) -> &'static str {
    match nat {
        NatType::None => "Open",
        NatType::FullCone => "FullCone",
        NatType::PortRestricted => "PortRestricted",
        NatType::Symmetric => "Symmetric",
    }
}

/// Whether a direct path between these NAT types is possible (without port prediction).
fn punchable(a: NatType, b: NatType) -> bool {
    use NatType::*;
    !matches!(
        (a, b),
        (Symmetric, Symmetric) | (Symmetric, PortRestricted) | (PortRestricted, Symmetric)
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A child node inside a namespace; killed when dropped.
struct Node {
    name: String,
    log: std::path::PathBuf,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<Value>,
}

impl Node {
    fn spawn(ns: &str, name: &str, logs: &std::path::Path, config: Value) -> Self {
        let exe = std::env::current_exe().unwrap();
        let log_path = logs.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(exe)
            .args([
                "nat_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("SELFCAST_NAT_CHILD", config.to_string())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // libtest may have written "test nat_child ... " before it on the line.
                if let Some(report) = line.find(REPORT).map(|i| &line[i + REPORT.len()..]) {
                    if let Ok(v) = serde_json::from_str(report) {
                        if tx.send(v).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Self {
            name: name.to_owned(),
            log: log_path,
            stdin: child.stdin.take(),
            child,
            lines,
        }
    }

    /// Waits for a report whose `event` is `event`.
    fn wait_for(&mut self, event: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) if v["event"] == event => return v,
                Ok(_) => {}
                Err(_) => {
                    return json!({"event": event, "ok": false, "error": format!("{} reported no {event} within {limit:?}", self.name)})
                }
            }
        }
    }

    fn wait_ready(&mut self, limit: Duration) -> Value {
        let v = self.wait_for("ready", limit);
        if v.get("error").is_some() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            panic!("{v}\n--- {} log ---\n{log}", self.name);
        }
        v
    }

    /// Asks the child to stop (it shuts down when its stdin closes).
    fn close_stdin(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"\n");
        }
    }

    /// The reports the child still makes until it exits (or `limit`).
    fn drain(&mut self, limit: Duration) -> Vec<Value> {
        let deadline = Instant::now() + limit;
        let mut out = Vec::new();
        while let Ok(v) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            out.push(v);
        }
        out
    }

    fn finish(&mut self) {
        self.close_stdin();
        let deadline = Instant::now() + Duration::from_secs(8);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.close_stdin();
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// One node of the matrix, run inside its namespace by the test above.
#[test]
#[ignore = "a node of the NAT test, started inside a network namespace by that test"]
fn nat_child() {
    let Ok(config) = std::env::var("SELFCAST_NAT_CHILD") else {
        return;
    };
    let config: Value = serde_json::from_str(&config).unwrap();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(child::run(config));
}

mod child {
    //! What a node of the matrix does.

    use std::collections::HashSet;
    use std::net::SocketAddr;
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    use bytes::Bytes;
    use serde_json::{json, Value};

    use peer::directory;
    use peer::identity::{ChannelId, Keypair, PeerId};
    use peer::nat::driver::PathKind;
    use peer::node::{Bootstrap, NodeConfig, NodeHandle};
    use peer::segment::{ChannelRecord, SegmentId, StreamKind};

    use super::REPORT;

    fn report(v: Value) {
        println!("{REPORT}{v}");
    }

    fn seed(config: &Value) -> [u8; 32] {
        let hex = config["seed"].as_str().unwrap_or("");
        let mut seed = [0u8; 32];
        for (i, b) in seed.iter_mut().enumerate() {
            *b = hex
                .get(2 * i..2 * i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .unwrap_or(0);
        }
        if hex.is_empty() {
            seed = rand::random();
        }
        seed
    }

    /// A future that ends when the parent closes our stdin (or writes a line).
    async fn stopped() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            let _ = tx.send(());
        });
        let _ = rx.await;
    }

    pub async fn run(config: Value) {
        let listen: SocketAddr = config["listen"].as_str().unwrap().parse().unwrap();
        let bootstrap: Option<SocketAddr> =
            config["bootstrap"].as_str().map(|b| b.parse().unwrap());
        let key = Keypair::from_seed(seed(&config));
        let node_config = NodeConfig {
            listen,
            http: None,
            overlay_bootstrap: bootstrap,
            ..NodeConfig::default()
        };
        match config["role"].as_str().unwrap() {
            "public" | "source" => broadcast(config, node_config, key, bootstrap).await,
            "viewer" => watch(config, node_config, key, bootstrap.unwrap()).await,
            other => panic!("unknown role {other}"),
        }
    }

    async fn broadcast(
        config: Value,
        node_config: NodeConfig,
        key: Keypair,
        bootstrap: Option<SocketAddr>,
    ) {
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let record = ChannelRecord {
            broadcaster: key.public(),
            name: format!("nat test {}", config["role"]),
            kind: StreamKind::Live,
            segment_target_ms: 1000,
            started_unix_ms: unix_ms,
        }
        .sign(&key);
        let node = NodeHandle::start_source(node_config, key, record.clone())
            .await
            .unwrap();
        let overlay = node.overlay().clone();
        match bootstrap {
            Some(addr) => overlay.join_addr(addr),
            None => overlay.create(),
        }
        assert!(
            overlay.joined(Duration::from_secs(20)).await,
            "joined the ring"
        );
        let channel = record.record.channel_id();
        if let Err(e) = directory::register(
            &overlay,
            channel,
            Some(&record),
            node.peer_id(),
            node.advertised(),
            Some(node.nat()),
        )
        .await
        {
            eprintln!("first registration failed: {e}");
        }
        tokio::spawn(directory::keep_registered(
            overlay,
            channel,
            Some(record),
            node.peer_id(),
            node.advertised(),
            Some(node.nat().clone()),
            None,
        ));
        // A public peer with a bootstrap is that peer's STUN partner before it says ready.
        if config["role"] == "public" && bootstrap.is_some() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while node.nat().partner().is_none() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let status = node.nat().status();
        report(json!({"event": "ready", "connectivity": status["connectivity"], "nat": status}));
        let publish = {
            let node = node.clone();
            async move {
                let init = Bytes::from(vec![0x11; 2_000]);
                node.publish(SegmentId::Init, Duration::ZERO, init, false)
                    .await
                    .unwrap();
                let mut reported = HashSet::new();
                for seq in 0.. {
                    let bytes = Bytes::from(vec![(seq % 251) as u8; 20_000]);
                    node.publish(SegmentId::Media(seq), Duration::from_secs(1), bytes, false)
                        .await
                        .unwrap();
                    report_paths(&node, &mut reported);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        };
        tokio::select! {
            () = publish => {}
            () = stopped() => {}
        }
        let mut reported = HashSet::new();
        report_paths(&node, &mut reported);
        node.shutdown().await;
    }

    /// Reports each path once it is timed.
    fn report_paths(node: &NodeHandle, reported: &mut HashSet<PeerId>) {
        for (peer, path) in node.nat().paths() {
            if path.connected_in.is_some() && reported.insert(peer) {
                report(json!({
                    "event": "path", "peer": peer.to_string(),
                    "kind": kind(path.kind),
                    "connected_ms": path.connected_in.map(|d| d.as_millis() as u64),
                }));
            }
        }
    }

    fn kind(k: PathKind) -> &'static str {
        match k {
            PathKind::Direct => "direct",
            PathKind::Relayed => "relayed",
        }
    }

    async fn watch(
        config: Value,
        mut node_config: NodeConfig,
        key: Keypair,
        bootstrap: SocketAddr,
    ) {
        node_config.overlay_bootstrap = None;
        let channel: ChannelId = config["channel"].as_str().unwrap().parse().unwrap();
        let source: PeerId = config["source"].as_str().unwrap().parse().unwrap();
        let me = key.peer_id();
        let node = peer::app::watch(channel, vec![Bootstrap::Addr(bootstrap)], node_config, key)
            .await
            .unwrap();
        let started = Instant::now();
        let deadline = started + Duration::from_secs(45);
        let mut ok = false;
        while Instant::now() < deadline {
            let s = node.status();
            if s["bytes_from_source"].as_u64() > Some(0) && s["segments_stored"].as_u64() >= Some(2)
            {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let status = node.status();
        let path = node.nat().paths().get(&source).copied();
        report(json!({
            "event": "result",
            "ok": ok,
            "viewer": me.to_string(),
            "kind": path.map(|p| kind(p.kind)),
            "connected_ms": path.and_then(|p| p.connected_in).map(|d| d.as_millis() as u64),
            "decided_ms": path.map(|p| p.decided_in.as_millis() as u64),
            "segments_in_s": started.elapsed().as_secs_f64(),
            "segments_stored": status["segments_stored"],
            "bytes_from_source": status["bytes_from_source"],
            "connectivity": status["nat"]["connectivity"],
        }));
        node.shutdown().await;
    }
}
