//! The migration reactors on an in-process cluster: a migration driven by
//! hand (its commands proposed through [`MigrationApi`], as a driver
//! would), whose driver then stops at a decision point, is finished by the
//! groups on their own (DESIGN §4, "Once decided, a migration finishes
//! without its driver").

mod support;

use support::*;

use std::time::Duration;

use shardflow_node::command::{AbortBy, Command, DataOp, MetadataOp, ResponseV1};
use shardflow_node::data::{VShardMigration, VShardState};
use shardflow_node::metadata::{MetadataState, MigrationPhase, MigrationRecord};
use shardflow_node::migration::MigrationApi;
use shardflow_node::server::MigrationTimings;
use tokio::time::Instant;

fn fast() -> MigrationTimings {
    MigrationTimings {
        reactor_interval: Duration::from_millis(50),
        ghost_ttl: Duration::from_millis(1_500),
        cleanup_batch: 3,
        batches_per_pass: 2,
        ..MigrationTimings::default()
    }
}

/// A migration of one vShard of group 1 to group 2, driven by hand.
struct Driver {
    api: MigrationApi,
    migration: String,
    vshard: u16,
    keys: Vec<Vec<u8>>,
}

impl Driver {
    /// Writes 10 keys to a vShard of group 1, then locks it (lease
    /// `lease_ms`), begins the incoming copy, tracks changes and copies
    /// the base.
    async fn start(cluster: &Cluster, migration: &str, lease_ms: u64) -> Driver {
        let api = cluster.nodes[0].migration_api();
        let metadata = api.metadata(soon()).await.expect("metadata");
        let vshard = metadata.vshards_of_group(1)[3];
        let keys = keys_of(vshard, 10);
        for key in &keys {
            cluster.put(key, b"before").await;
        }
        let driver = Driver {
            api,
            migration: migration.to_string(),
            vshard,
            keys,
        };
        let lock = MetadataOp::LockMigration {
            migration: driver.migration.clone(),
            vshard,
            from_group: 1,
            to_group: 2,
            driver_epoch: 1,
            now_ms: driver.api.now_ms(),
            lease_ms,
            max_concurrent: 4,
        };
        driver.propose(0, "Lock", Command::metadata(lock)).await;
        let begin = DataOp::BeginIncoming {
            vshard,
            migration: driver.migration.clone(),
        };
        driver.propose(2, "Begin", Command::data(begin)).await;
        let track = DataOp::TrackChanges {
            vshard,
            migration: driver.migration.clone(),
        };
        driver.propose(1, "Track", Command::data(track)).await;
        let chunk = (driver.api)
            .export_chunk(1, vshard, None, 1_000, 1 << 20, soon())
            .await
            .expect("chunk");
        assert!(!chunk.more);
        let ingest = DataOp::IngestChunk {
            vshard,
            migration: driver.migration.clone(),
            pairs: chunk.pairs,
        };
        driver.propose(2, "Copy/0", Command::data(ingest)).await;
        driver
    }

    async fn propose(&self, group: u64, step: &str, command: Command) -> ResponseV1 {
        let key = format!("{}/{step}/1", self.migration);
        propose(&self.api, group, command.with_idempotency_key(key)).await
    }

