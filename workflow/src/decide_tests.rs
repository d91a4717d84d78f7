//! Decision-logic tests: each asserts the exact list of decisions the engine
//! emits for a scripted sequence of step outcomes, with no I/O at all.

use std::time::Duration;

use super::*;
use crate::envelope::{Envelope, EnvelopeV1};
use crate::id::WorkflowId;
use crate::state::{replay, Phase, WorkflowState};

const ID: WorkflowId = WorkflowId { node: 1, serial: 9 };

fn policy(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        attempt_timeout: Duration::from_secs(1),
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(1000),
    }
}

fn plan_with(steps: &[(&str, u32, bool)]) -> Plan {
    Plan {
        steps: steps
            .iter()
            .map(|&(name, attempts, point_of_no_return)| StepPlan {
                name: name.into(),
                retry: policy(attempts),
                point_of_no_return,
            })
            .collect(),
        max_events: 1_000,
    }
}

fn abc() -> Plan {
    plan_with(&[("a", 3, false), ("b", 3, false), ("c", 3, false)])
}

fn envelope(seq: u64, body: Event) -> Envelope {
    Envelope::V1(EnvelopeV1 {
        seq,
        at_ms: 1_000 + seq,
        node: 1,
        engine_version: 1,
        definition_version: 1,
        prev_hash: [0; 32],
        body,
    })
}

/// A simulated instance: its journal and the state folded from it.
struct Sim {
    plan: Plan,
    journal: Vec<Envelope>,
    state: WorkflowState,
}

impl Sim {
    fn submit(plan: Plan) -> Self {
        let submitted = Event::Submitted {
            kind: "test".into(),
            definition_version: 1,
            input: vec![],
            plan: plan.steps.iter().map(|s| s.name.clone()).collect(),
        };
        let journal = vec![
            envelope(0, submitted),
            envelope(1, Event::DriverStarted { epoch: 1 }),
        ];
        let state = replay(ID, &journal).expect("valid start");
        Self {
            plan,
            journal,
            state,
        }
    }

    fn from_journal(plan: Plan, journal: Vec<Envelope>) -> Self {
        let mut state = replay(ID, &journal).expect("prefix replays");
        let mut journal = journal;
        if !state.phase.is_terminal() {
            let bump = envelope(
                state.next_seq,
                Event::DriverStarted {
                    epoch: state.epoch + 1,
                },
            );
            state.apply(&bump).expect("epoch bump applies");
            journal.push(bump);
        }
        Self {
            plan,
            journal,
            state,
        }
    }

    fn push(&mut self, event: Event) {
        let next = envelope(self.state.next_seq, event);
        self.state
            .apply(&next)
            .expect("the engine only appends valid events");
        self.journal.push(next);
    }

    /// Drives until settled; `outcome(step, attempt, compensation)` scripts
    /// each attempt. Returns every decision made, in order.
    fn drive(
        &mut self,
        mut outcome: impl FnMut(&str, u32, bool) -> Result<(), StepError>,
    ) -> Vec<Decision> {
        let mut decisions = Vec::new();
        for _ in 0..200 {
            let decision = decide(&self.plan, &self.state);
            decisions.push(decision.clone());
            match decision {
                Decision::Settled => return decisions,
                Decision::Append(events) => events.into_iter().for_each(|e| self.push(e)),
                Decision::Run { index, attempt, .. } => {
                    let step = self.plan.steps[index].name.clone();
                    self.push(Event::StepStarted {
                        step: step.clone(),
                        attempt,
                    });
                    let result = outcome(&step, attempt, false).map(|()| vec![index as u8]);
                    for event in step_outcome(&self.plan, &self.state, index, attempt, result) {
                        self.push(event);
                    }
                }
                Decision::Compensate { index, attempt, .. } => {
                    let step = self.plan.steps[index].name.clone();
                    self.push(Event::CompensationStepStarted {
                        step: step.clone(),
                        attempt,
                    });
                    let result = outcome(&step, attempt, true);
                    for event in compensation_outcome(&self.plan, index, attempt, result) {
                        self.push(event);
                    }
                }
            }
        }
        panic!("did not settle within 200 decisions: {decisions:?}");
    }
}

fn run(index: usize, attempt: u32) -> Decision {
    Decision::Run {
        index,
        attempt,
        delay: Duration::ZERO,
    }
}

fn compensate(index: usize) -> Decision {
    Decision::Compensate {
        index,
        attempt: 1,
        delay: Duration::ZERO,
    }
}

