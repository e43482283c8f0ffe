//! What overlay nodes say to each other, and how it is framed on the wire.
//!
//! A [`Message`] carries its sender and one [`Body`]. On the wire it is a version byte followed
//! by postcard; [`Message::decode`] bounds the size and the lengths of every list, so a peer
//! cannot make a node allocate or loop more than a message's worth. Transports check that
//! `from.peer` is the peer they authenticated.

use serde::{Deserialize, Serialize};

use crate::id::{NodeRef, RingId};
use crate::store::Item;
use crate::tx::{TxEntry, TxId};

/// The wire version this code speaks.
pub const VERSION: u8 = 1;
/// The largest encoded message a node accepts.
pub const MAX_MESSAGE_LEN: usize = 512 * 1024;
/// The most entries in any list inside a message (items, keys, successors).
pub const MAX_LIST_LEN: usize = 1024;
/// The most keys one transaction may touch.
pub const MAX_TX_KEYS: usize = 64;
/// The largest application payload a routed [`Op::Deliver`] carries.
pub const MAX_DELIVER_LEN: usize = 4 * 1024;

/// One message between two overlay nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// The node that sent it (one hop back, for routed messages).
    pub from: NodeRef,
    /// What it says.
    pub body: Body,
}

/// The kinds of message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Body {
    /// Deliver `op` to the node responsible for `key`, hop by hop.
    Route(Box<Routed>),

    // Ring maintenance.
    /// To the joiner: you sit between `pred` and me; my successors follow.
    JoinAccept {
        /// The joiner's predecessor.
        pred: Option<NodeRef>,
        /// The sender and its successor list.
        succs: Vec<NodeRef>,
    },
    /// To the joiner: a node already sits at your position.
    JoinReject,
    /// From a node that believes it is the receiver's successor now.
    NewSucc {
        /// The sender's successor list.
        succs: Vec<NodeRef>,
    },
    /// From a predecessor (or a node that believes it is one): here I am, who are your
    /// neighbours? It is also the predecessor's heartbeat.
    Stabilize,
    /// The answer to [`Body::Stabilize`], and the successor's heartbeat.
    Neighbors {
        /// The sender's predecessor.
        pred: Option<NodeRef>,
        /// The sender's successor list.
        succs: Vec<NodeRef>,
    },
    /// From a leaving successor: my successors are now yours.
    LeaveSucc {
        /// The leaver's successor list.
        succs: Vec<NodeRef>,
    },
    /// Data of the range `(from, to]` that now belongs to the receiver; acknowledged with
    /// [`Body::HandoverAck`].
    Handover {
        /// Chosen by the sender, echoed in the acknowledgement.
        id: u64,
        /// The last chunk of this hand-over (authority and a leaver's predecessor come with
        /// it, once all data is there).
        last: bool,
        /// `Some` when the sender is our predecessor and leaves: its own predecessor, which
        /// becomes ours (`Some(None)`: it had none).
        leaving: Option<Option<NodeRef>>,
        /// The range's start (exclusive).
        from: RingId,
        /// The range's end (inclusive).
        to: RingId,
        /// Whether the sender held the range with authority (it passes on with the data).
        sure: bool,
        /// The items in the range.
        items: Vec<(RingId, Item)>,
    },
    /// A hand-over chunk arrived (a leaving node waits for these before it goes).
    HandoverAck {
        /// The chunk's id.
        id: u64,
    },
    /// The answer to a routed [`Op::Lookup`].
    Found {
        /// The lookup's request id.
        req: u64,
        /// The node responsible for the key.
        node: NodeRef,
        /// How many hops the lookup took.
        hops: u8,
    },
    /// A probe of a node suspected earlier (ring merge) or of a finger.
    Ping {
        /// Echoed in the pong.
        nonce: u64,
    },
    /// The answer to a ping.
    Pong {
        /// The ping's nonce.
        nonce: u64,
        /// The sender's successor, for ring merge.
        succ: Option<NodeRef>,
    },
    /// Ring unification (gossip): `contact` may belong to another ring; look up your own
    /// successor through it, and pass this on while `ttl` lasts.
    Unify {
        /// A node of the ring to merge with.
        contact: NodeRef,
        /// Gossip rounds left.
        ttl: u8,
    },

    // Store.
    /// The answer to a routed [`Op::Read`].
    ReadReply {
        /// The read's request id.
        req: u64,
        /// Whether the replier holds the key's range with authority; other replies do not
        /// count towards a quorum.
        sure: bool,
        /// The item, or `None` if the key was never written.
        item: Option<Item>,
        /// Whether a prepared transaction holds the item's write lock: it may have committed a
        /// newer value that has not arrived here yet, so the reader asks again.
        locked: bool,
    },
    /// The answer to a routed [`Op::Fetch`].
    Items {
        /// The fetch's request id.
        req: u64,
        /// The replier covered the fetched range up to here (inclusive).
        covered_to: RingId,
        /// Whether the replier holds the covered part with authority.
        sure: bool,
        /// The items in the covered part.
        items: Vec<(RingId, Item)>,
    },

    // Transactions (Paxos Commit).
    /// Participant → acceptor (ballot 0), or new leader → acceptor (ballot > 0): accept this
    /// vote for one participant's instance.
    Vote(Box<Vote>),
    /// Acceptor → leader: I accepted this vote.
    Accepted {
        /// The transaction.
        tid: TxId,
        /// Which acceptor.
        slot: u8,
        /// Which instance (item index, replica index).
        instance: (u8, u8),
        /// The ballot.
        ballot: u32,
        /// The vote: prepared or abort.
        prepared: bool,
        /// The participant that voted, when the acceptor knows it.
        tp: Option<NodeRef>,
    },
    /// New leader → acceptors: promise not to accept below `ballot`, tell me what you
    /// accepted.
    Prepare1a {
        /// The transaction.
        tid: TxId,
        /// The new ballot.
        ballot: u32,
        /// Which acceptor slot the receiver fills.
        slot: u8,
    },
    /// Acceptor → new leader: promised; here is what I accepted.
    Promise {
        /// The transaction.
        tid: TxId,
        /// Which acceptor.
        slot: u8,
        /// The promised ballot.
        ballot: u32,
        /// What it accepted.
        accepted: Vec<AcceptedVote>,
    },
    /// The outcome, to participants, acceptors and the transaction manager.
    Decide {
        /// The transaction.
        tid: TxId,
        /// Commit (`true`) or abort.
        commit: bool,
    },
    /// Participant → acceptors: I still hold locks for this transaction; what was decided?
    AskDecision {
        /// The transaction.
        tid: TxId,
    },
}