    /// Fences the source, drains the change table to exactly the fence,
    /// checks the digests agree, and commits `Transfer`.
    async fn cut_over(&self, fence_deadline_ms: u64) -> u64 {
        let fence = DataOp::Fence {
            vshard: self.vshard,
            migration: self.migration.clone(),
            fence_id: (1, 0),
            deadline_ms: fence_deadline_ms,
        };
        let ResponseV1::Fenced { fence_index } =
            self.propose(1, "Fence", Command::data(fence)).await
        else {
            panic!("Fence answers Fenced");
        };
        let status = self
            .api
            .vshard_status(1, self.vshard, soon())
            .await
            .expect("source");
        let Some(VShardMigration::Source(source)) = status.migration else {
            panic!("the source record");
        };
        let page = (self.api)
            .changes_after(1, self.vshard, source.since_index, 1_000, soon())
            .await
            .expect("changes");
        assert!(page.applied_index >= fence_index);
        let apply = DataOp::ApplyChanges {
            vshard: self.vshard,
            migration: self.migration.clone(),
            changes: page.changes,
        };
        self.propose(2, "Drain", Command::data(apply)).await;
        let source = self
            .api
            .digest(1, self.vshard, soon())
            .await
            .expect("digest");
        let target = self
            .api
            .digest(2, self.vshard, soon())
            .await
            .expect("digest");
        assert_eq!(
            source.digest, target.digest,
            "the copy equals the source at the fence"
        );
        let transfer = MetadataOp::Transfer {
            migration: self.migration.clone(),
            driver_epoch: 1,
            now_ms: self.api.now_ms(),
        };
        match self
            .propose(0, "Transfer", Command::metadata(transfer))
            .await
        {
            ResponseV1::Transferred { epoch } => epoch,
            other => panic!("Transfer answered {other:?}"),
        }
    }

    async fn record(&self) -> MigrationRecord {
        let metadata: MetadataState = self.api.metadata(soon()).await.expect("metadata");
        metadata
            .migration(&self.migration)
            .expect("the migration")
            .clone()
    }

    async fn state(&self, group: u64) -> Option<VShardState> {
        let status = self.api.vshard_status(group, self.vshard, soon()).await;
        status.expect("status").state
    }

