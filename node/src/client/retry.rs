//! Bounded retries: exponential backoff with jitter, and the total deadline
//! of one call. Pure: time comes in as arguments, so the bounds are tested
//! without sleeping.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use tokio::time::Instant;

use super::error::ClientError;

/// Exponential backoff, doubling from `initial` up to `max`, with "equal
/// jitter": each delay is drawn from `[d/2, d]`, so clients that failed
/// together do not retry together.
#[derive(Clone, Debug)]
pub(crate) struct Backoff {
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            max,
            current: initial,
        }
    }

    /// The next delay; later delays grow until `max`.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let full = self.current;
        self.current = (self.current * 2).min(self.max);
        let half = full / 2;
        let spread = u64::try_from((full - half).as_micros()).unwrap_or(u64::MAX);
        half + Duration::from_micros(random_u64() % spread.max(1))
    }
}

/// A fresh random number from the standard library's per-instance hash keys
/// (good enough for jitter; not for anything secret).
fn random_u64() -> u64 {
    RandomState::new().build_hasher().finish()
}

/// The time budget of one call: when it started, when it must end, and the
/// last failure seen (reported if the budget runs out).
#[derive(Clone, Debug)]
pub(crate) struct Budget {
    started: Instant,
    deadline: Instant,
    last: String,
}

impl Budget {
    pub(crate) fn new(now: Instant, timeout: Duration) -> Self {
        Budget {
            started: now,
            deadline: now + timeout,
            last: "no attempt made".to_string(),
        }
    }

    /// The timeout of the next attempt: `per_attempt` or what is left,
    /// whichever is shorter; `None` once the deadline has passed.
    pub(crate) fn attempt_timeout(&self, now: Instant, per_attempt: Duration) -> Option<Duration> {
        let left = self.deadline.checked_duration_since(now)?;
        (!left.is_zero()).then(|| left.min(per_attempt))
    }

    /// How long to sleep before the next attempt (`delay`, cut to what is
    /// left); `None` if no time would be left for an attempt.
    pub(crate) fn sleep_before_retry(&self, now: Instant, delay: Duration) -> Option<Duration> {
        let left = self.deadline.checked_duration_since(now)?;
        (left > delay).then_some(delay)
    }

    /// Records why the last attempt failed.
    pub(crate) fn note(&mut self, reason: impl Into<String>) {
        self.last = reason.into();
    }

    /// The error for a budget that ran out at `now`.
    pub(crate) fn exhausted(&self, now: Instant) -> ClientError {
        ClientError::Unavailable {
            after: now.saturating_duration_since(self.started),
            last: self.last.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let initial = Duration::from_millis(20);
        let max = Duration::from_millis(150);
        let mut backoff = Backoff::new(initial, max);
        let bounds = [20, 40, 80, 150, 150, 150];
        for full in bounds {
            let full = Duration::from_millis(full);
            let delay = backoff.next_delay();
            assert!(delay >= full / 2 && delay <= full, "{delay:?} vs {full:?}");
        }
    }

    #[test]
    fn budget_bounds_attempts_and_sleeps() {
        let start = Instant::now();
        let per_attempt = Duration::from_secs(3);
        let mut budget = Budget::new(start, Duration::from_secs(10));
        assert_eq!(
            budget.attempt_timeout(start, per_attempt),
            Some(per_attempt)
        );
        let late = start + Duration::from_secs(9);
        assert_eq!(
            budget.attempt_timeout(late, per_attempt),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            budget.sleep_before_retry(late, Duration::from_millis(500)),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            budget.sleep_before_retry(late, Duration::from_secs(2)),
            None
        );
        let over = start + Duration::from_secs(10);
        assert_eq!(budget.attempt_timeout(over, per_attempt), None);
        budget.note("call to 127.0.0.1:9 timed out");
        let error = budget.exhausted(over).to_string();
        assert_eq!(
            error,
            "cluster unavailable after 10.0s: call to 127.0.0.1:9 timed out"
        );
    }
}
