//! What a broadcaster signs: the channel record and one statement per segment.
//!
//! The broadcaster signs small statements, never the media bytes: each [`SegmentMeta`] carries
//! the BLAKE3 hash and length of one segment, so a viewer verifies the bytes it receives from
//! anybody against a statement that only the broadcaster could have made. Statements travel in
//! control frames, bytes on their own streams.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::identity::{ChannelId, Keypair, PublicKey, Signature};

/// Signatures are over a domain-separated encoding, so a signature on one kind of statement can
/// never be replayed as another.
const CHANNEL_CONTEXT: &[u8] = b"selfcast channel record v1\0";
const SEGMENT_CONTEXT: &[u8] = b"selfcast segment statement v1\0";

/// Which piece of a stream: the init segment (codec setup) or a numbered media segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum SegmentId {
    /// The CMAF header (ftyp + moov) every player needs first.
    Init,
    /// Media segment number `n`, counted from 0.
    Media(u64),
}

impl std::fmt::Display for SegmentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Init => f.write_str("init"),
            Self::Media(n) => write!(f, "#{n}"),
        }
    }
}

/// Live or on demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamKind {
    /// Segments appear in real time; viewers follow the live edge.
    Live,
    /// The whole stream exists; viewers start anywhere.
    Vod,
}

/// A channel's description, signed by its broadcaster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelRecord {
    /// The broadcaster's key; its hash is the channel id.
    pub broadcaster: PublicKey,
    /// A human-readable title.
    pub name: String,
    /// Live or on demand.
    pub kind: StreamKind,
    /// The target segment duration in milliseconds.
    pub segment_target_ms: u32,
    /// When this broadcast started, in milliseconds since the Unix epoch. It also names the
    /// session: a broadcaster that restarts with the same key starts a new session, and
    /// viewers drop everything of the old one (segment numbers start again at 0).
    pub started_unix_ms: u64,
}

impl ChannelRecord {
    /// The channel id this record describes.
    pub fn channel_id(&self) -> ChannelId {
        self.broadcaster.channel_id()
    }

    /// Signs the record with the broadcaster's key (which must be `self.broadcaster`).
    pub fn sign(self, key: &Keypair) -> SignedChannel {
        let signature = key.sign(&signing_bytes(CHANNEL_CONTEXT, &self));
        SignedChannel {
            record: self,
            signature,
        }
    }
}

/// A channel record with the broadcaster's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedChannel {
    /// What was signed.
    pub record: ChannelRecord,
    /// The broadcaster's signature over it.
    pub signature: Signature,
}

impl SignedChannel {
    /// Checks that this record belongs to `channel` and is signed by the channel's key.
    pub fn verify(&self, channel: ChannelId) -> Result<(), IntegrityError> {
        if self.record.channel_id() != channel {
            return Err(IntegrityError::WrongChannel);
        }
        let message = signing_bytes(CHANNEL_CONTEXT, &self.record);
        if !self.record.broadcaster.verify(&message, &self.signature) {
            return Err(IntegrityError::BadSignature);
        }
        Ok(())
    }
}

/// What the broadcaster states about one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentMeta {
    /// The channel the segment belongs to.
    pub channel: ChannelId,
    /// The session (the channel record's `started_unix_ms`) the segment belongs to.
    pub session: u64,
    /// Which segment.
    pub id: SegmentId,
    /// Playback duration in microseconds (0 for the init segment).
    pub duration_us: u64,
    /// When the source finished the segment, in milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// Length of the segment in bytes.
    pub len: u32,
    /// BLAKE3 hash of the segment's bytes.
    pub hash: [u8; 32],
    /// True on the end-of-stream marker: an empty statement numbered one past the final
    /// segment.
    pub last: bool,
}

impl SegmentMeta {
    /// Describes `bytes` as segment `id` of `channel`.
    pub fn describe(
        channel: ChannelId,
        session: u64,
        id: SegmentId,
        duration: Duration,
        created_unix_ms: u64,
        bytes: &[u8],
    ) -> Result<Self, IntegrityError> {
        let len = u32::try_from(bytes.len()).map_err(|_| IntegrityError::TooLarge)?;
        Ok(Self {
            channel,
            session,
            id,
            duration_us: u64::try_from(duration.as_micros()).unwrap_or(u64::MAX),
            created_unix_ms,
            len,
            hash: *blake3::hash(bytes).as_bytes(),
            last: false,
        })
    }

    /// True for the end-of-stream marker, which names no bytes to fetch.
    pub fn is_end_marker(&self) -> bool {
        self.last && self.len == 0
    }

    /// The segment's playback duration.
    pub fn duration(&self) -> Duration {
        Duration::from_micros(self.duration_us)
    }

    /// Signs the statement with the broadcaster's key.
    pub fn sign(self, key: &Keypair) -> SignedSegment {
        let signature = key.sign(&signing_bytes(SEGMENT_CONTEXT, &self));
        SignedSegment {
            meta: self,
            signature,
        }
    }

    /// Checks that `bytes` are the segment this statement describes.
    pub fn check_payload(&self, bytes: &[u8]) -> Result<(), IntegrityError> {
        if bytes.len() != self.len as usize {
            return Err(IntegrityError::WrongLength {
                expected: self.len,
                got: bytes.len(),
            });
        }
        if blake3::hash(bytes).as_bytes() != &self.hash {
            return Err(IntegrityError::HashMismatch);
        }
        Ok(())
    }
}

/// A segment statement with the broadcaster's signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedSegment {
    /// What was signed.
    pub meta: SegmentMeta,
    /// The broadcaster's signature over it.
    pub signature: Signature,
}

