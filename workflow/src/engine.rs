//! The engine: a cheap, cloneable handle that submits instances, drives
//! them (one driver task per instance), and answers status, wait, cancel,
//! resume and subscribe.
//!
//! **Invariants:** at most one driver per instance in this engine; every
//! driver start journals a new, higher epoch before acting; nothing is
//! reported that is not durable; an instance whose journal breaks the rules,
//! or whose journaled plan differs from the registered definition, is refused
//! with a typed error, never driven by guesswork.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex, RwLock};
use std::time::Duration;

use tokio::sync::{broadcast, watch, Mutex};
use tokio::task::AbortHandle;

use crate::decide::{Plan, StepPlan};
use crate::driver::{DriveFuture, Driver};
use crate::envelope::Envelope;
use crate::error::EngineError;
use crate::event::Event;
use crate::id::WorkflowId;
use crate::journal::{InstanceSummary, Journal, JournalError};
use crate::state::{Phase, WorkflowState};
use crate::status::{Live, Progress, WorkflowStatus};
use crate::step::{Step, Workflow};
use crate::writer::InstanceWriter;

/// Engine settings.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// This node's id; instance ids name it.
    pub node: u64,
    /// The most events one instance may journal (must match the journal's cap).
    pub max_events_per_instance: u64,
    /// Progress events buffered per subscriber before it lags.
    pub progress_buffer: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            node: 1,
            max_events_per_instance: 100_000,
            progress_buffer: 4_096,
        }
    }
}

/// What `resume_all` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResumeReport {
    /// Instances a driver now drives again.
    pub resumed: Vec<WorkflowId>,
    /// Instances left waiting for an operator.
    pub paused: Vec<WorkflowId>,
    /// Instances that could not be resumed, and why.
    pub failed: Vec<(WorkflowId, String)>,
}

/// A registered workflow definition, type-erased.
trait Definition: Send + Sync {
    fn plan_names(&self) -> Vec<String>;
    fn version(&self) -> u32;
    fn plan(&self, max_events: u64) -> Plan;
    fn driver(
        &self,
        id: WorkflowId,
        input: &[u8],
        max_events: u64,
        writer: Arc<Mutex<InstanceWriter>>,
        cancel: watch::Receiver<bool>,
    ) -> Result<DriveFuture, EngineError>;
}

struct Registered<W: Workflow> {
    steps: Vec<Arc<dyn Step<W::Input>>>,
}

impl<W: Workflow> Definition for Registered<W> {
    fn plan_names(&self) -> Vec<String> {
        self.steps.iter().map(|s| s.name().to_string()).collect()
    }

    fn version(&self) -> u32 {
        W::VERSION
    }

    fn plan(&self, max_events: u64) -> Plan {
        let steps = self.steps.iter().map(|step| StepPlan {
            name: step.name().to_string(),
            retry: step.retry_policy(),
            point_of_no_return: step.is_point_of_no_return(),
        });
        Plan {
            steps: steps.collect(),
            max_events,
        }
    }

    fn driver(
        &self,
        id: WorkflowId,
        input: &[u8],
        max_events: u64,
        writer: Arc<Mutex<InstanceWriter>>,
        cancel: watch::Receiver<bool>,
    ) -> Result<DriveFuture, EngineError> {
        let input: W::Input = postcard::from_bytes(input).map_err(|error| EngineError::Input {
            id,
            reason: format!("journaled input does not decode: {error}"),
        })?;
        let driver = Driver {
            plan: self.plan(max_events),
            steps: self.steps.clone(),
            input: Arc::new(input),
            writer,
            cancel,
        };
        Ok(Box::pin(driver.run()))
    }
}

/// A driver running in this engine.
/// How long `resume` waits for the driver of a just-paused instance to
/// exit before refusing.
const DRIVER_EXIT_WAIT: Duration = Duration::from_secs(2);

struct Running {
    writer: Arc<Mutex<InstanceWriter>>,
    cancel: watch::Sender<bool>,
    task: Option<AbortHandle>,
}

/// What the engine knows of an instance it drove since it started.
struct Known {
    live: watch::Sender<Live>,
    running: Option<Running>,
}

struct Inner {
    journal: Arc<dyn Journal>,
    config: EngineConfig,
    definitions: RwLock<HashMap<String, Arc<dyn Definition>>>,
    known: StdMutex<HashMap<WorkflowId, Known>>,
    progress: broadcast::Sender<Progress>,
    last_serial: Mutex<Option<u64>>,
}

