//! One QUIC connection per pair of peers, shared by the segment exchange and the overlay.
//!
//! Whoever needs a peer first dials it ([`Connections::connect`]); later users get the same
//! connection. Every connection, dialled or accepted, is served by one task that reads what
//! the other side opens on it:
//!
//! ```text
//!   bidirectional stream  → the exchange's control stream (Msg::Connected)
//!   unidirectional stream → first byte OVERLAY_STREAM ? the overlay's reader
//!                                                     : a segment (header, then payload)
//! ```
//!
//! A segment stream starts with its header's length prefix, whose first byte is zero for any
//! header we accept, so the two kinds of unidirectional stream cannot be confused.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::BytesMut;
use quinn::{Connection, Endpoint, RecvStream, VarInt};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use super::{read_segment, tls, DialError, Link, Msg};
use crate::identity::{Keypair, PeerId};
use crate::nat::driver::Nat;
use crate::overlay_net::{OverlayHandle, OVERLAY_STREAM};

/// What a dial that others wait for ended with.
type DialOutcome = Result<(PeerId, Connection), String>;

#[derive(Default)]
struct Table {
    /// The newest connection to each peer, and how many are open.
    live: HashMap<PeerId, (Connection, usize)>,
    /// Dials under way, by address, with whoever waits for the same one.
    dialing: HashMap<SocketAddr, Vec<oneshot::Sender<DialOutcome>>>,
}

/// The node's connections, by peer.
#[derive(Clone)]
pub(crate) struct Connections {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: Endpoint,
    key: Keypair,
    transport: Arc<quinn::TransportConfig>,
    table: Mutex<Table>,
    /// The segment node's actor, if this endpoint carries segments (not in the store bench).
    node: Option<mpsc::UnboundedSender<Msg>>,
    overlay: OnceLock<OverlayHandle>,
    /// NAT traversal, which finds the path to a peer before it is dialled.
    nat: OnceLock<Nat>,
}

impl Connections {
    /// Connections on `endpoint` that carry the overlay only (the store benchmark's nodes).
    pub(crate) fn overlay_only(
        endpoint: Endpoint,
        key: Keypair,
        transport: Arc<quinn::TransportConfig>,
    ) -> Self {
        Self::new(endpoint, key, transport, None)
    }

