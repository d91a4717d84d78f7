//! The Raft storage of shardflow on real redb files: openraft's storage
//! conformance suite, and the state machines driven through openraft's own
//! storage traits (apply, snapshots, reopen) — no network, no running Raft.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, ErrorSubject, ErrorVerb, RaftLogReader, RaftSnapshotBuilder};
use shardflow_node::command::{
    Command, DataOp, GroupKind, MetadataOp, Rejection, Response, ResponseV1, METADATA_GROUP,
};
use shardflow_node::data::{VShardRecord, VShardState};
use shardflow_node::raft::records::encode;
use shardflow_node::raft::types::{
    Entry, EntryPayload, LogId, Membership, StorageError, StoredMembership, Vote,
};
use shardflow_node::raft::{
    group_storage, LogStore, NodeAddr, ReadError, StateMachineStore, TypeConfig,
    MAX_REPLICATION_BYTES,
};
use shardflow_node::vshard::{vshard_of, VSHARDS};
use shardflow_store::raft_store::Durability;
use shardflow_store::RaftStore;
use tempfile::TempDir;

fn setup_error(error: impl std::error::Error + 'static) -> Box<StorageError> {
    Box::new(storage_error(error))
}

fn storage_error(error: impl std::error::Error + 'static) -> StorageError {
    let io = std::io::Error::other(error.to_string());
    StorageError::from_io_error(ErrorSubject::Store, ErrorVerb::Write, io)
}

/// Each store in its own redb file (one file per group).
struct FilePerGroup;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for FilePerGroup {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().map_err(storage_error)?;
        let store = RaftStore::open(dir.path().join("raft.redb")).map_err(storage_error)?;
        let (log, sm) = group_storage(&store, 1);
        Ok((dir, log, sm))
    }
}

/// Every store a new group in one shared redb file (one file per node):
/// earlier groups' rows stay in the file, so any leak between groups shows.
struct SharedFile {
    _dir: TempDir,
    store: RaftStore,
    next_group: AtomicU64,
}

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, ()> for SharedFile {
    async fn build(&self) -> Result<((), LogStore, StateMachineStore), StorageError> {
        let group = self.next_group.fetch_add(1, Ordering::Relaxed);
        let (log, sm) = group_storage(&self.store, group);
        Ok(((), log, sm))
    }
}

/// openraft's conformance suite passes with one redb file per group.
#[test]
fn openraft_suite_file_per_group() -> Result<(), Box<StorageError>> {
    Suite::test_all(FilePerGroup).map_err(Box::new)
}

/// openraft's conformance suite passes with every group in one redb file,
/// with group ids from the metadata group 0 up and from near `u64::MAX`.
#[test]
fn openraft_suite_shared_file() -> Result<(), Box<StorageError>> {
    let dir = tempfile::tempdir().map_err(setup_error)?;
    let store = RaftStore::open(dir.path().join("node.redb")).map_err(setup_error)?;
    let high = SharedFile {
        store: store.clone(),
        _dir: dir,
        next_group: AtomicU64::new(u64::MAX - 60),
    };
    Suite::test_all(high).map_err(Box::new)?;
    let low = SharedFile {
        _dir: tempfile::tempdir().map_err(setup_error)?,
        store,
        next_group: AtomicU64::new(METADATA_GROUP),
    };
    Suite::test_all(low).map_err(Box::new)
}

// ---- helpers for the state-machine tests ----

fn log_id(index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

fn normal(index: u64, command: Command) -> Entry {
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(command),
    }
}

fn membership(index: u64, voters: &[u64]) -> Entry {
    let nodes: BTreeMap<u64, NodeAddr> = voters
        .iter()
        .map(|&id| (id, NodeAddr::new(format!("n{id}:7000"))))
        .collect();
    let voters: BTreeSet<u64> = voters.iter().copied().collect();
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Membership(Membership::new(vec![voters], nodes)),
    }
}

