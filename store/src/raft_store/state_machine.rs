//! The state-machine half of a group's storage: the `sm_*` tables, read and
//! written inside one redb transaction, exported and imported whole for
//! snapshots, and the group's current snapshot.
//!
//! [`StateMachineView`] is the same reader over a read transaction
//! ([`SmRead`]) or a write transaction ([`SmWrite`]); a write sees its own
//! earlier writes, so a batch of Raft entries applied in one transaction
//! reads what the entries before it wrote.

use std::collections::BTreeMap;
use std::ops::Bound;

use redb::{ReadOnlyTable, ReadableDatabase, ReadableTable, Table, WriteTransaction};

use super::digest::DigestSum;
use super::{
    group_end, Doing, Durability, GroupStore, RaftStoreError, SM_APPLIED, SM_CHANGES, SM_DIGESTS,
    SM_KV, SM_META, SM_MIGRATIONS, SM_VSHARDS, SNAPSHOTS,
};

type StrKey = (u64, &'static str);
type VShardKey = (u64, u16);
type KvKey = (u64, u16, &'static [u8]);
type ChangeKey = (u64, u16, u64);
type Bytes = &'static [u8];
type KvBound<'a> = Bound<(u64, u16, &'a [u8])>;

/// Key-value pairs of one vShard, in key order.
pub type KvPairs = Vec<(Vec<u8>, Vec<u8>)>;
/// `(vshard, key, value)` rows.
pub type KvRows = Vec<(u16, Vec<u8>, Vec<u8>)>;
/// `(vshard, log index, change)` rows.
pub type ChangeRows = Vec<(u16, u64, Vec<u8>)>;

/// A group's state-machine tables, over a read or a write transaction.
pub struct StateMachineView<M, V, K, A, G, C, D> {
    group: u64,
    meta: M,
    vshards: V,
    kv: K,
    applied: A,
    migrations: G,
    changes: C,
    digests: D,
}

/// The state-machine tables of a read transaction (a consistent snapshot).
pub type SmRead = StateMachineView<
    ReadOnlyTable<StrKey, Bytes>,
    ReadOnlyTable<VShardKey, Bytes>,
    ReadOnlyTable<KvKey, Bytes>,
    ReadOnlyTable<StrKey, Bytes>,
    ReadOnlyTable<VShardKey, Bytes>,
    ReadOnlyTable<ChangeKey, Bytes>,
    ReadOnlyTable<VShardKey, Bytes>,
>;

/// The state-machine tables of a write transaction.
pub type SmWrite<'txn> = StateMachineView<
    Table<'txn, StrKey, Bytes>,
    Table<'txn, VShardKey, Bytes>,
    Table<'txn, KvKey, Bytes>,
    Table<'txn, StrKey, Bytes>,
    Table<'txn, VShardKey, Bytes>,
    Table<'txn, ChangeKey, Bytes>,
    Table<'txn, VShardKey, Bytes>,
>;

/// Reads of one group's state machine, the same over [`SmRead`] and
/// [`SmWrite`].
pub trait StateMachineRead {
    /// The group these tables belong to.
    fn group(&self) -> u64;
    /// One state-machine metadata value (last applied, membership, ...).
    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, RaftStoreError>;
    /// One vShard's encoded state.
    fn vshard(&self, vshard: u16) -> Result<Option<Vec<u8>>, RaftStoreError>;
    /// Every vShard this group has a state for, in vShard order.
    fn vshards(&self) -> Result<Vec<(u16, Vec<u8>)>, RaftStoreError>;
    /// One value.
    fn kv(&self, vshard: u16, key: &[u8]) -> Result<Option<Vec<u8>>, RaftStoreError>;
    /// Up to `limit` pairs of one vShard in key order, starting after `after`.
    fn scan_kv(
        &self,
        vshard: u16,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<KvPairs, RaftStoreError>;
    /// The response recorded for an idempotency key.
    fn applied(&self, key: &str) -> Result<Option<Vec<u8>>, RaftStoreError>;
    /// Up to `limit` keys of one vShard in key order (values not copied).
    fn vshard_keys(&self, vshard: u16, limit: usize) -> Result<Vec<Vec<u8>>, RaftStoreError>;
    /// Pairs of one vShard in key order after `after`: at most `max_pairs`,
    /// and no more than `max_bytes` of keys and values (but at least one
    /// pair, so a single large value still makes progress); and whether
    /// the vShard holds more pairs after the last one returned.
    fn scan_kv_bounded(
        &self,
        vshard: u16,
        after: Option<&[u8]>,
        max_pairs: usize,
        max_bytes: usize,
    ) -> Result<(KvPairs, bool), RaftStoreError>;
    /// Calls `visit` with every pair of one vShard, in key order.
    fn visit_kv(
        &self,
        vshard: u16,
        visit: &mut dyn FnMut(&[u8], &[u8]),
    ) -> Result<(), RaftStoreError>;
    /// One vShard's encoded migration bookkeeping.
    fn vshard_migration(&self, vshard: u16) -> Result<Option<Vec<u8>>, RaftStoreError>;
    /// Every vShard with migration bookkeeping, in vShard order.
    fn vshard_migrations(&self) -> Result<Vec<(u16, Vec<u8>)>, RaftStoreError>;
    /// Up to `limit` recorded changes of one vShard with a log index after
    /// `after_index`, in index order.
    fn changes(
        &self,
        vshard: u16,
        after_index: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, RaftStoreError>;
    /// The running digest of one vShard's pairs (one row, whatever the
    /// vShard's size; the empty digest if it holds none).
    fn vshard_digest(&self, vshard: u16) -> Result<DigestSum, RaftStoreError>;
}

/// The range of one vShard's keys in `sm_kv`, starting after `after`.
fn vshard_range(group: u64, vshard: u16, after: Option<&[u8]>) -> (KvBound<'_>, KvBound<'_>) {
    let lower = match after {
        None => Bound::Included((group, vshard, &[][..])),
        Some(key) => Bound::Excluded((group, vshard, key)),
    };
    let upper = match vshard.checked_add(1) {
        Some(next) => Bound::Excluded((group, next, &[][..])),
        None => group_end(group, |g| (g, 0, &[][..])),
    };
    (lower, upper)
}

/// The range of one vShard's recorded changes after `after_index`.
fn changes_range(
    group: u64,
    vshard: u16,
    after_index: u64,
) -> (Bound<ChangeKey>, Bound<ChangeKey>) {
    let lower = Bound::Excluded((group, vshard, after_index));
    let upper = Bound::Included((group, vshard, u64::MAX));
    (lower, upper)
}

/// Reads one vShard's digest row.
fn read_digest<T: ReadableTable<VShardKey, Bytes>>(
    table: &T,
    group: u64,
    vshard: u16,
) -> Result<DigestSum, RaftStoreError> {
    let row = table
        .get((group, vshard))
        .doing(group, "reading a vShard's digest")?;
    match row {
        None => Ok(DigestSum::default()),
        Some(row) => DigestSum::decode(row.value()).ok_or_else(|| RaftStoreError::Corrupt {
            group,
            what: "a vShard's digest row",
            reason: format!("vShard {vshard}: {} bytes, not 48", row.value().len()),
        }),
    }
}

/// Applies `change` to one vShard's digest row (an empty digest has no row).
fn change_digest(
    table: &mut Table<'_, VShardKey, Bytes>,
    group: u64,
    vshard: u16,
    change: impl FnOnce(&mut DigestSum),
) -> Result<(), RaftStoreError> {
    const DOING: &str = "updating a vShard's digest";
    let mut digest = read_digest(table, group, vshard)?;
    change(&mut digest);
    if digest.is_empty() {
        table.remove((group, vshard)).doing(group, DOING)?;
    } else {
        table
            .insert((group, vshard), &digest.encode()[..])
            .doing(group, DOING)?;
    }
    Ok(())
}

impl<M, V, K, A, G, C, D> StateMachineRead for StateMachineView<M, V, K, A, G, C, D>
where
    M: ReadableTable<StrKey, Bytes>,
    V: ReadableTable<VShardKey, Bytes>,
    K: ReadableTable<KvKey, Bytes>,
    A: ReadableTable<StrKey, Bytes>,
    G: ReadableTable<VShardKey, Bytes>,
    C: ReadableTable<ChangeKey, Bytes>,
    D: ReadableTable<VShardKey, Bytes>,
{
    fn group(&self) -> u64 {
        self.group
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, RaftStoreError> {
        let value = self
            .meta
            .get((self.group, key))
            .doing(self.group, "reading state-machine metadata")?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    fn vshard(&self, vshard: u16) -> Result<Option<Vec<u8>>, RaftStoreError> {
        let value = self
            .vshards
            .get((self.group, vshard))
            .doing(self.group, "reading a vShard state")?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    fn vshards(&self) -> Result<Vec<(u16, Vec<u8>)>, RaftStoreError> {
        const DOING: &str = "listing vShard states";
        let range = (self.group, 0)..=(self.group, u16::MAX);
        let mut out = Vec::new();
        for row in self.vshards.range(range).doing(self.group, DOING)? {
            let (key, value) = row.doing(self.group, DOING)?;
            out.push((key.value().1, value.value().to_vec()));
        }
        Ok(out)
    }

    fn kv(&self, vshard: u16, key: &[u8]) -> Result<Option<Vec<u8>>, RaftStoreError> {
        let value = self
            .kv
            .get((self.group, vshard, key))
            .doing(self.group, "reading a key")?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    fn scan_kv(
        &self,
        vshard: u16,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<KvPairs, RaftStoreError> {
        const DOING: &str = "scanning a vShard";
        let range = vshard_range(self.group, vshard, after);
        let mut out = Vec::new();
        for row in self.kv.range(range).doing(self.group, DOING)?.take(limit) {
            let (key, value) = row.doing(self.group, DOING)?;
            out.push((key.value().2.to_vec(), value.value().to_vec()));
        }
        Ok(out)
    }

    fn applied(&self, key: &str) -> Result<Option<Vec<u8>>, RaftStoreError> {
        let value = self
            .applied
            .get((self.group, key))
            .doing(self.group, "reading an applied idempotency key")?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    fn vshard_keys(&self, vshard: u16, limit: usize) -> Result<Vec<Vec<u8>>, RaftStoreError> {
        const DOING: &str = "listing a vShard's keys";
        let range = vshard_range(self.group, vshard, None);
        let mut out = Vec::new();
        for row in self.kv.range(range).doing(self.group, DOING)?.take(limit) {
            let (key, _) = row.doing(self.group, DOING)?;
            out.push(key.value().2.to_vec());
        }
        Ok(out)
    }

    fn scan_kv_bounded(
        &self,
        vshard: u16,
        after: Option<&[u8]>,
        max_pairs: usize,
        max_bytes: usize,
    ) -> Result<(KvPairs, bool), RaftStoreError> {
        const DOING: &str = "exporting a vShard chunk";
        let range = vshard_range(self.group, vshard, after);
        let mut out: KvPairs = Vec::new();
        let mut bytes = 0usize;
        for row in self.kv.range(range).doing(self.group, DOING)? {
            let (key, value) = row.doing(self.group, DOING)?;
            let (key, value) = (key.value().2, value.value());
            let size = key.len().saturating_add(value.len());
            let full = out.len() >= max_pairs
                || (!out.is_empty() && bytes.saturating_add(size) > max_bytes);
            if full {
                return Ok((out, true));
            }
            bytes = bytes.saturating_add(size);
            out.push((key.to_vec(), value.to_vec()));
        }
        Ok((out, false))
    }

    fn visit_kv(
        &self,
        vshard: u16,
        visit: &mut dyn FnMut(&[u8], &[u8]),
    ) -> Result<(), RaftStoreError> {
        const DOING: &str = "reading a vShard";
        let range = vshard_range(self.group, vshard, None);
        for row in self.kv.range(range).doing(self.group, DOING)? {
            let (key, value) = row.doing(self.group, DOING)?;
            visit(key.value().2, value.value());
        }
        Ok(())
    }

    fn vshard_migration(&self, vshard: u16) -> Result<Option<Vec<u8>>, RaftStoreError> {
        let value = self
            .migrations
            .get((self.group, vshard))
            .doing(self.group, "reading a vShard's migration")?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    fn vshard_migrations(&self) -> Result<Vec<(u16, Vec<u8>)>, RaftStoreError> {
        const DOING: &str = "listing vShard migrations";
        let range = (self.group, 0)..=(self.group, u16::MAX);
        let mut out = Vec::new();
        for row in self.migrations.range(range).doing(self.group, DOING)? {
            let (key, value) = row.doing(self.group, DOING)?;
            out.push((key.value().1, value.value().to_vec()));
        }
        Ok(out)
    }

    fn changes(
        &self,
        vshard: u16,
        after_index: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, RaftStoreError> {
        const DOING: &str = "reading recorded changes";
        let range = changes_range(self.group, vshard, after_index);
        let mut out = Vec::new();
        for row in self
            .changes
            .range(range)
            .doing(self.group, DOING)?
            .take(limit)
        {
            let (key, value) = row.doing(self.group, DOING)?;
            out.push((key.value().2, value.value().to_vec()));
        }
        Ok(out)
    }

    fn vshard_digest(&self, vshard: u16) -> Result<DigestSum, RaftStoreError> {
        read_digest(&self.digests, self.group, vshard)
    }
}

impl SmWrite<'_> {
    /// Writes one state-machine metadata value.
    pub fn put_meta(&mut self, key: &str, value: &[u8]) -> Result<(), RaftStoreError> {
        self.meta
            .insert((self.group, key), value)
            .doing(self.group, "writing state-machine metadata")?;
        Ok(())
    }

    /// Writes one vShard's encoded state.
    pub fn put_vshard(&mut self, vshard: u16, state: &[u8]) -> Result<(), RaftStoreError> {
        self.vshards
            .insert((self.group, vshard), state)
            .doing(self.group, "writing a vShard state")?;
        Ok(())
    }

    /// Forgets one vShard's state (its keys stay: see [`Self::delete_vshard_keys`]).
    pub fn remove_vshard(&mut self, vshard: u16) -> Result<(), RaftStoreError> {
        self.vshards
            .remove((self.group, vshard))
            .doing(self.group, "removing a vShard state")?;
        Ok(())
    }

    /// Writes one value (and the vShard's digest: the new pair in, the one
    /// it replaced out).
    pub fn put_kv(&mut self, vshard: u16, key: &[u8], value: &[u8]) -> Result<(), RaftStoreError> {
        let group = self.group;
        let old = self
            .kv
            .insert((group, vshard, key), value)
            .doing(group, "writing a key")?;
        let replaced = old.map(|old| DigestSum::of_pairs([(key, old.value())]));
        change_digest(&mut self.digests, group, vshard, |digest| {
            if let Some(replaced) = &replaced {
                digest.subtract(replaced);
            }
            digest.add_pair(key, value);
        })
    }

    /// Deletes one key (and its pair from the vShard's digest); says
    /// whether it existed.
    pub fn delete_kv(&mut self, vshard: u16, key: &[u8]) -> Result<bool, RaftStoreError> {
        let group = self.group;
        let old = self
            .kv
            .remove((group, vshard, key))
            .doing(group, "deleting a key")?;
        let Some(removed) = old.map(|old| DigestSum::of_pairs([(key, old.value())])) else {
            return Ok(false);
        };
        change_digest(&mut self.digests, group, vshard, |digest| {
            digest.subtract(&removed)
        })?;
        Ok(true)
    }

    /// Deletes up to `limit` keys of one vShard (the first ones in key
    /// order); returns how many it deleted. A bounded batch: callers loop.
    pub fn delete_vshard_keys(&mut self, vshard: u16, limit: u64) -> Result<u64, RaftStoreError> {
        const DOING: &str = "deleting a vShard's keys";
        let group = self.group;
        let range = vshard_range(group, vshard, None);
        let mut deleted = 0;
        let mut removed = DigestSum::default();
        let extracted = self
            .kv
            .extract_from_if(range, |_, _| true)
            .doing(group, DOING)?;
        // Only rows the iterator yields are removed: `take` never reads past
        // the limit.
        for row in extracted.take(usize::try_from(limit).unwrap_or(usize::MAX)) {
            let (key, value) = row.doing(group, DOING)?;
            removed.add_pair(key.value().2, value.value());
            deleted += 1;
        }
        if deleted > 0 {
            change_digest(&mut self.digests, group, vshard, |digest| {
                digest.subtract(&removed)
            })?;
        }
        Ok(deleted)
    }

    /// Records the response to an idempotency key.
    pub fn put_applied(&mut self, key: &str, response: &[u8]) -> Result<(), RaftStoreError> {
        self.applied
            .insert((self.group, key), response)
            .doing(self.group, "recording an applied idempotency key")?;
        Ok(())
    }

    /// Deletes the given keys of one vShard; returns how many existed.
    pub fn delete_keys(&mut self, vshard: u16, keys: &[Vec<u8>]) -> Result<u64, RaftStoreError> {
        let mut deleted = 0;
        for key in keys {
            if self.delete_kv(vshard, key)? {
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// Writes one vShard's encoded migration bookkeeping.
    pub fn put_vshard_migration(
        &mut self,
        vshard: u16,
        record: &[u8],
    ) -> Result<(), RaftStoreError> {
        self.migrations
            .insert((self.group, vshard), record)
            .doing(self.group, "writing a vShard's migration")?;
        Ok(())
    }

    /// Forgets one vShard's migration bookkeeping.
    pub fn remove_vshard_migration(&mut self, vshard: u16) -> Result<(), RaftStoreError> {
        self.migrations
            .remove((self.group, vshard))
            .doing(self.group, "removing a vShard's migration")?;
        Ok(())
    }

    /// Records one change of a tracked vShard under the log index that
    /// applied it.
    pub fn put_change(
        &mut self,
        vshard: u16,
        index: u64,
        change: &[u8],
    ) -> Result<(), RaftStoreError> {
        self.changes
            .insert((self.group, vshard, index), change)
            .doing(self.group, "recording a change")?;
        Ok(())
    }

    /// Deletes the recorded changes of one vShard up to and including
    /// `up_to_index`.
    pub fn trim_changes(&mut self, vshard: u16, up_to_index: u64) -> Result<(), RaftStoreError> {
        self.changes
            .retain_in(
                (self.group, vshard, 0)..=(self.group, vshard, up_to_index),
                |_, _| false,
            )
            .doing(self.group, "trimming recorded changes")?;
        Ok(())
    }
}

/// A group's whole state machine as bytes: what a snapshot carries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateMachineExport {
    /// `sm_meta` rows: `(name, value)`.
    pub meta: Vec<(String, Vec<u8>)>,
    /// `sm_vshards` rows: `(vshard, state)`.
    pub vshards: Vec<(u16, Vec<u8>)>,
    /// `sm_kv` rows: `(vshard, key, value)`.
    pub kv: KvRows,
    /// `sm_applied` rows: `(idempotency key, response)`.
    pub applied: Vec<(String, Vec<u8>)>,
    /// `sm_vshard_migrations` rows: `(vshard, bookkeeping)`.
    pub vshard_migrations: Vec<(u16, Vec<u8>)>,
    /// `sm_changes` rows: `(vshard, log index, change)`.
    pub changes: ChangeRows,
}

/// A group's current snapshot, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSnapshot {
    /// Orders snapshots: one past the last log index it covers (0 = none).
    pub position: u64,
    /// The encoded snapshot metadata.
    pub meta: Vec<u8>,
    /// The encoded snapshot data.
    pub data: Vec<u8>,
}

const SNAPSHOT_POSITION: &str = "position";
const SNAPSHOT_META: &str = "meta";
const SNAPSHOT_DATA: &str = "data";

/// Deletes every `sm_*` row of a group inside `txn`.
pub(crate) fn clear_state_machine(
    txn: &WriteTransaction,
    group: u64,
    doing: &'static str,
) -> Result<(), RaftStoreError> {
    for table in [SM_META, SM_APPLIED] {
        let mut table = txn.open_table(table).doing(group, doing)?;
        let range = (Bound::Included((group, "")), group_end(group, |g| (g, "")));
        table.retain_in(range, |_, _| false).doing(group, doing)?;
    }
    for table in [SM_VSHARDS, SM_MIGRATIONS, SM_DIGESTS] {
        let mut table = txn.open_table(table).doing(group, doing)?;
        table
            .retain_in((group, 0)..=(group, u16::MAX), |_, _| false)
            .doing(group, doing)?;
    }
    let mut changes = txn.open_table(SM_CHANGES).doing(group, doing)?;
    changes
        .retain_in((group, 0, 0)..=(group, u16::MAX, u64::MAX), |_, _| false)
        .doing(group, doing)?;
    let mut kv = txn.open_table(SM_KV).doing(group, doing)?;
    let range = (
        Bound::Included((group, 0, &[][..])),
        group_end(group, |g| (g, 0, &[][..])),
    );
    kv.retain_in(range, |_, _| false).doing(group, doing)?;
    Ok(())
}

fn str_rows<T: ReadableTable<StrKey, Bytes>>(
    table: &T,
    group: u64,
    doing: &'static str,
) -> Result<Vec<(String, Vec<u8>)>, RaftStoreError> {
    let range = (Bound::Included((group, "")), group_end(group, |g| (g, "")));
    let mut out = Vec::new();
    for row in table.range(range).doing(group, doing)? {
        let (key, value) = row.doing(group, doing)?;
        out.push((key.value().1.to_string(), value.value().to_vec()));
    }
    Ok(out)
}

fn vshard_rows<T: ReadableTable<VShardKey, Bytes>>(
    table: &T,
    group: u64,
    doing: &'static str,
) -> Result<Vec<(u16, Vec<u8>)>, RaftStoreError> {
    let mut out = Vec::new();
    for row in table
        .range((group, 0)..=(group, u16::MAX))
        .doing(group, doing)?
    {
        let (key, value) = row.doing(group, doing)?;
        out.push((key.value().1, value.value().to_vec()));
    }
    Ok(out)
}

fn change_rows<T: ReadableTable<ChangeKey, Bytes>>(
    table: &T,
    group: u64,
    doing: &'static str,
) -> Result<ChangeRows, RaftStoreError> {
    let mut out = Vec::new();
    let range = (group, 0, 0)..=(group, u16::MAX, u64::MAX);
    for row in table.range(range).doing(group, doing)? {
        let (key, value) = row.doing(group, doing)?;
        let (_, vshard, index) = key.value();
        out.push((vshard, index, value.value().to_vec()));
    }
    Ok(out)
}

fn kv_rows<T: ReadableTable<KvKey, Bytes>>(
    table: &T,
    group: u64,
    doing: &'static str,
) -> Result<KvRows, RaftStoreError> {
    let range = (
        Bound::Included((group, 0, &[][..])),
        group_end(group, |g| (g, 0, &[][..])),
    );
    let mut out = Vec::new();
    for row in table.range(range).doing(group, doing)? {
        let (key, value) = row.doing(group, doing)?;
        let (_, vshard, key) = key.value();
        out.push((vshard, key.to_vec(), value.value().to_vec()));
    }
    Ok(out)
}

fn import_rows(
    txn: &WriteTransaction,
    group: u64,
    state: &StateMachineExport,
    doing: &'static str,
) -> Result<(), RaftStoreError> {
    let mut meta = txn.open_table(SM_META).doing(group, doing)?;
    for (key, value) in &state.meta {
        meta.insert((group, key.as_str()), value.as_slice())
            .doing(group, doing)?;
    }
    let mut vshards = txn.open_table(SM_VSHARDS).doing(group, doing)?;
    for (vshard, value) in &state.vshards {
        vshards
            .insert((group, *vshard), value.as_slice())
            .doing(group, doing)?;
    }
    let mut kv = txn.open_table(SM_KV).doing(group, doing)?;
    let mut digests: BTreeMap<u16, DigestSum> = BTreeMap::new();
    for (vshard, key, value) in &state.kv {
        kv.insert((group, *vshard, key.as_slice()), value.as_slice())
            .doing(group, doing)?;
        digests.entry(*vshard).or_default().add_pair(key, value);
    }
    // The digests are not part of a snapshot: they are recomputed from the
    // pairs it carries.
    let mut digest_rows = txn.open_table(SM_DIGESTS).doing(group, doing)?;
    for (vshard, digest) in digests {
        digest_rows
            .insert((group, vshard), &digest.encode()[..])
            .doing(group, doing)?;
    }
    let mut applied = txn.open_table(SM_APPLIED).doing(group, doing)?;
    for (key, value) in &state.applied {
        applied
            .insert((group, key.as_str()), value.as_slice())
            .doing(group, doing)?;
    }
    let mut migrations = txn.open_table(SM_MIGRATIONS).doing(group, doing)?;
    for (vshard, value) in &state.vshard_migrations {
        migrations
            .insert((group, *vshard), value.as_slice())
            .doing(group, doing)?;
    }
    let mut changes = txn.open_table(SM_CHANGES).doing(group, doing)?;
    for (vshard, index, value) in &state.changes {
        changes
            .insert((group, *vshard, *index), value.as_slice())
            .doing(group, doing)?;
    }
    Ok(())
}

fn write_snapshot(
    txn: &WriteTransaction,
    group: u64,
    snapshot: &StoredSnapshot,
    doing: &'static str,
) -> Result<(), RaftStoreError> {
    let mut table = txn.open_table(SNAPSHOTS).doing(group, doing)?;
    let position = snapshot.position.to_le_bytes();
    let rows: [(&str, &[u8]); 3] = [
        (SNAPSHOT_POSITION, &position),
        (SNAPSHOT_META, &snapshot.meta),
        (SNAPSHOT_DATA, &snapshot.data),
    ];
    for (key, value) in rows {
        table.insert((group, key), value).doing(group, doing)?;
    }
    Ok(())
}

fn read_snapshot<T: ReadableTable<StrKey, Bytes>>(
    table: &T,
    group: u64,
    doing: &'static str,
) -> Result<Option<StoredSnapshot>, RaftStoreError> {
    let get = |key: &str| -> Result<Option<Vec<u8>>, RaftStoreError> {
        let value = table.get((group, key)).doing(group, doing)?;
        Ok(value.map(|v| v.value().to_vec()))
    };
    let Some(position) = get(SNAPSHOT_POSITION)? else {
        return Ok(None);
    };
    let corrupt = |reason: &str| RaftStoreError::Corrupt {
        group,
        what: "the stored snapshot",
        reason: reason.to_string(),
    };
    let position = <[u8; 8]>::try_from(position.as_slice())
        .map(u64::from_le_bytes)
        .map_err(|_| corrupt("its position is not 8 bytes"))?;
    let meta = get(SNAPSHOT_META)?.ok_or_else(|| corrupt("its metadata is missing"))?;
    let data = get(SNAPSHOT_DATA)?.ok_or_else(|| corrupt("its data is missing"))?;
    Ok(Some(StoredSnapshot {
        position,
        meta,
        data,
    }))
}

impl GroupStore {
    /// Runs `f` over a consistent read-only view of the state machine.
    pub fn read_state_machine<T, E: From<RaftStoreError>>(
        &self,
        f: impl FnOnce(&SmRead) -> Result<T, E>,
    ) -> Result<T, E> {
        const DOING: &str = "reading the state machine";
        let group = self.group;
        let read = self.db.begin_read().doing(group, DOING)?;
        let view = SmRead {
            group,
            meta: read.open_table(SM_META).doing(group, DOING)?,
            vshards: read.open_table(SM_VSHARDS).doing(group, DOING)?,
            kv: read.open_table(SM_KV).doing(group, DOING)?,
            applied: read.open_table(SM_APPLIED).doing(group, DOING)?,
            migrations: read.open_table(SM_MIGRATIONS).doing(group, DOING)?,
            changes: read.open_table(SM_CHANGES).doing(group, DOING)?,
            digests: read.open_table(SM_DIGESTS).doing(group, DOING)?,
        };
        f(&view)
    }

    /// Runs `f` over the state machine inside one write transaction and
    /// commits with `durability` if `f` succeeds; an error aborts it whole.
    pub fn write_state_machine<T, E: From<RaftStoreError>>(
        &self,
        durability: Durability,
        f: impl FnOnce(&mut SmWrite<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        const DOING: &str = "writing the state machine";
        let group = self.group;
        let txn = self.begin_write(durability, DOING)?;
        let outcome = {
            let mut view = SmWrite {
                group,
                meta: txn.open_table(SM_META).doing(group, DOING)?,
                vshards: txn.open_table(SM_VSHARDS).doing(group, DOING)?,
                kv: txn.open_table(SM_KV).doing(group, DOING)?,
                applied: txn.open_table(SM_APPLIED).doing(group, DOING)?,
                migrations: txn.open_table(SM_MIGRATIONS).doing(group, DOING)?,
                changes: txn.open_table(SM_CHANGES).doing(group, DOING)?,
                digests: txn.open_table(SM_DIGESTS).doing(group, DOING)?,
            };
            f(&mut view)
        };
        match outcome {
            Ok(value) => {
                txn.commit().doing(group, DOING)?;
                Ok(value)
            }
            Err(error) => {
                txn.abort().doing(group, "aborting a state-machine write")?;
                Err(error)
            }
        }
    }

    /// The whole state machine, read from one consistent snapshot.
    pub fn export_state_machine(&self) -> Result<StateMachineExport, RaftStoreError> {
        const DOING: &str = "exporting the state machine";
        let group = self.group;
        let read = self.db.begin_read().doing(group, DOING)?;
        let meta = read.open_table(SM_META).doing(group, DOING)?;
        let vshards = read.open_table(SM_VSHARDS).doing(group, DOING)?;
        let kv = read.open_table(SM_KV).doing(group, DOING)?;
        let applied = read.open_table(SM_APPLIED).doing(group, DOING)?;
        let migrations = read.open_table(SM_MIGRATIONS).doing(group, DOING)?;
        let changes = read.open_table(SM_CHANGES).doing(group, DOING)?;
        Ok(StateMachineExport {
            meta: str_rows(&meta, group, DOING)?,
            vshards: vshard_rows(&vshards, group, DOING)?,
            kv: kv_rows(&kv, group, DOING)?,
            applied: str_rows(&applied, group, DOING)?,
            vshard_migrations: vshard_rows(&migrations, group, DOING)?,
            changes: change_rows(&changes, group, DOING)?,
        })
    }

    /// Stores `snapshot` as the group's current one, durably, unless the
    /// stored one is at a later position; says whether it stored it.
    ///
    /// The commit is `Durability::Immediate` even when nothing changes: it
    /// is what makes earlier non-durable state-machine commits durable
    /// before Raft purges the log up to this snapshot (see the module doc).
    pub fn save_snapshot(&self, snapshot: &StoredSnapshot) -> Result<bool, RaftStoreError> {
        const DOING: &str = "saving a snapshot";
        let group = self.group;
        let txn = self.begin_write(Durability::Immediate, DOING)?;
        let stored = {
            let table = txn.open_table(SNAPSHOTS).doing(group, DOING)?;
            let current = read_snapshot(&table, group, DOING)?;
            drop(table);
            let newer = current.is_none_or(|c| c.position <= snapshot.position);
            if newer {
                write_snapshot(&txn, group, snapshot, DOING)?;
            }
            newer
        };
        txn.commit().doing(group, DOING)?;
        Ok(stored)
    }

    /// The group's current snapshot, if it has one.
    pub fn snapshot(&self) -> Result<Option<StoredSnapshot>, RaftStoreError> {
        const DOING: &str = "reading the snapshot";
        let read = self.db.begin_read().doing(self.group, DOING)?;
        let table = read.open_table(SNAPSHOTS).doing(self.group, DOING)?;
        read_snapshot(&table, self.group, DOING)
    }

    /// Replaces the whole state machine with `state` and makes `snapshot`
    /// the current one, in one durable transaction.
    pub fn install_snapshot(
        &self,
        state: &StateMachineExport,
        snapshot: &StoredSnapshot,
    ) -> Result<(), RaftStoreError> {
        const DOING: &str = "installing a snapshot";
        let group = self.group;
        let txn = self.begin_write(Durability::Immediate, DOING)?;
        clear_state_machine(&txn, group, DOING)?;
        import_rows(&txn, group, state, DOING)?;
        write_snapshot(&txn, group, snapshot, DOING)?;
        txn.commit().doing(group, DOING)
    }
}
