//! Cluster certificates: the cluster CA, the leaf certificates it issues, and
//! the role every certificate carries.
//!
//! Owns the certificate layout on disk (`ca.pem`, `ca.key`, `node-N.pem`,
//! `node-N.key`, `admin.pem`, `admin.key`, `client.pem`, `client.key`) and the
//! encoding of a role inside a certificate.
//!
//! Guarantees:
//! - Every leaf certificate carries exactly one role as a subject alternative
//!   name URI: `urn:shardflow:role:node:<id>`, `urn:shardflow:role:admin` or
//!   `urn:shardflow:role:client`. [`PeerIdentity::from_certificate_der`] reads
//!   it back from a peer's DER certificate and rejects a certificate with no
//!   role or more than one. The subject common name (`node-3`, `admin`,
//!   `client`) is for humans only and is never trusted.
//! - Only node certificates name [`NODE_SERVER_NAME`] (a DNS SAN), so only a
//!   node can serve: a dialer that verifies that name talks to a node.
//! - [`write_cluster_certs`] never creates a second CA in a directory that
//!   holds one and never overwrites a file; key files are created with mode
//!   0600, each file appears atomically (written aside, then hard-linked).

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::string::Ia5String;
use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};

/// The DNS name every node certificate carries and every dialer asks for
/// (TLS SNI), so peers can be addressed by plain `IP:port`.
pub const NODE_SERVER_NAME: &str = "shardflow-node";

/// File name of the CA certificate inside a certificate directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key inside a certificate directory.
pub const CA_KEY_FILE: &str = "ca.key";

const ROLE_URI_PREFIX: &str = "urn:shardflow:role:";
const CA_COMMON_NAME: &str = "shardflow cluster CA";
const ORGANIZATION: &str = "shardflow";
const CA_VALIDITY_YEARS: i32 = 20;
const LEAF_VALIDITY_YEARS: i32 = 10;
const KEY_FILE_MODE: u32 = 0o600;
const CERT_FILE_MODE: u32 = 0o644;

/// What a certificate allows its holder to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A cluster node: Raft and migration-stream traffic.
    Node,
    /// An operator: changes the cluster (bootstrap, migrations, cancel).
    Admin,
    /// An application: reads and writes keys.
    Client,
}

impl Role {
    /// The role's name as written in certificates and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Admin => "admin",
            Role::Client => "client",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// Who is at the other end of a connection, as its certificate says.
///
/// Invariant: `node_id` is `Some` exactly when `role` is [`Role::Node`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerIdentity {
    role: Role,
    node_id: Option<u64>,
}

impl PeerIdentity {
    /// The identity of cluster node `node_id`.
    pub fn node(node_id: u64) -> Self {
        PeerIdentity {
            role: Role::Node,
            node_id: Some(node_id),
        }
    }

    /// The identity of an operator.
    pub fn admin() -> Self {
        PeerIdentity {
            role: Role::Admin,
            node_id: None,
        }
    }

    /// The identity of an application client.
    pub fn client() -> Self {
        PeerIdentity {
            role: Role::Client,
            node_id: None,
        }
    }

    /// The role the certificate grants.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The node id, for node certificates only.
    pub fn node_id(&self) -> Option<u64> {
        self.node_id
    }

    /// The file name stem of this identity's certificate: `node-3`, `admin`,
    /// `client` (also its subject common name).
    pub fn file_stem(&self) -> String {
        match self.node_id {
            Some(node_id) => format!("node-{node_id}"),
            None => self.role.as_str().to_string(),
        }
    }

    /// The SAN URI that encodes this identity in a certificate.
    pub fn role_uri(&self) -> String {
        match self.node_id {
            Some(node_id) => format!("{ROLE_URI_PREFIX}node:{node_id}"),
            None => format!("{ROLE_URI_PREFIX}{}", self.role.as_str()),
        }
    }

    /// Parses a role URI; `None` if `uri` is not in the shardflow role
    /// namespace, an error if it is but is not a valid role.
    pub fn from_role_uri(uri: &str) -> Option<Result<Self, IdentityError>> {
        let rest = uri.strip_prefix(ROLE_URI_PREFIX)?;
        let invalid = || IdentityError::InvalidRole {
            uri: uri.to_string(),
        };
        let parsed = match rest {
            "admin" => Ok(PeerIdentity::admin()),
            "client" => Ok(PeerIdentity::client()),
            _ => rest
                .strip_prefix("node:")
                .and_then(parse_canonical_u64)
                .map(PeerIdentity::node)
                .ok_or_else(invalid),
        };
        Some(parsed)
    }

