//! Node settings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How the node lays out its Raft data on disk.
///
/// The default is chosen by measurement (`examples/write_bench.rs`, figures
/// in BENCHMARKS.md): with 64 concurrent writers over 4 groups, one file per
/// group gave 1.45x the throughput of one file per node at about the same
/// single-write latency, because groups stop queueing on one redb writer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StoreLayout {
    /// One redb file for every group (`DATA/raft.redb`): groups serialize on
    /// its single writer.
    OneFile,
    /// One redb file per group (`DATA/group-G.redb`): groups commit in
    /// parallel, each with its own fsync.
    #[default]
    FilePerGroup,
}

/// Raft timing. The defaults leave headroom for a loaded 2-core machine.
#[derive(Clone, Debug)]
pub struct RaftTimings {
    pub heartbeat: Duration,
    pub election_min: Duration,
    pub election_max: Duration,
    /// Bound on one streamed snapshot.
    pub install_snapshot_timeout: Duration,
    /// Take a snapshot after this many applied entries.
    pub snapshot_after_entries: u64,
    /// Log entries kept behind a snapshot (a follower further behind gets
    /// the snapshot instead).
    pub logs_kept_after_snapshot: u64,
}

impl Default for RaftTimings {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_millis(150),
            election_min: Duration::from_millis(750),
            election_max: Duration::from_millis(1500),
            install_snapshot_timeout: Duration::from_secs(30),
            snapshot_after_entries: 20_000,
            logs_kept_after_snapshot: 1_000,
        }
    }
}

/// The migration reactors' settings (`crate::migration::reactor`), and how
/// long reconcile keeps a replica moving here before it is a learner.
#[derive(Clone, Debug)]
pub struct MigrationTimings {
    /// How often the reactors look at the registry and the local groups.
    pub reactor_interval: Duration,
    /// How long a ghost (the source copy of a moved vShard) stays, counted
    /// from the `Transfer` commit, before cleanup deletes it.
    pub ghost_ttl: Duration,
    /// Keys one `CleanupBatch` / `DropIncoming` deletes.
    pub cleanup_batch: u64,
    /// Batches one reactor pass proposes per vShard before it yields.
    pub batches_per_pass: u32,
    /// How long a replica started by `EnsureGroup` (a replica moving to
    /// this node) runs while its group's leader does not name this node:
    /// the move adds it as a learner meanwhile. Past it, reconcile stops a
    /// replica the leader excludes (an abandoned move). Every `EnsureGroup`
    /// starts it again. Longer than an `EnsureGroup` then `add_learner`
    /// take on a loaded node (a MoveReplica attempt bounds the two calls by
    /// its call timeout each, 10 s by default, and re-sends `EnsureGroup`
    /// before it retries `add_learner`).
    pub ensure_group_grace: Duration,
}

impl Default for MigrationTimings {
    fn default() -> Self {
        Self {
            reactor_interval: Duration::from_millis(250),
            ghost_ttl: Duration::from_secs(60),
            cleanup_batch: 1_000,
            batches_per_pass: 16,
            ensure_group_grace: Duration::from_secs(30),
        }
    }
}

/// Limits on the migrations this node drives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrationLimits {
    /// Live vShard migrations allowed in the cluster: a submission beyond
    /// it is refused here, and the metadata group's `LockMigration`
    /// enforces it again cluster-wide.
    pub max_concurrent: u32,
    /// The base copy's rate, in key and value bytes per second (`None`:
    /// unlimited).
    pub copy_bytes_per_sec: Option<u64>,
    /// How many base-copy chunks a migration this node drives ingests at
    /// once (`None`: the workflow's default).
    pub copy_ingest_window: Option<usize>,
    /// The write-pause budget of a `migrate vshard` that names none.
    pub default_pause_budget_ms: u64,
}

impl Default for MigrationLimits {
    fn default() -> Self {
        Self {
            max_concurrent: 4,
            copy_bytes_per_sec: None,
            copy_ingest_window: None,
            default_pause_budget_ms: 2_000,
        }
    }
}

/// Everything a node needs to start.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: u64,
    /// Where to listen (port 0 picks one; read it back with `local_addr`).
    pub listen: SocketAddr,
    /// Holds the Raft data and the workflow journal.
    pub data_dir: PathBuf,
    /// Holds `ca.pem` and this node's `node-N.pem` / `node-N.key`.
    pub certs_dir: PathBuf,
    pub raft: RaftTimings,
    pub layout: StoreLayout,
    pub migration: MigrationTimings,
    pub limits: MigrationLimits,
}

impl NodeConfig {
    /// A configuration with default timings and layout.
    pub fn new(id: u64, listen: SocketAddr, data_dir: PathBuf, certs_dir: PathBuf) -> Self {
        Self {
            id,
            listen,
            data_dir,
            certs_dir,
            raft: RaftTimings::default(),
            layout: StoreLayout::default(),
            migration: MigrationTimings::default(),
            limits: MigrationLimits::default(),
        }
    }

    /// The openraft configuration these timings give.
    pub(crate) fn openraft(&self) -> Result<openraft::Config, String> {
        let millis = |d: Duration| d.as_millis() as u64;
        openraft::Config {
            cluster_name: "shardflow".into(),
            heartbeat_interval: millis(self.raft.heartbeat),
            election_timeout_min: millis(self.raft.election_min),
            election_timeout_max: millis(self.raft.election_max),
            install_snapshot_timeout: millis(self.raft.install_snapshot_timeout),
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(
                self.raft.snapshot_after_entries,
            ),
            max_in_snapshot_log_to_keep: self.raft.logs_kept_after_snapshot,
            purge_batch_size: 64,
            ..openraft::Config::default()
        }
        .validate()
        .map_err(|error| error.to_string())
    }
}
