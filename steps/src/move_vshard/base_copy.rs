//! **BaseCopy**: the source starts recording the vShard's changes
//! (`TrackChanges`), the target starts an `Incoming` copy
//! (`BeginIncoming`), then the vShard is copied in chunks read on the
//! source's leader (`export_chunk`) and replicated through the target's
//! log (`IngestChunk`), pipelined: the next chunk is exported, and the
//! cursor after the previous one checkpointed, while a chunk is ingested.
//! The cursor is checkpointed after every chunk (once that chunk
//! committed), so a restart resumes the copy instead of restarting it. The
//! lease is renewed every few chunks; a cancel is honoured between chunks.
//!
//! **Progress.** At the start of the first attempt the source's digest
//! gives the vShard's size (`total_keys`, `total_bytes`), checkpointed at
//! once (before the first chunk) and kept in the cursor across resumes, so
//! a progress bar reads `bytes / total_bytes` from any checkpoint. The
//! totals are a measurement at that instant: live writes move them.
//!
//! **Rate limit** ([`MoveVShardConfig::copy_bytes_per_sec`](super::MoveVShardConfig)):
//! before a chunk is sent, the attempt waits until its bytes so far, this
//! chunk's included, divided by the limit, have elapsed since it began
//! copying, so its average rate never exceeds the limit (a cancel cuts the
//! wait short).
//!
//! Compensation: the abort path — commit the abort, release the source,
//! `DropIncoming` batches on the target until it holds nothing.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use shardflow_node::command::{Command, DataOp, ResponseV1};
use shardflow_workflow::{encode_output, RetryPolicy, Step, StepError};
use tokio::time::Instant;

use super::{key, migration_error, migration_id, Ctx, MoveVShardInput, Shared};
use crate::failpoint::failpoint;

/// The checkpointed progress of the copy (postcard in the `Checkpoint`
/// events of the BaseCopy step: `postcard::from_bytes::<CopyCursor>`).
///
/// Fields are only ever appended (a cursor of an older layout is read by
/// [`CopyCursor::decode`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyCursor {
    /// The last key copied (`None`: from the start).
    pub after_key: Option<Vec<u8>>,
    /// Chunks copied so far, over every attempt.
    pub chunks: u64,
    /// Keys copied so far, over every attempt.
    pub keys: u64,
    /// Key and value bytes copied so far, over every attempt.
    pub bytes: u64,
    /// The vShard's keys on the source when the copy began.
    pub total_keys: u64,
    /// The vShard's key and value bytes on the source when the copy began.
    pub total_bytes: u64,
}

/// The first layout of [`CopyCursor`] (no totals).
#[derive(Deserialize)]
struct CopyCursorV0 {
    after_key: Option<Vec<u8>>,
    chunks: u64,
    keys: u64,
    bytes: u64,
}

impl CopyCursor {
    /// Decodes a checkpoint of the current layout or of the first one
    /// (whose totals then read 0: unknown).
    pub fn decode(bytes: &[u8]) -> Result<CopyCursor, postcard::Error> {
        postcard::from_bytes::<CopyCursor>(bytes).or_else(|error| {
            let old: CopyCursorV0 = postcard::from_bytes(bytes).map_err(|_| error)?;
            Ok(CopyCursor {
                after_key: old.after_key,
                chunks: old.chunks,
                keys: old.keys,
                bytes: old.bytes,
                total_keys: 0,
                total_bytes: 0,
            })
        })
    }

    fn encode(&self) -> Result<Vec<u8>, StepError> {
        postcard::to_stdvec(self)
            .map_err(|e| StepError::terminal(format!("cannot encode cursor: {e}")))
    }
}

/// Paces an attempt's copy under a byte rate.
struct Pacer {
    bytes_per_sec: Option<u64>,
    started: Instant,
    bytes: u64,
}

impl Pacer {
    fn new(bytes_per_sec: Option<u64>) -> Self {
        Self {
            bytes_per_sec: bytes_per_sec.filter(|rate| *rate > 0),
            started: Instant::now(),
            bytes: 0,
        }
    }

    /// When a chunk of `bytes` may be sent: once the attempt's bytes,
    /// this chunk's included, over the rate have elapsed since it began.
    fn due(&mut self, bytes: u64) -> Option<Instant> {
        let rate = self.bytes_per_sec?;
        self.bytes += bytes;
        let due = Duration::from_secs_f64(self.bytes as f64 / rate as f64);
        Some(self.started + due)
    }
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

/// How often the lease is renewed at least while the copy runs or waits.
fn renew_period(ctx: &Ctx) -> Duration {
    Duration::from_millis((ctx.input().lease_ms / 3).max(1))
}

impl BaseCopy {
    /// Waits until `due` for the rate limit, renewing the lease on the way
    /// (a slow rate must not let it expire); a cancel ends the wait.
    async fn wait_until(
        &self,
        ctx: &Ctx,
        due: Instant,
        renewed: &mut Instant,
    ) -> Result<(), StepError> {
        loop {
            let renew_at = *renewed + renew_period(ctx);
            tokio::select! {
                () = tokio::time::sleep_until(due.min(renew_at)) => {}
                () = ctx.cancelled() => return Err(StepError::Cancelled),
            }
            if Instant::now() >= due {
                return Ok(());
            }
            self.0.renew(ctx).await?;
            *renewed = Instant::now();
        }
    }
}

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

