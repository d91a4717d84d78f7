//! The migration commands and reads on the real state machines: the
//! metadata group and two data groups (source and target) in one redb file
//! on a temp dir, driven through openraft's `RaftStateMachine::apply` in
//! batches, exactly as Raft would apply them — no network, no running Raft,
//! no sleeps. Along the way every test checks the invariants of DESIGN §5
//! that the state machines own: (2) never two writable copies of a vShard,
//! (3) routing epochs only grow, (5) after an abort the target holds
//! nothing of the vShard, after cleanup the source holds nothing.

use std::collections::BTreeMap;

use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, RaftSnapshotBuilder};
use shardflow_node::command::{
    AbortBy, Change, Command, DataOp, FenceId, MetadataOp, Rejection, Response, ResponseV1,
    METADATA_GROUP,
};
use shardflow_node::data::{VShardMigration, VShardState};
use shardflow_node::metadata::{MetadataState, MigrationPhase, Route};
use shardflow_node::raft::types::{Entry, EntryPayload, LogId};
use shardflow_node::raft::{group_storage, ChangesError, ReadError, StateMachineStore};
use shardflow_node::vshard::{vshard_of, VSHARDS};
use shardflow_store::RaftStore;
use tempfile::TempDir;

/// The vShard that moves: owned by group 1 at bootstrap (even vShards are).
const V: u16 = 10;
const SOURCE: u64 = 1;
const TARGET: u64 = 2;
const MIGRATION: &str = "wf-1-7";

