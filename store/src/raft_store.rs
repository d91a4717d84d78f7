//! Byte-level redb storage for many Raft groups: their logs, votes, state
//! machines and snapshots.
//!
//! A [`RaftStore`] wraps an `Arc<redb::Database>` chosen by the caller, so a
//! node can keep every group in one file or give each group its own file;
//! [`RaftStore::group`] hands out a [`GroupStore`] bound to one group id.
//! This module knows nothing of openraft: `shardflow-node` encodes log
//! entries, votes and state-machine rows and stores the bytes here.
//!
//! # Tables (every key starts with the group id)
//!
//! | table | key | value |
//! | --- | --- | --- |
//! | `raft_log` | `(group, index)` | one encoded log entry |
//! | `raft_meta` | `(group, name)` | vote, committed, last purged log id (separate keys) |
//! | `sm_meta` | `(group, name)` | last applied, membership, metadata-group state |
//! | `sm_vshards` | `(group, vshard)` | one vShard's state |
//! | `sm_kv` | `(group, vshard, key)` | a value |
//! | `sm_applied` | `(group, idempotency key)` | the first response to that key |
//! | `sm_vshard_migrations` | `(group, vshard)` | a vShard's migration bookkeeping (tracking, fence, copy progress) |
//! | `sm_changes` | `(group, vshard, log index)` | one change applied to a tracked vShard |
//! | `sm_vshard_digests` | `(group, vshard)` | the running digest of the vShard's pairs ([`DigestSum`]) |
//! | `raft_snapshots` | `(group, name)` | the current snapshot: position, meta, data |
//!
//! The state machine of a group is the `sm_*` tables; a snapshot exports
//! and imports six of them ([`StateMachineExport`]); the seventh,
//! `sm_vshard_digests`, is derived from `sm_kv` and recomputed on install
//! (see [`digest`]). The current
//! snapshot lives apart, in `raft_snapshots`, because it must not be part of
//! the state it snapshots and it is replaced only by a newer one.
//!
//! # Durability
//!
//! - Log appends, truncation, purge, vote, snapshot save and snapshot install
//!   commit with `Durability::Immediate`: durable when the call returns.
//! - State-machine writes ([`GroupStore::write_state_machine`]) take the
//!   durability from the caller, and `shardflow-node` applies entries with
//!   `Durability::None` (about 0.3 ms per commit instead of 1.1 ms on the
//!   reference machine, STACK.md). That is safe because of two facts:
//!   1. A lost state-machine commit only loses *applied* state, never a log
//!      entry: after a crash the state machine reports an older last-applied
//!      id and Raft re-applies the entries after it from the log, producing
//!      the same state (apply is deterministic, idempotency rows included).
//!   2. Those entries are still in the log, because a log is purged only up to
//!      the last log id of a snapshot (openraft's `calc_purge_upto`), and
//!      [`GroupStore::save_snapshot`] / [`GroupStore::install_snapshot`]
//!      commit with `Durability::Immediate` — which, in redb, also makes every
//!      earlier non-durable commit of the database durable. So the durable
//!      state-machine state is always at or past any purge point.
//!
//!   The committed log id (`save_committed`) may also be written
//!   non-durably: openraft treats it as a hint.
//!
//! # Invariants
//!
//! - One call = one redb transaction: it lands whole or not at all.
//! - A group's rows never mix with another group's: every key starts with
//!   the group id and every range is bounded to that group.
//! - A built snapshot never replaces a stored one at a later position, so a
//!   slow build cannot overwrite a newer install; an install always
//!   replaces it, together with the state it describes.
//! - Calls block (redb does I/O on the calling thread): async callers run
//!   them on a blocking pool (`tokio::task::spawn_blocking`).

pub mod digest;
mod state_machine;

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use redb::{
    Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle, WriteTransaction,
};

pub use digest::DigestSum;
pub use redb::Durability;
pub use state_machine::{
    ChangeRows, KvPairs, KvRows, SmRead, SmWrite, StateMachineExport, StateMachineRead,
    StateMachineView, StoredSnapshot,
};

pub(crate) const LOG: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("raft_log");
pub(crate) const RAFT_META: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("raft_meta");
pub(crate) const SM_META: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("sm_meta");
pub(crate) const SM_VSHARDS: TableDefinition<(u64, u16), &[u8]> =
    TableDefinition::new("sm_vshards");