    /// Reads the identity from a DER certificate (the peer's leaf after the
    /// TLS handshake). Trust comes from the handshake, not from this call.
    pub fn from_certificate_der(der: &[u8]) -> Result<Self, IdentityError> {
        let (_, certificate) = x509_parser::parse_x509_certificate(der)
            .map_err(|error| IdentityError::Parse(error.to_string()))?;
        let names = certificate
            .subject_alternative_name()
            .map_err(|error| IdentityError::Parse(error.to_string()))?;
        let mut found = Vec::new();
        for name in names.iter().flat_map(|ext| ext.value.general_names.iter()) {
            if let x509_parser::extensions::GeneralName::URI(uri) = name {
                if let Some(parsed) = PeerIdentity::from_role_uri(uri) {
                    found.push(parsed?);
                }
            }
        }
        match found.as_slice() {
            [identity] => Ok(*identity),
            [] => Err(IdentityError::NoRole),
            _ => Err(IdentityError::Ambiguous { count: found.len() }),
        }
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.node_id {
            Some(node_id) => write!(formatter, "node {node_id}"),
            None => formatter.write_str(self.role.as_str()),
        }
    }
}

/// Decimal digits only, no sign, no leading zero: one spelling per id.
fn parse_canonical_u64(text: &str) -> Option<u64> {
    let canonical = !text.is_empty()
        && text.bytes().all(|byte| byte.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    if canonical {
        text.parse().ok()
    } else {
        None
    }
}

/// Why a certificate does not name a shardflow identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The peer presented no certificate.
    #[error("the peer presented no certificate")]
    NoCertificate,
    /// The bytes are not a DER X.509 certificate.
    #[error("certificate is not valid DER X.509: {0}")]
    Parse(String),
    /// No `urn:shardflow:role:` URI in the subject alternative names.
    #[error("certificate carries no shardflow role (no SAN URI {ROLE_URI_PREFIX}...)")]
    NoRole,
    /// More than one role URI: refused rather than guessed.
    #[error("certificate carries {count} shardflow roles; expected exactly one")]
    Ambiguous {
        /// How many role URIs were found.
        count: usize,
    },
    /// A URI in the role namespace that names no valid role.
    #[error("invalid shardflow role URI {uri:?}")]
    InvalidRole {
        /// The offending URI.
        uri: String,
    },
}

/// A failure creating, loading or writing certificates. Every variant that
/// touches the disk names the path.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// Reading a file failed.
    #[error("read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Writing a file (or creating its directory) failed.
    #[error("write {}: {source}", path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A PEM file could not be parsed as a certificate or key.
    #[error("parse {}: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: rcgen::Error,
    },
    /// The CA key does not belong to the CA certificate.
    #[error("{} does not hold the private key of {}", key_path.display(), cert_path.display())]
    KeyMismatch {
        /// The key file.
        key_path: PathBuf,
        /// The certificate file.
        cert_path: PathBuf,
    },
    /// Half of a certificate/key pair exists: refusing to guess.
    #[error(
        "{} exists but {} does not; restore the missing file or remove the other",
        present.display(),
        missing.display()
    )]
    IncompletePair {
        /// The file that exists.
        present: PathBuf,
        /// The file that is missing.
        missing: PathBuf,
    },
    /// Generating or signing a certificate failed.
    #[error("generate the certificate for {subject}: {source}")]
    Generate {
        /// Whose certificate.
        subject: String,
        /// The cause.
        source: rcgen::Error,
    },
}

