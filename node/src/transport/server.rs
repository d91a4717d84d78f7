//! The serving side: accepts connections and dispatches streams to the
//! [`Handler`].
//!
//! Owns the accept loop, one task per connection and one task per stream.
//! Guarantees:
//! - a connection is served only after mutual TLS succeeded and the peer's
//!   certificate names exactly one role; the identity handed to the handler
//!   is read from that certificate;
//! - each stream runs in its own task, so one slow request never stalls
//!   another; at most `max_connections` connections are served at once (more
//!   are refused) and quinn bounds streams per connection;
//! - a malformed, truncated, oversized or late request frame is answered
//!   with a typed error on that stream only: the connection serves on;
//! - tasks are owned (`JoinSet`): when the endpoint closes, the accept loop
//!   ends and every connection and stream task is aborted with it. A handler
//!   whose caller gave up (timed out) still runs to completion; handlers
//!   must therefore be bounded themselves.

use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, Endpoint, Incoming, RecvStream, SendStream, VarInt};
use rustls::pki_types::CertificateDer;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinError, JoinSet};
use tracing::{debug, error, warn};

use super::frame::{read_frame, write_frame, FrameError};
use super::handler::Handler;
use super::stream::{ServerStream, StreamError};
use super::wire::{
    decode_header, encode_header, RemoteError, RemoteErrorKind, RequestHeader, RequestHeaderV1,
    ResponseHeader, ResponseHeaderV1,
};
use crate::certs::{IdentityError, PeerIdentity};

/// Application close code: the peer's certificate names no usable identity.
pub(crate) const CLOSE_NO_IDENTITY: u32 = 1;
/// Application close code: the dialed peer is not a node.
pub(crate) const CLOSE_NOT_A_NODE: u32 = 2;
/// Stream stop code: the request frame exceeded the maximum frame size.
const STOP_FRAME_TOO_LARGE: u32 = 1;

/// The bounds the server enforces.
#[derive(Clone, Debug)]
pub(crate) struct ServerLimits {
    pub(crate) max_frame_bytes: u32,
    /// Bound on receiving a request frame and on each stream frame.
    pub(crate) frame_timeout: Duration,
    pub(crate) max_connections: usize,
}

/// Accepts connections until the endpoint closes.
pub(crate) async fn run(endpoint: Endpoint, handler: Arc<dyn Handler>, limits: ServerLimits) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let limits = Arc::new(limits);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    warn!(remote = %incoming.remote_address(), "refusing connection: at max_connections");
                    incoming.refuse();
                    continue;
                };
                connections.spawn(serve_connection(incoming, handler.clone(), limits.clone(), permit));
            }
            Some(joined) = connections.join_next() => log_join("connection", joined),
        }
    }
    debug!("endpoint closed: accept loop ends, aborting connection tasks");
}

async fn serve_connection(
    incoming: Incoming,
    handler: Arc<dyn Handler>,
    limits: Arc<ServerLimits>,
    _permit: OwnedSemaphorePermit,
) {
    let remote = incoming.remote_address();
    let connection = match incoming.await {
        Ok(connection) => connection,
        Err(error) => {
            warn!(%remote, %error, "refused connection: handshake failed");
            return;
        }
    };
    let peer = match identity_of(&connection) {
        Ok(peer) => peer,
        Err(error) => {
            warn!(%remote, %error, "refused connection: unusable certificate");
            connection.close(
                VarInt::from_u32(CLOSE_NO_IDENTITY),
                error.to_string().as_bytes(),
            );
            return;
        }
    };
    debug!(%remote, %peer, "connection accepted");
    let mut streams = JoinSet::new();
    loop {
        tokio::select! {
            accepted = connection.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    streams.spawn(serve_stream(peer, send, recv, handler.clone(), limits.clone()));
                }
                Err(error) => {
                    debug!(%remote, %peer, %error, "connection ended");
                    break;
                }
            },
            Some(joined) = streams.join_next() => log_join("stream", joined),
        }
    }
}

fn log_join(what: &str, joined: Result<(), JoinError>) {
    if let Err(join_error) = joined {
        if join_error.is_panic() {
            error!(%join_error, "a {what} task panicked");
        }
    }
}