/// A vote an acceptor accepted, as it reports it to a new leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AcceptedVote {
    /// The instance: (item index, replica index).
    pub instance: (u8, u8),
    /// The ballot it was accepted in.
    pub ballot: u32,
    /// Prepared (`true`) or abort.
    pub prepared: bool,
}

/// A message routed to the node responsible for a key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Routed {
    /// The position to deliver at.
    pub key: RingId,
    /// Hops taken so far.
    pub hops: u8,
    /// The node that started the route; replies go straight to it.
    pub origin: NodeRef,
    /// What to do there.
    pub op: Op,
}

/// What a routed message asks of the responsible node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// Who is responsible for `key`? Answered with [`Body::Found`].
    Lookup {
        /// Request id at the origin.
        req: u64,
    },
    /// The origin wants to join at `key` (its own id).
    Join,
    /// Read the item at `key` (one replica). Answered with [`Body::ReadReply`].
    Read {
        /// Request id at the origin.
        req: u64,
    },
    /// Send the items of `(key - 1, to]`, as far as you hold them. Answered with
    /// [`Body::Items`].
    Fetch {
        /// Request id at the origin.
        req: u64,
        /// The end of the range (inclusive).
        to: RingId,
    },
    /// Validate and lock one entry of a transaction, then vote to its acceptors.
    Prepare(Box<Prepare>),
    /// The outcome of a transaction, for the participant at `key`.
    Decide {
        /// The transaction.
        tid: TxId,
        /// Commit or abort.
        commit: bool,
    },
    /// An application message for whoever is responsible for `key` (best effort: no answer,
    /// no retransmission). The responsible node reports it as
    /// [`crate::Event::Delivered`].
    Deliver {
        /// Opaque to the overlay; at most [`MAX_DELIVER_LEN`] bytes.
        payload: Vec<u8>,
    },
}

