//! Streams of frames for bulk transfer (snapshots, migration copies).
//!
//! Owns [`ClientStream`] (the caller's end of `Transport::open_stream`) and
//! [`ServerStream`] (the handler's end). Guarantees: every frame is bounded
//! by the maximum frame size and every send or receive by the frame timeout,
//! on both ends; a refusal or failure the server sends mid-stream surfaces
//! on the client as `TransportError::Remote` from [`ClientStream::recv`].
//!
//! Protocol: the client's frames after the opening request are bare
//! payloads; it calls [`ClientStream::finish`] when it has no more to send.
//! Every server frame carries a response header (`Ok` + payload, or a final
//! error); the server finishes its side when the handler returns.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use quinn::{RecvStream, SendStream, WriteError};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::{frame_error, TransportError};
use super::frame::{read_frame, write_frame, FrameError};
use super::wire::{
    decode_header, encode_header, RemoteError, RemoteErrorKind, ResponseHeader, ResponseHeaderV1,
};
use crate::certs::PeerIdentity;

/// The caller's end of a stream opened with `Transport::open_stream`.
pub struct ClientStream {
    peer: SocketAddr,
    send: SendStream,
    recv: RecvStream,
    max_frame_bytes: u32,
    frame_timeout: Duration,
}

impl ClientStream {
    pub(crate) fn new(
        peer: SocketAddr,
        send: SendStream,
        recv: RecvStream,
        max_frame_bytes: u32,
        frame_timeout: Duration,
    ) -> Self {
        ClientStream {
            peer,
            send,
            recv,
            max_frame_bytes,
            frame_timeout,
        }
    }

    /// The peer at the other end.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Changes the bound on each later send and receive.
    pub fn set_frame_timeout(&mut self, frame_timeout: Duration) {
        self.frame_timeout = frame_timeout;
    }

    /// Sends one frame to the handler. If the handler has stopped reading
    /// (it refused or failed), the error it sent back is returned instead of
    /// a bare "stopped".
    pub async fn send(&mut self, payload: &[u8]) -> Result<(), TransportError> {
        let (peer, max) = (self.peer, self.max_frame_bytes);
        let send = &mut self.send;
        let written = bounded(peer, self.frame_timeout, async move {
            write_frame(send, &[payload], max)
                .await
                .map_err(|error| frame_error(peer, error))
        })
        .await;
        match written {
            Err(TransportError::Stream {
                source: FrameError::Write(WriteError::Stopped(_)),
                ..
            }) => match self.recv().await {
                Err(remote @ TransportError::Remote { .. }) => Err(remote),
                _ => written,
            },
            _ => written,
        }
    }

    /// Sends one postcard-encoded message.
    pub async fn send_typed<T: Serialize>(&mut self, message: &T) -> Result<(), TransportError> {
        let payload = postcard::to_allocvec(message).map_err(|source| TransportError::Encode {
            peer: self.peer,
            source,
        })?;
        self.send(&payload).await
    }

    /// Tells the handler we will send nothing more.
    pub fn finish(&mut self) -> Result<(), TransportError> {
        self.send
            .finish()
            .map_err(|closed| frame_error(self.peer, FrameError::Closed(closed)))
    }

    /// The next frame from the handler; `None` once it has finished.
    pub async fn recv(&mut self) -> Result<Option<Vec<u8>>, TransportError> {
        let (peer, max) = (self.peer, self.max_frame_bytes);
        let recv = &mut self.recv;
        let frame = bounded(peer, self.frame_timeout, async move {
            read_frame(recv, max)
                .await
                .map_err(|error| frame_error(peer, error))
        })
        .await?;
        frame.map(|frame| decode_response(peer, frame)).transpose()
    }

    /// The next frame, decoded from postcard.
    pub async fn recv_typed<T: DeserializeOwned>(&mut self) -> Result<Option<T>, TransportError> {
        let peer = self.peer;
        self.recv()
            .await?
            .map(|payload| {
                postcard::from_bytes(&payload)
                    .map_err(|source| TransportError::Decode { peer, source })
            })
            .transpose()
    }
}

/// Splits a server frame: its payload, or the error it carries.
pub(crate) fn decode_response(peer: SocketAddr, frame: Vec<u8>) -> Result<Vec<u8>, TransportError> {
    match decode_header::<ResponseHeader>(frame) {
        Ok((ResponseHeader::V1(ResponseHeaderV1::Ok), payload)) => Ok(payload),
        Ok((ResponseHeader::V1(ResponseHeaderV1::Err(error)), _)) => {
            Err(TransportError::Remote { peer, error })
        }
        Err(error) => Err(TransportError::MalformedResponse {
            peer,
            reason: format!("undecodable response header: {error}"),
        }),
    }
}

