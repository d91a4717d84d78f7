//! What the engine reports about an instance while it runs: a status
//! summary, the progress events subscribers receive, and the live view
//! `wait` watches.
//!
//! **Invariant:** everything reported here was durable in the journal first,
//! so replaying the journal gives the state the engine reported (DESIGN §5.4).

use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::id::WorkflowId;
use crate::state::{Phase, WorkflowState};

/// A summary of an instance's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowStatus {
    pub id: WorkflowId,
    pub kind: String,
    pub phase: Phase,
    /// The step in flight, or the next one to run or compensate.
    pub step: Option<String>,
    pub epoch: u64,
    /// Events journaled so far.
    pub events: u64,
    pub cancel_requested: bool,
    pub point_of_no_return: bool,
    pub updated_at_ms: u64,
}

impl From<&WorkflowState> for WorkflowStatus {
    fn from(state: &WorkflowState) -> Self {
        Self {
            id: state.id,
            kind: state.kind.clone(),
            phase: state.phase.clone(),
            step: state.current_step().map(str::to_string),
            epoch: state.epoch,
            events: state.next_seq,
            cancel_requested: state.cancel_requested.is_some(),
            point_of_no_return: state.point_of_no_return.is_some(),
            updated_at_ms: state.updated_at_ms,
        }
    }
}

/// One journaled event, as subscribers see it (after it is durable).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub id: WorkflowId,
    pub seq: u64,
    pub at_ms: u64,
    pub event: Event,
}

/// The live view of an instance: its durable status and, if its driver
/// stopped without settling it, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Live {
    pub status: WorkflowStatus,
    pub driver_error: Option<String>,
}
