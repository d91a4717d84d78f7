//! The workflow engine's own costs, on this disk:
//!
//! - **step overhead**: one no-op step driven by the engine on the redb
//!   journal, against one bare durable redb write transaction (the floor a
//!   step cannot go under: its journal append is one). The machine is
//!   shared and noisy, so this runs in rounds — a batch of bare commits,
//!   then a workflow of as many steps, in the same directory — and the
//!   ratio is the median of the per-round ratios;
//! - **replay**: folding synthetic events (a realistic mix: submitted,
//!   driver started, step started, checkpoints) into a workflow state with
//!   [`replay`], as an audit or a resume does once the events are decoded;
//!   and, for the table, the same events verified from their bytes
//!   (decode, hash chain, fold).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use redb::{Database, TableDefinition};
use shardflow_store::{JournalOptions, RedbJournal};
use shardflow_workflow::envelope::genesis_hash;
use shardflow_workflow::{
    replay, verify, Engine, EngineConfig, Envelope, EnvelopeV1, Event, Phase, SealedEvent, Step,
    StepContext, StepError, Workflow, WorkflowId,
};

use super::stats::{median, micros};
use super::{redb_error, BenchError};

/// No-op steps per workflow, and bare commits per round.
const STEPS: usize = 50;
/// Rounds of (bare commits, workflow).
const ROUNDS: usize = 9;

/// What the engine costs.
#[derive(Clone, Debug)]
pub struct EngineFigures {
    /// One bare durable redb write transaction, µs (median round).
    pub redb_commit_us: f64,
    /// One no-op step on the redb journal, µs (median round).
    pub step_us: f64,
    /// Median of the per-round step / bare commit ratios.
    pub step_overhead_ratio: f64,
    /// Events folded per second.
    pub replay_events_per_s: f64,
    /// Events decoded, hash-checked and folded per second.
    pub verify_events_per_s: f64,
    /// How many events were replayed.
    pub replay_events: u64,
}

/// Measures the step overhead in `dir` and the replay of `replay_events`.
pub async fn measure(dir: &Path, replay_events: u64) -> Result<EngineFigures, BenchError> {
    let (step_us, redb_commit_us, step_overhead_ratio) = step_rounds(dir).await?;
    let (replay_events_per_s, verify_events_per_s) =
        tokio::task::spawn_blocking(move || replay_rates(replay_events.max(4)))
            .await
            .map_err(|error| BenchError::Task(error.to_string()))??;
    Ok(EngineFigures {
        redb_commit_us,
        step_us,
        step_overhead_ratio,
        replay_events_per_s,
        verify_events_per_s,
        replay_events: replay_events.max(4),
    })
}

struct Noop(&'static str);

#[async_trait]
impl Step<()> for Noop {
    fn name(&self) -> &'static str {
        self.0
    }
    async fn run(&self, _: &StepContext<()>) -> Result<Vec<u8>, StepError> {
        Ok(Vec::new())
    }
    async fn compensate(&self, _: &StepContext<()>) -> Result<(), StepError> {
        Ok(())
    }
}

/// A workflow of [`STEPS`] no-op steps.
struct ManySteps;

impl Workflow for ManySteps {
    type Input = ();
    const KIND: &'static str = "bench-many-steps";
    fn steps(&self) -> Vec<Arc<dyn Step<()>>> {
        (STEP_NAMES.iter())
            .map(|name| Arc::new(Noop(name)) as Arc<dyn Step<()>>)
            .collect()
    }
}

/// Step names: fixed strings, so no allocation is leaked per definition.
const STEP_NAMES: [&str; STEPS] = [
    "s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10", "s11", "s12", "s13", "s14",
    "s15", "s16", "s17", "s18", "s19", "s20", "s21", "s22", "s23", "s24", "s25", "s26", "s27",
    "s28", "s29", "s30", "s31", "s32", "s33", "s34", "s35", "s36", "s37", "s38", "s39", "s40",
    "s41", "s42", "s43", "s44", "s45", "s46", "s47", "s48", "s49",
];

