//! A malformed or oversized overlay message is rejected without harm.

#![allow(clippy::unwrap_used)]

mod harness;

use std::net::SocketAddr;

use harness::Net;
use rand::{Rng, SeedableRng};
use tracker_overlay::msg::{Body, Op, Prepare, Routed, MAX_LIST_LEN, MAX_MESSAGE_LEN};
use tracker_overlay::store::MAX_VALUE_LEN;
use tracker_overlay::tx::{TxEntry, TxId};
use tracker_overlay::{DecodeError, Item, Message, NodeRef, RingId, Value};

fn node(n: u8) -> NodeRef {
    NodeRef::new(
        [n; 32],
        SocketAddr::from(([127, 0, 0, 1], 4000 + u16::from(n))),
    )
}

fn msg(body: Body) -> Message {
    Message {
        from: node(1),
        body,
    }
}

#[test]
fn bad_bytes_are_rejected_with_a_reason() {
    let good = msg(Body::Stabilize).encode();
    assert_eq!(Message::decode(&good), Ok(msg(Body::Stabilize)));
    assert_eq!(Message::decode(&[]), Err(DecodeError::Version(None)));
    let mut future = good.clone();
    future[0] = 9;
    assert_eq!(Message::decode(&future), Err(DecodeError::Version(Some(9))));
    let huge = vec![1u8; MAX_MESSAGE_LEN + 1];
    assert_eq!(
        Message::decode(&huge),
        Err(DecodeError::TooLong(MAX_MESSAGE_LEN + 1))
    );
    assert!(matches!(
        Message::decode(&good[..good.len() - 1]),
        Err(DecodeError::Malformed(_))
    ));
    // Random garbage never panics and never decodes into something out of bounds.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for _ in 0..20_000 {
        let len = rng.gen_range(0..200);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        if let Some(b) = bytes.first_mut() {
            *b = 1;
        }
        if let Ok(m) = Message::decode(&bytes) {
            assert_eq!(m.check(), Ok(()));
        }
    }
}

#[test]
fn well_formed_but_out_of_bounds_messages_are_rejected() {
    let mut forged = node(2);
    forged.id = RingId(42); // Claims a position its peer id does not give.
    let m = Message {
        from: forged,
        body: Body::Stabilize,
    };
    let decoded = Message::decode(&m.encode()).unwrap();
    assert_eq!(
        decoded.from,
        node(2),
        "the position comes from the peer id, not the sender"
    );

    let items: Vec<(RingId, Item)> = (0..=MAX_LIST_LEN as u128)
        .map(|k| {
            (
                RingId(k),
                Item {
                    version: 1,
                    value: Value::Int(0),
                },
            )
        })
        .collect();
    let m = msg(Body::Handover {
        id: 1,
        last: true,
        leaving: None,
        from: RingId(0),
        to: RingId(9),
        sure: true,
        items,
    });
    assert!(matches!(
        Message::decode(&m.encode()),
        Err(DecodeError::OutOfBounds(_))
    ));

    let big = Item {
        version: 1,
        value: Value::Bytes(vec![0; MAX_VALUE_LEN + 1]),
    };
    let m = msg(Body::ReadReply {
        req: 1,
        sure: true,
        item: Some(big),
        locked: false,
    });
    assert!(matches!(
        Message::decode(&m.encode()),
        Err(DecodeError::OutOfBounds(_))
    ));

    let prepare = |acceptors: Vec<NodeRef>, item: u8| {
        let p = Prepare {
            tid: TxId(1),
            tm: node(1),
            acceptors,
            keys: vec![RingId(5)],
            item,
            replica: 0,
            entry: TxEntry {
                key: RingId(5),
                read_version: 0,
                write: None,
            },
        };
        let routed = Routed {
            key: RingId(5),
            hops: 0,
            origin: node(1),
            op: Op::Prepare(Box::new(p)),
        };
        msg(Body::Route(Box::new(routed)))
    };
    assert!(Message::decode(&prepare(vec![node(1); 4], 0).encode()).is_ok());
    for bad in [
        prepare(vec![], 0),
        prepare(vec![node(1); 4], 1),
        prepare(vec![node(1); 17], 0),
    ] {
        assert!(matches!(
            Message::decode(&bad.encode()),
            Err(DecodeError::OutOfBounds(_))
        ));
    }
}

#[test]
fn a_ring_shrugs_off_bogus_protocol_messages() {
    let mut net = Net::new(71);
    let all = net.ring(4);
    net.write(all[0], "k", Value::Int(1)).unwrap();
    // Messages about transactions nobody runs, answers to requests nobody made.
    let stranger = node(9);
    let bogus = vec![
        Body::Decide {
            tid: TxId(77),
            commit: true,
        },
        Body::Accepted {
            tid: TxId(77),
            slot: 3,
            instance: (9, 9),
            ballot: 5,
            prepared: true,
            tp: None,
        },
        Body::Promise {
            tid: TxId(77),
            slot: 0,
            ballot: 1,
            accepted: vec![],
        },
        Body::Prepare1a {
            tid: TxId(77),
            ballot: 3,
            slot: 200,
        },
        Body::ReadReply {
            req: 123_456,
            sure: true,
            item: None,
            locked: false,
        },
        Body::Items {
            req: 99,
            covered_to: RingId(1),
            sure: true,
            items: vec![],
        },
        Body::Found {
            req: 5,
            node: stranger,
            hops: 1,
        },
        Body::Neighbors {
            pred: Some(stranger),
            succs: vec![stranger],
        },
        Body::LeaveSucc {
            succs: vec![stranger],
        },
        Body::JoinAccept {
            pred: Some(stranger),
            succs: vec![stranger],
        },
    ];
    for &target in &all {
        for body in &bogus {
            let m = Message {
                from: stranger,
                body: body.clone(),
            };
            let bytes = m.encode();
            let decoded = Message::decode(&bytes).unwrap();
            let now = net.now;
            net.hosts[target].node.handle_message(now, decoded);
            net.flush(target);
        }
    }
    net.settle();
    assert!(net.ring_errors().is_empty());
    assert_eq!(
        net.tx(
            all[1],
            vec![tracker_overlay::TxOp::AddNumber("k".into(), 1)]
        ),
        Ok(vec![Some(Value::Int(2))])
    );
}