impl SignedSegment {
    /// Checks the signature against the broadcaster's key of `channel`.
    pub fn verify(&self, channel: &ChannelRecord) -> Result<(), IntegrityError> {
        if self.meta.channel != channel.channel_id() {
            return Err(IntegrityError::WrongChannel);
        }
        let message = signing_bytes(SEGMENT_CONTEXT, &self.meta);
        if !channel.broadcaster.verify(&message, &self.signature) {
            return Err(IntegrityError::BadSignature);
        }
        Ok(())
    }
}

/// How a peer checks what the broadcaster signed. [`Strict`] does the full cryptography; the
/// simulator wraps it in a memo so that a statement verified by one simulated peer is not
/// verified again by the next ten thousand (same result, computed once).
pub trait Verifier: std::fmt::Debug + Send + Sync {
    /// Checks a statement's signature under `channel`'s key.
    fn verify_statement(
        &self,
        channel: &ChannelRecord,
        statement: &SignedSegment,
    ) -> Result<(), IntegrityError>;

    /// Checks that `bytes` are the segment `meta` describes.
    fn check_payload(&self, meta: &SegmentMeta, bytes: &bytes::Bytes)
        -> Result<(), IntegrityError>;

    /// What to keep of a segment put together here that passed [`Verifier::check_payload`]:
    /// `bytes` itself, or an identical buffer the verifier holds already (a simulator's
    /// thousands of hosts then share one buffer per segment instead of each holding the copy
    /// it assembled from parts).
    fn keep(&self, _meta: &SegmentMeta, bytes: bytes::Bytes) -> bytes::Bytes {
        bytes
    }
}

/// Full verification: Ed25519 signatures and BLAKE3 hashes, every time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Strict;

impl Verifier for Strict {
    fn verify_statement(
        &self,
        channel: &ChannelRecord,
        statement: &SignedSegment,
    ) -> Result<(), IntegrityError> {
        statement.verify(channel)
    }

    fn check_payload(
        &self,
        meta: &SegmentMeta,
        bytes: &bytes::Bytes,
    ) -> Result<(), IntegrityError> {
        meta.check_payload(bytes)
    }
}

/// Why a statement or a segment was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IntegrityError {
    /// The statement names another channel than the one we watch.
    #[error("statement is for another channel")]
    WrongChannel,
    /// The signature does not verify under the broadcaster's key.
    #[error("signature does not verify under the broadcaster's key")]
    BadSignature,
    /// The bytes are not as long as the signed statement says.
    #[error("segment is {got} bytes, the broadcaster signed {expected}")]
    WrongLength {
        /// Length in the statement.
        expected: u32,
        /// Length received.
        got: usize,
    },
    /// The bytes do not hash to the signed hash.
    #[error("segment bytes do not match the signed BLAKE3 hash")]
    HashMismatch,
    /// A segment over 4 GiB cannot be described.
    #[error("segment is larger than 4 GiB")]
    TooLarge,
}

fn signing_bytes<T: Serialize>(context: &[u8], value: &T) -> Vec<u8> {
    let mut out = context.to_vec();
    // Serializing our own plain structs into a Vec cannot fail.
    #[allow(clippy::unwrap_used)]
    let encoded = postcard::to_allocvec(value).unwrap();
    out.extend_from_slice(&encoded);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(key: &Keypair) -> ChannelRecord {
        ChannelRecord {
            broadcaster: key.public(),
            name: "test".into(),
            kind: StreamKind::Live,
            segment_target_ms: 1000,
            started_unix_ms: 1,
        }
    }

    #[test]
    fn a_signed_segment_verifies_and_checks_its_bytes() {
        let key = Keypair::from_seed([3; 32]);
        let record = channel(&key);
        let bytes = b"moof mdat".to_vec();
        let meta = SegmentMeta::describe(
            record.channel_id(),
            record.started_unix_ms,
            SegmentId::Media(4),
            Duration::from_secs(1),
            10,
            &bytes,
        )
        .unwrap();
        let signed = meta.sign(&key);
        signed.verify(&record).unwrap();
        signed.meta.check_payload(&bytes).unwrap();
        assert_eq!(
            signed.meta.check_payload(b"moof mdaT"),
            Err(IntegrityError::HashMismatch)
        );
        assert!(matches!(
            signed.meta.check_payload(b"short"),
            Err(IntegrityError::WrongLength { .. })
        ));
    }

    #[test]
    fn forged_statements_are_refused() {
        let key = Keypair::from_seed([3; 32]);
        let forger = Keypair::from_seed([4; 32]);
        let record = channel(&key);
        let meta = SegmentMeta::describe(
            record.channel_id(),
            record.started_unix_ms,
            SegmentId::Media(0),
            Duration::from_secs(1),
            10,
            b"x",
        )
        .unwrap();
        assert_eq!(
            meta.sign(&forger).verify(&record),
            Err(IntegrityError::BadSignature)
        );
        let mut tampered = meta.sign(&key);
        tampered.meta.hash[0] ^= 1;
        assert_eq!(tampered.verify(&record), Err(IntegrityError::BadSignature));

        let signed = record.clone().sign(&key);
        signed.verify(record.channel_id()).unwrap();
        let other_channel = forger.public().channel_id();
        assert_eq!(
            signed.verify(other_channel),
            Err(IntegrityError::WrongChannel)
        );
        let mut renamed = signed;
        renamed.record.name = "evil".into();
        assert_eq!(
            renamed.verify(record.channel_id()),
            Err(IntegrityError::BadSignature)
        );
    }
}