/// A transaction's request to one replica of one of its keys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prepare {
    /// The transaction.
    pub tid: TxId,
    /// Its manager (the leader of ballot 0).
    pub tm: NodeRef,
    /// Its acceptors, one per slot (the manager and its replicated managers).
    pub acceptors: Vec<NodeRef>,
    /// The base positions of all its keys, in item order (so an acceptor that takes over can
    /// ask every participant).
    pub keys: Vec<RingId>,
    /// Which item this is.
    pub item: u8,
    /// Which replica of it.
    pub replica: u8,
    /// What the transaction read and wants to write there.
    pub entry: TxEntry,
}

/// A vote for one participant's Paxos instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Vote {
    /// The transaction.
    pub tid: TxId,
    /// What an acceptor needs to take over (sent again with every retransmitted vote, left
    /// out of the fast path to keep it small).
    pub meta: Option<Box<TxMeta>>,
    /// Which instance: (item index, replica index).
    pub instance: (u8, u8),
    /// The ballot: 0 from the participant itself, higher from a leader that took over.
    pub ballot: u32,
    /// Prepared (`true`) or abort.
    pub prepared: bool,
    /// The participant, when the vote comes from it.
    pub tp: Option<NodeRef>,
    /// Who to send the acceptance to (the ballot's leader).
    pub leader: NodeRef,
    /// Which acceptor slot the receiver fills.
    pub slot: u8,
}

/// A transaction's manager, acceptors and keys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TxMeta {
    /// Its manager.
    pub tm: NodeRef,
    /// Its acceptors, one per slot.
    pub acceptors: Vec<NodeRef>,
    /// Its keys' base positions, in item order.
    pub keys: Vec<RingId>,
}

