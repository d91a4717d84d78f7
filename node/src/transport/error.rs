//! Transport errors: every way a call, a stream or the endpoint can fail.
//!
//! Owns [`TransportError`] and the mapping from quinn's connection and
//! stream errors to it. Guarantees: every error about a peer names its
//! address; a refused TLS handshake (either side rejecting the other's
//! certificate) is [`TransportError::Handshake`], never a generic connection
//! loss; a refusal decided by the serving side is [`TransportError::Remote`]
//! with its typed [`RemoteErrorKind`].

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use quinn::ConnectionError;

use super::frame::FrameError;
use super::tls::TlsError;
use super::wire::{RemoteError, RemoteErrorKind};
use crate::certs::{IdentityError, PeerIdentity};

/// QUIC reserves error codes 0x100..=0x1ff for TLS alerts (RFC 9001 §4.8).
const CRYPTO_ERROR_CODES: std::ops::RangeInclusive<u64> = 0x100..=0x1ff;

/// A transport failure.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The call (or one stream frame) did not complete in time. The request
    /// may or may not have been processed.
    #[error("call to {peer} timed out after {elapsed:?}")]
    Timeout {
        /// The peer called.
        peer: SocketAddr,
        /// How long the call ran before giving up.
        elapsed: Duration,
    },
    /// The local endpoint refused to start a connection.
    #[error("cannot connect to {peer}: {source}")]
    Connect {
        /// The peer dialed.
        peer: SocketAddr,
        /// The cause.
        source: quinn::ConnectError,
    },
    /// One side refused the other's certificate (not signed by the cluster
    /// CA, wrong name, expired...).
    #[error("TLS handshake with {peer} failed: {reason}")]
    Handshake {
        /// The peer dialed.
        peer: SocketAddr,
        /// The TLS failure as reported.
        reason: String,
    },
    /// The connection broke; the pool redials on the next call. The request
    /// may or may not have been processed.
    #[error("connection to {peer} lost: {source}")]
    ConnectionLost {
        /// The peer.
        peer: SocketAddr,
        /// The cause.
        source: ConnectionError,
    },
    /// This stream failed (reset or stopped by the peer, truncated frame...)
    /// while the connection lives on.
    #[error("stream with {peer} failed: {source}")]
    Stream {
        /// The peer.
        peer: SocketAddr,
        /// The cause.
        source: FrameError,
    },
    /// The serving side refused or failed the request.
    #[error("{peer} answered {error}")]
    Remote {
        /// The peer.
        peer: SocketAddr,
        /// What it said.
        error: RemoteError,
    },
    /// The peer sent something that is not a valid response.
    #[error("malformed response from {peer}: {reason}")]
    MalformedResponse {
        /// The peer.
        peer: SocketAddr,
        /// What was wrong.
        reason: String,
    },
    /// The dialed peer's certificate names no usable identity.
    #[error("{peer} presented an unusable certificate: {source}")]
    PeerCertificate {
        /// The peer.
        peer: SocketAddr,
        /// The cause.
        source: IdentityError,
    },
    /// The dialed peer is not a node (only nodes serve).
    #[error("{peer} presented a {identity} certificate, not a node certificate")]
    NotANode {
        /// The peer.
        peer: SocketAddr,
        /// Who it is.
        identity: PeerIdentity,
    },
    /// A typed message could not be encoded.
    #[error("encode a message for {peer}: {source}")]
    Encode {
        /// The peer.
        peer: SocketAddr,
        /// The cause.
        source: postcard::Error,
    },
    /// A typed message from the peer could not be decoded.
    #[error("decode a message from {peer}: {source}")]
    Decode {
        /// The peer.
        peer: SocketAddr,
        /// The cause.
        source: postcard::Error,
    },
    /// The UDP socket could not be bound.
    #[error("bind {address}: {source}")]
    Bind {
        /// The address asked for.
        address: SocketAddr,
        /// The cause.
        source: io::Error,
    },
    /// The TLS material or configuration is unusable.
    #[error("TLS configuration: {0}")]
    Tls(#[from] TlsError),
    /// A transport setting is out of range.
    #[error("transport configuration: {0}")]
    Config(String),
    /// The transport must be created inside a tokio runtime.
    #[error("no tokio runtime: create the transport inside one")]
    NoRuntime,
    /// Only node certificates may serve.
    #[error("only a node certificate may serve; this transport holds a {identity} certificate")]
    NotANodeCertificate {
        /// The identity held.
        identity: PeerIdentity,
    },
    /// `serve` was called twice.
    #[error("this transport already serves a handler")]
    AlreadyServing,
    /// `serve` was called on a dial-only transport.
    #[error("this transport only dials (built with Transport::client)")]
    NotAServer,
}

impl TransportError {
    /// The peer this error is about, if any.
    pub fn peer(&self) -> Option<SocketAddr> {
        match self {
            TransportError::Timeout { peer, .. }
            | TransportError::Connect { peer, .. }
            | TransportError::Handshake { peer, .. }
            | TransportError::ConnectionLost { peer, .. }
            | TransportError::Stream { peer, .. }
            | TransportError::Remote { peer, .. }
            | TransportError::MalformedResponse { peer, .. }
            | TransportError::PeerCertificate { peer, .. }
            | TransportError::NotANode { peer, .. }
            | TransportError::Encode { peer, .. }
            | TransportError::Decode { peer, .. } => Some(*peer),
            _ => None,
        }
    }

    /// The kind of error the serving side answered, if it answered one.
    pub fn remote_kind(&self) -> Option<RemoteErrorKind> {
        match self {
            TransportError::Remote { error, .. } => Some(error.kind),
            _ => None,
        }
    }

    /// The peer refused the request because of the caller's role.
    pub fn is_permission_denied(&self) -> bool {
        self.remote_kind() == Some(RemoteErrorKind::PermissionDenied)
    }

    /// The peer could not be reached or the connection broke (map to
    /// openraft's `Unreachable`); retrying later, possibly elsewhere, is the
    /// answer. The request may or may not have been processed.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            TransportError::Timeout { .. }
                | TransportError::Connect { .. }
                | TransportError::ConnectionLost { .. }
                | TransportError::Handshake { .. }
        )
    }
}

/// Maps a connection-level failure, recognizing TLS refusals.
pub(crate) fn connection_error(peer: SocketAddr, error: ConnectionError) -> TransportError {
    let tls_reason = match &error {
        ConnectionError::ConnectionClosed(close)
            if CRYPTO_ERROR_CODES.contains(&u64::from(close.error_code)) =>
        {
            Some(String::from_utf8_lossy(&close.reason).into_owned())
        }
        ConnectionError::TransportError(local)
            if CRYPTO_ERROR_CODES.contains(&u64::from(local.code)) =>
        {
            Some(local.reason.clone())
        }
        _ => None,
    };
    match tls_reason {
        Some(reason) => TransportError::Handshake { peer, reason },
        None => TransportError::ConnectionLost {
            peer,
            source: error,
        },
    }
}

/// Maps a frame failure: connection-level ones as [`connection_error`].
pub(crate) fn frame_error(peer: SocketAddr, error: FrameError) -> TransportError {
    match error.connection_error() {
        Some(lost) => connection_error(peer, lost.clone()),
        None => TransportError::Stream {
            peer,
            source: error,
        },
    }
}
