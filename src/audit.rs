//! Auditing a stopped node's journal, with no cluster running:
//! [`replay`] turns each instance's events into a [`Timeline`] (phase,
//! start and end times, duration, attempts, checkpoints, the measured
//! write pause, how it ended and why, and the journaled events in order),
//! [`verify`] checks every hash chain and replay rule and names the first
//! bad event (instance, seq, what is wrong).
//!
//! The JSON form ([`Replay`], [`VerifySummary`]) is a stable schema,
//! documented in `docs/journal-schema.md`: its `schema` string names the
//! version, and within a version fields are only ever added, never renamed,
//! retyped or removed.

use std::path::{Path, PathBuf};

use serde::Serialize;
use shardflow_steps::progress::progress;
use shardflow_store::{JournalOptions, RedbJournal};
use shardflow_workflow::{
    Event, JournalError, Phase, SealedEvent, StepStatus, Verified, WorkflowId, WorkflowState,
};

/// The journal file inside a node's data directory.
pub const JOURNAL_FILE: &str = "journal.redb";

/// The `schema` of `journal replay --json` ([`Replay`]).
pub const REPLAY_SCHEMA: &str = "shardflow.journal.replay.v1";

/// The `schema` of `journal verify --json` ([`VerifySummary`]).
pub const VERIFY_SCHEMA: &str = "shardflow.journal.verify.v1";

/// The name of the metric a MoveVShard cut-over journals its write pause
/// under (fence applied -> target accepting, microseconds).
pub const WRITE_PAUSE_METRIC: &str = "write_pause_us";

/// Why an audit could not be done.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("no journal at {0} (is --data a shardflow node's data directory?)")]
    Missing(PathBuf),
    #[error(
        "the journal {0} is in use by a running process: stop the node first \
         (the audit reads a stopped node's data directory, or a copy of it)"
    )]
    InUse(PathBuf),
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// `journal replay --json`: the timelines of a journal's workflows.
#[derive(Clone, Debug, Serialize)]
pub struct Replay {
    /// [`REPLAY_SCHEMA`].
    pub schema: &'static str,
    /// The journal file read.
    pub path: String,
    pub workflows: Vec<Timeline>,
}

/// One step of a timeline.
#[derive(Clone, Debug, Serialize)]
pub struct StepTimeline {
    pub name: String,
    /// `Pending`, `Running`, `Failed`, `Succeeded`, `Compensating` or
    /// `Compensated`.
    pub status: String,
    /// Forward attempts started.
    pub attempts: u32,
    /// Forward attempts that failed (an attempt cut short by a crash is
    /// journaled as failed when the workflow resumes).
    pub failures: u32,
    /// When its first attempt started.
    pub started_at_ms: Option<u64>,
    /// When its last attempt ended (succeeded or failed); `None` while an
    /// attempt runs or before any ran.
    pub ended_at_ms: Option<u64>,
    pub duration_ms: Option<u64>,
    pub checkpoints: u64,
    pub first_checkpoint_at_ms: Option<u64>,
    pub last_checkpoint_at_ms: Option<u64>,
    /// The error of its last failed attempt, if the step has not succeeded
    /// since.
    pub last_error: Option<String>,
    pub last_error_retryable: Option<bool>,
    pub compensation_attempts: u32,
    pub compensation_started_at_ms: Option<u64>,
    pub compensated_at_ms: Option<u64>,
    /// The error of its last failed compensation attempt, if it has not
    /// been compensated since.
    pub last_compensation_error: Option<String>,
}

/// A figure a step measured.
#[derive(Clone, Debug, Serialize)]
pub struct MetricTimeline {
    pub step: String,
    pub name: String,
    pub value: u64,
    /// When it was journaled (`None` when built from a state alone).
    pub at_ms: Option<u64>,
}

/// A driver taking the workflow on: the first run, or a resume after a
/// restart (each with a higher epoch).
#[derive(Clone, Debug, Serialize)]
pub struct DriverTimeline {
    pub epoch: u64,
    pub at_ms: u64,
    /// The node that journaled it.
    pub node: u64,
}

