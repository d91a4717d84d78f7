//! `shardflow bench`: the limits of this machine and how close the cluster
//! and its migrations come to them, measured in one run.
//!
//! [`run`] measures, in order, each in its own file:
//! - [`engine`]: a no-op step on the redb journal against one bare durable
//!   redb commit; the replay (fold) rate of the journal's events;
//! - [`ingest`]: bare redb bulk ingest of the moving vShard's data;
//! - [`quic`]: one QUIC stream between two node endpoints;
//! - [`writes`]: single-write latency and the throughput of many writers on
//!   a 3-node loopback cluster ([`EmbeddedCluster`], the migration
//!   workflows installed as `shardflow node` installs them);
//! - [`pause`]: MoveVShard under live writes, one vShard moving back and
//!   forth: the write pause as a client sees it, the base copy's rate;
//! - [`foreground`]: the concurrent writers' throughput before and during
//!   migrations;
//! - [`resume`]: a node restart to its in-flight migration resumed.
//!
//! [`Figures`] holds everything; [`Figures::report`] the fifteen figures
//! and ratios `--json` prints. Progress goes to an [`Observer`]. Every
//! figure is a measurement of this run: nothing here asserts a timing.

pub mod engine;
pub mod foreground;
pub mod ingest;
pub mod load;
pub mod migration;
pub mod pause;
pub mod quic;
pub mod report;
pub mod resume;
pub mod stats;
pub mod writes;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardflow_node::client::ClientError;
use shardflow_node::server::{MigrationLimits, MigrationTimings};
use shardflow_node::transport::{TlsError, TransportError};
use shardflow_steps::move_vshard::MoveVShardConfig;
use shardflow_workflow::{EngineError, JournalError};

use crate::embedded::{EmbeddedCluster, EmbeddedError, EmbeddedOptions};

pub use report::{BenchReport, Figures};

/// The vShard that moves, and one that stays put (written during the
/// migrations to compare single writes with the pause).
pub const MOVING_VSHARD: u16 = 100;
pub const STAY_VSHARD: u16 = 900;
/// Data groups of the bench cluster (3 replicas each on 3 nodes).
pub const GROUPS: u64 = 3;
/// Keys the probe writer cycles through on the moving vShard.
const PROBE_KEYS: usize = 100;

/// What to measure with.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Keys in the moving vShard (and in the bare ingest).
    pub keys: usize,
    /// Bytes per value.
    pub value_bytes: usize,
    /// Migrations under live writes (the pause and copy figures).
    pub migrations: usize,
    /// Sequential single writes timed; the concurrent run makes 16 times
    /// as many.
    pub writes: usize,
    /// Concurrent writers (throughput and foreground).
    pub writers: usize,
    /// Events replayed.
    pub replay_events: u64,
    /// The base copy's rate limit on every node, bytes per second (`None`:
    /// unlimited, as `shardflow node` without `--copy-rate`).
    pub copy_rate: Option<u64>,
    /// Base-copy chunks in flight per migration (`None`: the default).
    pub ingest_window: Option<usize>,
    /// Where the bench's files go (a fresh directory inside it, removed at
    /// the end); `None`: the system's temporary directory.
    pub dir: Option<PathBuf>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            keys: 10_000,
            value_bytes: 1_000,
            migrations: 20,
            writes: 400,
            writers: 64,
            replay_events: 1_000_000,
            copy_rate: None,
            ingest_window: None,
            dir: None,
        }
    }
}

impl BenchOptions {
    /// Migrations run under the concurrent writers: a fifth of the others,
    /// 1 to 4.
    pub fn foreground_migrations(&self) -> usize {
        (self.migrations / 5).clamp(1, 4)
    }
}

/// The stages of a run, in order (for progress displays).
pub const STAGES: [&str; 9] = [
    "engine: step overhead and replay",
    "bare redb ingest",
    "cluster start",
    "raw QUIC stream",
    "loading the moving vShard",
    "write baselines",
    "migrations under live writes",
    "migrations under concurrent writers",
    "driver restart",
];

/// Follows a run.
pub trait Observer: Send + Sync {
    /// Stage `index` of [`STAGES`] begins.
    fn stage(&self, index: usize);
    /// Progress inside the stage.
    fn step(&self, done: u64, total: u64);
    /// A line worth showing (one migration's figures...).
    fn note(&self, line: &str);
}

/// An observer that shows nothing.
pub struct Silent;

impl Observer for Silent {
    fn stage(&self, _: usize) {}
    fn step(&self, _: u64, _: u64) {}
    fn note(&self, _: &str) {}
}

