//! Frames: a `u32` big-endian length prefix followed by that many body bytes.
//!
//! Owns reading and writing frames on quinn streams. Guarantees: a frame
//! larger than the configured maximum is never written and never buffered
//! (the length is checked before the body is read, and the body buffer grows
//! only with bytes actually received); a stream that ends cleanly between
//! frames reads as `None`, one that ends inside a frame as
//! [`FrameError::Truncated`].

use quinn::{ConnectionError, ReadError, RecvStream, SendStream, WriteError};

/// Default bound on one frame's body: 16 MiB.
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 16 * 1024 * 1024;

/// Size of the length prefix.
pub const FRAME_HEADER_BYTES: usize = 4;

/// Largest initial buffer reserved for a frame body before its bytes arrive.
const INITIAL_BODY_CAPACITY_BYTES: usize = 64 * 1024;

/// A frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The frame is larger than the maximum frame size.
    #[error("frame of {length_bytes} bytes exceeds the maximum of {max_bytes} bytes")]
    TooLarge {
        /// The announced (or attempted) body length.
        length_bytes: u64,
        /// The configured maximum.
        max_bytes: u32,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({received_bytes} of {expected_bytes} bytes)")]
    Truncated {
        /// Bytes the frame (or its header) needed.
        expected_bytes: u64,
        /// Bytes received before the end.
        received_bytes: u64,
    },
    /// Reading the stream failed.
    #[error("read: {0}")]
    Read(#[from] ReadError),
    /// Writing the stream failed.
    #[error("write: {0}")]
    Write(#[from] WriteError),
    /// The stream was already finished or reset locally.
    #[error("the stream is already closed")]
    Closed(#[from] quinn::ClosedStream),
}

impl FrameError {
    /// The connection-level error behind this one, if the whole connection
    /// is gone (as opposed to just this stream).
    pub fn connection_error(&self) -> Option<&ConnectionError> {
        match self {
            FrameError::Read(ReadError::ConnectionLost(error))
            | FrameError::Write(WriteError::ConnectionLost(error)) => Some(error),
            _ => None,
        }
    }
}

/// The length prefix for a body of `length_bytes`, if it fits `max_bytes`.
pub fn encode_header(
    length_bytes: usize,
    max_bytes: u32,
) -> Result<[u8; FRAME_HEADER_BYTES], FrameError> {
    let too_large = FrameError::TooLarge {
        length_bytes: u64::try_from(length_bytes).unwrap_or(u64::MAX),
        max_bytes,
    };
    match u32::try_from(length_bytes) {
        Ok(length) if length <= max_bytes => Ok(length.to_be_bytes()),
        _ => Err(too_large),
    }
}

/// Writes one frame whose body is the concatenation of `parts` (so a header
/// and a large payload go out without being copied together).
pub async fn write_frame(
    send: &mut SendStream,
    parts: &[&[u8]],
    max_bytes: u32,
) -> Result<(), FrameError> {
    let length_bytes = parts.iter().map(|part| part.len()).sum();
    let header = encode_header(length_bytes, max_bytes)?;
    send.write_all(&header).await?;
    for part in parts {
        send.write_all(part).await?;
    }
    Ok(())
}

/// Reads one frame; `Ok(None)` if the stream finished cleanly before it.
pub async fn read_frame(
    recv: &mut RecvStream,
    max_bytes: u32,
) -> Result<Option<Vec<u8>>, FrameError> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(received)) => {
            return Err(FrameError::Truncated {
                expected_bytes: FRAME_HEADER_BYTES as u64,
                received_bytes: received as u64,
            })
        }
        Err(quinn::ReadExactError::ReadError(error)) => return Err(error.into()),
    }
    let length = u32::from_be_bytes(header);
    if length > max_bytes {
        return Err(FrameError::TooLarge {
            length_bytes: u64::from(length),
            max_bytes,
        });
    }
    // u32 always fits usize on the 32- and 64-bit targets we build for.
    let length = length as usize;
    let mut body = Vec::with_capacity(length.min(INITIAL_BODY_CAPACITY_BYTES));
    while body.len() < length {
        match recv.read_chunk(length - body.len(), true).await? {
            Some(chunk) => body.extend_from_slice(&chunk.bytes),
            None => {
                return Err(FrameError::Truncated {
                    expected_bytes: length as u64,
                    received_bytes: body.len() as u64,
                })
            }
        }
    }
    Ok(Some(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_big_endian_length() -> Result<(), FrameError> {
        assert_eq!(encode_header(0, 16)?, [0, 0, 0, 0]);
        assert_eq!(encode_header(258, 1024)?, [0, 0, 1, 2]);
        Ok(())
    }

    #[test]
    fn header_refuses_oversized_bodies() {
        assert!(matches!(
            encode_header(17, 16),
            Err(FrameError::TooLarge {
                length_bytes: 17,
                max_bytes: 16
            })
        ));
        assert!(encode_header(u32::MAX as usize + 1, u32::MAX).is_err());
    }
}
