//! The persisted envelope around every event, its encoding and its hash chain.
//!
//! An envelope is `Envelope::V1 { seq, at_ms, node, engine_version,
//! definition_version, prev_hash, body }`, encoded with postcard. The first
//! byte of the encoding is the envelope version (a postcard varint), so a
//! reader tells "written by a newer shardflow" apart from "corrupt".
//!
//! **Invariants:**
//! - `prev_hash` of event `n` is the BLAKE3 hash of the encoded bytes of event
//!   `n - 1`; event 0 chains to [`genesis_hash`] of its instance id. A flipped
//!   byte anywhere therefore breaks the chain at the event that follows it.
//! - Decoding refuses trailing bytes, unknown versions and unknown variants
//!   with a typed [`CodecError`]; it never panics on any input.
//! - `Envelope` only ever grows by appending `V2`, `V3`, ...; old versions are
//!   upcast on read.

use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::id::WorkflowId;

/// The version of the engine that writes envelopes; recorded in each one.
pub const ENGINE_VERSION: u32 = 1;

/// The newest envelope version this build reads and the one it writes.
pub const ENVELOPE_VERSION: u32 = 1;

/// A 32-byte BLAKE3 digest.
pub type Hash = [u8; 32];

/// The persisted form of one event, versioned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Envelope {
    V1(EnvelopeV1),
}

/// Version 1 of the envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeV1 {
    /// Position in the instance's journal, from 0, without gaps.
    pub seq: u64,
    /// Wall-clock time of the append, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The node that appended it.
    pub node: u64,
    /// [`ENGINE_VERSION`] of the writer.
    pub engine_version: u32,
    /// The workflow definition's version (from its `Submitted`).
    pub definition_version: u32,
    /// Hash of the previous event's bytes (or the genesis hash for seq 0).
    pub prev_hash: Hash,
    /// The event itself.
    pub body: Event,
}

impl Envelope {
    /// The envelope as the current version (older versions are upcast here).
    pub fn current(&self) -> &EnvelopeV1 {
        match self {
            Envelope::V1(v1) => v1,
        }
    }

    /// The event.
    pub fn body(&self) -> &Event {
        &self.current().body
    }

    /// The sequence number.
    pub fn seq(&self) -> u64 {
        self.current().seq
    }
}

/// Why bytes are not a valid envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("empty record")]
    Empty,
    #[error("envelope version {found} is newer than this build reads (up to {supported})")]
    UnsupportedVersion { found: u64, supported: u32 },
    #[error("undecodable envelope: {0}")]
    Malformed(String),
    #[error("{0} trailing bytes after the envelope")]
    TrailingBytes(usize),
}

/// Encodes an envelope. Encoding an in-memory value cannot fail for these
/// types (no maps with non-string keys, no unsized sequences).
pub fn encode(envelope: &Envelope) -> Vec<u8> {
    postcard::to_stdvec(envelope).expect("postcard encodes every Envelope: plain data types")
}

/// Decodes an envelope, refusing unknown versions and trailing bytes.
pub fn decode(bytes: &[u8]) -> Result<Envelope, CodecError> {
    let version = leading_varint(bytes)?;
    if version > u64::from(ENVELOPE_VERSION) - 1 {
        return Err(CodecError::UnsupportedVersion {
            // A varint of up to 10 bytes reaches u64::MAX: never overflow.
            found: version.saturating_add(1),
            supported: ENVELOPE_VERSION,
        });
    }
    let (envelope, rest) = postcard::take_from_bytes::<Envelope>(bytes)
        .map_err(|error| CodecError::Malformed(error.to_string()))?;
    if !rest.is_empty() {
        return Err(CodecError::TrailingBytes(rest.len()));
    }
    Ok(envelope)
}

/// Reads the postcard varint that opens an encoding (the enum variant index).
fn leading_varint(bytes: &[u8]) -> Result<u64, CodecError> {
    let mut value: u64 = 0;
    for (index, byte) in bytes.iter().take(10).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    if bytes.is_empty() {
        Err(CodecError::Empty)
    } else {
        Err(CodecError::Malformed("unterminated version varint".into()))
    }
}

/// The hash event 0 of an instance chains to.
pub fn genesis_hash(id: WorkflowId) -> Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"shardflow-journal-genesis-v1");
    hasher.update(&id.node.to_le_bytes());
    hasher.update(&id.serial.to_le_bytes());
    *hasher.finalize().as_bytes()
}

/// The hash of an encoded event, which the next event records as `prev_hash`.
pub fn hash_bytes(bytes: &[u8]) -> Hash {
    *blake3::hash(bytes).as_bytes()
}

/// An envelope together with its exact bytes and their hash, as appended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedEvent {
    pub envelope: Envelope,
    pub bytes: Vec<u8>,
    pub hash: Hash,
}

