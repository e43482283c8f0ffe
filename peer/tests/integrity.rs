//! A misbehaving peer over real QUIC: forged statements, corrupted segment bytes, oversize and
//! malformed frames are rejected and logged, and the viewer keeps going.

#![allow(clippy::unwrap_used)] // tests: a panic is a failed test with its location

mod common;

use std::time::Duration;

use bytes::Bytes;
use peer::identity::Keypair;
use peer::media::Input;
use peer::node::{tls, NodeHandle};
use peer::segment::{SegmentId, SegmentMeta};
use peer::wire::{Frame, FrameDecoder, Part, SegmentHeader, MAX_FRAME_LEN};
use quinn::{Connection, Endpoint, RecvStream, SendStream};

use common::{
    init_tracing, make_clip, node_config, start_broadcast, start_broadcast_with, start_viewer,
    wait_until,
};

/// A peer that speaks our protocol but lies.
struct Attacker {
    conn: Connection,
    send: SendStream,
    recv: RecvStream,
    decoder: FrameDecoder,
    key: Keypair,
}

impl Attacker {
    async fn connect(endpoint: &Endpoint, viewer: &NodeHandle) -> Self {
        let key = Keypair::generate();
        let config = tls::client_config(&key, Some(viewer.peer_id())).unwrap();
        let conn = endpoint
            .connect_with(config, viewer.local_addr(), tls::server_name())
            .unwrap()
            .await
            .unwrap();
        let (mut send, recv) = conn.open_bi().await.unwrap();
        let hello = Frame::Hello {
            channel: viewer.channel(),
            listen: None,
        };
        send.write_all(&hello.encode()).await.unwrap();
        Self {
            conn,
            send,
            recv,
            decoder: FrameDecoder::default(),
            key,
        }
    }

    /// The next frame from the viewer, or `None` once it closed the connection.
    async fn next_frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = self.decoder.next_frame().unwrap() {
                return Some(frame);
            }
            let chunk = self.recv.read_chunk(64 * 1024, true).await.ok()??;
            self.decoder.extend(&chunk.bytes);
        }
    }

    async fn send(&mut self, frame: Frame) {
        self.send.write_all(&frame.encode()).await.unwrap();
    }

    /// The application close code the viewer closed our connection with.
    async fn close_code(&self) -> u64 {
        match self.conn.closed().await {
            quinn::ConnectionError::ApplicationClosed(close) => close.error_code.into_inner(),
            other => panic!("connection ended otherwise: {other}"),
        }
    }
}

