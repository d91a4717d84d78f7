//! Auditing a stopped node's journal, with no cluster running:
//! [`replay`] turns each instance's events into a timeline, [`verify`]
//! checks every hash chain and replay rule and names the first bad event.
//!
//! The timeline's JSON form (`Timeline`) is a stable schema: fields are only
//! ever added.

use std::path::{Path, PathBuf};

use serde::Serialize;
use shardflow_store::{JournalOptions, RedbJournal};
use shardflow_workflow::{JournalError, Phase, StepStatus, WorkflowId, WorkflowState};

/// The journal file inside a node's data directory.
pub const JOURNAL_FILE: &str = "journal.redb";

/// Why an audit could not be done.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("no journal at {0} (is --data a shardflow node's data directory?)")]
    Missing(PathBuf),
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// One step of a timeline.
#[derive(Clone, Debug, Serialize)]
pub struct StepTimeline {
    pub name: String,
    pub status: String,
    pub attempts: u32,
    pub started_at_ms: Option<u64>,
    pub ended_at_ms: Option<u64>,
    pub duration_ms: Option<u64>,
    pub checkpoints: u64,
    pub compensation_attempts: u32,
    pub last_error: Option<String>,
}

/// A figure a step measured.
#[derive(Clone, Debug, Serialize)]
pub struct MetricTimeline {
    pub step: String,
    pub name: String,
    pub value: u64,
}

/// One workflow's timeline.
#[derive(Clone, Debug, Serialize)]
pub struct Timeline {
    pub id: String,
    pub kind: String,
    pub phase: String,
    /// Why it aborted or paused, if it did.
    pub reason: Option<String>,
    pub epoch: u64,
    pub events: u64,
    pub submitted_at_ms: u64,
    pub updated_at_ms: u64,
    pub point_of_no_return: Option<String>,
    pub cancel_requested_by: Option<String>,
    pub steps: Vec<StepTimeline>,
    pub metrics: Vec<MetricTimeline>,
}

impl From<&WorkflowState> for Timeline {
    fn from(state: &WorkflowState) -> Self {
        let reason = match &state.phase {
            Phase::Aborted { reason } | Phase::Paused { reason, .. } => Some(reason.clone()),
            Phase::Compensating { reason } => Some(reason.clone()),
            Phase::Running | Phase::Completed => None,
        };
        let steps = state.steps.iter().map(|step| StepTimeline {
            name: step.name.clone(),
            status: status_label(step.status).into(),
            attempts: step.attempts,
            started_at_ms: step.started_at_ms,
            ended_at_ms: step.ended_at_ms,
            duration_ms: step
                .started_at_ms
                .zip(step.ended_at_ms)
                .map(|(s, e)| e.saturating_sub(s)),
            checkpoints: step.checkpoints,
            compensation_attempts: step.compensation_attempts,
            last_error: step.last_failure.as_ref().map(|f| f.error.clone()),
        });
        let metrics = state.metrics.iter().map(|m| MetricTimeline {
            step: m.step.clone(),
            name: m.name.clone(),
            value: m.value,
        });
        Self {
            id: state.id.to_string(),
            kind: state.kind.clone(),
            phase: state.phase.label().into(),
            reason,
            epoch: state.epoch,
            events: state.next_seq,
            submitted_at_ms: state.submitted_at_ms,
            updated_at_ms: state.updated_at_ms,
            point_of_no_return: state.point_of_no_return.clone(),
            cancel_requested_by: state.cancel_requested.clone(),
            steps: steps.collect(),
            metrics: metrics.collect(),
        }
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
    Ok(RedbJournal::open_with(path, options)?)
}

/// The timelines of a stopped node's workflows (or of one of them).
pub fn replay(data_dir: &Path, only: Option<WorkflowId>) -> Result<Vec<Timeline>, AuditError> {
    let journal = open(data_dir)?;
    let verified = match only {
        Some(id) => vec![journal.verified(id)?],
        None => journal.verify_all()?,
    };
    Ok(verified.iter().map(|v| Timeline::from(&v.state)).collect())
}

/// Checks every workflow of a stopped node's journal; the error names the
/// first bad event (instance, seq, what is wrong).
pub fn verify(data_dir: &Path) -> Result<VerifySummary, AuditError> {
    let journal = open(data_dir)?;
    let verified = journal.verify_all()?;
    Ok(VerifySummary {
        path: journal.path().display().to_string(),
        workflows: verified.len() as u64,
        events: verified.iter().map(|v| v.state.next_seq).sum(),
    })
}
