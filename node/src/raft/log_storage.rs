//! [`LogStore`]: one group's Raft log and vote, in redb, for openraft's
//! storage-v2 (`RaftLogReader` + `RaftLogStorage`).
//!
//! **Invariants** (the openraft contract):
//! - `append` makes the entries readable and durable (one fsynced redb
//!   transaction) before it calls the flush callback and returns.
//! - `save_vote` is durable before it returns; the committed log id is a
//!   hint and written without fsync (see `shardflow_store::raft_store`).
//! - `truncate` deletes from the given index inclusive; `purge` deletes up
//!   to it inclusive and records it as the last purged log id in the same
//!   transaction, under its own key (never shared with another log id).
//! - An entry read back must carry the index it is stored under; a mismatch
//!   is a typed corruption error, never a panic.
//! - Replication reads (`limited_get_log_entries`) return at most
//!   [`MAX_REPLICATION_BYTES`] of stored entries (at least one entry), so an
//!   AppendEntries batch to a lagging follower stays well inside the
//!   transport's frame limit however large the entries (copy chunks) are.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, LogState, OptionalSend, RaftLogReader};
use shardflow_store::raft_store::Durability;
use shardflow_store::GroupStore;

use super::error::{blocking, InGroup, RaftStorageError};
use super::records::{
    decode, decode_entry, decode_log_id, encode, encode_entry, encode_log_id, VoteRecord, VoteV1,
    COMMITTED_KEY, LAST_PURGED_KEY, VOTE_KEY,
};
use super::types::{Entry, LogId, StorageError, TypeConfig, Vote};

/// The most stored entry bytes one replication read returns (a single
/// larger entry is returned alone). openraft's `max_payload_entries`
/// bounds the count of an AppendEntries, this its bytes: far below the
/// transport's frame limit (16 MiB), and small enough that a follower
/// receives and fsyncs it within openraft's AppendEntries timeout (one
/// heartbeat interval) on a busy disk, so a lagging follower catches up in
/// steps instead of timing out on one huge batch again and again.
pub const MAX_REPLICATION_BYTES: usize = 2 * 1024 * 1024;

/// One group's Raft log storage. Cheap to clone; clones share the store.
#[derive(Clone)]
pub struct LogStore {
    store: GroupStore,
}

impl LogStore {
    /// The log of the group `store` is bound to.
    pub fn new(store: GroupStore) -> Self {
        Self { store }
    }

    /// The group this log belongs to.
    pub fn group(&self) -> u64 {
        self.store.group()
    }
}

/// `[start, end)` of a range of log indexes.
fn index_bounds<RB: RangeBounds<u64>>(range: &RB) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&i) => i.saturating_add(1),
        Bound::Excluded(&i) => i,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

/// Decodes a stored entry and checks it sits under its own index.
fn decode_stored(group: u64, index: u64, bytes: &[u8]) -> Result<Entry, RaftStorageError> {
    let entry = decode_entry(bytes).in_group(group)?;
    if entry.log_id.index != index {
        return Err(RaftStorageError::Inconsistent {
            group,
            what: "a log entry",
            reason: format!("stored at index {index}, it says {}", entry.log_id.index),
        });
    }
    Ok(entry)
}

fn read_entries(
    store: &GroupStore,
    start: u64,
    end: u64,
    max_bytes: usize,
) -> Result<Vec<Entry>, RaftStorageError> {
    let group = store.group();
    let rows = store.read_log_limited(start, end, max_bytes)?;
    rows.iter()
        .map(|(index, bytes)| decode_stored(group, *index, bytes))
        .collect()
}

fn log_state(store: &GroupStore) -> Result<LogState<TypeConfig>, RaftStorageError> {
    let group = store.group();
    let purged = store.raft_meta(LAST_PURGED_KEY)?;
    let last_purged_log_id = decode_log_id(purged.as_deref()).in_group(group)?;
    let last = match store.last_log()? {
        Some((index, bytes)) => Some(decode_stored(group, index, &bytes)?.log_id),
        None => None,
    };
    Ok(LogState {
        last_log_id: last.or(last_purged_log_id),
        last_purged_log_id,
    })
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (start, end) = index_bounds(&range);
        let store = self.store.clone();
        blocking(
            self.group(),
            ErrorSubject::Logs,
            ErrorVerb::Read,
            move || read_entries(&store, start, end, usize::MAX),
        )
        .await
    }

    /// The first entries of `[start, end)` within [`MAX_REPLICATION_BYTES`]
    /// (at least one): what replication sends a follower in one
    /// AppendEntries.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        let store = self.store.clone();
        blocking(
            self.group(),
            ErrorSubject::Logs,
            ErrorVerb::Read,
            move || read_entries(&store, start, end, MAX_REPLICATION_BYTES),
        )
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let store = self.store.clone();
        blocking(
            self.group(),
            ErrorSubject::Logs,
            ErrorVerb::Read,
            move || log_state(&store),
        )
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let record = VoteRecord::V1(VoteV1::from(vote));
        let store = self.store.clone();
        blocking(
            self.group(),
            ErrorSubject::Vote,
            ErrorVerb::Write,
            move || {
                let bytes = encode("the vote", &record).in_group(store.group())?;
                Ok(store.put_raft_meta(VOTE_KEY, &bytes, Durability::Immediate)?)
            },
        )
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        let store = self.store.clone();
        blocking(
            self.group(),
            ErrorSubject::Vote,
            ErrorVerb::Read,
            move || {
                let Some(bytes) = store.raft_meta(VOTE_KEY)? else {
                    return Ok(None);
                };
                let VoteRecord::V1(vote) = decode("the vote", &bytes).in_group(store.group())?;
                Ok(Some(Vote::from(vote)))
            },
        )
        .await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let store = self.store.clone();
        blocking(
            self.group(),
            ErrorSubject::Store,
            ErrorVerb::Write,
            move || {
                let bytes = encode_log_id(committed.as_ref()).in_group(store.group())?;
                Ok(store.put_raft_meta(COMMITTED_KEY, &bytes, Durability::None)?)
            },
        )
        .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let store = self.store.clone();
        blocking(
            self.group(),
            ErrorSubject::Store,
            ErrorVerb::Read,
            move || {
                let bytes = store.raft_meta(COMMITTED_KEY)?;
                decode_log_id(bytes.as_deref()).in_group(store.group())
            },
        )
        .await
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let store = self.store.clone();
        blocking(
            self.group(),
            ErrorSubject::Logs,
            ErrorVerb::Write,
            move || {
                let group = store.group();
                let mut rows = Vec::with_capacity(entries.len());
                for entry in &entries {
                    rows.push((entry.log_id.index, encode_entry(entry).in_group(group)?));
                }
                let borrowed = rows.iter().map(|(index, bytes)| (*index, bytes.as_slice()));
                Ok(store.append_log(borrowed)?)
            },
        )
        .await?;
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let store = self.store.clone();
        let subject = ErrorSubject::Log(log_id);
        blocking(self.group(), subject, ErrorVerb::Delete, move || {
            Ok(store.truncate_log_from(log_id.index)?)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let store = self.store.clone();
        let subject = ErrorSubject::Log(log_id);
        blocking(self.group(), subject, ErrorVerb::Delete, move || {
            let bytes = encode_log_id(Some(&log_id)).in_group(store.group())?;
            Ok(store.purge_log_upto(log_id.index, LAST_PURGED_KEY, &bytes)?)
        })
        .await
    }
}