/// The figures of a MoveVShard's copy, read from its checkpoints and
/// outputs.
#[derive(Clone, Debug, Serialize)]
pub struct CopyFigures {
    pub keys_copied: u64,
    pub keys_total: u64,
    pub bytes_copied: u64,
    pub bytes_total: u64,
    pub catch_up_rounds: u32,
    /// Changes the last catch-up round found.
    pub last_lag: Option<u64>,
}

/// One journaled event of the timeline (checkpoints are only counted, on
/// their step).
#[derive(Clone, Debug, Serialize)]
pub struct LogLine {
    pub seq: u64,
    pub at_ms: u64,
    /// Milliseconds since the workflow was submitted.
    pub offset_ms: u64,
    /// The node that journaled it.
    pub node: u64,
    /// The event's name (`StepStarted`, `StepFailed`, `Aborted`, ...).
    pub event: String,
    pub step: Option<String>,
    pub attempt: Option<u32>,
    /// The rest of the event on one line: a reason, an error, a figure.
    pub detail: String,
}

/// One workflow's timeline.
#[derive(Clone, Debug, Serialize)]
pub struct Timeline {
    pub id: String,
    /// The node that submitted it (and whose journal holds it).
    pub node: u64,
    pub kind: String,
    pub definition_version: u32,
    /// `Running`, `Compensating`, `Paused`, `Completed` or `Aborted`.
    pub phase: String,
    /// Why it aborted, paused or compensates, if it does.
    pub reason: Option<String>,
    /// The last driver epoch.
    pub epoch: u64,
    /// Events journaled.
    pub events: u64,
    pub submitted_at_ms: u64,
    /// When its last event was journaled.
    pub updated_at_ms: u64,
    /// When it settled (completed, aborted or paused); `None` while live.
    pub ended_at_ms: Option<u64>,
    /// From submission to `ended_at_ms`.
    pub duration_ms: Option<u64>,
    /// The step that crossed the point of no return, if one did.
    pub point_of_no_return: Option<String>,
    pub cancel_requested_by: Option<String>,
    /// Forward attempts of every step, and how many failed.
    pub attempts: u32,
    pub failures: u32,
    /// Checkpoints of every step.
    pub checkpoints: u64,
    /// The last write pause a cut-over measured (the `write_pause_us`
    /// metric), in microseconds.
    pub write_pause_us: Option<u64>,
    /// A MoveVShard's copy figures; `None` for other kinds.
    pub copy: Option<CopyFigures>,
    /// Every driver run, in order (empty when built from a state alone).
    pub drivers: Vec<DriverTimeline>,
    pub steps: Vec<StepTimeline>,
    pub metrics: Vec<MetricTimeline>,
    /// The journaled events but checkpoints, in order (empty when built
    /// from a state alone).
    pub log: Vec<LogLine>,
}

