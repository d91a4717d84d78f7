//! The data state machine's logic, pure (no redb, no async): vShard states,
//! the owner check, change tracking, fences, and what each data command
//! does.
//!
//! [`apply`] reads through a small [`DataView`] and returns either an
//! [`Effect`] (the mutations to write and the answer) or a [`Rejection`];
//! the Raft layer writes the mutations in the same transaction as the rest
//! of the batch. [`MemoryData`] is the same state machine in memory, for
//! tests and tools.
//!
//! **Invariants:**
//! - The owner check happens here, at apply: a write to a vShard this group
//!   does not hold as `Owned` is rejected (`NotOwner`, `Fenced`, `Moved`),
//!   and the decision depends only on the replicated state, the command
//!   and its log index, so every replica decides the same.
//! - A key is only ever filed under `vshard_of(key)`: a command naming
//!   another vShard is rejected, so scans and migrations of a vShard see
//!   every key that hashes to it.
//! - A rejected command writes nothing.
//! - Served data is never deleted by a migration: `DropIncoming` only
//!   deletes an `Incoming` copy, `CleanupBatch` only a `Moved` ghost.
//!
//! # Migrations
//!
//! Beside its [`VShardState`], a vShard in a migration has a
//! [`VShardMigration`] record: on the target the copy's progress
//! ([`TargetMigration`]), on the source the change tracking and the fence
//! ([`SourceMigration`]). Every migration command names its migration and
//! is refused (`WrongMigration`) if the vShard is in another one here.
//!
//! - **Change capture** (source). From its `TrackChanges` entry at log
//!   index `t`, every `Put`/`Delete` applied to the vShard is also written
//!   to the change table under its own log index, in the same transaction,
//!   so log compaction cannot lose one and a snapshot carries them. The
//!   target applies them in index order and remembers the highest index
//!   applied, so a repeat is skipped.
//! - **Fence ids** (the model checker's first fix). A fence carries an id
//!   `(driver epoch, attempt)`. `Unfence{up_to}` lifts only a fence whose id
//!   is at most `up_to` and raises the "lifted up to" mark, and `Fence`
//!   refuses an id at or below that mark or below the fence held; a higher
//!   id takes the held fence over (same fence index, new deadline). So a
//!   late `Fence` or `Unfence` of an earlier driver or attempt cannot undo a
//!   newer one's.
//! - **Closing.** `MarkMoved` (the transfer won) and `ReleaseSource` (the
//!   abort won) close the migration on the source: tracking stops, its
//!   changes are deleted, and later `Fence`/`TrackChanges` of it are
//!   refused (`MigrationClosed`). The closed record stays until the ghost
//!   is dropped or another migration starts tracking the vShard.

use std::collections::BTreeMap;
use std::convert::Infallible;

use serde::{Deserialize, Serialize};
use shardflow_store::raft_store::DigestSum;

use crate::command::{Change, DataOp, FenceId, Rejection, ResponseV1};
use crate::vshard::{is_valid, vshard_of};

/// What a data group holds of one vShard (DESIGN §3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VShardState {
    /// Serves reads and writes.
    Owned,
    /// Being filled by a migration; invisible to clients.
    Incoming { migration: String },
    /// Fenced by a migration: rejects reads and writes with a retryable error.
    Fenced { migration: String },
    /// Moved away: a ghost that redirects to the new owner.
    Moved { to_group: u64, epoch: u64 },
}

impl VShardState {
    /// Names a vShard's state (or its absence) for messages.
    pub fn describe(state: Option<&VShardState>) -> String {
        match state {
            None => "absent".to_string(),
            Some(VShardState::Owned) => "Owned".to_string(),
            Some(VShardState::Incoming { migration }) => {
                format!("Incoming for migration {migration}")
            }
            Some(VShardState::Fenced { migration }) => format!("Fenced by migration {migration}"),
            Some(VShardState::Moved { to_group, epoch }) => {
                format!("Moved to group {to_group} (epoch {epoch})")
            }
        }
    }
}

/// The persisted encoding of a vShard's state, versioned. Append only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VShardRecord {
    V1(VShardState),
}

impl From<VShardRecord> for VShardState {
    fn from(record: VShardRecord) -> Self {
        let VShardRecord::V1(state) = record;
        state
    }
}

/// A fence held on a source vShard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence {
    /// Who placed it: `(driver epoch, attempt)`.
    pub id: FenceId,
    /// The log index of the entry that fenced the vShard: no write to it is
    /// applied after this index, so a drain to exactly here is complete.
    pub index: u64,
    /// Past this (the proposer's clock, ms) the source's leader asks the
    /// metadata group to abort the migration.
    pub deadline_ms: u64,
}

/// The source side of a migration of one vShard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceMigration {
    pub migration: String,
    /// The log index of the `TrackChanges` entry: writes applied after it
    /// are recorded while `tracking`.
    pub since_index: u64,
    /// Whether applied writes are recorded in the change table.
    pub tracking: bool,
    /// Every change after this index is in the table (starts at
    /// `since_index`; raised by `TrimChanges`).
    pub trimmed_up_to: u64,
    /// The fence held, if the vShard is fenced.
    pub fence: Option<Fence>,
    /// Fences with an id at or below this were lifted: refused from now on.
    pub lifted_up_to: FenceId,
    /// `MarkMoved` or `ReleaseSource` closed the migration here.
    pub closed: bool,
}

/// The target side of a migration of one vShard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetMigration {
    pub migration: String,
    /// The highest source log index `ApplyChanges` applied (0: none yet).
    pub applied_up_to: u64,
}

/// A vShard's migration bookkeeping in one data group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VShardMigration {
    Source(SourceMigration),
    Target(TargetMigration),
}

impl VShardMigration {
    /// The migration this record belongs to.
    pub fn migration(&self) -> &str {
        match self {
            VShardMigration::Source(s) => &s.migration,
            VShardMigration::Target(t) => &t.migration,
        }
    }
}

/// The persisted encoding of a vShard's migration record. Append only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VShardMigrationRecord {
    V1(VShardMigration),
}

impl From<VShardMigrationRecord> for VShardMigration {
    fn from(record: VShardMigrationRecord) -> Self {
        let VShardMigrationRecord::V1(migration) = record;
        migration
    }
}

/// The persisted encoding of one recorded change. Append only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeRecord {
    V1(Change),
}

/// The borrowed twin of [`ChangeRecord`], encoding to the same bytes
/// (tested) without copying the value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum ChangeRecordRef<'a> {
    V1(ChangeRef<'a>),
}

/// The borrowed twin of [`Change`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum ChangeRef<'a> {
    Put { key: &'a [u8], value: &'a [u8] },
    Delete { key: &'a [u8] },
}

impl ChangeRef<'_> {
    /// An owned copy.
    pub fn to_change(&self) -> Change {
        match self {
            ChangeRef::Put { key, value } => Change::Put {
                key: key.to_vec(),
                value: value.to_vec(),
            },
            ChangeRef::Delete { key } => Change::Delete { key: key.to_vec() },
        }
    }
}

/// Whether this group serves reads and writes of `vshard`, whose state here
/// is `state`; the rejection a client gets otherwise.
pub fn check_serving(vshard: u16, state: Option<&VShardState>) -> Result<(), Rejection> {
    match state {
        Some(VShardState::Owned) => Ok(()),
        None | Some(VShardState::Incoming { .. }) => Err(Rejection::NotOwner { vshard }),
        Some(VShardState::Fenced { migration }) => Err(Rejection::Fenced {
            vshard,
            migration: migration.clone(),
        }),
        Some(VShardState::Moved { to_group, epoch }) => Err(Rejection::Moved {
            vshard,
            to_group: *to_group,
            epoch: *epoch,
        }),
    }
}

/// Checks that `vshard` exists and that `key` hashes to it.
pub fn check_key(vshard: u16, key: &[u8]) -> Result<(), Rejection> {
    check_vshard(vshard)?;
    let expected = vshard_of(key);
    if expected != vshard {
        return Err(Rejection::WrongVShard { vshard, expected });
    }
    Ok(())
}

fn check_vshard(vshard: u16) -> Result<(), Rejection> {
    if !is_valid(vshard) {
        return Err(Rejection::InvalidVShard { vshard });
    }
    Ok(())
}

/// A digest of one vShard's data: the sum modulo 2^256 of one BLAKE3 hash
/// per pair, each pair hashed as `key length (u64 LE), key, value length
/// (u64 LE), value` ([`shardflow_store::raft_store::digest`]). The sum does
/// not depend on order, so the state machine keeps it running as it applies
/// writes and reads it in O(1); a full scan computes the same value. The
/// source and the target compare it before the `Transfer` commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VShardDigest {
    pub digest: [u8; 32],
    pub key_count: u64,
    /// Key and value bytes.
    pub bytes: u64,
}

