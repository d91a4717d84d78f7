//! **Cleanup**: after the ghost's time to live, the source copy is deleted
//! in bounded batches and the ghost dropped; then the lock is released
//! (`FinishMigration`).
//!
//! The groups' reactors do this on their own once the time to live
//! expires (DESIGN §4, "Once decided, a migration finishes without its
//! driver"), so the step always watches for them. The time to live is a
//! node setting (`MigrationTimings::ghost_ttl`); the registry records only
//! when `Transfer` committed (`decided_at_ms`). When the step is configured
//! with the same TTL ([`MoveVShardConfig::ghost_ttl`](super::MoveVShardConfig)),
//! it also drives the cleanup itself once `decided_at_ms + ttl` has passed
//! on its clock: `CleanupBatch` in batches of `delete_batch` until done,
//! then `DropGhost` — both idempotent and harmless when the reactor got
//! there first (an absent vShard answers "done"). Without it, it only waits
//! for the reactor.
//!
//! Bounded: one attempt waits at most `cleanup_wait` (plus what is left of
//! the TTL when the step drives the cleanup itself), then fails retryably
//! saying what it waited for; the retry policy bounds the attempts, after
//! which the workflow is `Paused` (past the point of no return). The
//! reactors keep cleaning meanwhile, and an operator resume finds the
//! ghost gone.
//!
//! Compensation: none (after the point of no return the workflow only
//! rolls forward).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use shardflow_node::command::{Command, DataOp, MetadataOp, ResponseV1};
use shardflow_node::data::{VShardMigration, VShardState};
use shardflow_node::metadata::{MigrationPhase, MigrationRecord};
use shardflow_node::migration::now_ms;
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

/// How often Cleanup looks at the source while it waits.
const POLL: Duration = Duration::from_millis(100);

impl Cleanup {
    /// When the ghost's TTL ends on this node's clock (ms since the Unix
    /// epoch), if the step knows the TTL.
    fn ttl_ends_ms(&self, record: &MigrationRecord) -> Option<u64> {
        let ttl = self.0.config.ghost_ttl?;
        let since = record.decided_at_ms.unwrap_or(record.locked_at_ms);
        Some(since.saturating_add(ttl.as_millis() as u64))
    }

    /// Deletes the ghost's keys in batches, then drops the ghost. `Ok(true)`
    /// once the source answered that nothing is left; `Ok(false)` if a
    /// command was refused (the reactor raced it: the caller re-checks).
    async fn delete_ghost(&self, ctx: &Ctx, from: u64, tries: &mut u64) -> Result<bool, StepError> {
        let shared = &self.0;
        let input = ctx.input();
        let migration = migration_id(ctx);
        loop {
            *tries += 1;
            let batch = DataOp::CleanupBatch {
                vshard: input.vshard,
                migration: migration.clone(),
                limit: shared.config.delete_batch.max(1),
            };
            // Each batch acts again: its key names the epoch, attempt and try.
            let batch_key = key(
                ctx,
                &format!("cleanup/{}/{}/{tries}", ctx.epoch(), ctx.attempt()),
            );
            match shared
                .propose(from, Command::data(batch), batch_key)
                .await?
            {
                Ok(ResponseV1::Deleted { done: true, .. }) => break,
                Ok(_) => {}
                Err(rejection) => {
                    tracing::debug!(migration, ?rejection, "cleanup batch refused");
                    return Ok(false);
                }
            }
        }
        let drop = DataOp::DropGhost {
            vshard: input.vshard,
            migration: migration.clone(),
        };
        let drop_key = key(
            ctx,
            &format!("dropghost/{}/{}/{tries}", ctx.epoch(), ctx.attempt()),
        );
        match shared.propose(from, Command::data(drop), drop_key).await? {
            Ok(_) => Ok(true),
            Err(rejection) => {
                tracing::debug!(migration, ?rejection, "drop ghost refused");
                Ok(false)
            }
        }
    }
}

#[async_trait]
impl Step<MoveVShardInput> for Cleanup {
    fn name(&self) -> &'static str {
        "Cleanup"
    }

    fn retry_policy(&self) -> RetryPolicy {
        let wait = self.0.config.cleanup_wait + self.0.config.ghost_ttl.unwrap_or_default();
        RetryPolicy {
            // Longer than an attempt's own bound, which fails clearly first.
            attempt_timeout: wait + Duration::from_secs(60),
            ..RetryPolicy::attempts(10)
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Vec<u8>, StepError> {
        let shared = &self.0;
        let input = ctx.input();
        let from = shared.source_group(ctx)?;
        let migration = migration_id(ctx);
        let started = Instant::now();
        let mut give_up: Option<Instant> = None;
        let mut tries = 0u64;
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
            // Finished (by the reactor) means the source held nothing: the
            // vShard's state there may belong to a later migration by now.
            if source.state.is_none() || !record.is_live() {
                if record.is_live() {
                    // The ghost is gone; release the lock (idempotent).
                    let finish = MetadataOp::FinishMigration {
                        migration: migration.clone(),
                    };
                    shared
                        .propose_ok(0, Command::metadata(finish), key(ctx, "finish"))
                        .await?;
                }
                let source_keys = if source.state.is_none() {
                    let digest = shared
                        .api
                        .digest(from, input.vshard, shared.deadline())
                        .await
                        .map_err(migration_error)?;
                    digest.digest.key_count
                } else {
                    0
                };
                return encode_output(&CleanupOutput {
                    source_keys,
                    waited_ms: started.elapsed().as_millis() as u64,
                });
            }

            let now = now_ms();
            let ttl_ends = self.ttl_ends_ms(&record);
            // The wait is bounded from when the TTL ends (or from now, if
            // the step does not know the TTL and waits for the reactor).
            let give_up = *give_up.get_or_insert_with(|| {
                let ttl_left = ttl_ends.map_or(0, |end| end.saturating_sub(now));
                Instant::now() + Duration::from_millis(ttl_left) + shared.config.cleanup_wait
            });
            let ours = match &source.migration {
                Some(VShardMigration::Source(s)) => s.migration == migration,
                None => true,
                Some(_) => false,
            };
            let ghost = matches!(source.state, Some(VShardState::Moved { .. })) && ours;
            if ghost && ttl_ends.is_some_and(|end| now >= end) {
                if !self.delete_ghost(ctx, from, &mut tries).await? {
                    // Refused (a reactor raced it): look again shortly.
                    tokio::time::sleep(POLL).await;
                }
                continue;
            }
            if Instant::now() >= give_up {
                let who = if shared.config.ghost_ttl.is_some() {
                    "the ghost could not be deleted"
                } else {
                    "the source's reactor has not deleted the ghost (the step does not know the ghost TTL)"
                };
                return Err(StepError::retryable(format!(
                    "{who} after waiting {} ms: vShard {} on group {from} is {}",
                    started.elapsed().as_millis(),
                    input.vshard,
                    VShardState::describe(source.state.as_ref()),
                )));
            }
            let mut pause = POLL;
            if let Some(end) = ttl_ends.filter(|end| *end > now) {
                pause = pause.min(Duration::from_millis(end - now));
            }
            tokio::time::sleep(pause).await;
        }
    }

    async fn compensate(&self, _ctx: &Ctx) -> Result<(), StepError> {
        Ok(())
    }
}