/// A key whose vShard is `vshard`.
fn key_in(vshard: u16) -> Vec<u8> {
    (0u32..)
        .map(|i| format!("key-{i}").into_bytes())
        .find(|key| vshard_of(key) == vshard)
        .unwrap_or_default()
}

fn done() -> Response {
    Response::V1(ResponseV1::Done)
}

fn bootstrap() -> Command {
    Command::metadata(MetadataOp::Bootstrap {
        nodes: (1..=3).map(|n| (n, format!("n{n}:7000"))).collect(),
        groups: vec![(0, vec![1, 2, 3]), (1, vec![1, 2, 3]), (2, vec![1, 2])],
        routing: (0..VSHARDS).map(|v| u64::from(v % 2) + 1).collect(),
    })
}

/// Applies one entry at a time and returns its response.
struct Applier {
    sm: StateMachineStore,
    next_index: u64,
}

impl Applier {
    fn new(sm: StateMachineStore) -> Self {
        Self { sm, next_index: 1 }
    }

    async fn apply(&mut self, command: Command) -> Response {
        let entry = normal(self.next_index, command);
        self.next_index += 1;
        let mut responses = self.sm.apply([entry]).await.expect("apply");
        assert_eq!(responses.len(), 1, "one response per entry");
        responses.remove(0)
    }
}

fn temp_store() -> (TempDir, RaftStore) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let store = RaftStore::open(dir.path().join("raft.redb")).expect("open redb");
    (dir, store)
}

/// Sets vShard states directly in the store, so that the owner check is
/// tested for each state on its own (`migration_state_machine.rs` reaches
/// them through the migration commands).
fn set_vshard_states(store: &RaftStore, group: u64, states: &[(u16, VShardState)]) {
    let write = |sm: &mut shardflow_store::raft_store::SmWrite<'_>| {
        for (vshard, state) in states {
            let bytes =
                encode("a vShard state", &VShardRecord::V1(state.clone())).expect("encodes");
            sm.put_vshard(*vshard, &bytes)?;
        }
        Ok::<_, shardflow_store::RaftStoreError>(())
    };
    store
        .group(group)
        .write_state_machine(Durability::Immediate, write)
        .expect("write vShard states");
}

// ---- state machines ----

/// The owner check runs at apply: only an Owned vShard takes writes, and
/// every other state answers with its own typed rejection; reads agree.
#[tokio::test]
async fn owner_check_at_apply_for_each_vshard_state() {
    let (_dir, store) = temp_store();
    set_vshard_states(
        &store,
        1,
        &[
            (1, VShardState::Owned),
            (
                2,
                VShardState::Incoming {
                    migration: "m2".into(),
                },
            ),
            (
                3,
                VShardState::Fenced {
                    migration: "m3".into(),
                },
            ),
            (
                4,
                VShardState::Moved {
                    to_group: 2,
                    epoch: 7,
                },
            ),
        ],
    );
    let (_, sm) = group_storage(&store, 1);
    let mut applier = Applier::new(sm.clone());
    let expected = [
        (0, Err(Rejection::NotOwner { vshard: 0 })),
        (1, Ok(())),
        (2, Err(Rejection::NotOwner { vshard: 2 })),
        (
            3,
            Err(Rejection::Fenced {
                vshard: 3,
                migration: "m3".into(),
            }),
        ),
        (
            4,
            Err(Rejection::Moved {
                vshard: 4,
                to_group: 2,
                epoch: 7,
            }),
        ),
    ];
    for (vshard, outcome) in expected {
        let key = key_in(vshard);
        let response = applier
            .apply(Command::put(key.clone(), b"v".to_vec()))
            .await;
        let read = sm.get(key.clone()).await;
        match outcome {
            Ok(()) => {
                assert_eq!(response, done());
                assert_eq!(read.expect("owned vShard reads"), Some(b"v".to_vec()));
            }
            Err(rejection) => {
                assert_eq!(
                    response,
                    Response::from(rejection.clone()),
                    "vShard {vshard}"
                );
                assert!(matches!(read, Err(ReadError::Rejected(r)) if r == rejection));
                let raw = store.group(1).read_state_machine(|r| {
                    shardflow_store::raft_store::StateMachineRead::kv(r, vshard, &key)
                });
                assert_eq!(
                    raw.expect("raw read"),
                    None,
                    "nothing written to vShard {vshard}"
                );
            }
        }
    }
    let delete = applier.apply(Command::delete(key_in(3))).await;
    assert_eq!(delete.rejection().map(Rejection::is_retryable), Some(true));
}

