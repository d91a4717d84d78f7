//! A scripted workflow for the engine's tests: each step's outcome per
//! attempt comes from a script, and its effect goes to a ledger that dedupes
//! by idempotency key and counts real applications, so a test can check that
//! every effect happened exactly once.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use shardflow_workflow::{RetryPolicy, Step, StepContext, StepError, Workflow};

/// What an attempt does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Retryable,
    Terminal,
    /// Waits for a cancel request, then returns `Cancelled`.
    WaitForCancel,
    Panic,
}

/// Effects applied, keyed by idempotency key (`wf-1-1/a` or `wf-1-1/a!undo`).
#[derive(Default)]
pub struct Ledger {
    /// Current effects (present = applied and not undone).
    pub present: HashMap<String, u32>,
    /// How many times each key was *really* applied (dedupe bypassed).
    pub applications: HashMap<String, u32>,
    /// Every attempt the steps saw: (step, attempt, compensation).
    pub attempts: Vec<(String, u32, bool)>,
}

impl Ledger {
    /// Applies an effect once per key; later calls return the first result.
    fn apply(&mut self, key: String) {
        if !self.present.contains_key(&key) {
            self.present.insert(key.clone(), 1);
            *self.applications.entry(key).or_default() += 1;
        }
    }
}

/// (step, attempt, compensation).
pub type AttemptKey = (String, u32, bool);

/// The shared script and ledger of a test.
#[derive(Clone, Default)]
pub struct Script {
    /// outcomes[(step, attempt)]; anything missing is `Ok`.
    pub outcomes: Arc<Mutex<HashMap<AttemptKey, Outcome>>>,
    pub ledger: Arc<Mutex<Ledger>>,
    /// Woken whenever a step attempt starts.
    pub attempt_started: Arc<tokio::sync::Notify>,
}

impl Script {
    pub fn set(&self, step: &str, attempt: u32, compensation: bool, outcome: Outcome) {
        let key = (step.to_string(), attempt, compensation);
        self.outcomes.lock().unwrap().insert(key, outcome);
    }

    fn outcome(&self, step: &str, attempt: u32, compensation: bool) -> Outcome {
        let key = (step.to_string(), attempt, compensation);
        *self
            .outcomes
            .lock()
            .unwrap()
            .get(&key)
            .unwrap_or(&Outcome::Ok)
    }

    /// Waits (bounded) until some attempt of `step` has started.
    pub async fn wait_for_attempt(&self, step: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let notified = self.attempt_started.notified();
            let seen = self
                .ledger
                .lock()
                .unwrap()
                .attempts
                .iter()
                .any(|(s, _, _)| s == step);
            if seen {
                return;
            }
            let waited = tokio::time::timeout_at(deadline, notified).await;
            assert!(waited.is_ok(), "step {step} never started");
        }
    }

    pub fn applications(&self, key: &str) -> u32 {
        *self
            .ledger
            .lock()
            .unwrap()
            .applications
            .get(key)
            .unwrap_or(&0)
    }

    pub fn present(&self, key: &str) -> bool {
        self.ledger.lock().unwrap().present.contains_key(key)
    }
}

/// One scripted step.
pub struct ScriptedStep {
    pub name: &'static str,
    pub script: Script,
    pub point_of_no_return: bool,
    pub max_attempts: u32,
    pub attempt_timeout: Duration,
}

#[async_trait]
impl Step<Vec<u8>> for ScriptedStep {
    fn name(&self) -> &'static str {
        self.name
    }

    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts,
            attempt_timeout: self.attempt_timeout,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(4),
        }
    }

    fn is_point_of_no_return(&self) -> bool {
        self.point_of_no_return
    }

    async fn run(&self, ctx: &StepContext<Vec<u8>>) -> Result<Vec<u8>, StepError> {
        self.act(ctx, false)
            .await
            .map(|()| self.name.as_bytes().to_vec())
    }

    async fn compensate(&self, ctx: &StepContext<Vec<u8>>) -> Result<(), StepError> {
        self.act(ctx, true).await
    }
}

impl ScriptedStep {
    async fn act(&self, ctx: &StepContext<Vec<u8>>, compensation: bool) -> Result<(), StepError> {
        self.script.ledger.lock().unwrap().attempts.push((
            self.name.to_string(),
            ctx.attempt(),
            compensation,
        ));
        self.script.attempt_started.notify_waiters();
        match self.script.outcome(self.name, ctx.attempt(), compensation) {
            Outcome::Ok => {
                let suffix = if compensation { "!undo" } else { "" };
                let key = format!("{}{suffix}", ctx.idempotency_key());
                self.script.ledger.lock().unwrap().apply(key);
                Ok(())
            }
            Outcome::Retryable => Err(StepError::retryable("scripted retryable failure")),
            Outcome::Terminal => Err(StepError::terminal("scripted terminal failure")),
            Outcome::WaitForCancel => {
                ctx.cancelled().await;
                Err(StepError::Cancelled)
            }
            Outcome::Panic => panic!("scripted panic in {}", self.name),
        }
    }
}

/// A workflow of scripted steps; the step named in `point_of_no_return`
/// crosses it when it succeeds.
pub struct Scripted {
    pub names: Vec<&'static str>,
    pub script: Script,
    pub point_of_no_return: Option<&'static str>,
    pub max_attempts: u32,
    pub attempt_timeout: Duration,
}

impl Scripted {
    pub fn new(names: &[&'static str], script: &Script) -> Self {
        Self {
            names: names.to_vec(),
            script: script.clone(),
            point_of_no_return: None,
            max_attempts: 3,
            attempt_timeout: Duration::from_secs(30),
        }
    }
}

impl Workflow for Scripted {
    type Input = Vec<u8>;
    const KIND: &'static str = "scripted";

    fn steps(&self) -> Vec<Arc<dyn Step<Vec<u8>>>> {
        self.names
            .iter()
            .map(|&name| {
                Arc::new(ScriptedStep {
                    name,
                    script: self.script.clone(),
                    point_of_no_return: self.point_of_no_return == Some(name),
                    max_attempts: self.max_attempts,
                    attempt_timeout: self.attempt_timeout,
                }) as Arc<dyn Step<Vec<u8>>>
            })
            .collect()
    }
}
