//! [`StateMachineStore`]: one group's state machine in redb, for openraft's
//! storage-v2 (`RaftStateMachine` + `RaftSnapshotBuilder`), plus local reads
//! of its state for the node's client and admin paths.
//!
//! Group 0 runs the metadata state machine, every other group the data
//! state machine (`crate::metadata`, `crate::data`); both share this store.
//!
//! **Invariants:**
//! - `apply` writes a whole batch of entries, their last-applied log id and
//!   any membership they carry in one redb transaction, and returns one
//!   response per entry. A data group commits with `Durability::None`; why
//!   that is safe is argued in `shardflow_store::raft_store` (snapshots
//!   commit with `Durability::Immediate` before the log is purged up to
//!   them). Group 0 commits with `Durability::Immediate`, so a node's
//!   routing table never goes back across a crash (see `apply_batch`).
//! - A snapshot is the group's whole state-machine rows at one consistent
//!   read, versioned ([`super::records::SnapshotData`]); its metadata is read
//!   from the same rows, so they always agree.
//! - `install_snapshot` replaces the state atomically, and refuses data
//!   whose own last-applied id or membership contradict the metadata.
//! - Local reads apply the same owner check as writes, but are not
//!   linearizable on their own: the caller first confirms leadership and
//!   waits for the read index (`Raft::ensure_linearizable`).
//! - The migration reads (`export_chunk`, `changes_after`, `vshard_digest`)
//!   each come from one redb read transaction, so what they return is
//!   consistent with the applied index they report.

use std::collections::BTreeSet;
use std::io::Cursor;
use std::sync::{Arc, Mutex, PoisonError};

use openraft::storage::RaftStateMachine;
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder};
use shardflow_store::raft_store::{Durability, StateMachineRead, StoredSnapshot};
use shardflow_store::GroupStore;

use super::apply::{apply_entry, load_metadata, load_vshard, load_vshard_migration};
use super::error::{blocking, run_blocking, InGroup, RaftStorageError};
use super::records::{
    decode, decode_log_id, decode_snapshot_meta, encode, encode_log_id, encode_snapshot_meta,
    MembershipRecord, SnapshotData, BOOTSTRAP_ASSIGNED_KEY, LAST_APPLIED_KEY, MEMBERSHIP_KEY,
};
use super::types::{
    Entry, EntryPayload, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};
use crate::command::{Change, DataOp, GroupKind, Op, Rejection, Response};
use crate::data::{
    check_serving, ChangeRecord, VShardDigest, VShardMigration, VShardMigrationRecord,
    VShardRecord, VShardState,
};
use crate::metadata::MetadataState;
use crate::vshard::{is_valid, vshard_of};

/// A local read that failed: refused by the owner check, or storage.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error(transparent)]
    Storage(#[from] RaftStorageError),
}

/// Reading recorded changes failed.
#[derive(Debug, thiserror::Error)]
pub enum ChangesError {
    /// The change table cannot answer: the vShard is not tracked here, or
    /// changes in the range asked were trimmed or never recorded.
    #[error("vShard {vshard}: the changes after index {after_index} are not available: {reason}")]
    Unavailable {
        vshard: u16,
        after_index: u64,
        reason: String,
    },
    #[error(transparent)]
    Storage(#[from] RaftStorageError),
}

/// A chunk of a vShard's base copy, read from one consistent snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportChunk {
    /// The migration tracking the vShard's changes.
    pub migration: String,
    /// Pairs in key order, after the key asked for.
    pub pairs: Vec<(Vec<u8>, Vec<u8>)>,
    /// The last applied log index of the snapshot the pairs come from.
    pub applied_index: u64,
    /// Whether the vShard holds pairs after the last one returned.
    pub more: bool,
}

/// Recorded changes of a tracked vShard, read from one consistent snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangesPage {
    /// The migration tracking the vShard.
    pub migration: String,
    /// `(source log index, change)`, in index order.
    pub changes: Vec<(u64, Change)>,
    /// The last applied log index of the snapshot. If fewer changes than
    /// the limit came back, every change up to this index is included.
    pub applied_index: u64,
}

