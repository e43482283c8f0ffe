//! Identities: Ed25519 keys, the peer ids and channel ids derived from them, and key files.
//!
//! A peer's id is the BLAKE3 hash of its public key; a channel's id is a (shorter) hash of its
//! broadcaster's public key. Both print as lowercase base32 so that they fit on a command line
//! and in a TLS server name.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use data_encoding::BASE32_NOPAD;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// Domain separation for channel ids, so a channel id never equals a prefix of a peer id.
const CHANNEL_ID_CONTEXT: &str = "selfcast channel id v1";
/// The first line of a key file.
const KEY_FILE_HEADER: &str = "selfcast-ed25519-secret-v1";

/// An Ed25519 key pair: a broadcaster's (it signs the channel's segments) or a peer's (it
/// signs the peer's QUIC certificate).
#[derive(Clone)]
pub struct Keypair(SigningKey);

impl Keypair {
    /// Creates a key pair from 32 bytes of secret seed (the caller supplies randomness, so that
    /// `sim` can derive keys from its seed).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self(SigningKey::from_bytes(&seed))
    }

    /// Creates a key pair from the operating system's randomness.
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
        Self::from_seed(seed)
    }

    /// Loads the key stored at `path`, or creates one there (mode 0600) when the file does not
    /// exist yet. Returns the key and whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), KeyFileError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse_key_file(&text)
                .map(|k| (k, false))
                .map_err(|reason| KeyFileError::Malformed {
                    path: path.to_owned(),
                    reason,
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate();
                key.write_key_file(path)?;
                Ok((key, true))
            }
            Err(source) => Err(KeyFileError::Io {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// The peer id of this key.
    pub fn peer_id(&self) -> PeerId {
        self.public().peer_id()
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> Signature {
        Signature(self.0.sign(message).to_bytes())
    }

    /// The PKCS#8 (v1) DER encoding of the secret key, as TLS certificate tooling wants it.
    pub fn to_pkcs8_der(&self) -> Vec<u8> {
        // RFC 8410 PrivateKeyInfo for Ed25519: a fixed 16-byte prefix and the 32-byte seed.
        const PREFIX: [u8; 16] = [
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        let mut der = PREFIX.to_vec();
        der.extend_from_slice(&self.0.to_bytes());
        der
    }

    fn parse_key_file(text: &str) -> Result<Self, String> {
        let mut lines = text.lines();
        if lines.next() != Some(KEY_FILE_HEADER) {
            return Err(format!("first line is not `{KEY_FILE_HEADER}`"));
        }
        let encoded = lines.next().ok_or("the secret line is missing")?.trim();
        let bytes = BASE32_NOPAD
            .decode(encoded.to_ascii_uppercase().as_bytes())
            .map_err(|e| format!("the secret is not base32: {e}"))?;
        let seed: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "the secret is not 32 bytes long".to_owned())?;
        Ok(Self::from_seed(seed))
    }

    fn write_key_file(&self, path: &Path) -> Result<(), KeyFileError> {
        let io_err = |source| KeyFileError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_err)?;
        }
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(io_err)?;
        let secret = BASE32_NOPAD.encode(&self.0.to_bytes()).to_ascii_lowercase();
        writeln!(file, "{KEY_FILE_HEADER}\n{secret}").map_err(io_err)?;
        file.sync_all().map_err(io_err)
    }
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Keypair").field(&self.peer_id()).finish()
    }
}

/// Why a key file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// Reading or writing the file failed.
    #[error("key file {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file exists but does not hold a Selfcast key.
    #[error("key file {path} is not a Selfcast key file: {reason}")]
    Malformed {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// An Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKey(#[serde(with = "verifying_key_bytes")] VerifyingKey);

impl PublicKey {
    /// Parses 32 bytes; fails when they are not a valid curve point.
    pub fn from_bytes(bytes: &[u8; 32]) -> Option<Self> {
        VerifyingKey::from_bytes(bytes).ok().map(Self)
    }

    /// The 32 bytes of the key.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The id of the peer owning this key.
    pub fn peer_id(&self) -> PeerId {
        PeerId(*blake3::hash(self.0.as_bytes()).as_bytes())
    }

    /// The id of the channel this key broadcasts.
    pub fn channel_id(&self) -> ChannelId {
        let mut hasher = blake3::Hasher::new_derive_key(CHANNEL_ID_CONTEXT);
        hasher.update(self.0.as_bytes());
        let mut id = [0u8; ChannelId::LEN];
        hasher.finalize_xof().fill(&mut id);
        ChannelId(id)
    }

    /// Checks `signature` over `message` (strict verification: no malleable signatures).
    pub fn verify(&self, message: &[u8], signature: &Signature) -> bool {
        let signature = ed25519_dalek::Signature::from_bytes(&signature.0);
        self.0.verify_strict(message, &signature).is_ok()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.peer_id())
    }
}