/// The identity in the peer's verified leaf certificate.
pub(crate) fn identity_of(connection: &Connection) -> Result<PeerIdentity, IdentityError> {
    let certificates = connection
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or(IdentityError::NoCertificate)?;
    let leaf = certificates.first().ok_or(IdentityError::NoCertificate)?;
    PeerIdentity::from_certificate_der(leaf)
}

async fn serve_stream(
    peer: PeerIdentity,
    mut send: SendStream,
    mut recv: RecvStream,
    handler: Arc<dyn Handler>,
    limits: Arc<ServerLimits>,
) {
    let (kind, payload) = match read_request(&mut recv, &limits).await {
        Ok(request) => request,
        Err(refusal) => {
            debug!(%peer, %refusal, "refused a request frame");
            reply(&mut send, Err(refusal), &limits).await;
            return;
        }
    };
    match kind {
        RequestHeaderV1::Call => {
            let result = handler.handle(peer, payload).await;
            reply(&mut send, result, &limits).await;
        }
        RequestHeaderV1::OpenStream => {
            let mut stream = ServerStream::new(
                peer,
                send,
                recv,
                limits.max_frame_bytes,
                limits.frame_timeout,
            );
            if let Err(error) = handler.handle_stream(peer, payload, &mut stream).await {
                if let Err(send_error) = stream.send_error(error).await {
                    debug!(%peer, %send_error, "could not send the final stream error");
                }
            }
            stream.finish();
        }
    }
}

/// Reads and decodes the first frame of a stream, or says why not.
async fn read_request(
    recv: &mut RecvStream,
    limits: &ServerLimits,
) -> Result<(RequestHeaderV1, Vec<u8>), RemoteError> {
    let read = read_frame(recv, limits.max_frame_bytes);
    let frame = match tokio::time::timeout(limits.frame_timeout, read).await {
        Ok(Ok(Some(frame))) => frame,
        Ok(Ok(None)) => {
            return Err(RemoteError::new(
                RemoteErrorKind::MalformedFrame,
                "the stream ended before a request frame",
            ))
        }
        Ok(Err(error)) => {
            if matches!(error, FrameError::TooLarge { .. }) {
                // Tell the sender to stop rather than read what we refuse.
                let _ = recv.stop(VarInt::from_u32(STOP_FRAME_TOO_LARGE));
            }
            return Err(StreamError::Frame(error).into());
        }
        Err(_) => {
            return Err(RemoteError::new(
                RemoteErrorKind::Unavailable,
                format!("no request frame within {:?}", limits.frame_timeout),
            ))
        }
    };
    match decode_header::<RequestHeader>(frame) {
        Ok((RequestHeader::V1(kind), payload)) => Ok((kind, payload)),
        Err(error) => Err(RemoteError::new(
            RemoteErrorKind::MalformedFrame,
            format!("undecodable request header: {error}"),
        )),
    }
}

/// Writes the one response of a call and finishes the stream.
async fn reply(send: &mut SendStream, result: Result<Vec<u8>, RemoteError>, limits: &ServerLimits) {
    let (header, payload) = match result {
        Ok(payload) => (ResponseHeaderV1::Ok, payload),
        Err(error) => (ResponseHeaderV1::Err(error), Vec::new()),
    };
    let mut written = write_response(send, header, &payload, limits).await;
    if let Err(StreamError::Frame(FrameError::TooLarge {
        length_bytes,
        max_bytes,
    })) = written
    {
        // The size check precedes any write, so the stream is still clean.
        let refusal = RemoteError::new(
            RemoteErrorKind::FrameTooLarge,
            format!("the response of {length_bytes} bytes exceeds the maximum of {max_bytes}"),
        );
        written = write_response(send, ResponseHeaderV1::Err(refusal), &[], limits).await;
    }
    if let Err(error) = written {
        debug!(%error, "could not send a response");
    }
    // Already finished or reset: the caller is gone either way.
    let _ = send.finish();
}

async fn write_response(
    send: &mut SendStream,
    header: ResponseHeaderV1,
    payload: &[u8],
    limits: &ServerLimits,
) -> Result<(), StreamError> {
    let header = encode_header(&ResponseHeader::V1(header));
    let parts: [&[u8]; 2] = [&header, payload];
    let write = write_frame(send, &parts, limits.max_frame_bytes);
    match tokio::time::timeout(limits.frame_timeout, write).await {
        Ok(written) => Ok(written?),
        Err(_) => Err(StreamError::Timeout(limits.frame_timeout)),
    }
}
