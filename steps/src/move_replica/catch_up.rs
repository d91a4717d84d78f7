//! **CatchUp**: waits until the group's leader has replicated to the
//! learner everything that was committed when the step began. It reads the
//! leader's committed index C once and checkpoints it (a re-run waits for
//! the same target), then polls the leader's matched index for `to_node`
//! until it reaches C. `add_learner` returning does not mean caught up.
//!
//! Bounded: one attempt polls every `poll_interval` for at most
//! `catch_up_wait`, then fails retryably; a cancel is honoured between
//! polls. Every attempt re-sends `EnsureGroup` (a restarted node runs a
//! learner's group only when asked), and so does a poll after
//! `resend_after` without progress; a learner that went missing is added
//! again (idempotent).
//!
//! Compensation: remove the learner, as AddLearner's (idempotent).

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use shardflow_workflow::{encode_output, RetryPolicy, Step, StepError};
use tokio::time::Instant;

use super::add_learner::{LearnerPlan, NAME as ADD_LEARNER};
use super::{migration_error, Ctx, MoveReplicaInput, Shared};
use crate::failpoint::failpoint;

/// The checkpoint: the index the learner must reach.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatchUpTarget {
    /// The leader's committed index when the step began.
    pub committed: u64,
}

/// Where CatchUp left the learner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatchUpOutput {
    /// The target: the committed index when the step began.
    pub target_index: u64,
    /// The learner's matched index when it was found caught up.
    pub matched_index: u64,
    /// How long this attempt polled.
    pub waited_ms: u64,
}

pub struct CatchUp(pub Arc<Shared>);

#[async_trait]
impl Step<MoveReplicaInput> for CatchUp {
    fn name(&self) -> &'static str {
        "CatchUp"
    }

    fn retry_policy(&self) -> RetryPolicy {
        let config = &self.0.config;
        RetryPolicy {
            attempt_timeout: self.0.attempt_timeout(6, config.catch_up_wait),
            ..RetryPolicy::attempts(3)
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Vec<u8>, StepError> {
        let shared = &self.0;
        let config = &shared.config;
        let input = ctx.input();
        let (group, to) = (input.group, input.to_node);
        let plan: LearnerPlan = ctx
            .output_of(ADD_LEARNER)?
            .ok_or_else(|| StepError::terminal("AddLearner has no output"))?;

        shared.ensure_group(ctx, &plan.addr).await?;
        let status = shared.replication(group).await?;
        let target = match ctx.last_checkpoint() {
            Some(bytes) => {
                let target: CatchUpTarget = postcard::from_bytes(bytes)
                    .map_err(|e| StepError::terminal(format!("bad CatchUp checkpoint: {e}")))?;
                target.committed
            }
            None => {
                let committed = status.committed.unwrap_or(0);
                let bytes = postcard::to_stdvec(&CatchUpTarget { committed })
                    .map_err(|e| StepError::terminal(format!("cannot encode the target: {e}")))?;
                ctx.checkpoint(bytes).await?;
                committed
            }
        };
        if !status.learners.contains(&to) && !status.voters.contains(&to) {
            tracing::warn!(
                group,
                node = to,
                "the learner went missing; adding it again"
            );
            failpoint!("replica.membership.before", call = "add_learner");
            shared
                .api
                .add_learner(group, to, plan.addr.clone(), shared.deadline())
                .await
                .map_err(migration_error)?;
            failpoint!("replica.membership.after", call = "add_learner");
        }

        let started = Instant::now();
        let give_up = started + config.catch_up_wait;
        let mut best: Option<u64> = None;
        let mut progressed_at = started;
        loop {
            if ctx.is_cancelled() {
                return Err(StepError::Cancelled);
            }
            let status = shared.replication(group).await?;
            let matched = status.matched.get(&to).copied().flatten();
            if let Some(matched) = matched.filter(|m| *m >= target) {
                let waited_ms = started.elapsed().as_millis() as u64;
                tracing::info!(
                    group,
                    node = to,
                    target,
                    matched,
                    waited_ms,
                    "learner caught up"
                );
                return encode_output(&CatchUpOutput {
                    target_index: target,
                    matched_index: matched,
                    waited_ms,
                });
            }
            if matched > best {
                best = matched;
                progressed_at = Instant::now();
            } else if progressed_at.elapsed() >= config.resend_after {
                // No progress: the learner's node may have restarted.
                if let Err(error) = shared.ensure_group(ctx, &plan.addr).await {
                    tracing::debug!(group, node = to, ?error, "EnsureGroup re-send failed");
                }
                progressed_at = Instant::now();
            }
            if Instant::now() >= give_up {
                return Err(StepError::retryable(format!(
                    "node {to} did not catch up with group {group} in {} ms: \
                     matched {matched:?}, target {target}",
                    config.catch_up_wait.as_millis()
                )));
            }
            tokio::select! {
                _ = ctx.cancelled() => return Err(StepError::Cancelled),
                _ = tokio::time::sleep(config.poll_interval) => {}
            }
        }
    }

    async fn compensate(&self, ctx: &Ctx) -> Result<(), StepError> {
        self.0.remove_learner(ctx).await
    }
}
