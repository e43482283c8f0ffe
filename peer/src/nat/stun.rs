//! STUN Binding (RFC 8489) as our peers speak it, with RFC 5780's discovery attributes, built
//! on stun-rs. Pure functions over bytes; the socket calls them.
//!
//! A peer's STUN server runs on its QUIC port. Peers have one address each, so a server's
//! "other address" (RFC 5780) is another reachable peer, its *partner*: a request with
//! CHANGE-REQUEST is passed to the partner ([`super::packet::Packet::Changed`]), which answers
//! the client from its own address. A client that hears that answer has a NAT with
//! endpoint-independent filtering.

use std::net::SocketAddr;

use stun_rs::attributes::discovery::{ChangeRequest, ChangeRequestFlags, OtherAddress};
use stun_rs::attributes::stun::{Software, XorMappedAddress};
use stun_rs::methods::BINDING;
use stun_rs::{
    MessageClass, MessageDecoderBuilder, MessageEncoderBuilder, StunMessageBuilder, TransactionId,
};

/// A STUN transaction id.
pub type TxId = [u8; 12];

/// The largest STUN message we build.
const MAX_MESSAGE: usize = 256;

/// A Binding request; with `change`, asking the server to answer from its other address.
pub fn binding_request(tx: TxId, change: bool) -> Vec<u8> {
    let mut builder = StunMessageBuilder::new(BINDING, MessageClass::Request)
        .with_transaction_id(TransactionId::from(tx));
    if change {
        let flags = ChangeRequestFlags::ChangeIp | ChangeRequestFlags::ChangePort;
        builder = builder.with_attribute(ChangeRequest::new(Some(flags)));
    }
    encode(&builder.build())
}

/// A Binding request the server side decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Its transaction id.
    pub tx: TxId,
    /// Whether it asks for an answer from the other address.
    pub change: bool,
}

/// Decodes a Binding request; `None` for anything else (responses, other methods, garbage).
pub fn parse_request(bytes: &[u8]) -> Option<Request> {
    let (msg, _) = MessageDecoderBuilder::default()
        .build()
        .decode(bytes)
        .ok()?;
    if msg.method() != BINDING || msg.class() != MessageClass::Request {
        return None;
    }
    let change = msg
        .get::<ChangeRequest>()
        .and_then(|a| a.as_change_request().ok())
        .is_some_and(|c| !c.flags().is_empty());
    Some(Request {
        tx: *msg.transaction_id().as_bytes(),
        change,
    })
}

/// The success response to request `tx` from a client seen at `client`; `other` is the
/// server's other address (its partner), if it has one.
pub fn binding_response(tx: TxId, client: SocketAddr, other: Option<SocketAddr>) -> Vec<u8> {
    let mut builder = StunMessageBuilder::new(BINDING, MessageClass::SuccessResponse)
        .with_transaction_id(TransactionId::from(tx))
        .with_attribute(XorMappedAddress::from(client));
    if let Some(other) = other {
        builder = builder.with_attribute(OtherAddress::from(other));
    }
    if let Ok(software) = Software::new("selfcast") {
        builder = builder.with_attribute(software);
    }
    encode(&builder.build())
}

/// A Binding success response a client decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    /// The transaction it answers.
    pub tx: TxId,
    /// Our address as the server saw it.
    pub mapped: SocketAddr,
    /// The server's other address (RFC 5780), if it has one.
    pub other: Option<SocketAddr>,
}

/// Decodes a Binding success response; `None` for anything else.
pub fn parse_response(bytes: &[u8]) -> Option<Response> {
    let (msg, _) = MessageDecoderBuilder::default()
        .build()
        .decode(bytes)
        .ok()?;
    if msg.method() != BINDING || msg.class() != MessageClass::SuccessResponse {
        return None;
    }
    let mapped = *msg
        .get::<XorMappedAddress>()?
        .as_xor_mapped_address()
        .ok()?
        .socket_address();
    let other = msg
        .get::<OtherAddress>()
        .and_then(|a| a.as_other_address().ok())
        .map(|a| *a.socket_address());
    Some(Response {
        tx: *msg.transaction_id().as_bytes(),
        mapped,
        other,
    })
}

fn encode(msg: &stun_rs::StunMessage) -> Vec<u8> {
    let mut buf = [0u8; MAX_MESSAGE];
    match MessageEncoderBuilder::default()
        .build()
        .encode(&mut buf, msg)
    {
        Ok(n) => buf[..n].to_vec(),
        // Our messages are a few fixed attributes, far below the buffer's size.
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nat::packet::{kind, Kind};

    #[test]
    fn a_request_is_answered_with_the_mapped_and_other_address() {
        let tx = [7u8; 12];
        let req = binding_request(tx, true);
        assert_eq!(kind(&req), Some(Kind::Stun));
        assert_eq!(parse_request(&req), Some(Request { tx, change: true }));
        assert_eq!(parse_response(&req), None, "a request is not a response");
        let plain = binding_request(tx, false);
        assert_eq!(parse_request(&plain).map(|r| r.change), Some(false));

        let client: SocketAddr = "203.0.113.9:40000".parse().unwrap();
        let other: SocketAddr = "198.51.100.2:4433".parse().unwrap();
        let resp = binding_response(tx, client, Some(other));
        assert_eq!(kind(&resp), Some(Kind::Stun));
        assert_eq!(
            parse_response(&resp),
            Some(Response {
                tx,
                mapped: client,
                other: Some(other)
            })
        );
        assert_eq!(parse_request(&resp), None);
        let v6: SocketAddr = "[2001:db8::5]:9".parse().unwrap();
        assert_eq!(
            parse_response(&binding_response(tx, v6, None)).map(|r| r.mapped),
            Some(v6)
        );
    }

    #[test]
    fn garbage_is_not_stun() {
        let req = binding_request([1; 12], false);
        for n in 0..req.len() {
            assert_eq!(parse_request(&req[..n]), None);
        }
        let mut bad = binding_response([1; 12], "1.2.3.4:5".parse().unwrap(), None);
        bad.truncate(bad.len() - 3);
        assert_eq!(parse_response(&bad), None);
        assert_eq!(parse_response(&[0u8; 40]), None);
    }
}