/// A vShard's digest at one applied index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DigestAt {
    /// The vShard's state here (the digest covers its keys in any state).
    pub state: Option<VShardState>,
    pub digest: VShardDigest,
    pub applied_index: u64,
}

/// One group's state machine. Cheap to clone; clones share the store.
#[derive(Clone)]
pub struct StateMachineStore {
    store: GroupStore,
    kind: GroupKind,
    /// vShards a `Fence`, `BeginIncoming` or `MarkMoved` applied here since
    /// this store was made, not yet seen serving again: the ones worth
    /// checking before a client write is proposed (see
    /// [`Self::unserving_state`]). Shared by the clones of this store.
    maybe_unserving: Arc<Mutex<BTreeSet<u16>>>,
}

/// The vShard an entry may stop serving here (a fence, an incoming copy,
/// a ghost).
fn stops_serving(entry: &Entry) -> Option<u16> {
    let EntryPayload::Normal(command) = &entry.payload else {
        return None;
    };
    match command.op() {
        Op::Data(
            DataOp::Fence { vshard, .. }
            | DataOp::BeginIncoming { vshard, .. }
            | DataOp::MarkMoved { vshard, .. },
        ) => Some(*vshard),
        _ => None,
    }
}

/// Builds snapshots of one group's state machine.
pub struct SnapshotBuilder {
    store: GroupStore,
}

fn decode_membership(
    group: u64,
    bytes: Option<&[u8]>,
) -> Result<StoredMembership, RaftStorageError> {
    let Some(bytes) = bytes else {
        return Ok(StoredMembership::default());
    };
    let MembershipRecord::V1(stored) = decode("the membership", bytes).in_group(group)?;
    Ok(stored.into())
}

fn read_applied_state<R: StateMachineRead>(
    sm: &R,
) -> Result<(Option<LogId>, StoredMembership), RaftStorageError> {
    let group = sm.group();
    let last_applied = decode_log_id(sm.meta(LAST_APPLIED_KEY)?.as_deref()).in_group(group)?;
    let membership = decode_membership(group, sm.meta(MEMBERSHIP_KEY)?.as_deref())?;
    Ok((last_applied, membership))
}

/// The last applied id and membership recorded in exported meta rows.
fn applied_state_in_rows(
    group: u64,
    rows: &[(String, Vec<u8>)],
) -> Result<(Option<LogId>, StoredMembership), RaftStorageError> {
    let row = |key: &str| {
        rows.iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
    };
    let last_applied = decode_log_id(row(LAST_APPLIED_KEY)).in_group(group)?;
    let membership = decode_membership(group, row(MEMBERSHIP_KEY))?;
    Ok((last_applied, membership))
}

/// Orders snapshots: one past the last index covered, 0 for none.
fn position(last: Option<&LogId>) -> u64 {
    last.map_or(0, |id| id.index.saturating_add(1))
}

fn snapshot_id(last: Option<&LogId>, data: &[u8]) -> String {
    let digest = blake3::hash(data).to_hex();
    let hash = &digest.as_str()[..16];
    match last {
        Some(id) => format!(
            "{}-{}-{}-{hash}",
            id.leader_id.term, id.leader_id.node_id, id.index
        ),
        None => format!("empty-{hash}"),
    }
}

fn apply_batch(
    store: &GroupStore,
    kind: GroupKind,
    entries: &[Entry],
) -> Result<Vec<Response>, RaftStorageError> {
    let Some(last) = entries.last().map(|e| e.log_id) else {
        return Ok(Vec::new());
    };
    let group = store.group();
    // Group 0's applies are durable: what a node reports of the routing
    // table (its status, the routes it hands clients) must never go back
    // after a crash (invariant 3), and its metadata is what a restarted
    // node acts on. Metadata commands are few (migrations, leases), so
    // the fsync costs little; data groups keep `Durability::None`.
    let durability = match kind {
        GroupKind::Metadata => Durability::Immediate,
        GroupKind::Data => Durability::None,
    };
    store.write_state_machine(durability, |sm| {
        let mut responses = Vec::with_capacity(entries.len());
        for entry in entries {
            responses.push(apply_entry(sm, kind, entry)?);
        }
        let last_applied = encode_log_id(Some(&last)).in_group(group)?;
        sm.put_meta(LAST_APPLIED_KEY, &last_applied)?;
        Ok(responses)
    })
}