/// The cluster certificate authority: signs every node, admin and client
/// certificate.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("CertificateAuthority")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Creates a new CA with a fresh ECDSA P-256 key.
    pub fn generate() -> Result<Self, CertError> {
        let generate_error = |source| CertError::Generate {
            subject: CA_COMMON_NAME.to_string(),
            source,
        };
        let key = KeyPair::generate().map_err(generate_error)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(CA_COMMON_NAME);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, CA_VALIDITY_YEARS);
        let certificate = params.self_signed(&key).map_err(generate_error)?;
        Ok(CertificateAuthority {
            issuer: Issuer::new(params, key),
            cert_pem: certificate.pem(),
        })
    }

    /// Loads the CA from `dir/ca.pem` and `dir/ca.key`, checking that the key
    /// belongs to the certificate.
    pub fn load(dir: &Path) -> Result<Self, CertError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let cert_pem = read_text(&cert_path)?;
        let key = KeyPair::from_pem(&read_text(&key_path)?).map_err(|source| CertError::Parse {
            path: key_path.clone(),
            source,
        })?;
        let parse_error = |source| CertError::Parse {
            path: cert_path.clone(),
            source,
        };
        let cert_der = pem_certificate_der(&cert_pem).map_err(parse_error)?;
        if certificate_public_key(&cert_der).map_err(parse_error)? != key.subject_public_key_info()
        {
            return Err(CertError::KeyMismatch {
                key_path,
                cert_path,
            });
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der.into(), key).map_err(parse_error)?;
        Ok(CertificateAuthority { issuer, cert_pem })
    }

    /// The CA certificate (PEM): the trust root every peer is given.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key (PEM). Keep it off the nodes if you can.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Issues a certificate for `identity`; returns `(cert_pem, key_pem)`.
    pub fn issue(&self, identity: PeerIdentity) -> Result<(String, String), CertError> {
        let generate_error = |source| CertError::Generate {
            subject: identity.to_string(),
            source,
        };
        let key = KeyPair::generate().map_err(generate_error)?;
        let params = leaf_params(identity).map_err(generate_error)?;
        let certificate = params
            .signed_by(&key, &self.issuer)
            .map_err(generate_error)?;
        Ok((certificate.pem(), key.serialize_pem()))
    }
}

fn leaf_params(identity: PeerIdentity) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(&identity.file_stem());
    params.subject_alt_names = vec![SanType::URI(Ia5String::try_from(identity.role_uri())?)];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if identity.role() == Role::Node {
        let server_name = Ia5String::try_from(NODE_SERVER_NAME)?;
        params.subject_alt_names.push(SanType::DnsName(server_name));
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
    }
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, LEAF_VALIDITY_YEARS);
    Ok(params)
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, ORGANIZATION);
    name.push(DnType::CommonName, common_name);
    name
}

/// Valid from January 1st of last year (absorbs clock skew and the
/// approximate year below) for `years` years.
fn set_validity(params: &mut CertificateParams, years: i32) {
    const SECONDS_PER_YEAR: u64 = 31_556_952; // 365.2425 days
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0);
    let year = 1970 + i32::try_from(seconds / SECONDS_PER_YEAR).unwrap_or(0);
    params.not_before = date_time_ymd(year - 1, 1, 1);
    params.not_after = date_time_ymd(year + years, 1, 1);
}

fn pem_certificate_der(pem: &str) -> Result<Vec<u8>, rcgen::Error> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|der| der.to_vec())
        .map_err(|_| rcgen::Error::CouldNotParseCertificate)
}

fn certificate_public_key(der: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der)
        .map_err(|_| rcgen::Error::CouldNotParseCertificate)?;
    Ok(certificate.tbs_certificate.subject_pki.raw.to_vec())
}

/// What [`write_cluster_certs`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ClusterCertsReport {
    /// Whether a new CA was created (false: an existing CA was loaded).
    pub ca_created: bool,
    /// Files written by this call.
    pub written: Vec<PathBuf>,
    /// Certificate files that already existed and were left alone.
    pub kept: Vec<PathBuf>,
}