pub(crate) const SM_KV: TableDefinition<(u64, u16, &[u8]), &[u8]> = TableDefinition::new("sm_kv");
pub(crate) const SM_APPLIED: TableDefinition<(u64, &str), &[u8]> =
    TableDefinition::new("sm_applied");
pub(crate) const SM_MIGRATIONS: TableDefinition<(u64, u16), &[u8]> =
    TableDefinition::new("sm_vshard_migrations");
pub(crate) const SM_CHANGES: TableDefinition<(u64, u16, u64), &[u8]> =
    TableDefinition::new("sm_changes");
pub(crate) const SM_DIGESTS: TableDefinition<(u64, u16), &[u8]> =
    TableDefinition::new("sm_vshard_digests");
pub(crate) const SNAPSHOTS: TableDefinition<(u64, &str), &[u8]> =
    TableDefinition::new("raft_snapshots");

/// What went wrong in the Raft store: which group, doing what, and why.
#[derive(Debug, thiserror::Error)]
pub enum RaftStoreError {
    /// redb failed.
    #[error("raft store, group {group}: {doing}: {source}")]
    Storage {
        group: u64,
        doing: &'static str,
        #[source]
        source: Box<redb::Error>,
    },
    /// redb failed while opening the store (creating its tables).
    #[error("raft store: {doing}: {source}")]
    Open {
        doing: &'static str,
        #[source]
        source: Box<redb::Error>,
    },
    /// A stored row does not have the shape this store wrote.
    #[error("raft store, group {group}: {what} is corrupt: {reason}")]
    Corrupt {
        group: u64,
        what: &'static str,
        reason: String,
    },
    /// The caller asked for something the store refuses to do.
    #[error("raft store, group {group}: {doing}: {reason}")]
    Invalid {
        group: u64,
        doing: &'static str,
        reason: String,
    },
}

/// Attaches "which group, doing what" to a redb result.
pub(crate) trait Doing<T> {
    fn doing(self, group: u64, doing: &'static str) -> Result<T, RaftStoreError>;
}

impl<T, E: Into<redb::Error>> Doing<T> for Result<T, E> {
    fn doing(self, group: u64, doing: &'static str) -> Result<T, RaftStoreError> {
        self.map_err(|error| RaftStoreError::Storage {
            group,
            doing,
            source: Box::new(error.into()),
        })
    }
}

/// The upper bound of a group's rows in a table whose key continues after
/// the group id: everything before `(group + 1, ..)`.
pub(crate) fn group_end<K>(group: u64, first_of: impl FnOnce(u64) -> K) -> Bound<K> {
    match group.checked_add(1) {
        Some(next) => Bound::Excluded(first_of(next)),
        None => Bound::Unbounded,
    }
}

/// Raft storage for every group kept in one redb database. Cheap to clone.
#[derive(Clone)]
pub struct RaftStore {
    db: Arc<Database>,
}

impl RaftStore {
    /// Opens (or creates) a redb file holding only Raft data.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, RaftStoreError> {
        let db = Database::create(path.as_ref()).map_err(|error| RaftStoreError::Open {
            doing: "opening the database file",
            source: Box::new(error.into()),
        })?;
        Self::new(Arc::new(db))
    }

    /// Wraps a database the caller opened (it may hold other tables too) and
    /// creates the Raft tables if they are missing.
    pub fn new(db: Arc<Database>) -> Result<Self, RaftStoreError> {
        let open = |doing: &'static str| {
            move |error: redb::Error| RaftStoreError::Open {
                doing,
                source: Box::new(error),
            }
        };
        let txn = db
            .begin_write()
            .map_err(|e| open("creating tables")(e.into()))?;
        create_tables(&txn).map_err(open("creating tables"))?;
        txn.commit()
            .map_err(|e| open("creating tables")(e.into()))?;
        Ok(Self { db })
    }

    /// The database this store writes to.
    pub fn database(&self) -> &Arc<Database> {
        &self.db
    }

    /// The storage of one group.
    pub fn group(&self, group: u64) -> GroupStore {
        GroupStore {
            db: self.db.clone(),
            group,
        }
    }
}

