//! Small statistics over measured samples: percentiles (nearest rank),
//! medians, rates and the ratios the report divides out.

use std::time::Duration;

use super::BenchError;

/// `values` sorted ascending (NaN last, never produced by our measurements).
pub fn sorted(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(f64::total_cmp);
    values
}

/// The nearest-rank percentile of ascending `sorted` (`fraction` in 0..=1);
/// 0 for no samples. With 20 samples, p99 is the largest.
pub fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// The median of `values` (the upper one of an even count); 0 for none.
pub fn median(values: Vec<f64>) -> f64 {
    let values = sorted(values);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// The largest of `values`; 0 for none.
pub fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(0.0, f64::max)
}

/// Microseconds in `duration`, as a float.
pub fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

/// Decimal megabytes (10^6 bytes) per second.
pub fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64().max(1e-9)
}

/// `numerator / denominator`, refused when the denominator is not a
/// positive figure (a measurement that failed, never a ratio to print).
pub fn ratio(what: &str, numerator: f64, denominator: f64) -> Result<f64, BenchError> {
    if denominator > 0.0 && numerator.is_finite() && denominator.is_finite() {
        Ok(numerator / denominator)
    } else {
        Err(BenchError::Measure(format!(
            "{what}: cannot divide {numerator} by {denominator}"
        )))
    }
}

/// `value` rounded to two decimals (the report's precision).
pub fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let values = sorted((1..=20).rev().map(f64::from).collect());
        assert_eq!(percentile(&values, 0.5), 11.0);
        assert_eq!(percentile(&values, 0.99), 20.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(max(&[1.0, 4.0, 2.0]), 4.0);
    }

    #[test]
    fn a_ratio_needs_a_positive_denominator() {
        assert_eq!(ratio("r", 3.0, 2.0).ok(), Some(1.5));
        assert!(ratio("r", 3.0, 0.0).is_err());
        assert!(ratio("r", f64::NAN, 1.0).is_err());
        assert_eq!(round2(1.23456), 1.23);
    }
}
