//! The engine end to end over the in-memory journal: submit, wait, cancel,
//! halt and resume, pause and operator resume, subscribe, refusals.

mod support;

use std::sync::Arc;
use std::time::Duration;

use shardflow_workflow::{
    replay, Engine, EngineConfig, EngineError, Event, MemoryJournal, Phase, WorkflowId,
    WorkflowStatus,
};
use support::{Outcome, Script, Scripted};

fn engine(journal: &Arc<MemoryJournal>) -> Engine {
    Engine::new(journal.clone(), EngineConfig::default())
}

async fn replayed(engine: &Engine, id: WorkflowId) -> WorkflowStatus {
    let events = engine.events(id).await.expect("events readable");
    WorkflowStatus::from(&replay(id, &events).expect("journal replays"))
}

// Proves a submitted workflow completes, each effect applied once, and the
// journal replays to exactly the status the engine reported live.
#[tokio::test]
async fn submitted_workflow_completes_and_replays_to_the_same_status() {
    let journal = Arc::new(MemoryJournal::default());
    let script = Script::default();
    let engine = engine(&journal);
    engine.register(Scripted::new(&["a", "b", "c"], &script));
    let mut progress = engine.subscribe();
    let id = engine.submit::<Scripted>(vec![1, 2]).await.expect("submit");
    let status = engine.wait(id).await.expect("wait");
    assert_eq!(status.phase, Phase::Completed);
    assert_eq!(replayed(&engine, id).await, status);
    for step in ["a", "b", "c"] {
        assert_eq!(script.applications(&format!("{id}/{step}")), 1, "{step}");
    }
    let mut names = Vec::new();
    while let Ok(event) = progress.try_recv() {
        names.push(event.event.name());
    }
    assert_eq!(names.first(), Some(&"Submitted"));
    assert_eq!(names.last(), Some(&"Completed"));
    assert_eq!(names.len() as u64, status.events);
}

// Proves a cancel reaches a long step through its context and compensates.
#[tokio::test]
async fn cancel_inside_a_long_step_compensates_started_steps() {
    let journal = Arc::new(MemoryJournal::default());
    let script = Script::default();
    script.set("b", 1, false, Outcome::WaitForCancel);
    let engine = engine(&journal);
    engine.register(Scripted::new(&["a", "b", "c"], &script));
    let id = engine.submit::<Scripted>(vec![]).await.expect("submit");
    script.wait_for_attempt("b").await;
    engine.cancel(id, "operator").await.expect("cancel");
    let status = engine.wait(id).await.expect("wait");
    assert_eq!(
        status.phase,
        Phase::Aborted {
            reason: "cancelled by operator".into()
        }
    );
    assert!(!script.present(&format!("{id}/c")), "c never ran");
    assert!(script.present(&format!("{id}/a!undo")), "a compensated");
    assert!(script.present(&format!("{id}/b!undo")), "b compensated");
    assert_eq!(replayed(&engine, id).await, status);
    let again = engine.cancel(id, "operator").await;
    assert!(
        matches!(again, Err(EngineError::AlreadyEnded { .. })),
        "{again:?}"
    );
}

// Proves a halted engine's instance resumes on a new engine with a higher
// epoch, the interrupted attempt journaled and retried, effects once.
#[tokio::test]
async fn halted_instance_resumes_with_a_new_epoch() {
    let journal = Arc::new(MemoryJournal::default());
    let script = Script::default();
    script.set("b", 1, false, Outcome::WaitForCancel);
    let first = engine(&journal);
    first.register(Scripted::new(&["a", "b", "c"], &script));
    let id = first.submit::<Scripted>(vec![]).await.expect("submit");
    script.wait_for_attempt("b").await;
    first.halt();

    let second = engine(&journal);
    second.register(Scripted::new(&["a", "b", "c"], &script));
    let report = second.resume_all().await.expect("resume_all");
    assert_eq!(report.resumed, vec![id]);
    let status = second.wait(id).await.expect("wait");
    assert_eq!(status.phase, Phase::Completed);
    assert_eq!(status.epoch, 2);
    let events = second.events(id).await.expect("events");
    let interrupted = events.iter().any(|e| {
        matches!(e.body(), Event::StepFailed { step, attempt: 1, retryable: true, .. } if step == "b")
    });
    assert!(
        interrupted,
        "the interrupted attempt is journaled as failed"
    );
    assert_eq!(script.applications(&format!("{id}/a")), 1);
    assert_eq!(replayed(&second, id).await, status);
    let next = second
        .submit::<Scripted>(vec![])
        .await
        .expect("second submit");
    assert_eq!(
        next.serial,
        id.serial + 1,
        "serials continue after a restart"
    );
}

