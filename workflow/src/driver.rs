//! The thin async driver of one instance: it asks `decide` what to do and
//! does it — waits out a backoff, journals `StepStarted`, runs the attempt
//! under its timeout, stages the outcome — until the instance settles.
//!
//! **Invariants:** an attempt's `StepStarted` (or `CompensationStepStarted`)
//! is durable before the step's code runs; a step's `StepSucceeded` is
//! durable before the next step starts (it rides in the same atomic append as
//! the next `StepStarted`, which is why one step costs one journal commit).
//! A step runs inline in the driver's task (a panic is caught and becomes a
//! terminal failure), so a halted driver leaves no attempt running behind it.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{watch, Mutex};

use crate::decide::{compensation_outcome, decide, step_outcome, Decision, Plan};
use crate::error::{EngineError, StepError};
use crate::event::Event;
use crate::state::Phase;
use crate::step::{Step, StepContext};
use crate::writer::InstanceWriter;

/// A driver run, type-erased for the engine.
pub(crate) type DriveFuture = Pin<Box<dyn Future<Output = Result<Phase, EngineError>> + Send>>;

/// Drives one instance of a workflow whose input type is `I`.
pub(crate) struct Driver<I> {
    pub(crate) plan: Plan,
    pub(crate) steps: Vec<Arc<dyn Step<I>>>,
    pub(crate) input: Arc<I>,
    pub(crate) writer: Arc<Mutex<InstanceWriter>>,
    pub(crate) cancel: watch::Receiver<bool>,
}

impl<I: Send + Sync + 'static> Driver<I> {
    /// Runs until the instance is terminal or paused.
    pub(crate) async fn run(mut self) -> Result<Phase, EngineError> {
        loop {
            let decision = decide(&self.plan, self.writer.lock().await.state());
            match decision {
                Decision::Settled => {
                    let mut writer = self.writer.lock().await;
                    writer.flush(Vec::new()).await?;
                    return Ok(writer.state().phase.clone());
                }
                Decision::Append(events) => self.writer.lock().await.stage(events)?,
                Decision::Run {
                    index,
                    attempt,
                    delay,
                } => {
                    if self.wait_out(delay).await? {
                        self.attempt(index, attempt, false).await?;
                    }
                }
                Decision::Compensate {
                    index,
                    attempt,
                    delay,
                } => {
                    if self.wait_out(delay).await? {
                        self.attempt(index, attempt, true).await?;
                    }
                }
            }
        }
    }

    /// Makes staged events durable, then waits out a backoff. Returns false
    /// if a cancel request arrived meanwhile (the caller decides again).
    async fn wait_out(&mut self, delay: Duration) -> Result<bool, EngineError> {
        if delay.is_zero() {
            return Ok(true);
        }
        self.writer.lock().await.flush(Vec::new()).await?;
        let cancel = &mut self.cancel;
        let cancelled = async {
            if cancel.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => Ok(true),
            () = cancelled => Ok(false),
        }
    }

    /// Journals the start of an attempt, runs it, and stages its outcome.
    async fn attempt(
        &mut self,
        index: usize,
        attempt: u32,
        compensation: bool,
    ) -> Result<(), EngineError> {
        let step = Arc::clone(&self.steps[index]);
        let name = step.name().to_string();
        let started = if compensation {
            Event::CompensationStepStarted {
                step: name.clone(),
                attempt,
            }
        } else {
            Event::StepStarted {
                step: name.clone(),
                attempt,
            }
        };
        let snapshot = {
            let mut writer = self.writer.lock().await;
            writer.flush(vec![started]).await?;
            writer.snapshot()
        };
        let ctx = StepContext {
            id: snapshot.id,
            step: name,
            attempt,
            epoch: snapshot.epoch,
            input: Arc::clone(&self.input),
            crossed: AtomicBool::new(snapshot.point_of_no_return.is_some()),
            state: snapshot,
            writer: Arc::clone(&self.writer),
            cancel: self.cancel.clone(),
        };
        let timeout = self.plan.steps[index].retry.attempt_timeout;
        let outcome = run_attempt(step, ctx, compensation, timeout).await;
        let mut writer = self.writer.lock().await;
        let events = if compensation {
            compensation_outcome(&self.plan, index, attempt, outcome.map(drop))
        } else {
            step_outcome(&self.plan, writer.state(), index, attempt, outcome)
        };
        writer.stage(events)
    }
}

/// Runs one attempt inline, under its timeout; a panic is a terminal
/// failure of the attempt, not of the driver. Inline (not a spawned task)
/// saves a cross-thread wake-up per step, and dropping the driver drops the
/// attempt with it, so a halted driver leaves nothing running.
async fn run_attempt<I: Send + Sync + 'static>(
    step: Arc<dyn Step<I>>,
    ctx: StepContext<I>,
    compensation: bool,
    timeout: Duration,
) -> Result<Vec<u8>, StepError> {
    let work = async {
        if compensation {
            step.compensate(&ctx).await.map(|()| Vec::new())
        } else {
            step.run(&ctx).await
        }
    };
    match tokio::time::timeout(timeout, CatchUnwind(Box::pin(work))).await {
        Ok(Ok(result)) => result,
        Ok(Err(panic)) => Err(StepError::Terminal(format!(
            "step panicked: {}",
            panic_message(panic.as_ref())
        ))),
        Err(_elapsed) => Err(StepError::Retryable(format!(
            "attempt timed out after {} ms",
            timeout.as_millis()
        ))),
    }
}

type Panic = Box<dyn std::any::Any + Send>;

/// Polls a future, turning a panic inside it into an `Err`.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Panic>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(move || inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-text panic payload".into())
}
