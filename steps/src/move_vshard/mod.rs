//! **MoveVShard** (DESIGN §4): moves one vShard from the group that owns it
//! to another, under live writes.
//!
//! Steps, one file each with its compensation beside it:
//! [`lock`] → [`base_copy`] → [`catch_up`] → [`cut_over`] (the `Transfer`
//! commit inside it is the point of no return) → [`cleanup`].
//!
//! The migration's id in the metadata registry is the workflow id
//! (`wf-<node>-<serial>`). Every command carries an idempotency key derived
//! from the step's [`IdempotencyKey`](shardflow_workflow::IdempotencyKey);
//! commands meant to act again (per batch, per attempt, per driver epoch)
//! append a suffix so a re-proposal is not answered with an older response.

pub mod base_copy;
pub mod catch_up;
pub mod cleanup;
pub mod cut_over;
pub mod lock;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shardflow_node::command::{
    AbortBy, Command, DataOp, MetadataOp, Rejection, Response, ResponseV1,
};
use shardflow_node::data::{VShardMigration, VShardState};
use shardflow_node::metadata::{MetadataState, MigrationRecord};
use shardflow_node::migration::{now_ms, MigrationApi, MigrationError};
use shardflow_workflow::{Engine, Step, StepContext, StepError, Workflow};
use tokio::time::Instant;

use crate::failpoint::failpoint;

/// The input of a MoveVShard instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveVShardInput {
    pub vshard: u16,
    pub to_group: u64,
    /// The longest write pause (fence applied → target accepting) allowed.
    pub pause_budget_ms: u64,
    /// The migration lock's lease; renewed by the driver while it works.
    pub lease_ms: u64,
}

/// Tunables of the workflow (not journaled: they may change between runs).
#[derive(Clone, Debug)]
pub struct MoveVShardConfig {
    /// `LockMigration`'s limit of live migrations.
    pub max_concurrent: u32,
    /// Pairs per base-copy chunk.
    pub chunk_pairs: u32,
    /// About this many bytes per base-copy chunk.
    pub chunk_bytes: u32,
    /// The base copy's rate limit, in key and value bytes per second
    /// (`None`: unlimited). BaseCopy paces its chunks so the average rate
    /// of an attempt stays at or under it.
    pub copy_bytes_per_sec: Option<u64>,
    /// Base-copy chunks ingested through the target's log at once (at
    /// least 1). Chunks cover disjoint key ranges; the cursor only passes
    /// the chunks that committed, oldest first. Default 1: more chunks in
    /// flight copied 1.1 to 1.5x faster on the 2-core bench host but took
    /// the foreground writers below 80 % of their rate (BENCHMARKS.md,
    /// "The copy's ingest window").
    pub ingest_window: usize,
    /// Renew the lease every this many chunks.
    pub renew_every_chunks: u64,
    /// Changes fetched per catch-up round.
    pub changes_per_round: u32,
    /// CatchUp ends once a round finds at most this many changes.
    pub lag_threshold: usize,
    /// Rounds of one CatchUp attempt at most.
    pub max_rounds: u32,
    /// Rounds without the lag shrinking before CatchUp fails.
    pub max_stalled_rounds: u32,
    /// Keys per `DropIncoming` / `CleanupBatch`.
    pub delete_batch: u64,
    /// How long one remote call may take.
    pub call_timeout: Duration,
    /// How long one Cleanup attempt waits for the ghost to be gone before
    /// it fails (retryably) saying what it waited for.
    pub cleanup_wait: Duration,
    /// The ghost's time to live as the nodes run it
    /// (`MigrationTimings::ghost_ttl` of the node configuration; the
    /// registry records when `Transfer` committed, not the TTL). With it,
    /// Cleanup deletes the ghost itself once the TTL has passed since the
    /// `Transfer` commit (`CleanupBatch`, `DropGhost`, idempotent with the
    /// reactors); `None`: Cleanup only waits for the source's reactor.
    pub ghost_ttl: Option<Duration>,
}

impl Default for MoveVShardConfig {
    fn default() -> Self {
        Self {
            max_concurrent: 4,
            chunk_pairs: 512,
            chunk_bytes: 256 * 1024,
            copy_bytes_per_sec: None,
            ingest_window: 1,
            renew_every_chunks: 8,
            changes_per_round: 1_000,
            lag_threshold: 64,
            max_rounds: 200,
            max_stalled_rounds: 8,
            delete_batch: 1_000,
            call_timeout: Duration::from_secs(10),
            cleanup_wait: Duration::from_secs(600),
            ghost_ttl: None,
        }
    }
}

