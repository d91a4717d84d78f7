//! The events of a workflow instance: the only thing about a workflow that
//! is ever persisted.
//!
//! **Invariant:** variants are only ever appended at the end and an existing
//! variant's fields never change (postcard encodes the variant index, not its
//! name). A new need gets a new variant. Golden-bytes tests in `envelope.rs`
//! pin every shipped encoding.

use serde::{Deserialize, Serialize};

/// One journaled fact about a workflow instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// The instance was created: its kind, definition version, input and the
    /// ordered names of its steps (the plan), so a replay needs no definition.
    Submitted {
        kind: String,
        definition_version: u32,
        input: Vec<u8>,
        plan: Vec<String>,
    },
    /// A driver took the instance over with this epoch (1 on submit, +1 on
    /// every resume). Commands a step sends carry it; a stale one is refused.
    DriverStarted { epoch: u64 },
    /// An attempt of a forward step is about to run (durable before it runs).
    StepStarted { step: String, attempt: u32 },
    /// Resumable progress inside a step, e.g. a copy cursor.
    Checkpoint { step: String, progress: Vec<u8> },
    /// The step finished; its output is visible to later steps.
    StepSucceeded { step: String, output: Vec<u8> },
    /// The attempt failed; `retryable` says whether another attempt may help.
    StepFailed {
        step: String,
        attempt: u32,
        error: String,
        retryable: bool,
    },
    /// From here on the instance only rolls forward.
    PointOfNoReturn { step: String },
    /// The instance undoes its started steps in reverse order.
    CompensationStarted { reason: String },
    /// An attempt of a step's compensation is about to run.
    CompensationStepStarted { step: String, attempt: u32 },
    /// The step's effects are undone.
    Compensated { step: String },
    /// An attempt of a compensation failed.
    CompensationFailed {
        step: String,
        attempt: u32,
        error: String,
        retryable: bool,
    },
    /// Every step succeeded. Terminal.
    Completed,
    /// Every started step was compensated. Terminal.
    Aborted { reason: String },
    /// The instance stopped and waits for an operator (retries exhausted after
    /// the point of no return, or a compensation that cannot finish).
    Paused { reason: String },
    /// An operator asked a paused instance to go on; retry budgets restart.
    ResumeRequested { by: String },
    /// Someone asked to cancel: honoured at the next step boundary, or inside
    /// a long step through its context, before the point of no return.
    CancelRequested { by: String },
    /// A figure a step measured, e.g. the write pause of a cut-over.
    Metric {
        step: String,
        name: String,
        value: u64,
    },
}

impl Event {
    /// The short name of the variant, for tables and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Submitted { .. } => "Submitted",
            Event::DriverStarted { .. } => "DriverStarted",
            Event::StepStarted { .. } => "StepStarted",
            Event::Checkpoint { .. } => "Checkpoint",
            Event::StepSucceeded { .. } => "StepSucceeded",
            Event::StepFailed { .. } => "StepFailed",
            Event::PointOfNoReturn { .. } => "PointOfNoReturn",
            Event::CompensationStarted { .. } => "CompensationStarted",
            Event::CompensationStepStarted { .. } => "CompensationStepStarted",
            Event::Compensated { .. } => "Compensated",
            Event::CompensationFailed { .. } => "CompensationFailed",
            Event::Completed => "Completed",
            Event::Aborted { .. } => "Aborted",
            Event::Paused { .. } => "Paused",
            Event::ResumeRequested { .. } => "ResumeRequested",
            Event::CancelRequested { .. } => "CancelRequested",
            Event::Metric { .. } => "Metric",
        }
    }

    /// The step the event is about, if any.
    pub fn step(&self) -> Option<&str> {
        match self {
            Event::StepStarted { step, .. }
            | Event::Checkpoint { step, .. }
            | Event::StepSucceeded { step, .. }
            | Event::StepFailed { step, .. }
            | Event::PointOfNoReturn { step }
            | Event::CompensationStepStarted { step, .. }
            | Event::Compensated { step }
            | Event::CompensationFailed { step, .. }
            | Event::Metric { step, .. } => Some(step),
            _ => None,
        }
    }

    /// The attempt the event is about, if any.
    pub fn attempt(&self) -> Option<u32> {
        match self {
            Event::StepStarted { attempt, .. }
            | Event::StepFailed { attempt, .. }
            | Event::CompensationStepStarted { attempt, .. }
            | Event::CompensationFailed { attempt, .. } => Some(*attempt),
            _ => None,
        }
    }

    /// What the event says beyond its name, step and attempt, on one line
    /// (empty when nothing): a reason, an error, who asked, a figure.
    pub fn detail(&self) -> String {
        let text = match self {
            Event::Submitted {
                kind,
                definition_version,
                input,
                plan,
            } => format!(
                "{kind} v{definition_version}, steps {}, {} bytes of input",
                plan.join(" > "),
                input.len()
            ),
            Event::DriverStarted { epoch } => format!("driver epoch {epoch}"),
            Event::Checkpoint { progress, .. } => format!("{} bytes of progress", progress.len()),
            Event::StepSucceeded { output, .. } => format!("{} bytes of output", output.len()),
            Event::StepFailed {
                error, retryable, ..
            }
            | Event::CompensationFailed {
                error, retryable, ..
            } => format!("{}: {error}", failure_kind(*retryable)),
            Event::PointOfNoReturn { .. } => "from here on it only rolls forward".to_string(),
            Event::CompensationStarted { reason }
            | Event::Aborted { reason }
            | Event::Paused { reason } => reason.clone(),
            Event::ResumeRequested { by } | Event::CancelRequested { by } => format!("by {by}"),
            Event::Metric { name, value, .. } => format!("{name} = {value}"),
            Event::StepStarted { .. }
            | Event::CompensationStepStarted { .. }
            | Event::Compensated { .. }
            | Event::Completed => String::new(),
        };
        text.replace(['\n', '\r'], " ")
    }

    /// True for the events after which nothing may be appended.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Event::Completed | Event::Aborted { .. })
    }
}

fn failure_kind(retryable: bool) -> &'static str {
    match retryable {
        true => "retryable",
        false => "terminal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves every event's detail is one line and says what matters.
    #[test]
    fn details_are_one_line() {
        let failed = Event::StepFailed {
            step: "BaseCopy".into(),
            attempt: 3,
            error: "peer gone\nreset".into(),
            retryable: true,
        };
        assert_eq!(failed.detail(), "retryable: peer gone reset");
        assert_eq!(failed.attempt(), Some(3));
        let metric = Event::Metric {
            step: "CutOver".into(),
            name: "write_pause_ms".into(),
            value: 12,
        };
        assert_eq!(metric.detail(), "write_pause_ms = 12");
        assert_eq!(metric.attempt(), None);
        let submitted = Event::Submitted {
            kind: "MoveVShard".into(),
            definition_version: 1,
            input: vec![0; 7],
            plan: vec!["Lock".into(), "BaseCopy".into()],
        };
        assert_eq!(
            submitted.detail(),
            "MoveVShard v1, steps Lock > BaseCopy, 7 bytes of input"
        );
        let cancel = Event::CancelRequested { by: "ops".into() };
        assert_eq!(cancel.detail(), "by ops");
        assert_eq!(Event::Completed.detail(), "");
    }
}
