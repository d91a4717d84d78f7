//! The decision logic of the engine, with no I/O: given an instance's state
//! (the fold of its journal) and its plan, what happens next; given a step's
//! outcome, which events record it.
//!
//! The async driver (`driver.rs`) only executes these decisions. Every rule
//! of DESIGN §2 that is a choice — retry or give up, compensate or pause,
//! honour a cancel or roll forward, resume an interrupted attempt — is made
//! here, so it is tested without tokio, files or sockets (`decide_tests.rs`).

use std::time::Duration;

use crate::error::StepError;
use crate::event::Event;
use crate::retry::RetryPolicy;
use crate::state::{Failure, InFlight, Phase, StepRecord, StepStatus, WorkflowState};

/// How many event slots below the cap stay reserved for the events that
/// settle an instance (`Paused`, the failure that led to it).
pub const RESERVED_EVENTS: u64 = 4;

/// The error journaled for an attempt whose driver stopped before its
/// outcome was journaled (a crash, a restart, a shutdown).
pub const INTERRUPTED: &str =
    "attempt interrupted: its driver stopped before the outcome was journaled";

/// One step as the decision logic sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepPlan {
    pub name: String,
    pub retry: RetryPolicy,
    /// Succeeding at this step crosses the point of no return.
    pub point_of_no_return: bool,
}

/// A workflow definition as the decision logic sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<StepPlan>,
    /// The most events one instance may journal.
    pub max_events: u64,
}

/// What the driver must do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Journal these events (a transition with no step to run), then decide again.
    Append(Vec<Event>),
    /// Wait `delay`, journal `StepStarted`, then run this attempt of the step.
    Run {
        index: usize,
        attempt: u32,
        delay: Duration,
    },
    /// Wait `delay`, journal `CompensationStepStarted`, then run the compensation.
    Compensate {
        index: usize,
        attempt: u32,
        delay: Duration,
    },
    /// Nothing to do: the instance is terminal or paused.
    Settled,
}

/// Decides the next move of an instance.
pub fn decide(plan: &Plan, state: &WorkflowState) -> Decision {
    if state.phase.is_settled() {
        return Decision::Settled;
    }
    if let Some(in_flight) = state.in_flight {
        return Decision::Append(vec![interrupted(state, in_flight)]);
    }
    if state.next_seq + RESERVED_EVENTS >= plan.max_events {
        let reason = format!(
            "event cap of {} events per instance reached",
            plan.max_events
        );
        return Decision::Append(vec![Event::Paused { reason }]);
    }
    match &state.phase {
        Phase::Running => decide_forward(plan, state),
        Phase::Compensating { reason } => decide_compensation(plan, state, reason),
        Phase::Paused { .. } | Phase::Completed | Phase::Aborted { .. } => Decision::Settled,
    }
}

/// The events that record a forward attempt's outcome.
pub fn step_outcome(
    plan: &Plan,
    state: &WorkflowState,
    index: usize,
    attempt: u32,
    outcome: Result<Vec<u8>, StepError>,
) -> Vec<Event> {
    let step = plan.steps[index].name.clone();
    match outcome {
        Ok(output) => {
            let mut events = vec![Event::StepSucceeded {
                step: step.clone(),
                output,
            }];
            if plan.steps[index].point_of_no_return && state.point_of_no_return.is_none() {
                events.push(Event::PointOfNoReturn { step });
            }
            events
        }
        Err(error) => vec![Event::StepFailed {
            step,
            attempt,
            retryable: error.is_retryable(),
            error: error.to_string(),
        }],
    }
}

/// The events that record a compensation attempt's outcome.
pub fn compensation_outcome(
    plan: &Plan,
    index: usize,
    attempt: u32,
    outcome: Result<(), StepError>,
) -> Vec<Event> {
    let step = plan.steps[index].name.clone();
    match outcome {
        Ok(()) => vec![Event::Compensated { step }],
        Err(error) => vec![Event::CompensationFailed {
            step,
            attempt,
            retryable: error.is_retryable(),
            error: error.to_string(),
        }],
    }
}