// Proves failures after the point of no return pause, and resume finishes it.
#[tokio::test]
async fn failure_after_point_of_no_return_pauses_until_operator_resumes() {
    let journal = Arc::new(MemoryJournal::default());
    let script = Script::default();
    script.set("c", 1, false, Outcome::Terminal);
    let engine = engine(&journal);
    let mut workflow = Scripted::new(&["a", "b", "c"], &script);
    workflow.point_of_no_return = Some("b");
    engine.register(workflow);
    let id = engine.submit::<Scripted>(vec![]).await.expect("submit");
    let paused = engine.wait(id).await.expect("wait");
    assert!(
        matches!(
            paused.phase,
            Phase::Paused {
                compensating: false,
                ..
            }
        ),
        "{paused:?}"
    );
    assert!(
        !script.present(&format!("{id}/b!undo")),
        "no compensation after the point of no return"
    );
    engine
        .cancel(id, "operator")
        .await
        .expect("cancel is journaled");
    engine.resume(id, "operator").await.expect("resume");
    let status = engine.wait(id).await.expect("wait");
    assert_eq!(
        status.phase,
        Phase::Completed,
        "rolls forward despite the cancel"
    );
    assert_eq!(replayed(&engine, id).await, status);
}

// Proves a panicking step and a timed-out attempt are failures, not crashes.
#[tokio::test]
async fn panic_is_terminal_and_timeout_is_retryable() {
    let journal = Arc::new(MemoryJournal::default());
    let script = Script::default();
    script.set("a", 1, false, Outcome::WaitForCancel);
    script.set("b", 1, false, Outcome::Panic);
    let engine = engine(&journal);
    let mut workflow = Scripted::new(&["a", "b"], &script);
    workflow.attempt_timeout = Duration::from_millis(50);
    engine.register(workflow);
    let id = engine.submit::<Scripted>(vec![]).await.expect("submit");
    let status = engine.wait(id).await.expect("wait");
    assert!(
        matches!(status.phase, Phase::Aborted { ref reason } if reason.contains("panicked")),
        "{status:?}"
    );
    let events = engine.events(id).await.expect("events");
    let timed_out = events.iter().any(|e| {
        matches!(e.body(), Event::StepFailed { error, retryable: true, .. } if error.contains("timed out"))
    });
    assert!(timed_out);
}

// Proves bad requests are refused with typed errors and change nothing.
#[tokio::test]
async fn refusals_are_typed_and_change_nothing() {
    let journal = Arc::new(MemoryJournal::default());
    let engine = engine(&journal);
    let unknown = engine.submit::<Scripted>(vec![]).await;
    assert!(
        matches!(unknown, Err(EngineError::UnknownKind(_))),
        "{unknown:?}"
    );
    let other_node = WorkflowId::new(9, 1);
    assert!(matches!(
        engine.cancel(other_node, "x").await,
        Err(EngineError::NotLocal { .. })
    ));
    let missing = WorkflowId::new(1, 77);
    assert!(engine.status(missing).await.is_err());
    assert!(engine.list(true).await.expect("list").is_empty());
}

// Proves a journaled plan that differs from the registered one is refused.
#[tokio::test]
async fn resume_refuses_a_changed_plan() {
    let journal = Arc::new(MemoryJournal::default());
    let script = Script::default();
    script.set("a", 1, false, Outcome::WaitForCancel);
    let first = engine(&journal);
    first.register(Scripted::new(&["a", "b"], &script));
    let id = first.submit::<Scripted>(vec![]).await.expect("submit");
    script.wait_for_attempt("a").await;
    first.halt();
    let second = engine(&journal);
    second.register(Scripted::new(&["a", "x"], &script));
    let report = second.resume_all().await.expect("resume_all");
    assert_eq!(report.failed.len(), 1);
    assert!(
        report.failed[0].1.contains("differs"),
        "{:?}",
        report.failed
    );
    assert_eq!(report.failed[0].0, id);
}

