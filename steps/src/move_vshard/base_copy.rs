//! **BaseCopy**: the source starts recording the vShard's changes
//! (`TrackChanges`), the target starts an `Incoming` copy
//! (`BeginIncoming`), then the vShard is copied in chunks read on the
//! source's leader (`export_chunk`) and replicated through the target's
//! log (`IngestChunk`), pipelined: up to
//! [`ingest_window`](super::MoveVShardConfig::ingest_window) chunks are
//! ingested at once while the next chunk is exported and the cursor
//! checkpointed. The cursor only passes chunks that committed, oldest
//! first, and is checkpointed as they commit (cursors that wait behind a
//! checkpoint being written are journaled as one), so a restart resumes the
//! copy, at or before the first chunk not ingested, instead of restarting
//! it. The lease is renewed every few chunks; a cancel is honoured between
//! chunks and while chunks are in flight.
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

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use shardflow_node::command::{Command, DataOp, ResponseV1};
use shardflow_node::migration::MigrationError;
use shardflow_node::raft::ExportChunk;
use shardflow_workflow::{encode_output, RetryPolicy, Step, StepError};
use tokio::task::JoinHandle;
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

/// An export of the next chunk from the source, in progress.
type Exporting<'a> = Pin<Box<dyn Future<Output = Result<ExportChunk, MigrationError>> + Send + 'a>>;

/// A checkpoint of the cursor being journaled.
type Journaling<'a> = Pin<Box<dyn Future<Output = Result<(), StepError>> + Send + 'a>>;

/// What the copy loop waited for.
enum CopyEvent {
    Ingested(Result<(), StepError>),
    Exported(Result<ExportChunk, MigrationError>),
    Journaled(Result<(), StepError>),
    Cancelled,
}

/// Waits for the checkpoint being journaled, if any.
async fn finish(journaling: &mut Option<Journaling<'_>>) -> Result<(), StepError> {
    match journaling.take() {
        Some(journaling) => journaling.await,
        None => Ok(()),
    }
}

/// A chunk sent to the target's log: its ingest task and what the cursor
/// gains once it committed.
struct Sent {
    task: JoinHandle<Result<(), StepError>>,
    last: Option<Vec<u8>>,
    keys: u64,
    bytes: u64,
}

/// The chunks being ingested, oldest first. Dropping it (the attempt ends,
/// fails or is cancelled) aborts the ingests still running; a proposal
/// already sent may still commit, as a dropped call's may.
#[derive(Default)]
struct InFlight(VecDeque<Sent>);

impl InFlight {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn push(&mut self, sent: Sent) {
        self.0.push_back(sent);
    }

    fn pop(&mut self) -> Option<Sent> {
        self.0.pop_front()
    }