impl From<DigestSum> for VShardDigest {
    fn from(sum: DigestSum) -> Self {
        Self {
            digest: sum.sum,
            key_count: sum.key_count,
            bytes: sum.bytes,
        }
    }
}

/// Computes a [`VShardDigest`] from a vShard's pairs, fed in any order
/// (each pair once).
#[derive(Clone, Debug, Default)]
pub struct VShardDigester {
    sum: DigestSum,
}

impl VShardDigester {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one pair.
    pub fn update(&mut self, key: &[u8], value: &[u8]) {
        self.sum.add_pair(key, value);
    }

    pub fn finish(&self) -> VShardDigest {
        self.sum.into()
    }
}

/// The reads the data logic needs from the state machine.
pub trait DataView {
    type Error;
    /// The state of `vshard` in this group, if it has one.
    fn vshard_state(&self, vshard: u16) -> Result<Option<VShardState>, Self::Error>;
    /// The migration record of `vshard` in this group, if it has one.
    fn vshard_migration(&self, vshard: u16) -> Result<Option<VShardMigration>, Self::Error>;
    /// Up to `limit` keys of `vshard`, in key order.
    fn vshard_keys(&self, vshard: u16, limit: usize) -> Result<Vec<Vec<u8>>, Self::Error>;
    /// Whether this group took its bootstrap vShards already.
    fn bootstrap_assigned(&self) -> Result<bool, Self::Error>;
}

/// One write a data command makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataMutation<'a> {
    SetVShard {
        vshard: u16,
        state: VShardState,
    },
    RemoveVShard {
        vshard: u16,
    },
    SetMigration {
        vshard: u16,
        record: VShardMigration,
    },
    RemoveMigration {
        vshard: u16,
    },
    Put {
        vshard: u16,
        key: &'a [u8],
        value: &'a [u8],
    },
    Delete {
        vshard: u16,
        key: &'a [u8],
    },
    DeleteKeys {
        vshard: u16,
        keys: Vec<Vec<u8>>,
    },
    /// Records a change of a tracked vShard under its log index.
    RecordChange {
        vshard: u16,
        index: u64,
        change: ChangeRef<'a>,
    },
    /// Deletes the vShard's recorded changes up to and including the index.
    TrimChanges {
        vshard: u16,
        up_to_index: u64,
    },
    /// Records that the group took its bootstrap vShards.
    MarkBootstrapAssigned,
}

/// What an applied data command does: its writes and its answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Effect<'a> {
    pub mutations: Vec<DataMutation<'a>>,
    pub response: ResponseV1,
}

impl<'a> Effect<'a> {
    /// Writes `mutations`, answers `Done`.
    pub fn done(mutations: Vec<DataMutation<'a>>) -> Self {
        Self {
            mutations,
            response: ResponseV1::Done,
        }
    }
}

/// What applying a data command decided: an effect, or a refusal.
pub type Decision<'a> = Result<Effect<'a>, Rejection>;

/// Why a decision could not be made or was negative, inside this module.
enum Fail<E> {
    Storage(E),
    Refused(Rejection),
}

impl<E> From<Rejection> for Fail<E> {
    fn from(rejection: Rejection) -> Self {
        Fail::Refused(rejection)
    }
}

type Outcome<'a, E> = Result<Effect<'a>, Fail<E>>;

/// The view and the log index of the entry being applied.
struct Ctx<'v, V> {
    view: &'v V,
    index: u64,
}

impl<V: DataView> Ctx<'_, V> {
    fn state(&self, vshard: u16) -> Result<Option<VShardState>, Fail<V::Error>> {
        self.view.vshard_state(vshard).map_err(Fail::Storage)
    }

    fn record(&self, vshard: u16) -> Result<Option<VShardMigration>, Fail<V::Error>> {
        self.view.vshard_migration(vshard).map_err(Fail::Storage)
    }

    fn keys(&self, vshard: u16, limit: u64) -> Result<Vec<Vec<u8>>, Fail<V::Error>> {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        self.view.vshard_keys(vshard, limit).map_err(Fail::Storage)
    }
}

/// Decides what `op`, the command of the entry at log `index`, does given
/// the state `view` shows.
pub fn apply<'a, V: DataView>(
    view: &V,
    index: u64,
    op: &'a DataOp,
) -> Result<Decision<'a>, V::Error> {
    let ctx = Ctx { view, index };
    match decide(&ctx, op) {
        Ok(effect) => Ok(Ok(effect)),
        Err(Fail::Refused(rejection)) => Ok(Err(rejection)),
        Err(Fail::Storage(error)) => Err(error),
    }
}

fn decide<'a, V: DataView>(ctx: &Ctx<'_, V>, op: &'a DataOp) -> Outcome<'a, V::Error> {
    match op {
        DataOp::Put { vshard, key, value } => write(ctx, *vshard, key, Some(value)),
        DataOp::Delete { vshard, key } => write(ctx, *vshard, key, None),
        DataOp::AssignVShards { vshards } => assign(ctx, vshards),
        DataOp::BeginIncoming { vshard, migration } => begin_incoming(ctx, *vshard, migration),
        DataOp::IngestChunk {
            vshard,
            migration,
            pairs,
        } => ingest_chunk(ctx, *vshard, migration, pairs),
        DataOp::ApplyChanges {
            vshard,
            migration,
            changes,
        } => apply_changes(ctx, *vshard, migration, changes),
        DataOp::Activate {
            vshard,
            migration,
            epoch,
        } => activate(ctx, *vshard, migration, *epoch),
        DataOp::DropIncoming {
            vshard,
            migration,
            limit,
        } => drop_incoming(ctx, *vshard, migration, *limit),
        DataOp::TrackChanges { vshard, migration } => track_changes(ctx, *vshard, migration),
        DataOp::TrimChanges {
            vshard,
            migration,
            up_to_index,
        } => trim_changes(ctx, *vshard, migration, *up_to_index),
        DataOp::Fence {
            vshard,
            migration,
            fence_id,
            deadline_ms,
        } => fence(ctx, *vshard, migration, *fence_id, *deadline_ms),
        DataOp::Unfence {
            vshard,
            migration,
            up_to,
        } => unfence(ctx, *vshard, migration, *up_to),
        DataOp::MarkMoved {
            vshard,
            migration,
            to_group,
            epoch,
        } => mark_moved(ctx, *vshard, migration, *to_group, *epoch),
        DataOp::CleanupBatch {
            vshard,
            migration,
            limit,
        } => cleanup_batch(ctx, *vshard, migration, *limit),
        DataOp::DropGhost { vshard, migration } => drop_ghost(ctx, *vshard, migration),
        DataOp::ReleaseSource { vshard, migration } => release_source(ctx, *vshard, migration),
    }
}

fn invalid(reason: impl Into<String>) -> Rejection {
    Rejection::Invalid {
        reason: reason.into(),
    }
}

fn wrong_state(vshard: u16, state: Option<&VShardState>, needs: impl Into<String>) -> Rejection {
    Rejection::WrongState {
        vshard,
        found: VShardState::describe(state),
        needs: needs.into(),
    }
}

fn wrong_migration(vshard: u16, migration: &str, record: Option<&VShardMigration>) -> Rejection {
    Rejection::WrongMigration {
        vshard,
        migration: migration.to_string(),
        current: record.map(|r| r.migration().to_string()),
    }
}

fn is_fenced_by(state: Option<&VShardState>, migration: &str) -> bool {
    matches!(state, Some(VShardState::Fenced { migration: m }) if m == migration)
}

// ------------------------------------------------------------ client writes

fn write<'a, V: DataView>(
    ctx: &Ctx<'_, V>,
    vshard: u16,
    key: &'a [u8],
    value: Option<&'a [u8]>,
) -> Outcome<'a, V::Error> {
    check_key(vshard, key)?;
    let state = ctx.state(vshard)?;
    check_serving(vshard, state.as_ref())?;
    let (mutation, change) = match value {
        Some(value) => (
            DataMutation::Put { vshard, key, value },
            ChangeRef::Put { key, value },
        ),
        None => (
            DataMutation::Delete { vshard, key },
            ChangeRef::Delete { key },
        ),
    };
    let mut mutations = vec![mutation];
    if let Some(VShardMigration::Source(source)) = ctx.record(vshard)? {
        if source.tracking {
            let index = ctx.index;
            mutations.push(DataMutation::RecordChange {
                vshard,
                index,
                change,
            });
        }
    }
    Ok(Effect::done(mutations))
}

