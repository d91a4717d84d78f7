//! **Record**: the metadata group records the group's new members
//! (`SetGroupMembers`, the voters Promote settled on), under the step's
//! idempotency key, so a re-proposal is answered with the first result.
//! Once it commits, the reconcile loop of `from_node` stops its replica
//! (the group's own membership no longer names it either), and the nodes
//! route to and initialize from the new members.
//!
//! Compensation: none (after the point of no return the workflow only
//! rolls forward).

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use shardflow_node::command::{Command, MetadataOp};
use shardflow_workflow::{encode_output, RetryPolicy, Step, StepError};

use super::promote::PromoteOutput;
use super::{key, Ctx, MoveReplicaInput, Shared};

/// What the metadata records now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordOutput {
    pub members: Vec<u64>,
}

pub struct Record(pub Arc<Shared>);

#[async_trait]
impl Step<MoveReplicaInput> for Record {
    fn name(&self) -> &'static str {
        "Record"
    }

    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            attempt_timeout: self.0.attempt_timeout(3, std::time::Duration::ZERO),
            ..RetryPolicy::attempts(8)
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Vec<u8>, StepError> {
        let shared = &self.0;
        let group = ctx.input().group;
        let promoted: PromoteOutput = ctx
            .output_of("Promote")?
            .ok_or_else(|| StepError::terminal("Promote has no output"))?;
        let members = promoted.voters;
        let set = MetadataOp::SetGroupMembers {
            group,
            members: members.clone(),
        };
        if let Err(rejection) = shared
            .propose(0, Command::metadata(set), key(ctx, ""))
            .await?
        {
            let message = format!("the metadata group refused {members:?}: {rejection:?}");
            return Err(if rejection.is_retryable() {
                StepError::retryable(message)
            } else {
                StepError::terminal(message)
            });
        }
        tracing::info!(group, ?members, "group members recorded");
        encode_output(&RecordOutput { members })
    }

    async fn compensate(&self, _ctx: &Ctx) -> Result<(), StepError> {
        Ok(())
    }
}
