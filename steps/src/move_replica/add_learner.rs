//! **AddLearner**: checks the move, then starts the group's Raft on
//! `to_node`, uninitialized (`EnsureGroup`), and adds `to_node` as a learner
//! (openraft `add_learner`, non-blocking: the learner is not caught up when
//! it returns — that is CatchUp's job).
//!
//! Refused, terminally, with the reason: the metadata group, `from_node ==
//! to_node`, an unknown group, a `from_node` that is not a member, a
//! `to_node` that is no node of the cluster or already a member or a
//! learner of the group, another learner in the group (another move in
//! flight). A joint configuration, or voters that differ from the members
//! the metadata records (a move not yet recorded), fail retryably.
//!
//! The checks passed are checkpointed, durably, before anything acts: a
//! re-run after a crash acts again without checking again (its own learner
//! would fail the checks), and the compensations know whether this move
//! added anything to undo.
//!
//! Compensation: remove the learner, if the checks passed (idempotent; a
//! `to_node` that is no member is fine).

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use shardflow_node::command::METADATA_GROUP;
use shardflow_workflow::{encode_output, RetryPolicy, Step, StepError};

use super::{migration_error, voters, Ctx, MoveReplicaInput, Shared};
use crate::failpoint::failpoint;

/// The step's name: the other steps find its checkpoint and output by it.
pub const NAME: &str = "AddLearner";

/// What the checks found; the checkpoint and the output of the step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LearnerPlan {
    /// `to_node`'s address, as the metadata records it.
    pub addr: String,
    /// The group's voters when the move was checked.
    pub voters_before: Vec<u64>,
}

pub struct AddLearner(pub Arc<Shared>);

/// Whether AddLearner passed its checks (in this attempt or an earlier
/// one): only then may a compensation remove `to_node`'s learner.
pub(crate) fn passed_checks(ctx: &Ctx) -> bool {
    (ctx.state().steps.iter()).any(|record| record.name == NAME && record.checkpoint.is_some())
}

impl AddLearner {
    /// The checks of the move; `Ok` with the plan if it may go ahead.
    async fn check(&self, ctx: &Ctx) -> Result<LearnerPlan, StepError> {
        let shared = &self.0;
        let MoveReplicaInput {
            group,
            from_node: from,
            to_node: to,
        } = *ctx.input();
        if group == METADATA_GROUP {
            return Err(StepError::terminal(format!(
                "group {group} is the metadata group; MoveReplica moves data groups only"
            )));
        }
        if from == to {
            return Err(StepError::terminal(format!(
                "from_node and to_node are both node {from}"
            )));
        }
        let metadata = shared.metadata().await?;
        let members = (metadata.groups.get(&group))
            .ok_or_else(|| StepError::terminal(format!("group {group} does not exist")))?;
        if !members.contains(&from) {
            return Err(StepError::terminal(format!(
                "node {from} is not a member of group {group} (members {members:?})"
            )));
        }
        let addr = Shared::addr_of(&metadata, to)?;
        if members.contains(&to) {
            return Err(StepError::terminal(format!(
                "node {to} is already a member of group {group} (members {members:?})"
            )));
        }

        let status = shared.replication(group).await?;
        let current = voters(&status);
        if status.learners.contains(&to) {
            return Err(StepError::terminal(format!(
                "node {to} is already a learner of group {group} (another move to it?)"
            )));
        }
        if !status.learners.is_empty() {
            return Err(StepError::terminal(format!(
                "group {group} has learners {:?}: another replica move is in flight",
                status.learners
            )));
        }
        if status.joint {
            return Err(StepError::retryable(format!(
                "group {group} is changing its membership (voters {current:?})"
            )));
        }
        if current != *members {
            return Err(StepError::retryable(format!(
                "group {group}'s voters {current:?} differ from the members the metadata \
                 records {members:?}: a replica move is in flight or not recorded yet"
            )));
        }
        Ok(LearnerPlan {
            addr,
            voters_before: current.into_iter().collect(),
        })
    }
}

#[async_trait]
impl Step<MoveReplicaInput> for AddLearner {
    fn name(&self) -> &'static str {
        NAME
    }

    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            attempt_timeout: self.0.attempt_timeout(5, std::time::Duration::ZERO),
            ..RetryPolicy::attempts(5)
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Vec<u8>, StepError> {
        let shared = &self.0;
        let input = ctx.input();
        let plan: LearnerPlan = match ctx.last_checkpoint() {
            // Checked in an earlier attempt, which may have acted already.
            Some(bytes) => postcard::from_bytes(bytes)
                .map_err(|e| StepError::terminal(format!("bad AddLearner checkpoint: {e}")))?,
            None => {
                let plan = self.check(ctx).await?;
                let bytes = postcard::to_stdvec(&plan)
                    .map_err(|e| StepError::terminal(format!("cannot encode the plan: {e}")))?;
                ctx.checkpoint(bytes).await?;
                plan
            }
        };
        if ctx.is_cancelled() {
            return Err(StepError::Cancelled);
        }
        shared.ensure_group(ctx, &plan.addr).await?;
        failpoint!("replica.membership.before", call = "add_learner");
        shared
            .api
            .add_learner(
                input.group,
                input.to_node,
                plan.addr.clone(),
                shared.deadline(),
            )
            .await
            .map_err(migration_error)?;
        failpoint!("replica.membership.after", call = "add_learner");
        tracing::info!(
            workflow = %ctx.workflow_id(),
            group = input.group,
            node = input.to_node,
            "learner added"
        );
        encode_output(&plan)
    }

    async fn compensate(&self, ctx: &Ctx) -> Result<(), StepError> {
        self.0.remove_learner(ctx).await
    }
}