    /// Connections on `endpoint` that carry segments for `node` and the overlay.
    pub(super) fn new(
        endpoint: Endpoint,
        key: Keypair,
        transport: Arc<quinn::TransportConfig>,
        node: Option<mpsc::UnboundedSender<Msg>>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                endpoint,
                key,
                transport,
                table: Mutex::new(Table::default()),
                node,
                overlay: OnceLock::new(),
                nat: OnceLock::new(),
            }),
        }
    }

    /// Where overlay streams go; set once, when the overlay task starts.
    pub(crate) fn set_overlay(&self, overlay: OverlayHandle) {
        let _ = self.inner.overlay.set(overlay);
    }

    /// Where dials to known peers find their path (punched, relayed or plain); set once.
    pub(crate) fn set_nat(&self, nat: Nat) {
        let _ = self.inner.nat.set(nat);
    }

    /// The connection to `expected` (or to whoever listens at `addr`), dialling if there is
    /// none yet.
    pub(crate) async fn connect(
        &self,
        expected: Option<PeerId>,
        addr: SocketAddr,
    ) -> Result<(PeerId, Connection), DialError> {
        let waiting = {
            let mut table = self.table();
            if let Some(found) = table.existing(expected, addr) {
                return Ok(found);
            }
            match table.dialing.get_mut(&addr) {
                Some(waiters) => {
                    let (tx, rx) = oneshot::channel();
                    waiters.push(tx);
                    Some(rx)
                }
                None => {
                    table.dialing.insert(addr, Vec::new());
                    None
                }
            }
        };
        if let Some(rx) = waiting {
            // Someone is dialling that address already: share the outcome.
            let outcome = rx
                .await
                .map_err(|_| DialError::Other("the dial we waited for was dropped"))?;
            let (peer, conn) = outcome.map_err(DialError::Shared)?;
            if expected.is_some_and(|e| e != peer) {
                return Err(DialError::Other("another peer answers at that address"));
            }
            return Ok((peer, conn));
        }
        let result = self.dial(expected, addr).await;
        let waiters = self.table().dialing.remove(&addr).unwrap_or_default();
        for w in waiters {
            let _ = w.send(match &result {
                Ok(found) => Ok(found.clone()),
                Err(e) => Err(e.to_string()),
            });
        }
        result
    }

    async fn dial(
        &self,
        expected: Option<PeerId>,
        addr: SocketAddr,
    ) -> Result<(PeerId, Connection), DialError> {
        let mut config = tls::client_config(&self.inner.key, expected)
            .map_err(|_| DialError::Other("cannot build a client TLS configuration"))?;
        config.transport_config(self.inner.transport.clone());
        let started = std::time::Instant::now();
        let nat = self.inner.nat.get();
        let path = match (expected, nat) {
            (Some(peer), Some(nat)) => nat.path_to(peer, addr).await,
            _ => addr,
        };
        let conn = self
            .inner
            .endpoint
            .connect_with(config, path, tls::server_name())?
            .await?;
        let peer = tls::peer_id_of(&conn).ok_or(DialError::Other("no peer identity"))?;
        if let Some(nat) = nat {
            nat.connected(peer, started.elapsed());
        }
        self.adopt(peer, conn.clone());
        Ok((peer, conn))
    }

    /// How many connections are open to each peer.
    pub(crate) fn open(&self) -> Vec<(PeerId, usize)> {
        self.table()
            .live
            .iter()
            .map(|(p, (_, n))| (*p, *n))
            .collect()
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        // The table is only held for map operations that cannot panic.
        self.inner
            .table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Accepts incoming connections until the endpoint closes or `stop` is set.
    pub(crate) async fn accept_loop(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            let incoming = tokio::select! {
                i = self.inner.endpoint.accept() => i,
                _ = stop.wait_for(|s| *s) => None,
            };
            let Some(incoming) = incoming else { break };
            let this = self.clone();
            tokio::spawn(async move {
                let remote = incoming.remote_address();
                match incoming.await {
                    Ok(conn) => match tls::peer_id_of(&conn) {
                        Some(peer) => {
                            if let Some(nat) = this.inner.nat.get() {
                                nat.accepted(peer, remote);
                            }
                            this.adopt(peer, conn)
                        }
                        None => conn.close(VarInt::from_u32(0), b"no peer identity"),
                    },
                    Err(e) => debug!(%remote, error = %e, "incoming connection failed"),
                }
            });
        }
    }

    /// Registers a connection and starts serving what the other side opens on it.
    fn adopt(&self, peer: PeerId, conn: Connection) {
        {
            let mut table = self.table();
            let open = table.live.get(&peer).map_or(0, |(_, n)| *n);
            table.live.insert(peer, (conn.clone(), open + 1));
        }
        tokio::spawn(self.clone().serve(peer, conn));
    }

    async fn serve(self, peer: PeerId, conn: Connection) {
        let reason = loop {
            tokio::select! {
                bi = conn.accept_bi() => match bi {
                    Ok((send, recv)) => match &self.inner.node {
                        Some(node) => {
                            let link = Link { peer, conn: conn.clone(), send, recv };
                            let _ = node.send(Msg::Connected { link, dialled_by: peer });
                        }
                        None => {
                            let mut recv = recv;
                            let _ = recv.stop(VarInt::from_u32(0));
                        }
                    },
                    Err(e) => break e,
                },
                uni = conn.accept_uni() => match uni {
                    Ok(stream) => {
                        tokio::spawn(self.clone().dispatch(peer, stream));
                    }
                    Err(e) => break e,
                },
            }
        };
        debug!(peer = %peer.short(), %reason, "connection closed");
        let mut table = self.table();
        if let Some((newest, open)) = table.live.get_mut(&peer) {
            *open -= 1;
            if *open == 0 || newest.stable_id() == conn.stable_id() {
                table.live.remove(&peer);
            }
        }
    }

    /// Hands a unidirectional stream to the overlay or to the segment reader by its first
    /// byte.
    async fn dispatch(self, peer: PeerId, mut stream: RecvStream) {
        let mut buf = BytesMut::new();
        while buf.is_empty() {
            match stream.read_chunk(64 * 1024, true).await {
                Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
                Ok(None) | Err(_) => return,
            }
        }
        if buf[0] == OVERLAY_STREAM {
            if let Some(overlay) = self.inner.overlay.get() {
                overlay.accept_stream(peer, buf, stream);
                return;
            }
        } else if let Some(node) = &self.inner.node {
            read_segment(stream, buf, peer, node.clone()).await;
            return;
        }
        let _ = stream.stop(VarInt::from_u32(0));
    }
}

impl Table {
    /// A live connection to `expected`, or with no peer expected, to `addr`.
    fn existing(&self, expected: Option<PeerId>, addr: SocketAddr) -> Option<(PeerId, Connection)> {
        let alive = |c: &Connection| c.close_reason().is_none();
        match expected {
            Some(peer) => self
                .live
                .get(&peer)
                .filter(|(c, _)| alive(c))
                .map(|(c, _)| (peer, c.clone())),
            None => self
                .live
                .iter()
                .find(|(_, (c, _))| alive(c) && c.remote_address() == addr)
                .map(|(p, (c, _))| (*p, c.clone())),
        }
    }
}
