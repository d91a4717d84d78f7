//! **BaseCopy**: the source starts recording the vShard's changes
//! (`TrackChanges`), the target starts an `Incoming` copy
//! (`BeginIncoming`), then the vShard is copied in chunks read on the
//! source's leader (`export_chunk`) and replicated through the target's
//! log (`IngestChunk`). The cursor is checkpointed after every chunk, so a
//! restart resumes the copy instead of restarting it. The lease is renewed
//! every few chunks; a cancel is honoured between chunks.
//!
//! Compensation: the abort path — commit the abort, release the source,
//! `DropIncoming` batches on the target until it holds nothing.

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use shardflow_node::command::{Command, DataOp, ResponseV1};
use shardflow_workflow::{encode_output, RetryPolicy, Step, StepError};

use super::{key, migration_error, migration_id, Ctx, MoveVShardInput, Shared};

/// The checkpointed progress of the copy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyCursor {
    /// The last key copied (`None`: from the start).
    pub after_key: Option<Vec<u8>>,
    pub chunks: u64,
    pub keys: u64,
    pub bytes: u64,
}

/// What the copy did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseCopyOutput {
    /// Changes applied on the source after this index are recorded.
    pub since_index: u64,
    pub keys: u64,
    pub bytes: u64,
    pub chunks: u64,
}

pub struct BaseCopy(pub Arc<Shared>);

#[async_trait]
impl Step<MoveVShardInput> for BaseCopy {
    fn name(&self) -> &'static str {
        "BaseCopy"
    }

    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            attempt_timeout: std::time::Duration::from_secs(3_600),
            ..RetryPolicy::attempts(8)
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Vec<u8>, StepError> {
        let shared = &self.0;
        let input = ctx.input();
        let from = shared.source_group(ctx)?;
        let migration = migration_id(ctx);
        if shared.renew(ctx).await?.is_some() {
            return Err(StepError::terminal(
                "Transfer committed before BaseCopy ended",
            ));
        }

        let track = DataOp::TrackChanges {
            vshard: input.vshard,
            migration: migration.clone(),
        };
        let since_index = match shared
            .propose_ok(from, Command::data(track), key(ctx, "track"))
            .await?
        {
            ResponseV1::Tracking { since_index } => since_index,
            other => {
                return Err(StepError::terminal(format!(
                    "TrackChanges answered {other:?}"
                )))
            }
        };
        let begin = DataOp::BeginIncoming {
            vshard: input.vshard,
            migration: migration.clone(),
        };
        shared
            .propose_ok(input.to_group, Command::data(begin), key(ctx, "begin"))
            .await?;

        let mut cursor: CopyCursor = match ctx.last_checkpoint() {
            Some(bytes) => postcard::from_bytes(bytes)
                .map_err(|e| StepError::terminal(format!("bad copy cursor: {e}")))?,
            None => CopyCursor::default(),
        };
        let mut since_renewal = 0u64;
        loop {
            if ctx.is_cancelled() {
                return Err(StepError::Cancelled);
            }
            let chunk = shared
                .api
                .export_chunk(
                    from,
                    input.vshard,
                    cursor.after_key.clone(),
                    shared.config.chunk_pairs,
                    shared.config.chunk_bytes,
                    shared.deadline(),
                )
                .await
                .map_err(migration_error)?;
            if chunk.migration != migration {
                return Err(StepError::terminal(format!(
                    "the source tracks migration {}, not {migration}",
                    chunk.migration
                )));
            }
            if !chunk.pairs.is_empty() {
                let last = chunk.pairs.last().map(|(k, _)| k.clone());
                let bytes: u64 = (chunk.pairs.iter())
                    .map(|(k, v)| (k.len() + v.len()) as u64)
                    .sum();
                let keys = chunk.pairs.len() as u64;
                let ingest = DataOp::IngestChunk {
                    vshard: input.vshard,
                    migration: migration.clone(),
                    pairs: chunk.pairs,
                };
                // One key per chunk: the chunk number is in the cursor.
                let chunk_key = key(ctx, &format!("chunk/{}", cursor.chunks));
                shared
                    .propose_ok(input.to_group, Command::data(ingest), chunk_key)
                    .await?;
                cursor.after_key = last;
                cursor.chunks += 1;
                cursor.keys += keys;
                cursor.bytes += bytes;
                let progress = postcard::to_stdvec(&cursor)
                    .map_err(|e| StepError::terminal(format!("cannot encode cursor: {e}")))?;
                ctx.checkpoint(progress).await?;
                since_renewal += 1;
                if since_renewal >= shared.config.renew_every_chunks {
                    since_renewal = 0;
                    shared.renew(ctx).await?;
                }
            }
            if !chunk.more {
                break;
            }
        }
        tracing::info!(
            migration,
            keys = cursor.keys,
            bytes = cursor.bytes,
            "base copy done"
        );
        encode_output(&BaseCopyOutput {
            since_index,
            keys: cursor.keys,
            bytes: cursor.bytes,
            chunks: cursor.chunks,
        })
    }

    async fn compensate(&self, ctx: &Ctx) -> Result<(), StepError> {
        self.0.abort_and_undo(ctx, "compensated: BaseCopy").await
    }
}
