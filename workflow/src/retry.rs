//! Retry policies: how many attempts a step gets, how long each may take, and
//! how long to wait between them (exponential backoff with jitter).
//!
//! The jitter is a pure function of the instance, step and attempt, so the
//! decision logic stays deterministic and its tests can assert exact delays,
//! while different instances retrying the same step still spread out.

use std::time::Duration;

use crate::id::WorkflowId;

/// Attempts, per-attempt timeout and backoff of one step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    /// How long one attempt may run before it counts as a retryable failure.
    pub attempt_timeout: Duration,
    /// The wait before the second attempt; doubled for each one after.
    pub initial_backoff: Duration,
    /// The wait never exceeds this.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            attempt_timeout: Duration::from_secs(60),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// A policy with `max_attempts` attempts and the other defaults.
    pub fn attempts(max_attempts: u32) -> Self {
        Self {
            max_attempts: max_attempts.max(1),
            ..Self::default()
        }
    }

    /// The wait before attempt `next_attempt` (2 or more) of a step: the
    /// exponential delay for that attempt, with "equal jitter" (half fixed,
    /// half spread by a hash of the instance, step and attempt).
    pub fn backoff(&self, id: WorkflowId, step: &str, next_attempt: u32) -> Duration {
        if next_attempt <= 1 {
            return Duration::ZERO;
        }
        let doublings = (next_attempt - 2).min(30);
        let exponential = self.initial_backoff.saturating_mul(1u32 << doublings);
        let capped = exponential.min(self.max_backoff);
        let half = capped / 2;
        let spread = jitter_fraction(id, step, next_attempt);
        half + half.mul_f64(spread)
    }
}

/// A deterministic value in [0, 1) for (instance, step, attempt).
fn jitter_fraction(id: WorkflowId, step: &str, attempt: u32) -> f64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&id.node.to_le_bytes());
    hasher.update(&id.serial.to_le_bytes());
    hasher.update(step.as_bytes());
    hasher.update(&attempt.to_le_bytes());
    let mut word = [0u8; 8];
    word.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
    (u64::from_le_bytes(word) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves backoff doubles per attempt, stays within [half, full] of the
    // exponential delay, is capped, and is deterministic.
    #[test]
    fn backoff_doubles_with_bounded_jitter_and_cap() {
        let policy = RetryPolicy {
            max_attempts: 10,
            attempt_timeout: Duration::from_secs(1),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
        };
        let id = WorkflowId::new(1, 1);
        assert_eq!(policy.backoff(id, "s", 1), Duration::ZERO);
        for (attempt, full_ms) in [(2u32, 100u64), (3, 200), (4, 400), (5, 500), (9, 500)] {
            let delay = policy.backoff(id, "s", attempt);
            let full = Duration::from_millis(full_ms);
            assert!(
                delay >= full / 2 && delay <= full,
                "attempt {attempt}: {delay:?}"
            );
            assert_eq!(delay, policy.backoff(id, "s", attempt));
        }
        let other = policy.backoff(WorkflowId::new(1, 2), "s", 4);
        assert_ne!(
            other,
            policy.backoff(id, "s", 4),
            "jitter should differ per instance"
        );
    }
}