fn ok(_: &str, _: u32, _: bool) -> Result<(), StepError> {
    Ok(())
}

// Proves the happy path runs each step once, in order, then completes.
#[test]
fn success_runs_every_step_once_then_completes() {
    let mut sim = Sim::submit(abc());
    let decisions = sim.drive(ok);
    assert_eq!(
        decisions,
        vec![
            run(0, 1),
            run(1, 1),
            run(2, 1),
            Decision::Append(vec![Event::Completed]),
            Decision::Settled
        ]
    );
    assert_eq!(sim.state.phase, Phase::Completed);
}

// Proves a retryable failure is retried with the policy's backoff.
#[test]
fn retryable_failure_is_retried_with_backoff_then_succeeds() {
    let mut sim = Sim::submit(abc());
    let decisions = sim.drive(|step, attempt, _| match (step, attempt) {
        ("b", 1 | 2) => Err(StepError::retryable("leader changed")),
        _ => Ok(()),
    });
    let backoff = |attempt| policy(3).backoff(ID, "b", attempt);
    assert_eq!(
        decisions,
        vec![
            run(0, 1),
            run(1, 1),
            Decision::Run {
                index: 1,
                attempt: 2,
                delay: backoff(2)
            },
            Decision::Run {
                index: 1,
                attempt: 3,
                delay: backoff(3)
            },
            run(2, 1),
            Decision::Append(vec![Event::Completed]),
            Decision::Settled
        ]
    );
    assert!(backoff(3) > backoff(2) / 2, "backoff grows");
}

// Proves exhausted retries compensate every started step in reverse order.
#[test]
fn exhausted_retries_compensate_in_reverse_order() {
    let mut sim = Sim::submit(abc());
    let decisions = sim.drive(|step, _, compensation| match (step, compensation) {
        ("c", false) => Err(StepError::retryable("target unreachable")),
        _ => Ok(()),
    });
    let reason = "step c failed after 3 attempts: target unreachable".to_string();
    let backoff = |attempt| policy(3).backoff(ID, "c", attempt);
    assert_eq!(
        decisions,
        vec![
            run(0, 1),
            run(1, 1),
            run(2, 1),
            Decision::Run {
                index: 2,
                attempt: 2,
                delay: backoff(2)
            },
            Decision::Run {
                index: 2,
                attempt: 3,
                delay: backoff(3)
            },
            Decision::Append(vec![Event::CompensationStarted {
                reason: reason.clone()
            }]),
            compensate(2),
            compensate(1),
            compensate(0),
            Decision::Append(vec![Event::Aborted {
                reason: reason.clone()
            }]),
            Decision::Settled
        ]
    );
    assert_eq!(sim.state.phase, Phase::Aborted { reason });
}

// Proves a terminal error gives up at once, without another attempt.
#[test]
fn terminal_error_compensates_without_retry() {
    let mut sim = Sim::submit(abc());
    let decisions = sim.drive(|step, _, compensation| match (step, compensation) {
        ("b", false) => Err(StepError::terminal("vshard 2000 does not exist")),
        _ => Ok(()),
    });
    let reason = "step b failed: vshard 2000 does not exist".to_string();
    assert_eq!(
        decisions,
        vec![
            run(0, 1),
            run(1, 1),
            Decision::Append(vec![Event::CompensationStarted {
                reason: reason.clone()
            }]),
            compensate(1),
            compensate(0),
            Decision::Append(vec![Event::Aborted { reason }]),
            Decision::Settled
        ]
    );
}

// Proves a cancel before the point of no return compensates at the next boundary.
#[test]
fn cancel_before_point_of_no_return_compensates() {
    let mut sim = Sim::submit(plan_with(&[
        ("a", 3, false),
        ("b", 3, true),
        ("c", 3, false),
    ]));
    sim.push(Event::StepStarted {
        step: "a".into(),
        attempt: 1,
    });
    sim.push(Event::StepSucceeded {
        step: "a".into(),
        output: vec![],
    });
    sim.push(Event::CancelRequested {
        by: "operator".into(),
    });
    let decisions = sim.drive(ok);
    let reason = "cancelled by operator".to_string();
    assert_eq!(
        decisions,
        vec![
            Decision::Append(vec![Event::CompensationStarted {
                reason: reason.clone()
            }]),
            compensate(0),
            Decision::Append(vec![Event::Aborted { reason }]),
            Decision::Settled
        ]
    );
}

