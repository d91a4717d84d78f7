//! The transport's wire envelope: what precedes the payload in each frame.
//!
//! Owns the encoding of request and response headers. A frame body is a
//! postcard-encoded header immediately followed by the payload bytes (postcard
//! ignores trailing bytes, so the payload is never copied through serde):
//!
//! - first frame client -> server on a stream: [`RequestHeader`] + payload;
//! - every frame server -> client: [`ResponseHeader`] + payload (empty for
//!   an error);
//! - later frames client -> server on an opened stream: payload only.
//!
//! Guarantees: these enums only grow at the end and existing variants never
//! change shape (postcard encodes variants by index); the golden-bytes tests
//! below pin every shipped encoding.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The header of the first frame on a stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestHeader {
    /// Version 1.
    V1(RequestHeaderV1),
}

/// What a stream is for (version 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestHeaderV1 {
    /// One request, one response, then the stream ends.
    Call,
    /// A request that opens a stream of frames in both directions.
    OpenStream,
}

/// The header of every frame the server sends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResponseHeader {
    /// Version 1.
    V1(ResponseHeaderV1),
}

/// Success or a typed refusal (version 1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResponseHeaderV1 {
    /// The payload that follows is the handler's answer.
    Ok,
    /// The request was refused or failed; no payload follows.
    Err(RemoteError),
}

/// An error the serving side sent back, transported inside a response.
///
/// Frozen shape: to carry more fields, add a new [`ResponseHeaderV1`]
/// variant rather than a field here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct RemoteError {
    /// What kind of failure.
    pub kind: RemoteErrorKind,
    /// A human-readable explanation.
    pub message: String,
}

impl RemoteError {
    /// A remote error of `kind` explained by `message`.
    pub fn new(kind: RemoteErrorKind, message: impl Into<String>) -> Self {
        RemoteError {
            kind,
            message: message.into(),
        }
    }

    /// A failure inside the handler (its own message).
    pub fn handler(message: impl Into<String>) -> Self {
        RemoteError::new(RemoteErrorKind::Handler, message)
    }
}

/// The kinds of [`RemoteError`]. Grows at the end only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RemoteErrorKind {
    /// The caller's certificate role may not make this request.
    PermissionDenied,
    /// The request frame could not be decoded.
    MalformedFrame,
    /// A frame exceeded the maximum frame size.
    FrameTooLarge,
    /// The server does not support this kind of request.
    Unsupported,
    /// The handler failed; see the message.
    Handler,
    /// The server could not serve the request now (overloaded, shutting
    /// down, request not received in time); retrying may succeed.
    Unavailable,
}

impl RemoteErrorKind {
    fn as_str(self) -> &'static str {
        match self {
            RemoteErrorKind::PermissionDenied => "permission denied",
            RemoteErrorKind::MalformedFrame => "malformed frame",
            RemoteErrorKind::FrameTooLarge => "frame too large",
            RemoteErrorKind::Unsupported => "unsupported",
            RemoteErrorKind::Handler => "handler error",
            RemoteErrorKind::Unavailable => "unavailable",
        }
    }
}

impl fmt::Display for RemoteErrorKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// Encodes a header (the payload is written after it, uncopied).
pub(crate) fn encode_header<T: Serialize>(header: &T) -> Vec<u8> {
    // postcard serializing these plain enums into a Vec cannot fail: no maps
    // of unknown length, no custom Serialize impls, and Vec grows as needed.
    postcard::to_allocvec(header).unwrap_or_default()
}

/// Splits a frame body into its decoded header and the payload after it.
pub(crate) fn decode_header<T: for<'de> Deserialize<'de>>(
    mut frame: Vec<u8>,
) -> Result<(T, Vec<u8>), postcard::Error> {
    let (header, rest) = postcard::take_from_bytes::<T>(&frame)?;
    let header_bytes = frame.len() - rest.len();
    frame.drain(..header_bytes);
    Ok((header, frame))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden<T>(value: T, bytes: &[u8])
    where
        T: Serialize + for<'de> Deserialize<'de> + PartialEq + fmt::Debug,
    {
        assert_eq!(encode_header(&value), bytes, "encoding of {value:?}");
        let decoded: Result<(T, Vec<u8>), _> = decode_header(bytes.to_vec());
        assert_eq!(decoded.ok(), Some((value, Vec::new())));
    }

    #[test]
    fn request_headers_golden_bytes() {
        golden(RequestHeader::V1(RequestHeaderV1::Call), &[0, 0]);
        golden(RequestHeader::V1(RequestHeaderV1::OpenStream), &[0, 1]);
    }

    #[test]
    fn response_headers_golden_bytes() {
        golden(ResponseHeader::V1(ResponseHeaderV1::Ok), &[0, 0]);
        let kinds = [
            (RemoteErrorKind::PermissionDenied, 0),
            (RemoteErrorKind::MalformedFrame, 1),
            (RemoteErrorKind::FrameTooLarge, 2),
            (RemoteErrorKind::Unsupported, 3),
            (RemoteErrorKind::Handler, 4),
            (RemoteErrorKind::Unavailable, 5),
        ];
        for (kind, index) in kinds {
            golden(
                ResponseHeader::V1(ResponseHeaderV1::Err(RemoteError::new(kind, "no"))),
                &[0, 1, index, 2, b'n', b'o'],
            );
        }
    }

    #[test]
    fn payload_follows_the_header() -> Result<(), postcard::Error> {
        let mut frame = encode_header(&RequestHeader::V1(RequestHeaderV1::Call));
        frame.extend_from_slice(b"payload");
        let (header, payload) = decode_header::<RequestHeader>(frame)?;
        assert_eq!(header, RequestHeader::V1(RequestHeaderV1::Call));
        assert_eq!(payload, b"payload");
        Ok(())
    }

    #[test]
    fn garbage_is_refused() {
        assert!(decode_header::<RequestHeader>(vec![0xff; 8]).is_err());
        assert!(decode_header::<RequestHeader>(vec![0, 9]).is_err());
        assert!(decode_header::<RequestHeader>(Vec::new()).is_err());
    }
}
