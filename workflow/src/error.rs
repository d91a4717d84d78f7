//! The engine's error types: what a step reports, and what the engine's
//! public API returns.

use crate::id::WorkflowId;
use crate::journal::JournalError;
use crate::state::ReplayError;

/// How a step attempt (or a compensation attempt) failed.
///
/// A step maps its own typed errors onto these two kinds, keeping the
/// message: the engine journals it verbatim and uses the kind to decide
/// between another attempt and giving up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// Another attempt may succeed (a timeout, an unreachable peer, a leader change).
    #[error("{0}")]
    Retryable(String),
    /// Another attempt cannot succeed (refused input, a violated precondition).
    #[error("{0}")]
    Terminal(String),
    /// The step observed a cancel request and stopped.
    #[error("cancelled")]
    Cancelled,
}

impl StepError {
    /// A retryable error from anything displayable.
    pub fn retryable(error: impl std::fmt::Display) -> Self {
        StepError::Retryable(error.to_string())
    }

    /// A terminal error from anything displayable.
    pub fn terminal(error: impl std::fmt::Display) -> Self {
        StepError::Terminal(error.to_string())
    }

    /// Whether another attempt may help.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StepError::Retryable(_))
    }
}

/// What the engine's API returns when it cannot do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("no workflow kind {0:?} is registered with this engine")]
    UnknownKind(String),
    #[error("workflow {0} does not exist")]
    UnknownWorkflow(WorkflowId),
    #[error("workflow {id} is driven by node {node}, not by this node")]
    NotLocal { id: WorkflowId, node: u64 },
    #[error("workflow {id} already ended ({phase})")]
    AlreadyEnded { id: WorkflowId, phase: &'static str },
    #[error("workflow {id} is not paused (it is {phase})")]
    NotPaused { id: WorkflowId, phase: &'static str },
    #[error("workflow {id}: its journal breaks the rules: {source}")]
    Replay {
        id: WorkflowId,
        #[source]
        source: ReplayError,
    },
    #[error(
        "workflow {id}: journaled plan {journaled:?} (definition v{journaled_version}) \
         differs from this build's {current:?}"
    )]
    PlanMismatch {
        id: WorkflowId,
        journaled: Vec<String>,
        journaled_version: u32,
        current: Vec<String>,
    },
    #[error("workflow {id}: could not encode its input: {reason}")]
    Input { id: WorkflowId, reason: String },
    #[error("workflow {id}: another driver (epoch {newer}) took over from epoch {ours}")]
    Superseded {
        id: WorkflowId,
        ours: u64,
        newer: u64,
    },
    #[error("workflow {id} is not being driven (it has not been resumed on this node)")]
    NotDriven { id: WorkflowId },
    #[error("workflow {id}: its driver stopped: {reason}")]
    DriverStopped { id: WorkflowId, reason: String },
    #[error(transparent)]
    Journal(#[from] JournalError),
}