        // The source starts recording changes and the target starts its
        // `Incoming` copy: two groups, proposed at once.
        let track = DataOp::TrackChanges {
            vshard: input.vshard,
            migration: migration.clone(),
        };
        let begin = DataOp::BeginIncoming {
            vshard: input.vshard,
            migration: migration.clone(),
        };
        let (tracking, begun) = tokio::join!(
            shared.propose_ok(from, Command::data(track), key(ctx, "track")),
            shared.propose_ok(input.to_group, Command::data(begin), key(ctx, "begin")),
        );
        let since_index = match tracking? {
            ResponseV1::Tracking { since_index } => since_index,
            other => {
                return Err(StepError::terminal(format!(
                    "TrackChanges answered {other:?}"
                )))
            }
        };
        begun?;

        let mut cursor = match ctx.last_checkpoint() {
            Some(bytes) => CopyCursor::decode(bytes)
                .map_err(|e| StepError::terminal(format!("bad copy cursor: {e}")))?,
            None => CopyCursor::default(),
        };
        if cursor.total_keys == 0 && cursor.total_bytes == 0 {
            // The vShard's size, measured once (again only while it reads
            // empty) and checkpointed before the first chunk, so a progress
            // bar has its total from the start.
            let size = shared
                .api
                .digest(from, input.vshard, shared.deadline())
                .await
                .map_err(migration_error)?;
            cursor.total_keys = size.digest.key_count;
            cursor.total_bytes = size.digest.bytes;
            ctx.checkpoint(cursor.encode()?).await?;
        }
        let rate = shared.config.copy_bytes_per_sec.filter(|rate| *rate > 0);
        let mut pacer = Pacer::new(rate);
        // Under a rate limit a chunk carries at most a second's worth.
        let chunk_bytes = match rate {
            Some(rate) => shared
                .config
                .chunk_bytes
                .min(rate.min(u64::from(u32::MAX)) as u32),
            None => shared.config.chunk_bytes,
        };
        let mut since_renewal = 0u64;
        let mut renewed = Instant::now();
        let export = |after_key: Option<Vec<u8>>| {
            shared.api.export_chunk(
                from,
                input.vshard,
                after_key,
                shared.config.chunk_pairs,
                chunk_bytes,
                shared.deadline(),
            )
        };
        // A pipeline of three: while chunk n is ingested through the
        // target's log, chunk n+1 is exported from the source and the
        // cursor after chunk n-1 is journaled. Each cursor is checkpointed
        // only once its chunk committed, so a resume starts at or before
        // the first chunk not yet ingested (re-ingesting a chunk overwrites
        // it with the source's newer values; CatchUp replays every change
        // since `since_index` on top).
        let mut chunk = export(cursor.after_key.clone())
            .await
            .map_err(migration_error)?;
        let mut unjournaled: Option<Vec<u8>> = None;
        loop {
            if ctx.is_cancelled() {
                return Err(StepError::Cancelled);
            }
            if chunk.migration != migration {
                return Err(StepError::terminal(format!(
                    "the source tracks migration {}, not {migration}",
                    chunk.migration
                )));
            }
            let more = chunk.more;
            if chunk.pairs.is_empty() {
                if !more {
                    break;
                }
                chunk = export(cursor.after_key.clone())
                    .await
                    .map_err(migration_error)?;
                continue;
            }
            let last = chunk.pairs.last().map(|(k, _)| k.clone());
            let bytes: u64 = (chunk.pairs.iter())
                .map(|(k, v)| (k.len() + v.len()) as u64)
                .sum();
            let keys = chunk.pairs.len() as u64;
            if let Some(due) = pacer.due(bytes) {
                // Honour the rate limit before sending.
                self.wait_until(ctx, due, &mut renewed).await?;
            }
            let ingest = DataOp::IngestChunk {
                vshard: input.vshard,
                migration: migration.clone(),
                pairs: chunk.pairs,
            };
            // One key per chunk of an attempt: a resumed attempt re-exports
            // from its cursor, and its chunks must be ingested, not answered
            // from an earlier attempt's chunk that may have other bounds.
            let chunk_key = key(ctx, &format!("chunk/{}/{}", ctx.attempt(), cursor.chunks));
            let ingested = shared.propose_ok(input.to_group, Command::data(ingest), chunk_key);
            let next = async {
                match more {
                    true => Some(export(last.clone()).await.map_err(migration_error)),
                    false => None,
                }
            };
            let journaled = async {
                match unjournaled.take() {
                    Some(progress) => ctx.checkpoint(progress).await,
                    None => Ok(()),
                }
            };
            let (ingested, next, journaled) = tokio::join!(ingested, next, journaled);
            ingested?;
            journaled?;
            cursor.after_key = last;
            cursor.chunks += 1;
            cursor.keys += keys;
            cursor.bytes += bytes;
            unjournaled = Some(cursor.encode()?);
            since_renewal += 1;
            if since_renewal >= shared.config.renew_every_chunks
                || renewed.elapsed() >= renew_period(ctx)
            {
                since_renewal = 0;
                shared.renew(ctx).await?;
                renewed = Instant::now();
            }
            match next {
                Some(next) => chunk = next?,
                None => break,
            }
            failpoint!("vshard.copy.between-chunks");
        }
        if let Some(progress) = unjournaled {
            ctx.checkpoint(progress).await?;
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