/// Bounds `operation` by `timeout`, reporting the elapsed time on expiry.
pub(crate) async fn bounded<T>(
    peer: SocketAddr,
    timeout: Duration,
    operation: impl Future<Output = Result<T, TransportError>>,
) -> Result<T, TransportError> {
    let started = Instant::now();
    match tokio::time::timeout(timeout, operation).await {
        Ok(result) => result,
        Err(_) => Err(TransportError::Timeout {
            peer,
            elapsed: started.elapsed(),
        }),
    }
}

/// A failure on the handler's end of a stream.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Reading or writing a frame failed.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The caller sent nothing (or accepted nothing) for this long.
    #[error("no progress on the stream for {0:?}")]
    Timeout(Duration),
    /// A frame from the caller is not the expected message.
    #[error("undecodable frame: {0}")]
    Decode(postcard::Error),
    /// A message could not be encoded.
    #[error("unencodable message: {0}")]
    Encode(postcard::Error),
}

impl From<StreamError> for RemoteError {
    fn from(error: StreamError) -> Self {
        let kind = match &error {
            StreamError::Frame(FrameError::TooLarge { .. }) => RemoteErrorKind::FrameTooLarge,
            StreamError::Frame(FrameError::Truncated { .. }) | StreamError::Decode(_) => {
                RemoteErrorKind::MalformedFrame
            }
            StreamError::Encode(_) => RemoteErrorKind::Handler,
            StreamError::Frame(_) | StreamError::Timeout(_) => RemoteErrorKind::Unavailable,
        };
        RemoteError::new(kind, error.to_string())
    }
}

/// The handler's end of a stream.
pub struct ServerStream {
    peer: PeerIdentity,
    send: SendStream,
    recv: RecvStream,
    max_frame_bytes: u32,
    frame_timeout: Duration,
}

impl ServerStream {
    pub(crate) fn new(
        peer: PeerIdentity,
        send: SendStream,
        recv: RecvStream,
        max_frame_bytes: u32,
        frame_timeout: Duration,
    ) -> Self {
        ServerStream {
            peer,
            send,
            recv,
            max_frame_bytes,
            frame_timeout,
        }
    }

    /// Who opened the stream.
    pub fn peer(&self) -> PeerIdentity {
        self.peer
    }

    /// The caller's next frame; `None` once it has finished sending.
    pub async fn recv(&mut self) -> Result<Option<Vec<u8>>, StreamError> {
        let read = read_frame(&mut self.recv, self.max_frame_bytes);
        match tokio::time::timeout(self.frame_timeout, read).await {
            Ok(frame) => Ok(frame?),
            Err(_) => Err(StreamError::Timeout(self.frame_timeout)),
        }
    }

    /// The caller's next frame, decoded from postcard.
    pub async fn recv_typed<T: DeserializeOwned>(&mut self) -> Result<Option<T>, StreamError> {
        self.recv()
            .await?
            .map(|payload| postcard::from_bytes(&payload).map_err(StreamError::Decode))
            .transpose()
    }

    /// Sends one frame to the caller.
    pub async fn send(&mut self, payload: &[u8]) -> Result<(), StreamError> {
        let header = encode_header(&ResponseHeader::V1(ResponseHeaderV1::Ok));
        self.write(&[&header, payload]).await
    }

    /// Sends one postcard-encoded message.
    pub async fn send_typed<T: Serialize>(&mut self, message: &T) -> Result<(), StreamError> {
        let payload = postcard::to_allocvec(message).map_err(StreamError::Encode)?;
        self.send(&payload).await
    }

    /// Sends a final error frame (best effort: the caller may be gone).
    pub(crate) async fn send_error(&mut self, error: RemoteError) -> Result<(), StreamError> {
        let header = encode_header(&ResponseHeader::V1(ResponseHeaderV1::Err(error)));
        self.write(&[&header]).await
    }

    /// Ends our side of the stream.
    pub(crate) fn finish(&mut self) {
        // Already finished or reset: nothing more to say either way.
        let _ = self.send.finish();
    }

    async fn write(&mut self, parts: &[&[u8]]) -> Result<(), StreamError> {
        let write = write_frame(&mut self.send, parts, self.max_frame_bytes);
        match tokio::time::timeout(self.frame_timeout, write).await {
            Ok(written) => Ok(written?),
            Err(_) => Err(StreamError::Timeout(self.frame_timeout)),
        }
    }
}
