//! TLS for peer connections: every peer's certificate is self-signed by its Ed25519 key, and
//! the other side checks it against the peer id it expected.
//!
//! There is no certificate authority. A certificate is accepted when its key is Ed25519, it is
//! validly self-signed, and (when dialling a known peer) the BLAKE3 hash of its key equals the
//! peer id we dialled. The TLS 1.3 handshake then proves the other side holds that key.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::identity::{Keypair, PeerId, PublicKey};
use crate::wire::ALPN;

/// The OID of Ed25519 keys (RFC 8410).
const ED25519_OID: &str = "1.3.101.112";
/// The name every Selfcast certificate carries; identity comes from the key, not the name.
const CERT_NAME: &str = "selfcast.invalid";

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The self-signed certificate could not be made.
    #[error("cannot create the peer certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// quinn refused the TLS configuration.
    #[error("QUIC TLS configuration: {0}")]
    Quic(String),
}

/// The QUIC server configuration of a peer: it presents its own certificate and requires one
/// from every client.
pub fn server_config(key: &Keypair) -> Result<quinn::ServerConfig, TlsError> {
    let (cert, secret) = certificate(key)?;
    let provider = provider();
    let verifier = Arc::new(PeerVerifier {
        expected: None,
        provider: provider.clone(),
    });
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert], secret)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    Ok(quinn::ServerConfig::with_crypto(Arc::new(crypto)))
}

/// The QUIC client configuration for dialling `expected` (or any peer, for a bootstrap address
/// given without an id).
pub fn client_config(
    key: &Keypair,
    expected: Option<PeerId>,
) -> Result<quinn::ClientConfig, TlsError> {
    let (cert, secret) = certificate(key)?;
    let provider = provider();
    let verifier = Arc::new(PeerVerifier {
        expected,
        provider: provider.clone(),
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![cert], secret)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    Ok(quinn::ClientConfig::new(Arc::new(crypto)))
}

/// The server name to dial with; identity is checked by key, so it is the same for everyone.
pub fn server_name() -> &'static str {
    CERT_NAME
}

/// The peer id behind an established connection.
pub fn peer_id_of(connection: &quinn::Connection) -> Option<PeerId> {
    let identity = connection.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    let cert = certs.first()?;
    ed25519_key_of(cert).ok().map(|k| k.peer_id())
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificate(
    key: &Keypair,
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), TlsError> {
    let pkcs8 = PrivatePkcs8KeyDer::from(key.to_pkcs8_der());
    let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_ED25519)?;
    let params = rcgen::CertificateParams::new(vec![CERT_NAME.to_owned()])?;
    let cert = params.self_signed(&key_pair)?;
    Ok((cert.der().clone(), PrivateKeyDer::Pkcs8(pkcs8)))
}

/// Extracts the Ed25519 key of a certificate and checks that the certificate is self-signed
/// by it.
fn ed25519_key_of(cert: &CertificateDer<'_>) -> Result<PublicKey, rustls::Error> {
    let bad = |why: &str| rustls::Error::General(format!("peer certificate: {why}"));
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).map_err(|_| bad("not X.509 DER"))?;
    let spki = parsed.public_key();
    if spki.algorithm.algorithm.to_id_string() != ED25519_OID {
        return Err(bad("key is not Ed25519"));
    }
    let bytes: [u8; 32] = spki
        .subject_public_key
        .data
        .as_ref()
        .try_into()
        .map_err(|_| bad("key is not 32 bytes"))?;
    let key = PublicKey::from_bytes(&bytes).ok_or_else(|| bad("key is not a valid point"))?;
    parsed
        .verify_signature(None)
        .map_err(|_| bad("not self-signed by its key"))?;
    Ok(key)
}

/// Checks peer certificates, in both directions.
#[derive(Debug)]
struct PeerVerifier {
    /// The peer we dialled, if we know its id.
    expected: Option<PeerId>,
    provider: Arc<CryptoProvider>,
}

impl PeerVerifier {
    fn check(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let key = ed25519_key_of(cert)?;
        match self.expected {
            Some(expected) if key.peer_id() != expected => Err(rustls::Error::General(format!(
                "peer certificate belongs to {}, expected {}",
                key.peer_id().short(),
                expected.short()
            ))),
            _ => Ok(()),
        }
    }

    fn verify13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_carries_its_peer_id_and_is_self_signed() {
        let key = Keypair::from_seed([8; 32]);
        let (cert, _) = certificate(&key).unwrap();
        assert_eq!(ed25519_key_of(&cert).unwrap().peer_id(), key.peer_id());
        let verifier = PeerVerifier {
            expected: Some(key.peer_id()),
            provider: provider(),
        };
        verifier.check(&cert).unwrap();
        let wrong = PeerVerifier {
            expected: Some(Keypair::from_seed([9; 32]).peer_id()),
            provider: provider(),
        };
        assert!(wrong.check(&cert).is_err());
    }

    #[test]
    fn a_tampered_certificate_is_refused() {
        let key = Keypair::from_seed([8; 32]);
        let (cert, _) = certificate(&key).unwrap();
        let mut bytes = cert.to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 1; // inside the signature
        let verifier = PeerVerifier {
            expected: None,
            provider: provider(),
        };
        assert!(verifier.check(&CertificateDer::from(bytes)).is_err());
        assert!(verifier
            .check(&CertificateDer::from(vec![0x30, 0x03, 1, 2, 3]))
            .is_err());
    }
}