/// The durable workflow engine of one node.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    /// An engine over `journal`; register definitions, then `resume_all`.
    pub fn new(journal: Arc<dyn Journal>, config: EngineConfig) -> Self {
        let (progress, _) = broadcast::channel(config.progress_buffer.max(1));
        Self {
            inner: Arc::new(Inner {
                journal,
                config,
                definitions: RwLock::new(HashMap::new()),
                known: StdMutex::new(HashMap::new()),
                progress,
                last_serial: Mutex::new(None),
            }),
        }
    }

    /// This engine's node id.
    pub fn node(&self) -> u64 {
        self.inner.config.node
    }

    /// The journal it writes.
    pub fn journal(&self) -> &Arc<dyn Journal> {
        &self.inner.journal
    }

    /// Makes a workflow kind submittable and resumable.
    pub fn register<W: Workflow>(&self, workflow: W) {
        let definition = Arc::new(Registered::<W> {
            steps: workflow.steps(),
        });
        write_lock(&self.inner.definitions).insert(W::KIND.to_string(), definition);
    }

    /// Journals a new instance (durably) and starts driving it.
    pub async fn submit<W: Workflow>(&self, input: W::Input) -> Result<WorkflowId, EngineError> {
        let definition = self.definition(W::KIND)?;
        let id = self.allocate_id().await?;
        let input = postcard::to_stdvec(&input).map_err(|error| EngineError::Input {
            id,
            reason: error.to_string(),
        })?;
        let submitted = Event::Submitted {
            kind: W::KIND.to_string(),
            definition_version: definition.version(),
            input: input.clone(),
            plan: definition.plan_names(),
        };
        let live = self.live_sender(id);
        let writer = InstanceWriter::create(
            Arc::clone(&self.inner.journal),
            self.node(),
            id,
            submitted,
            live,
            self.inner.progress.clone(),
        )
        .await?;
        self.spawn(id, definition.as_ref(), &input, writer)?;
        Ok(id)
    }

    /// Resumes every instance of the journal that has not ended: each is
    /// replayed, given a new driver epoch and driven again. Paused ones wait
    /// for `resume`. Call it before the node reports ready.
    pub async fn resume_all(&self) -> Result<ResumeReport, EngineError> {
        let mut report = ResumeReport::default();
        for summary in self.inner.journal.list(false).await? {
            let id = summary.id;
            if self.is_running(id) {
                continue;
            }
            match self.drive_existing(id, Vec::new()).await {
                Ok(true) => report.resumed.push(id),
                Ok(false) => report.paused.push(id),
                Err(error) => {
                    tracing::error!(workflow = %id, %error, "could not resume workflow");
                    report.failed.push((id, error.to_string()));
                }
            }
        }
        Ok(report)
    }

    /// An operator's resume of a paused instance: journals the request and
    /// drives it again with fresh retry budgets.
    pub async fn resume(&self, id: WorkflowId, by: &str) -> Result<(), EngineError> {
        self.check_local(id)?;
        let state = self.state(id).await?;
        if matches!(state.phase, Phase::Paused { .. }) {
            // The driver journals `Paused`, then exits: an operator who
            // resumes at once must not be refused for that instant.
            let deadline = tokio::time::Instant::now() + DRIVER_EXIT_WAIT;
            while self.is_running(id) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        if !matches!(state.phase, Phase::Paused { .. }) || self.is_running(id) {
            return Err(EngineError::NotPaused {
                id,
                phase: state.phase.label(),
            });
        }
        let request = Event::ResumeRequested { by: by.to_string() };
        self.drive_existing(id, vec![request]).await.map(drop)
    }

    /// Requests cancellation: journaled at once, honoured at the next step
    /// boundary (or inside a step through its context) before the point of
    /// no return; ignored after it (the instance rolls forward).
    pub async fn cancel(&self, id: WorkflowId, by: &str) -> Result<(), EngineError> {
        self.check_local(id)?;
        let request = Event::CancelRequested { by: by.to_string() };
        if let Some((writer, cancel)) = self.running_writer(id) {
            let mut writer = writer.lock().await;
            refuse_if_ended(writer.state())?;
            writer.flush(vec![request]).await?;
            if writer.state().point_of_no_return.is_none() {
                cancel.send_replace(true);
            }
            return Ok(());
        }
        let mut writer = self.open_writer(id).await?;
        refuse_if_ended(writer.state())?;
        writer.flush(vec![request]).await
    }

    /// The instance's status (live if driven here, else from the journal).
    pub async fn status(&self, id: WorkflowId) -> Result<WorkflowStatus, EngineError> {
        if let Some(live) = self.live_view(id) {
            return Ok(live.status);
        }
        Ok(WorkflowStatus::from(&self.state(id).await?))
    }

    /// The instance's full state, replayed from the journal.
    pub async fn state(&self, id: WorkflowId) -> Result<WorkflowState, EngineError> {
        let events = self.read(id).await?;
        let records = events.into_iter().map(|e| (e.seq(), e.bytes)).collect();
        let verified = crate::verify::verify(id, records, None).map_err(JournalError::from)?;
        Ok(verified.state)
    }

    /// The instance's events, in order, verified.
    pub async fn events(&self, id: WorkflowId) -> Result<Vec<Envelope>, EngineError> {
        let events = self.read(id).await?;
        Ok(events.into_iter().map(|event| event.envelope).collect())
    }

    /// Waits until the instance is completed, aborted or paused.
    pub async fn wait(&self, id: WorkflowId) -> Result<WorkflowStatus, EngineError> {
        let Some(mut live) = self.live_receiver(id) else {
            let status = self.status(id).await?;
            return match status.phase.is_settled() {
                true => Ok(status),
                false => Err(EngineError::NotDriven { id }),
            };
        };
        loop {
            let view = live.borrow_and_update().clone();
            if view.status.phase.is_settled() {
                return Ok(view.status);
            }
            if let Some(reason) = view.driver_error {
                return Err(EngineError::DriverStopped { id, reason });
            }
            if live.changed().await.is_err() {
                return Err(EngineError::NotDriven { id });
            }
        }
    }

    /// Every journaled event of every instance from now on, once durable.
    pub fn subscribe(&self) -> broadcast::Receiver<Progress> {
        self.inner.progress.subscribe()
    }

    /// The instances of this node's journal.
    pub async fn list(&self, include_ended: bool) -> Result<Vec<InstanceSummary>, EngineError> {
        Ok(self.inner.journal.list(include_ended).await?)
    }

    /// Deletes ended instances last updated more than `retention` ago; the
    /// only way an ended instance leaves the journal (it is kept for audit
    /// otherwise). Returns how many were pruned.
    pub async fn prune_ended(&self, retention: Duration) -> Result<u64, EngineError> {
        let cutoff = crate::writer::now_ms().saturating_sub(retention.as_millis() as u64);
        Ok(self.inner.journal.prune_ended(cutoff).await?)
    }

    /// Stops every driver at once, as a crash would (no event is journaled),
    /// and forgets the registered definitions: a halted engine drives
    /// nothing more. Their instances resume from the journal when a new
    /// engine over it registers the kinds and calls `resume_all`.
    pub fn halt(&self) {
        let mut known = lock(&self.inner.known);
        for entry in known.values_mut() {
            if let Some(running) = entry.running.take() {
                if let Some(task) = running.task {
                    task.abort();
                }
            }
        }
        known.clear();
        drop(known);
        // The definitions hold what their steps call (a node's services,
        // which hold the node): dropping them lets a halted node be freed.
        write_lock(&self.inner.definitions).clear();
    }

    fn definition(&self, kind: &str) -> Result<Arc<dyn Definition>, EngineError> {
        read_lock(&self.inner.definitions)
            .get(kind)
            .cloned()
            .ok_or_else(|| EngineError::UnknownKind(kind.to_string()))
    }

    fn check_local(&self, id: WorkflowId) -> Result<(), EngineError> {
        match id.node == self.node() {
            true => Ok(()),
            false => Err(EngineError::NotLocal { id, node: id.node }),
        }
    }

    async fn allocate_id(&self) -> Result<WorkflowId, EngineError> {
        let mut last = self.inner.last_serial.lock().await;
        let serial = match *last {
            Some(serial) => serial + 1,
            None => self.inner.journal.max_serial(self.node()).await? + 1,
        };
        *last = Some(serial);
        Ok(WorkflowId::new(self.node(), serial))
    }

    async fn read(&self, id: WorkflowId) -> Result<Vec<crate::envelope::SealedEvent>, EngineError> {
        Ok(self.inner.journal.read(id).await?)
    }

    async fn open_writer(&self, id: WorkflowId) -> Result<InstanceWriter, EngineError> {
        let events = self.read(id).await?;
        let live = self.live_sender(id);
        InstanceWriter::open(
            Arc::clone(&self.inner.journal),
            self.node(),
            id,
            events,
            live,
            self.inner.progress.clone(),
        )
    }

    /// Opens an instance, journals `first` plus a new driver epoch, and
    /// drives it. Returns false (and drives nothing) for a paused instance
    /// when `first` does not resume it.
    async fn drive_existing(&self, id: WorkflowId, first: Vec<Event>) -> Result<bool, EngineError> {
        let mut writer = self.open_writer(id).await?;
        let state = writer.state().clone();
        refuse_if_ended(&state)?;
        let definition = self.definition(&state.kind)?;
        let current = definition.plan_names();
        if state.steps.iter().map(|s| &s.name).ne(current.iter()) {
            return Err(EngineError::PlanMismatch {
                id,
                journaled: state.steps.iter().map(|s| s.name.clone()).collect(),
                journaled_version: state.definition_version,
                current,
            });
        }
        if matches!(state.phase, Phase::Paused { .. }) && first.is_empty() {
            return Ok(false);
        }
        let mut events = first;
        events.push(Event::DriverStarted {
            epoch: state.epoch + 1,
        });
        writer.flush(events).await?;
        self.spawn(id, definition.as_ref(), &state.input, writer)?;
        Ok(true)
    }

    fn spawn(
        &self,
        id: WorkflowId,
        definition: &dyn Definition,
        input: &[u8],
        writer: InstanceWriter,
    ) -> Result<(), EngineError> {
        let (cancel, cancel_rx) = watch::channel(writer.state().cancel_requested.is_some());
        let writer = Arc::new(Mutex::new(writer));
        let max_events = self.inner.config.max_events_per_instance;
        let drive = definition.driver(id, input, max_events, Arc::clone(&writer), cancel_rx)?;
        let mut known = lock(&self.inner.known);
        let entry = known.entry(id).or_insert_with(|| Known {
            live: watch::channel(placeholder_live(id)).0,
            running: None,
        });
        entry.running = Some(Running {
            writer,
            cancel,
            task: None,
        });
        let inner = Arc::clone(&self.inner);
        let task = tokio::spawn(async move {
            let outcome = drive.await;
            finish(&inner, id, outcome);
        });
        if let Some(running) = entry.running.as_mut() {
            running.task = Some(task.abort_handle());
        }
        Ok(())
    }

    fn is_running(&self, id: WorkflowId) -> bool {
        lock(&self.inner.known)
            .get(&id)
            .is_some_and(|k| k.running.is_some())
    }

    fn running_writer(
        &self,
        id: WorkflowId,
    ) -> Option<(Arc<Mutex<InstanceWriter>>, watch::Sender<bool>)> {
        let known = lock(&self.inner.known);
        let running = known.get(&id)?.running.as_ref()?;
        Some((Arc::clone(&running.writer), running.cancel.clone()))
    }

    fn live_view(&self, id: WorkflowId) -> Option<Live> {
        let known = lock(&self.inner.known);
        let entry = known.get(&id)?;
        let view = entry.live.borrow().clone();
        (view.status.events > 0).then_some(view)
    }

    fn live_receiver(&self, id: WorkflowId) -> Option<watch::Receiver<Live>> {
        let known = lock(&self.inner.known);
        let entry = known.get(&id)?;
        (entry.running.is_some() || entry.live.borrow().status.events > 0)
            .then(|| entry.live.subscribe())
    }

    /// The live-view sender of an instance (created on first use).
    fn live_sender(&self, id: WorkflowId) -> watch::Sender<Live> {
        let mut known = lock(&self.inner.known);
        let entry = known.entry(id).or_insert_with(|| Known {
            live: watch::channel(placeholder_live(id)).0,
            running: None,
        });
        entry.live.clone()
    }
}

