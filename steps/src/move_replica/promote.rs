//! **Promote**: one membership change by joint consensus
//! (`change_membership`, `retain = false`) makes the voters the current
//! ones without `from_node` and with `to_node` (the caught-up learner).
//! This is **the point of no return**, journaled right before the change is
//! sent: from then on the workflow only rolls forward, and a failure pauses
//! it for an operator.
//!
//! Idempotent: a re-run that finds `to_node` a voter, `from_node` gone and
//! no joint configuration sends nothing; one that finds the joint
//! configuration sends the same change again (openraft finishes it).
//! Then the step waits, bounded by `settle_wait`, until a leader among the
//! new voters serves the uniform configuration.
//!
//! **When `from_node` leads** (departure from DESIGN §4, "leadership moves
//! first"): openraft 0.9 has no leadership-transfer API, so the change goes
//! to the old leader itself. It commits the joint configuration, then the
//! uniform one without itself, and steps down; the remaining voters elect
//! a new leader after an election timeout, during which writes to the group
//! are refused with a retryable error.
//!
//! Compensation: none (roll forward only).

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use shardflow_workflow::{encode_output, RetryPolicy, Step, StepError};
use tokio::time::Instant;

use super::{migration_error, voters, Ctx, MoveReplicaInput, Shared};
use crate::failpoint::failpoint;

/// The group after the change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromoteOutput {
    /// The new voters (sorted).
    pub voters: Vec<u64>,
    /// The leader that served the new configuration.
    pub leader: u64,
    /// Whether this attempt sent the change (false: found it done).
    pub changed: bool,
}

pub struct Promote(pub Arc<Shared>);

#[async_trait]
impl Step<MoveReplicaInput> for Promote {
    fn name(&self) -> &'static str {
        "Promote"
    }

    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            attempt_timeout: self.0.attempt_timeout(4, self.0.config.settle_wait),
            ..RetryPolicy::attempts(5)
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Vec<u8>, StepError> {
        let shared = &self.0;
        let input = ctx.input();
        let (group, from, to) = (input.group, input.from_node, input.to_node);
        let status = shared.replication(group).await?;
        let current = voters(&status);
        let target: BTreeSet<u64> = (current.iter().copied())
            .filter(|v| *v != from)
            .chain([to])
            .collect();
        let done = current.contains(&to) && !current.contains(&from) && !status.joint;
        if !done {
            if ctx.state().point_of_no_return.is_none() {
                if !status.learners.contains(&to) && !current.contains(&to) {
                    return Err(StepError::terminal(format!(
                        "node {to} is not a learner of group {group} any more"
                    )));
                }
                if !current.contains(&from) {
                    return Err(StepError::terminal(format!(
                        "node {from} is not a voter of group {group} any more (voters {current:?})"
                    )));
                }
                if ctx.is_cancelled() {
                    return Err(StepError::Cancelled);
                }
                ctx.point_of_no_return().await?;
            }
            tracing::info!(group, ?current, ?target, "changing the membership");
            failpoint!("replica.membership.before", call = "change_membership");
            shared
                .api
                .change_membership(group, target.clone(), shared.deadline())
                .await
                .map_err(migration_error)?;
            failpoint!("replica.membership.after", call = "change_membership");
        } else if ctx.state().point_of_no_return.is_none() {
            // Found done without this workflow sending it (the point of no
            // return is journaled before it sends): Record follows and only
            // rolls forward, so the journal says so too.
            ctx.point_of_no_return().await?;
        }

        // Wait until a leader among the new voters serves the uniform
        // configuration (with the old leader removed, an election first).
        let give_up = Instant::now() + shared.config.settle_wait;
        loop {
            let last = match shared.replication(group).await {
                Ok(status)
                    if voters(&status) == target
                        && !status.joint
                        && target.contains(&status.leader) =>
                {
                    tracing::info!(group, leader = status.leader, ?target, "replica moved");
                    return encode_output(&PromoteOutput {
                        voters: target.into_iter().collect(),
                        leader: status.leader,
                        changed: !done,
                    });
                }
                Ok(status) => format!(
                    "leader {}, voters {:?}, joint {}",
                    status.leader, status.voters, status.joint
                ),
                Err(error) => error.to_string(),
            };
            if Instant::now() >= give_up {
                return Err(StepError::retryable(format!(
                    "group {group} did not settle on voters {target:?} in {} ms: {last}",
                    shared.config.settle_wait.as_millis()
                )));
            }
            tokio::time::sleep(shared.config.poll_interval).await;
        }
    }

    async fn compensate(&self, _ctx: &Ctx) -> Result<(), StepError> {
        // Before the point of no return nothing was changed (CatchUp's and
        // AddLearner's compensations remove the learner); after it the
        // workflow does not compensate.
        Ok(())
    }
}