fn log_id(index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

/// `count` distinct keys of vShard `vshard`, with a tag in their name.
fn keys_in(vshard: u16, tag: &str, count: usize) -> Vec<Vec<u8>> {
    (0u32..)
        .map(|i| format!("{tag}-{i}").into_bytes())
        .filter(|key| vshard_of(key) == vshard)
        .take(count)
        .collect()
}

/// One group's state machine, fed entries at increasing log indexes.
struct Group {
    sm: StateMachineStore,
    next_index: u64,
}

impl Group {
    fn new(sm: StateMachineStore) -> Self {
        Self { sm, next_index: 1 }
    }

    /// Applies `commands` as one batch of entries; one response each.
    async fn batch(&mut self, commands: Vec<Command>) -> Vec<Response> {
        let entries: Vec<Entry> = commands
            .into_iter()
            .map(|command| {
                let entry = Entry {
                    log_id: log_id(self.next_index),
                    payload: EntryPayload::Normal(command),
                };
                self.next_index += 1;
                entry
            })
            .collect();
        let count = entries.len();
        let responses = self.sm.apply(entries).await.expect("apply");
        assert_eq!(responses.len(), count, "one response per entry");
        responses
    }

    async fn apply(&mut self, command: Command) -> Response {
        self.batch(vec![command]).await.remove(0)
    }

    /// The log index the next entry gets.
    fn next(&self) -> u64 {
        self.next_index
    }
}

fn answer(response: Response) -> Result<ResponseV1, Rejection> {
    match response {
        Response::V1(ResponseV1::Rejected(rejection)) => Err(rejection),
        Response::V1(answer) => Ok(answer),
    }
}

const DONE: Result<ResponseV1, Rejection> = Ok(ResponseV1::Done);

/// The metadata group and two data groups, plus a client-side oracle of
/// acknowledged writes to the moving vShard.
struct Cluster {
    _dir: TempDir,
    store: RaftStore,
    meta: Group,
    source: Group,
    target: Group,
    /// The metadata state after the last metadata command.
    last_meta: MetadataState,
    /// Acknowledged writes to `V`: key -> value (`None`: deleted).
    acknowledged: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Cluster {
    async fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = RaftStore::open(dir.path().join("node.redb")).expect("open redb");
        let group = |id| Group::new(group_storage(&store, id).1);
        let mut cluster = Cluster {
            meta: group(METADATA_GROUP),
            source: group(SOURCE),
            target: group(TARGET),
            store,
            _dir: dir,
            last_meta: MetadataState::default(),
            acknowledged: BTreeMap::new(),
        };
        let bootstrap = MetadataOp::Bootstrap {
            nodes: (1..=3).map(|n| (n, format!("n{n}:7000"))).collect(),
            groups: vec![(0, vec![1, 2, 3]), (1, vec![1, 2, 3]), (2, vec![1, 2, 3])],
            routing: (0..VSHARDS).map(|v| u64::from(v % 2) + 1).collect(),
        };
        assert_eq!(cluster.meta(bootstrap).await, DONE);
        let own = |vshards: Vec<u16>| Command::data(DataOp::AssignVShards { vshards });
        let evens = (0..VSHARDS).filter(|v| v % 2 == 0).collect();
        let odds = (0..VSHARDS).filter(|v| v % 2 == 1).collect();
        assert!(cluster.source.apply(own(evens)).await.is_ok());
        assert!(cluster.target.apply(own(odds)).await.is_ok());
        cluster.check_writable_copies().await;
        cluster
    }

    /// Applies a metadata command; checks the metadata invariants and that
    /// routing epochs only grow (invariant 3).
    async fn meta(&mut self, op: MetadataOp) -> Result<ResponseV1, Rejection> {
        let response = answer(self.meta.apply(Command::metadata(op.clone())).await);
        let now = self.meta.sm.metadata().await.expect("metadata");
        assert_eq!(now.validate(), Ok(()), "after {op:?}");
        assert_eq!(self.last_meta.check_successor(&now), Ok(()), "after {op:?}");
        for (old, new) in self.last_meta.routing.iter().zip(&now.routing) {
            assert!(new.epoch >= old.epoch, "invariant 3: an epoch went back");
        }
        self.last_meta = now;
        response
    }

    async fn src(&mut self, op: DataOp) -> Result<ResponseV1, Rejection> {
        let response = answer(self.source.apply(Command::data(op)).await);
        self.check_writable_copies().await;
        response
    }

    async fn tgt(&mut self, op: DataOp) -> Result<ResponseV1, Rejection> {
        let response = answer(self.target.apply(Command::data(op)).await);
        self.check_writable_copies().await;
        response
    }

    /// Invariant 2: at most one group holds `V` as `Owned` (the only state
    /// that accepts writes).
    async fn check_writable_copies(&self) {
        let mut writable = 0;
        for group in [&self.source, &self.target] {
            if group.sm.vshard_state(V).await.expect("state") == Some(VShardState::Owned) {
                writable += 1;
            }
        }
        assert!(
            writable <= 1,
            "invariant 2: {writable} writable copies of vShard {V}"
        );
    }

    /// Client writes to `V` on `group`, in one batch; the acknowledged ones
    /// go into the oracle.
    async fn write(&mut self, on: u64, writes: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Vec<Response> {
        let commands = writes
            .iter()
            .map(|(key, value)| match value {
                Some(value) => Command::put(key.clone(), value.clone()),
                None => Command::delete(key.clone()),
            })
            .collect();
        let group = if on == SOURCE {
            &mut self.source
        } else {
            &mut self.target
        };
        let responses = group.batch(commands).await;
        for ((key, value), response) in writes.into_iter().zip(&responses) {
            if response.is_ok() {
                self.acknowledged.insert(key, value);
            }
        }
        self.check_writable_copies().await;
        responses
    }

    /// Every pair of `V` in `group`, read raw (whatever its state).
    fn pairs(&self, group: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
        let export = self
            .store
            .group(group)
            .export_state_machine()
            .expect("export");
        (export.kv.into_iter())
            .filter(|(vshard, _, _)| *vshard == V)
            .map(|(_, key, value)| (key, value))
            .collect()
    }

    /// Invariant 5: `group` holds nothing of `V`: no key, no state, no
    /// migration record, no recorded change.
    fn assert_holds_nothing(&self, group: u64) {
        let export = self
            .store
            .group(group)
            .export_state_machine()
            .expect("export");
        assert!(
            !export.kv.iter().any(|(v, _, _)| *v == V),
            "keys of {V} left in {group}"
        );
        assert!(
            !export.vshards.iter().any(|(v, _)| *v == V),
            "state of {V} left in {group}"
        );
        let records = export.vshard_migrations.iter().any(|(v, _)| *v == V);
        assert!(!records, "migration record of {V} left in {group}");
        let changes = export.changes.iter().any(|(v, _, _)| *v == V);
        assert!(!changes, "changes of {V} left in {group}");
    }

    /// What the oracle says `V` holds, in key order.
    fn expected_pairs(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        (self.acknowledged.iter())
            .filter_map(|(key, value)| value.clone().map(|value| (key.clone(), value)))
            .collect()
    }
}

fn lock(driver_epoch: u64, now_ms: u64, lease_ms: u64) -> MetadataOp {
    MetadataOp::LockMigration {
        migration: MIGRATION.into(),
        vshard: V,
        from_group: SOURCE,
        to_group: TARGET,
        driver_epoch,
        now_ms,
        lease_ms,
        max_concurrent: 4,
    }
}

fn m() -> String {
    MIGRATION.to_string()
}

fn fence(fence_id: FenceId) -> DataOp {
    DataOp::Fence {
        vshard: V,
        migration: m(),
        fence_id,
        deadline_ms: 60_000,
    }
}

fn unfence(up_to: FenceId) -> DataOp {
    DataOp::Unfence {
        vshard: V,
        migration: m(),
        up_to,
    }
}

fn put(key: &[u8], value: &str) -> (Vec<u8>, Option<Vec<u8>>) {
    (key.to_vec(), Some(value.as_bytes().to_vec()))
}

fn delete(key: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
    (key.to_vec(), None)
}

/// Ships every recorded change after `after` (pages of `page`) to the
/// target and trims what it applied on the source; returns the new cursor
/// and the applied index of the last read.
async fn catch_up(cluster: &mut Cluster, mut after: u64, page: usize) -> (u64, u64) {
    loop {
        let read = cluster.source.sm.changes_after(V, after, page).await;
        let read = read.expect("the changes are tracked");
        assert_eq!(read.migration, MIGRATION);
        if let Some(&(last, _)) = read.changes.last() {
            let op = DataOp::ApplyChanges {
                vshard: V,
                migration: m(),
                changes: read.changes.clone(),
            };
            let applied = Ok(ResponseV1::ChangesApplied { up_to_index: last });
            assert_eq!(cluster.tgt(op).await, applied);
            let trim = DataOp::TrimChanges {
                vshard: V,
                migration: m(),
                up_to_index: last,
            };
            assert_eq!(cluster.src(trim).await, DONE);
            after = last;
        }
        if read.changes.len() < page {
            return (after, read.applied_index);
        }
    }
}

/// The whole MoveVShard sequence, with client writes during the copy and
/// the catch-up, ending with the target owning everything acknowledged and
/// the source holding nothing.
#[tokio::test]
async fn full_transfer_sequence() {
    let mut cluster = Cluster::new().await;
    let keys = keys_in(V, "user", 24);
    let load = keys.iter().map(|k| put(k, "v0")).collect();
    let loaded = cluster.write(SOURCE, load).await;
    assert!(loaded.iter().all(Response::is_ok));

    // Lock.
    let locked = Ok(ResponseV1::Locked {
        driver_epoch: 1,
        lease_expires_ms: 31_000,
    });
    assert_eq!(cluster.meta(lock(1, 1_000, 30_000)).await, locked);
    let renewed = MetadataOp::RenewLease {
        migration: m(),
        driver_epoch: 1,
        now_ms: 2_000,
        lease_ms: 30_000,
    };
    assert!(matches!(
        cluster.meta(renewed).await,
        Ok(ResponseV1::Locked {
            lease_expires_ms: 32_000,
            ..
        })
    ));

    // Track changes (no base copy before: it could miss a write), then
    // begin the incoming copy.
    let untracked = cluster.source.sm.export_chunk(V, None, 10, 1 << 20).await;
    assert!(matches!(
        untracked,
        Err(ReadError::Rejected(Rejection::WrongState { .. }))
    ));
    let since = cluster.source.next();
    let track = DataOp::TrackChanges {
        vshard: V,
        migration: m(),
    };
    let tracking = Ok(ResponseV1::Tracking { since_index: since });
    assert_eq!(cluster.src(track.clone()).await, tracking);
    assert_eq!(cluster.src(track).await, tracking, "idempotent");
    let begin = DataOp::BeginIncoming {
        vshard: V,
        migration: m(),
    };
    assert_eq!(cluster.tgt(begin).await, DONE);
    let incoming_read = cluster.target.sm.get(keys[0].clone()).await;
    assert!(
        matches!(
            incoming_read,
            Err(ReadError::Rejected(Rejection::NotOwner { .. }))
        ),
        "an Incoming copy is invisible to clients"
    );
    let export_target = cluster.target.sm.export_chunk(V, None, 10, 1 << 20).await;
    assert!(matches!(
        export_target,
        Err(ReadError::Rejected(Rejection::WrongState { .. }))
    ));

    // BaseCopy, in chunks, with writes between them (captured as changes).
    let mut cursor: Option<Vec<u8>> = None;
    let mut chunk_no = 0;
    let late = keys_in(V, "late", 4);
    loop {
        let chunk = cluster
            .source
            .sm
            .export_chunk(V, cursor.clone(), 7, 1 << 20)
            .await
            .expect("export");
        assert_eq!(chunk.migration, MIGRATION);
        assert_eq!(
            chunk.applied_index,
            cluster.source.next() - 1,
            "one consistent read"
        );
        if chunk.pairs.is_empty() {
            break;
        }
        cursor = chunk.pairs.last().map(|(k, _)| k.clone());
        let ingest = Command::data(DataOp::IngestChunk {
            vshard: V,
            migration: m(),
            pairs: chunk.pairs,
        })
        .with_idempotency_key(format!("{MIGRATION}/BaseCopy#{chunk_no}"));
        assert_eq!(answer(cluster.target.apply(ingest.clone()).await), DONE);
        assert_eq!(
            answer(cluster.target.apply(ingest).await),
            DONE,
            "deduplicated"
        );
        let writes = match chunk_no {
            0 => vec![put(&keys[1], "v1"), put(&keys[20], "v1"), delete(&keys[2])],
            1 => vec![put(&late[0], "new"), delete(&keys[3]), put(&keys[1], "v2")],
            _ => vec![put(&late[1], "new")],
        };
        let written = cluster.write(SOURCE, writes).await;
        assert!(written.iter().all(Response::is_ok));
        chunk_no += 1;
        if !chunk.more {
            break;
        }
    }
    assert!(chunk_no >= 4, "24 keys in chunks of 7");

    // CatchUp: the changes since tracking began, in pages, trimmed as
    // applied; more writes keep coming.
    let (after, _) = catch_up(&mut cluster, since, 3).await;
    let trimmed = cluster.source.sm.changes_after(V, since, 10).await;
    assert!(
        matches!(trimmed, Err(ChangesError::Unavailable { .. })),
        "trimmed changes are not served again: {trimmed:?}"
    );
    let writes = vec![put(&late[2], "new"), delete(&late[0]), put(&keys[5], "v3")];
    cluster.write(SOURCE, writes).await;
    let (after, _) = catch_up(&mut cluster, after, 2).await;

    // CutOver: fence, drain exactly to the fence, compare digests.
    let fence_index = cluster.source.next();
    let fenced = Ok(ResponseV1::Fenced { fence_index });
    assert_eq!(cluster.src(fence((1, 0))).await, fenced);
    assert_eq!(
        cluster.source.sm.fence_index(V).await.expect("read"),
        Some(fence_index)
    );
    let refused = cluster.write(SOURCE, vec![put(&late[3], "fenced")]).await;
    let rejection = refused[0]
        .rejection()
        .expect("a fenced vShard refuses writes");
    assert!(rejection.is_retryable(), "{rejection:?}");
    let read = cluster.source.sm.get(keys[0].clone()).await;
    assert!(
        matches!(read, Err(ReadError::Rejected(Rejection::Fenced { .. }))),
        "and reads"
    );
    let (drained, applied) = catch_up(&mut cluster, after, 4).await;
    assert!(
        drained < fence_index && applied >= fence_index,
        "drained exactly to the fence"
    );
    let at_source = cluster.source.sm.vshard_digest(V).await.expect("digest");
    let at_target = cluster.target.sm.vshard_digest(V).await.expect("digest");
    assert_eq!(
        at_source.digest, at_target.digest,
        "source and target agree"
    );
    assert_eq!(
        at_source.digest.key_count,
        cluster.expected_pairs().len() as u64
    );
    assert_eq!(
        at_target.state,
        Some(VShardState::Incoming { migration: m() })
    );

    // Transfer: the point of no return; the routing epoch grows.
    let transfer = MetadataOp::Transfer {
        migration: m(),
        driver_epoch: 1,
        now_ms: 5_000,
    };
    let transferred = Ok(ResponseV1::Transferred { epoch: 2 });
    assert_eq!(cluster.meta(transfer.clone()).await, transferred);
    assert_eq!(cluster.meta(transfer).await, transferred, "idempotent");
    let route = cluster.last_meta.route(V);
    assert_eq!(
        route,
        Some(Route {
            group: TARGET,
            epoch: 2
        })
    );
    let too_late = MetadataOp::AbortMigration {
        migration: m(),
        by: AbortBy::Source { group: SOURCE },
        reason: "fence deadline".into(),
        now_ms: 6_000,
    };
    assert!(matches!(
        cluster.meta(too_late).await,
        Err(Rejection::MigrationTransferred { epoch: 2, .. })
    ));

    // Activate on the target, ghost on the source.
    let activate = DataOp::Activate {
        vshard: V,
        migration: m(),
        epoch: 2,
    };
    assert_eq!(cluster.tgt(activate.clone()).await, DONE);
    assert_eq!(cluster.tgt(activate).await, DONE, "idempotent");
    let moved = DataOp::MarkMoved {
        vshard: V,
        migration: m(),
        to_group: TARGET,
        epoch: 2,
    };
    assert_eq!(cluster.src(moved).await, DONE);
    let ghost_read = cluster.source.sm.get(keys[0].clone()).await;
    assert!(matches!(
        ghost_read,
        Err(ReadError::Rejected(Rejection::Moved {
            to_group: TARGET,
            epoch: 2,
            ..
        }))
    ));
    assert!(matches!(
        cluster.source.sm.changes_after(V, drained, 10).await,
        Err(ChangesError::Unavailable { .. })
    ));
    let after_move = cluster
        .write(TARGET, vec![put(&late[3], "on the target")])
        .await;
    assert!(after_move[0].is_ok());

    // Invariant 1 on the way: every acknowledged write is on the target.
    assert_eq!(cluster.pairs(TARGET), cluster.expected_pairs());
    for (key, value) in cluster.expected_pairs() {
        assert_eq!(cluster.target.sm.get(key).await.expect("read"), Some(value));
    }

    // Cleanup in bounded batches, then drop the ghost.
    let mut batches = 0;
    loop {
        let batch = DataOp::CleanupBatch {
            vshard: V,
            migration: m(),
            limit: 7,
        };
        let Ok(ResponseV1::Deleted { deleted, done }) = cluster.src(batch).await else {
            panic!("a cleanup batch answers Deleted");
        };
        assert!(deleted <= 7);
        batches += 1;
        if done {
            break;
        }
    }
    assert!(batches >= 3, "{batches} batches");
    let drop_ghost = DataOp::DropGhost {
        vshard: V,
        migration: m(),
    };
    assert_eq!(cluster.src(drop_ghost).await, DONE);
    cluster.assert_holds_nothing(SOURCE);

    // Finish: the lock is released; the vShard may move again.
    let finish = MetadataOp::FinishMigration { migration: m() };
    assert_eq!(cluster.meta(finish).await, DONE);
    assert_eq!(cluster.last_meta.live_migration_of(V), None);
    let back = MetadataOp::LockMigration {
        migration: "wf-1-8".into(),
        vshard: V,
        from_group: TARGET,
        to_group: SOURCE,
        driver_epoch: 1,
        now_ms: 9_000,
        lease_ms: 1_000,
        max_concurrent: 1,
    };
    assert!(matches!(
        cluster.meta(back).await,
        Ok(ResponseV1::Locked { .. })
    ));
}

/// An abandoned migration: a retreat and a late `Unfence` of the older
/// attempt, the driver dies, the lease-expired abort is refused before the
/// expiry and accepted at it, the late `Transfer` loses, the source is
/// released and the target drops its copy in batches.
#[tokio::test]
async fn abort_sequence() {
    let mut cluster = Cluster::new().await;
    let keys = keys_in(V, "user", 10);
    cluster
        .write(SOURCE, keys.iter().map(|k| put(k, "v0")).collect())
        .await;
    assert!(matches!(
        cluster.meta(lock(1, 1_000, 5_000)).await,
        Ok(ResponseV1::Locked {
            lease_expires_ms: 6_000,
            ..
        })
    ));
    let since = cluster.source.next();
    let track = DataOp::TrackChanges {
        vshard: V,
        migration: m(),
    };
    assert!(cluster.src(track).await.is_ok());
    let begin = DataOp::BeginIncoming {
        vshard: V,
        migration: m(),
    };
    assert_eq!(cluster.tgt(begin).await, DONE);
    let chunk = cluster
        .source
        .sm
        .export_chunk(V, None, 100, 1 << 20)
        .await
        .expect("export");
    assert!(!chunk.more);
    let ingest = DataOp::IngestChunk {
        vshard: V,
        migration: m(),
        pairs: chunk.pairs,
    };
    assert_eq!(cluster.tgt(ingest).await, DONE);
    cluster
        .write(SOURCE, vec![put(&keys[0], "v1"), delete(&keys[1])])
        .await;
    let (after, _) = catch_up(&mut cluster, since, 10).await;

    // Attempt 0 fences, overruns its budget and retreats; attempt 1 fences
    // again. The retreat's `Unfence` delivered late must not lift the new
    // fence, nor may a late duplicate of the first `Fence` re-fence.
    let first = cluster.source.next();
    let keyed_fence =
        Command::data(fence((1, 0))).with_idempotency_key(format!("{MIGRATION}/CutOver"));
    let fenced = Ok(ResponseV1::Fenced { fence_index: first });
    assert_eq!(
        answer(cluster.source.apply(keyed_fence.clone()).await),
        fenced
    );
    assert_eq!(cluster.src(unfence((1, 0))).await, DONE);
    assert_eq!(
        answer(cluster.source.apply(keyed_fence).await),
        fenced,
        "a keyed re-proposal answers the first response and does nothing"
    );
    assert_eq!(
        cluster.source.sm.vshard_state(V).await.expect("state"),
        Some(VShardState::Owned)
    );
    assert!(matches!(
        cluster.src(fence((1, 0))).await,
        Err(Rejection::FenceLifted { .. })
    ));
    cluster
        .write(SOURCE, vec![put(&keys[2], "between attempts")])
        .await;
    let second = cluster.source.next();
    assert_eq!(
        cluster.src(fence((1, 1))).await,
        Ok(ResponseV1::Fenced {
            fence_index: second
        })
    );
    assert_eq!(
        cluster.src(unfence((1, 0))).await,
        Err(Rejection::NewerFence {
            vshard: V,
            held: (1, 1),
            asked: (1, 0)
        }),
        "an Unfence with an older id is refused"
    );
    assert!(cluster
        .source
        .sm
        .fence_index(V)
        .await
        .expect("read")
        .is_some());
    catch_up(&mut cluster, after, 10).await;

    // The driver dies. Its lease runs out; the reaper aborts at expiry.
    assert_eq!(
        cluster.last_meta.expired_leases(5_999),
        Vec::<String>::new()
    );
    let reap = |now_ms| MetadataOp::AbortMigration {
        migration: m(),
        by: AbortBy::LeaseExpired,
        reason: "the driver's lease expired".into(),
        now_ms,
    };
    assert_eq!(
        cluster.meta(reap(5_999)).await,
        Err(Rejection::LeaseNotExpired {
            migration: m(),
            expires_ms: 6_000,
            now_ms: 5_999
        })
    );
    assert_eq!(cluster.last_meta.expired_leases(6_000), vec![m()]);
    assert_eq!(cluster.meta(reap(6_000)).await, DONE);
    let transfer = MetadataOp::Transfer {
        migration: m(),
        driver_epoch: 1,
        now_ms: 6_001,
    };
    assert!(matches!(
        cluster.meta(transfer).await,
        Err(Rejection::MigrationAborted { .. })
    ));
    assert_eq!(
        cluster.last_meta.route(V),
        Some(Route {
            group: SOURCE,
            epoch: 1
        })
    );
    let record = cluster.last_meta.migration(MIGRATION).expect("kept");
    assert_eq!(record.phase, MigrationPhase::Aborted);
    let finish = MetadataOp::FinishMigration { migration: m() };

    // The source reacts: unfenced, writable, no longer tracking, and the
    // migration can never fence it again.
    let release = DataOp::ReleaseSource {
        vshard: V,
        migration: m(),
    };
    assert_eq!(cluster.src(release.clone()).await, DONE);
    assert_eq!(cluster.src(release).await, DONE, "idempotent");
    let written = cluster
        .write(SOURCE, vec![put(&keys[3], "after the abort")])
        .await;
    assert!(written[0].is_ok());
    assert!(matches!(
        cluster.src(fence((2, 0))).await,
        Err(Rejection::MigrationClosed { .. })
    ));
    let Some(VShardMigration::Source(closed)) =
        cluster.source.sm.vshard_migration(V).await.expect("read")
    else {
        panic!("the source keeps a closed record");
    };
    assert!(closed.closed && !closed.tracking && closed.fence.is_none());
    let export = cluster
        .store
        .group(SOURCE)
        .export_state_machine()
        .expect("export");
    assert!(
        !export.changes.iter().any(|(v, _, _)| *v == V),
        "changes forgotten"
    );

    // The target reacts: drops its copy in bounded batches, then forgets it.
    let mut deleted_total = 0;
    loop {
        let batch = DataOp::DropIncoming {
            vshard: V,
            migration: m(),
            limit: 3,
        };
        let Ok(ResponseV1::Deleted { deleted, done }) = cluster.tgt(batch).await else {
            panic!("a drop batch answers Deleted");
        };
        assert!(deleted <= 3);
        deleted_total += deleted;
        if done {
            break;
        }
    }
    assert_eq!(
        deleted_total,
        10 - 1,
        "the copy held every key but the deleted one"
    );
    cluster.assert_holds_nothing(TARGET);
    let again = DataOp::DropIncoming {
        vshard: V,
        migration: m(),
        limit: 3,
    };
    assert_eq!(
        cluster.tgt(again).await,
        Ok(ResponseV1::Deleted {
            deleted: 0,
            done: true
        })
    );

    // Finished: the vShard is served by the source alone, and free again.
    assert_eq!(cluster.meta(finish).await, DONE);
    assert_eq!(cluster.pairs(SOURCE), cluster.expected_pairs());
    let relock = MetadataOp::LockMigration {
        migration: "wf-1-9".into(),
        vshard: V,
        from_group: SOURCE,
        to_group: TARGET,
        driver_epoch: 1,
        now_ms: 10_000,
        lease_ms: 1_000,
        max_concurrent: 1,
    };
    assert!(cluster.meta(relock).await.is_ok());
}

/// Change capture survives a snapshot: the change table and the tracking
/// record travel in it, and the installed replica keeps recording.
#[tokio::test]
async fn change_capture_survives_snapshot_install() {
    let mut cluster = Cluster::new().await;
    let keys = keys_in(V, "user", 6);
    cluster
        .write(SOURCE, keys.iter().map(|k| put(k, "v0")).collect())
        .await;
    let since = cluster.source.next();
    let track = DataOp::TrackChanges {
        vshard: V,
        migration: m(),
    };
    assert!(cluster.src(track).await.is_ok());
    let writes = vec![put(&keys[0], "v1"), delete(&keys[1]), put(&keys[2], "v2")];
    cluster.write(SOURCE, writes).await;
    let before = cluster
        .source
        .sm
        .changes_after(V, since, 100)
        .await
        .expect("changes");
    assert_eq!(before.changes.len(), 3);
    assert_eq!(
        before.changes[1],
        (
            since + 2,
            Change::Delete {
                key: keys[1].clone()
            }
        )
    );

    let snapshot = cluster
        .source
        .sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build");
    let dir = tempfile::tempdir().expect("a temp dir");
    let other = RaftStore::open(dir.path().join("replica.redb")).expect("open");
    let (_, mut replica) = group_storage(&other, SOURCE);
    replica
        .install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .expect("install");

    let after = replica.changes_after(V, since, 100).await.expect("changes");
    assert_eq!(after, before);
    assert_eq!(
        replica.vshard_migration(V).await.expect("read"),
        cluster.source.sm.vshard_migration(V).await.expect("read")
    );
    let mut replica = Group {
        sm: replica,
        next_index: cluster.source.next(),
    };
    let next = replica.next();
    let more = replica
        .apply(Command::put(keys[3].clone(), b"v3".to_vec()))
        .await;
    assert!(more.is_ok());
    let page = replica
        .sm
        .changes_after(V, since, 100)
        .await
        .expect("changes");
    assert_eq!(page.changes.len(), 4, "still tracking after the install");
    assert_eq!(
        page.changes.last(),
        Some(&(
            next,
            Change::Put {
                key: keys[3].clone(),
                value: b"v3".to_vec()
            }
        ))
    );
    assert_eq!(page.applied_index, next);
}