mod verifying_key_bytes {
    use ed25519_dalek::VerifyingKey;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(key: &VerifyingKey, s: S) -> Result<S::Ok, S::Error> {
        key.as_bytes().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<VerifyingKey, D::Error> {
        let bytes: [u8; 32] = <[u8; 32]>::deserialize(d)?;
        VerifyingKey::from_bytes(&bytes).map_err(serde::de::Error::custom)
    }
}

/// An Ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature(#[serde(with = "serde_big_array")] pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Signature({}…)",
            data_encoding::HEXLOWER.encode(&self.0[..6])
        )
    }
}

mod serde_big_array {
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::ser::SerializeTuple;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        let mut tuple = s.serialize_tuple(64)?;
        for b in bytes {
            tuple.serialize_element(b)?;
        }
        tuple.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        struct Bytes64;
        impl<'de> Visitor<'de> for Bytes64 {
            type Value = [u8; 64];
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("64 bytes")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<[u8; 64], A::Error> {
                let mut out = [0u8; 64];
                for (i, b) in out.iter_mut().enumerate() {
                    *b = seq
                        .next_element()?
                        .ok_or_else(|| A::Error::invalid_length(i, &self))?;
                }
                Ok(out)
            }
        }
        d.deserialize_tuple(64, Bytes64)
    }
}

/// A peer's id: the BLAKE3 hash of its Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PeerId(pub [u8; 32]);

impl PeerId {
    /// The first characters of the id, for logs.
    pub fn short(&self) -> String {
        let mut s = self.to_string();
        s.truncate(10);
        s
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&BASE32_NOPAD.encode(&self.0).to_ascii_lowercase())
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({})", self.short())
    }
}

impl FromStr for PeerId {
    type Err = IdParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        decode_base32(s).map(PeerId)
    }
}

/// A channel's id: a 160-bit hash of its broadcaster's public key, printed as 32 base32
/// characters. Only the holder of that key can publish segments that viewers accept.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ChannelId(pub [u8; ChannelId::LEN]);

impl ChannelId {
    /// Length of a channel id in bytes.
    pub const LEN: usize = 20;
}

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&BASE32_NOPAD.encode(&self.0).to_ascii_lowercase())
    }
}

impl fmt::Debug for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChannelId({self})")
    }
}

impl FromStr for ChannelId {
    type Err = IdParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        decode_base32(s).map(ChannelId)
    }
}

/// A peer or channel id on the command line was not what it should be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not a valid id: expected {expected} base32 characters (a-z, 2-7)")]
pub struct IdParseError {
    input: String,
    expected: usize,
}

fn decode_base32<const N: usize>(s: &str) -> Result<[u8; N], IdParseError> {
    let err = || IdParseError {
        input: s.to_owned(),
        expected: BASE32_NOPAD.encode_len(N),
    };
    let bytes = BASE32_NOPAD
        .decode(s.trim().to_ascii_uppercase().as_bytes())
        .map_err(|_| err())?;
    bytes.try_into().map_err(|_| err())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_text() {
        let key = Keypair::from_seed([7; 32]);
        let channel = key.public().channel_id();
        let text = channel.to_string();
        assert_eq!(text.len(), 32);
        assert_eq!(text.parse::<ChannelId>().unwrap(), channel);
        let peer = key.peer_id();
        assert_eq!(peer.to_string().parse::<PeerId>().unwrap(), peer);
        assert!("not-an-id".parse::<ChannelId>().is_err());
        assert!(
            peer.to_string().parse::<ChannelId>().is_err(),
            "a peer id is not a channel id"
        );
    }

    #[test]
    fn signatures_verify_only_for_their_message_and_key() {
        let key = Keypair::from_seed([1; 32]);
        let other = Keypair::from_seed([2; 32]);
        let sig = key.sign(b"segment 7");
        assert!(key.public().verify(b"segment 7", &sig));
        assert!(!key.public().verify(b"segment 8", &sig));
        assert!(!other.public().verify(b"segment 7", &sig));
    }

    #[test]
    fn key_file_is_created_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/broadcaster.key");
        let (created, fresh) = Keypair::load_or_create(&path).unwrap();
        assert!(fresh);
        let (loaded, fresh) = Keypair::load_or_create(&path).unwrap();
        assert!(!fresh);
        assert_eq!(created.peer_id(), loaded.peer_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "garbage").unwrap();
        let err = Keypair::load_or_create(&path).unwrap_err();
        assert!(matches!(err, KeyFileError::Malformed { .. }), "{err}");
    }

    #[test]
    fn pkcs8_encoding_is_what_ed25519_dalek_reads() {
        use ed25519_dalek::pkcs8::DecodePrivateKey;
        let key = Keypair::from_seed([9; 32]);
        let parsed = SigningKey::from_pkcs8_der(&key.to_pkcs8_der()).unwrap();
        assert_eq!(parsed.verifying_key(), key.0.verifying_key());
    }
}
