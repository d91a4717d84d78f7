//! Foreground throughput around migrations: the concurrent writers of the
//! throughput baseline (each writing its own keys outside the moving
//! vShard, one put at a time) run throughout, in rounds: a window with no
//! migration, then a migration of the moving vShard. A round's ratio is
//! the writers' throughput during its migration over their throughput in
//! its quiet window just before, so the machine's drift (it is shared)
//! hits both sides; the ratio reported is the median round's. The copy
//! rate of these migrations is kept too: the copy under foreground load.

use std::time::{Duration, Instant};

use crate::embedded::EmbeddedCluster;

use super::load::{completed_in, keys_outside, Load};
use super::migration::Mover;
use super::stats::{mb_per_s, median};
use super::{BenchError, Observer};

/// Writes after the writers start, not counted (connections, caches).
const WARM_UP: Duration = Duration::from_millis(500);
/// The quiet window before each migration.
const QUIET: Duration = Duration::from_secs(2);

/// What the foreground writers did.
#[derive(Clone, Debug)]
pub struct ForegroundFigures {
    /// Throughput over every quiet window, and over every migration.
    pub before_wps: f64,
    pub during_wps: f64,
    /// The median of the per-round ratios during / before.
    pub ratio: f64,
    pub migrations: usize,
    pub writers: usize,
    /// The median base-copy rate of these migrations, MB/s.
    pub copy_mb_s: f64,
}

/// One round's windows, since the load's origin.
struct Round {
    quiet: (Duration, Duration),
    migration: (Duration, Duration),
}

/// `writers` writers; `migrations` rounds of a quiet window and a move of
/// `mover`.
pub async fn measure(
    cluster: &EmbeddedCluster,
    mover: &mut Mover,
    writers: usize,
    value_bytes: usize,
    migrations: usize,
    observer: &dyn Observer,
) -> Result<ForegroundFigures, BenchError> {
    let keys = keys_outside(mover.vshard, "fg", writers, 1_000);
    let origin = Instant::now();
    let load = Load::start(cluster.client(), keys, value_bytes, origin);
    tokio::time::sleep(WARM_UP).await;
    let mut rounds = Vec::with_capacity(migrations);
    let mut copies = Vec::with_capacity(migrations);
    let mut failure = None;
    for done in 0..migrations {
        let quiet_from = origin.elapsed();
        tokio::time::sleep(QUIET).await;
        let quiet = (quiet_from, origin.elapsed());
        match mover.migrate(cluster, origin).await {
            Ok(run) => {
                observer.note(&format!(
                    "migration {}/{migrations} under {writers} writers: {} in {:.0} ms",
                    done + 1,
                    run.id,
                    (run.to - run.from).as_secs_f64() * 1e3
                ));
                observer.step(done as u64 + 1, migrations as u64);
                copies.push(mb_per_s(run.copy_bytes, run.copy_elapsed));
                rounds.push(Round {
                    quiet,
                    migration: (run.from, run.to),
                });
            }
            Err(error) => {
                failure = Some(error);
                break;
            }
        }
    }
    let samples = load.stop().await;
    if let Some(error) = failure {
        return Err(error);
    }
    let samples = samples?;
    let rate = |(from, to): (Duration, Duration)| {
        let writes = completed_in(&samples, from, to) as f64;
        (writes, (to - from).as_secs_f64().max(1e-9))
    };
    let (mut before, mut during) = ((0.0, 0.0), (0.0, 0.0));
    let mut ratios = Vec::with_capacity(rounds.len());
    for round in &rounds {
        let (quiet, busy) = (rate(round.quiet), rate(round.migration));
        before = (before.0 + quiet.0, before.1 + quiet.1);
        during = (during.0 + busy.0, during.1 + busy.1);
        if quiet.0 > 0.0 {
            ratios.push((busy.0 / busy.1) / (quiet.0 / quiet.1));
        }
    }
    if ratios.is_empty() {
        return Err(BenchError::Measure(
            "foreground_ratio: no quiet window saw a write complete".into(),
        ));
    }
    Ok(ForegroundFigures {
        before_wps: before.0 / before.1.max(1e-9),
        during_wps: during.0 / during.1.max(1e-9),
        ratio: median(ratios),
        migrations: rounds.len(),
        writers,
        copy_mb_s: median(copies),
    })
}
