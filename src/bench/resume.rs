//! From a node restart to its in-flight migration resumed. A migration is
//! submitted; once its base copy has made progress (or a later step
//! started), the node driving it is stopped — its driver halts as in a
//! crash, nothing journaled — and started again on the same address and
//! data. Three instants are taken:
//!
//! - **started**: `restart_node` returned (journal opened and verified,
//!   groups opened, unfinished workflows resumed: a new driver epoch);
//! - **groups ready**: every Raft group on the node follows a leader that
//!   is one (in the node's term): a group the stopped node led has elected
//!   again by then;
//! - **resumed**: the first event of the new driver that records work done
//!   (a checkpoint, a step succeeded, the end), by its journal time.
//!
//! `resume_ms` is resumed − groups ready (0 if it resumed first). The
//! migration is then followed until it completes.

use std::time::{Duration, Instant};

use shardflow_workflow::{now_ms, Engine, Envelope, Event, WorkflowId};

use crate::embedded::EmbeddedCluster;

use super::migration::{settle, Mover};
use super::BenchError;

/// How often the bench looks at the node and the journal.
const POLL: Duration = Duration::from_millis(2);
/// Bound on each wait.
const PATIENCE: Duration = Duration::from_secs(60);

/// What the restart measured.
#[derive(Clone, Debug)]
pub struct ResumeFigures {
    /// Restart call → node started with its workflows resumed, ms.
    pub started_ms: f64,
    /// Restart call → every group on the node knows its leader, ms.
    pub ready_ms: f64,
    /// Groups ready → the migration's first progress after the restart, ms.
    pub resume_ms: f64,
    /// Of `resume_ms`: the retry backoff the engine waited between
    /// journaling the interrupted attempt and starting the next one, ms.
    pub backoff_ms: f64,
    /// Of `resume_ms`: from groups ready to the re-run attempt's start
    /// (its `StepStarted`), ms (0 if it started first); the rest is the
    /// attempt's own work up to its first progress.
    pub to_attempt_ms: f64,
    /// The step that was in flight when the node stopped.
    pub step: String,
}

/// Restarts the node driving a fresh move of `mover` (groups `0..=groups`).
pub async fn measure(
    cluster: &mut EmbeddedCluster,
    mover: &mut Mover,
    groups: u64,
) -> Result<ResumeFigures, BenchError> {
    let id = mover.submit(cluster.client()).await?;
    let engine = super::migration::driver(cluster, id)?;
    let step = in_flight(&engine, id).await?;
    cluster.stop_node(id.node).await?;

    let restarted = Instant::now();
    cluster.restart_node(id.node).await?;
    let started_ms = restarted.elapsed().as_secs_f64() * 1e3;
    let cluster = &*cluster;
    let ready_at_ms = poll("the restarted node's groups to have leaders", || {
        std::future::ready(groups_ready(cluster, id.node, groups).then(now_ms))
    })
    .await?;
    let ready_ms = restarted.elapsed().as_secs_f64() * 1e3;
    let engine = super::migration::driver(cluster, id)?;
    let resumed = poll("the migration to resume", || first_progress(&engine, id)).await;
    let resumed_at_ms = match resumed {
        Ok(at_ms) => at_ms,
        Err(error) => return Err(stuck(&engine, id, error).await),
    };
    let events = engine.events(id).await?;
    let backoff_ms = retry_backoff_ms(&events);
    let to_attempt_ms = attempt_started_at_ms(&events)
        .map_or(0.0, |at_ms| at_ms.saturating_sub(ready_at_ms) as f64);
    settle(&engine, id).await?;
    mover.moved();
    Ok(ResumeFigures {
        started_ms,
        ready_ms,
        resume_ms: resumed_at_ms.saturating_sub(ready_at_ms) as f64,
        backoff_ms,
        to_attempt_ms,
        step,
    })
}

/// Whether every group (of `0..=groups`) that runs on `node` has a leader
/// the node follows: the node it names as leader is in the leader state,
/// in the node's term (a restarted node still names the leader of its
/// persisted vote until the group has elected again).
fn groups_ready(cluster: &EmbeddedCluster, node: u64, groups: u64) -> bool {
    let Some(restarted) = cluster.node(node) else {
        return false;
    };
    (0..=groups).all(|group| {
        let Some(raft) = restarted.raft(group) else {
            return true;
        };
        let (leader, term) = {
            let metrics = raft.metrics();
            let metrics = metrics.borrow();
            (metrics.current_leader, metrics.current_term)
        };
        let Some(leader) = leader else {
            return false;
        };
        (cluster.node(leader).and_then(|n| n.raft(group))).is_some_and(|raft| {
            let metrics = raft.metrics();
            let metrics = metrics.borrow();
            metrics.state.is_leader() && metrics.current_term == term
        })
    })
}

