//! Real NATs for tests: Linux network namespaces, veth pairs, a bridge as the public network,
//! and iptables NAT rules in router namespaces.
//!
//! ```text
//!   <p>-wan: bridge br0, 198.18.0.0/16 ("the Internet")
//!     ├── public hosts            198.18.0.N
//!     ├── hosts without NAT       198.18.2.N
//!     └── routers <p>-rN: wan 198.18.1.N ── lan 10.N.0.1/24 ── host <p>-hN 10.N.0.2
//! ```
//!
//! Router types: full cone (explicit SNAT/DNAT of the host's port: endpoint-independent
//! mapping and filtering), port-restricted cone (MASQUERADE keeps the port: endpoint-
//! independent mapping; conntrack lets in only replies: address-and-port-dependent filtering)
//! and symmetric (MASQUERADE --random-fully: a new port per destination). Both kinds of
//! MASQUERADE router drop new inbound traffic on their WAN side: an unsolicited packet that
//! reached the router itself would leave a conntrack entry that makes the NAT pick another port
//! for the host's own later packets to that sender.
//!
//! Every namespace name starts with a prefix unique to the run; dropping the [`Net`] deletes
//! them all (which deletes their interfaces and rules), also when a test fails.

#![allow(dead_code)] // each test binary uses part of the harness

use std::process::Command;

/// The first port a host's node listens on; the full cone maps `HOST_PORT..HOST_PORT + 8`
/// one to one.
pub const HOST_PORT: u16 = 4433;

/// A NAT type of the test matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NatType {
    /// A public address, no NAT.
    None,
    /// Full cone: endpoint-independent mapping and filtering.
    FullCone,
    /// Port-restricted cone: endpoint-independent mapping, address-and-port-dependent filtering.
    PortRestricted,
    /// Symmetric: a new mapping per destination.
    Symmetric,
}

impl NatType {
    /// Every type, in matrix order.
    pub const ALL: [NatType; 4] = [
        NatType::None,
        NatType::FullCone,
        NatType::PortRestricted,
        NatType::Symmetric,
    ];

    /// A short label for tables.
    pub fn label(self) -> &'static str {
        match self {
            NatType::None => "none",
            NatType::FullCone => "full-cone",
            NatType::PortRestricted => "port-restr",
            NatType::Symmetric => "symmetric",
        }
    }
}