fn build_snapshot(store: &GroupStore) -> Result<(SnapshotMeta, Vec<u8>), RaftStorageError> {
    let group = store.group();
    let export = store.export_state_machine()?;
    let (last_log_id, last_membership) = applied_state_in_rows(group, &export.meta)?;
    let data = encode("snapshot data", &SnapshotData::V2(export.into())).in_group(group)?;
    let meta = SnapshotMeta {
        snapshot_id: snapshot_id(last_log_id.as_ref(), &data),
        last_log_id,
        last_membership,
    };
    let stored = StoredSnapshot {
        position: position(meta.last_log_id.as_ref()),
        meta: encode_snapshot_meta(&meta).in_group(group)?,
        data,
    };
    store.save_snapshot(&stored)?;
    Ok((meta, stored.data))
}

fn install_snapshot(
    store: &GroupStore,
    meta: &SnapshotMeta,
    data: Vec<u8>,
) -> Result<(), RaftStorageError> {
    let group = store.group();
    let rows = decode::<SnapshotData>("snapshot data", &data)
        .in_group(group)?
        .into_rows();
    let (last_applied, membership) = applied_state_in_rows(group, &rows.meta)?;
    if last_applied != meta.last_log_id || membership != meta.last_membership {
        return Err(RaftStorageError::Inconsistent {
            group,
            what: "a received snapshot",
            reason: format!(
                "its data holds last applied {last_applied:?} and membership {membership:?}, \
                 its metadata says {meta}"
            ),
        });
    }
    let stored = StoredSnapshot {
        position: position(meta.last_log_id.as_ref()),
        meta: encode_snapshot_meta(meta).in_group(group)?,
        data,
    };
    Ok(store.install_snapshot(&rows.into(), &stored)?)
}

fn current_snapshot(
    store: &GroupStore,
) -> Result<Option<(SnapshotMeta, Vec<u8>)>, RaftStorageError> {
    let Some(stored) = store.snapshot()? else {
        return Ok(None);
    };
    let meta = decode_snapshot_meta(&stored.meta).in_group(store.group())?;
    Ok(Some((meta, stored.data)))
}

/// The last applied log index in a read view (0 before any).
fn applied_index<R: StateMachineRead>(sm: &R) -> Result<u64, RaftStorageError> {
    let last = decode_log_id(sm.meta(LAST_APPLIED_KEY)?.as_deref()).in_group(sm.group())?;
    Ok(last.map_or(0, |id| id.index))
}

fn read_changes<R: StateMachineRead>(
    sm: &R,
    vshard: u16,
    after_index: u64,
    limit: usize,
) -> Result<Result<ChangesPage, ChangesError>, RaftStorageError> {
    let unavailable = |reason: String| ChangesError::Unavailable {
        vshard,
        after_index,
        reason,
    };
    let source = match load_vshard_migration(sm, vshard)? {
        Some(VShardMigration::Source(source)) if source.tracking => source,
        Some(VShardMigration::Source(source)) => {
            let reason = format!("migration {} stopped tracking it", source.migration);
            return Ok(Err(unavailable(reason)));
        }
        _ => return Ok(Err(unavailable("it is not tracked here".to_string()))),
    };
    if after_index < source.trimmed_up_to {
        let reason = format!(
            "only changes after index {} are kept (tracking began at {})",
            source.trimmed_up_to, source.since_index
        );
        return Ok(Err(unavailable(reason)));
    }
    let group = sm.group();
    let mut changes = Vec::new();
    for (index, bytes) in sm.changes(vshard, after_index, limit)? {
        let ChangeRecord::V1(change) = decode("a recorded change", &bytes).in_group(group)?;
        changes.push((index, change));
    }
    Ok(Ok(ChangesPage {
        migration: source.migration,
        changes,
        applied_index: applied_index(sm)?,
    }))
}

