//! MoveVShard under live writes: the vShard moves back and forth between
//! two groups, one migration after the other, while two writers run — a
//! probe writing the moving vShard's keys one put at a time, and one
//! writing a vShard that stays put. Per migration:
//!
//! - the **write pause as a client sees it**: the longest time one probe
//!   write in flight during the migration took, retries after `Fenced`,
//!   routing refreshes and redirects included (the client's default
//!   configuration);
//! - the pause the cut-over journaled (fence applied → target accepting);
//! - the base copy's rate: its bytes over the BaseCopy step's duration.

use std::time::Instant;

use crate::embedded::EmbeddedCluster;

use super::load::{Load, Sample};
use super::migration::{MigrationRun, Mover};
use super::stats::{max, mb_per_s, micros, percentile, sorted};
use super::{BenchError, Observer};

/// Probe writes before the first migration, not part of any window.
const WARM_UP: std::time::Duration = std::time::Duration::from_millis(300);

/// What the migrations under live writes measured.
#[derive(Clone, Debug, Default)]
pub struct PauseFigures {
    /// Client-seen pause per migration, µs, ascending.
    pub pauses_us: Vec<f64>,
    /// Per migration, the longest probe write in flight during the CutOver
    /// step, µs, ascending (the cut-over's share of the pause).
    pub cut_over_us: Vec<f64>,
    /// Per migration, the longest probe write that was not, µs, ascending.
    pub elsewhere_us: Vec<f64>,
    /// Journaled pause per migration, µs, ascending.
    pub journaled_us: Vec<f64>,
    /// Base copy rate per migration, MB/s, ascending.
    pub copy_mb_s: Vec<f64>,
    /// Bytes one base copy moved (the last one).
    pub copy_bytes: u64,
    /// Single-write latency on the stay-put vShard during the run, µs.
    pub stay_p50_us: f64,
    pub stay_p99_us: f64,
    /// Probe writes on the moving vShard.
    pub probe_writes: usize,
}

impl PauseFigures {
    pub fn pause_p50_us(&self) -> f64 {
        percentile(&self.pauses_us, 0.5)
    }
    pub fn pause_p99_us(&self) -> f64 {
        percentile(&self.pauses_us, 0.99)
    }
    pub fn pause_max_us(&self) -> f64 {
        max(&self.pauses_us)
    }
    /// The median copy rate.
    pub fn copy_mb_s(&self) -> f64 {
        percentile(&self.copy_mb_s, 0.5)
    }
}

/// Runs `migrations` moves of `mover` with the probe writing `probe_keys`
/// and the other writer `stay_keys`.
pub async fn measure(
    cluster: &EmbeddedCluster,
    mover: &mut Mover,
    probe_keys: Vec<Vec<u8>>,
    stay_keys: Vec<Vec<u8>>,
    value_bytes: usize,
    migrations: usize,
    observer: &dyn Observer,
) -> Result<PauseFigures, BenchError> {
    let client = cluster.client();
    let origin = Instant::now();
    let probe = Load::start(client, vec![probe_keys], value_bytes, origin);
    let stay = Load::start(client, vec![stay_keys], value_bytes, origin);
    tokio::time::sleep(WARM_UP).await;
    let mut runs = Vec::with_capacity(migrations);
    let mut failure = None;
    for done in 0..migrations {
        match mover.migrate(cluster, origin).await {
            Ok(run) => {
                observer.note(&describe(&run, done + 1, migrations));
                observer.step(done as u64 + 1, migrations as u64);
                runs.push(run);
            }
            Err(error) => {
                failure = Some(error);
                break;
            }
        }
    }
    // Stop the writers whatever happened, then report the first failure.
    let probe = probe.stop().await;
    let stay = stay.stop().await;
    if let Some(error) = failure {
        return Err(error);
    }
    let (probe, stay) = (probe?, stay?);
    Ok(figures(&runs, &probe, &stay))
}

fn figures(runs: &[MigrationRun], probe: &[Sample], stay: &[Sample]) -> PauseFigures {
    let pauses = runs.iter().map(|run| client_pause_us(run, probe)).collect();
    let split: Vec<(f64, f64)> = runs.iter().map(|run| split_pause_us(run, probe)).collect();
    let journaled = runs.iter().filter_map(|run| run.journaled_pause_us);
    let copy = (runs.iter()).map(|run| mb_per_s(run.copy_bytes, run.copy_elapsed));
    let stay = sorted(stay.iter().map(|s| micros(s.latency())).collect());
    PauseFigures {
        pauses_us: sorted(pauses),
        cut_over_us: sorted(split.iter().map(|s| s.0).collect()),
        elsewhere_us: sorted(split.iter().map(|s| s.1).collect()),
        journaled_us: sorted(journaled.collect()),
        copy_mb_s: sorted(copy.collect()),
        copy_bytes: runs.last().map_or(0, |run| run.copy_bytes),
        stay_p50_us: percentile(&stay, 0.5),
        stay_p99_us: percentile(&stay, 0.99),
        probe_writes: probe.len(),
    }
}

/// The longest probe write in flight during `run`, µs.
pub fn client_pause_us(run: &MigrationRun, probe: &[Sample]) -> f64 {
    (probe.iter())
        .filter(|sample| sample.overlaps(run.from, run.to))
        .map(|sample| micros(sample.latency()))
        .fold(0.0, f64::max)
}

/// The longest probe write in flight during `run`'s CutOver step, and the
/// longest of the others in flight during `run`, µs.
pub fn split_pause_us(run: &MigrationRun, probe: &[Sample]) -> (f64, f64) {
    let in_cut_over =
        |sample: &Sample| (run.cut_over).is_some_and(|(from, to)| sample.overlaps(from, to));
    let (mut cut_over, mut elsewhere) = (0.0, 0.0);
    for sample in probe.iter().filter(|s| s.overlaps(run.from, run.to)) {
        let us = micros(sample.latency());
        let longest = if in_cut_over(sample) {
            &mut cut_over
        } else {
            &mut elsewhere
        };
        *longest = f64::max(*longest, us);
    }
    (cut_over, elsewhere)
}

fn describe(run: &MigrationRun, done: usize, of: usize) -> String {
    let journaled = run
        .journaled_pause_us
        .map_or("-".to_string(), |us| format!("{:.1} ms", us / 1e3));
    format!(
        "migration {done}/{of}: {} in {:.0} ms, copy {:.1} MB/s, journaled pause {journaled}",
        run.id,
        (run.to - run.from).as_secs_f64() * 1e3,
        mb_per_s(run.copy_bytes, run.copy_elapsed),
    )
}