fn create_tables(txn: &WriteTransaction) -> Result<(), redb::Error> {
    let had_digests = txn
        .list_tables()?
        .any(|table| table.name() == SM_DIGESTS.name());
    if !had_digests {
        backfill_digests(txn)?;
    }
    txn.open_table(LOG)?;
    txn.open_table(RAFT_META)?;
    txn.open_table(SM_META)?;
    txn.open_table(SM_VSHARDS)?;
    txn.open_table(SM_KV)?;
    txn.open_table(SM_APPLIED)?;
    txn.open_table(SM_MIGRATIONS)?;
    txn.open_table(SM_CHANGES)?;
    txn.open_table(SNAPSHOTS)?;
    Ok(())
}

/// Creates `sm_vshard_digests` from `sm_kv`: a store written before the
/// digests were kept gets them once, when the table is created.
fn backfill_digests(txn: &WriteTransaction) -> Result<(), redb::Error> {
    let mut digests: std::collections::BTreeMap<(u64, u16), DigestSum> = Default::default();
    {
        let kv = txn.open_table(SM_KV)?;
        for row in kv.iter()? {
            let (key, value) = row?;
            let (group, vshard, key) = key.value();
            digests
                .entry((group, vshard))
                .or_default()
                .add_pair(key, value.value());
        }
    }
    let mut table = txn.open_table(SM_DIGESTS)?;
    for (key, digest) in digests {
        table.insert(key, &digest.encode()[..])?;
    }
    Ok(())
}

/// The storage of one Raft group: its log, Raft metadata, state machine and
/// snapshot. Cheap to clone. Every method blocks.
#[derive(Clone)]
pub struct GroupStore {
    pub(crate) db: Arc<Database>,
    pub(crate) group: u64,
}

impl GroupStore {
    /// The group this store is bound to.
    pub fn group(&self) -> u64 {
        self.group
    }

    pub(crate) fn begin_write(
        &self,
        durability: Durability,
        doing: &'static str,
    ) -> Result<WriteTransaction, RaftStoreError> {
        let mut txn = self.db.begin_write().doing(self.group, doing)?;
        txn.set_durability(durability).doing(self.group, doing)?;
        Ok(txn)
    }

    /// Appends (or overwrites) log entries `(index, bytes)` in one durable
    /// transaction. Indexes must be strictly increasing.
    pub fn append_log<'a>(
        &self,
        entries: impl IntoIterator<Item = (u64, &'a [u8])>,
    ) -> Result<(), RaftStoreError> {
        const DOING: &str = "appending log entries";
        let txn = self.begin_write(Durability::Immediate, DOING)?;
        {
            let mut log = txn.open_table(LOG).doing(self.group, DOING)?;
            let mut previous: Option<u64> = None;
            for (index, bytes) in entries {
                if previous.is_some_and(|p| p >= index) {
                    return Err(RaftStoreError::Invalid {
                        group: self.group,
                        doing: DOING,
                        reason: format!("index {index} does not follow {previous:?}"),
                    });
                }
                previous = Some(index);
                log.insert((self.group, index), bytes)
                    .doing(self.group, DOING)?;
            }
        }
        txn.commit().doing(self.group, DOING)
    }

    /// The log entries with `start <= index < end`, in index order.
    pub fn read_log(&self, start: u64, end: u64) -> Result<Vec<(u64, Vec<u8>)>, RaftStoreError> {
        self.read_log_limited(start, end, usize::MAX)
    }