/// Writes the cluster CA and the certificates of `nodes`, the admin and the
/// client into `out_dir` (created if missing).
///
/// On a directory that already holds `ca.pem` and `ca.key`, that CA issues
/// the missing certificates: existing files are never rewritten and a second
/// CA is never created. Half a pair on disk is an error, not a guess.
pub fn write_cluster_certs(out_dir: &Path, nodes: &[u64]) -> Result<ClusterCertsReport, CertError> {
    fs::create_dir_all(out_dir).map_err(|source| CertError::Write {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let mut report = ClusterCertsReport::default();
    let ca_cert_path = out_dir.join(CA_CERT_FILE);
    let ca_key_path = out_dir.join(CA_KEY_FILE);
    let authority = if check_pair(&ca_cert_path, &ca_key_path)? {
        CertificateAuthority::load(out_dir)?
    } else {
        let authority = CertificateAuthority::generate()?;
        write_new_file(&ca_key_path, authority.key_pem().as_bytes(), KEY_FILE_MODE)?;
        write_new_file(
            &ca_cert_path,
            authority.cert_pem().as_bytes(),
            CERT_FILE_MODE,
        )?;
        report.ca_created = true;
        report.written.extend([ca_key_path, ca_cert_path]);
        authority
    };
    let identities = nodes
        .iter()
        .map(|&node_id| PeerIdentity::node(node_id))
        .chain([PeerIdentity::admin(), PeerIdentity::client()]);
    for identity in identities {
        write_leaf_if_missing(out_dir, &authority, identity, &mut report)?;
    }
    Ok(report)
}

fn write_leaf_if_missing(
    out_dir: &Path,
    authority: &CertificateAuthority,
    identity: PeerIdentity,
    report: &mut ClusterCertsReport,
) -> Result<(), CertError> {
    let stem = identity.file_stem();
    let cert_path = out_dir.join(format!("{stem}.pem"));
    let key_path = out_dir.join(format!("{stem}.key"));
    if check_pair(&cert_path, &key_path)? {
        if !report.kept.contains(&cert_path) {
            report.kept.push(cert_path);
        }
        return Ok(());
    }
    let (cert_pem, key_pem) = authority.issue(identity)?;
    write_new_file(&key_path, key_pem.as_bytes(), KEY_FILE_MODE)?;
    write_new_file(&cert_path, cert_pem.as_bytes(), CERT_FILE_MODE)?;
    report.written.extend([key_path, cert_path]);
    Ok(())
}

/// `true` if both files exist, `false` if neither does, an error otherwise.
fn check_pair(cert_path: &Path, key_path: &Path) -> Result<bool, CertError> {
    match (exists(cert_path)?, exists(key_path)?) {
        (true, true) => Ok(true),
        (false, false) => Ok(false),
        (true, false) => Err(CertError::IncompletePair {
            present: cert_path.to_path_buf(),
            missing: key_path.to_path_buf(),
        }),
        (false, true) => Err(CertError::IncompletePair {
            present: key_path.to_path_buf(),
            missing: cert_path.to_path_buf(),
        }),
    }
}

fn exists(path: &Path) -> Result<bool, CertError> {
    path.try_exists().map_err(|source| CertError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn read_text(path: &Path) -> Result<String, CertError> {
    fs::read_to_string(path).map_err(|source| CertError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `contents` to a temporary file created with `mode`, syncs it, then
/// hard-links it to `path`, which fails rather than replace an existing file.
fn write_new_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertError> {
    let write_error = |source| CertError::Write {
        path: path.to_path_buf(),
        source,
    };
    let file_name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    let written = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temporary)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::hard_link(&temporary, path)
    })();
    // Best effort: the temporary name is ours alone (pid) and holds no data
    // anyone needs once the link exists or the write failed.
    let _ = fs::remove_file(&temporary);
    written.map_err(write_error)?;
    if let Some(parent) = path.parent() {
        fs::File::open(parent)
            .and_then(|dir| dir.sync_all())
            .map_err(|source| CertError::Write {
                path: parent.to_path_buf(),
                source,
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_uris_round_trip() {
        for identity in [
            PeerIdentity::node(0),
            PeerIdentity::node(3),
            PeerIdentity::node(u64::MAX),
            PeerIdentity::admin(),
            PeerIdentity::client(),
        ] {
            let parsed = PeerIdentity::from_role_uri(&identity.role_uri());
            assert_eq!(parsed.and_then(Result::ok), Some(identity));
        }
    }

    #[test]
    fn role_uris_are_canonical() {
        assert_eq!(
            PeerIdentity::node(3).role_uri(),
            "urn:shardflow:role:node:3"
        );
        for bad in [
            "urn:shardflow:role:node:",
            "urn:shardflow:role:node:03",
            "urn:shardflow:role:node:+3",
            "urn:shardflow:role:node:3x",
            "urn:shardflow:role:root",
            "urn:shardflow:role:admin:1",
        ] {
            assert!(
                matches!(PeerIdentity::from_role_uri(bad), Some(Err(_))),
                "{bad}"
            );
        }
        assert!(PeerIdentity::from_role_uri("https://example.com").is_none());
    }

    #[test]
    fn issued_certificates_carry_their_identity() -> Result<(), Box<dyn std::error::Error>> {
        let authority = CertificateAuthority::generate()?;
        for identity in [
            PeerIdentity::node(7),
            PeerIdentity::admin(),
            PeerIdentity::client(),
        ] {
            let (cert_pem, _) = authority.issue(identity)?;
            let der = pem_certificate_der(&cert_pem)?;
            assert_eq!(PeerIdentity::from_certificate_der(&der)?, identity);
        }
        let ca_der = pem_certificate_der(authority.cert_pem())?;
        assert!(matches!(
            PeerIdentity::from_certificate_der(&ca_der),
            Err(IdentityError::NoRole)
        ));
        Ok(())
    }
}