/// Marks `vshards` Owned; refused whole if one is invalid or migrating.
/// The group's one bootstrap assignment. Later ones are refused: after a
/// migration moved a bootstrap vShard away (and its ghost was cleaned up),
/// only the routing table knows, and a leader whose copy of it is stale
/// would otherwise make this group a second owner (invariants 2 and 5).
fn assign<'a, V: DataView>(ctx: &Ctx<'_, V>, vshards: &[u16]) -> Outcome<'a, V::Error> {
    if ctx.view.bootstrap_assigned().map_err(Fail::Storage)? {
        return Err(Rejection::BootstrapAssigned.into());
    }
    let mut mutations = Vec::new();
    for &vshard in vshards {
        check_vshard(vshard)?;
        match ctx.state(vshard)? {
            Some(VShardState::Owned) => {}
            None => mutations.push(DataMutation::SetVShard {
                vshard,
                state: VShardState::Owned,
            }),
            Some(_) => return Err(Rejection::VShardInUse { vshard }.into()),
        }
    }
    mutations.dedup();
    mutations.push(DataMutation::MarkBootstrapAssigned);
    Ok(Effect::done(mutations))
}

// ------------------------------------------------------------------ target

fn begin_incoming<'a, V: DataView>(
    ctx: &Ctx<'_, V>,
    vshard: u16,
    migration: &str,
) -> Outcome<'a, V::Error> {
    check_vshard(vshard)?;
    match ctx.state(vshard)? {
        None => {
            if !ctx.keys(vshard, 1)?.is_empty() {
                return Err(Rejection::VShardNotEmpty { vshard }.into());
            }
            let record = VShardMigration::Target(TargetMigration {
                migration: migration.to_string(),
                applied_up_to: 0,
            });
            let state = VShardState::Incoming {
                migration: migration.to_string(),
            };
            Ok(Effect::done(vec![
                DataMutation::SetVShard { vshard, state },
                DataMutation::SetMigration { vshard, record },
            ]))
        }
        Some(VShardState::Incoming { migration: m }) if m == migration => Ok(Effect::done(vec![])),
        Some(VShardState::Incoming { migration: other }) => Err(Rejection::WrongMigration {
            vshard,
            migration: migration.to_string(),
            current: Some(other),
        }
        .into()),
        other => Err(wrong_state(vshard, other.as_ref(), "absent").into()),
    }
}

/// The target record of `vshard`, which must be `Incoming` for `migration`.
fn incoming<V: DataView>(
    ctx: &Ctx<'_, V>,
    vshard: u16,
    migration: &str,
) -> Result<TargetMigration, Fail<V::Error>> {
    check_vshard(vshard)?;
    let state = ctx.state(vshard)?;
    if let Some(VShardState::Incoming { migration: other }) = &state {
        if other != migration {
            let current = Some(other.clone());
            let migration = migration.to_string();
            return Err(Rejection::WrongMigration {
                vshard,
                migration,
                current,
            }
            .into());
        }
    } else {
        let needs = format!("Incoming for migration {migration}");
        return Err(wrong_state(vshard, state.as_ref(), needs).into());
    }
    match ctx.record(vshard)? {
        Some(VShardMigration::Target(target)) if target.migration == migration => Ok(target),
        other => Err(wrong_migration(vshard, migration, other.as_ref()).into()),
    }
}

fn ingest_chunk<'a, V: DataView>(
    ctx: &Ctx<'_, V>,
    vshard: u16,
    migration: &str,
    pairs: &'a [(Vec<u8>, Vec<u8>)],
) -> Outcome<'a, V::Error> {
    let target = incoming(ctx, vshard, migration)?;
    if target.applied_up_to > 0 {
        return Err(invalid(format!(
            "migration {migration} already applied the source's changes up to index {} to \
             vShard {vshard}; a base-copy chunk now could bring back older values",
            target.applied_up_to
        ))
        .into());
    }
    for (key, _) in pairs {
        check_key(vshard, key)?;
    }
    let puts = pairs
        .iter()
        .map(|(key, value)| DataMutation::Put { vshard, key, value });
    Ok(Effect::done(puts.collect()))
}

fn apply_changes<'a, V: DataView>(
    ctx: &Ctx<'_, V>,
    vshard: u16,
    migration: &str,
    changes: &'a [(u64, Change)],
) -> Outcome<'a, V::Error> {
    let mut target = incoming(ctx, vshard, migration)?;
    let mut previous: Option<u64> = None;
    for (index, change) in changes {
        check_key(vshard, change.key())?;
        if let Some(previous) = previous.filter(|p| p >= index) {
            let reason = format!("source indexes must increase: {index} follows {previous}");
            return Err(invalid(reason).into());
        }
        previous = Some(*index);
    }
    let applied = target.applied_up_to;
    let fresh = changes.iter().filter(|(index, _)| *index > applied);
    let mut mutations: Vec<DataMutation<'a>> = fresh
        .map(|(_, change)| match change {
            Change::Put { key, value } => DataMutation::Put { vshard, key, value },
            Change::Delete { key } => DataMutation::Delete { vshard, key },
        })
        .collect();
    if let Some(last) = previous.filter(|last| *last > applied) {
        target.applied_up_to = last;
        let record = VShardMigration::Target(target.clone());
        mutations.push(DataMutation::SetMigration { vshard, record });
    }
    Ok(Effect {
        mutations,
        response: ResponseV1::ChangesApplied {
            up_to_index: target.applied_up_to,
        },
    })
}

fn activate<'a, V: DataView>(
    ctx: &Ctx<'_, V>,
    vshard: u16,
    migration: &str,
    epoch: u64,
) -> Outcome<'a, V::Error> {
    check_vshard(vshard)?;
    if epoch == 0 {
        return Err(invalid("a routing epoch is at least 1").into());
    }
    let state = ctx.state(vshard)?;
    match &state {
        Some(VShardState::Incoming { .. }) => {
            incoming(ctx, vshard, migration)?;
            Ok(Effect::done(vec![
                DataMutation::SetVShard {
                    vshard,
                    state: VShardState::Owned,
                },
                DataMutation::RemoveMigration { vshard },
            ]))
        }
        Some(VShardState::Owned) => match ctx.record(vshard)? {
            Some(VShardMigration::Source(source)) if source.migration == migration => {
                let needs = format!("Incoming for migration {migration} (this is its source)");
                Err(wrong_state(vshard, state.as_ref(), needs).into())
            }
            _ => Ok(Effect::done(vec![])),
        },
        other => {
            let needs = format!("Incoming for migration {migration}");
            Err(wrong_state(vshard, other.as_ref(), needs).into())
        }
    }
}

/// Deletes up to `limit` keys of `vshard`: the mutation, how many, and
/// whether none are left after it.
fn delete_batch<'a, V: DataView>(
    ctx: &Ctx<'_, V>,
    vshard: u16,
    limit: u64,
) -> Result<(DataMutation<'a>, u64, bool), Fail<V::Error>> {
    if limit == 0 {
        return Err(invalid("a batch deletes at least one key").into());
    }
    let mut keys = ctx.keys(vshard, limit.saturating_add(1))?;
    let done = keys.len() as u64 <= limit;
    keys.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let deleted = keys.len() as u64;
    Ok((DataMutation::DeleteKeys { vshard, keys }, deleted, done))
}

fn deleted(mutations: Vec<DataMutation<'_>>, deleted: u64, done: bool) -> Effect<'_> {
    Effect {
        mutations,
        response: ResponseV1::Deleted { deleted, done },
    }
}

fn drop_incoming<'a, V: DataView>(
    ctx: &Ctx<'_, V>,
    vshard: u16,
    migration: &str,
    limit: u64,
) -> Outcome<'a, V::Error> {
    check_vshard(vshard)?;
    let state = ctx.state(vshard)?;
    if state.is_none() {
        return Ok(deleted(vec![], 0, true));
    }
    incoming(ctx, vshard, migration)?;
    let (delete, count, done) = delete_batch(ctx, vshard, limit)?;
    let mut mutations = vec![delete];
    if done {
        mutations.push(DataMutation::RemoveVShard { vshard });
        mutations.push(DataMutation::RemoveMigration { vshard });
    }
    Ok(deleted(mutations, count, done))
}

// ------------------------------------------------------------------ source