    /// Polls `check` until it holds (30 s at most).
    async fn wait_until<F, Fut>(&self, what: &str, check: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !check().await {
            assert!(Instant::now() < deadline, "timed out waiting: {what}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

// Proves a driver that stops right after the point of no return strands
// nothing: the target activates and serves, the source becomes a ghost,
// then (after the ghost's time to live) holds nothing, and the lock is
// released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_transfer_the_groups_finish_the_migration() {
    let timings = MigrationTimings {
        ghost_ttl: Duration::from_secs(3),
        ..fast()
    };
    let ttl_ms = timings.ghost_ttl.as_millis() as u64;
    let cluster = cluster(2, &[1, 2, 3], timings).await;
    let driver = Driver::start(&cluster, "m-transfer", 60_000).await;
    cluster.put(&driver.keys[0], b"during").await;
    let epoch = driver.cut_over(driver.api.now_ms() + 60_000).await;
    // The driver stops here.

    let ghost = Some(VShardState::Moved { to_group: 2, epoch });
    driver
        .wait_until(
            "the target serves the vShard and the source is a ghost",
            || async {
                driver.state(2).await == Some(VShardState::Owned) && driver.state(1).await == ghost
            },
        )
        .await;
    // Before the ghost's time to live, the ghost keeps every key.
    let decided = driver.record().await.decided_at_ms.expect("decided");
    let copy = driver
        .api
        .digest(1, driver.vshard, soon())
        .await
        .expect("digest");
    if driver.api.now_ms() < decided + ttl_ms {
        assert_eq!(copy.digest.key_count, 10, "no cleanup before the TTL");
    }
    assert_eq!(cluster.get(&driver.keys[0]).await, Some(b"during".to_vec()));
    for key in &driver.keys[1..] {
        assert_eq!(cluster.get(key).await, Some(b"before".to_vec()));
    }
    cluster.put(&driver.keys[1], b"after").await;

    driver
        .wait_until(
            "the source holds nothing and the lock is released",
            || async {
                driver.state(1).await.is_none() && driver.record().await.finished.is_some()
            },
        )
        .await;
    let record = driver.record().await;
    assert_eq!(record.phase, MigrationPhase::Transferred { epoch });
    let metadata = driver.api.metadata(soon()).await.expect("metadata");
    assert_eq!(metadata.route(driver.vshard).map(|r| r.group), Some(2));
    assert!(metadata.live_migration_of(driver.vshard).is_none());
    assert_eq!(cluster.get(&driver.keys[1]).await, Some(b"after".to_vec()));
    let source = driver
        .api
        .digest(1, driver.vshard, soon())
        .await
        .expect("digest");
    assert_eq!(source.digest.key_count, 0, "the source copy was deleted");
    cluster.shutdown().await;
}

// Proves a driver that dies before fencing strands nothing: once its lease
// expires the metadata leader aborts, the target drops its incoming copy,
// the source serves writes again, and the lock is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_lease_expiry_the_groups_undo_the_migration() {
    let cluster = cluster(2, &[1, 2, 3], fast()).await;
    let driver = Driver::start(&cluster, "m-lease", 1_000).await;
    // The driver stops here (during CatchUp), with no fence.

    driver
        .wait_until("the migration is aborted and finished", || async {
            driver.record().await.finished.is_some()
        })
        .await;
    let record = driver.record().await;
    assert_eq!(record.phase, MigrationPhase::Aborted);
    assert_eq!(record.abort.map(|a| a.by), Some(AbortBy::LeaseExpired));
    assert_eq!(driver.state(2).await, None, "the target holds nothing");
    let target = driver
        .api
        .digest(2, driver.vshard, soon())
        .await
        .expect("digest");
    assert_eq!(target.digest.key_count, 0);
    assert_eq!(driver.state(1).await, Some(VShardState::Owned));
    cluster.put(&driver.keys[0], b"after").await;
    assert_eq!(cluster.get(&driver.keys[0]).await, Some(b"after".to_vec()));
    // A late command of the dead driver cannot re-track the vShard.
    let track = DataOp::TrackChanges {
        vshard: driver.vshard,
        migration: driver.migration.clone(),
    };
    let late = driver
        .api
        .propose(1, Command::data(track), soon())
        .await
        .expect("answered");
    assert!(late.rejection().is_some(), "{late:?}");
    cluster.shutdown().await;
}

// Proves a driver that dies between the fence and Transfer strands
// nothing: past the fence deadline the source asks the metadata group to
// abort, and only then lifts the fence; the vShard serves writes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_fence_deadline_the_source_aborts_and_unfences() {
    let cluster = cluster(2, &[1, 2, 3], fast()).await;
    let driver = Driver::start(&cluster, "m-fence", 60_000).await;
    let fence = DataOp::Fence {
        vshard: driver.vshard,
        migration: driver.migration.clone(),
        fence_id: (1, 0),
        deadline_ms: driver.api.now_ms() + 1_000,
    };
    driver.propose(1, "Fence", Command::data(fence)).await;
    // The driver stops here, fenced.
    let state = driver.state(1).await;
    assert!(
        matches!(state, Some(VShardState::Fenced { .. })),
        "{state:?}"
    );

    driver
        .wait_until("the migration is aborted and finished", || async {
            driver.record().await.finished.is_some()
        })
        .await;
    let record = driver.record().await;
    assert_eq!(record.phase, MigrationPhase::Aborted);
    assert_eq!(
        record.abort.map(|a| a.by),
        Some(AbortBy::Source { group: 1 })
    );
    assert_eq!(driver.state(1).await, Some(VShardState::Owned));
    assert_eq!(driver.state(2).await, None);
    cluster.put(&driver.keys[2], b"after").await;
    assert_eq!(cluster.get(&driver.keys[2]).await, Some(b"after".to_vec()));
    // The dead driver's Transfer, arriving late, loses.
    let transfer = MetadataOp::Transfer {
        migration: driver.migration.clone(),
        driver_epoch: 1,
        now_ms: driver.api.now_ms(),
    };
    let late = driver
        .api
        .propose(0, Command::metadata(transfer), soon())
        .await
        .expect("answered");
    assert!(late.rejection().is_some(), "{late:?}");
    cluster.shutdown().await;
}