impl SealedEvent {
    /// Encodes and hashes an envelope.
    pub fn seal(envelope: Envelope) -> Self {
        let bytes = encode(&envelope);
        let hash = hash_bytes(&bytes);
        Self {
            envelope,
            bytes,
            hash,
        }
    }

    /// Decodes stored bytes (hashing them for the chain check).
    pub fn open(bytes: Vec<u8>) -> Result<Self, CodecError> {
        let envelope = decode(&bytes)?;
        let hash = hash_bytes(&bytes);
        Ok(Self {
            envelope,
            bytes,
            hash,
        })
    }

    /// The sequence number.
    pub fn seq(&self) -> u64 {
        self.envelope.seq()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(body: Event) -> Envelope {
        Envelope::V1(EnvelopeV1 {
            seq: 1,
            at_ms: 2,
            node: 3,
            engine_version: 1,
            definition_version: 1,
            prev_hash: [7; 32],
            body,
        })
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Golden bytes of every event variant inside a V1 envelope. If this test
    /// fails, a shipped encoding changed: add a new variant instead.
    #[test]
    fn golden_bytes_of_every_event_variant() {
        let prefix = "000102030101".to_string() + &"07".repeat(32);
        let s = || "s".to_string();
        let cases: Vec<(Event, &str)> = vec![
            (
                Event::Submitted {
                    kind: "k".into(),
                    definition_version: 1,
                    input: vec![9],
                    plan: vec![s()],
                },
                "00016b010109010173",
            ),
            (Event::DriverStarted { epoch: 5 }, "0105"),
            (
                Event::StepStarted {
                    step: s(),
                    attempt: 2,
                },
                "02017302",
            ),
            (
                Event::Checkpoint {
                    step: s(),
                    progress: vec![1, 2],
                },
                "030173020102",
            ),
            (
                Event::StepSucceeded {
                    step: s(),
                    output: vec![],
                },
                "04017300",
            ),
            (
                Event::StepFailed {
                    step: s(),
                    attempt: 1,
                    error: "e".into(),
                    retryable: true,
                },
                "05017301016501",
            ),
            (Event::PointOfNoReturn { step: s() }, "060173"),
            (Event::CompensationStarted { reason: "r".into() }, "070172"),
            (
                Event::CompensationStepStarted {
                    step: s(),
                    attempt: 1,
                },
                "08017301",
            ),
            (Event::Compensated { step: s() }, "090173"),
            (
                Event::CompensationFailed {
                    step: s(),
                    attempt: 1,
                    error: "e".into(),
                    retryable: false,
                },
                "0a017301016500",
            ),
            (Event::Completed, "0b"),
            (Event::Aborted { reason: "r".into() }, "0c0172"),
            (Event::Paused { reason: "r".into() }, "0d0172"),
            (Event::ResumeRequested { by: "o".into() }, "0e016f"),
            (Event::CancelRequested { by: "o".into() }, "0f016f"),
            (
                Event::Metric {
                    step: s(),
                    name: "n".into(),
                    value: 300,
                },
                "100173016eac02",
            ),
        ];
        for (event, body_hex) in cases {
            let bytes = encode(&sample(event.clone()));
            assert_eq!(
                hex(&bytes),
                format!("{prefix}{body_hex}"),
                "{}",
                event.name()
            );
            assert_eq!(decode(&bytes).expect("golden bytes decode"), sample(event));
        }
    }

    // Proves a newer envelope version is named as such, not as corruption.
    #[test]
    fn newer_version_is_reported_as_unsupported() {
        let mut bytes = encode(&sample(Event::Completed));
        bytes[0] = 1; // variant index 1 = Envelope::V2
        assert_eq!(
            decode(&bytes),
            Err(CodecError::UnsupportedVersion {
                found: 2,
                supported: 1
            })
        );
    }

    // Proves empty input, trailing bytes and truncation are typed errors.
    #[test]
    fn malformed_inputs_are_typed_errors() {
        assert_eq!(decode(&[]), Err(CodecError::Empty));
        let mut bytes = encode(&sample(Event::Completed));
        bytes.push(0);
        assert_eq!(decode(&bytes), Err(CodecError::TrailingBytes(1)));
        let bytes = encode(&sample(Event::Aborted {
            reason: "why".into(),
        }));
        for cut in 1..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "truncated at {cut} decoded");
        }
    }

    // Proves the genesis hash depends on the instance id.
    #[test]
    fn genesis_hash_is_per_instance() {
        assert_ne!(
            genesis_hash(WorkflowId::new(1, 1)),
            genesis_hash(WorkflowId::new(1, 2))
        );
        assert_eq!(
            genesis_hash(WorkflowId::new(1, 1)),
            genesis_hash(WorkflowId::new(1, 1))
        );
    }
}