/// The source record of `vshard` for `migration`.
fn source<V: DataView>(
    ctx: &Ctx<'_, V>,
    vshard: u16,
    migration: &str,
) -> Result<SourceMigration, Fail<V::Error>> {
    match ctx.record(vshard)? {
        Some(VShardMigration::Source(source)) if source.migration == migration => Ok(source),
        other => Err(wrong_migration(vshard, migration, other.as_ref()).into()),
    }
}

fn set_source<'a>(vshard: u16, source: SourceMigration) -> DataMutation<'a> {
    DataMutation::SetMigration {
        vshard,
        record: VShardMigration::Source(source),
    }
}

fn forget_changes<'a>(vshard: u16) -> DataMutation<'a> {
    DataMutation::TrimChanges {
        vshard,
        up_to_index: u64::MAX,
    }
}

fn closed_source(migration: &str, since_index: u64) -> SourceMigration {
    SourceMigration {
        migration: migration.to_string(),
        since_index,
        tracking: false,
        trimmed_up_to: u64::MAX,
        fence: None,
        lifted_up_to: (u64::MAX, u32::MAX),
        closed: true,
    }
}

fn closed(vshard: u16, migration: &str) -> Rejection {
    Rejection::MigrationClosed {
        vshard,
        migration: migration.to_string(),
    }
}

fn track_changes<'a, V: DataView>(
    ctx: &Ctx<'_, V>,
    vshard: u16,
    migration: &str,
) -> Outcome<'a, V::Error> {
    check_vshard(vshard)?;
    let state = ctx.state(vshard)?;
    let record = ctx.record(vshard)?;
    let owned = state == Some(VShardState::Owned);
    match &record {
        Some(VShardMigration::Source(source))
            if source.migration == migration
                && (owned || is_fenced_by(state.as_ref(), migration)) =>
        {
            if source.closed {
                return Err(closed(vshard, migration).into());
            }
            let since_index = source.since_index;
            return Ok(Effect {
                mutations: vec![],
                response: ResponseV1::Tracking { since_index },
            });
        }
        _ if !owned => return Err(wrong_state(vshard, state.as_ref(), "Owned").into()),
        None => {}
        Some(VShardMigration::Source(source)) if source.closed => {}
        Some(other) => return Err(wrong_migration(vshard, migration, Some(other)).into()),
    }
    let since_index = ctx.index;
    let source = SourceMigration {
        migration: migration.to_string(),
        since_index,
        tracking: true,
        trimmed_up_to: since_index,
        fence: None,
        lifted_up_to: (0, 0),
        closed: false,
    };
    Ok(Effect {
        mutations: vec![forget_changes(vshard), set_source(vshard, source)],
        response: ResponseV1::Tracking { since_index },
    })
}

fn trim_changes<'a, V: DataView>(
    ctx: &Ctx<'_, V>,
    vshard: u16,
    migration: &str,
    up_to_index: u64,
) -> Outcome<'a, V::Error> {
    check_vshard(vshard)?;
    let mut source = source(ctx, vshard, migration)?;
    if up_to_index >= ctx.index {
        let reason = format!(
            "changes can be trimmed only before this entry (index {}), not up to {up_to_index}",
            ctx.index
        );
        return Err(invalid(reason).into());
    }
    if source.closed || up_to_index <= source.trimmed_up_to {
        return Ok(Effect::done(vec![]));
    }
    source.trimmed_up_to = up_to_index;
    Ok(Effect::done(vec![
        DataMutation::TrimChanges {
            vshard,
            up_to_index,
        },
        set_source(vshard, source),
    ]))
}

fn fenced(mutations: Vec<DataMutation<'_>>, fence_index: u64) -> Effect<'_> {
    Effect {
        mutations,
        response: ResponseV1::Fenced { fence_index },
    }
}

fn fence<'a, V: DataView>(
    ctx: &Ctx<'_, V>,
    vshard: u16,
    migration: &str,
    fence_id: FenceId,
    deadline_ms: u64,
) -> Outcome<'a, V::Error> {
    check_vshard(vshard)?;
    let mut source = source(ctx, vshard, migration)?;
    if source.closed {
        return Err(closed(vshard, migration).into());
    }
    if fence_id <= source.lifted_up_to {
        let lifted_up_to = source.lifted_up_to;
        return Err(Rejection::FenceLifted {
            vshard,
            fence_id,
            lifted_up_to,
        }
        .into());
    }
    let state = ctx.state(vshard)?;
    let held = source.fence.clone();
    match (&state, held) {
        (Some(VShardState::Owned), _) => {
            let index = ctx.index;
            source.fence = Some(Fence {
                id: fence_id,
                index,
                deadline_ms,
            });
            let state = VShardState::Fenced {
                migration: migration.to_string(),
            };
            let mutations = vec![
                DataMutation::SetVShard { vshard, state },
                set_source(vshard, source),
            ];
            Ok(fenced(mutations, index))
        }
        (Some(VShardState::Fenced { .. }), Some(held))
            if is_fenced_by(state.as_ref(), migration) =>
        {
            if fence_id < held.id {
                let (held, asked) = (held.id, fence_id);
                return Err(Rejection::NewerFence {
                    vshard,
                    held,
                    asked,
                }
                .into());
            }
            if fence_id == held.id {
                return Ok(fenced(vec![], held.index));
            }
            // A newer driver or attempt takes the fence over, same index,
            // with its own deadline.
            source.fence = Some(Fence {
                id: fence_id,
                index: held.index,
                deadline_ms,
            });
            Ok(fenced(vec![set_source(vshard, source)], held.index))
        }
        _ => {
            let needs = format!("Owned or Fenced by migration {migration}");
            Err(wrong_state(vshard, state.as_ref(), needs).into())
        }
    }
}

fn unfence<'a, V: DataView>(
    ctx: &Ctx<'_, V>,
    vshard: u16,
    migration: &str,
    up_to: FenceId,
) -> Outcome<'a, V::Error> {
    check_vshard(vshard)?;
    let mut source = source(ctx, vshard, migration)?;
    let state = ctx.state(vshard)?;
    let raised = source.lifted_up_to.max(up_to);
    match (&state, source.fence.clone()) {
        (Some(VShardState::Fenced { .. }), Some(held))
            if is_fenced_by(state.as_ref(), migration) =>
        {
            if held.id > up_to {
                let (held, asked) = (held.id, up_to);
                return Err(Rejection::NewerFence {
                    vshard,
                    held,
                    asked,
                }
                .into());
            }
            source.fence = None;
            source.lifted_up_to = raised;
            let state = VShardState::Owned;
            Ok(Effect::done(vec![
                DataMutation::SetVShard { vshard, state },
                set_source(vshard, source),
            ]))
        }
        (Some(VShardState::Owned), _) if raised != source.lifted_up_to => {
            source.lifted_up_to = raised;
            Ok(Effect::done(vec![set_source(vshard, source)]))
        }
        (Some(VShardState::Owned), _) => Ok(Effect::done(vec![])),
        _ => {
            let needs = format!("Owned or Fenced by migration {migration}");
            Err(wrong_state(vshard, state.as_ref(), needs).into())
        }
    }
}

fn mark_moved<'a, V: DataView>(
    ctx: &Ctx<'_, V>,
    vshard: u16,
    migration: &str,
    to_group: u64,
    epoch: u64,
) -> Outcome<'a, V::Error> {
    check_vshard(vshard)?;
    if epoch == 0 || to_group == crate::command::METADATA_GROUP {
        return Err(invalid(format!(
            "a vShard moves to a data group at an epoch of at least 1, not group {to_group} at \
             epoch {epoch}"
        ))
        .into());
    }
    let mut source = source(ctx, vshard, migration)?;
    let state = ctx.state(vshard)?;
    let moved = VShardState::Moved { to_group, epoch };
    if state.as_ref() == Some(&moved) {
        return Ok(Effect::done(vec![]));
    }
    if !is_fenced_by(state.as_ref(), migration) {
        let needs = format!("Fenced by migration {migration}");
        return Err(wrong_state(vshard, state.as_ref(), needs).into());
    }
    source.tracking = false;
    source.closed = true;
    source.fence = None;
    source.trimmed_up_to = u64::MAX;
    Ok(Effect::done(vec![
        DataMutation::SetVShard {
            vshard,
            state: moved,
        },
        forget_changes(vshard),
        set_source(vshard, source),
    ]))
}

/// The ghost of `vshard` left by `migration`, checked.
fn ghost<V: DataView>(
    ctx: &Ctx<'_, V>,
    vshard: u16,
    migration: &str,
    state: Option<&VShardState>,
) -> Result<(), Fail<V::Error>> {
    if !matches!(state, Some(VShardState::Moved { .. })) {
        let needs = format!("Moved (the ghost of migration {migration})");
        return Err(wrong_state(vshard, state, needs).into());
    }
    source(ctx, vshard, migration).map(|_| ())
}

