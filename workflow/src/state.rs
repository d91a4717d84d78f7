//! The state of a workflow instance, which is only ever the fold of its
//! events: `replay(events) -> WorkflowState`.
//!
//! [`WorkflowState::apply`] is also where the journal's rules are checked: an
//! event that could not have been written by a correct engine at that point
//! (a step started out of order, an event after a terminal one, a gap in the
//! sequence) is a [`ReplayError`] naming its `seq`. `verify` and the redb
//! journal's open-time check rely on that.

use serde::{Deserialize, Serialize};

use crate::envelope::Envelope;
use crate::event::Event;
use crate::id::WorkflowId;

/// Where an instance is in its life.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Running its steps forward.
    Running,
    /// Undoing its started steps, in reverse order.
    Compensating { reason: String },
    /// Waiting for an operator; `compensating` says which way it was going.
    Paused { reason: String, compensating: bool },
    /// Every step succeeded.
    Completed,
    /// Every started step was compensated.
    Aborted { reason: String },
}

impl Phase {
    /// `Completed` or `Aborted`: nothing will ever be appended again.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Phase::Completed | Phase::Aborted { .. })
    }

    /// Terminal or paused: no driver acts until something external happens.
    pub fn is_settled(&self) -> bool {
        self.is_terminal() || matches!(self, Phase::Paused { .. })
    }

    /// A one-word label for tables.
    pub fn label(&self) -> &'static str {
        match self {
            Phase::Running => "Running",
            Phase::Compensating { .. } => "Compensating",
            Phase::Paused { .. } => "Paused",
            Phase::Completed => "Completed",
            Phase::Aborted { .. } => "Aborted",
        }
    }
}

/// Where one step of the plan is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepStatus {
    Pending,
    Running,
    Failed,
    Succeeded,
    Compensating,
    Compensated,
}

/// A failed attempt, as journaled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub attempt: u32,
    pub error: String,
    pub retryable: bool,
}

/// Everything the journal says about one step of the plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub name: String,
    pub status: StepStatus,
    /// Forward attempts started, in total.
    pub attempts: u32,
    /// Attempts that do not count against the retry budget any more (those
    /// made before the last operator resume).
    pub attempts_forgiven: u32,
    pub last_failure: Option<Failure>,
    /// The latest checkpoint and how many were taken.
    pub checkpoint: Option<Vec<u8>>,
    pub checkpoints: u64,
    pub output: Option<Vec<u8>>,
    pub started_at_ms: Option<u64>,
    pub ended_at_ms: Option<u64>,
    pub compensation_attempts: u32,
    pub compensation_attempts_forgiven: u32,
    pub compensation_failure: Option<Failure>,
}

impl StepRecord {
    fn new(name: String) -> Self {
        Self {
            name,
            status: StepStatus::Pending,
            attempts: 0,
            attempts_forgiven: 0,
            last_failure: None,
            checkpoint: None,
            checkpoints: 0,
            output: None,
            started_at_ms: None,
            ended_at_ms: None,
            compensation_attempts: 0,
            compensation_attempts_forgiven: 0,
            compensation_failure: None,
        }
    }

    /// Forward attempts that count against the retry budget.
    pub fn budget_attempts(&self) -> u32 {
        self.attempts - self.attempts_forgiven
    }

    /// Compensation attempts that count against the retry budget.
    pub fn compensation_budget_attempts(&self) -> u32 {
        self.compensation_attempts - self.compensation_attempts_forgiven
    }
}

/// An attempt that was started and has no outcome journaled yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlight {
    pub index: usize,
    pub attempt: u32,
    pub compensation: bool,
}

/// A figure a step journaled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricRecord {
    pub step: String,
    pub name: String,
    pub value: u64,
}