    /// The first log entries with `start <= index < end`, in index order,
    /// as many as fit in `max_bytes` of stored bytes, but at least one if
    /// the range holds any (a single entry may exceed the limit).
    pub fn read_log_limited(
        &self,
        start: u64,
        end: u64,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, RaftStoreError> {
        const DOING: &str = "reading log entries";
        if start >= end {
            return Ok(Vec::new());
        }
        let read = self.db.begin_read().doing(self.group, DOING)?;
        let log = read.open_table(LOG).doing(self.group, DOING)?;
        let mut entries = Vec::new();
        let mut bytes = 0usize;
        for row in log
            .range((self.group, start)..(self.group, end))
            .doing(self.group, DOING)?
        {
            let (key, value) = row.doing(self.group, DOING)?;
            let value = value.value();
            bytes = bytes.saturating_add(value.len());
            if bytes > max_bytes && !entries.is_empty() {
                break;
            }
            entries.push((key.value().1, value.to_vec()));
        }
        Ok(entries)
    }

    /// The last entry of the log, if it holds any.
    pub fn last_log(&self) -> Result<Option<(u64, Vec<u8>)>, RaftStoreError> {
        const DOING: &str = "reading the last log entry";
        let read = self.db.begin_read().doing(self.group, DOING)?;
        let log = read.open_table(LOG).doing(self.group, DOING)?;
        let mut range = log
            .range((self.group, 0)..=(self.group, u64::MAX))
            .doing(self.group, DOING)?;
        match range.next_back() {
            None => Ok(None),
            Some(row) => {
                let (key, value) = row.doing(self.group, DOING)?;
                Ok(Some((key.value().1, value.value().to_vec())))
            }
        }
    }

    /// Deletes the log entries at `index` and after, durably.
    pub fn truncate_log_from(&self, index: u64) -> Result<(), RaftStoreError> {
        const DOING: &str = "truncating the log";
        let txn = self.begin_write(Durability::Immediate, DOING)?;
        {
            let mut log = txn.open_table(LOG).doing(self.group, DOING)?;
            log.retain_in((self.group, index)..=(self.group, u64::MAX), |_, _| false)
                .doing(self.group, DOING)?;
        }
        txn.commit().doing(self.group, DOING)
    }

    /// Deletes the log entries up to and including `index` and records
    /// `raft_meta[meta_key] = meta_value` (the last purged log id) in the
    /// same durable transaction.
    pub fn purge_log_upto(
        &self,
        index: u64,
        meta_key: &str,
        meta_value: &[u8],
    ) -> Result<(), RaftStoreError> {
        const DOING: &str = "purging the log";
        let txn = self.begin_write(Durability::Immediate, DOING)?;
        {
            let mut meta = txn.open_table(RAFT_META).doing(self.group, DOING)?;
            meta.insert((self.group, meta_key), meta_value)
                .doing(self.group, DOING)?;
            let mut log = txn.open_table(LOG).doing(self.group, DOING)?;
            log.retain_in((self.group, 0)..=(self.group, index), |_, _| false)
                .doing(self.group, DOING)?;
        }
        txn.commit().doing(self.group, DOING)
    }

    /// Reads one Raft metadata value (vote, committed, last purged).
    pub fn raft_meta(&self, key: &str) -> Result<Option<Vec<u8>>, RaftStoreError> {
        const DOING: &str = "reading raft metadata";
        let read = self.db.begin_read().doing(self.group, DOING)?;
        let meta = read.open_table(RAFT_META).doing(self.group, DOING)?;
        let value = meta.get((self.group, key)).doing(self.group, DOING)?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    /// Writes one Raft metadata value with the given durability.
    pub fn put_raft_meta(
        &self,
        key: &str,
        value: &[u8],
        durability: Durability,
    ) -> Result<(), RaftStoreError> {
        const DOING: &str = "writing raft metadata";
        let txn = self.begin_write(durability, DOING)?;
        {
            let mut meta = txn.open_table(RAFT_META).doing(self.group, DOING)?;
            meta.insert((self.group, key), value)
                .doing(self.group, DOING)?;
        }
        txn.commit().doing(self.group, DOING)
    }

    /// Deletes everything this group keeps (log, Raft metadata, state
    /// machine, snapshot) in one durable transaction: the replica is gone.
    pub fn remove_group(&self) -> Result<(), RaftStoreError> {
        const DOING: &str = "removing the group";
        let group = self.group;
        let txn = self.begin_write(Durability::Immediate, DOING)?;
        {
            let mut log = txn.open_table(LOG).doing(group, DOING)?;
            log.retain_in((group, 0)..=(group, u64::MAX), |_, _| false)
                .doing(group, DOING)?;
            for table in [RAFT_META, SNAPSHOTS] {
                let mut table = txn.open_table(table).doing(group, DOING)?;
                let range = (Bound::Included((group, "")), group_end(group, |g| (g, "")));
                table.retain_in(range, |_, _| false).doing(group, DOING)?;
            }
            state_machine::clear_state_machine(&txn, group, DOING)?;
        }
        txn.commit().doing(group, DOING)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_store() -> (tempfile::TempDir, RaftStore) {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = RaftStore::open(dir.path().join("raft.redb")).expect("open");
        (dir, store)
    }

    fn fill(group: &GroupStore, tag: u8) {
        group
            .append_log([(1, &[tag][..]), (2, &[tag, 2][..])])
            .expect("append");
        group
            .put_raft_meta("vote", &[tag], Durability::Immediate)
            .expect("vote");
        group
            .write_state_machine(Durability::None, |sm| {
                sm.put_meta("last_applied", &[tag])?;
                sm.put_vshard(u16::MAX, &[tag])?;
                sm.put_kv(u16::MAX, b"k", &[tag])?;
                sm.put_kv(0, b"", &[tag])?;
                sm.put_vshard_migration(u16::MAX, &[tag])?;
                sm.put_change(u16::MAX, u64::MAX, &[tag])?;
                sm.put_change(0, 0, &[tag])?;
                sm.put_applied("wf-1/Step", &[tag])
            })
            .expect("state machine");
        let snapshot = StoredSnapshot {
            position: 3,
            meta: vec![tag],
            data: vec![tag],
        };
        assert!(group.save_snapshot(&snapshot).expect("snapshot"));
    }

    /// Groups sharing one file never see each other's rows, at the edges of
    /// the id space too; removing one group leaves the others whole.
    #[test]
    fn groups_are_isolated() {
        let (_dir, store) = temp_store();
        let ids = [0, 1, u64::MAX - 1, u64::MAX];
        for (tag, &id) in ids.iter().enumerate() {
            fill(&store.group(id), tag as u8);
        }
        for (tag, &id) in ids.iter().enumerate() {
            let group = store.group(id);
            let tag = tag as u8;
            let log = group.read_log(0, u64::MAX).expect("log");
            assert_eq!(log, vec![(1, vec![tag]), (2, vec![tag, 2])], "group {id}");
            assert_eq!(group.last_log().expect("last"), Some((2, vec![tag, 2])));
            let export = group.export_state_machine().expect("export");
            assert_eq!(export.meta, vec![("last_applied".into(), vec![tag])]);
            assert_eq!(export.vshards, vec![(u16::MAX, vec![tag])]);
            let kv = vec![(0, vec![], vec![tag]), (u16::MAX, b"k".to_vec(), vec![tag])];
            assert_eq!(export.kv, kv);
            assert_eq!(export.applied, vec![("wf-1/Step".into(), vec![tag])]);
            assert_eq!(export.vshard_migrations, vec![(u16::MAX, vec![tag])]);
            let changes = vec![(0, 0, vec![tag]), (u16::MAX, u64::MAX, vec![tag])];
            assert_eq!(export.changes, changes);
        }
        store.group(u64::MAX - 1).remove_group().expect("remove");
        let removed = store.group(u64::MAX - 1);
        assert_eq!(removed.last_log().expect("last"), None);
        assert_eq!(removed.raft_meta("vote").expect("vote"), None);
        assert_eq!(removed.snapshot().expect("snapshot"), None);
        let empty = removed.export_state_machine().expect("export");
        assert_eq!(empty, StateMachineExport::default());
        for id in [0, 1, u64::MAX] {
            assert_eq!(store.group(id).read_log(0, 10).expect("log").len(), 2);
        }
    }

    /// Appends need strictly increasing indexes; truncate and purge cut at
    /// the right index, inclusive, and purge records its log id with it.
    #[test]
    fn log_append_truncate_purge() {
        let (_dir, store) = temp_store();
        let group = store.group(7);
        let refused = group.append_log([(5, &b"a"[..]), (5, &b"b"[..])]);
        assert!(matches!(refused, Err(RaftStoreError::Invalid { .. })));
        assert_eq!(
            group.last_log().expect("last"),
            None,
            "nothing half-written"
        );
        let entries: Vec<(u64, Vec<u8>)> = (1..=9).map(|i| (i, vec![i as u8])).collect();
        group
            .append_log(entries.iter().map(|(i, b)| (*i, b.as_slice())))
            .expect("append");
        group.truncate_log_from(8).expect("truncate");
        group.purge_log_upto(3, "last_purged", b"3").expect("purge");
        let left: Vec<u64> = group
            .read_log(0, 100)
            .expect("read")
            .into_iter()
            .map(|(i, _)| i)
            .collect();
        assert_eq!(left, vec![4, 5, 6, 7]);
        assert_eq!(group.read_log(5, 5).expect("empty range"), Vec::new());
        assert_eq!(
            group.raft_meta("last_purged").expect("meta"),
            Some(b"3".to_vec())
        );
    }

    /// A limited read stops before the entry that would pass the byte
    /// limit, returns one entry even if it alone passes it, and nothing
    /// for an empty range.
    #[test]
    fn log_read_limited_by_bytes() {
        let (_dir, store) = temp_store();
        let group = store.group(3);
        let entries: Vec<(u64, Vec<u8>)> = (1..=6).map(|i| (i, vec![i as u8; 10])).collect();
        group
            .append_log(entries.iter().map(|(i, b)| (*i, b.as_slice())))
            .expect("append");
        let indexes = |rows: Vec<(u64, Vec<u8>)>| rows.into_iter().map(|(i, _)| i).collect();
        let read =
            |start, end, max| indexes(group.read_log_limited(start, end, max).expect("read"));
        let all: Vec<u64> = read(1, 7, usize::MAX);
        assert_eq!(all, vec![1, 2, 3, 4, 5, 6]);
        let three: Vec<u64> = read(2, 7, 30);
        assert_eq!(three, vec![2, 3, 4], "exactly at the limit");
        let two: Vec<u64> = read(2, 7, 29);
        assert_eq!(two, vec![2, 3]);
        let one: Vec<u64> = read(4, 7, 1);
        assert_eq!(one, vec![4], "one entry over the limit");
        let bounded: Vec<u64> = read(5, 6, usize::MAX);
        assert_eq!(bounded, vec![5], "the end stays exclusive");
        assert!(group.read_log_limited(3, 3, 100).expect("empty").is_empty());
    }

    /// Scans page through one vShard in key order and stop at its end;
    /// bounded deletes remove at most their limit.
    #[test]
    fn scan_and_bounded_delete() {
        let (_dir, store) = temp_store();
        let group = store.group(1);
        group
            .write_state_machine(Durability::Immediate, |sm| {
                for vshard in [4, 5, 6] {
                    for key in [&b"a"[..], b"b", b"c"] {
                        sm.put_kv(vshard, key, &[vshard as u8])?;
                    }
                }
                Ok::<_, RaftStoreError>(())
            })
            .expect("write");
        let keys = |pairs: KvPairs| pairs.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        let page = group
            .read_state_machine(|sm| sm.scan_kv(5, None, 2))
            .expect("scan");
        assert_eq!(keys(page), vec![b"a".to_vec(), b"b".to_vec()]);
        let rest = group
            .read_state_machine(|sm| sm.scan_kv(5, Some(b"b"), 10))
            .expect("scan");
        assert_eq!(keys(rest), vec![b"c".to_vec()]);
        let deleted = group
            .write_state_machine(Durability::Immediate, |sm| sm.delete_vshard_keys(5, 2))
            .expect("delete");
        assert_eq!(deleted, 2);
        let left = group
            .read_state_machine(|sm| sm.scan_kv(5, None, 10))
            .expect("scan");
        assert_eq!(keys(left), vec![b"c".to_vec()]);
        let neighbours = group
            .read_state_machine(|sm| sm.scan_kv(4, None, 10))
            .expect("scan");
        assert_eq!(neighbours.len(), 3, "other vShards untouched");
    }

    /// Bounded exports stop at the pair or byte budget (always returning at
    /// least one pair) and say whether more follow; key listings copy no
    /// values; the visitor sees every pair in order.
    #[test]
    fn bounded_exports_and_key_listings() {
        let (_dir, store) = temp_store();
        let group = store.group(1);
        group
            .write_state_machine(Durability::Immediate, |sm| {
                sm.put_kv(4, b"a", &[0; 10])?;
                sm.put_kv(4, b"b", &[0; 10])?;
                sm.put_kv(4, b"c", &[0; 100])?;
                sm.put_kv(5, b"z", b"other vShard")
            })
            .expect("write");
        let keys = |pairs: &KvPairs| pairs.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
        let read = |after: Option<&[u8]>, pairs, bytes| {
            group
                .read_state_machine(|sm| sm.scan_kv_bounded(4, after, pairs, bytes))
                .expect("scan")
        };
        let (page, more) = read(None, 10, 22);
        assert_eq!(
            (keys(&page), more),
            (vec![b"a".to_vec(), b"b".to_vec()], true)
        );
        let (page, more) = read(Some(b"b"), 10, 5);
        assert_eq!(
            (keys(&page), more),
            (vec![b"c".to_vec()], false),
            "one pair over budget"
        );
        let (page, more) = read(None, 1, usize::MAX);
        assert_eq!((keys(&page), more), (vec![b"a".to_vec()], true));
        let (page, more) = read(Some(b"c"), 10, 10);
        assert_eq!((page.len(), more), (0, false));
        let listed = group
            .read_state_machine(|sm| sm.vshard_keys(4, 2))
            .expect("keys");
        assert_eq!(listed, vec![b"a".to_vec(), b"b".to_vec()]);
        let mut seen = Vec::new();
        group
            .read_state_machine(|sm| sm.visit_kv(4, &mut |k, v| seen.push((k.to_vec(), v.len()))))
            .expect("visit");
        assert_eq!(
            seen,
            vec![
                (b"a".to_vec(), 10),
                (b"b".to_vec(), 10),
                (b"c".to_vec(), 100)
            ]
        );
    }

    /// Recorded changes read back in index order after a given index, per
    /// vShard, and a trim removes exactly the rows up to its index.
    #[test]
    fn changes_read_and_trim() {
        let (_dir, store) = temp_store();
        let group = store.group(1);
        group
            .write_state_machine(Durability::Immediate, |sm| {
                for index in [3, 5, 9, 12] {
                    sm.put_change(4, index, &[index as u8])?;
                }
                sm.put_change(5, 4, b"x")?;
                sm.put_vshard_migration(4, b"m")
            })
            .expect("write");
        let indexes = |after, limit| {
            group
                .read_state_machine(|sm| sm.changes(4, after, limit))
                .expect("changes")
                .into_iter()
                .map(|(i, _)| i)
                .collect::<Vec<_>>()
        };
        assert_eq!(indexes(0, 10), vec![3, 5, 9, 12]);
        assert_eq!(indexes(5, 10), vec![9, 12]);
        assert_eq!(indexes(3, 1), vec![5]);
        group
            .write_state_machine(Durability::Immediate, |sm| sm.trim_changes(4, 9))
            .expect("trim");
        assert_eq!(indexes(0, 10), vec![12]);
        let other = group
            .read_state_machine(|sm| sm.changes(5, 0, 10))
            .expect("changes");
        assert_eq!(other, vec![(4, b"x".to_vec())], "other vShards untouched");
        let listed = group
            .read_state_machine(|sm| sm.vshard_migrations())
            .expect("migrations");
        assert_eq!(listed, vec![(4, b"m".to_vec())]);
        group
            .write_state_machine(Durability::Immediate, |sm| sm.remove_vshard_migration(4))
            .expect("remove");
        let gone = group
            .read_state_machine(|sm| sm.vshard_migration(4))
            .expect("read");
        assert_eq!(gone, None);
    }

    /// A failed state-machine write leaves nothing behind.
    #[test]
    fn failed_write_aborts_whole() {
        let (_dir, store) = temp_store();
        let group = store.group(1);
        let failed = group.write_state_machine(Durability::Immediate, |sm| {
            sm.put_kv(1, b"k", b"v")?;
            Err::<(), _>(RaftStoreError::Invalid {
                group: 1,
                doing: "testing",
                reason: "on purpose".into(),
            })
        });
        assert!(failed.is_err());
        let value = group.read_state_machine(|sm| sm.kv(1, b"k")).expect("read");
        assert_eq!(value, None);
    }

    /// A snapshot is never replaced by an older one; an install replaces
    /// the state machine and the snapshot together.
    #[test]
    fn snapshots_only_move_forward() {
        let (_dir, store) = temp_store();
        let group = store.group(2);
        let at = |position: u64| StoredSnapshot {
            position,
            meta: vec![position as u8],
            data: vec![],
        };
        assert!(group.save_snapshot(&at(10)).expect("save"));
        assert!(!group.save_snapshot(&at(9)).expect("save"), "older refused");
        assert_eq!(group.snapshot().expect("read"), Some(at(10)));
        group
            .write_state_machine(Durability::None, |sm| sm.put_kv(1, b"old", b"x"))
            .expect("write");
        let state = StateMachineExport {
            meta: vec![("m".into(), vec![1])],
            vshards: vec![(3, vec![0])],
            kv: vec![(3, b"new".to_vec(), b"y".to_vec())],
            applied: vec![],
            vshard_migrations: vec![(3, vec![7])],
            changes: vec![(3, 12, vec![8])],
        };
        group.install_snapshot(&state, &at(4)).expect("install");
        assert_eq!(group.export_state_machine().expect("export"), state);
        assert_eq!(group.snapshot().expect("read"), Some(at(4)));
    }
}