/// What every step shares: the node's migration service and the tunables.
///
/// The service holds the node; the engine (inside the node) holds this
/// through the registered definition. `Engine::halt`, called by
/// `Node::shutdown`, drops the definitions, which breaks that cycle.
pub struct Shared {
    pub api: MigrationApi,
    pub config: MoveVShardConfig,
}

/// The MoveVShard workflow definition.
pub struct MoveVShard {
    shared: Arc<Shared>,
}

impl MoveVShard {
    pub fn new(api: MigrationApi, config: MoveVShardConfig) -> Self {
        Self {
            shared: Arc::new(Shared { api, config }),
        }
    }
}

impl Workflow for MoveVShard {
    type Input = MoveVShardInput;
    const KIND: &'static str = "MoveVShard";

    fn steps(&self) -> Vec<Arc<dyn Step<MoveVShardInput>>> {
        let shared = &self.shared;
        vec![
            Arc::new(lock::Lock(Arc::clone(shared))),
            Arc::new(base_copy::BaseCopy(Arc::clone(shared))),
            Arc::new(catch_up::CatchUp(Arc::clone(shared))),
            Arc::new(cut_over::CutOver(Arc::clone(shared))),
            Arc::new(cleanup::Cleanup(Arc::clone(shared))),
        ]
    }
}

/// Registers MoveVShard (default tunables) on a node's engine.
pub fn register(engine: &Engine, api: MigrationApi) {
    register_with(engine, api, MoveVShardConfig::default());
}

/// Registers MoveVShard with the given tunables.
pub fn register_with(engine: &Engine, api: MigrationApi, config: MoveVShardConfig) {
    engine.register(MoveVShard::new(api, config));
}

// ---------------------------------------------------------------------------
// Helpers the steps share.

type Ctx = StepContext<MoveVShardInput>;

/// The migration's id in the registry: the workflow id.
pub fn migration_id(ctx: &Ctx) -> String {
    ctx.workflow_id().to_string()
}

/// A command key: the step's idempotency key plus `suffix`.
pub(crate) fn key(ctx: &Ctx, suffix: &str) -> String {
    if suffix.is_empty() {
        ctx.idempotency_key().to_string()
    } else {
        format!("{}/{suffix}", ctx.idempotency_key())
    }
}

impl Shared {
    pub(crate) fn deadline(&self) -> Instant {
        Instant::now() + self.config.call_timeout
    }

    /// Proposes `command` with idempotency key `key`; a rejection comes back
    /// as `Err(Ok(rejection))` so callers can match on it.
    pub(crate) async fn propose(
        &self,
        group: u64,
        command: Command,
        key: String,
    ) -> Result<Result<ResponseV1, Rejection>, StepError> {
        failpoint!("vshard.propose.before", key = key);
        #[cfg(feature = "failpoints")]
        let failpoint_key = key.clone();
        let command = command.with_idempotency_key(key);
        let Response::V1(answer) = self
            .api
            .propose(group, command, self.deadline())
            .await
            .map_err(migration_error)?;
        failpoint!("vshard.propose.after", key = failpoint_key);
        Ok(match answer {
            ResponseV1::Rejected(rejection) => Err(rejection),
            answer => Ok(answer),
        })
    }

    /// Like [`Shared::propose`], a rejection being a step error (retryable
    /// if the rejection is).
    pub(crate) async fn propose_ok(
        &self,
        group: u64,
        command: Command,
        key: String,
    ) -> Result<ResponseV1, StepError> {
        self.propose(group, command, key)
            .await?
            .map_err(|rejection| {
                let message = format!("group {group} refused: {rejection:?}");
                if rejection.is_retryable() {
                    StepError::retryable(message)
                } else {
                    StepError::terminal(message)
                }
            })
    }

    pub(crate) async fn metadata(&self) -> Result<MetadataState, StepError> {
        self.api
            .metadata(self.deadline())
            .await
            .map_err(migration_error)
    }

    /// The registry's record of this migration.
    pub(crate) async fn record(&self, ctx: &Ctx) -> Result<Option<MigrationRecord>, StepError> {
        let metadata = self.metadata().await?;
        Ok(metadata.migration(&migration_id(ctx)).cloned())
    }

    /// The source group, from the Lock step's output.
    pub(crate) fn source_group(&self, ctx: &Ctx) -> Result<u64, StepError> {
        let output: Option<lock::LockOutput> = ctx.output_of("Lock")?;
        output
            .map(|o| o.from_group)
            .ok_or_else(|| StepError::terminal("Lock has no output"))
    }