fn cleanup_batch<'a, V: DataView>(
    ctx: &Ctx<'_, V>,
    vshard: u16,
    migration: &str,
    limit: u64,
) -> Outcome<'a, V::Error> {
    check_vshard(vshard)?;
    let state = ctx.state(vshard)?;
    if state.is_none() {
        return Ok(deleted(vec![], 0, true));
    }
    ghost(ctx, vshard, migration, state.as_ref())?;
    let (delete, count, done) = delete_batch(ctx, vshard, limit)?;
    Ok(deleted(vec![delete], count, done))
}

fn drop_ghost<'a, V: DataView>(
    ctx: &Ctx<'_, V>,
    vshard: u16,
    migration: &str,
) -> Outcome<'a, V::Error> {
    check_vshard(vshard)?;
    let state = ctx.state(vshard)?;
    if state.is_none() {
        return Ok(Effect::done(vec![]));
    }
    ghost(ctx, vshard, migration, state.as_ref())?;
    if !ctx.keys(vshard, 1)?.is_empty() {
        return Err(Rejection::VShardNotEmpty { vshard }.into());
    }
    Ok(Effect::done(vec![
        DataMutation::RemoveVShard { vshard },
        DataMutation::RemoveMigration { vshard },
        forget_changes(vshard),
    ]))
}

fn release_source<'a, V: DataView>(
    ctx: &Ctx<'_, V>,
    vshard: u16,
    migration: &str,
) -> Outcome<'a, V::Error> {
    check_vshard(vshard)?;
    let state = ctx.state(vshard)?;
    let record = ctx.record(vshard)?;
    let fenced_here = is_fenced_by(state.as_ref(), migration);
    if state.is_none() {
        return Ok(Effect::done(vec![]));
    }
    if state != Some(VShardState::Owned) && !fenced_here {
        let needs = format!("Owned or Fenced by migration {migration}");
        return Err(wrong_state(vshard, state.as_ref(), needs).into());
    }
    let since_index = match &record {
        Some(VShardMigration::Source(source)) if source.migration == migration => {
            if source.closed {
                return Ok(Effect::done(vec![]));
            }
            source.since_index
        }
        // Never tracked here: a closed record still refuses a late
        // `TrackChanges` or `Fence` of the aborted migration.
        None => ctx.index,
        Some(VShardMigration::Source(other)) if other.closed => ctx.index,
        Some(other) => return Err(wrong_migration(vshard, migration, Some(other)).into()),
    };
    let mut mutations = Vec::new();
    if fenced_here {
        mutations.push(DataMutation::SetVShard {
            vshard,
            state: VShardState::Owned,
        });
    }
    mutations.push(forget_changes(vshard));
    mutations.push(set_source(vshard, closed_source(migration, since_index)));
    Ok(Effect::done(mutations))
}

// -------------------------------------------------------------- in memory

/// A data group's state machine in memory: the same logic, for tests and
/// tools.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryData {
    pub states: BTreeMap<u16, VShardState>,
    pub migrations: BTreeMap<u16, VShardMigration>,
    pub kv: BTreeMap<(u16, Vec<u8>), Vec<u8>>,
    pub changes: BTreeMap<(u16, u64), Change>,
    pub bootstrap_assigned: bool,
}

impl DataView for MemoryData {
    type Error = Infallible;

    fn vshard_state(&self, vshard: u16) -> Result<Option<VShardState>, Infallible> {
        Ok(self.states.get(&vshard).cloned())
    }

    fn vshard_migration(&self, vshard: u16) -> Result<Option<VShardMigration>, Infallible> {
        Ok(self.migrations.get(&vshard).cloned())
    }

    fn vshard_keys(&self, vshard: u16, limit: usize) -> Result<Vec<Vec<u8>>, Infallible> {
        Ok(self
            .pairs(vshard)
            .into_iter()
            .take(limit)
            .map(|(k, _)| k)
            .collect())
    }

    fn bootstrap_assigned(&self) -> Result<bool, Infallible> {
        Ok(self.bootstrap_assigned)
    }
}

impl MemoryData {
    /// Applies the command of the entry at log `index`: decides, then
    /// writes what it decided.
    pub fn apply(&mut self, index: u64, op: &DataOp) -> Result<ResponseV1, Rejection> {
        let Ok(decision) = apply(&*self, index, op);
        let effect = decision?;
        for mutation in effect.mutations {
            self.write(mutation);
        }
        Ok(effect.response)
    }

    /// Writes one mutation.
    pub fn write(&mut self, mutation: DataMutation<'_>) {
        match mutation {
            DataMutation::SetVShard { vshard, state } => {
                self.states.insert(vshard, state);
            }
            DataMutation::RemoveVShard { vshard } => {
                self.states.remove(&vshard);
            }
            DataMutation::SetMigration { vshard, record } => {
                self.migrations.insert(vshard, record);
            }
            DataMutation::RemoveMigration { vshard } => {
                self.migrations.remove(&vshard);
            }
            DataMutation::Put { vshard, key, value } => {
                self.kv.insert((vshard, key.to_vec()), value.to_vec());
            }
            DataMutation::Delete { vshard, key } => {
                self.kv.remove(&(vshard, key.to_vec()));
            }
            DataMutation::DeleteKeys { vshard, keys } => {
                for key in keys {
                    self.kv.remove(&(vshard, key));
                }
            }
            DataMutation::RecordChange {
                vshard,
                index,
                change,
            } => {
                self.changes.insert((vshard, index), change.to_change());
            }
            DataMutation::TrimChanges {
                vshard,
                up_to_index,
            } => {
                self.changes
                    .retain(|&(v, index), _| v != vshard || index > up_to_index);
            }
            DataMutation::MarkBootstrapAssigned => self.bootstrap_assigned = true,
        }
    }