/// Why a message was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// Longer than [`MAX_MESSAGE_LEN`].
    #[error("overlay message of {0} bytes exceeds the limit")]
    TooLong(usize),
    /// Empty, or a version this node does not speak.
    #[error("overlay message has unknown version {0:?}")]
    Version(Option<u8>),
    /// Not a well-formed message.
    #[error("malformed overlay message: {0}")]
    Malformed(#[from] postcard::Error),
    /// Well formed, but a list or a field is out of bounds.
    #[error("overlay message out of bounds: {0}")]
    OutOfBounds(&'static str),
}

impl Message {
    /// Encodes the message: version byte, then postcard.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// Appends the encoded message to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(VERSION);
        // Serializing our own plain data into a Vec cannot fail; should it, the receiver
        // rejects the truncated message.
        let taken = std::mem::take(out);
        *out = postcard::to_extend(self, taken).unwrap_or_default();
    }

    /// Decodes and checks one message.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(DecodeError::TooLong(bytes.len()));
        }
        match bytes.first() {
            Some(&VERSION) => {}
            other => return Err(DecodeError::Version(other.copied())),
        }
        let msg: Message = postcard::from_bytes(&bytes[1..])?;
        msg.check()?;
        Ok(msg)
    }

    /// Checks the bounds a decoded message must keep.
    pub fn check(&self) -> Result<(), DecodeError> {
        use DecodeError::OutOfBounds;
        let node_ok = |n: &NodeRef| n.is_consistent();
        if !node_ok(&self.from) {
            return Err(OutOfBounds("sender id does not match its peer id"));
        }
        let list = |len: usize, what| {
            if len > MAX_LIST_LEN {
                Err(OutOfBounds(what))
            } else {
                Ok(())
            }
        };
        let tx = |acceptors: &[NodeRef], keys: &[RingId], (item, replica): (u8, u8)| {
            if acceptors.is_empty() || acceptors.len() > 16 || !acceptors.iter().all(node_ok) {
                return Err(OutOfBounds("acceptors"));
            }
            if keys.is_empty() || keys.len() > MAX_TX_KEYS || usize::from(item) >= keys.len() {
                return Err(OutOfBounds("transaction keys"));
            }
            if replica >= 16 {
                return Err(OutOfBounds("replica index"));
            }
            Ok::<(), DecodeError>(())
        };
        let slot = |acceptors: &[NodeRef], slot: u8| {
            if usize::from(slot) >= acceptors.len() {
                return Err(OutOfBounds("acceptor slot"));
            }
            Ok(())
        };
        match &self.body {
            Body::Route(routed) => {
                if !node_ok(&routed.origin) {
                    return Err(OutOfBounds("origin id does not match its peer id"));
                }
                match &routed.op {
                    Op::Prepare(p) => {
                        tx(&p.acceptors, &p.keys, (p.item, p.replica))?;
                        p.entry.check().map_err(OutOfBounds)?;
                    }
                    Op::Deliver { payload } if payload.len() > MAX_DELIVER_LEN => {
                        return Err(OutOfBounds("delivered payload"));
                    }
                    _ => {}
                }
            }
            Body::JoinAccept { succs, .. }
            | Body::NewSucc { succs }
            | Body::LeaveSucc { succs } => list(succs.len(), "successor list")?,
            Body::Neighbors { succs, .. } => list(succs.len(), "successor list")?,
            Body::Handover { items, .. } | Body::Items { items, .. } => {
                list(items.len(), "items")?;
                for (_, item) in items {
                    item.check().map_err(OutOfBounds)?;
                }
            }
            Body::ReadReply {
                item: Some(item), ..
            } => item.check().map_err(OutOfBounds)?,
            Body::Vote(v) => {
                if let Some(m) = &v.meta {
                    tx(&m.acceptors, &m.keys, v.instance)?;
                    slot(&m.acceptors, v.slot)?
                } else if usize::from(v.instance.0) >= MAX_TX_KEYS || v.slot >= 16 {
                    return Err(OutOfBounds("vote instance or slot"));
                }
            }
            Body::Promise { accepted, .. } => list(accepted.len(), "accepted votes")?,
            _ => {}
        }
        Ok(())
    }

    /// A short name of the body's kind, for counters and logs.
    pub fn kind(&self) -> &'static str {
        match &self.body {
            Body::Route(r) => match r.op {
                Op::Lookup { .. } => "lookup",
                Op::Join => "join",
                Op::Read { .. } => "read",
                Op::Fetch { .. } => "fetch",
                Op::Prepare(_) => "prepare",
                Op::Decide { .. } => "decide",
                Op::Deliver { .. } => "deliver",
            },
            Body::JoinAccept { .. } => "join_accept",
            Body::JoinReject => "join_reject",
            Body::NewSucc { .. } => "new_succ",
            Body::Stabilize => "stabilize",
            Body::Neighbors { .. } => "neighbors",
            Body::LeaveSucc { .. } => "leave_succ",
            Body::Handover { .. } => "handover",
            Body::HandoverAck { .. } => "handover_ack",
            Body::Found { .. } => "found",
            Body::Ping { .. } => "ping",
            Body::Pong { .. } => "pong",
            Body::Unify { .. } => "unify",
            Body::ReadReply { .. } => "read_reply",
            Body::Items { .. } => "items",
            Body::Vote(_) => "vote",
            Body::Accepted { .. } => "accepted",
            Body::Prepare1a { .. } => "prepare1a",
            Body::Promise { .. } => "promise",
            Body::Decide { .. } => "decide",
            Body::AskDecision { .. } => "ask_decision",
        }
    }
}