    /// Renews the lease (bumping the driver epoch on a resume). `Ok(Some)`
    /// with the transfer epoch if `Transfer` already committed.
    pub(crate) async fn renew(&self, ctx: &Ctx) -> Result<Option<u64>, StepError> {
        let renew = MetadataOp::RenewLease {
            migration: migration_id(ctx),
            driver_epoch: ctx.epoch(),
            now_ms: now_ms(),
            lease_ms: ctx.input().lease_ms,
        };
        // A renewal acts again each time: no key.
        let command = Command::metadata(renew);
        failpoint!("vshard.propose.before", key = key(ctx, "renew"));
        let Response::V1(answer) = self
            .api
            .propose(0, command, self.deadline())
            .await
            .map_err(migration_error)?;
        failpoint!("vshard.propose.after", key = key(ctx, "renew"));
        match answer {
            ResponseV1::Locked { .. } => Ok(None),
            ResponseV1::Transferred { epoch } => Ok(Some(epoch)),
            ResponseV1::Rejected(rejection) => Err(StepError::terminal(format!(
                "lease renewal refused: {rejection:?}"
            ))),
            other => Err(StepError::terminal(format!(
                "lease renewal answered {other:?}"
            ))),
        }
    }

    /// The target's highest applied source log index (0 if none or not
    /// Incoming for this migration).
    pub(crate) async fn target_applied(&self, ctx: &Ctx) -> Result<u64, StepError> {
        let input = ctx.input();
        let status = self
            .api
            .vshard_status(input.to_group, input.vshard, self.deadline())
            .await
            .map_err(migration_error)?;
        Ok(match status.migration {
            Some(VShardMigration::Target(t)) if t.migration == migration_id(ctx) => t.applied_up_to,
            _ => 0,
        })
    }

    /// The abort path, idempotent and shared by the compensations: commits
    /// the abort (unless already decided so), releases the source, drops
    /// the target's incoming copy in batches until it is gone.
    pub(crate) async fn abort_and_undo(&self, ctx: &Ctx, reason: &str) -> Result<(), StepError> {
        let input = ctx.input();
        let migration = migration_id(ctx);
        let Some(record) = self.record(ctx).await? else {
            // Never locked: nothing to undo.
            return Ok(());
        };
        if !record.is_live() {
            return Ok(());
        }
        let abort = MetadataOp::AbortMigration {
            migration: migration.clone(),
            by: AbortBy::Driver {
                driver_epoch: ctx.epoch(),
            },
            reason: reason.to_string(),
            now_ms: now_ms(),
        };
        let abort_key = format!("{}/Abort", ctx.workflow_id());
        match self.propose(0, Command::metadata(abort), abort_key).await? {
            Ok(_) => {}
            Err(Rejection::MigrationTransferred { epoch, .. }) => {
                return Err(StepError::terminal(format!(
                    "cannot undo: Transfer committed at epoch {epoch}"
                )))
            }
            Err(rejection) => {
                return Err(StepError::terminal(format!("abort refused: {rejection:?}")))
            }
        }
        let release = DataOp::ReleaseSource {
            vshard: input.vshard,
            migration: migration.clone(),
        };
        self.propose_ok(
            record.from_group,
            Command::data(release),
            format!("{}/Release", ctx.workflow_id()),
        )
        .await?;
        self.drop_incoming(ctx).await
    }

    /// `DropIncoming` batches on the target until it holds nothing of this
    /// migration. Each batch acts again: its key names attempt and batch.
    pub(crate) async fn drop_incoming(&self, ctx: &Ctx) -> Result<(), StepError> {
        let input = ctx.input();
        let migration = migration_id(ctx);
        for batch in 0u64.. {
            let status = self
                .api
                .vshard_status(input.to_group, input.vshard, self.deadline())
                .await
                .map_err(migration_error)?;
            let ours = matches!(&status.state,
                Some(VShardState::Incoming { migration: m }) if *m == migration);
            if !ours {
                return Ok(());
            }
            let drop = DataOp::DropIncoming {
                vshard: input.vshard,
                migration: migration.clone(),
                limit: self.config.delete_batch,
            };
            let key = key(ctx, &format!("drop/{}/{batch}", ctx.attempt()));
            match self
                .propose(input.to_group, Command::data(drop), key)
                .await?
            {
                Ok(ResponseV1::Deleted { done: true, .. }) => return Ok(()),
                Ok(_) => {}
                // The reactor may have dropped it meanwhile: re-check.
                Err(Rejection::WrongState { .. } | Rejection::WrongMigration { .. }) => {}
                Err(rejection) => {
                    return Err(StepError::retryable(format!(
                        "DropIncoming refused: {rejection:?}"
                    )))
                }
            }
        }
        Ok(())
    }
}

/// Maps a service error onto a step error of the same retryability.
pub(crate) fn migration_error(error: MigrationError) -> StepError {
    if error.is_retryable() {
        StepError::retryable(error)
    } else {
        StepError::terminal(error)
    }
}
