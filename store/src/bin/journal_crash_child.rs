//! A small real program for the journal's crash test (`tests/crash_process.rs`).
//!
//! It runs one 4-step workflow on a redb journal in `DIR/journal.redb`; each
//! step writes its effect, keyed by its idempotency key, into a redb file of
//! its own (`DIR/effects.redb`), durably and at most once per key. With
//! `--crash-at B` it stops dead at journal boundary `B` (boundary `2k` is
//! just before the k-th append, `2k+1` just after it): it prints
//! `BOUNDARY B` and waits to be SIGKILLed by the test. Without it, it submits
//! the workflow (or resumes the one in the journal), waits for it to settle,
//! and prints `SETTLED <phase>` and `APPENDS <n>`.
//!
//! Usage: journal-crash-child DIR success|fail [--crash-at B]

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redb::{Database, ReadableTable, TableDefinition};
use shardflow_store::RedbJournal;
use shardflow_workflow::{
    Engine, EngineConfig, InstanceSummary, Journal, JournalError, RetryPolicy, SealedEvent, Step,
    StepContext, StepError, Workflow, WorkflowId,
};

const EFFECTS: TableDefinition<&str, u64> = TableDefinition::new("effects");

/// Wraps the journal and stops the process at the chosen boundary.
struct Boundaries {
    inner: RedbJournal,
    appends: AtomicU64,
    crash_at: Option<u64>,
}

impl Boundaries {
    fn boundary(&self, boundary: u64) {
        if self.crash_at == Some(boundary) {
            println!("BOUNDARY {boundary}");
            let _ = std::io::stdout().flush();
            // Wait for the test's SIGKILL; never returns normally.
            loop {
                std::thread::park();
            }
        }
    }
}

#[async_trait]
impl Journal for Boundaries {
    async fn append(
        &self,
        id: WorkflowId,
        seq: u64,
        events: Vec<SealedEvent>,
    ) -> Result<(), JournalError> {
        let k = self.appends.fetch_add(1, Ordering::SeqCst);
        self.boundary(2 * k);
        self.inner.append(id, seq, events).await?;
        self.boundary(2 * k + 1);
        Ok(())
    }
    async fn read(&self, id: WorkflowId) -> Result<Vec<SealedEvent>, JournalError> {
        self.inner.read(id).await
    }
    async fn list(&self, include_ended: bool) -> Result<Vec<InstanceSummary>, JournalError> {
        self.inner.list(include_ended).await
    }
    async fn max_serial(&self, node: u64) -> Result<u64, JournalError> {
        self.inner.max_serial(node).await
    }
    async fn prune_ended(&self, before_ms: u64) -> Result<u64, JournalError> {
        self.inner.prune_ended(before_ms).await
    }
}

/// One step: applies its effect once per idempotency key.
struct EffectStep {
    name: &'static str,
    effects: Arc<Database>,
    fails: bool,
}

impl EffectStep {
    fn apply(&self, key: String) -> Result<(), StepError> {
        let run = || -> Result<(), redb::Error> {
            let txn = self.effects.begin_write()?;
            {
                let mut table = txn.open_table(EFFECTS)?;
                let present = table.get(key.as_str())?.is_some();
                if !present {
                    table.insert(key.as_str(), 1)?;
                }
            }
            txn.commit()?;
            Ok(())
        };
        run().map_err(StepError::retryable)
    }
}

#[async_trait]
impl Step<u32> for EffectStep {
    fn name(&self) -> &'static str {
        self.name
    }
    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            attempt_timeout: Duration::from_secs(20),
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
        }
    }
    async fn run(&self, ctx: &StepContext<u32>) -> Result<Vec<u8>, StepError> {
        if self.fails {
            return Err(StepError::terminal("scripted refusal"));
        }
        self.apply(ctx.idempotency_key().to_string())?;
        Ok(Vec::new())
    }
    async fn compensate(&self, ctx: &StepContext<u32>) -> Result<(), StepError> {
        self.apply(format!("{}!undo", ctx.idempotency_key()))
    }
}

struct FourSteps {
    effects: Arc<Database>,
    fail_third: bool,
}

impl Workflow for FourSteps {
    type Input = u32;
    const KIND: &'static str = "four-steps";
    fn steps(&self) -> Vec<Arc<dyn Step<u32>>> {
        ["one", "two", "three", "four"]
            .into_iter()
            .map(|name| {
                Arc::new(EffectStep {
                    name,
                    effects: self.effects.clone(),
                    fails: self.fail_third && name == "three",
                }) as Arc<dyn Step<u32>>
            })
            .collect()
    }
}

fn fail(message: String) -> ! {
    eprintln!("journal-crash-child: {message}");
    std::process::exit(2)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (dir, mode) = match (args.get(1), args.get(2)) {
        (Some(dir), Some(mode)) if mode == "success" || mode == "fail" => {
            (PathBuf::from(dir), mode.clone())
        }
        _ => fail("usage: journal-crash-child DIR success|fail [--crash-at B]".into()),
    };
    let crash_at = match (args.get(3).map(String::as_str), args.get(4)) {
        (Some("--crash-at"), Some(b)) => Some(
            b.parse()
                .unwrap_or_else(|_| fail(format!("bad boundary {b}"))),
        ),
        (None, _) => None,
        _ => fail("expected --crash-at B".into()),
    };
    let journal =
        RedbJournal::open(dir.join("journal.redb")).unwrap_or_else(|e| fail(e.to_string()));
    let effects =
        Database::create(dir.join("effects.redb")).unwrap_or_else(|e| fail(e.to_string()));
    let journal = Arc::new(Boundaries {
        inner: journal,
        appends: AtomicU64::new(0),
        crash_at,
    });
    let engine = Engine::new(journal.clone(), EngineConfig::default());
    engine.register(FourSteps {
        effects: Arc::new(effects),
        fail_third: mode == "fail",
    });
    let existing = journal
        .list(true)
        .await
        .unwrap_or_else(|e| fail(e.to_string()));
    let id = match existing.first() {
        Some(summary) => {
            let report = engine
                .resume_all()
                .await
                .unwrap_or_else(|e| fail(e.to_string()));
            if !report.failed.is_empty() {
                fail(format!("resume failed: {:?}", report.failed));
            }
            summary.id
        }
        None => engine
            .submit::<FourSteps>(7)
            .await
            .unwrap_or_else(|e| fail(e.to_string())),
    };
    let status = engine
        .wait(id)
        .await
        .unwrap_or_else(|e| fail(e.to_string()));
    println!("SETTLED {}", status.phase.label());
    println!("APPENDS {}", journal.appends.load(Ordering::SeqCst));
}