/// The fold of an instance's events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowState {
    pub id: WorkflowId,
    pub kind: String,
    pub definition_version: u32,
    pub input: Vec<u8>,
    pub steps: Vec<StepRecord>,
    pub phase: Phase,
    pub epoch: u64,
    /// The seq the next appended event must carry.
    pub next_seq: u64,
    /// Indexes of steps in the order they were first started.
    pub started_order: Vec<usize>,
    pub in_flight: Option<InFlight>,
    pub cancel_requested: Option<String>,
    /// The step that crossed the point of no return, if any did.
    pub point_of_no_return: Option<String>,
    pub metrics: Vec<MetricRecord>,
    pub submitted_at_ms: u64,
    pub updated_at_ms: u64,
}

/// An event that a correct engine could not have written where it stands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event seq {seq} ({event}): {reason}")]
pub struct ReplayError {
    pub seq: u64,
    pub event: &'static str,
    pub reason: String,
}

/// Folds an instance's events into its state, checking every rule.
pub fn replay(id: WorkflowId, events: &[Envelope]) -> Result<WorkflowState, ReplayError> {
    let mut events = events.iter();
    let first = events.next().ok_or_else(|| ReplayError {
        seq: 0,
        event: "-",
        reason: "the instance has no events".into(),
    })?;
    let mut state = WorkflowState::from_first(id, first)?;
    for envelope in events {
        state.apply(envelope)?;
    }
    Ok(state)
}

impl WorkflowState {
    /// The state after the first event, which must be `Submitted` at seq 0.
    pub fn from_first(id: WorkflowId, envelope: &Envelope) -> Result<Self, ReplayError> {
        let at = envelope.current();
        let Event::Submitted {
            kind,
            definition_version,
            input,
            plan,
        } = &at.body
        else {
            return Err(reject(envelope, "the first event must be Submitted"));
        };
        if at.seq != 0 {
            return Err(reject(envelope, "Submitted must have seq 0"));
        }
        if plan.is_empty() {
            return Err(reject(envelope, "the plan has no steps"));
        }
        Ok(Self {
            id,
            kind: kind.clone(),
            definition_version: *definition_version,
            input: input.clone(),
            steps: plan.iter().cloned().map(StepRecord::new).collect(),
            phase: Phase::Running,
            epoch: 0,
            next_seq: 1,
            started_order: Vec::new(),
            in_flight: None,
            cancel_requested: None,
            point_of_no_return: None,
            metrics: Vec::new(),
            submitted_at_ms: at.at_ms,
            updated_at_ms: at.at_ms,
        })
    }

    /// Applies the next event, or says why it cannot follow.
    pub fn apply(&mut self, envelope: &Envelope) -> Result<(), ReplayError> {
        let at = envelope.current();
        if at.seq != self.next_seq {
            let reason = format!("expected seq {}", self.next_seq);
            return Err(reject(envelope, &reason));
        }
        if self.phase.is_terminal() {
            return Err(reject(envelope, "the instance already ended"));
        }
        self.apply_body(&at.body, at.at_ms)
            .map_err(|reason| reject(envelope, &reason))?;
        self.next_seq += 1;
        self.updated_at_ms = at.at_ms;
        debug_assert_eq!(self.validate(), Ok(()));
        Ok(())
    }