/// Why the harness cannot run here.
pub fn unavailable() -> Option<String> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        });
    if uid.as_deref() != Some("0") {
        return Some("network namespaces need root".into());
    }
    for tool in ["ip", "iptables"] {
        if Command::new(tool).arg("-V").output().is_err()
            && Command::new(tool).arg("--version").output().is_err()
        {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    let probe = format!("scprobe{}", std::process::id());
    if let Err(e) = run("ip", &["netns", "add", &probe]) {
        return Some(format!("cannot create a network namespace: {e}"));
    }
    let _ = run("ip", &["netns", "del", &probe]);
    None
}

/// Runs a command; its stderr on failure.
pub fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{cmd} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A host of the test network.
#[derive(Clone, Debug)]
pub struct Host {
    /// Its namespace.
    pub ns: String,
    /// Its own address.
    pub ip: String,
    /// The NAT in front of it.
    pub nat: NatType,
}

/// The test network; deleted when dropped.
pub struct Net {
    prefix: String,
    namespaces: Vec<String>,
    wan: String,
    ports: usize,
}

impl Net {
    /// An empty public network (a bridge in its own namespace).
    pub fn new() -> Result<Self, String> {
        let nonce: u32 = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let prefix = format!("sc{}x{:x}", std::process::id() % 100_000, nonce % 0xfff);
        let wan = format!("{prefix}-wan");
        let mut net = Self {
            prefix,
            namespaces: Vec::new(),
            wan: wan.clone(),
            ports: 0,
        };
        net.add_ns(&wan)?;
        net.ip(&wan, "link add br0 type bridge")?;
        net.ip(&wan, "link set br0 up")?;
        Ok(net)
    }

    fn add_ns(&mut self, ns: &str) -> Result<(), String> {
        run("ip", &["netns", "add", ns])?;
        self.namespaces.push(ns.to_owned());
        run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, ns: &str, args: &str) -> Result<String, String> {
        let mut all = vec!["-n", ns];
        all.extend(args.split_whitespace());
        run("ip", &all)
    }

    /// Runs `cmd` inside `ns`.
    pub fn exec(&self, ns: &str, cmd: &str) -> Result<String, String> {
        let mut all = vec!["netns", "exec", ns];
        all.extend(cmd.split_whitespace());
        run("ip", &all)
    }

    /// Plugs namespace `ns` into the public network with address `ip` (a /16) on `wan`.
    fn plug(&mut self, ns: &str, ip: &str) -> Result<(), String> {
        self.ports += 1;
        let port = format!("p{}", self.ports);
        let wan = self.wan.clone();
        self.ip(
            &wan,
            &format!("link add {port} type veth peer name wan netns {ns}"),
        )?;
        self.ip(&wan, &format!("link set {port} master br0 up"))?;
        self.ip(ns, &format!("addr add {ip}/16 dev wan"))?;
        self.ip(ns, "link set wan up")?;
        Ok(())
    }

    /// A host with a public address, `198.18.0.<n>`.
    pub fn public_host(&mut self, name: &str, n: u8) -> Result<Host, String> {
        let ns = format!("{}-{name}", self.prefix);
        self.add_ns(&ns)?;
        let ip = format!("198.18.0.{n}");
        self.plug(&ns, &ip)?;
        Ok(Host {
            ns,
            ip,
            nat: NatType::None,
        })
    }

    /// Host number `n` (1..=250) behind a NAT of type `nat` (or on the public network for
    /// [`NatType::None`]).
    pub fn host(&mut self, n: u8, nat: NatType) -> Result<Host, String> {
        let host = format!("{}-h{n}", self.prefix);
        self.add_ns(&host)?;
        if nat == NatType::None {
            let ip = format!("198.18.2.{n}");
            self.plug(&host, &ip)?;
            return Ok(Host { ns: host, ip, nat });
        }
        let router = format!("{}-r{n}", self.prefix);
        self.add_ns(&router)?;
        let public = format!("198.18.1.{n}");
        self.plug(&router, &public)?;
        let ip = format!("10.{n}.0.2");
        self.ip(
            &router,
            &format!("link add lan type veth peer name eth0 netns {host}"),
        )?;
        self.ip(&router, &format!("addr add 10.{n}.0.1/24 dev lan"))?;
        self.ip(&router, "link set lan up")?;
        self.ip(&host, &format!("addr add {ip}/24 dev eth0"))?;
        self.ip(&host, "link set eth0 up")?;
        self.ip(&host, &format!("route add default via 10.{n}.0.1"))?;
        self.exec(&router, "sysctl -q -w net.ipv4.ip_forward=1")?;
        let ipt = |rule: String| self.exec(&router, &format!("iptables {rule}"));
        match nat {
            NatType::None => {}
            NatType::FullCone => {
                let last = HOST_PORT + 7;
                ipt(format!(
                    "-t nat -A POSTROUTING -o wan -p udp -s {ip} --sport {HOST_PORT}:{last} -j SNAT --to-source {public}"
                ))?;
                ipt(format!(
                    "-t nat -A PREROUTING -i wan -p udp --dport {HOST_PORT}:{last} -j DNAT --to-destination {ip}"
                ))?;
                ipt("-t nat -A POSTROUTING -o wan -j MASQUERADE".into())?;
            }
            NatType::PortRestricted | NatType::Symmetric => {
                let random = if nat == NatType::Symmetric {
                    " --random-fully"
                } else {
                    ""
                };
                ipt(format!(
                    "-t nat -A POSTROUTING -o wan -j MASQUERADE{random}"
                ))?;
                for chain in ["INPUT", "FORWARD"] {
                    ipt(format!(
                        "-A {chain} -i wan -m conntrack --ctstate NEW -j DROP"
                    ))?;
                }
            }
        }
        Ok(Host { ns: host, ip, nat })
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = run("ip", &["netns", "del", ns]) {
                eprintln!("netns cleanup: {e}");
            }
        }
    }
}