impl From<&WorkflowState> for Timeline {
    /// The timeline a state alone tells (a live workflow's, as a node
    /// reports it): no log, no drivers, no checkpoint or compensation
    /// times.
    fn from(state: &WorkflowState) -> Self {
        let reason = match &state.phase {
            Phase::Aborted { reason }
            | Phase::Paused { reason, .. }
            | Phase::Compensating { reason } => Some(reason.clone()),
            Phase::Running | Phase::Completed => None,
        };
        let running = state.in_flight.filter(|f| !f.compensation).map(|f| f.index);
        let steps: Vec<StepTimeline> = (state.steps.iter().enumerate())
            .map(|(index, step)| {
                let ended = step
                    .ended_at_ms
                    .filter(|_| step.status != StepStatus::Running);
                let in_flight = u32::from(running == Some(index));
                let succeeded = u32::from(step.output.is_some());
                StepTimeline {
                    name: step.name.clone(),
                    status: status_label(step.status).into(),
                    attempts: step.attempts,
                    failures: step.attempts.saturating_sub(in_flight + succeeded),
                    started_at_ms: step.started_at_ms,
                    ended_at_ms: ended,
                    duration_ms: step
                        .started_at_ms
                        .zip(ended)
                        .map(|(s, e)| e.saturating_sub(s)),
                    checkpoints: step.checkpoints,
                    first_checkpoint_at_ms: None,
                    last_checkpoint_at_ms: None,
                    last_error: step.last_failure.as_ref().map(|f| f.error.clone()),
                    last_error_retryable: step.last_failure.as_ref().map(|f| f.retryable),
                    compensation_attempts: step.compensation_attempts,
                    compensation_started_at_ms: None,
                    compensated_at_ms: None,
                    last_compensation_error: (step.compensation_failure.as_ref())
                        .map(|f| f.error.clone()),
                }
            })
            .collect();
        let metrics: Vec<MetricTimeline> = (state.metrics.iter())
            .map(|m| MetricTimeline {
                step: m.step.clone(),
                name: m.name.clone(),
                value: m.value,
                at_ms: None,
            })
            .collect();
        let ended_at_ms = state.phase.is_settled().then_some(state.updated_at_ms);
        let copy = (state.kind == "MoveVShard").then(|| {
            let figures = progress(state);
            CopyFigures {
                keys_copied: figures.keys_copied,
                keys_total: figures.keys_total,
                bytes_copied: figures.bytes_copied,
                bytes_total: figures.bytes_total,
                catch_up_rounds: figures.catch_up_rounds,
                last_lag: figures.lag,
            }
        });
        Self {
            id: state.id.to_string(),
            node: state.id.node,
            kind: state.kind.clone(),
            definition_version: state.definition_version,
            phase: state.phase.label().into(),
            reason,
            epoch: state.epoch,
            events: state.next_seq,
            submitted_at_ms: state.submitted_at_ms,
            updated_at_ms: state.updated_at_ms,
            ended_at_ms,
            duration_ms: ended_at_ms.map(|e| e.saturating_sub(state.submitted_at_ms)),
            point_of_no_return: state.point_of_no_return.clone(),
            cancel_requested_by: state.cancel_requested.clone(),
            attempts: steps.iter().map(|s| s.attempts).sum(),
            failures: steps.iter().map(|s| s.failures).sum(),
            checkpoints: steps.iter().map(|s| s.checkpoints).sum(),
            write_pause_us: (metrics.iter().rev())
                .find(|m| m.name == WRITE_PAUSE_METRIC)
                .map(|m| m.value),
            copy,
            drivers: Vec::new(),
            steps,
            metrics,
            log: Vec::new(),
        }
    }
}

impl Timeline {
    /// The full timeline of a verified instance: its state's, plus what
    /// only the events tell (the log, the driver runs, failure counts,
    /// checkpoint, compensation and metric times).
    pub fn from_verified(verified: &Verified) -> Self {
        Self::from_events(&verified.state, &verified.events)
    }