/// [`STEPS`] bare durable commits of one small row each; µs per commit.
fn bare_commit_us(db: &Database, round: usize) -> Result<f64, BenchError> {
    let table: TableDefinition<u64, &[u8]> = TableDefinition::new("bare");
    let payload = [7u8; 120];
    let started = Instant::now();
    for i in 0..STEPS as u64 {
        let txn = db.begin_write().map_err(redb_error)?;
        txn.open_table(table)
            .map_err(redb_error)?
            .insert(round as u64 * 1_000 + i, payload.as_slice())
            .map_err(redb_error)?;
        txn.commit().map_err(redb_error)?;
    }
    Ok(micros(started.elapsed()) / STEPS as f64)
}

/// One workflow of [`STEPS`] no-op steps; µs per step.
async fn step_us(engine: &Engine) -> Result<f64, BenchError> {
    let started = Instant::now();
    let id = engine.submit::<ManySteps>(()).await?;
    let status = engine.wait(id).await?;
    if status.phase != Phase::Completed {
        return Err(BenchError::Measure(format!(
            "the no-op workflow ended {}",
            status.phase.label()
        )));
    }
    Ok(micros(started.elapsed()) / STEPS as f64)
}

/// Medians of per-round (step µs, bare commit µs, ratio).
async fn step_rounds(dir: &Path) -> Result<(f64, f64, f64), BenchError> {
    let bare = Database::create(dir.join("bare-commits.redb")).map_err(redb_error)?;
    let journal = RedbJournal::open_with(dir.join("engine.redb"), JournalOptions::default())?;
    let engine = Engine::new(Arc::new(journal), EngineConfig::default());
    engine.register(ManySteps);
    let mut rounds = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let commit = bare_commit_us(&bare, round)?;
        let step = step_us(&engine).await?;
        rounds.push((step, commit, step / commit));
    }
    engine.halt();
    let pick = |f: fn(&(f64, f64, f64)) -> f64| median(rounds.iter().map(f).collect());
    Ok((pick(|r| r.0), pick(|r| r.1), pick(|r| r.2)))
}

/// (fold rate, verify rate) over `count` synthetic events of one instance.
fn replay_rates(count: u64) -> Result<(f64, f64), BenchError> {
    let id = WorkflowId::new(1, 1);
    let sealed = synthetic(id, count);
    let envelopes: Vec<Envelope> = sealed.iter().map(|e| e.envelope.clone()).collect();
    let started = Instant::now();
    let state = replay(id, &envelopes).map_err(|e| BenchError::Measure(e.to_string()))?;
    let fold_rate = count as f64 / started.elapsed().as_secs_f64().max(1e-9);
    if state.next_seq != count {
        return Err(BenchError::Measure(format!(
            "replayed {} of {count} events",
            state.next_seq
        )));
    }
    let records: Vec<(u64, Vec<u8>)> = sealed.into_iter().map(|e| (e.seq(), e.bytes)).collect();
    let started = Instant::now();
    verify(id, records, None).map_err(|e| BenchError::Measure(e.to_string()))?;
    let verify_rate = count as f64 / started.elapsed().as_secs_f64().max(1e-9);
    Ok((fold_rate, verify_rate))
}

/// A realistic mix of events: a submission, a driver, a step started and
/// checkpointed over and over (a long copy).
fn synthetic(id: WorkflowId, count: u64) -> Vec<SealedEvent> {
    let plan: Vec<String> = (0..8).map(|i| format!("step-{i}")).collect();
    let mut prev = genesis_hash(id);
    let mut out = Vec::with_capacity(count as usize);
    for seq in 0..count {
        let body = match seq {
            0 => Event::Submitted {
                kind: "bench".into(),
                definition_version: 1,
                input: vec![1; 16],
                plan: plan.clone(),
            },
            1 => Event::DriverStarted { epoch: 1 },
            2 => Event::StepStarted {
                step: plan[0].clone(),
                attempt: 1,
            },
            _ => Event::Checkpoint {
                step: plan[0].clone(),
                progress: seq.to_le_bytes().to_vec(),
            },
        };
        let event = SealedEvent::seal(Envelope::V1(EnvelopeV1 {
            seq,
            at_ms: 1_700_000_000_000 + seq,
            node: 1,
            engine_version: 1,
            definition_version: 1,
            prev_hash: prev,
            body,
        }));
        prev = event.hash;
        out.push(event);
    }
    out
}
