//! The `Journal` trait: where an engine keeps its instances' events.
//!
//! The engine knows nothing of redb: `shardflow-store` implements this trait
//! on a redb file, and [`crate::memory::MemoryJournal`] implements it in
//! memory for the engine's own tests.
//!
//! **Contract every implementation keeps:**
//! - `append` is atomic across the events it carries and durable when it
//!   returns `Ok` (for a disk journal: fsynced).
//! - `append` is refused with [`JournalError::SeqConflict`] unless
//!   `expected_next_seq` is the instance's next seq (optimistic concurrency),
//!   with [`JournalError::ChainMismatch`] unless the first event chains to the
//!   instance's last one, and with [`JournalError::EventCap`] past the cap.
//! - `read` returns the instance's events in seq order, decoded and checked
//!   (hash chain, seq continuity, replay rules); a bad record is
//!   [`JournalError::Corrupt`] naming the instance and seq, never skipped.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::envelope::SealedEvent;
use crate::id::WorkflowId;
use crate::verify::VerifyError;

/// What a journal can list about an instance without replaying it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceSummary {
    pub id: WorkflowId,
    pub kind: String,
    /// Events journaled so far (= the next seq).
    pub events: u64,
    /// The name of the last event (`Completed`, `StepStarted`, ...).
    pub last_event: String,
    /// `Completed` or `Aborted`: nothing will be appended again.
    pub ended: bool,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

/// Why a journal operation failed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(
        "workflow {id}: append expected next seq {expected} but the journal is at {actual} \
         (another writer appended first)"
    )]
    SeqConflict {
        id: WorkflowId,
        expected: u64,
        actual: u64,
    },
    #[error("workflow {id}: append refused: event seq {seq} does not chain to the journaled one")]
    ChainMismatch { id: WorkflowId, seq: u64 },
    #[error(
        "workflow {id}: append refused: the cap of {cap} events per instance would be exceeded"
    )]
    EventCap { id: WorkflowId, cap: u64 },
    #[error("workflow {0} does not exist in this journal")]
    UnknownInstance(WorkflowId),
    #[error("journal corrupt: {0}")]
    Corrupt(#[from] VerifyError),
    #[error("{path}: not a shardflow journal: {reason}")]
    NotAJournal { path: String, reason: String },
    #[error(
        "{path}: journal format version {found} is newer than this build reads (up to {supported})"
    )]
    NewerFormat {
        path: String,
        found: u32,
        supported: u32,
    },
    #[error("journal storage failed while {doing}: {source}")]
    Storage {
        doing: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Durable, append-only storage of workflow events.
#[async_trait]
pub trait Journal: Send + Sync + 'static {
    /// Appends `events` (consecutive seqs starting at `expected_next_seq`)
    /// atomically and durably. Seq 0 creates the instance.
    async fn append(
        &self,
        id: WorkflowId,
        expected_next_seq: u64,
        events: Vec<SealedEvent>,
    ) -> Result<(), JournalError>;

    /// Every event of one instance, in seq order, decoded and verified.
    async fn read(&self, id: WorkflowId) -> Result<Vec<SealedEvent>, JournalError>;

    /// The instances, optionally with the ended ones, ordered by id.
    async fn list(&self, include_ended: bool) -> Result<Vec<InstanceSummary>, JournalError>;

    /// The largest serial used by `node`'s instances (0 if none).
    async fn max_serial(&self, node: u64) -> Result<u64, JournalError>;

    /// Deletes ended instances last updated before `before_ms`; returns how
    /// many. Only an explicit retention setting calls this.
    async fn prune_ended(&self, before_ms: u64) -> Result<u64, JournalError>;
}
