//! **Lock**: the metadata group records the migration (and refuses a second
//! one of the vShard, an unknown or same group, too many live migrations).
//! The lock is a lease held at the driver epoch `ctx.epoch()`; a resumed
//! driver re-locks at its higher epoch.
//!
//! Compensation: the abort path (abort, release the source, drop any
//! incoming copy) and `FinishMigration`, releasing the lock. Safe before
//! `Transfer`; refused by the metadata group after it.

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use shardflow_node::command::{Command, MetadataOp, Rejection, ResponseV1};
use shardflow_node::migration::now_ms;
use shardflow_workflow::{encode_output, RetryPolicy, Step, StepError};

use super::{key, migration_id, Ctx, MoveVShardInput, Shared};

/// What Lock found: the vShard's owner when it was locked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockOutput {
    pub from_group: u64,
}

pub struct Lock(pub Arc<Shared>);

#[async_trait]
impl Step<MoveVShardInput> for Lock {
    fn name(&self) -> &'static str {
        "Lock"
    }

    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::attempts(5)
    }

    async fn run(&self, ctx: &Ctx) -> Result<Vec<u8>, StepError> {
        let shared = &self.0;
        let input = ctx.input();
        let metadata = shared.metadata().await?;
        // A re-run after a crash finds its own record; the route may not
        // name the source any more only once Transfer committed.
        let from_group = match metadata.migration(&migration_id(ctx)) {
            Some(record) => record.from_group,
            None => metadata
                .route(input.vshard)
                .map(|r| r.group)
                .ok_or_else(|| {
                    StepError::terminal(format!("vShard {} has no route", input.vshard))
                })?,
        };
        let lock = MetadataOp::LockMigration {
            migration: migration_id(ctx),
            vshard: input.vshard,
            from_group,
            to_group: input.to_group,
            driver_epoch: ctx.epoch(),
            now_ms: now_ms(),
            lease_ms: input.lease_ms,
            max_concurrent: shared.config.max_concurrent,
        };
        // A resumed driver locks again at its new epoch: one key per epoch.
        let key = key(ctx, &ctx.epoch().to_string());
        match shared.propose(0, Command::metadata(lock), key).await? {
            Ok(ResponseV1::Locked { .. } | ResponseV1::Transferred { .. }) => {}
            Ok(other) => {
                return Err(StepError::terminal(format!("Lock answered {other:?}")));
            }
            Err(rejection @ Rejection::StaleDriverEpoch { .. }) => {
                return Err(StepError::terminal(format!(
                    "a newer driver holds the migration: {rejection:?}"
                )));
            }
            Err(rejection) => {
                return Err(StepError::terminal(format!("Lock refused: {rejection:?}")));
            }
        }
        encode_output(&LockOutput { from_group })
    }

    async fn compensate(&self, ctx: &Ctx) -> Result<(), StepError> {
        let shared = &self.0;
        shared.abort_and_undo(ctx, "compensated").await?;
        let Some(record) = shared.record(ctx).await? else {
            return Ok(());
        };
        if !record.is_live() || !record.is_decided() {
            return Ok(());
        }
        let finish = MetadataOp::FinishMigration {
            migration: migration_id(ctx),
        };
        match shared
            .propose(0, Command::metadata(finish), key(ctx, "finish"))
            .await?
        {
            Ok(_) => Ok(()),
            Err(rejection) => Err(StepError::retryable(format!(
                "FinishMigration refused: {rejection:?}"
            ))),
        }
    }
}
