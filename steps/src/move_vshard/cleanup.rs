//! **Cleanup**: after the ghost's time to live, the source copy is deleted
//! in bounded batches and the ghost dropped; then the lock is released
//! (`FinishMigration`). The groups' reactors do this on their own once the
//! time to live expires (DESIGN §4, "Once decided, a migration finishes
//! without its driver"), so this step waits for them, and only if the
//! ghost's time to live is known to have passed (the record is finished
//! or the source holds nothing) proposes the remaining commands itself —
//! idempotent with the reactors.
//!
//! Compensation: none (after the point of no return the workflow only
//! rolls forward).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use shardflow_node::command::{Command, MetadataOp};
use shardflow_node::metadata::MigrationPhase;
use shardflow_workflow::{encode_output, RetryPolicy, Step, StepError};
use tokio::time::Instant;

use super::{key, migration_error, migration_id, Ctx, MoveVShardInput, Shared};

/// What Cleanup saw when it ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleanupOutput {
    /// Keys left on the source (0).
    pub source_keys: u64,
    pub waited_ms: u64,
}

pub struct Cleanup(pub Arc<Shared>);

#[async_trait]
impl Step<MoveVShardInput> for Cleanup {
    fn name(&self) -> &'static str {
        "Cleanup"
    }

    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            attempt_timeout: Duration::from_secs(3_600),
            ..RetryPolicy::attempts(10)
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Vec<u8>, StepError> {
        let shared = &self.0;
        let input = ctx.input();
        let from = shared.source_group(ctx)?;
        let started = Instant::now();
        let give_up = started + shared.config.cleanup_wait;
        loop {
            let record = shared
                .record(ctx)
                .await?
                .ok_or_else(|| StepError::terminal("the migration left the registry"))?;
            if !matches!(record.phase, MigrationPhase::Transferred { .. }) {
                return Err(StepError::terminal(format!(
                    "Cleanup of a migration not transferred: {:?}",
                    record.phase
                )));
            }
            let source = shared
                .api
                .vshard_status(from, input.vshard, shared.deadline())
                .await
                .map_err(migration_error)?;
            if source.state.is_none() {
                if record.is_live() {
                    // The ghost is gone; release the lock (idempotent).
                    let finish = MetadataOp::FinishMigration {
                        migration: migration_id(ctx),
                    };
                    shared
                        .propose_ok(0, Command::metadata(finish), key(ctx, "finish"))
                        .await?;
                }
                let digest = shared
                    .api
                    .digest(from, input.vshard, shared.deadline())
                    .await
                    .map_err(migration_error)?;
                return encode_output(&CleanupOutput {
                    source_keys: digest.digest.key_count,
                    waited_ms: started.elapsed().as_millis() as u64,
                });
            }
            if Instant::now() >= give_up {
                return Err(StepError::retryable(
                    "the ghost is still there after the cleanup wait",
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn compensate(&self, _ctx: &Ctx) -> Result<(), StepError> {
        Ok(())
    }
}
