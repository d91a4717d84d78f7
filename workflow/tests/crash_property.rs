//! Property: for random step outcomes and random crash points, the journal
//! replays to exactly the state the live engine reported, and every step's
//! effect happened exactly once (effects are keyed by idempotency key, so a
//! key that changed across attempts or restarts would apply twice).

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use proptest::prelude::*;
use shardflow_workflow::{
    replay, Engine, EngineConfig, InstanceSummary, Journal, JournalError, MemoryJournal, Phase,
    SealedEvent, WorkflowId, WorkflowState, WorkflowStatus,
};
use support::{Outcome, Script, Scripted};

const STEPS: [&str; 4] = ["a", "b", "c", "d"];

/// A journal whose process "crashes" after a number of appends: every
/// append after that fails without writing, as if the node had died.
struct Crashing {
    inner: Arc<MemoryJournal>,
    appends_left: AtomicU64,
}

#[async_trait]
impl Journal for Crashing {
    async fn append(
        &self,
        id: WorkflowId,
        seq: u64,
        events: Vec<SealedEvent>,
    ) -> Result<(), JournalError> {
        let left = self.appends_left.load(Ordering::SeqCst);
        if left == 0 {
            return Err(JournalError::Storage {
                doing: "appending".into(),
                source: "simulated crash".into(),
            });
        }
        self.appends_left.store(left - 1, Ordering::SeqCst);
        self.inner.append(id, seq, events).await
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

fn outcome_strategy() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        3 => Just(Outcome::Ok),
        2 => Just(Outcome::Retryable),
        1 => Just(Outcome::Terminal),
    ]
}

fn workflow(script: &Script, point_of_no_return: Option<usize>) -> Scripted {
    let mut workflow = Scripted::new(&STEPS, script);
    workflow.point_of_no_return = point_of_no_return.map(|index| STEPS[index]);
    workflow
}

/// Runs one scenario; returns the final live status, the replayed state and
/// the script (for its ledger).
async fn scenario(
    outcomes: Vec<(usize, u32, bool, Outcome)>,
    crashes: Vec<u64>,
    point_of_no_return: Option<usize>,
) -> (WorkflowStatus, WorkflowState, Script) {
    let script = Script::default();
    for (step, attempt, compensation, outcome) in outcomes {
        script.set(STEPS[step], attempt, compensation, outcome);
    }
    let memory = Arc::new(MemoryJournal::default());
    let mut id = None;
    for appends in crashes {
        let journal = Arc::new(Crashing {
            inner: memory.clone(),
            appends_left: AtomicU64::new(appends),
        });
        let engine = Engine::new(journal, EngineConfig::default());
        engine.register(workflow(&script, point_of_no_return));
        match id {
            None => id = engine.submit::<Scripted>(vec![7]).await.ok(),
            Some(_) => drop(engine.resume_all().await),
        }
        if let Some(id) = id {
            let _crashed_or_settled = engine.wait(id).await;
        }
        engine.halt();
    }
    let engine = Engine::new(memory.clone(), EngineConfig::default());
    engine.register(workflow(&script, point_of_no_return));
    let id = match id {
        Some(id) => {
            engine.resume_all().await.expect("resume_all");
            id
        }
        None => engine.submit::<Scripted>(vec![7]).await.expect("submit"),
    };
    let mut status = engine.wait(id).await.expect("wait");
    for _ in 0..8 {
        if !matches!(status.phase, Phase::Paused { .. }) {
            break;
        }
        engine.resume(id, "operator").await.expect("resume");
        status = engine.wait(id).await.expect("wait after resume");
    }
    let events = engine.events(id).await.expect("events");
    let state = replay(id, &events).expect("journal replays");
    (status, state, script)
}

fn check(
    status: &WorkflowStatus,
    state: &WorkflowState,
    script: &Script,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(status, &WorkflowStatus::from(state));
    let id = state.id;
    match &state.phase {
        Phase::Completed => {
            for step in STEPS {
                prop_assert_eq!(script.applications(&format!("{id}/{step}")), 1, "{}", step);
                let undo = format!("{id}/{step}!undo");
                prop_assert!(
                    !script.present(&undo),
                    "{} compensated after completing",
                    step
                );
            }
        }
        Phase::Aborted { .. } => {
            prop_assert!(state.point_of_no_return.is_none());
            for (index, step) in STEPS.iter().enumerate() {
                let started = state.started_order.contains(&index);
                let undo = script.applications(&format!("{id}/{step}!undo"));
                prop_assert_eq!(
                    undo,
                    u32::from(started),
                    "{} compensated exactly once",
                    step
                );
                let forward = script.applications(&format!("{id}/{step}"));
                prop_assert!(forward <= 1, "{} applied {} times", step, forward);
            }
        }
        other => prop_assert!(false, "did not end: {:?}", other),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn replay_equals_live_and_effects_happen_exactly_once(
        outcomes in prop::collection::vec((0usize..4, 1u32..4, any::<bool>(), outcome_strategy()), 0..10),
        crashes in prop::collection::vec(0u64..24, 0..4),
        point_of_no_return in prop::option::of(0usize..4),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let (status, state, script) = runtime.block_on(scenario(outcomes, crashes, point_of_no_return));
        check(&status, &state, &script)?;
    }
}