    fn apply_body(&mut self, event: &Event, at_ms: u64) -> Result<(), String> {
        match event {
            Event::Submitted { .. } => Err("Submitted may only be the first event".into()),
            Event::DriverStarted { epoch } => self.on_driver_started(*epoch),
            Event::StepStarted { step, attempt } => self.on_step_started(step, *attempt, at_ms),
            Event::Checkpoint { step, progress } => {
                let index = self.in_flight_forward(step)?;
                let record = &mut self.steps[index];
                record.checkpoint = Some(progress.clone());
                record.checkpoints += 1;
                Ok(())
            }
            Event::StepSucceeded { step, output } => {
                let index = self.in_flight_forward(step)?;
                let record = &mut self.steps[index];
                record.status = StepStatus::Succeeded;
                record.output = Some(output.clone());
                record.last_failure = None;
                record.ended_at_ms = Some(at_ms);
                self.in_flight = None;
                Ok(())
            }
            Event::StepFailed {
                step,
                attempt,
                error,
                retryable,
            } => self.on_step_failed(step, *attempt, error, *retryable, at_ms),
            Event::PointOfNoReturn { step } => self.on_point_of_no_return(step),
            Event::CompensationStarted { reason } => self.on_compensation_started(reason),
            Event::CompensationStepStarted { step, attempt } => {
                self.on_compensation_step_started(step, *attempt)
            }
            Event::Compensated { step } => {
                let index = self.in_flight_compensation(step)?;
                self.steps[index].status = StepStatus::Compensated;
                self.steps[index].compensation_failure = None;
                self.in_flight = None;
                Ok(())
            }
            Event::CompensationFailed {
                step,
                attempt,
                error,
                retryable,
            } => self.on_compensation_failed(step, *attempt, error, *retryable),
            Event::Completed => self.on_completed(),
            Event::Aborted { reason } => self.on_aborted(reason),
            Event::Paused { reason } => self.on_paused(reason),
            Event::ResumeRequested { .. } => self.on_resume_requested(),
            Event::CancelRequested { by } => {
                self.cancel_requested.get_or_insert_with(|| by.clone());
                Ok(())
            }
            Event::Metric { step, name, value } => {
                self.index_of(step)?;
                self.metrics.push(MetricRecord {
                    step: step.clone(),
                    name: name.clone(),
                    value: *value,
                });
                Ok(())
            }
        }
    }

    fn on_driver_started(&mut self, epoch: u64) -> Result<(), String> {
        if epoch <= self.epoch {
            return Err(format!("epoch {epoch} does not exceed {}", self.epoch));
        }
        self.epoch = epoch;
        Ok(())
    }

    fn on_step_started(&mut self, step: &str, attempt: u32, at_ms: u64) -> Result<(), String> {
        let index = self.index_of(step)?;
        if self.phase != Phase::Running {
            return Err(format!("a step cannot start while {}", self.phase.label()));
        }
        if self.epoch == 0 {
            return Err("no driver has started".into());
        }
        if let Some(in_flight) = self.in_flight {
            let name = &self.steps[in_flight.index].name;
            return Err(format!(
                "{name} attempt {} has no outcome",
                in_flight.attempt
            ));
        }
        if let Some(pending) = self.steps[..index]
            .iter()
            .find(|record| record.status != StepStatus::Succeeded)
        {
            return Err(format!("earlier step {} has not succeeded", pending.name));
        }
        let record = &mut self.steps[index];
        if record.status == StepStatus::Succeeded {
            return Err("the step already succeeded".into());
        }
        if attempt != record.attempts + 1 {
            return Err(format!("expected attempt {}", record.attempts + 1));
        }
        if record.attempts == 0 {
            record.started_at_ms = Some(at_ms);
            self.started_order.push(index);
        }
        record.attempts = attempt;
        record.status = StepStatus::Running;
        self.in_flight = Some(InFlight {
            index,
            attempt,
            compensation: false,
        });
        Ok(())
    }

    fn on_step_failed(
        &mut self,
        step: &str,
        attempt: u32,
        error: &str,
        retryable: bool,
        at_ms: u64,
    ) -> Result<(), String> {
        let index = self.in_flight_forward(step)?;
        let in_flight = self.in_flight.expect("in_flight_forward checked it is set");
        if in_flight.attempt != attempt {
            return Err(format!("attempt {} is in flight", in_flight.attempt));
        }
        let record = &mut self.steps[index];
        record.status = StepStatus::Failed;
        record.ended_at_ms = Some(at_ms);
        record.last_failure = Some(Failure {
            attempt,
            error: error.to_string(),
            retryable,
        });
        self.in_flight = None;
        Ok(())
    }

