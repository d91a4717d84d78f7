//! **CutOver**: a last catch-up pass; fence the vShard on the source with
//! id `(epoch, attempt)` and a deadline (a Raft entry at index f); drain
//! exactly up to f; compare the digests of source and target (the
//! source's taken while the target drains: its copy is frozen from f on);
//! commit `Transfer` in the metadata group — **the point of no return**,
//! journaled while the target activates and the source copy turns into a
//! ghost (`MarkMoved`; neither copy takes writes between `Transfer` and
//! `Activate`, so the two go at once). The write pause, from the fence
//! applied to the target activated, is measured and journaled as
//! `write_pause_us`.
//!
//! If the drain would overrun the pause budget before `Transfer`, the step
//! unfences (its own fence id) and fails retryably: the next attempt
//! catches up again and fences anew (bounded by the retry policy, then the
//! workflow compensates).
//!
//! Compensation (only before `Transfer`): `Unfence` every fence of this
//! driver epoch. A re-run after `Transfer` committed rolls forward.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use shardflow_node::command::{Command, DataOp, FenceId, MetadataOp, Rejection, ResponseV1};
use shardflow_node::metadata::MigrationPhase;
use shardflow_node::migration::now_ms;
use shardflow_workflow::{encode_output, RetryPolicy, Step, StepError};
use tokio::time::Instant;

use super::catch_up::catch_up;
use super::{key, migration_error, migration_id, Ctx, MoveVShardInput, Shared};
use crate::failpoint::failpoint;

/// What the cut-over did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CutOverOutput {
    /// The routing epoch at which the target owns the vShard.
    pub epoch: u64,
    /// The measured write pause (`None` when a re-run rolled forward).
    pub pause_us: Option<u64>,
    pub fence_index: Option<u64>,
}

pub struct CutOver(pub Arc<Shared>);

/// A failed cut-over attempt.
pub(crate) enum Failed {
    /// Transfer did not commit: the attempt may lift its own fence.
    Before(StepError),
    /// A `Transfer` was proposed and not answered: it may still commit, so
    /// the fence must stay (the next attempt, or its deadline, settles it).
    Undecided(StepError),
}

impl From<StepError> for Failed {
    fn from(error: StepError) -> Self {
        Failed::Before(error)
    }
}

impl CutOver {
    /// After `Transfer`: activate on the target, ghost on the source.
    async fn roll_forward(&self, ctx: &Ctx, from: u64, epoch: u64) -> Result<(), StepError> {
        let shared = &self.0;
        let input = ctx.input();
        let migration = migration_id(ctx);
        let activate = DataOp::Activate {
            vshard: input.vshard,
            migration: migration.clone(),
            epoch,
        };
        shared
            .propose_ok(
                input.to_group,
                Command::data(activate),
                key(ctx, "activate"),
            )
            .await?;
        self.mark_moved(ctx, from, epoch, &migration).await
    }

    async fn mark_moved(
        &self,
        ctx: &Ctx,
        from: u64,
        epoch: u64,
        migration: &str,
    ) -> Result<(), StepError> {
        let shared = &self.0;
        let input = ctx.input();
        let moved = DataOp::MarkMoved {
            vshard: input.vshard,
            migration: migration.to_string(),
            to_group: input.to_group,
            epoch,
        };
        match shared
            .propose(from, Command::data(moved), key(ctx, "moved"))
            .await?
        {
            Ok(_) => Ok(()),
            // The reactor (or cleanup) got there first.
            Err(Rejection::WrongState { .. } | Rejection::MigrationClosed { .. }) => Ok(()),
            // MarkMoved only runs after `Transfer` committed, so the source
            // can no longer track this migration as anything but a ghost:
            // none tracked means the reactor already dropped the ghost (seen
            // in the crash matrix: driver killed after Activate, restarted
            // past the ghost's TTL), another one means a later migration of
            // the vShard. Either way nothing is left to mark.
            Err(Rejection::WrongMigration { .. }) => Ok(()),
            Err(rejection) => Err(StepError::retryable(format!(
                "MarkMoved refused: {rejection:?}"
            ))),
        }
    }