/// A re-proposal with the same idempotency key returns the first response
/// and does not act twice; a rejection is not recorded, so a retry after
/// the cause went away is applied.
#[tokio::test]
async fn idempotent_reproposal_returns_first_response() {
    let (_dir, store) = temp_store();
    let (_, sm) = group_storage(&store, 1);
    let mut applier = Applier::new(sm.clone());
    let key = key_in(9);
    let first = Command::put(key.clone(), b"first".to_vec()).with_idempotency_key("wf-1-7/Copy");
    let again = Command::put(key.clone(), b"second".to_vec()).with_idempotency_key("wf-1-7/Copy");
    assert_eq!(
        applier.apply(first.clone()).await,
        Response::from(Rejection::NotOwner { vshard: 9 })
    );
    let assign = Command::data(DataOp::AssignVShards { vshards: vec![9] });
    assert_eq!(applier.apply(assign).await, done());
    assert_eq!(applier.apply(first).await, done());
    assert_eq!(applier.apply(again).await, done());
    assert_eq!(
        sm.get(key).await.expect("read"),
        Some(b"first".to_vec()),
        "applied once"
    );

    let (_, meta) = group_storage(&store, METADATA_GROUP);
    let mut applier = Applier::new(meta);
    let keyed = bootstrap().with_idempotency_key("wf-0-1/Bootstrap");
    assert_eq!(applier.apply(keyed.clone()).await, done());
    assert_eq!(
        applier.apply(keyed).await,
        done(),
        "the first response, again"
    );
    let unkeyed = applier.apply(bootstrap()).await;
    assert_eq!(unkeyed, Response::from(Rejection::AlreadyBootstrapped));
}

/// The metadata group: bootstrap once, routing valid, remove-node refused
/// while the node holds a replica, commands for the other kind of group
/// refused.
#[tokio::test]
async fn metadata_group_rules() {
    let (_dir, store) = temp_store();
    let (_, sm) = group_storage(&store, METADATA_GROUP);
    assert_eq!(sm.kind(), GroupKind::Metadata);
    let mut applier = Applier::new(sm.clone());
    let add = Command::metadata(MetadataOp::AddNode {
        id: 4,
        addr: "n4:7000".into(),
    });
    assert_eq!(
        applier.apply(add.clone()).await,
        Response::from(Rejection::NotBootstrapped)
    );
    assert_eq!(applier.apply(bootstrap()).await, done());
    assert_eq!(
        applier.apply(bootstrap()).await,
        Response::from(Rejection::AlreadyBootstrapped)
    );
    assert_eq!(applier.apply(add).await, done());

    let state = sm.metadata().await.expect("metadata");
    assert_eq!(state.validate(), Ok(()));
    assert_eq!(state.vshards_of_group(2).len(), usize::from(VSHARDS / 2));
    assert_eq!(state.route(3).map(|r| (r.group, r.epoch)), Some((2, 1)));

    let remove_3 = Command::metadata(MetadataOp::RemoveNode { id: 3 });
    let refused = Rejection::NodeHoldsReplicas {
        id: 3,
        groups: vec![0, 1],
    };
    assert_eq!(
        applier.apply(remove_3.clone()).await,
        Response::from(refused)
    );
    let remove_4 = Command::metadata(MetadataOp::RemoveNode { id: 4 });
    assert_eq!(
        applier.apply(remove_4).await,
        done(),
        "node 4 holds no replica"
    );
    for group in [0, 1] {
        let members = MetadataOp::SetGroupMembers {
            group,
            members: vec![1, 2],
        };
        assert_eq!(applier.apply(Command::metadata(members)).await, done());
    }
    assert_eq!(applier.apply(remove_3).await, done());
    assert_eq!(sm.metadata().await.expect("metadata").validate(), Ok(()));

    let put = Command::put(b"k".to_vec(), b"v".to_vec());
    let wrong = Rejection::WrongGroupKind {
        expected: GroupKind::Data,
    };
    assert_eq!(applier.apply(put).await, Response::from(wrong));
    let (_, data) = group_storage(&store, 1);
    let wrong = Rejection::WrongGroupKind {
        expected: GroupKind::Metadata,
    };
    assert_eq!(
        Applier::new(data).apply(bootstrap()).await,
        Response::from(wrong)
    );
}

