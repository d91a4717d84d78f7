//! One MoveVShard as the bench drives it: submitted through the client as
//! an operator would (the node that answers journals and drives it),
//! followed on the driving node's engine until it settles, and read back
//! from its workflow state: the write pause its cut-over journaled and the
//! base copy's bytes and duration.

use std::time::{Duration, Instant};

use shardflow_node::client::Client;
use shardflow_steps::progress::progress;
use shardflow_workflow::{now_ms, Engine, Phase, WorkflowId, WorkflowState};

use crate::embedded::EmbeddedCluster;

use super::BenchError;

/// The vShard that moves back and forth between two groups.
#[derive(Clone, Debug)]
pub struct Mover {
    pub vshard: u16,
    /// The group that owns it now, and the one it moves to next.
    pub owner: u64,
    pub other: u64,
}

/// What one migration did.
#[derive(Clone, Debug)]
pub struct MigrationRun {
    pub id: WorkflowId,
    /// From the submission to the moment the driver settled it, since the
    /// caller's origin.
    pub from: Duration,
    pub to: Duration,
    /// The write pause the cut-over measured and journaled (fence applied
    /// on the source until the target accepts writes), µs.
    pub journaled_pause_us: Option<f64>,
    /// Key and value bytes the base copy moved, and how long the step took
    /// (journal times, ms resolution; at least 1 ms).
    pub copy_bytes: u64,
    pub copy_elapsed: Duration,
    /// The CutOver step's last attempt, since the caller's origin (journal
    /// times, ms resolution).
    pub cut_over: Option<(Duration, Duration)>,
}

impl Mover {
    /// `vshard`, moving between the group that owns it and the next one of
    /// the `groups` data groups.
    pub async fn new(client: &Client, vshard: u16, groups: u64) -> Result<Mover, BenchError> {
        let routing = client.routing().await?;
        let owner = (routing.routes.get(usize::from(vshard)))
            .map(|route| route.group)
            .ok_or_else(|| BenchError::Measure(format!("no route for vShard {vshard}")))?;
        Ok(Mover {
            vshard,
            owner,
            other: owner % groups.max(2) + 1,
        })
    }

    /// Submits the next move; the workflow id names the driving node.
    pub async fn submit(&self, client: &Client) -> Result<WorkflowId, BenchError> {
        Ok(client
            .migrate_vshard(u32::from(self.vshard), self.other, None)
            .await?)
    }

    /// Records that the move completed: the vShard changed owner.
    pub fn moved(&mut self) {
        std::mem::swap(&mut self.owner, &mut self.other);
    }

    /// Moves the vShard to the other group and waits until it completes;
    /// times are since `origin`.
    pub async fn migrate(
        &mut self,
        cluster: &EmbeddedCluster,
        origin: Instant,
    ) -> Result<MigrationRun, BenchError> {
        let from = origin.elapsed();
        // The origin on the journal's clock (ms since the Unix epoch).
        let origin_ms = now_ms().saturating_sub(from.as_millis() as u64);
        let id = self.submit(cluster.client()).await?;
        let engine = driver(cluster, id)?;
        let state = settle(&engine, id).await?;
        let to = origin.elapsed();
        self.moved();
        Ok(run_of(id, from, to, origin_ms, &state))
    }
}

/// The engine of the node driving `id`.
pub fn driver(cluster: &EmbeddedCluster, id: WorkflowId) -> Result<Engine, BenchError> {
    (cluster.node(id.node))
        .map(|node| node.engine().clone())
        .ok_or_else(|| BenchError::Measure(format!("node {} drives {id} but is down", id.node)))
}

/// Waits until `id` settles on `engine`; its state, if it completed.
pub async fn settle(engine: &Engine, id: WorkflowId) -> Result<WorkflowState, BenchError> {
    engine.wait(id).await?;
    let state = engine.state(id).await?;
    match &state.phase {
        Phase::Completed => Ok(state),
        Phase::Aborted { reason }
        | Phase::Paused { reason, .. }
        | Phase::Compensating { reason } => Err(BenchError::Migration {
            id: id.to_string(),
            phase: state.phase.label(),
            reason: reason.clone(),
        }),
        Phase::Running => Err(BenchError::Migration {
            id: id.to_string(),
            phase: state.phase.label(),
            reason: "still running after it settled".into(),
        }),
    }
}

/// The figures of a completed migration's state.
fn run_of(
    id: WorkflowId,
    from: Duration,
    to: Duration,
    origin_ms: u64,
    state: &WorkflowState,
) -> MigrationRun {
    let figures = progress(state);
    let window = |name: &str| {
        (state.steps.iter())
            .find(|step| step.name == name)
            .and_then(|step| Some((step.started_at_ms?, step.ended_at_ms?)))
    };
    let copy_ms = window("BaseCopy").map_or(0, |(start, end)| end.saturating_sub(start));
    let since_origin = |ms: u64| Duration::from_millis(ms.saturating_sub(origin_ms));
    let cut_over = window("CutOver").map(|(start, end)| (since_origin(start), since_origin(end)));
    MigrationRun {
        id,
        from,
        to,
        journaled_pause_us: figures.write_pause_us.map(|us| us as f64),
        copy_bytes: figures.bytes_copied,
        copy_elapsed: Duration::from_millis(copy_ms.max(1)),
        cut_over,
    }
}