    /// Waits for the oldest chunk's ingest (never ends if none is in flight).
    async fn oldest(&mut self) -> Result<(), StepError> {
        let Some(sent) = self.0.front_mut() else {
            return std::future::pending().await;
        };
        match (&mut sent.task).await {
            Ok(ingested) => ingested,
            Err(error) => Err(StepError::retryable(format!(
                "the chunk's ingest task ended: {error}"
            ))),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        for sent in &self.0 {
            sent.task.abort();
        }
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
        let export = |after_key: Option<Vec<u8>>| -> Exporting<'_> {
            Box::pin(shared.api.export_chunk(
                from,
                input.vshard,
                after_key,
                shared.config.chunk_pairs,
                chunk_bytes,
                shared.deadline(),
            ))
        };
        // A pipeline: up to `ingest_window` chunks are ingested through the
        // target's log at once (each its own task, so the target group
        // appends, replicates and applies them together instead of one
        // commit round trip at a time), while the next chunk is exported
        // from the source and the cursor journaled. Chunks cover disjoint
        // key ranges, so the order in which they commit does not matter
        // (CatchUp replays every change since `since_index` on top of
        // them). The cursor advances only over the chunks that committed in
        // order, from the oldest in flight, so a checkpoint never passes a
        // chunk that did not commit and a resume starts at or before the
        // first chunk not ingested (re-ingesting a chunk overwrites it with
        // the source's newer values). Cursors that wait while a checkpoint
        // is written are journaled as one: the newest. Until the attempt's
        // first chunk committed, one chunk at a time: its checkpoint is the
        // first sign of progress a resumed attempt gives, and it should not
        // wait behind a batch.
        let window = shared.config.ingest_window.max(1);
        let mut committed = 0u64;
        let mut in_flight = InFlight::default();
        let mut exporting: Option<Exporting<'_>> = Some(export(cursor.after_key.clone()));
        let mut ready: Option<ExportChunk> = None;
        // The last key of the last chunk sent (the next export starts after it).
        let mut sent_up_to = cursor.after_key.clone();
        let mut sent = cursor.chunks;
        let mut journaling: Option<Journaling<'_>> = None;
        let mut unjournaled: Option<Vec<u8>> = None;
        loop {
            if ctx.is_cancelled() {
                return Err(StepError::Cancelled);
            }
            if journaling.is_none() {
                journaling = (unjournaled.take())
                    .map(|progress| -> Journaling<'_> { Box::pin(ctx.checkpoint(progress)) });
            }
            // Send what is exported while the window has room.
            let room = if committed == 0 { 1 } else { window };
            while in_flight.len() < room {
                let Some(chunk) = ready.take() else { break };
                if chunk.migration != migration {
                    return Err(StepError::terminal(format!(
                        "the source tracks migration {}, not {migration}",
                        chunk.migration
                    )));
                }
                if chunk.pairs.is_empty() {
                    if chunk.more {
                        exporting = Some(export(sent_up_to.clone()));
                    }
                    continue;
                }
                let last = chunk.pairs.last().map(|(k, _)| k.clone());
                let bytes: u64 = (chunk.pairs.iter())
                    .map(|(k, v)| (k.len() + v.len()) as u64)
                    .sum();
                let keys = chunk.pairs.len() as u64;
                if let Some(due) = pacer.due(bytes) {
                    // Honour the rate limit before sending (the cursor's
                    // checkpoint goes on meanwhile).
                    let (waited, journaled) = tokio::join!(
                        self.wait_until(ctx, due, &mut renewed),
                        finish(&mut journaling)
                    );
                    waited?;
                    journaled?;
                }
                if chunk.more {
                    exporting = Some(export(last.clone()));
                }
                let ingest = DataOp::IngestChunk {
                    vshard: input.vshard,
                    migration: migration.clone(),
                    pairs: chunk.pairs,
                };
                // One key per chunk of an attempt: a resumed attempt
                // re-exports from its cursor, and its chunks must be
                // ingested, not answered from an earlier attempt's chunk
                // that may have other bounds.
                let chunk_key = key(ctx, &format!("chunk/{}/{sent}", ctx.attempt()));
                sent += 1;
                let task_shared = Arc::clone(shared);
                let to_group = input.to_group;
                let task = tokio::spawn(async move {
                    (task_shared.propose_ok(to_group, Command::data(ingest), chunk_key))
                        .await
                        .map(|_| ())
                });
                in_flight.push(Sent {
                    task,
                    last: last.clone(),
                    keys,
                    bytes,
                });
                sent_up_to = last;
            }
            if in_flight.is_empty() && ready.is_none() && exporting.is_none() {
                break;
            }
            let event = tokio::select! {
                ingested = in_flight.oldest(), if !in_flight.is_empty() => {
                    CopyEvent::Ingested(ingested)
                }
                exported = async { exporting.as_mut().expect("exporting").await },
                    if exporting.is_some() && ready.is_none() =>
                {
                    CopyEvent::Exported(exported)
                }
                journaled = async { journaling.as_mut().expect("journaling").await },
                    if journaling.is_some() =>
                {
                    CopyEvent::Journaled(journaled)
                }
                () = ctx.cancelled() => CopyEvent::Cancelled,
            };
            match event {
                CopyEvent::Exported(exported) => {
                    exporting = None;
                    ready = Some(exported.map_err(migration_error)?);
                }
                CopyEvent::Journaled(journaled) => {
                    journaling = None;
                    journaled?;
                }
                CopyEvent::Cancelled => return Err(StepError::Cancelled),
                CopyEvent::Ingested(ingested) => {
                    let done = in_flight.pop().expect("the oldest chunk in flight");
                    ingested?;
                    committed += 1;
                    cursor.after_key = done.last;
                    cursor.chunks += 1;
                    cursor.keys += done.keys;
                    cursor.bytes += done.bytes;
                    unjournaled = Some(cursor.encode()?);
                    since_renewal += 1;
                    if since_renewal >= shared.config.renew_every_chunks
                        || renewed.elapsed() >= renew_period(ctx)
                    {
                        since_renewal = 0;
                        let (renewal, journaled) =
                            tokio::join!(shared.renew(ctx), finish(&mut journaling));
                        renewal?;
                        journaled?;
                        renewed = Instant::now();
                    }
                    failpoint!("vshard.copy.between-chunks");
                }
            }
        }
        finish(&mut journaling).await?;
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
