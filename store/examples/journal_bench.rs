//! Benchmark of the durable journal and the engine, printed as one JSON object.
//!
//! `cargo run --release -p shardflow-store --example journal_bench`
//!
//! Measures, in one run on the same disk:
//! - `redb_commit_us`: one bare durable redb write transaction (the floor);
//! - `journal_appends_per_s`: sequential durable appends of one event;
//! - `step_us` and `step_overhead_ratio`: one no-op workflow step driven by
//!   the engine on the redb journal, against one bare durable commit. The
//!   machine is shared and noisy, so this runs in rounds — a batch of bare
//!   commits, then a workflow of as many steps, on the same disk — and
//!   reports the median of the per-round ratios;
//! - `engine_cpu_step_us`: one no-op step on the in-memory journal (the
//!   engine's own cost, no disk);
//! - `replay_events_per_s`: folding 1,000,000 events into a state;
//! - `verify_events_per_s`: decoding, hash-chain checking and folding them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redb::{Database, TableDefinition};
use shardflow_store::{JournalOptions, RedbJournal};
use shardflow_workflow::envelope::genesis_hash;
use shardflow_workflow::{
    replay, verify, Engine, EngineConfig, Envelope, EnvelopeV1, Event, Journal, MemoryJournal,
    Phase, SealedEvent, Step, StepContext, StepError, Workflow, WorkflowId,
};

const COMMITS: u32 = 200;
const STEPS: usize = 50;
const ROUNDS: usize = 9;
const REPLAY_EVENTS: u64 = 1_000_000;

fn bare_commit_us(db: &Database, round: usize) -> f64 {
    let table: TableDefinition<u64, &[u8]> = TableDefinition::new("bare");
    let payload = [7u8; 120];
    let started = Instant::now();
    for i in 0..STEPS as u64 {
        let txn = db.begin_write().expect("txn");
        let key = round as u64 * 1_000 + i;
        txn.open_table(table)
            .expect("table")
            .insert(key, payload.as_slice())
            .expect("insert");
        txn.commit().expect("commit");
    }
    started.elapsed().as_secs_f64() * 1e6 / STEPS as f64
}

async fn journal_appends_per_s(dir: &std::path::Path) -> f64 {
    let journal = RedbJournal::open(dir.join("appends.redb")).expect("journal");
    let id = WorkflowId::new(1, 1);
    let mut events = synthetic(id, u64::from(COMMITS)).into_iter();
    let started = Instant::now();
    for seq in 0..u64::from(COMMITS) {
        let event = events.next().expect("enough events");
        journal.append(id, seq, vec![event]).await.expect("append");
    }
    f64::from(COMMITS) / started.elapsed().as_secs_f64()
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

struct ManySteps;

impl Workflow for ManySteps {
    type Input = ();
    const KIND: &'static str = "bench-many-steps";
    fn steps(&self) -> Vec<Arc<dyn Step<()>>> {
        (0..STEPS)
            .map(|i| {
                Arc::new(Noop(Box::leak(format!("s{i}").into_boxed_str()))) as Arc<dyn Step<()>>
            })
            .collect()
    }
}

async fn step_us(engine: &Engine) -> f64 {
    let started = Instant::now();
    let id = engine.submit::<ManySteps>(()).await.expect("submit");
    let status = engine.wait(id).await.expect("wait");
    assert_eq!(status.phase, Phase::Completed);
    started.elapsed().as_secs_f64() * 1e6 / STEPS as f64
}

/// One no-op step on the in-memory journal: the engine's own CPU cost.
async fn engine_only_step_us() -> f64 {
    let engine = Engine::new(Arc::new(MemoryJournal::default()), EngineConfig::default());
    engine.register(ManySteps);
    let mut samples: Vec<f64> = Vec::new();
    for _ in 0..ROUNDS {
        samples.push(step_us(&engine).await);
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Median of per-round (step, bare commit, ratio).
async fn step_rounds(dir: &std::path::Path) -> (f64, f64, f64) {
    let bare = Database::create(dir.join("bare.redb")).expect("bare redb");
    let journal = RedbJournal::open_with(dir.join("engine.redb"), JournalOptions::default())
        .expect("journal");
    let engine = Engine::new(Arc::new(journal), EngineConfig::default());
    engine.register(ManySteps);
    let mut rounds = Vec::new();
    for round in 0..ROUNDS {
        let commit = bare_commit_us(&bare, round);
        let step = step_us(&engine).await;
        rounds.push((step, commit, step / commit));
    }
    let median = |pick: fn(&(f64, f64, f64)) -> f64| {
        let mut values: Vec<f64> = rounds.iter().map(pick).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    (median(|r| r.0), median(|r| r.1), median(|r| r.2))
}

/// A realistic mix of events: steps started, checkpointed and succeeded.
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

fn rate(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let appends_per_s = journal_appends_per_s(dir.path()).await;
    let (step, redb_commit_us, step_ratio) = step_rounds(dir.path()).await;
    let engine_only = engine_only_step_us().await;

    let id = WorkflowId::new(1, 1);
    let sealed = synthetic(id, REPLAY_EVENTS);
    let envelopes: Vec<Envelope> = sealed.iter().map(|e| e.envelope.clone()).collect();
    let started = Instant::now();
    let state = replay(id, &envelopes).expect("replay");
    let replay_rate = rate(REPLAY_EVENTS, started.elapsed());
    assert_eq!(state.next_seq, REPLAY_EVENTS);
    let records: Vec<(u64, Vec<u8>)> = sealed.into_iter().map(|e| (e.seq(), e.bytes)).collect();
    let started = Instant::now();
    let verified = verify(id, records, None).expect("verify");
    let verify_rate = rate(REPLAY_EVENTS, started.elapsed());
    assert_eq!(verified.state, state);

    let report = serde_json::json!({
        "redb_commit_us": round(redb_commit_us),
        "journal_appends_per_s": round(appends_per_s),
        "journal_append_us": round(1e6 / appends_per_s),
        "step_us": round(step),
        "engine_cpu_step_us": round(engine_only),
        "step_overhead_ratio": round(step_ratio),
        "rounds": ROUNDS,
        "replay_events": REPLAY_EVENTS,
        "replay_events_per_s": round(replay_rate),
        "verify_events_per_s": round(verify_rate),
    });
    println!("{report}");
}

fn round(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}