fn client_endpoint() -> Endpoint {
    Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_statements_and_corrupted_segments_are_dropped_and_the_viewer_keeps_going() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let clip = make_clip(dir.path(), 6);
    // A broadcaster that feeds nobody directly: the viewer fetches every segment itself, and
    // the attacker, which claims to hold everything, gets asked first.
    let mut node = node_config();
    node.exchange.max_children = 0;
    let mut broadcast = start_broadcast_with(Input::File(clip), false, node).await;
    let viewer = start_viewer(&broadcast).await;
    let endpoint = client_endpoint();
    let mut attacker = Attacker::connect(&endpoint, &viewer).await;

    let mut forged_sent = false;
    let mut corrupted_sent = 0;
    // Play along: claim every announced segment, answer requests with flipped bytes, and
    // slip in a statement signed by the wrong key.
    let attack = async {
        while let Some(frame) = attacker.next_frame().await {
            match frame {
                Frame::Announce(statements) => {
                    let ids: Vec<SegmentId> = statements.iter().map(|s| s.meta.id).collect();
                    attacker.send(Frame::Have(ids)).await;
                    if !forged_sent {
                        // A statement for a segment the broadcaster has not made yet.
                        let meta = statements[0].meta;
                        let id = SegmentId::Media(1000);
                        let forged = SegmentMeta {
                            id,
                            hash: [0; 32],
                            ..meta
                        }
                        .sign(&attacker.key);
                        attacker.send(Frame::Announce(vec![forged])).await;
                        forged_sent = true;
                    }
                }
                Frame::Request(id, _) | Frame::RequestPart(id, ..) => {
                    let part = match frame {
                        Frame::RequestPart(_, part, _) => part,
                        _ => Part::WHOLE,
                    };
                    let real = match id {
                        SegmentId::Init => broadcast.node().store().init(),
                        SegmentId::Media(n) => broadcast.node().store().segment(n),
                    };
                    let real = real.unwrap();
                    let mut bytes = real[part.range(real.len()).unwrap()].to_vec();
                    let middle = bytes.len() / 2;
                    bytes[middle] ^= 0x40;
                    let mut stream = attacker.conn.open_uni().await.unwrap();
                    stream
                        .write_all(&SegmentHeader { id, part }.encode())
                        .await
                        .unwrap();
                    stream.write_all(&bytes).await.unwrap();
                    stream.finish().unwrap();
                    corrupted_sent += 1;
                }
                _ => {}
            }
        }
    };
    // The attack ends when the viewer has had enough of us.
    tokio::time::timeout(Duration::from_secs(20), attack)
        .await
        .unwrap();
    let code = attacker.close_code().await;
    assert_eq!(code, 0x02, "closed for protocol violations");
    assert!(
        forged_sent,
        "the viewer never announced anything to the attacker"
    );
    assert!(
        corrupted_sent >= 1,
        "the viewer never asked the attacker for a segment"
    );

    let summary = broadcast.wait_ingest().await.unwrap();
    let want = summary.segments + 1;
    wait_until(
        Duration::from_secs(20),
        "the viewer to hold every segment",
        || viewer.status()["segments_stored"].as_u64() == Some(want),
    )
    .await;
    let status = viewer.status();
    assert!(
        status["statements_rejected"].as_u64().unwrap() >= 1,
        "{status}"
    );
    assert_eq!(
        status["segments_rejected"].as_u64().unwrap(),
        corrupted_sent,
        "{status}"
    );
    // What the viewer stores is what the broadcaster made, nothing from the attacker.
    let source = broadcast.node().store();
    assert_eq!(viewer.store().init(), source.init());
    for seq in 0..summary.segments {
        assert!(
            viewer.store().segment(seq) == source.segment(seq),
            "segment #{seq} differs"
        );
    }
    viewer.shutdown().await;
    broadcast.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_and_malformed_frames_close_only_that_connection() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let clip = make_clip(dir.path(), 4);
    let mut broadcast = start_broadcast(Input::File(clip), false).await;
    let viewer = start_viewer(&broadcast).await;
    let endpoint = client_endpoint();

    // A length prefix one byte over the bound.
    let mut oversize = Attacker::connect(&endpoint, &viewer).await;
    oversize
        .send
        .write_all(&(MAX_FRAME_LEN as u32 + 1).to_be_bytes())
        .await
        .unwrap();
    let code = tokio::time::timeout(Duration::from_secs(5), oversize.close_code())
        .await
        .unwrap();
    assert_eq!(code, 0x11, "oversize frame");

    // A frame of the right shape whose body is garbage.
    let mut garbage = Attacker::connect(&endpoint, &viewer).await;
    garbage
        .send
        .write_all(&[0, 0, 0, 4, peer::wire::WIRE_VERSION, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    let code = tokio::time::timeout(Duration::from_secs(5), garbage.close_code())
        .await
        .unwrap();
    assert_eq!(code, 0x13, "malformed frame");

    // A frame from a future protocol version.
    let mut future = Attacker::connect(&endpoint, &viewer).await;
    let mut frame = Frame::Request(SegmentId::Init, 0).encode().to_vec();
    frame[4] = peer::wire::WIRE_VERSION + 1;
    future.send.write_all(&Bytes::from(frame)).await.unwrap();
    let code = tokio::time::timeout(Duration::from_secs(5), future.close_code())
        .await
        .unwrap();
    assert_eq!(code, 0x12, "unknown version");

    // The viewer never noticed: the whole stream arrives.
    let summary = broadcast.wait_ingest().await.unwrap();
    let want = summary.segments + 1;
    wait_until(
        Duration::from_secs(15),
        "the viewer to hold every segment",
        || viewer.status()["segments_stored"].as_u64() == Some(want),
    )
    .await;
    viewer.shutdown().await;
    broadcast.shutdown().await;
}