/// Waits until the migration is in flight past its lock (its copy has
/// checkpointed a chunk, or a later step started); the step it is in.
async fn in_flight(engine: &Engine, id: WorkflowId) -> Result<String, BenchError> {
    poll("the migration to get under way", move || async move {
        let state = engine.state(id).await.ok()?;
        if state.phase.is_settled() {
            return Some(Err(BenchError::Measure(format!(
                "{id} ended {} before the restart",
                state.phase.label()
            ))));
        }
        let copied = (state.steps.iter()).any(|s| s.name == "BaseCopy" && s.checkpoints >= 2);
        let later = (state.steps.iter().skip(2)).any(|s| s.started_at_ms.is_some());
        let step = state.in_flight.and_then(|f| state.steps.get(f.index));
        (copied || later).then(|| Ok(step.map_or_else(String::new, |s| s.name.clone())))
    })
    .await?
}

/// The journal time of the first event after the last `DriverStarted`
/// that records work done (or the end of the workflow), if there is one.
async fn first_progress(engine: &Engine, id: WorkflowId) -> Option<u64> {
    let events = engine.events(id).await.ok()?;
    let restart = (events.iter()).rposition(|e| matches!(body(e), Event::DriverStarted { .. }))?;
    events[restart..].iter().find_map(|envelope| {
        let done = matches!(
            body(envelope),
            Event::Checkpoint { .. }
                | Event::StepSucceeded { .. }
                | Event::Compensated { .. }
                | Event::Completed
                | Event::Aborted { .. }
                | Event::Paused { .. }
        );
        done.then(|| envelope.current().at_ms)
    })
}

/// `error`, with what the journal says since the restart.
async fn stuck(engine: &Engine, id: WorkflowId, error: BenchError) -> BenchError {
    let Ok(events) = engine.events(id).await else {
        return error;
    };
    let restart = (events.iter()).rposition(|e| matches!(body(e), Event::DriverStarted { .. }));
    let since: Vec<String> = (events[restart.unwrap_or(0)..].iter())
        .map(|e| format!("{:?}", body(e)))
        .map(|event| event.chars().take(120).collect())
        .collect();
    BenchError::Measure(format!(
        "{error}; {id} since its restart: {}",
        since.join(", ")
    ))
}

/// The journal time of the first attempt started after the last
/// `DriverStarted`.
fn attempt_started_at_ms(events: &[Envelope]) -> Option<u64> {
    let restart = (events.iter()).rposition(|e| matches!(body(e), Event::DriverStarted { .. }))?;
    events[restart..].iter().find_map(|e| match body(e) {
        Event::StepStarted { .. } | Event::CompensationStepStarted { .. } => {
            Some(e.current().at_ms)
        }
        _ => None,
    })
}

/// From the failure journaled for the interrupted attempt (right after
/// the last `DriverStarted`) to the next attempt's start, ms.
fn retry_backoff_ms(events: &[Envelope]) -> f64 {
    let restart = (events.iter()).rposition(|e| matches!(body(e), Event::DriverStarted { .. }));
    let after = &events[restart.unwrap_or(events.len())..];
    let failed = after.iter().find_map(|e| match body(e) {
        Event::StepFailed { .. } | Event::CompensationFailed { .. } => Some(e.current().at_ms),
        _ => None,
    });
    let started = after.iter().find_map(|e| match body(e) {
        Event::StepStarted { .. } | Event::CompensationStepStarted { .. } => {
            Some(e.current().at_ms)
        }
        _ => None,
    });
    match (failed, started) {
        (Some(failed), Some(started)) => started.saturating_sub(failed) as f64,
        _ => 0.0,
    }
}

fn body(envelope: &Envelope) -> &Event {
    &envelope.current().body
}

/// Calls `probe` every [`POLL`] until it answers, for at most [`PATIENCE`].
async fn poll<T, F, Fut>(what: &str, mut probe: F) -> Result<T, BenchError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(answer) = probe().await {
            return Ok(answer);
        }
        if Instant::now() >= deadline {
            return Err(BenchError::Measure(format!(
                "waited {PATIENCE:?} for {what}"
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}