    /// The pairs of `vshard`, in key order.
    pub fn pairs(&self, vshard: u16) -> Vec<(Vec<u8>, Vec<u8>)> {
        let range = (vshard, Vec::new())..;
        (self.kv.range(range))
            .take_while(|((v, _), _)| *v == vshard)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The recorded changes of `vshard` after `after_index`, in order.
    pub fn changes_after(&self, vshard: u16, after_index: u64) -> Vec<(u64, Change)> {
        let Some(first) = after_index.checked_add(1) else {
            return Vec::new();
        };
        (self.changes.range((vshard, first)..))
            .take_while(|((v, _), _)| *v == vshard)
            .map(|((_, index), change)| (*index, change.clone()))
            .collect()
    }

    /// The digest of `vshard`'s data.
    pub fn digest(&self, vshard: u16) -> VShardDigest {
        let mut digester = VShardDigester::new();
        for (key, value) in self.pairs(vshard) {
            digester.update(&key, &value);
        }
        digester.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_in(vshard: u16) -> Vec<u8> {
        keys_in(vshard, 1).remove(0)
    }

    /// `count` distinct keys of `vshard`, in key order.
    fn keys_in(vshard: u16, count: usize) -> Vec<Vec<u8>> {
        let mut keys: Vec<Vec<u8>> = (0u32..)
            .map(|i| format!("k{i}").into_bytes())
            .filter(|k| vshard_of(k) == vshard)
            .take(count)
            .collect();
        keys.sort();
        keys
    }

    fn with_states(states: &[(u16, VShardState)]) -> MemoryData {
        MemoryData {
            states: states.iter().cloned().collect(),
            ..MemoryData::default()
        }
    }

    /// A data group in memory, applying one entry at a time at increasing
    /// log indexes; checks that a refusal changed nothing.
    struct Group {
        data: MemoryData,
        index: u64,
    }

    impl Group {
        fn owning(vshards: &[u16]) -> Self {
            let mut group = Group {
                data: MemoryData::default(),
                index: 0,
            };
            let assign = DataOp::AssignVShards {
                vshards: vshards.to_vec(),
            };
            assert_eq!(group.run(assign), Ok(ResponseV1::Done));
            group
        }

        fn empty() -> Self {
            Group {
                data: MemoryData::default(),
                index: 0,
            }
        }

        fn run(&mut self, op: DataOp) -> Result<ResponseV1, Rejection> {
            self.index += 1;
            let before = self.data.clone();
            let result = self.data.apply(self.index, &op);
            if result.is_err() {
                assert_eq!(self.data, before, "a refused {op:?} changed the state");
            }
            result
        }

        fn ok(&mut self, op: DataOp) {
            let response = self.run(op.clone());
            assert_eq!(response, Ok(ResponseV1::Done), "{op:?}");
        }

        fn put(&mut self, vshard: u16, key: &[u8], value: &[u8]) -> Result<ResponseV1, Rejection> {
            self.run(DataOp::Put {
                vshard,
                key: key.to_vec(),
                value: value.to_vec(),
            })
        }

        fn state(&self, vshard: u16) -> Option<&VShardState> {
            self.data.states.get(&vshard)
        }

        fn source(&self, vshard: u16) -> SourceMigration {
            match self.data.migrations.get(&vshard) {
                Some(VShardMigration::Source(source)) => source.clone(),
                other => panic!("vShard {vshard} has no source record: {other:?}"),
            }
        }
    }

    const V: u16 = 5;

    fn m(id: &str) -> String {
        id.to_string()
    }

    fn begin(migration: &str) -> DataOp {
        DataOp::BeginIncoming {
            vshard: V,
            migration: m(migration),
        }
    }

    fn ingest(migration: &str, pairs: Vec<(Vec<u8>, Vec<u8>)>) -> DataOp {
        DataOp::IngestChunk {
            vshard: V,
            migration: m(migration),
            pairs,
        }
    }

    fn changes(migration: &str, changes: Vec<(u64, Change)>) -> DataOp {
        DataOp::ApplyChanges {
            vshard: V,
            migration: m(migration),
            changes,
        }
    }

    fn put_change(key: &[u8], value: &[u8]) -> Change {
        Change::Put {
            key: key.to_vec(),
            value: value.to_vec(),
        }
    }

    fn drop_incoming(migration: &str, limit: u64) -> DataOp {
        DataOp::DropIncoming {
            vshard: V,
            migration: m(migration),
            limit,
        }
    }

    fn track(migration: &str) -> DataOp {
        DataOp::TrackChanges {
            vshard: V,
            migration: m(migration),
        }
    }

    fn fence(migration: &str, fence_id: FenceId) -> DataOp {
        DataOp::Fence {
            vshard: V,
            migration: m(migration),
            fence_id,
            deadline_ms: 1000 + fence_id.0,
        }
    }

    fn unfence(migration: &str, up_to: FenceId) -> DataOp {
        DataOp::Unfence {
            vshard: V,
            migration: m(migration),
            up_to,
        }
    }

    fn mark_moved(migration: &str) -> DataOp {
        DataOp::MarkMoved {
            vshard: V,
            migration: m(migration),
            to_group: 2,
            epoch: 2,
        }
    }

    fn cleanup(migration: &str, limit: u64) -> DataOp {
        DataOp::CleanupBatch {
            vshard: V,
            migration: m(migration),
            limit,
        }
    }

    fn release(migration: &str) -> DataOp {
        DataOp::ReleaseSource {
            vshard: V,
            migration: m(migration),
        }
    }

    fn deleted(deleted: u64, done: bool) -> Result<ResponseV1, Rejection> {
        Ok(ResponseV1::Deleted { deleted, done })
    }

    fn wrong_migration(migration: &str, current: Option<&str>) -> Result<ResponseV1, Rejection> {
        Err(Rejection::WrongMigration {
            vshard: V,
            migration: m(migration),
            current: current.map(str::to_string),
        })
    }

    fn is_wrong_state(result: &Result<ResponseV1, Rejection>) -> bool {
        matches!(result, Err(Rejection::WrongState { .. }))
    }

    /// A Put is applied only on an Owned vShard; each other state gets its
    /// own typed rejection and no mutation.
    #[test]
    fn owner_check_per_state() {
        let key = key_in(5);
        let put = DataOp::Put {
            vshard: 5,
            key: key.clone(),
            value: b"v".to_vec(),
        };
        let cases = [
            (None, Err(Rejection::NotOwner { vshard: 5 })),
            (Some(VShardState::Owned), Ok(())),
            (
                Some(VShardState::Incoming {
                    migration: "m".into(),
                }),
                Err(Rejection::NotOwner { vshard: 5 }),
            ),
            (
                Some(VShardState::Fenced {
                    migration: "m".into(),
                }),
                Err(Rejection::Fenced {
                    vshard: 5,
                    migration: "m".into(),
                }),
            ),
            (
                Some(VShardState::Moved {
                    to_group: 2,
                    epoch: 3,
                }),
                Err(Rejection::Moved {
                    vshard: 5,
                    to_group: 2,
                    epoch: 3,
                }),
            ),
        ];
        for (state, expected) in cases {
            let states = with_states(&state.iter().map(|s| (5, s.clone())).collect::<Vec<_>>());
            let Ok(decision) = apply(&states, 7, &put);
            match expected {
                Ok(()) => assert_eq!(
                    decision,
                    Ok(Effect::done(vec![DataMutation::Put {
                        vshard: 5,
                        key: &key,
                        value: b"v"
                    }]))
                ),
                Err(rejection) => assert_eq!(decision, Err(rejection), "state {state:?}"),
            }
        }
    }

    /// A key filed under the wrong or a non-existent vShard is refused.
    #[test]
    fn key_must_hash_to_its_vshard() {
        let key = key_in(5);
        let states = with_states(&[(5, VShardState::Owned), (6, VShardState::Owned)]);
        let wrong = DataOp::Delete {
            vshard: 6,
            key: key.clone(),
        };
        let Ok(decision) = apply(&states, 1, &wrong);
        assert_eq!(
            decision,
            Err(Rejection::WrongVShard {
                vshard: 6,
                expected: 5
            })
        );
        let invalid = DataOp::Delete { vshard: 1024, key };
        let Ok(decision) = apply(&states, 1, &invalid);
        assert_eq!(decision, Err(Rejection::InvalidVShard { vshard: 1024 }));
    }

    /// Assigning marks new vShards Owned, skips owned ones, refuses whole if
    /// one is migrating.
    #[test]
    fn assign_vshards() {
        let states = with_states(&[(1, VShardState::Owned)]);
        let op = DataOp::AssignVShards {
            vshards: vec![0, 1, 2, 2],
        };
        let Ok(decision) = apply(&states, 1, &op);
        let owned = |vshard| DataMutation::SetVShard {
            vshard,
            state: VShardState::Owned,
        };
        let mark = DataMutation::MarkBootstrapAssigned;
        assert_eq!(decision, Ok(Effect::done(vec![owned(0), owned(2), mark])));
        let busy = with_states(&[(
            2,
            VShardState::Fenced {
                migration: "m".into(),
            },
        )]);
        let Ok(decision) = apply(&busy, 1, &op);
        assert_eq!(decision, Err(Rejection::VShardInUse { vshard: 2 }));
        let op = DataOp::AssignVShards {
            vshards: vec![0, 4096],
        };
        let Ok(decision) = apply(&states, 1, &op);
        assert_eq!(decision, Err(Rejection::InvalidVShard { vshard: 4096 }));
    }

    /// The bootstrap assignment happens once: a second one (a leader with
    /// stale metadata re-assigning a vShard that migrated away and whose
    /// ghost is gone) is refused and changes nothing.
    #[test]
    fn bootstrap_assignment_happens_once() {
        let mut group = Group::owning(&[3]);
        assert!(group.data.bootstrap_assigned);
        let again = DataOp::AssignVShards { vshards: vec![7] };
        assert_eq!(group.run(again), Err(Rejection::BootstrapAssigned));
        assert_eq!(group.data.vshard_state(7), Ok(None));
        let mut empty = Group::empty();
        let none = DataOp::AssignVShards { vshards: vec![] };
        assert_eq!(empty.run(none), Ok(ResponseV1::Done));
        let late = DataOp::AssignVShards { vshards: vec![1] };
        assert_eq!(empty.run(late), Err(Rejection::BootstrapAssigned));
    }

    /// The target's copy: begins only on an absent, empty vShard; takes
    /// chunks and changes only for its own migration, the changes in order
    /// and once; stays invisible to clients until activated; activation is
    /// idempotent.
    #[test]
    fn target_copy_lifecycle() {
        let mut target = Group::owning(&[6]);
        let [a, b, c]: [Vec<u8>; 3] = keys_in(V, 3).try_into().expect("three keys");
        assert_eq!(target.run(begin("m")), Ok(ResponseV1::Done));
        assert_eq!(target.run(begin("m")), Ok(ResponseV1::Done), "idempotent");
        assert_eq!(
            target.run(begin("other")),
            wrong_migration("other", Some("m"))
        );
        let owned = DataOp::BeginIncoming {
            vshard: 6,
            migration: m("m"),
        };
        assert!(is_wrong_state(&target.run(owned)));
        assert_eq!(
            target.put(V, &a, b"client"),
            Err(Rejection::NotOwner { vshard: V }),
            "Incoming is invisible to clients"
        );

        let chunk = vec![(a.clone(), b"a0".to_vec()), (b.clone(), b"b0".to_vec())];
        target.ok(ingest("m", chunk.clone()));
        assert_eq!(
            target.run(ingest("other", chunk)),
            wrong_migration("other", Some("m"))
        );
        let foreign = vec![(key_in(6), b"x".to_vec())];
        assert_eq!(
            target.run(ingest("m", foreign)),
            Err(Rejection::WrongVShard {
                vshard: V,
                expected: 6
            })
        );

        let batch = vec![
            (10, put_change(&a, b"a1")),
            (12, Change::Delete { key: b.clone() }),
            (13, put_change(&c, b"c1")),
        ];
        let applied = |up_to_index| Ok(ResponseV1::ChangesApplied { up_to_index });
        assert_eq!(target.run(changes("m", batch.clone())), applied(13));
        assert_eq!(
            target.run(changes("m", batch)),
            applied(13),
            "a repeat is skipped"
        );
        let overlapping = vec![(13, put_change(&c, b"stale")), (15, put_change(&a, b"a2"))];
        assert_eq!(target.run(changes("m", overlapping)), applied(15));
        let expected = vec![(a.clone(), b"a2".to_vec()), (c.clone(), b"c1".to_vec())];
        assert_eq!(target.data.pairs(V), expected);
        let unordered = vec![(17, put_change(&a, b"x")), (16, put_change(&a, b"y"))];
        assert!(matches!(
            target.run(changes("m", unordered)),
            Err(Rejection::Invalid { .. })
        ));
        let late_chunk = vec![(a.clone(), b"a0".to_vec())];
        assert!(matches!(
            target.run(ingest("m", late_chunk)),
            Err(Rejection::Invalid { .. })
        ));

        let activate = |migration: &str, epoch| DataOp::Activate {
            vshard: V,
            migration: m(migration),
            epoch,
        };
        assert!(matches!(
            target.run(activate("m", 0)),
            Err(Rejection::Invalid { .. })
        ));
        assert_eq!(
            target.run(activate("other", 2)),
            wrong_migration("other", Some("m"))
        );
        target.ok(activate("m", 2));
        assert_eq!(target.state(V), Some(&VShardState::Owned));
        assert!(!target.data.migrations.contains_key(&V));
        target.ok(activate("m", 2));
        assert_eq!(target.put(V, &a, b"new"), Ok(ResponseV1::Done));
        assert_eq!(target.run(drop_incoming("m", 10)).map(|_| ()), {
            let state = VShardState::describe(Some(&VShardState::Owned));
            Err(Rejection::WrongState {
                vshard: V,
                found: state,
                needs: "Incoming for migration m".into(),
            })
        });
    }

    /// An incoming copy is dropped in bounded batches, then forgotten; a
    /// repeat afterwards is done at once; a vShard with leftover keys can
    /// not start a copy.
    #[test]
    fn drop_incoming_in_batches() {
        let mut target = Group::empty();
        target.ok(begin("m"));
        let pairs = keys_in(V, 5)
            .into_iter()
            .map(|k| (k, b"v".to_vec()))
            .collect();
        target.ok(ingest("m", pairs));
        assert!(matches!(
            target.run(drop_incoming("m", 0)),
            Err(Rejection::Invalid { .. })
        ));
        assert_eq!(
            target.run(drop_incoming("other", 2)),
            wrong_migration("other", Some("m"))
        );
        assert_eq!(target.run(drop_incoming("m", 2)), deleted(2, false));
        assert_eq!(target.run(drop_incoming("m", 2)), deleted(2, false));
        assert_eq!(
            target.state(V),
            Some(&VShardState::Incoming { migration: m("m") })
        );
        assert_eq!(target.run(drop_incoming("m", 2)), deleted(1, true));
        assert_eq!(target.state(V), None);
        assert!(target.data.migrations.is_empty() && target.data.kv.is_empty());
        assert_eq!(target.run(drop_incoming("m", 2)), deleted(0, true));

        target.data.kv.insert((V, key_in(V)), b"leftover".to_vec());
        assert_eq!(
            target.run(begin("n")),
            Err(Rejection::VShardNotEmpty { vshard: V })
        );
    }

    /// Tracking records every write to the vShard at its log index from the
    /// `TrackChanges` entry on, and nothing of other vShards; trims forget
    /// a prefix, only of the past; a second migration is refused while the
    /// first tracks.
    #[test]
    fn tracking_records_changes_by_index() {
        let mut source = Group::owning(&[V, 6]);
        let [a, b]: [Vec<u8>; 2] = keys_in(V, 2).try_into().expect("two keys");
        source.put(V, &a, b"before").expect("owned");
        let since = source.index + 1;
        let tracking = Ok(ResponseV1::Tracking { since_index: since });
        assert_eq!(source.run(track("m")), tracking);
        assert_eq!(source.run(track("m")), tracking, "idempotent");
        assert_eq!(source.run(track("n")), wrong_migration("n", Some("m")));
        source.put(V, &a, b"a1").expect("owned");
        let delete = DataOp::Delete {
            vshard: V,
            key: b.clone(),
        };
        source.ok(delete);
        source.put(6, &key_in(6), b"elsewhere").expect("owned");
        let recorded = source.data.changes_after(V, 0);
        let expected = vec![
            (since + 3, put_change(&a, b"a1")),
            (since + 4, Change::Delete { key: b.clone() }),
        ];
        assert_eq!(recorded, expected);
        assert!(source.data.changes_after(6, 0).is_empty());
        assert_eq!(
            source.data.changes_after(V, since + 3),
            expected[1..].to_vec()
        );

        let trim = |up_to_index| DataOp::TrimChanges {
            vshard: V,
            migration: m("m"),
            up_to_index,
        };
        source.ok(trim(since + 3));
        assert_eq!(source.data.changes_after(V, 0), expected[1..].to_vec());
        assert_eq!(source.source(V).trimmed_up_to, since + 3);
        source.ok(trim(since + 1));
        assert_eq!(source.source(V).trimmed_up_to, since + 3, "never lowered");
        assert!(matches!(
            source.run(trim(u64::MAX)),
            Err(Rejection::Invalid { .. })
        ));
        let untracked = DataOp::TrackChanges {
            vshard: 7,
            migration: m("m"),
        };
        assert!(is_wrong_state(&source.run(untracked)));
    }

    /// Fence ids: the first fence answers its own index; the same id the
    /// same index; a lower id is refused; a higher one takes the fence
    /// over (same index, new deadline); an `Unfence` below the held id is
    /// refused; a lifted id and every id up to an `Unfence` bound are
    /// refused later, even one that arrives before any fence.
    #[test]
    fn fence_ids() {
        let mut source = Group::owning(&[V]);
        assert_eq!(source.run(fence("m", (1, 0))), wrong_migration("m", None));
        source.run(track("m")).expect("tracks");
        let at = source.index + 1;
        let fenced = Ok(ResponseV1::Fenced { fence_index: at });
        assert_eq!(source.run(fence("m", (1, 0))), fenced);
        assert_eq!(
            source.state(V),
            Some(&VShardState::Fenced { migration: m("m") })
        );
        assert_eq!(
            source.put(V, &key_in(V), b"v"),
            Err(Rejection::Fenced {
                vshard: V,
                migration: m("m")
            })
        );
        assert_eq!(
            source.run(fence("m", (1, 0))),
            fenced,
            "same id, same index"
        );
        assert_eq!(source.run(fence("m", (2, 1))), fenced, "taken over");
        let held = source.source(V).fence.expect("fenced");
        assert_eq!((held.id, held.index, held.deadline_ms), ((2, 1), at, 1002));
        assert_eq!(
            source.run(fence("m", (2, 0))),
            Err(Rejection::NewerFence {
                vshard: V,
                held: (2, 1),
                asked: (2, 0)
            })
        );
        assert_eq!(
            source.run(unfence("m", (2, 0))),
            Err(Rejection::NewerFence {
                vshard: V,
                held: (2, 1),
                asked: (2, 0)
            })
        );
        assert_eq!(
            source.run(unfence("other", (9, 9))),
            wrong_migration("other", Some("m"))
        );
        source.ok(unfence("m", (2, 1)));
        assert_eq!(source.state(V), Some(&VShardState::Owned));
        assert_eq!(
            source.run(fence("m", (2, 1))),
            Err(Rejection::FenceLifted {
                vshard: V,
                fence_id: (2, 1),
                lifted_up_to: (2, 1)
            }),
            "a late duplicate of a lifted fence"
        );
        source.ok(unfence("m", (2, u32::MAX)));
        assert!(matches!(
            source.run(fence("m", (2, 5))),
            Err(Rejection::FenceLifted { .. })
        ));
        source.ok(unfence("m", (1, 0)));
        assert_eq!(
            source.source(V).lifted_up_to,
            (2, u32::MAX),
            "never lowered"
        );
        let again = source.index + 1;
        assert_eq!(
            source.run(fence("m", (3, 0))),
            Ok(ResponseV1::Fenced { fence_index: again })
        );
    }

    /// After the transfer the fenced source becomes a ghost: tracking stops
    /// and its changes go, it redirects clients, it can no longer be
    /// unfenced or fenced; its keys are deleted in batches, then the ghost
    /// is dropped.
    #[test]
    fn ghost_cleanup() {
        let mut source = Group::owning(&[V]);
        source.run(track("m")).expect("tracks");
        for key in keys_in(V, 3) {
            source.put(V, &key, b"v").expect("owned");
        }
        assert!(
            is_wrong_state(&source.run(mark_moved("m"))),
            "needs the fence"
        );
        source.run(fence("m", (1, 0))).expect("fences");
        assert_eq!(
            source.run(mark_moved("other")),
            wrong_migration("other", Some("m"))
        );
        source.ok(mark_moved("m"));
        source.ok(mark_moved("m"));
        let moved = Err(Rejection::Moved {
            vshard: V,
            to_group: 2,
            epoch: 2,
        });
        assert_eq!(source.put(V, &key_in(V), b"late"), moved);
        assert!(source.data.changes.is_empty());
        let record = source.source(V);
        assert!(record.closed && !record.tracking && record.fence.is_none());
        assert!(is_wrong_state(&source.run(unfence("m", (9, 0)))));
        assert_eq!(
            source.run(fence("m", (9, 0))),
            Err(Rejection::MigrationClosed {
                vshard: V,
                migration: m("m")
            })
        );
        assert!(
            is_wrong_state(&source.run(release("m"))),
            "the transfer won"
        );
        let drop_ghost = DataOp::DropGhost {
            vshard: V,
            migration: m("m"),
        };
        assert_eq!(
            source.run(drop_ghost.clone()),
            Err(Rejection::VShardNotEmpty { vshard: V })
        );
        assert_eq!(source.run(cleanup("m", 2)), deleted(2, false));
        assert_eq!(source.run(cleanup("m", 2)), deleted(1, true));
        assert_eq!(source.run(cleanup("m", 2)), deleted(0, true));
        source.ok(drop_ghost.clone());
        let assigned_only = MemoryData {
            bootstrap_assigned: true,
            ..MemoryData::default()
        };
        assert_eq!(source.data, assigned_only, "the source holds nothing");
        assert_eq!(
            source.run(DataOp::AssignVShards { vshards: vec![V] }),
            Err(Rejection::BootstrapAssigned),
            "a stale re-assignment cannot bring the moved vShard back"
        );
        source.ok(drop_ghost);
        assert_eq!(source.run(cleanup("m", 2)), deleted(0, true));
    }

    /// The abort on the source: the fence lifts, tracking stops, changes
    /// go, and the migration cannot fence or track again; another one can.
    #[test]
    fn release_after_abort() {
        let mut source = Group::owning(&[V]);
        source.run(track("m")).expect("tracks");
        source.put(V, &key_in(V), b"v").expect("owned");
        source.run(fence("m", (1, 0))).expect("fences");
        assert_eq!(source.run(release("other")), {
            let state = VShardState::Fenced { migration: m("m") };
            Err(Rejection::WrongState {
                vshard: V,
                found: VShardState::describe(Some(&state)),
                needs: "Owned or Fenced by migration other".into(),
            })
        });
        source.ok(release("m"));
        source.ok(release("m"));
        assert_eq!(source.state(V), Some(&VShardState::Owned));
        assert!(source.data.changes.is_empty());
        let closed = Err(Rejection::MigrationClosed {
            vshard: V,
            migration: m("m"),
        });
        assert_eq!(source.run(fence("m", (7, 0))), closed);
        assert_eq!(source.run(track("m")), closed);
        source.put(V, &key_in(V), b"w").expect("owned again");
        assert!(source.data.changes.is_empty(), "not tracked any more");
        let since = source.index + 1;
        assert_eq!(
            source.run(track("n")),
            Ok(ResponseV1::Tracking { since_index: since })
        );

        let mut never_tracked = Group::owning(&[V]);
        never_tracked.ok(release("m"));
        assert_eq!(
            never_tracked.run(track("m")),
            closed,
            "a late track is refused"
        );
        assert_eq!(Group::empty().run(release("m")), Ok(ResponseV1::Done));
    }

    /// The digest covers keys and values with their lengths, in any order.
    #[test]
    fn digest_is_length_prefixed() {
        let digest = |pairs: &[(&[u8], &[u8])]| {
            let mut digester = VShardDigester::new();
            for (key, value) in pairs {
                digester.update(key, value);
            }
            digester.finish()
        };
        let one = digest(&[(b"ab", b"c")]);
        assert_ne!(one.digest, digest(&[(b"a", b"bc")]).digest);
        assert_eq!(
            digest(&[(b"a", b""), (b"b", b"")]),
            digest(&[(b"b", b""), (b"a", b"")])
        );
        assert_ne!(
            digest(&[(b"a", b""), (b"b", b"")]).digest,
            digest(&[(b"a", b""), (b"b", b"x")]).digest
        );
        assert_eq!((one.key_count, one.bytes), (1, 3));
        assert_eq!(one, digest(&[(b"ab", b"c")]));
        assert_eq!(digest(&[]).key_count, 0);
        let mut data = MemoryData::default();
        data.kv.insert((V, b"ab".to_vec()), b"c".to_vec());
        data.kv.insert((V + 1, b"zz".to_vec()), b"other".to_vec());
        assert_eq!(data.digest(V), one);
    }

    fn golden<T>(value: T, expected: &str)
    where
        T: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug,
    {
        let bytes = postcard::to_allocvec(&value).expect("encoding to a Vec cannot fail");
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, expected, "{value:?}");
        let decoded: T = postcard::from_bytes(&bytes).expect("decodes");
        assert_eq!(decoded, value);
    }

    /// The persisted vShard state keeps its shipped encoding.
    #[test]
    fn golden_vshard_records() {
        let cases = [
            (VShardState::Owned, "0000"),
            (
                VShardState::Incoming {
                    migration: "m".into(),
                },
                "0001016d",
            ),
            (
                VShardState::Fenced {
                    migration: "m".into(),
                },
                "0002016d",
            ),
            (
                VShardState::Moved {
                    to_group: 2,
                    epoch: 300,
                },
                "000302ac02",
            ),
        ];
        for (state, expected) in cases {
            golden(VShardRecord::V1(state), expected);
        }
    }

    /// The persisted migration records and recorded changes keep their
    /// shipped encodings; the borrowed change encodes the same bytes.
    #[test]
    fn golden_migration_records() {
        let source = SourceMigration {
            migration: "m".into(),
            since_index: 3,
            tracking: true,
            trimmed_up_to: 4,
            fence: Some(Fence {
                id: (5, 6),
                index: 7,
                deadline_ms: 300,
            }),
            lifted_up_to: (1, 2),
            closed: false,
        };
        golden(
            VShardMigrationRecord::V1(VShardMigration::Source(source)),
            "0000016d03010401050607ac02010200",
        );
        let target = TargetMigration {
            migration: "m".into(),
            applied_up_to: 9,
        };
        golden(
            VShardMigrationRecord::V1(VShardMigration::Target(target)),
            "0001016d09",
        );
        let put = put_change(b"k", b"v");
        golden(ChangeRecord::V1(put.clone()), "0000016b0176");
        let delete = Change::Delete { key: b"k".to_vec() };
        golden(ChangeRecord::V1(delete.clone()), "0001016b");
        for (owned, borrowed) in [
            (
                put,
                ChangeRef::Put {
                    key: b"k",
                    value: b"v",
                },
            ),
            (delete, ChangeRef::Delete { key: b"k" }),
        ] {
            let expected = postcard::to_allocvec(&ChangeRecord::V1(owned)).expect("encodes");
            let bytes = postcard::to_allocvec(&ChangeRecordRef::V1(borrowed)).expect("encodes");
            assert_eq!(bytes, expected);
        }
    }
}