    async fn unfence(&self, ctx: &Ctx, from: u64, up_to: FenceId) -> Result<(), StepError> {
        let shared = &self.0;
        let unfence = DataOp::Unfence {
            vshard: ctx.input().vshard,
            migration: migration_id(ctx),
            up_to,
        };
        let unfence_key = key(ctx, &format!("unfence/{}/{}", up_to.0, up_to.1));
        match shared
            .propose(from, Command::data(unfence), unfence_key)
            .await?
        {
            Ok(_) => Ok(()),
            // Closed (released by an abort): nothing is fenced any more.
            Err(Rejection::MigrationClosed { .. }) => Ok(()),
            Err(rejection) => Err(StepError::retryable(format!(
                "Unfence refused: {rejection:?}"
            ))),
        }
    }

    /// Fence → drain → digests → Transfer. `Ok((epoch, fence index, fenced
    /// at))` once Transfer committed.
    async fn fence_and_transfer(
        &self,
        ctx: &Ctx,
        from: u64,
        fence_id: FenceId,
    ) -> Result<(u64, u64, Instant), Failed> {
        let shared = &self.0;
        let input = ctx.input();
        let migration = migration_id(ctx);
        let budget = Duration::from_millis(input.pause_budget_ms);
        // The fence outlives a dead driver by at most this.
        let deadline_ms = now_ms() + input.lease_ms.max(input.pause_budget_ms * 4);
        let fence = DataOp::Fence {
            vshard: input.vshard,
            migration: migration.clone(),
            fence_id,
            deadline_ms,
        };
        let fence_key = key(ctx, &format!("fence/{}/{}", fence_id.0, fence_id.1));
        let fence_index = match shared
            .propose_ok(from, Command::data(fence), fence_key)
            .await?
        {
            ResponseV1::Fenced { fence_index } => fence_index,
            other => return Err(StepError::terminal(format!("Fence answered {other:?}")).into()),
        };
        let fenced_at = Instant::now();
        failpoint!("vshard.cutover.fenced");
        let over_budget = |what: &str| {
            StepError::retryable(format!(
                "the write pause would exceed its budget of {} ms ({what} after {} ms)",
                input.pause_budget_ms,
                fenced_at.elapsed().as_millis()
            ))
        };

        // From the fence on the source's copy no longer changes, so its
        // digest is taken while the target drains; the target's digest once
        // it has applied every change up to the fence.
        let source_digest = async {
            shared
                .api
                .digest(from, input.vshard, shared.deadline())
                .await
                .map_err(migration_error)
        };
        // Drain exactly up to the fence: no write is applied after it.
        let drained_target_digest = async {
            let mut after = shared.target_applied(ctx).await?;
            let base: Option<super::base_copy::BaseCopyOutput> = ctx.output_of("BaseCopy")?;
            after = after.max(base.map_or(0, |b| b.since_index));
            let mut round = 0u32;
            while after < fence_index {
                if fenced_at.elapsed() > budget {
                    return Err(over_budget("draining").into());
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
                let complete = (page.changes.len() as u32) < shared.config.changes_per_round;
                let changes: Vec<_> = (page.changes.into_iter())
                    .filter(|(index, _)| *index <= fence_index)
                    .collect();
                if let Some(&(last, _)) = changes.last() {
                    round += 1;
                    let apply = DataOp::ApplyChanges {
                        vshard: input.vshard,
                        migration: migration.clone(),
                        changes,
                    };
                    let drain_key =
                        key(ctx, &format!("drain/{}/{}/{round}", fence_id.0, fence_id.1));
                    match shared
                        .propose_ok(input.to_group, Command::data(apply), drain_key)
                        .await?
                    {
                        ResponseV1::ChangesApplied { up_to_index } => after = up_to_index.max(last),
                        other => {
                            return Err(StepError::terminal(format!(
                                "ApplyChanges answered {other:?}"
                            ))
                            .into())
                        }
                    }
                }
                if complete && page.applied_index >= fence_index {
                    // Every change up to the fence is applied.
                    break;
                }
            }

            shared
                .api
                .digest(input.to_group, input.vshard, shared.deadline())
                .await
                .map_err(migration_error)
                .map_err(Failed::from)
        };
        let (source, target) = tokio::join!(source_digest, drained_target_digest);
        let source = source?;
        let target = target?;
        if source.digest != target.digest {
            return Err(StepError::retryable(format!(
                "digests differ at the fence (index {fence_index}): source {:?}, target {:?}",
                source.digest, target.digest
            ))
            .into());
        }
        if fenced_at.elapsed() > budget {
            return Err(over_budget("before Transfer").into());
        }

        let transfer = MetadataOp::Transfer {
            migration: migration.clone(),
            driver_epoch: ctx.epoch(),
            now_ms: now_ms(),
        };
        // An unanswered Transfer may still commit: re-propose it under the
        // same key (answered with the first result if it committed) until
        // the answer is definite, and read the registry (the decision
        // record) between tries. Until then the fence must stay. Past the
        // fence's deadline the source asks the metadata group to abort,
        // which settles it too; we keep asking until a little after that,
        // so an attempt rarely ends with the decision unknown (a cancel
        // then compensates only a migration that really did not transfer).
        let settle_by = Instant::now()
            + Duration::from_millis(deadline_ms.saturating_sub(now_ms()))
            + shared.config.call_timeout;
        let answer = loop {
            let command = Command::metadata(transfer.clone());
            let error = match shared.propose(0, command, key(ctx, "transfer")).await {
                Ok(answer) => break answer,
                Err(error) => error,
            };
            if let Ok(Some(record)) = shared.record(ctx).await {
                match record.phase {
                    MigrationPhase::Transferred { epoch } => {
                        break Ok(ResponseV1::Transferred { epoch })
                    }
                    MigrationPhase::Aborted => {
                        return Err(StepError::terminal(format!(
                            "the migration was aborted during the cut-over: {:?}",
                            record.abort
                        ))
                        .into())
                    }
                    MigrationPhase::Locked => {}
                }
            }
            if Instant::now() >= settle_by {
                return Err(Failed::Undecided(error));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        match answer {
            Ok(ResponseV1::Transferred { epoch }) => Ok((epoch, fence_index, fenced_at)),
            Ok(other) => Err(StepError::terminal(format!("Transfer answered {other:?}")).into()),
            Err(rejection) => {
                Err(StepError::terminal(format!("Transfer refused: {rejection:?}")).into())
            }
        }
    }
}

#[async_trait]
impl Step<MoveVShardInput> for CutOver {
    fn name(&self) -> &'static str {
        "CutOver"
    }

    /// Bounded tries: each attempt that overruns the budget unfences and
    /// fails retryably; once exhausted, the workflow compensates.
    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            attempt_timeout: Duration::from_secs(300),
            ..RetryPolicy::attempts(5)
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Vec<u8>, StepError> {
        let shared = &self.0;
        let from = shared.source_group(ctx)?;
        // The registry is the decision record: roll forward if Transfer
        // committed (a re-run after a crash past the point of no return).
        let record = shared
            .record(ctx)
            .await?
            .ok_or_else(|| StepError::terminal("the migration is not in the registry"))?;
        match record.phase {
            MigrationPhase::Transferred { epoch } => {
                if ctx.state().point_of_no_return.is_none() {
                    ctx.point_of_no_return().await?;
                }
                self.roll_forward(ctx, from, epoch).await?;
                return encode_output(&CutOverOutput {
                    epoch,
                    pause_us: None,
                    fence_index: None,
                });
            }
            MigrationPhase::Aborted => {
                return Err(StepError::terminal(format!(
                    "the migration was aborted: {:?}",
                    record.abort
                )))
            }
            MigrationPhase::Locked => {}
        }
        shared.renew(ctx).await?;
        // Catch up until what is left drains quickly.
        catch_up(
            shared,
            ctx,
            "cutover-catchup",
            shared.config.lag_threshold,
            false,
        )
        .await?;
        if ctx.is_cancelled() {
            return Err(StepError::Cancelled);
        }

        let fence_id: FenceId = (ctx.epoch(), ctx.attempt());
        let (epoch, fence_index, fenced_at) =
            match self.fence_and_transfer(ctx, from, fence_id).await {
                Ok(done) => done,
                Err(Failed::Before(error)) => {
                    // Transfer did not commit (or was refused): lift our fence.
                    if let Err(unfence) = self.unfence(ctx, from, fence_id).await {
                        tracing::warn!(?unfence, "unfence after a failed cut-over failed");
                    }
                    return Err(error);
                }
                Err(Failed::Undecided(error)) => return Err(error),
            };
        failpoint!("vshard.cutover.transferred");
        let input = ctx.input();
        let activate = DataOp::Activate {
            vshard: input.vshard,
            migration: migration_id(ctx),
            epoch,
        };
        // `Transfer` committed: the registry decides the roll forward, so
        // activating need not wait for the journal. `PointOfNoReturn` is
        // journaled while the target activates (a crash between the two
        // re-runs this step, which reads the registry and rolls forward),
        // and the source becomes a ghost meanwhile: from `Transfer` on
        // neither copy takes writes until `Activate`, so the order of the
        // two does not matter, and a client the ghost sends on to the
        // target polls it (`Fenced`, "being activated") instead of waiting
        // for `MarkMoved` to follow `Activate`.
        let migration = migration_id(ctx);
        let activated = async {
            shared
                .propose_ok(
                    input.to_group,
                    Command::data(activate),
                    key(ctx, "activate"),
                )
                .await?;
            Ok::<_, StepError>(fenced_at.elapsed().as_micros() as u64)
        };
        let (crossed, activated, moved) = tokio::join!(
            ctx.point_of_no_return(),
            activated,
            self.mark_moved(ctx, from, epoch, &migration),
        );
        crossed?;
        let pause_us = activated?;
        moved?;
        ctx.record_metric("write_pause_us", pause_us).await?;
        tracing::info!(migration = %migration_id(ctx), epoch, pause_us, "cut over");
        encode_output(&CutOverOutput {
            epoch,
            pause_us: Some(pause_us),
            fence_index: Some(fence_index),
        })
    }

    async fn compensate(&self, ctx: &Ctx) -> Result<(), StepError> {
        let shared = &self.0;
        let from = shared.source_group(ctx)?;
        // `Transfer` may have committed without `PointOfNoReturn` journaled
        // (the driver died between the two, with a cancel pending). The
        // registry is the decision record: the migration rolls forward. The
        // engine cannot leave compensation once started, so finish the data
        // side (idempotent, as the reactors would) and park the workflow
        // for an operator with the reason.
        if let Some(record) = shared.record(ctx).await? {
            if let MigrationPhase::Transferred { epoch } = record.phase {
                if let Err(error) = self.roll_forward(ctx, from, epoch).await {
                    // The reactors finish it anyway.
                    tracing::warn!(%error, "rolling forward from a compensation failed");
                }
                return Err(StepError::terminal(format!(
                    "cannot compensate: Transfer committed at epoch {epoch} before the \
                     point of no return was journaled; the migration rolled forward \
                     (the target owns the vShard, the reactors clean the source up)"
                )));
            }
        }
        // The abort commits first: it is ordered against any Transfer still
        // in flight, and only after it may the source unfence (its
        // `ReleaseSource` lifts the fence too).
        shared.abort_and_undo(ctx, "compensated: CutOver").await?;
        // Every fence this driver placed has an id at or below this one.
        self.unfence(ctx, from, (ctx.epoch(), u32::MAX)).await
    }
}