/// Fills a data group: vShards, keys, an idempotency key, a membership.
async fn fill_data_group(sm: &mut StateMachineStore) {
    let assign = Command::data(DataOp::AssignVShards {
        vshards: (0..VSHARDS).collect(),
    });
    let mut entries = vec![membership(1, &[1, 2, 3]), normal(2, assign)];
    for i in 0..200u64 {
        let key = format!("user:{i}").into_bytes();
        let command = Command::put(key, i.to_le_bytes().to_vec());
        entries.push(normal(
            3 + i,
            command.with_idempotency_key(format!("wf-1-{i}/Put")),
        ));
    }
    entries.push(normal(203, Command::delete(b"user:7".to_vec())));
    let responses = sm.apply(entries).await.expect("apply");
    assert_eq!(responses.len(), 203);
    assert!(responses.iter().all(Response::is_ok), "{responses:?}");
}

/// A snapshot built on one store and installed on a fresh one (another
/// file) gives an identical state machine, applied state and snapshot.
#[tokio::test]
async fn snapshot_export_install_gives_identical_state() {
    let (_dir_a, store_a) = temp_store();
    let (_dir_b, store_b) = temp_store();
    for group in [1, METADATA_GROUP] {
        let (_, mut source) = group_storage(&store_a, group);
        if group == METADATA_GROUP {
            let mut applier = Applier::new(source.clone());
            assert_eq!(applier.apply(bootstrap()).await, done());
        } else {
            fill_data_group(&mut source).await;
        }
        let snapshot = source
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("build");
        let (_, mut target) = group_storage(&store_b, group);
        target
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .expect("install");

        let exported =
            |store: &RaftStore| store.group(group).export_state_machine().expect("export");
        assert_eq!(exported(&store_a), exported(&store_b), "group {group}");
        assert_eq!(
            source.applied_state().await.expect("source"),
            target.applied_state().await.expect("target")
        );
        let current = target.get_current_snapshot().await.expect("current");
        assert_eq!(current.map(|s| s.meta), Some(snapshot.meta));
    }
    let (_, target) = group_storage(&store_b, 1);
    assert_eq!(
        target.get(b"user:9".to_vec()).await.expect("read"),
        Some(9u64.to_le_bytes().to_vec())
    );
    assert_eq!(target.get(b"user:7".to_vec()).await.expect("read"), None);
    assert!(
        target.bootstrap_assigned().await.expect("flag"),
        "the snapshot carries the bootstrap assignment, so a follower \
         installing it refuses a stale re-assignment too"
    );
}

/// A snapshot whose data contradicts its metadata is refused, and the
/// state machine is left as it was.
#[tokio::test]
async fn install_refuses_a_contradicting_snapshot() {
    let (_dir, store) = temp_store();
    let (_, mut source) = group_storage(&store, 1);
    fill_data_group(&mut source).await;
    let mut snapshot = source
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build");
    snapshot.meta.last_log_id = Some(log_id(999));
    let (_, mut target) = group_storage(&store, 2);
    let refused = target
        .install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await;
    assert!(refused.is_err());
    assert_eq!(target.applied_state().await.expect("applied").0, None);
}