    fn on_point_of_no_return(&mut self, step: &str) -> Result<(), String> {
        let index = self.index_of(step)?;
        let in_flight = self
            .in_flight
            .is_some_and(|f| f.index == index && !f.compensation);
        if !in_flight && self.steps[index].status != StepStatus::Succeeded {
            return Err("only a running or succeeded step can cross it".into());
        }
        if !matches!(self.phase, Phase::Running) {
            return Err(format!("cannot cross it while {}", self.phase.label()));
        }
        self.point_of_no_return
            .get_or_insert_with(|| step.to_string());
        Ok(())
    }

    fn on_compensation_started(&mut self, reason: &str) -> Result<(), String> {
        if let Some(step) = &self.point_of_no_return {
            return Err(format!("{step} crossed the point of no return"));
        }
        if self.in_flight.is_some() {
            return Err("an attempt has no outcome".into());
        }
        match self.phase {
            Phase::Running
            | Phase::Paused {
                compensating: false,
                ..
            } => {
                self.phase = Phase::Compensating {
                    reason: reason.to_string(),
                };
                Ok(())
            }
            _ => Err(format!("cannot compensate while {}", self.phase.label())),
        }
    }

    /// The next step to compensate: the latest-started one not yet undone.
    pub fn next_to_compensate(&self) -> Option<usize> {
        self.started_order
            .iter()
            .rev()
            .copied()
            .find(|&index| self.steps[index].status != StepStatus::Compensated)
    }

    fn on_compensation_step_started(&mut self, step: &str, attempt: u32) -> Result<(), String> {
        let index = self.index_of(step)?;
        if !matches!(self.phase, Phase::Compensating { .. }) {
            return Err(format!("not compensating but {}", self.phase.label()));
        }
        if self.in_flight.is_some() {
            return Err("an attempt has no outcome".into());
        }
        if self.next_to_compensate() != Some(index) {
            return Err("compensation must go in reverse start order".into());
        }
        let record = &mut self.steps[index];
        if attempt != record.compensation_attempts + 1 {
            return Err(format!(
                "expected attempt {}",
                record.compensation_attempts + 1
            ));
        }
        record.compensation_attempts = attempt;
        record.status = StepStatus::Compensating;
        self.in_flight = Some(InFlight {
            index,
            attempt,
            compensation: true,
        });
        Ok(())
    }

    fn on_compensation_failed(
        &mut self,
        step: &str,
        attempt: u32,
        error: &str,
        retryable: bool,
    ) -> Result<(), String> {
        let index = self.in_flight_compensation(step)?;
        if self.in_flight.map(|f| f.attempt) != Some(attempt) {
            return Err("that attempt is not in flight".into());
        }
        self.steps[index].compensation_failure = Some(Failure {
            attempt,
            error: error.to_string(),
            retryable,
        });
        self.in_flight = None;
        Ok(())
    }

    fn on_completed(&mut self) -> Result<(), String> {
        if let Some(pending) = self
            .steps
            .iter()
            .find(|r| r.status != StepStatus::Succeeded)
        {
            return Err(format!("step {} has not succeeded", pending.name));
        }
        if self.phase != Phase::Running {
            return Err(format!("cannot complete while {}", self.phase.label()));
        }
        self.phase = Phase::Completed;
        Ok(())
    }

    fn on_aborted(&mut self, reason: &str) -> Result<(), String> {
        if !matches!(self.phase, Phase::Compensating { .. }) {
            return Err(format!("cannot abort while {}", self.phase.label()));
        }
        if self.in_flight.is_some() || self.next_to_compensate().is_some() {
            return Err("a started step is not compensated".into());
        }
        self.phase = Phase::Aborted {
            reason: reason.to_string(),
        };
        Ok(())
    }

