//! Property tests of journal-envelope decoding (the proptest side of the
//! cargo-fuzz target `fuzz/fuzz_targets/envelope_decode.rs`): what the
//! audit and a restarting node read from disk never panics them.
//!
//! - `envelope::decode` and `SealedEvent::open` on random bytes and on
//!   mutated encodings of every event variant: `Ok` or a typed
//!   `CodecError`; what decodes re-encodes to the same envelope.
//! - `verify` (what `shardflow journal verify` runs) on a valid journal
//!   with one record mutated: always an error, naming that record's seq —
//!   or its predecessor's, when the mutation hit the record's `prev_hash`
//!   (the chain cannot tell which of the two changed) — and on random
//!   records: an error, never a panic.

use proptest::prelude::*;
use shardflow_workflow::envelope::{
    decode, encode, genesis_hash, CodecError, ENGINE_VERSION, ENVELOPE_VERSION,
};
use shardflow_workflow::{verify, Envelope, EnvelopeV1, Event, Problem, SealedEvent, WorkflowId};

/// One edit of a byte string.
#[derive(Clone, Debug)]
enum Mutation {
    /// XOR the byte at (index mod len) with a non-zero mask.
    Flip(usize, u8),
    /// Overwrite the byte at (index mod len).
    Set(usize, u8),
    /// Insert a byte at (index mod (len + 1)).
    Insert(usize, u8),
    /// Remove the byte at (index mod len).
    Remove(usize),
    /// Keep the first (index mod (len + 1)) bytes.
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(i, m)| Mutation::Flip(i, m)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Remove),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for mutation in mutations {
        let len = bytes.len();
        match *mutation {
            Mutation::Flip(i, mask) if len > 0 => bytes[i % len] ^= mask,
            Mutation::Set(i, byte) if len > 0 => bytes[i % len] = byte,
            Mutation::Insert(i, byte) => bytes.insert(i % (len + 1), byte),
            Mutation::Remove(i) if len > 0 => {
                bytes.remove(i % len);
            }
            Mutation::Truncate(i) => bytes.truncate(i % (len + 1)),
            _ => {}
        }
    }
    bytes
}

const ID: WorkflowId = WorkflowId { node: 3, serial: 7 };

/// A valid instance journal: every event variant a completed run with a
/// retry, a cancel request ignored after the point of no return, and a
/// metric journals, in an order the replay rules accept.
fn valid_events() -> Vec<Event> {
    vec![
        Event::Submitted {
            kind: "Move".into(),
            definition_version: 1,
            input: vec![1, 2, 3],
            plan: vec!["copy".into(), "cut".into()],
        },
        Event::DriverStarted { epoch: 1 },
        Event::StepStarted {
            step: "copy".into(),
            attempt: 1,
        },
        Event::Checkpoint {
            step: "copy".into(),
            progress: vec![0, 1, 2, 3, 4, 5],
        },
        Event::StepFailed {
            step: "copy".into(),
            attempt: 1,
            error: "connection lost".into(),
            retryable: true,
        },
        Event::StepStarted {
            step: "copy".into(),
            attempt: 2,
        },
        Event::StepSucceeded {
            step: "copy".into(),
            output: vec![9, 9],
        },
        Event::StepStarted {
            step: "cut".into(),
            attempt: 1,
        },
        Event::PointOfNoReturn { step: "cut".into() },
        Event::CancelRequested { by: "ops".into() },
        Event::Metric {
            step: "cut".into(),
            name: "write_pause_us".into(),
            value: 150_345,
        },
        Event::StepSucceeded {
            step: "cut".into(),
            output: Vec::new(),
        },
        Event::Completed,
    ]
}

/// Events of the variants the completed journal lacks, for the decoders.
fn other_events() -> Vec<Event> {
    vec![
        Event::CompensationStarted {
            reason: "step copy failed".into(),
        },
        Event::CompensationStepStarted {
            step: "copy".into(),
            attempt: 1,
        },
        Event::CompensationFailed {
            step: "copy".into(),
            attempt: 1,
            error: "target unreachable".into(),
            retryable: true,
        },
        Event::Compensated {
            step: "copy".into(),
        },
        Event::Aborted {
            reason: "cancelled".into(),
        },
        Event::Paused {
            reason: "operator".into(),
        },
        Event::ResumeRequested { by: "ops".into() },
    ]
}

/// The stored records `(seq, bytes)` of a journal of `events`, chained,
/// and the hash of the last (the instance row's head).
fn journal(events: Vec<Event>) -> (Vec<(u64, Vec<u8>)>, [u8; 32]) {
    let mut previous = genesis_hash(ID);
    let mut records = Vec::new();
    for (seq, body) in (0u64..).zip(events) {
        let sealed = SealedEvent::seal(Envelope::V1(EnvelopeV1 {
            seq,
            at_ms: 1_700_000_000_000 + seq * 10,
            node: ID.node,
            engine_version: ENGINE_VERSION,
            definition_version: 1,
            prev_hash: previous,
            body,
        }));
        previous = sealed.hash;
        records.push((seq, sealed.bytes));
    }
    (records, previous)
}