/// The raft log, the vote and the state machine survive closing and
/// reopening the redb file; groups sharing the file stay apart.
#[tokio::test]
async fn log_vote_and_state_survive_reopen() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("node.redb");
    let entries: Vec<Entry> = (1..=5)
        .map(|i| normal(i, Command::put(format!("k{i}").into_bytes(), b"v".to_vec())))
        .collect();
    let assign = Command::data(DataOp::AssignVShards {
        vshards: (0..VSHARDS).collect(),
    });
    {
        let store = RaftStore::open(&path).expect("open");
        let (mut log, mut sm) = group_storage(&store, 1);
        log.save_vote(&Vote::new_committed(3, 2))
            .await
            .expect("vote");
        log.blocking_append(entries.clone()).await.expect("append");
        log.purge(log_id(1)).await.expect("purge");
        sm.apply([normal(1, assign)]).await.expect("assign");
        sm.apply(entries[1..].to_vec()).await.expect("apply");
    }
    let store = RaftStore::open(&path).expect("reopen");
    let (mut log, mut sm) = group_storage(&store, 1);
    assert_eq!(
        log.read_vote().await.expect("vote"),
        Some(Vote::new_committed(3, 2))
    );
    let state = log.get_log_state().await.expect("log state");
    assert_eq!(state.last_purged_log_id, Some(log_id(1)));
    assert_eq!(state.last_log_id, Some(log_id(5)));
    let read = log.try_get_log_entries(0..).await.expect("entries");
    assert_eq!(format!("{read:?}"), format!("{:?}", &entries[1..]));
    let (applied, members) = sm.applied_state().await.expect("applied");
    assert_eq!(
        (applied, members),
        (Some(log_id(5)), StoredMembership::default())
    );
    for i in 2..=5 {
        assert_eq!(
            sm.get(format!("k{i}").into_bytes()).await.expect("read"),
            Some(b"v".to_vec())
        );
    }
    let (mut other_log, mut other_sm) = group_storage(&store, 2);
    assert_eq!(
        other_log.get_log_state().await.expect("state").last_log_id,
        None
    );
    assert_eq!(other_sm.applied_state().await.expect("applied").0, None);
}

/// What replication reads for one AppendEntries stays within
/// `MAX_REPLICATION_BYTES` of entries (large copy chunks must not add up
/// to more than a transport frame for a lagging follower); a plain read
/// of the same range returns it whole.
#[tokio::test]
async fn replication_reads_are_capped_by_bytes() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let store = RaftStore::open(dir.path().join("raft.redb")).expect("open");
    let (mut log, _sm) = group_storage(&store, 1);
    // Each entry a little over a quarter of the cap: three fit, four do not.
    let value = vec![7u8; MAX_REPLICATION_BYTES / 4];
    let entries: Vec<Entry> = (1..=8)
        .map(|i| normal(i, Command::put(format!("k{i}").into_bytes(), value.clone())))
        .collect();
    log.blocking_append(entries).await.expect("append");
    let limited = log.limited_get_log_entries(1, 9).await.expect("limited");
    let indexes: Vec<u64> = limited.iter().map(|e| e.log_id.index).collect();
    assert_eq!(indexes, vec![1, 2, 3]);
    let from_six = log.limited_get_log_entries(6, 9).await.expect("limited");
    let indexes: Vec<u64> = from_six.iter().map(|e| e.log_id.index).collect();
    assert_eq!(indexes, vec![6, 7, 8]);
    let last = log.limited_get_log_entries(8, 9).await.expect("limited");
    assert_eq!(last.len(), 1);
    let whole = log.try_get_log_entries(1..9).await.expect("whole");
    assert_eq!(whole.len(), 8);
}