// Proves a cancel after the point of no return is not honoured: it rolls forward.
#[test]
fn cancel_after_point_of_no_return_rolls_forward() {
    let mut sim = Sim::submit(plan_with(&[
        ("a", 3, false),
        ("b", 3, true),
        ("c", 3, false),
    ]));
    let mut cancelled = false;
    let decisions = sim.drive(|step, _, _| {
        if step == "c" {
            cancelled = true;
        }
        Ok(())
    });
    assert!(cancelled);
    assert_eq!(sim.state.point_of_no_return.as_deref(), Some("b"));
    // Replay the same journal with a cancel right after b crossed it.
    let crossed = sim
        .journal
        .iter()
        .position(|e| matches!(e.body(), Event::PointOfNoReturn { .. }))
        .expect("b crossed the point of no return");
    let mut sim = Sim::from_journal(sim.plan.clone(), sim.journal[..=crossed].to_vec());
    sim.push(Event::CancelRequested {
        by: "operator".into(),
    });
    let after = sim.drive(ok);
    assert_eq!(
        after,
        vec![
            run(2, 1),
            Decision::Append(vec![Event::Completed]),
            Decision::Settled
        ]
    );
    assert_eq!(decisions.len(), 5);
}

// Proves a failure after the point of no return pauses, and an operator resume retries.
#[test]
fn failure_after_point_of_no_return_pauses_then_resumes() {
    let mut sim = Sim::submit(plan_with(&[
        ("a", 3, false),
        ("b", 3, true),
        ("c", 2, false),
    ]));
    let decisions = sim.drive(|step, _, _| match step {
        "c" => Err(StepError::terminal("digest mismatch")),
        _ => Ok(()),
    });
    let reason = "step c failed: digest mismatch".to_string();
    assert_eq!(
        decisions,
        vec![
            run(0, 1),
            run(1, 1),
            run(2, 1),
            Decision::Append(vec![Event::Paused {
                reason: reason.clone()
            }]),
            Decision::Settled
        ]
    );
    assert_eq!(
        sim.state.phase,
        Phase::Paused {
            reason,
            compensating: false
        }
    );
    sim.push(Event::ResumeRequested {
        by: "operator".into(),
    });
    // The operator's resume restarts the budget: the retry runs at once.
    let resumed = sim.drive(ok);
    assert_eq!(
        resumed,
        vec![
            run(2, 2),
            Decision::Append(vec![Event::Completed]),
            Decision::Settled
        ]
    );
}

// Proves a compensation that keeps failing pauses instead of looping, and resumes.
#[test]
fn failing_compensation_pauses_then_resumes() {
    let mut sim = Sim::submit(plan_with(&[("a", 2, false), ("b", 1, false)]));
    let decisions = sim.drive(|step, _, compensation| match (step, compensation) {
        ("b", false) => Err(StepError::terminal("refused")),
        ("a", true) => Err(StepError::retryable("metadata group unreachable")),
        _ => Ok(()),
    });
    let backoff = policy(2).backoff(ID, "a", 2);
    assert_eq!(
        decisions[2..],
        [
            Decision::Append(vec![Event::CompensationStarted {
                reason: "step b failed: refused".into()
            }]),
            compensate(1),
            compensate(0),
            Decision::Compensate {
                index: 0,
                attempt: 2,
                delay: backoff
            },
            Decision::Append(vec![Event::Paused {
                reason:
                    "compensation of step a failed after 2 attempts: metadata group unreachable"
                        .into()
            }]),
            Decision::Settled
        ]
    );
    assert!(matches!(
        sim.state.phase,
        Phase::Paused {
            compensating: true,
            ..
        }
    ));
    sim.push(Event::ResumeRequested {
        by: "operator".into(),
    });
    let resumed = sim.drive(ok);
    assert!(matches!(
        resumed[0],
        Decision::Compensate {
            index: 0,
            attempt: 3,
            ..
        }
    ));
    assert!(matches!(sim.state.phase, Phase::Aborted { .. }));
}

// Proves reaching the event cap pauses the instance with a clear reason.
#[test]
fn event_cap_pauses_with_a_clear_reason() {
    let mut plan = abc();
    plan.max_events = 7;
    let mut sim = Sim::submit(plan);
    let decisions = sim.drive(ok);
    assert_eq!(
        decisions.last().map(|_| &sim.state.phase),
        Some(&Phase::Paused {
            reason: "event cap of 7 events per instance reached".into(),
            compensating: false
        })
    );
    assert!(sim.state.next_seq <= 7);
}