/// Why the bench could not measure.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error(transparent)]
    Cluster(#[from] EmbeddedError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("certificates: {0}")]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("redb: {0}")]
    Redb(#[from] redb::Error),
    #[error("migration {id} ended {phase}: {reason}")]
    Migration {
        id: String,
        phase: &'static str,
        reason: String,
    },
    #[error("a bench task failed: {0}")]
    Task(String),
    /// A figure that could not be measured.
    #[error("{0}")]
    Measure(String),
}

/// Any redb error as a [`BenchError`].
pub(crate) fn redb_error(error: impl Into<redb::Error>) -> BenchError {
    BenchError::Redb(error.into())
}

/// Runs every measurement; the cluster is shut down and the directory
/// removed whatever happens.
pub async fn run(options: &BenchOptions, observer: &dyn Observer) -> Result<Figures, BenchError> {
    let started = Instant::now();
    let dir = bench_dir(options)?;
    let path = dir.path();
    let copy = MoveVShardConfig::default();

    observer.stage(0);
    let engine = engine::measure(path, options.replay_events).await?;

    observer.stage(1);
    let (keys, value_bytes) = (options.keys.max(1), options.value_bytes);
    let pairs = blocking(move || {
        let keys = load::keys_in(MOVING_VSHARD, "bench", keys);
        let value = load::value(value_bytes, 0);
        keys.into_iter().map(|key| (key, value.clone())).collect()
    })
    .await?;
    let pairs: Arc<Vec<(Vec<u8>, Vec<u8>)>> = Arc::new(pairs);
    let ingest = {
        let (pairs, path) = (Arc::clone(&pairs), path.to_path_buf());
        let (chunk_pairs, chunk_bytes) = (copy.chunk_pairs as usize, copy.chunk_bytes as usize);
        blocking(move || ingest::measure(&path, &pairs, chunk_pairs, chunk_bytes)).await??
    };

    observer.stage(2);
    let cluster_options = cluster_options(options.copy_rate, options.ingest_window);
    let mut cluster = EmbeddedCluster::start(&path.join("cluster"), cluster_options).await?;
    let measured = on_cluster(&mut cluster, options, &pairs, &copy, observer).await;
    cluster.shutdown().await;
    let (quic, writes, pause, foreground, resume) = measured?;
    Ok(Figures {
        options: options.clone(),
        engine,
        ingest,
        quic,
        writes,
        pause,
        foreground,
        resume,
        elapsed: started.elapsed(),
    })
}

type ClusterFigures = (
    quic::QuicFigures,
    writes::WriteFigures,
    pause::PauseFigures,
    foreground::ForegroundFigures,
    resume::ResumeFigures,
);

async fn on_cluster(
    cluster: &mut EmbeddedCluster,
    options: &BenchOptions,
    pairs: &[(Vec<u8>, Vec<u8>)],
    copy: &MoveVShardConfig,
    observer: &dyn Observer,
) -> Result<ClusterFigures, BenchError> {
    observer.stage(3);
    let vshard_bytes: u64 = pairs.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
    let stream_bytes = (vshard_bytes * 4).clamp(1 << 20, 64 << 20);
    let quic = quic::measure(cluster.certs_dir(), stream_bytes, copy.chunk_bytes as usize).await?;

    observer.stage(4);
    let writers = options.writers.max(1);
    let per_writer = pairs.len().div_ceil(writers);
    let lists: Vec<Vec<Vec<u8>>> = (pairs.chunks(per_writer))
        .map(|chunk| chunk.iter().map(|(key, _)| key.clone()).collect())
        .collect();
    load::write_once(cluster.client(), lists, options.value_bytes, Instant::now()).await?;

    observer.stage(5);
    let writes = writes::measure(
        cluster.client(),
        MOVING_VSHARD,
        options.writes.max(1),
        writers,
        (options.writes * 16).div_ceil(writers).max(1),
        options.value_bytes,
    )
    .await?;

    observer.stage(6);
    let mut mover = migration::Mover::new(cluster.client(), MOVING_VSHARD, GROUPS).await?;
    let probe_keys: Vec<Vec<u8>> = (pairs.iter().take(PROBE_KEYS))
        .map(|(key, _)| key.clone())
        .collect();
    let stay_keys = load::keys_in(STAY_VSHARD, "stay", PROBE_KEYS);
    let pause = pause::measure(
        cluster,
        &mut mover,
        probe_keys,
        stay_keys,
        options.value_bytes,
        options.migrations.max(1),
        observer,
    )
    .await?;

    observer.stage(7);
    let foreground = foreground::measure(
        cluster,
        &mut mover,
        writers,
        options.value_bytes,
        options.foreground_migrations(),
        observer,
    )
    .await?;

    observer.stage(8);
    let resume = resume::measure(cluster, &mut mover, GROUPS).await?;
    Ok((quic, writes, pause, foreground, resume))
}

/// The cluster: 3 nodes, [`GROUPS`] data groups of 3 replicas, a short
/// ghost time to live (the source's copy is dropped 200 ms after the
/// cut-over, so the vShard can move back at once), the copy rate limited
/// only if asked.
fn cluster_options(copy_rate: Option<u64>, ingest_window: Option<usize>) -> EmbeddedOptions {
    EmbeddedOptions {
        nodes: 3,
        groups: GROUPS,
        replicas: 3,
        spare_nodes: 0,
        migration: MigrationTimings {
            ghost_ttl: Duration::from_millis(200),
            reactor_interval: Duration::from_millis(50),
            ..MigrationTimings::default()
        },
        limits: MigrationLimits {
            copy_bytes_per_sec: copy_rate,
            copy_ingest_window: ingest_window,
            ..MigrationLimits::default()
        },
        ..EmbeddedOptions::default()
    }
}

fn bench_dir(options: &BenchOptions) -> Result<tempfile::TempDir, BenchError> {
    let builder = tempfile::Builder::new()
        .prefix("shardflow-bench-")
        .tempdir_in(options.dir.clone().unwrap_or_else(std::env::temp_dir));
    builder.map_err(|source| BenchError::Io {
        what: "create the bench directory",
        source,
    })
}

/// Runs CPU-bound `work` off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, BenchError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| BenchError::Task(error.to_string()))
}