impl StateMachineStore {
    /// The state machine of the group `store` is bound to: metadata for
    /// group 0, data for any other.
    pub fn new(store: GroupStore) -> Self {
        let kind = GroupKind::of(store.group());
        Self {
            store,
            kind,
            maybe_unserving: Arc::default(),
        }
    }

    /// The applied state of `vshard` if this group may hold it without
    /// serving it (fenced, incoming, a ghost); `None` if it serves it as
    /// far as this node knows, and the write should be proposed as usual.
    ///
    /// A client write to a fenced vShard is refused at apply; asked first,
    /// the node answers it without a Raft round, so the client's polls
    /// during a cut-over cost a local read, not a log entry the cut-over's
    /// own commands queue behind. Only a refusal is answered from here,
    /// and a refused write was not applied, so a stale read is harmless:
    /// the client asks again.
    pub async fn unserving_state(
        &self,
        vshard: u16,
    ) -> Result<Option<VShardState>, RaftStorageError> {
        let hinted = (self.maybe_unserving.lock())
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&vshard);
        if !hinted {
            return Ok(None);
        }
        let state = self.vshard_state(vshard).await?;
        let unserving = match &state {
            Some(VShardState::Owned) | None => None,
            Some(_) => state,
        };
        if unserving.is_none() {
            (self.maybe_unserving.lock())
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&vshard);
        }
        Ok(unserving)
    }

    /// The group this state machine belongs to.
    pub fn group(&self) -> u64 {
        self.store.group()
    }

    /// Which state machine this group runs.
    pub fn kind(&self) -> GroupKind {
        self.kind
    }

    async fn read<T, F>(&self, doing: &'static str, read: F) -> Result<T, RaftStorageError>
    where
        T: Send + 'static,
        F: FnOnce(&GroupStore) -> Result<T, RaftStorageError> + Send + 'static,
    {
        let store = self.store.clone();
        run_blocking(self.group(), doing, move || read(&store)).await
    }

    /// The last applied log id and membership.
    pub async fn applied(&self) -> Result<(Option<LogId>, StoredMembership), RaftStorageError> {
        self.read("reading the applied state", |store| {
            store.read_state_machine(read_applied_state)
        })
        .await
    }

    /// The metadata state (empty before bootstrap; empty on data groups).
    pub async fn metadata(&self) -> Result<MetadataState, RaftStorageError> {
        self.read("reading the metadata", |store| {
            store.read_state_machine(load_metadata)
        })
        .await
    }

    /// The state of one vShard in this group.
    pub async fn vshard_state(&self, vshard: u16) -> Result<Option<VShardState>, RaftStorageError> {
        self.read("reading a vShard state", move |store| {
            store.read_state_machine(|sm| load_vshard(sm, vshard))
        })
        .await
    }

    /// Whether this data group took its bootstrap vShards already.
    pub async fn bootstrap_assigned(&self) -> Result<bool, RaftStorageError> {
        self.read("reading the bootstrap assignment", |store| {
            store.read_state_machine(|sm| {
                Ok::<_, RaftStorageError>(sm.meta(BOOTSTRAP_ASSIGNED_KEY)?.is_some())
            })
        })
        .await
    }

    /// Every vShard this group holds a state for.
    pub async fn vshard_states(&self) -> Result<Vec<(u16, VShardState)>, RaftStorageError> {
        self.read("listing vShard states", |store| {
            let group = store.group();
            let rows = store.read_state_machine(|sm| Ok::<_, RaftStorageError>(sm.vshards()?))?;
            let decode_row = |(vshard, bytes): (u16, Vec<u8>)| {
                let record: VShardRecord = decode("a vShard state", &bytes).in_group(group)?;
                Ok((vshard, record.into()))
            };
            rows.into_iter().map(decode_row).collect()
        })
        .await
    }

    /// Reads `key`, if this group serves its vShard.
    pub async fn get(&self, key: Vec<u8>) -> Result<Option<Vec<u8>>, ReadError> {
        let vshard = vshard_of(&key);
        let outcome = self
            .read("reading a key", move |store| {
                store.read_state_machine(|sm| {
                    let state = load_vshard(sm, vshard)?;
                    if let Err(rejection) = check_serving(vshard, state.as_ref()) {
                        return Ok(Err(rejection));
                    }
                    Ok(Ok(sm.kv(vshard, &key)?))
                })
            })
            .await?;
        Ok(outcome?)
    }

    /// Up to `limit` pairs of `vshard` in key order after `after`, if this
    /// group serves it.
    pub async fn scan_vshard(
        &self,
        vshard: u16,
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, ReadError> {
        if !is_valid(vshard) {
            return Err(Rejection::InvalidVShard { vshard }.into());
        }
        let outcome = self
            .read("scanning a vShard", move |store| {
                store.read_state_machine(|sm| {
                    let state = load_vshard(sm, vshard)?;
                    if let Err(rejection) = check_serving(vshard, state.as_ref()) {
                        return Ok(Err(rejection));
                    }
                    Ok(Ok(sm.scan_kv(vshard, after.as_deref(), limit)?))
                })
            })
            .await?;
        Ok(outcome?)
    }
}

/// The reads of the migration steps.
impl StateMachineStore {
    /// Up to `max_pairs` pairs (and about `max_bytes` of keys and values,
    /// at least one pair) of `vshard` after `after_key`, with the applied
    /// index they are consistent with: one chunk of a base copy.
    ///
    /// Only a migration's source exports: the vShard must be `Owned` or
    /// `Fenced` *and* tracking its changes. A chunk read before tracking
    /// began could miss a write applied between its read and the
    /// `TrackChanges` entry; refusing it makes that mistake impossible.
    pub async fn export_chunk(
        &self,
        vshard: u16,
        after_key: Option<Vec<u8>>,
        max_pairs: usize,
        max_bytes: usize,
    ) -> Result<ExportChunk, ReadError> {
        let outcome = self
            .read("exporting a vShard chunk", move |store| {
                store.read_state_machine(|sm| {
                    let state = load_vshard(sm, vshard)?;
                    let serving =
                        matches!(state, Some(VShardState::Owned | VShardState::Fenced { .. }));
                    let migration = match load_vshard_migration(sm, vshard)? {
                        Some(VShardMigration::Source(source)) if serving && source.tracking => {
                            source.migration
                        }
                        record => {
                            let mut found = VShardState::describe(state.as_ref());
                            if let Some(record) = record {
                                found += &format!(", migration {}", record.migration());
                            }
                            return Ok(Err(Rejection::WrongState {
                                vshard,
                                found,
                                needs: "Owned or Fenced and tracking its changes (the source \
                                        of a migration, after TrackChanges)"
                                    .to_string(),
                            }));
                        }
                    };
                    let (pairs, more) =
                        sm.scan_kv_bounded(vshard, after_key.as_deref(), max_pairs, max_bytes)?;
                    let applied_index = applied_index(sm)?;
                    Ok(Ok(ExportChunk {
                        migration,
                        pairs,
                        applied_index,
                        more,
                    }))
                })
            })
            .await?;
        Ok(outcome?)
    }

    /// Up to `limit` changes recorded for the tracked `vshard` after log
    /// index `after_index`, with the applied index they are consistent
    /// with. Refused if the vShard is not tracked here or changes after
    /// `after_index` were trimmed or never recorded.
    pub async fn changes_after(
        &self,
        vshard: u16,
        after_index: u64,
        limit: usize,
    ) -> Result<ChangesPage, ChangesError> {
        self.read("reading recorded changes", move |store| {
            store.read_state_machine(|sm| read_changes(sm, vshard, after_index, limit))
        })
        .await?
    }

    /// The digest of `vshard`'s data here, whatever its state (an
    /// `Incoming` copy included), with the applied index it is at.
    pub async fn vshard_digest(&self, vshard: u16) -> Result<DigestAt, RaftStorageError> {
        self.read("digesting a vShard", move |store| {
            store.read_state_machine(|sm| {
                Ok(DigestAt {
                    state: load_vshard(sm, vshard)?,
                    // The running digest: one row, whatever the vShard's size.
                    digest: sm.vshard_digest(vshard)?.into(),
                    applied_index: applied_index(sm)?,
                })
            })
        })
        .await
    }

    /// The migration record of `vshard` here (tracking, fence, copy
    /// progress), if it has one.
    pub async fn vshard_migration(
        &self,
        vshard: u16,
    ) -> Result<Option<VShardMigration>, RaftStorageError> {
        self.read("reading a vShard's migration", move |store| {
            store.read_state_machine(|sm| load_vshard_migration(sm, vshard))
        })
        .await
    }

    /// Every vShard with a migration record here (what a group's reaper
    /// walks: fences past their deadline, tracking of finished migrations).
    pub async fn vshard_migrations(&self) -> Result<Vec<(u16, VShardMigration)>, RaftStorageError> {
        self.read("listing vShard migrations", |store| {
            let group = store.group();
            let rows = store
                .read_state_machine(|sm| Ok::<_, RaftStorageError>(sm.vshard_migrations()?))?;
            let decode_row = |(vshard, bytes): (u16, Vec<u8>)| {
                let what = "a vShard's migration record";
                let record: VShardMigrationRecord = decode(what, &bytes).in_group(group)?;
                Ok((vshard, record.into()))
            };
            rows.into_iter().map(decode_row).collect()
        })
        .await
    }

    /// The log index of the fence on `vshard`, if it is fenced here.
    pub async fn fence_index(&self, vshard: u16) -> Result<Option<u64>, RaftStorageError> {
        self.read("reading a fence", move |store| {
            store.read_state_machine(|sm| {
                let fenced = matches!(load_vshard(sm, vshard)?, Some(VShardState::Fenced { .. }));
                let record = load_vshard_migration(sm, vshard)?;
                Ok(match record {
                    Some(VShardMigration::Source(source)) if fenced => {
                        source.fence.map(|fence| fence.index)
                    }
                    _ => None,
                })
            })
        })
        .await
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let store = self.store.clone();
        let subject = ErrorSubject::Snapshot(None);
        let (meta, data) = blocking(store.group(), subject, ErrorVerb::Write, move || {
            build_snapshot(&store)
        })
        .await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let store = self.store.clone();
        blocking(
            self.group(),
            ErrorSubject::StateMachine,
            ErrorVerb::Read,
            move || store.read_state_machine(read_applied_state),
        )
        .await
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let (store, kind) = (self.store.clone(), self.kind);
        let subject = match entries.last() {
            Some(entry) => ErrorSubject::Apply(entry.log_id),
            None => ErrorSubject::StateMachine,
        };
        let stopping: Vec<u16> = entries.iter().filter_map(stops_serving).collect();
        let responses = blocking(self.group(), subject, ErrorVerb::Write, move || {
            apply_batch(&store, kind, &entries)
        })
        .await?;
        if !stopping.is_empty() {
            (self.maybe_unserving.lock())
                .unwrap_or_else(PoisonError::into_inner)
                .extend(stopping);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            store: self.store.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let store = self.store.clone();
        let subject = ErrorSubject::Snapshot(Some(meta.signature()));
        let meta = meta.clone();
        let data = snapshot.into_inner();
        blocking(self.group(), subject, ErrorVerb::Write, move || {
            install_snapshot(&store, &meta, data)
        })
        .await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let store = self.store.clone();
        let subject = ErrorSubject::Snapshot(None);
        let current = blocking(self.group(), subject, ErrorVerb::Read, move || {
            current_snapshot(&store)
        })
        .await?;
        Ok(current.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