/// The outcome script used by the resume test: retries, a terminal failure
/// at step c, and one failed compensation attempt.
fn eventful(step: &str, attempt: u32, compensation: bool) -> Result<(), StepError> {
    match (step, attempt, compensation) {
        ("b", 1, false) => Err(StepError::retryable("timeout")),
        ("c", _, false) => Err(StepError::terminal("refused")),
        ("a", 1, true) => Err(StepError::retryable("busy")),
        _ => Ok(()),
    }
}

// Proves resuming from every possible last event reaches the same end: an
// interrupted attempt is journaled as failed and retried, never skipped.
#[test]
fn resume_from_every_possible_last_event() {
    let mut reference = Sim::submit(abc());
    reference.drive(eventful);
    let end = reference.state.phase.clone();
    assert!(matches!(end, Phase::Aborted { .. }));
    for cut in 1..=reference.journal.len() {
        let prefix = reference.journal[..cut].to_vec();
        let last = prefix.last().expect("non-empty").body().clone();
        let mut sim = Sim::from_journal(reference.plan.clone(), prefix);
        let decisions = sim.drive(eventful);
        if let Event::StepStarted { step, attempt } = &last {
            let expected = Event::StepFailed {
                step: step.clone(),
                attempt: *attempt,
                error: INTERRUPTED.into(),
                retryable: true,
            };
            assert_eq!(decisions[0], Decision::Append(vec![expected]), "cut {cut}");
        }
        assert!(
            matches!(sim.state.phase, Phase::Aborted { .. }),
            "cut {cut}: {:?}",
            sim.state.phase
        );
        let compensated: Vec<_> = sim.state.steps.iter().map(|s| s.status).collect();
        assert_eq!(compensated, vec![StepStatus::Compensated; 3], "cut {cut}");
        assert_eq!(
            replay(ID, &sim.journal).expect("journal replays"),
            sim.state,
            "cut {cut}"
        );
    }
}

// Proves an attempt interrupted by a driver restart is retried at once (no
// backoff: the step did not fail), still counts against the retry budget,
// and that a step's own retryable failure after it is backed off as before.
#[test]
fn interrupted_attempt_is_retried_without_backoff() {
    let mut reference = Sim::submit(abc());
    reference.push(Event::StepStarted {
        step: "a".into(),
        attempt: 1,
    });
    let mut sim = Sim::from_journal(reference.plan.clone(), reference.journal.clone());
    let interrupted = Event::StepFailed {
        step: "a".into(),
        attempt: 1,
        error: INTERRUPTED.into(),
        retryable: true,
    };
    assert_eq!(
        decide(&sim.plan, &sim.state),
        Decision::Append(vec![interrupted.clone()])
    );
    sim.push(interrupted);
    assert_eq!(decide(&sim.plan, &sim.state), run(0, 2));
    assert_eq!(sim.state.steps[0].budget_attempts(), 1, "still counted");

    // The retried attempt fails on its own: that one is backed off.
    sim.push(Event::StepStarted {
        step: "a".into(),
        attempt: 2,
    });
    let error = StepError::retryable("leader changed");
    for event in step_outcome(&sim.plan, &sim.state, 0, 2, Err(error)) {
        sim.push(event);
    }
    let delay = policy(3).backoff(ID, "a", 3);
    assert!(delay > Duration::ZERO);
    assert_eq!(
        decide(&sim.plan, &sim.state),
        Decision::Run {
            index: 0,
            attempt: 3,
            delay
        }
    );
}

// Proves an interrupted compensation attempt is also retried at once.
#[test]
fn interrupted_compensation_is_retried_without_backoff() {
    let mut reference = Sim::submit(abc());
    reference.drive(|step, _, compensation| match (step, compensation) {
        ("b", false) => Err(StepError::terminal("refused")),
        _ => Ok(()),
    });
    let cut = reference
        .journal
        .iter()
        .position(|e| matches!(e.body(), Event::CompensationStepStarted { .. }))
        .expect("a compensation started");
    let mut sim = Sim::from_journal(reference.plan.clone(), reference.journal[..=cut].to_vec());
    let Decision::Append(events) = decide(&sim.plan, &sim.state) else {
        panic!("the interrupted compensation is journaled first");
    };
    assert!(matches!(
        &events[..],
        [Event::CompensationFailed { error, retryable: true, .. }] if error == INTERRUPTED
    ));
    events.into_iter().for_each(|e| sim.push(e));
    assert!(matches!(
        decide(&sim.plan, &sim.state),
        Decision::Compensate {
            attempt: 2,
            delay: Duration::ZERO,
            ..
        }
    ));
}