    fn on_paused(&mut self, reason: &str) -> Result<(), String> {
        if self.in_flight.is_some() {
            return Err("an attempt has no outcome".into());
        }
        let compensating = match &self.phase {
            Phase::Running => false,
            Phase::Compensating { .. } => true,
            other => return Err(format!("cannot pause while {}", other.label())),
        };
        self.phase = Phase::Paused {
            reason: reason.to_string(),
            compensating,
        };
        Ok(())
    }

    fn on_resume_requested(&mut self) -> Result<(), String> {
        let Phase::Paused { compensating, .. } = &self.phase else {
            return Err(format!(
                "only a paused instance resumes, not {}",
                self.phase.label()
            ));
        };
        self.phase = if *compensating {
            let reason = self.cancel_requested.clone().map_or_else(
                || "resumed compensation".to_string(),
                |by| format!("cancelled by {by}"),
            );
            Phase::Compensating { reason }
        } else {
            Phase::Running
        };
        for record in &mut self.steps {
            record.attempts_forgiven = record.attempts;
            record.compensation_attempts_forgiven = record.compensation_attempts;
        }
        Ok(())
    }

    fn index_of(&self, step: &str) -> Result<usize, String> {
        self.steps
            .iter()
            .position(|record| record.name == step)
            .ok_or_else(|| format!("step {step:?} is not in the plan"))
    }

    fn in_flight_forward(&self, step: &str) -> Result<usize, String> {
        let index = self.index_of(step)?;
        match self.in_flight {
            Some(f) if f.index == index && !f.compensation => Ok(index),
            _ => Err(format!("step {step} has no attempt in flight")),
        }
    }

    fn in_flight_compensation(&self, step: &str) -> Result<usize, String> {
        let index = self.index_of(step)?;
        match self.in_flight {
            Some(f) if f.index == index && f.compensation => Ok(index),
            _ => Err(format!("step {step} has no compensation in flight")),
        }
    }

    /// The step an operator would call current: in flight, else next to run.
    pub fn current_step(&self) -> Option<&str> {
        if let Some(in_flight) = self.in_flight {
            return Some(&self.steps[in_flight.index].name);
        }
        match self.phase {
            Phase::Compensating { .. }
            | Phase::Paused {
                compensating: true, ..
            } => self
                .next_to_compensate()
                .map(|index| self.steps[index].name.as_str()),
            Phase::Running | Phase::Paused { .. } => self
                .steps
                .iter()
                .find(|r| r.status != StepStatus::Succeeded)
                .map(|r| r.name.as_str()),
            _ => None,
        }
    }

    /// Checks the state's internal consistency; called after every event in
    /// debug builds and by tests.
    pub fn validate(&self) -> Result<(), String> {
        let succeeded_prefix = self
            .steps
            .iter()
            .take_while(|r| r.status == StepStatus::Succeeded)
            .count();
        let later_succeeded = self.steps[succeeded_prefix..]
            .iter()
            .any(|r| r.status == StepStatus::Succeeded);
        if later_succeeded {
            return Err("a step succeeded before an earlier one".into());
        }
        if self.phase == Phase::Completed && succeeded_prefix != self.steps.len() {
            return Err("completed with a step not succeeded".into());
        }
        if self.point_of_no_return.is_some()
            && matches!(
                self.phase,
                Phase::Compensating { .. } | Phase::Aborted { .. }
            )
        {
            return Err("compensating after the point of no return".into());
        }
        if self.started_order.len() > self.steps.len() {
            return Err("more started steps than the plan holds".into());
        }
        Ok(())
    }

    /// The latest metric of that name, if a step journaled one.
    pub fn metric(&self, name: &str) -> Option<u64> {
        self.metrics
            .iter()
            .rev()
            .find(|m| m.name == name)
            .map(|m| m.value)
    }
}

fn reject(envelope: &Envelope, reason: &str) -> ReplayError {
    ReplayError {
        seq: envelope.seq(),
        event: envelope.body().name(),
        reason: reason.to_string(),
    }
}