fn interrupted(state: &WorkflowState, in_flight: InFlight) -> Event {
    let step = state.steps[in_flight.index].name.clone();
    let error = INTERRUPTED.to_string();
    if in_flight.compensation {
        Event::CompensationFailed {
            step,
            attempt: in_flight.attempt,
            error,
            retryable: true,
        }
    } else {
        Event::StepFailed {
            step,
            attempt: in_flight.attempt,
            error,
            retryable: true,
        }
    }
}

fn decide_forward(plan: &Plan, state: &WorkflowState) -> Decision {
    if let (Some(by), None) = (&state.cancel_requested, &state.point_of_no_return) {
        let reason = format!("cancelled by {by}");
        return Decision::Append(vec![Event::CompensationStarted { reason }]);
    }
    let Some(index) = state
        .steps
        .iter()
        .position(|record| record.status != StepStatus::Succeeded)
    else {
        return Decision::Append(vec![Event::Completed]);
    };
    let record = &state.steps[index];
    let policy = &plan.steps[index].retry;
    let failure = record
        .last_failure
        .as_ref()
        .filter(|_| record.status == StepStatus::Failed);
    match failure {
        None => Decision::Run {
            index,
            attempt: record.attempts + 1,
            delay: Duration::ZERO,
        },
        Some(failure)
            if may_retry(
                failure,
                record.attempts_forgiven,
                record.budget_attempts(),
                policy,
            ) =>
        {
            Decision::Run {
                index,
                attempt: record.attempts + 1,
                delay: retry_delay(
                    policy,
                    state,
                    &record.name,
                    failure,
                    record.budget_attempts() + 1,
                ),
            }
        }
        Some(failure) => give_up(state, record, failure),
    }
}

fn give_up(state: &WorkflowState, record: &StepRecord, failure: &Failure) -> Decision {
    let reason = if failure.retryable {
        format!(
            "step {} failed after {} attempts: {}",
            record.name,
            record.budget_attempts(),
            failure.error
        )
    } else {
        format!("step {} failed: {}", record.name, failure.error)
    };
    if state.point_of_no_return.is_some() {
        Decision::Append(vec![Event::Paused { reason }])
    } else {
        Decision::Append(vec![Event::CompensationStarted { reason }])
    }
}

fn decide_compensation(plan: &Plan, state: &WorkflowState, reason: &str) -> Decision {
    let Some(index) = state.next_to_compensate() else {
        return Decision::Append(vec![Event::Aborted {
            reason: reason.to_string(),
        }]);
    };
    let record = &state.steps[index];
    let policy = &plan.steps[index].retry;
    match &record.compensation_failure {
        None => Decision::Compensate {
            index,
            attempt: record.compensation_attempts + 1,
            delay: Duration::ZERO,
        },
        Some(failure)
            if may_retry(
                failure,
                record.compensation_attempts_forgiven,
                record.compensation_budget_attempts(),
                policy,
            ) =>
        {
            let next = record.compensation_budget_attempts() + 1;
            Decision::Compensate {
                index,
                attempt: record.compensation_attempts + 1,
                delay: retry_delay(policy, state, &record.name, failure, next),
            }
        }
        Some(failure) => Decision::Append(vec![Event::Paused {
            reason: format!(
                "compensation of step {} failed after {} attempts: {}",
                record.name,
                record.compensation_budget_attempts(),
                failure.error
            ),
        }]),
    }
}

/// The wait before retrying after `failure`: none when the attempt was only
/// interrupted (its driver stopped; the step did not fail, so there is
/// nothing to back off from, and a restarted driver resumes at once), the
/// policy's backoff otherwise. An interrupted attempt still counts against
/// the retry budget, so a step that keeps killing its driver ends.
fn retry_delay(
    policy: &RetryPolicy,
    state: &WorkflowState,
    step: &str,
    failure: &Failure,
    next_attempt: u32,
) -> Duration {
    if failure.retryable && failure.error == INTERRUPTED {
        Duration::ZERO
    } else {
        policy.backoff(state.id, step, next_attempt)
    }
}

/// A failure may be retried when it is retryable (or an operator resumed
/// since it happened) and the budget since the last resume has room.
fn may_retry(failure: &Failure, forgiven: u32, budget_used: u32, policy: &RetryPolicy) -> bool {
    let forgiven_failure = failure.attempt <= forgiven;
    (failure.retryable || forgiven_failure) && budget_used < policy.max_attempts
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
