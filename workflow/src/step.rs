//! What a workflow is made of: the [`Workflow`] definition (a kind, a typed
//! input, an ordered list of steps) and the [`Step`] trait, with the
//! [`StepContext`] a step runs with.
//!
//! **Contract for step authors:** a step is idempotent under its
//! [`IdempotencyKey`]: after a crash between its effect and the journaling of
//! its outcome it runs again, and must then return the first result instead of
//! acting twice. Its compensation is idempotent too. A step that can neither
//! dedupe nor verify its effect returns a terminal error, which parks the
//! workflow for an operator instead of guessing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{watch, Mutex};

use crate::error::StepError;
use crate::event::Event;
use crate::id::{IdempotencyKey, WorkflowId};
use crate::retry::RetryPolicy;
use crate::state::WorkflowState;
use crate::writer::InstanceWriter;

/// One step of a workflow, with its compensation beside it.
#[async_trait]
pub trait Step<I>: Send + Sync + 'static {
    /// The step's name: unique in its workflow, journaled, never renamed.
    fn name(&self) -> &'static str;

    /// Attempts, per-attempt timeout and backoff, for `run` and `compensate`.
    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::default()
    }

    /// Whether succeeding at this step crosses the point of no return. A step
    /// that crosses it in its middle calls [`StepContext::point_of_no_return`].
    fn is_point_of_no_return(&self) -> bool {
        false
    }

    /// Does the step's work; the bytes returned are its journaled output.
    async fn run(&self, ctx: &StepContext<I>) -> Result<Vec<u8>, StepError>;

    /// Undoes whatever `run` may have done, even partly. Called for every
    /// step that was started, in reverse order, before the point of no return.
    async fn compensate(&self, ctx: &StepContext<I>) -> Result<(), StepError>;
}

/// A workflow definition: a kind, a typed input and ordered steps.
pub trait Workflow: Send + Sync + 'static {
    /// What the workflow's steps read.
    type Input: Serialize + DeserializeOwned + Send + Sync + 'static;

    /// The name journaled with every instance; never changes once shipped.
    const KIND: &'static str;

    /// Bumped when the steps change; journaled with every instance.
    const VERSION: u32 = 1;

    /// The ordered steps.
    fn steps(&self) -> Vec<Arc<dyn Step<Self::Input>>>;
}

/// What a step attempt runs with.
pub struct StepContext<I> {
    pub(crate) id: WorkflowId,
    pub(crate) step: String,
    pub(crate) attempt: u32,
    pub(crate) epoch: u64,
    pub(crate) input: Arc<I>,
    pub(crate) state: Arc<WorkflowState>,
    pub(crate) writer: Arc<Mutex<InstanceWriter>>,
    pub(crate) cancel: watch::Receiver<bool>,
    pub(crate) crossed: AtomicBool,
}

impl<I> StepContext<I> {
    /// The instance.
    pub fn workflow_id(&self) -> WorkflowId {
        self.id
    }

    /// The step's name.
    pub fn step_name(&self) -> &str {
        &self.step
    }

    /// This attempt's number, from 1; travels beside the idempotency key to
    /// spot a zombie attempt.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The driver epoch; every command a step sends carries it so a stale
    /// driver is refused.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The key every effect of this step carries, stable across attempts.
    pub fn idempotency_key(&self) -> IdempotencyKey {
        IdempotencyKey {
            workflow: self.id,
            step: self.step.clone(),
        }
    }

    /// The workflow's input.
    pub fn input(&self) -> &I {
        &self.input
    }

    /// The instance's state when this attempt began.
    pub fn state(&self) -> &WorkflowState {
        &self.state
    }

    /// The latest progress this step checkpointed, in any earlier attempt.
    pub fn last_checkpoint(&self) -> Option<&[u8]> {
        self.record()
            .and_then(|record| record.checkpoint.as_deref())
    }

    /// The journaled output of an earlier step, decoded.
    pub fn output_of<T: DeserializeOwned>(&self, step: &str) -> Result<Option<T>, StepError> {
        let Some(record) = self.state.steps.iter().find(|r| r.name == step) else {
            return Err(StepError::terminal(format!(
                "no step {step:?} in this workflow"
            )));
        };
        record
            .output
            .as_deref()
            .map(|bytes| postcard::from_bytes(bytes))
            .transpose()
            .map_err(|error| {
                StepError::terminal(format!("output of {step} is undecodable: {error}"))
            })
    }

    /// Journals resumable progress durably before returning.
    pub async fn checkpoint(&self, progress: Vec<u8>) -> Result<(), StepError> {
        let step = self.step.clone();
        self.journal(Event::Checkpoint { step, progress }).await
    }

    /// Journals that this step crossed the point of no return (durable before
    /// returning); from then on cancel is ignored and failures pause.
    pub async fn point_of_no_return(&self) -> Result<(), StepError> {
        let step = self.step.clone();
        self.journal(Event::PointOfNoReturn { step }).await?;
        self.crossed.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Journals a figure the step measured.
    pub async fn record_metric(&self, name: &str, value: u64) -> Result<(), StepError> {
        let event = Event::Metric {
            step: self.step.clone(),
            name: name.to_string(),
            value,
        };
        self.journal(event).await
    }

    /// Whether a cancel was requested and is still honoured (before the
    /// point of no return). A long step checks this between chunks.
    pub fn is_cancelled(&self) -> bool {
        !self.crossed.load(Ordering::SeqCst) && *self.cancel.borrow()
    }

    /// Resolves when a cancel is requested (never, once past the point of no
    /// return or if nobody can cancel any more).
    pub async fn cancelled(&self) {
        let mut cancel = self.cancel.clone();
        let requested = cancel.wait_for(|cancelled| *cancelled).await.is_ok();
        if !requested || self.crossed.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    }

    fn record(&self) -> Option<&crate::state::StepRecord> {
        self.state.steps.iter().find(|r| r.name == self.step)
    }

    async fn journal(&self, event: Event) -> Result<(), StepError> {
        self.writer
            .lock()
            .await
            .flush(vec![event])
            .await
            .map_err(|error| StepError::retryable(format!("journal append failed: {error}")))
    }
}

/// Encodes a step's output with postcard.
pub fn encode_output<T: Serialize>(value: &T) -> Result<Vec<u8>, StepError> {
    postcard::to_stdvec(value)
        .map_err(|error| StepError::terminal(format!("cannot encode output: {error}")))
}
