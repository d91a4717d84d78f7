//! What a migration has done so far, read from its workflow state: the
//! step in flight and the figures its checkpoints and outputs hold (keys and
//! bytes copied of the vShard's total, the catch-up lag, the measured write
//! pause). The CLI's progress bar and `workflow show` read it; the
//! checkpoint formats it decodes belong to this crate's steps.

use serde::Serialize;
use shardflow_workflow::{Phase, StepStatus, WorkflowState};

use crate::move_vshard::base_copy::{BaseCopyOutput, CopyCursor};
use crate::move_vshard::catch_up::CatchUpProgress;

/// A migration's progress, for display.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MigrationProgress {
    /// `Running`, `Compensating`, `Paused`, `Completed` or `Aborted`.
    pub phase: String,
    /// The step in flight (or the last one that ran).
    pub step: Option<String>,
    /// Base copy: keys and key-plus-value bytes copied, of the totals the
    /// vShard held when the copy started (0 when unknown).
    pub keys_copied: u64,
    pub keys_total: u64,
    pub bytes_copied: u64,
    pub bytes_total: u64,
    /// Changes the last catch-up round found (the lag), and its round.
    pub lag: Option<u64>,
    pub catch_up_rounds: u32,
    /// The measured write pause of the cut-over, in microseconds.
    pub write_pause_us: Option<u64>,
}

/// Reads `state`; the copy figures only for a MoveVShard. Unknown or
/// undecodable checkpoints leave figures at 0.
pub fn progress(state: &WorkflowState) -> MigrationProgress {
    let mut progress = MigrationProgress {
        phase: state.phase.label().to_string(),
        step: current_step(state),
        ..MigrationProgress::default()
    };
    if state.kind != "MoveVShard" {
        // MoveReplica's figures are its steps; its checkpoints differ.
        return progress;
    }
    for step in &state.steps {
        match step.name.as_str() {
            "BaseCopy" => {
                if let Some(cursor) = decode::<CopyCursor>(step.checkpoint.as_deref()) {
                    progress.keys_copied = cursor.keys;
                    progress.bytes_copied = cursor.bytes;
                    progress.keys_total = cursor.total_keys;
                    progress.bytes_total = cursor.total_bytes;
                }
                if let Some(output) = decode::<BaseCopyOutput>(step.output.as_deref()) {
                    progress.keys_copied = output.keys;
                    progress.bytes_copied = output.bytes;
                }
            }
            "CatchUp" => {
                if let Some(round) = decode::<CatchUpProgress>(step.checkpoint.as_deref()) {
                    progress.lag = Some(round.lag);
                    progress.catch_up_rounds = round.round;
                }
            }
            _ => {}
        }
    }
    progress.write_pause_us = (state.metrics.iter())
        .rev()
        .find(|metric| metric.name == "write_pause_us")
        .map(|metric| metric.value);
    progress
}

/// The step in flight, else the last one started.
fn current_step(state: &WorkflowState) -> Option<String> {
    if let Some(in_flight) = &state.in_flight {
        return state.steps.get(in_flight.index).map(|s| s.name.clone());
    }
    if matches!(state.phase, Phase::Completed) {
        return None;
    }
    (state.started_order.last())
        .and_then(|index| state.steps.get(*index))
        .filter(|step| step.status != StepStatus::Pending)
        .map(|step| step.name.clone())
}

fn decode<T: serde::de::DeserializeOwned>(bytes: Option<&[u8]>) -> Option<T> {
    postcard::from_bytes(bytes?).ok()
}