// Proves ended instances stay for audit until an explicit retention prunes
// them, and running ones are never pruned.
#[tokio::test]
async fn ended_instances_are_pruned_only_by_explicit_retention() {
    let journal = Arc::new(MemoryJournal::default());
    let script = Script::default();
    let engine = engine(&journal);
    engine.register(Scripted::new(&["a"], &script));
    let ended = engine.submit::<Scripted>(vec![]).await.expect("submit");
    let status = engine.wait(ended).await.expect("wait");
    assert_eq!(status.phase, Phase::Completed);
    script.set("a", 1, false, Outcome::WaitForCancel);
    let running = engine.submit::<Scripted>(vec![]).await.expect("submit");
    script.wait_for_attempt("a").await;
    assert_eq!(
        engine
            .prune_ended(Duration::from_secs(3600))
            .await
            .expect("prune"),
        0
    );
    // Retention zero prunes what ended strictly before now: let the clock tick.
    while shardflow_workflow::now_ms() <= status.updated_at_ms {
        tokio::task::yield_now().await;
    }
    assert_eq!(engine.prune_ended(Duration::ZERO).await.expect("prune"), 1);
    let left: Vec<WorkflowId> = engine
        .list(true)
        .await
        .expect("list")
        .iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(left, vec![running]);
}

/// What a step's context showed: its state's next seq, its last checkpoint.
type Seen = Arc<std::sync::Mutex<Vec<(u64, Option<Vec<u8>>)>>>;

/// A step that checkpoints once and reports what its context showed.
struct Checkpointing(Seen);

#[async_trait::async_trait]
impl shardflow_workflow::Step<()> for Checkpointing {
    fn name(&self) -> &'static str {
        "only"
    }
    async fn run(
        &self,
        ctx: &shardflow_workflow::StepContext<()>,
    ) -> Result<Vec<u8>, shardflow_workflow::StepError> {
        let before = (
            ctx.state().next_seq,
            ctx.last_checkpoint().map(<[u8]>::to_vec),
        );
        ctx.checkpoint(vec![7]).await?;
        let after = (
            ctx.state().next_seq,
            ctx.last_checkpoint().map(<[u8]>::to_vec),
        );
        self.0.lock().expect("seen").extend([before, after]);
        Ok(Vec::new())
    }
    async fn compensate(
        &self,
        _: &shardflow_workflow::StepContext<()>,
    ) -> Result<(), shardflow_workflow::StepError> {
        Ok(())
    }
}

struct OneCheckpoint(Seen);

impl shardflow_workflow::Workflow for OneCheckpoint {
    type Input = ();
    const KIND: &'static str = "one-checkpoint";
    fn steps(&self) -> Vec<Arc<dyn shardflow_workflow::Step<()>>> {
        vec![Arc::new(Checkpointing(Arc::clone(&self.0)))]
    }
}

// Proves a step's context shows the state as it was when the attempt began,
// even after the step journals a checkpoint (the writer's state moves on,
// the attempt's snapshot does not), and the checkpoint is journaled.
#[tokio::test]
async fn step_context_state_is_the_state_when_the_attempt_began() {
    let journal = Arc::new(MemoryJournal::default());
    let engine = engine(&journal);
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    engine.register(OneCheckpoint(Arc::clone(&seen)));
    let id = engine.submit::<OneCheckpoint>(()).await.expect("submit");
    let status = engine.wait(id).await.expect("wait");
    assert_eq!(status.phase, Phase::Completed);
    // Submitted, DriverStarted, StepStarted: the attempt began at seq 3.
    let seen = seen.lock().expect("seen").clone();
    assert_eq!(seen, vec![(3, None), (3, None)]);
    let events = engine.events(id).await.expect("events");
    assert!(events
        .iter()
        .any(|e| matches!(e.body(), Event::Checkpoint { progress, .. } if progress == &[7])));
    assert_eq!(
        replay(id, &events).expect("replays").steps[0].checkpoints,
        1
    );
}