    /// [`Timeline::from_verified`] from a state and the events it was
    /// folded from.
    pub fn from_events(state: &WorkflowState, events: &[SealedEvent]) -> Self {
        let mut timeline = Timeline::from(state);
        let submitted = state.submitted_at_ms;
        let mut failures = vec![0u32; timeline.steps.len()];
        let mut metrics = 0usize;
        for sealed in events {
            let envelope = sealed.envelope.current();
            let (at_ms, body) = (envelope.at_ms, &envelope.body);
            let index = body
                .step()
                .and_then(|name| timeline.steps.iter().position(|s| s.name == name));
            match (body, index) {
                (Event::Checkpoint { .. }, Some(i)) => {
                    let step = &mut timeline.steps[i];
                    step.first_checkpoint_at_ms.get_or_insert(at_ms);
                    step.last_checkpoint_at_ms = Some(at_ms);
                    continue;
                }
                (Event::StepFailed { .. }, Some(i)) => failures[i] += 1,
                (Event::CompensationStepStarted { .. }, Some(i)) => {
                    timeline.steps[i]
                        .compensation_started_at_ms
                        .get_or_insert(at_ms);
                }
                (Event::Compensated { .. }, Some(i)) => {
                    timeline.steps[i].compensated_at_ms = Some(at_ms);
                }
                (Event::Metric { .. }, _) => {
                    if let Some(metric) = timeline.metrics.get_mut(metrics) {
                        metric.at_ms = Some(at_ms);
                    }
                    metrics += 1;
                }
                (Event::DriverStarted { epoch }, _) => timeline.drivers.push(DriverTimeline {
                    epoch: *epoch,
                    at_ms,
                    node: envelope.node,
                }),
                _ => {}
            }
            timeline.log.push(LogLine {
                seq: envelope.seq,
                at_ms,
                offset_ms: at_ms.saturating_sub(submitted),
                node: envelope.node,
                event: body.name().to_string(),
                step: body.step().map(str::to_string),
                attempt: body.attempt(),
                detail: body.detail(),
            });
        }
        for (step, failed) in timeline.steps.iter_mut().zip(failures) {
            step.failures = failed;
        }
        timeline.failures = timeline.steps.iter().map(|s| s.failures).sum();
        timeline
    }
}

fn status_label(status: StepStatus) -> &'static str {
    match status {
        StepStatus::Pending => "Pending",
        StepStatus::Running => "Running",
        StepStatus::Failed => "Failed",
        StepStatus::Succeeded => "Succeeded",
        StepStatus::Compensating => "Compensating",
        StepStatus::Compensated => "Compensated",
    }
}

/// What `verify` found on a journal that verified.
#[derive(Clone, Debug, Serialize)]
pub struct VerifySummary {
    /// [`VERIFY_SCHEMA`].
    pub schema: &'static str,
    pub path: String,
    pub workflows: u64,
    pub events: u64,
}

fn open(data_dir: &Path) -> Result<RedbJournal, AuditError> {
    let path = data_dir.join(JOURNAL_FILE);
    if !path.is_file() {
        return Err(AuditError::Missing(path));
    }
    let options = JournalOptions {
        verify_on_open: false,
        ..JournalOptions::default()
    };
    match RedbJournal::open_with(&path, options) {
        Ok(journal) => Ok(journal),
        // redb holds a lock on an open database: a running node's journal.
        Err(JournalError::NotAJournal { reason, .. }) if reason.contains("already open") => {
            Err(AuditError::InUse(path))
        }
        Err(error) => Err(error.into()),
    }
}

/// The timelines of a stopped node's workflows (or of one of them), each
/// verified first: an error names the first bad event.
pub fn replay(data_dir: &Path, only: Option<WorkflowId>) -> Result<Vec<Timeline>, AuditError> {
    Ok(replay_journal(data_dir, only)?.workflows)
}

/// [`replay`] with the schema and the file read: what `journal replay
/// --json` prints.
pub fn replay_journal(data_dir: &Path, only: Option<WorkflowId>) -> Result<Replay, AuditError> {
    let journal = open(data_dir)?;
    let verified = match only {
        Some(id) => vec![journal.verified(id)?],
        None => journal.verify_all()?,
    };
    Ok(Replay {
        schema: REPLAY_SCHEMA,
        path: journal.path().display().to_string(),
        workflows: verified.iter().map(Timeline::from_verified).collect(),
    })
}

/// Checks every workflow of a stopped node's journal; the error names the
/// first bad event (instance, seq, what is wrong).
pub fn verify(data_dir: &Path) -> Result<VerifySummary, AuditError> {
    let journal = open(data_dir)?;
    let verified = journal.verify_all()?;
    Ok(VerifySummary {
        schema: VERIFY_SCHEMA,
        path: journal.path().display().to_string(),
        workflows: verified.len() as u64,
        events: verified.iter().map(|v| v.state.next_seq).sum(),
    })
}
