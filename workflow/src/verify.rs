//! Verification of an instance's journal: decoding, seq continuity, the hash
//! chain and the replay rules, reporting the first bad event.
//!
//! Both journals call [`verify`] when they read an instance; `shardflow
//! journal verify` calls it on every instance of a stopped node's journal.
//! Needs no running cluster and no workflow definition.

use crate::envelope::{genesis_hash, Hash, SealedEvent};
use crate::id::WorkflowId;
use crate::state::{ReplayError, WorkflowState};

/// The first thing wrong with an instance's journal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("workflow {id}, event seq {seq}: {problem}")]
pub struct VerifyError {
    pub id: WorkflowId,
    pub seq: u64,
    pub problem: Problem,
}

/// What is wrong with the event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("cannot be decoded: {0}")]
    Undecodable(String),
    #[error("stored under seq {stored} but the envelope says seq {found}")]
    MisplacedSeq { stored: u64, found: u64 },
    #[error("missing: the journal jumps to seq {next}")]
    Missing { next: u64 },
    #[error("altered: its hash no longer matches what the next event recorded")]
    Altered,
    #[error("altered: its hash no longer matches the instance's recorded head")]
    HeadMismatch,
    #[error("does not chain to its predecessor (prev_hash mismatch)")]
    BrokenChain,
    #[error("breaks the replay rules: {0}")]
    Rule(String),
    #[error("the instance has no events")]
    Empty,
}

/// A verified instance: its events and the state they fold to.
#[derive(Debug, Clone)]
pub struct Verified {
    pub events: Vec<SealedEvent>,
    pub state: WorkflowState,
}

/// Verifies an instance's stored records `(seq key, bytes)` in key order.
/// `head`, when the journal records one, is the hash of the last event, so
/// that altering the last event is caught too.
pub fn verify(
    id: WorkflowId,
    records: Vec<(u64, Vec<u8>)>,
    head: Option<Hash>,
) -> Result<Verified, VerifyError> {
    let fail = |seq, problem| VerifyError { id, seq, problem };
    let mut events: Vec<SealedEvent> = Vec::with_capacity(records.len());
    let mut state: Option<WorkflowState> = None;
    let mut previous_hash = genesis_hash(id);
    for (expected, (stored, bytes)) in (0u64..).zip(records) {
        if stored != expected {
            return Err(fail(expected, Problem::Missing { next: stored }));
        }
        let event = SealedEvent::open(bytes)
            .map_err(|error| fail(stored, Problem::Undecodable(error.to_string())))?;
        if event.seq() != stored {
            return Err(fail(
                stored,
                Problem::MisplacedSeq {
                    stored,
                    found: event.seq(),
                },
            ));
        }
        if event.envelope.current().prev_hash != previous_hash {
            // The predecessor's bytes changed after this event was chained to
            // them, or this event's prev_hash was altered.
            let (seq, problem) = match stored {
                0 => (0, Problem::BrokenChain),
                _ => (stored - 1, Problem::Altered),
            };
            return Err(fail(seq, problem));
        }
        let rule = |error: ReplayError| fail(error.seq, Problem::Rule(error.reason));
        match state.as_mut() {
            None => state = Some(WorkflowState::from_first(id, &event.envelope).map_err(rule)?),
            Some(state) => state.apply(&event.envelope).map_err(rule)?,
        }
        previous_hash = event.hash;
        events.push(event);
    }
    let state = state.ok_or_else(|| fail(0, Problem::Empty))?;
    if head.is_some_and(|head| head != previous_hash) {
        return Err(fail(state.next_seq - 1, Problem::HeadMismatch));
    }
    Ok(Verified { events, state })
}
