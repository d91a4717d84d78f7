//! shardflow-workflow: the durable workflow engine.
//!
//! An instance is an id, a kind, an input and an append-only list of events;
//! its state is only the fold of those events ([`replay`]). The engine is
//! split the way openraft and quinn split theirs:
//!
//! - **sans-I/O core** — [`state`] (the fold and its rules), [`decide`] (what
//!   happens next, given the state and a step's outcome), [`envelope`] (the
//!   versioned, hash-chained persisted form), [`verify`] (the audit walk).
//!   Plain code, tested without tokio.
//! - **thin async shell** — [`Engine`] (submit, status, wait, cancel,
//!   resume, subscribe, resume_all), one driver task per instance, and the
//!   [`Journal`] trait it appends to.
//!
//! **Architecture invariant:** this crate does no I/O of its own. It knows
//! nothing of redb, Raft or QUIC; `shardflow-store` provides the durable
//! journal, [`MemoryJournal`] a volatile one for tests.

pub mod decide;
mod driver;
pub mod engine;
pub mod envelope;
pub mod error;
pub mod event;
mod failpoint;
pub mod id;
pub mod journal;
pub mod memory;
pub mod retry;
pub mod state;
pub mod status;
pub mod step;
pub mod verify;
mod writer;

pub use engine::{Engine, EngineConfig, ResumeReport};
pub use envelope::{Envelope, EnvelopeV1, SealedEvent};
pub use error::{EngineError, StepError};
pub use event::Event;
pub use id::{IdempotencyKey, WorkflowId};
pub use journal::{InstanceSummary, Journal, JournalError};
pub use memory::MemoryJournal;
pub use retry::RetryPolicy;
pub use state::{replay, Phase, StepStatus, WorkflowState};
pub use status::{Progress, WorkflowStatus};
pub use step::{encode_output, Step, StepContext, Workflow};
pub use verify::{verify, Problem, Verified, VerifyError};
pub use writer::now_ms;