/// Records how a driver ended: its running entry goes; an error is kept on
/// the live view so `wait` reports it instead of hanging.
fn finish(inner: &Inner, id: WorkflowId, outcome: Result<Phase, EngineError>) {
    let mut known = lock(&inner.known);
    let Some(entry) = known.get_mut(&id) else {
        return;
    };
    entry.running = None;
    if let Err(error) = outcome {
        tracing::error!(workflow = %id, %error, "workflow driver stopped");
        entry
            .live
            .send_modify(|live| live.driver_error = Some(error.to_string()));
    }
}

fn refuse_if_ended(state: &WorkflowState) -> Result<(), EngineError> {
    match state.phase.is_terminal() {
        true => Err(EngineError::AlreadyEnded {
            id: state.id,
            phase: state.phase.label(),
        }),
        false => Ok(()),
    }
}

pub(crate) fn placeholder_live(id: WorkflowId) -> Live {
    Live {
        status: WorkflowStatus {
            id,
            kind: String::new(),
            phase: Phase::Running,
            step: None,
            epoch: 0,
            events: 0,
            cancel_requested: false,
            point_of_no_return: false,
            updated_at_ms: 0,
        },
        driver_error: None,
    }
}

// The engine's maps are only mutated in short critical sections that cannot
// panic half-way, so a poisoned lock still holds consistent data.
fn lock<T>(mutex: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn read_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