/// Every encoded envelope the decoders are fed mutations of.
fn valid_encodings() -> Vec<Vec<u8>> {
    let (records, _) = journal(valid_events());
    let mut encodings: Vec<Vec<u8>> = records.into_iter().map(|(_, bytes)| bytes).collect();
    let (others, _) = journal(other_events());
    encodings.extend(others.into_iter().map(|(_, bytes)| bytes));
    encodings
}

/// The decoders on `bytes`: `Ok` or a typed error; what decodes
/// re-encodes to bytes that decode to the same envelope.
fn decode_checks(bytes: &[u8]) -> Result<(), TestCaseError> {
    match decode(bytes) {
        Ok(envelope) => {
            let again = decode(&encode(&envelope)).expect("a re-encoded envelope decodes");
            prop_assert_eq!(&again, &envelope);
        }
        Err(CodecError::UnsupportedVersion { found, supported }) => {
            prop_assert!(found > u64::from(supported));
            prop_assert_eq!(supported, ENVELOPE_VERSION);
        }
        Err(CodecError::Empty) => prop_assert!(bytes.is_empty()),
        Err(CodecError::Malformed(reason)) => prop_assert!(!reason.is_empty()),
        Err(CodecError::TrailingBytes(n)) => prop_assert!(n > 0 && n < bytes.len()),
    }
    let opened = SealedEvent::open(bytes.to_vec());
    prop_assert_eq!(opened.is_ok(), decode(bytes).is_ok());
    Ok(())
}

// Proves the fixture is what the mutation properties assume: the journal
// verifies, and every envelope decodes.
#[test]
fn the_valid_journal_verifies() {
    let (records, head) = journal(valid_events());
    let verified = verify(ID, records, Some(head)).expect("verifies");
    assert_eq!(verified.state.next_seq, valid_events().len() as u64);
    for bytes in valid_encodings() {
        decode(&bytes).expect("decodes");
    }
}

// Proves the input cargo-fuzz found (`envelope_decode`) is refused with a
// typed error: a 10-byte version varint reading u64::MAX once overflowed
// `found: version + 1` (a panic in debug builds, version 0 in release).
#[test]
fn the_largest_version_varint_is_a_typed_error() {
    let found = [255, 255, 255, 255, 255, 255, 255, 255, 255, 35, 248];
    assert_eq!(
        decode(&found),
        Err(CodecError::UnsupportedVersion {
            found: u64::MAX,
            supported: ENVELOPE_VERSION
        })
    );
    let mut bytes = vec![0xff; 9];
    bytes.push(0x01);
    assert!(matches!(
        decode(&bytes),
        Err(CodecError::UnsupportedVersion { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    // Proves version varints of every length (up to the 10 bytes of a
    // u64 and beyond: unterminated), all continuation bits set, followed
    // by anything, never panic the decoders (the shape of the input
    // cargo-fuzz found).
    #[test]
    fn long_version_varints_never_panic_decoding(
        continued in 0usize..=11,
        last in any::<u8>(),
        tail in prop::collection::vec(any::<u8>(), 0..32),
    ) {
        let mut bytes = vec![0xff; continued];
        bytes.push(last);
        bytes.extend(tail);
        decode_checks(&bytes)?;
    }

    // Proves random bytes never panic the envelope decoders.
    #[test]
    fn random_bytes_never_panic_decoding(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_checks(&bytes)?;
    }

    // Proves mutated encodings of every event variant never panic the
    // decoders, and a mutation that still decodes re-encodes faithfully.
    #[test]
    fn mutated_envelopes_never_panic_decoding(
        pick in any::<prop::sample::Index>(),
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let encodings = valid_encodings();
        let bytes = mutate(encodings[pick.index(encodings.len())].clone(), &mutations);
        decode_checks(&bytes)?;
    }

    // Proves verify names the mutated record of an otherwise valid
    // journal: its seq, or its predecessor's for a changed `prev_hash`
    // (reported as the predecessor altered), never another one, never Ok.
    #[test]
    fn verify_names_the_mutated_record(
        pick in any::<prop::sample::Index>(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let (mut records, head) = journal(valid_events());
        let k = pick.index(records.len());
        let mutated = mutate(records[k].1.clone(), &mutations);
        prop_assume!(mutated != records[k].1);
        records[k].1 = mutated;
        let error = match verify(ID, records, Some(head)) {
            Ok(_) => return Err(TestCaseError::fail(format!("record {k} mutated, verify passed"))),
            Err(error) => error,
        };
        prop_assert_eq!(error.id, ID);
        let k = k as u64;
        prop_assert!(
            error.seq == k || (k > 0 && error.seq == k - 1 && error.problem == Problem::Altered),
            "record {} mutated, verify named: {}", k, error
        );
    }

    // Proves verify on random records (any seq keys, any bytes) returns an
    // error and never panics.
    #[test]
    fn verify_never_panics_on_random_records(
        records in prop::collection::vec(
            (0u64..4, prop::collection::vec(any::<u8>(), 0..128)),
            0..6,
        ),
        head in prop::option::of(any::<[u8; 32]>()),
    ) {
        prop_assert!(verify(ID, records, head).is_err());
    }
}
