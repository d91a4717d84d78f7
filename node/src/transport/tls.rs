//! TLS and QUIC configuration: mutual TLS 1.3 rooted in the cluster CA.
//!
//! Owns [`ClusterTls`] (the CA certificate plus one identity's certificate and
//! key) and the quinn server, client, endpoint and transport configurations
//! built from it. Guarantees: rustls always uses the ring provider explicitly
//! (both providers in the build would make the default builder panic); TLS
//! 1.3 only; ALPN [`ALPN`]; the server requires a client certificate signed
//! by the cluster CA (`WebPkiClientVerifier`); the client requires a server
//! certificate signed by the cluster CA naming [`NODE_SERVER_NAME`]; a
//! serving node's stateless-reset and connection-id keys derive from its
//! private key, so after a crash and restart on the same address it resets
//! its peers' stale connections at once instead of leaving them to the idle
//! timeout.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, VarInt};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use super::TransportConfig;
pub use crate::certs::NODE_SERVER_NAME;
use crate::certs::{IdentityError, PeerIdentity, CA_CERT_FILE};

/// The ALPN protocol every shardflow endpoint speaks.
pub const ALPN: &[u8] = b"shardflow/1";

const RESET_KEY_LABEL: &[u8] = b"shardflow stateless reset key v1";
const CID_KEY_LABEL: &[u8] = b"shardflow connection id key v1";

/// A TLS configuration problem, naming the file or item at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read.
    #[error("read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A PEM item could not be parsed.
    #[error("parse {what}: {source}")]
    Pem {
        /// What was being parsed (a path or a description).
        what: String,
        /// The cause.
        source: rustls::pki_types::pem::Error,
    },
    /// The PEM holds no certificate.
    #[error("{what} holds no certificate")]
    NoCertificate {
        /// What was parsed.
        what: String,
    },
    /// Our own certificate names no usable identity.
    #[error("our certificate: {0}")]
    Identity(#[from] IdentityError),
    /// rustls refused the configuration (bad key, CA not usable...).
    #[error("rustls: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// The ring provider lacks the QUIC initial cipher suite (cannot happen
    /// with TLS 1.3 and ring; kept typed rather than unwrapped).
    #[error("QUIC: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
}

/// The cluster CA certificate and one identity's certificate chain and key.
pub struct ClusterTls {
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    identity: PeerIdentity,
}

impl Clone for ClusterTls {
    fn clone(&self) -> Self {
        ClusterTls {
            ca: self.ca.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            identity: self.identity,
        }
    }
}

impl fmt::Debug for ClusterTls {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("ClusterTls")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl ClusterTls {
    /// Builds from PEM text: the CA certificate, our certificate (chain,
    /// leaf first) and our private key. Our identity is read from our leaf.
    pub fn from_pem(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let ca = first_certificate(ca_pem, "the CA certificate")?;
        let chain = certificates(cert_pem, "our certificate")?;
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|source| TlsError::Pem {
                what: "our private key".to_string(),
                source,
            })?;
        // `certificates` never returns an empty chain; the leaf comes first.
        let identity = PeerIdentity::from_certificate_der(&chain[0])?;
        Ok(ClusterTls {
            ca,
            chain,
            key,
            identity,
        })
    }

    /// Loads `dir/ca.pem`, `dir/<stem>.pem` and `dir/<stem>.key` where the
    /// stem is `identity`'s (`node-3`, `admin`, `client`).
    pub fn load(dir: &Path, identity: PeerIdentity) -> Result<Self, TlsError> {
        let stem = identity.file_stem();
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| TlsError::Read { path, source })
        };
        Self::from_pem(
            &read(CA_CERT_FILE)?,
            &read(&format!("{stem}.pem"))?,
            &read(&format!("{stem}.key"))?,
        )
    }

    /// Who our certificate says we are.
    pub fn identity(&self) -> PeerIdentity {
        self.identity
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, TlsError> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone())?;
        Ok(Arc::new(roots))
    }

    /// The quinn server configuration: mutual TLS, client certificate
    /// required and verified against the cluster CA.
    pub(crate) fn server_config(
        &self,
        transport: Arc<quinn::TransportConfig>,
    ) -> Result<quinn::ServerConfig, TlsError> {
        let provider = provider();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(self.roots()?, provider.clone()).build()?;
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let mut config =
            quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
        config.transport_config(transport);
        Ok(config)
    }

    /// The quinn client configuration: presents our certificate, trusts only
    /// the cluster CA.
    pub(crate) fn client_config(
        &self,
        transport: Arc<quinn::TransportConfig>,
    ) -> Result<quinn::ClientConfig, TlsError> {
        let mut tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
        config.transport_config(transport);
        Ok(config)
    }

    /// Endpoint configuration that survives a restart: the stateless-reset
    /// key and the connection-id validation key both derive from our private
    /// key (stable across restarts, secret to us). A restarted node thus
    /// recognizes its predecessor's connection ids and resets them.
    pub(crate) fn stable_endpoint_config(&self) -> quinn::EndpointConfig {
        use ring::hmac;
        let derivation = hmac::Key::new(hmac::HMAC_SHA256, self.key.secret_der());
        let reset_key = hmac::sign(&derivation, RESET_KEY_LABEL);
        let cid_tag = hmac::sign(&derivation, CID_KEY_LABEL);
        let mut cid_key = [0u8; 8];
        cid_key.copy_from_slice(&cid_tag.as_ref()[..8]);
        let cid_key = u64::from_le_bytes(cid_key);
        let mut config = quinn::EndpointConfig::new(Arc::new(hmac::Key::new(
            hmac::HMAC_SHA256,
            reset_key.as_ref(),
        )));
        config.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
        config
    }
}

/// The quinn transport parameters from our configuration.
pub(crate) fn quinn_transport_config(
    config: &TransportConfig,
) -> Result<Arc<quinn::TransportConfig>, String> {
    let idle = IdleTimeout::try_from(config.max_idle_timeout)
        .map_err(|error| format!("max_idle_timeout {:?}: {error}", config.max_idle_timeout))?;
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(config.keep_alive_interval))
        .max_concurrent_bidi_streams(VarInt::from_u32(config.max_concurrent_bidi_streams))
        .max_concurrent_uni_streams(VarInt::from_u32(0));
    Ok(Arc::new(transport))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            what: what.to_string(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            what: what.to_string(),
        });
    }
    Ok(chain)
}

fn first_certificate(pem: &str, what: &str) -> Result<CertificateDer<'static>, TlsError> {
    let mut chain = certificates(pem, what)?;
    Ok(chain.swap_remove(0))
}
