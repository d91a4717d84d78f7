//! **CatchUp**: streams the source's recorded changes of the vShard, in log
//! order, to the target (`ApplyChanges`, idempotent by source index) and
//! trims what the target confirmed (`TrimChanges`), until a round finds
//! the lag under a threshold. Bounded rounds; if the lag stops shrinking
//! for a bounded number of rounds, fails with that reason.
//!
//! **Progress.** After each round the step checkpoints a
//! [`CatchUpProgress`] (postcard, like the copy cursor): the round (counted
//! over every attempt of the step), the changes that round found, and the
//! source log index applied on the target so far. CutOver's own catch-up
//! pass before each fence does not checkpoint.
//!
//! Compensation: the abort path, as BaseCopy's (idempotent).

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use shardflow_node::command::{Command, DataOp, ResponseV1};
use shardflow_workflow::{encode_output, RetryPolicy, Step, StepError};

use super::base_copy::BaseCopyOutput;
use super::{key, migration_error, migration_id, Ctx, MoveVShardInput, Shared};
use crate::failpoint::failpoint;

/// Where CatchUp left the target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatchUpOutput {
    /// The highest source log index applied on the target.
    pub applied_up_to: u64,
    pub rounds: u32,
    /// Changes found by the last round.
    pub last_lag: u64,
}

/// The checkpointed progress of CatchUp, one per round (postcard in the
/// `Checkpoint` events of the CatchUp step:
/// `postcard::from_bytes::<CatchUpProgress>`). Fields are only appended.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatchUpProgress {
    /// Rounds done, over every attempt of the step (from 1).
    pub round: u32,
    /// Changes the round found (at most `changes_per_round`): what the
    /// target was behind by when the round began, up to a page.
    pub lag: u64,
    /// The highest source log index applied on the target.
    pub applied_up_to: u64,
}

pub struct CatchUp(pub Arc<Shared>);

/// One catch-up pass (also run by CutOver before each fence): rounds of
/// fetch → apply → trim until a round finds at most `threshold` changes.
/// With `checkpoint`, each round journals a [`CatchUpProgress`].
/// Returns (applied up to, rounds, last lag).
pub(crate) async fn catch_up(
    shared: &Shared,
    ctx: &Ctx,
    label: &str,
    threshold: usize,
    checkpoint: bool,
) -> Result<(u64, u32, u64), StepError> {
    let input = ctx.input();
    let from = shared.source_group(ctx)?;
    let migration = migration_id(ctx);
    let base: Option<BaseCopyOutput> = ctx.output_of("BaseCopy")?;
    let since = base.map_or(0, |b| b.since_index);
    let mut after = since.max(shared.target_applied(ctx).await?);
    let mut best_lag = u64::MAX;
    let mut stalled = 0u32;
    // Rounds of earlier attempts, so the journaled round only grows.
    let rounds_before = match ctx.last_checkpoint().filter(|_| checkpoint) {
        Some(bytes) => {
            postcard::from_bytes::<CatchUpProgress>(bytes).map_or(0, |progress| progress.round)
        }
        None => 0,
    };
    for round in 1..=shared.config.max_rounds {
        if ctx.is_cancelled() {
            return Err(StepError::Cancelled);
        }
        let page = shared
            .api
            .changes_after(
                from,
                input.vshard,
                after,
                shared.config.changes_per_round,
                shared.deadline(),
            )
            .await
            .map_err(migration_error)?;
        let lag = page.changes.len() as u64;
        if let Some(&(last, _)) = page.changes.last() {
            let apply = DataOp::ApplyChanges {
                vshard: input.vshard,
                migration: migration.clone(),
                changes: page.changes,
            };
            let apply_key = key(
                ctx,
                &format!("{label}/{}/{}/{round}", ctx.epoch(), ctx.attempt()),
            );
            after = match shared
                .propose_ok(input.to_group, Command::data(apply), apply_key)
                .await?
            {
                ResponseV1::ChangesApplied { up_to_index } => up_to_index.max(last),
                other => {
                    return Err(StepError::terminal(format!(
                        "ApplyChanges answered {other:?}"
                    )))
                }
            };
            let trim = DataOp::TrimChanges {
                vshard: input.vshard,
                migration: migration.clone(),
                up_to_index: after,
            };
            // Trimming acts again with a higher index each round: no key.
            failpoint!("vshard.propose.before", key = key(ctx, "trim"));
            shared
                .api
                .propose(from, Command::data(trim), shared.deadline())
                .await
                .map_err(migration_error)?;
            failpoint!("vshard.propose.after", key = key(ctx, "trim"));
        }
        if checkpoint {
            let progress = CatchUpProgress {
                round: rounds_before.saturating_add(round),
                lag,
                applied_up_to: after,
            };
            let progress = postcard::to_stdvec(&progress)
                .map_err(|e| StepError::terminal(format!("cannot encode progress: {e}")))?;
            ctx.checkpoint(progress).await?;
        }
        if lag as usize <= threshold {
            return Ok((after, round, lag));
        }
        if lag < best_lag {
            best_lag = lag;
            stalled = 0;
        } else {
            stalled += 1;
            if stalled >= shared.config.max_stalled_rounds {
                return Err(StepError::retryable(format!(
                    "the lag stopped shrinking: {lag} changes per round after {round} rounds"
                )));
            }
        }
        if round % 8 == 0 {
            shared.renew(ctx).await?;
        }
    }
    Err(StepError::retryable(format!(
        "the lag stayed above {threshold} after {} rounds",
        shared.config.max_rounds
    )))
}

#[async_trait]
impl Step<MoveVShardInput> for CatchUp {
    fn name(&self) -> &'static str {
        "CatchUp"
    }

    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            attempt_timeout: std::time::Duration::from_secs(600),
            ..RetryPolicy::attempts(5)
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Vec<u8>, StepError> {
        let shared = &self.0;
        if shared.renew(ctx).await?.is_some() {
            return Err(StepError::terminal(
                "Transfer committed before CatchUp ended",
            ));
        }
        let (applied_up_to, rounds, last_lag) =
            catch_up(shared, ctx, "apply", shared.config.lag_threshold, true).await?;
        encode_output(&CatchUpOutput {
            applied_up_to,
            rounds,
            last_lag,
        })
    }

    async fn compensate(&self, ctx: &Ctx) -> Result<(), StepError> {
        self.0.abort_and_undo(ctx, "compensated: CatchUp").await
    }
}
