//! The Raft commands and responses of shardflow's state machines.
//!
//! These types live inside openraft log entries (commands) and travel back
//! to proposers (responses), so they are persisted formats:
//!
//! - Every top-level type is a versioned enum, `Command::V1(..)`,
//!   `Response::V1(..)`, and every enum inside only grows **at the end**:
//!   postcard encodes a variant by its index, so reordering or inserting a
//!   variant would silently decode old log entries as the wrong command.
//!   Fields of a shipped variant never change; a new shape is a new variant.
//! - The golden-bytes tests below pin the encoding of every variant.
//!
//! Every command may carry an **idempotency key** (`"wf-1-7/Lock"`): the
//! state machine records the response of the first successful apply under
//! it and answers a re-proposal with that response instead of acting twice.
//! Rejections are not recorded (they had no effect), so a retry after the
//! cause went away is evaluated afresh.
//!
//! **Migration commands.** The variants after the first ones of
//! [`MetadataOp`] and [`DataOp`] are the commands of a migration
//! (DESIGN §4, with the two fixes the protocol model showed necessary:
//! fence ids and a lock lease); each enum's doc says where they start.
//! Their rules live in [`crate::metadata`] and [`crate::data`]. Every one is
//! idempotent on its own (a repeat changes nothing and answers alike), so
//! the driver's fast path and the groups' own reactions may race. Beware
//! that an idempotency key makes a re-proposal answer the *first*
//! response: a command meant to act again (a resumed `LockMigration`
//! bumping the driver epoch, the next batch of `DropIncoming`) needs a key
//! of its own, or none.

use serde::{Deserialize, Serialize};

use crate::vshard::vshard_of;

/// The longest key a proposer may send, in bytes.
pub const MAX_KEY_BYTES: usize = 4 * 1024;
/// The longest value a proposer may send, in bytes.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// The longest idempotency key a proposer may send, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;
/// The longest migration id a proposer may send, in bytes.
pub const MAX_MIGRATION_ID_BYTES: usize = 256;
/// The longest abort reason a proposer may send, in bytes.
pub const MAX_REASON_BYTES: usize = 1024;
/// The most key and value bytes one `IngestChunk` or `ApplyChanges` may carry.
pub const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// Identifies a fence: `(driver epoch, cut-over attempt)`, ordered
/// lexicographically. A newer driver or attempt has a higher id. Driver
/// epochs start at 1, so `(0, 0)` is never a fence (a source refuses it).
pub type FenceId = (u64, u32);

/// One change a source applied to a tracked vShard, shipped to the target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    Put { key: Vec<u8>, value: Vec<u8> },
    Delete { key: Vec<u8> },
}

impl Change {
    /// The key the change is about.
    pub fn key(&self) -> &[u8] {
        match self {
            Change::Put { key, .. } | Change::Delete { key } => key,
        }
    }

    /// Key and value bytes.
    pub fn bytes(&self) -> usize {
        match self {
            Change::Put { key, value } => key.len() + value.len(),
            Change::Delete { key } => key.len(),
        }
    }
}

/// Who asks the metadata group to abort a migration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AbortBy {
    /// The migration's driver (compensation, cancel, exhausted retries);
    /// refused on a stale epoch.
    Driver { driver_epoch: u64 },
    /// The source group's leader, past the fence deadline.
    Source { group: u64 },
    /// The metadata leader's reaper: the driver's lease expired. Refused
    /// unless the command's `now_ms` is at or past the lease's expiry.
    LeaseExpired,
}

/// A Raft command, versioned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    V1(CommandV1),
}

/// Version 1 of a command: an optional idempotency key and an operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandV1 {
    pub idempotency_key: Option<String>,
    pub op: Op,
}

/// What a command does, by the kind of group it is for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// For the metadata group (group 0).
    Metadata(MetadataOp),
    /// For a data group.
    Data(DataOp),
}

/// Commands of the metadata group. Append new variants at the end only.
///
/// From `LockMigration` on, the variants are **migration commands** (rules
/// in [`crate::metadata`]). Times are the proposer's clock in milliseconds
/// since the Unix epoch, carried in the command so every replica decides
/// the same (a replica never reads its own clock at apply).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetadataOp {
    /// Creates the cluster: its nodes `(id, address)`, its groups `(group,
    /// members)` (group 0 included) and the routing table, one data group
    /// per vShard (`routing[v]` owns vShard `v`). Refused once bootstrapped.
    Bootstrap {
        nodes: Vec<(u64, String)>,
        groups: Vec<(u64, Vec<u64>)>,
        routing: Vec<u64>,
    },
    /// Registers a node. Refused if the id exists with another address or
    /// the address belongs to another node; a repeat is a no-op.
    AddNode { id: u64, addr: String },
    /// Forgets a node. Refused while it is a member of any group.
    RemoveNode { id: u64 },
    /// Records a group's members (after a replica moved).
    SetGroupMembers { group: u64, members: Vec<u64> },
    /// Migration: locks `vshard` for `migration`, moving it from
    /// `from_group` (its current owner) to `to_group`, with a lease of
    /// `lease_ms` from `now_ms`. Refused for an invalid vShard, an unknown
    /// group, a target that already owns it, a source that does not, a
    /// vShard locked by another live migration, or `max_concurrent` live
    /// migrations already. The same migration again is idempotent; with a
    /// higher `driver_epoch` it is a resume (the epoch is bumped and the
    /// lease renewed) and answers the decision so far.
    LockMigration {
        migration: String,
        vshard: u16,
        from_group: u64,
        to_group: u64,
        driver_epoch: u64,
        now_ms: u64,
        lease_ms: u64,
        max_concurrent: u32,
    },
    /// Migration: the driver renews its lease to `now_ms + lease_ms`.
    RenewLease {
        migration: String,
        driver_epoch: u64,
        now_ms: u64,
        lease_ms: u64,
    },
    /// Migration: **the point of no return.** Routes the vShard to the
    /// target at the next epoch. Refused once aborted or on a stale epoch;
    /// idempotent.
    Transfer {
        migration: String,
        driver_epoch: u64,
        now_ms: u64,
    },
    /// Migration: aborts it. Refused once `Transfer` committed (the first
    /// of the two to commit wins); idempotent.
    AbortMigration {
        migration: String,
        by: AbortBy,
        reason: String,
        now_ms: u64,
    },
    /// Migration: both sides have reacted to the decision (the losing
    /// side is cleaned up); releases the vShard's lock.
    FinishMigration { migration: String },
}

/// Commands of a data group. Append new variants at the end only.
///
/// From `BeginIncoming` on, the variants are **migration commands** (rules
/// in [`crate::data`]): `BeginIncoming`, `IngestChunk`, `ApplyChanges`,
/// `Activate` and `DropIncoming` on the target; `TrackChanges`,
/// `TrimChanges`, `Fence`, `Unfence`, `MarkMoved`, `CleanupBatch`,
/// `DropGhost` and `ReleaseSource` on the source. Each names its migration
/// and is refused if the vShard is in another one here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataOp {
    /// Writes a value. `vshard` must be `vshard_of(key)`.
    Put {
        vshard: u16,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// Deletes a key. `vshard` must be `vshard_of(key)`.
    Delete { vshard: u16, key: Vec<u8> },
    /// Marks vShards `Owned` by this group, once, at bootstrap: refused
    /// after the group's first assignment, so a leader reading stale
    /// metadata cannot take back a vShard that migrated away.
    AssignVShards { vshards: Vec<u16> },
    /// Migration, target: starts an `Incoming` copy of an absent vShard.
    BeginIncoming { vshard: u16, migration: String },
    /// Migration, target: writes a chunk of the base copy into its own
    /// `Incoming` vShard (refused once changes were applied to it).
    IngestChunk {
        vshard: u16,
        migration: String,
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
    },
    /// Migration, target: applies the source's changes, in order, by their
    /// source log index; indexes at or below the highest applied are
    /// skipped, so a repeat is harmless.
    ApplyChanges {
        vshard: u16,
        migration: String,
        changes: Vec<(u64, Change)>,
    },
    /// Migration, target: the `Transfer` committed at `epoch`: `Incoming`
    /// becomes `Owned`. Idempotent.
    Activate {
        vshard: u16,
        migration: String,
        epoch: u64,
    },
    /// Migration, target: the abort committed: deletes up to `limit` keys of
    /// the `Incoming` copy, and the vShard's state once it is empty.
    DropIncoming {
        vshard: u16,
        migration: String,
        limit: u64,
    },
    /// Migration, source: from this entry on, every applied write of the
    /// vShard is also recorded in its change table, keyed by log index.
    TrackChanges { vshard: u16, migration: String },
    /// Migration, source: forgets recorded changes up to `up_to_index`
    /// (the target confirmed them).
    TrimChanges {
        vshard: u16,
        migration: String,
        up_to_index: u64,
    },
    /// Migration, source: fences the vShard (no reads or writes) from this
    /// entry on; answers the fence's log index. A fence whose id is at or
    /// below one already lifted, or below the one held, is refused; a
    /// higher id takes the held fence over with its deadline.
    Fence {
        vshard: u16,
        migration: String,
        fence_id: FenceId,
        deadline_ms: u64,
    },
    /// Migration, source: lifts the fence if its id is at most `up_to`, and
    /// refuses every later fence up to `up_to`.
    Unfence {
        vshard: u16,
        migration: String,
        up_to: FenceId,
    },
    /// Migration, source: the `Transfer` committed: the fenced vShard
    /// becomes a ghost that redirects to `to_group` at `epoch`; tracking
    /// stops.
    MarkMoved {
        vshard: u16,
        migration: String,
        to_group: u64,
        epoch: u64,
    },
    /// Migration, source: deletes up to `limit` keys of the ghost.
    CleanupBatch {
        vshard: u16,
        migration: String,
        limit: u64,
    },
    /// Migration, source: forgets the emptied ghost.
    DropGhost { vshard: u16, migration: String },
    /// Migration, source: the abort committed: lifts any fence of the
    /// migration, stops tracking, forgets its changes, and refuses every
    /// later `Fence` or `TrackChanges` of it.
    ReleaseSource { vshard: u16, migration: String },
}

impl DataOp {
    /// The migration a migration command names (`None` for client writes
    /// and `AssignVShards`).
    pub fn migration(&self) -> Option<&str> {
        match self {
            DataOp::Put { .. } | DataOp::Delete { .. } | DataOp::AssignVShards { .. } => None,
            DataOp::BeginIncoming { migration, .. }
            | DataOp::IngestChunk { migration, .. }
            | DataOp::ApplyChanges { migration, .. }
            | DataOp::Activate { migration, .. }
            | DataOp::DropIncoming { migration, .. }
            | DataOp::TrackChanges { migration, .. }
            | DataOp::TrimChanges { migration, .. }
            | DataOp::Fence { migration, .. }
            | DataOp::Unfence { migration, .. }
            | DataOp::MarkMoved { migration, .. }
            | DataOp::CleanupBatch { migration, .. }
            | DataOp::DropGhost { migration, .. }
            | DataOp::ReleaseSource { migration, .. } => Some(migration),
        }
    }
}

impl MetadataOp {
    /// The migration a migration command names (`None` for the others).
    pub fn migration(&self) -> Option<&str> {
        match self {
            MetadataOp::Bootstrap { .. }
            | MetadataOp::AddNode { .. }
            | MetadataOp::RemoveNode { .. }
            | MetadataOp::SetGroupMembers { .. } => None,
            MetadataOp::LockMigration { migration, .. }
            | MetadataOp::RenewLease { migration, .. }
            | MetadataOp::Transfer { migration, .. }
            | MetadataOp::AbortMigration { migration, .. }
            | MetadataOp::FinishMigration { migration } => Some(migration),
        }
    }
}

/// The two kinds of Raft group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupKind {
    /// Group 0: nodes, groups, routing, migration registry.
    Metadata,
    /// Groups 1..: vShard key-value data.
    Data,
}

/// The id of the metadata group.
pub const METADATA_GROUP: u64 = 0;

impl GroupKind {
    /// The kind of group `group` is: 0 is the metadata group.
    pub fn of(group: u64) -> Self {
        if group == METADATA_GROUP {
            GroupKind::Metadata
        } else {
            GroupKind::Data
        }
    }
}

impl Op {
    /// The kind of group this operation is for.
    pub fn group_kind(&self) -> GroupKind {
        match self {
            Op::Metadata(_) => GroupKind::Metadata,
            Op::Data(_) => GroupKind::Data,
        }
    }
}

/// A proposer sent a command that breaks a size limit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("the {what} is {bytes} bytes; the limit is {limit}")]
    TooLarge {
        what: &'static str,
        bytes: usize,
        limit: usize,
    },
}

impl Command {
    /// A command without an idempotency key.
    pub fn new(op: Op) -> Self {
        Command::V1(CommandV1 {
            idempotency_key: None,
            op,
        })
    }

    /// The same command carrying `key` as its idempotency key.
    pub fn with_idempotency_key(self, key: impl Into<String>) -> Self {
        let Command::V1(mut command) = self;
        command.idempotency_key = Some(key.into());
        Command::V1(command)
    }

    /// A metadata command.
    pub fn metadata(op: MetadataOp) -> Self {
        Self::new(Op::Metadata(op))
    }

    /// A data command.
    pub fn data(op: DataOp) -> Self {
        Self::new(Op::Data(op))
    }

    /// Writes `value` under `key`, in the key's vShard.
    pub fn put(key: Vec<u8>, value: Vec<u8>) -> Self {
        let vshard = vshard_of(&key);
        Self::data(DataOp::Put { vshard, key, value })
    }

    /// Deletes `key`, in the key's vShard.
    pub fn delete(key: Vec<u8>) -> Self {
        let vshard = vshard_of(&key);
        Self::data(DataOp::Delete { vshard, key })
    }

    /// The idempotency key, if the command carries one.
    pub fn idempotency_key(&self) -> Option<&str> {
        let Command::V1(command) = self;
        command.idempotency_key.as_deref()
    }

    /// What the command does.
    pub fn op(&self) -> &Op {
        let Command::V1(command) = self;
        &command.op
    }

    /// Checks the size limits a proposer must respect. The state machine
    /// does not check them at apply: a limit changed between versions would
    /// make replicas of different versions disagree.
    pub fn check_limits(&self) -> Result<(), CommandError> {
        let key_len = self.idempotency_key().map_or(0, str::len);
        let migration = match self.op() {
            Op::Metadata(op) => op.migration(),
            Op::Data(op) => op.migration(),
        };
        let reason = match self.op() {
            Op::Metadata(MetadataOp::AbortMigration { reason, .. }) => reason.len(),
            _ => 0,
        };
        let checks = [
            too_large("idempotency key", key_len, MAX_IDEMPOTENCY_KEY_BYTES),
            too_large(
                "migration id",
                migration.map_or(0, str::len),
                MAX_MIGRATION_ID_BYTES,
            ),
            too_large("abort reason", reason, MAX_REASON_BYTES),
            match self.op() {
                Op::Data(op) => data_limits(op),
                Op::Metadata(_) => None,
            },
        ];
        checks.into_iter().flatten().next().map_or(Ok(()), Err)
    }
}

fn too_large(what: &'static str, bytes: usize, limit: usize) -> Option<CommandError> {
    (bytes > limit).then_some(CommandError::TooLarge { what, bytes, limit })
}

fn pair_limits(key: &[u8], value: Option<&[u8]>) -> Option<CommandError> {
    too_large("key", key.len(), MAX_KEY_BYTES)
        .or_else(|| too_large("value", value.map_or(0, <[u8]>::len), MAX_VALUE_BYTES))
}

fn data_limits(op: &DataOp) -> Option<CommandError> {
    match op {
        DataOp::Put { key, value, .. } => pair_limits(key, Some(value)),
        DataOp::Delete { key, .. } => pair_limits(key, None),
        DataOp::IngestChunk { pairs, .. } => {
            let total = pairs.iter().map(|(k, v)| k.len() + v.len()).sum();
            (pairs.iter())
                .find_map(|(k, v)| pair_limits(k, Some(v)))
                .or_else(|| too_large("chunk", total, MAX_BATCH_BYTES))
        }
        DataOp::ApplyChanges { changes, .. } => {
            let total = changes.iter().map(|(_, c)| c.bytes()).sum();
            let each = |change: &Change| match change {
                Change::Put { key, value } => pair_limits(key, Some(value)),
                Change::Delete { key } => pair_limits(key, None),
            };
            (changes.iter())
                .find_map(|(_, c)| each(c))
                .or_else(|| too_large("change batch", total, MAX_BATCH_BYTES))
        }
        _ => None,
    }
}

/// The answer to one applied log entry, versioned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    V1(ResponseV1),
}

/// Version 1 of a response. Append new variants at the end only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResponseV1 {
    /// The entry was not a command (blank or membership entry).
    Noop,
    /// The command was applied.
    Done,
    /// The command was refused; nothing changed.
    Rejected(Rejection),
    /// `LockMigration` / `RenewLease` on an undecided migration: the driver
    /// epoch now recorded, and when the lease expires.
    Locked {
        driver_epoch: u64,
        lease_expires_ms: u64,
    },
    /// `Transfer` (or `LockMigration` / `RenewLease` once it committed):
    /// the target owns the vShard at routing epoch `epoch`.
    Transferred { epoch: u64 },
    /// `TrackChanges`: writes applied after log index `since_index` are
    /// recorded.
    Tracking { since_index: u64 },
    /// `Fence`: the log index of the fence; drain exactly up to it.
    Fenced { fence_index: u64 },
    /// `ApplyChanges`: the highest source log index the copy has applied.
    ChangesApplied { up_to_index: u64 },
    /// `DropIncoming` / `CleanupBatch`: keys this command deleted, and
    /// whether the vShard holds none any more (`done`: stop looping).
    Deleted { deleted: u64, done: bool },
}

impl Response {
    /// The rejection, if the command was refused.
    pub fn rejection(&self) -> Option<&Rejection> {
        match self {
            Response::V1(ResponseV1::Rejected(rejection)) => Some(rejection),
            Response::V1(_) => None,
        }
    }

    /// Whether the command was applied (or the entry needed no answer).
    pub fn is_ok(&self) -> bool {
        self.rejection().is_none()
    }
}

impl From<ResponseV1> for Response {
    fn from(response: ResponseV1) -> Self {
        Response::V1(response)
    }
}

impl From<Rejection> for Response {
    fn from(rejection: Rejection) -> Self {
        Response::V1(ResponseV1::Rejected(rejection))
    }
}

/// Why a state machine refused a command, decided at apply time (the same
/// on every replica). Append new variants at the end only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    /// This group does not serve the vShard: it never held it, or holds it
    /// only as an `Incoming` copy. Ask the routing table.
    #[error("this group does not own vShard {vshard}")]
    NotOwner { vshard: u16 },
    /// A migration has fenced the vShard; retry shortly.
    #[error("vShard {vshard} is fenced by migration {migration}; retry")]
    Fenced { vshard: u16, migration: String },
    /// The vShard moved to `to_group` at routing epoch `epoch`.
    #[error("vShard {vshard} moved to group {to_group} (epoch {epoch})")]
    Moved {
        vshard: u16,
        to_group: u64,
        epoch: u64,
    },
    /// The key does not hash to the vShard the command names.
    #[error("the key belongs to vShard {expected}, not {vshard}")]
    WrongVShard { vshard: u16, expected: u16 },
    /// The vShard number is out of range.
    #[error("vShard {vshard} does not exist")]
    InvalidVShard { vshard: u16 },
    /// A metadata command reached a data group, or the reverse.
    #[error("this command is for a {expected:?} group")]
    WrongGroupKind { expected: GroupKind },
    /// The cluster is bootstrapped already.
    #[error("the cluster is already bootstrapped")]
    AlreadyBootstrapped,
    /// The cluster is not bootstrapped yet.
    #[error("the cluster is not bootstrapped")]
    NotBootstrapped,
    /// A node with this id exists, with another address.
    #[error("node {id} exists with address {addr}")]
    NodeExists { id: u64, addr: String },
    /// Another node has this address.
    #[error("address {addr} belongs to node {node}")]
    AddressInUse { addr: String, node: u64 },
    /// No node has this id.
    #[error("node {id} is unknown")]
    UnknownNode { id: u64 },
    /// The node still holds replicas of these groups.
    #[error("node {id} still holds replicas of groups {groups:?}")]
    NodeHoldsReplicas { id: u64, groups: Vec<u64> },
    /// No group has this id.
    #[error("group {group} is unknown")]
    UnknownGroup { group: u64 },
    /// The vShard is in a migration state this command cannot start from.
    #[error("vShard {vshard} is in use by a migration")]
    VShardInUse { vshard: u16 },
    /// The command is malformed.
    #[error("invalid command: {reason}")]
    Invalid { reason: String },
    /// No migration has this id (or it finished long ago and was pruned).
    #[error("migration {migration} is unknown")]
    UnknownMigration { migration: String },
    /// A driver older than the one recorded sent the command.
    #[error("migration {migration}: driver epoch {epoch} is stale (current {current})")]
    StaleDriverEpoch {
        migration: String,
        epoch: u64,
        current: u64,
    },
    /// The vShard is locked by another live migration.
    #[error("vShard {vshard} is already migrating (migration {migration})")]
    VShardMigrating { vshard: u16, migration: String },
    /// The configured number of concurrent migrations is reached.
    #[error("{live} migrations are running; the limit is {max}")]
    TooManyMigrations { live: u32, max: u32 },
    /// The target group already owns the vShard.
    #[error("group {group} already owns vShard {vshard}")]
    AlreadyOwner { vshard: u16, group: u64 },
    /// The named source group does not own the vShard.
    #[error("group {group} does not own vShard {vshard}; group {owner} does")]
    NotSourceOwner { vshard: u16, group: u64, owner: u64 },
    /// The migration id exists with other parameters.
    #[error("migration {migration} exists with other parameters: {existing}")]
    MigrationConflict { migration: String, existing: String },
    /// The migration was aborted; it can no longer transfer or resume.
    #[error("migration {migration} was aborted: {reason}")]
    MigrationAborted { migration: String, reason: String },
    /// `Transfer` committed first; the migration can no longer abort.
    #[error("migration {migration} already transferred the vShard (epoch {epoch})")]
    MigrationTransferred { migration: String, epoch: u64 },
    /// The migration is neither transferred nor aborted yet.
    #[error("migration {migration} is not decided yet")]
    MigrationUndecided { migration: String },
    /// The migration is finished; its lock was released.
    #[error("migration {migration} is finished")]
    MigrationFinished { migration: String },
    /// `LeaseExpired` came before the lease's expiry.
    #[error("migration {migration}: the lease expires at {expires_ms} ms, not yet at {now_ms} ms")]
    LeaseNotExpired {
        migration: String,
        expires_ms: u64,
        now_ms: u64,
    },
    /// The vShard takes part in another migration here, or in none.
    #[error(
        "vShard {vshard} is not in migration {migration} here (it is in {})",
        .current.as_deref().unwrap_or("none")
    )]
    WrongMigration {
        vshard: u16,
        migration: String,
        current: Option<String>,
    },
    /// The vShard's state here does not allow the command.
    #[error("vShard {vshard} is {found} here; this needs it {needs}")]
    WrongState {
        vshard: u16,
        found: String,
        needs: String,
    },
    /// The vShard still holds keys.
    #[error("vShard {vshard} still holds keys")]
    VShardNotEmpty { vshard: u16 },
    /// The migration was released (aborted) or moved on this source: no
    /// more fences or tracking for it.
    #[error("migration {migration} is closed on vShard {vshard}")]
    MigrationClosed { vshard: u16, migration: String },
    /// A fence at or below this id was lifted already.
    #[error(
        "fence {fence_id:?} of vShard {vshard} is stale: fences up to {lifted_up_to:?} were lifted"
    )]
    FenceLifted {
        vshard: u16,
        fence_id: FenceId,
        lifted_up_to: FenceId,
    },
    /// The vShard holds a newer fence than the command names.
    #[error("vShard {vshard} holds fence {held:?}, newer than {asked:?}")]
    NewerFence {
        vshard: u16,
        held: FenceId,
        asked: FenceId,
    },
    /// The group took its bootstrap vShards already; it gains vShards only
    /// by migration from now on.
    #[error("this group's bootstrap vShards were assigned already")]
    BootstrapAssigned,
}

impl Rejection {
    /// Whether the same command may succeed later unchanged (a fence lifts).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Rejection::Fenced { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Pins `value`'s encoding and checks it decodes back to `value`.
    fn golden<T>(value: T, expected: &str)
    where
        T: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug,
    {
        let bytes = postcard::to_allocvec(&value).expect("encoding to a Vec cannot fail");
        assert_eq!(hex(&bytes), expected, "encoding of {value:?}");
        let decoded: T = postcard::from_bytes(&bytes).expect("golden bytes decode");
        assert_eq!(decoded, value);
    }

    fn cmd(key: Option<&str>, op: Op) -> Command {
        Command::V1(CommandV1 {
            idempotency_key: key.map(str::to_string),
            op,
        })
    }

    /// Every metadata command variant keeps its shipped encoding.
    #[test]
    fn golden_metadata_commands() {
        let bootstrap = MetadataOp::Bootstrap {
            nodes: vec![(1, "a:1".into())],
            groups: vec![(0, vec![1]), (1, vec![1])],
            routing: vec![1, 1],
        };
        golden(
            cmd(Some("wf-1-7/Lock"), Op::Metadata(bootstrap)),
            "00010b77662d312d372f4c6f636b0000010103613a3102000101010101020101",
        );
        let add = MetadataOp::AddNode {
            id: 4,
            addr: "h:9".into(),
        };
        golden(cmd(None, Op::Metadata(add)), "000000010403683a39");
        golden(
            cmd(None, Op::Metadata(MetadataOp::RemoveNode { id: 4 })),
            "0000000204",
        );
        let members = MetadataOp::SetGroupMembers {
            group: 2,
            members: vec![1, 3],
        };
        golden(cmd(None, Op::Metadata(members)), "0000000302020103");
    }

    /// Every data command variant keeps its shipped encoding.
    #[test]
    fn golden_data_commands() {
        let put = DataOp::Put {
            vshard: 300,
            key: b"k".to_vec(),
            value: b"v".to_vec(),
        };
        golden(cmd(None, Op::Data(put)), "00000100ac02016b0176");
        let delete = DataOp::Delete {
            vshard: 7,
            key: b"k".to_vec(),
        };
        golden(cmd(Some("x"), Op::Data(delete)), "00010178010107016b");
        let assign = DataOp::AssignVShards {
            vshards: vec![0, 1023],
        };
        golden(cmd(None, Op::Data(assign)), "000001020200ff07");
    }

    /// Every migration command of the metadata group keeps its encoding.
    #[test]
    fn golden_metadata_migration_commands() {
        let meta = |op| cmd(None, Op::Metadata(op));
        let lock = MetadataOp::LockMigration {
            migration: "m".into(),
            vshard: 300,
            from_group: 1,
            to_group: 2,
            driver_epoch: 3,
            now_ms: 4,
            lease_ms: 5,
            max_concurrent: 6,
        };
        golden(meta(lock), "00000004016dac02010203040506");
        let renew = MetadataOp::RenewLease {
            migration: "m".into(),
            driver_epoch: 3,
            now_ms: 4,
            lease_ms: 5,
        };
        golden(meta(renew), "00000005016d030405");
        let transfer = MetadataOp::Transfer {
            migration: "m".into(),
            driver_epoch: 3,
            now_ms: 4,
        };
        golden(meta(transfer), "00000006016d0304");
        let aborts = [
            (
                AbortBy::Driver { driver_epoch: 3 },
                "00000007016d0003017204",
            ),
            (AbortBy::Source { group: 1 }, "00000007016d0101017204"),
            (AbortBy::LeaseExpired, "00000007016d02017204"),
        ];
        for (by, bytes) in aborts {
            let abort = MetadataOp::AbortMigration {
                migration: "m".into(),
                by,
                reason: "r".into(),
                now_ms: 4,
            };
            golden(meta(abort), bytes);
        }
        let finish = MetadataOp::FinishMigration {
            migration: "m".into(),
        };
        golden(meta(finish), "00000008016d");
    }

    /// Every migration command of data groups keeps its encoding.
    #[test]
    fn golden_data_migration_commands() {
        let data = |op| cmd(None, Op::Data(op));
        let m = || "m".to_string();
        let cases = [
            (
                DataOp::BeginIncoming {
                    vshard: 5,
                    migration: m(),
                },
                "0000010305016d",
            ),
            (
                DataOp::IngestChunk {
                    vshard: 5,
                    migration: m(),
                    pairs: vec![(b"k".to_vec(), b"v".to_vec())],
                },
                "0000010405016d01016b0176",
            ),
            (
                DataOp::ApplyChanges {
                    vshard: 5,
                    migration: m(),
                    changes: vec![
                        (
                            300,
                            Change::Put {
                                key: b"k".to_vec(),
                                value: b"v".to_vec(),
                            },
                        ),
                        (301, Change::Delete { key: b"k".to_vec() }),
                    ],
                },
                "0000010505016d02ac0200016b0176ad0201016b",
            ),
            (
                DataOp::Activate {
                    vshard: 5,
                    migration: m(),
                    epoch: 2,
                },
                "0000010605016d02",
            ),
            (
                DataOp::DropIncoming {
                    vshard: 5,
                    migration: m(),
                    limit: 100,
                },
                "0000010705016d64",
            ),
            (
                DataOp::TrackChanges {
                    vshard: 5,
                    migration: m(),
                },
                "0000010805016d",
            ),
            (
                DataOp::TrimChanges {
                    vshard: 5,
                    migration: m(),
                    up_to_index: 300,
                },
                "0000010905016dac02",
            ),
            (
                DataOp::Fence {
                    vshard: 5,
                    migration: m(),
                    fence_id: (2, 1),
                    deadline_ms: 300,
                },
                "0000010a05016d0201ac02",
            ),
            (
                DataOp::Unfence {
                    vshard: 5,
                    migration: m(),
                    up_to: (2, 1),
                },
                "0000010b05016d0201",
            ),
            (
                DataOp::MarkMoved {
                    vshard: 5,
                    migration: m(),
                    to_group: 2,
                    epoch: 3,
                },
                "0000010c05016d0203",
            ),
            (
                DataOp::CleanupBatch {
                    vshard: 5,
                    migration: m(),
                    limit: 100,
                },
                "0000010d05016d64",
            ),
            (
                DataOp::DropGhost {
                    vshard: 5,
                    migration: m(),
                },
                "0000010e05016d",
            ),
            (
                DataOp::ReleaseSource {
                    vshard: 5,
                    migration: m(),
                },
                "0000010f05016d",
            ),
        ];
        for (op, bytes) in cases {
            golden(data(op), bytes);
        }
    }

    /// The migration answers and refusals keep their encodings.
    #[test]
    fn golden_migration_responses() {
        let responses = [
            (
                ResponseV1::Locked {
                    driver_epoch: 2,
                    lease_expires_ms: 300,
                },
                "000302ac02",
            ),
            (ResponseV1::Transferred { epoch: 2 }, "000402"),
            (ResponseV1::Tracking { since_index: 300 }, "0005ac02"),
            (ResponseV1::Fenced { fence_index: 300 }, "0006ac02"),
            (ResponseV1::ChangesApplied { up_to_index: 300 }, "0007ac02"),
            (
                ResponseV1::Deleted {
                    deleted: 3,
                    done: true,
                },
                "00080301",
            ),
        ];
        for (response, bytes) in responses {
            golden(Response::V1(response), bytes);
        }
        let m = || "m".to_string();
        let rejections = [
            (Rejection::UnknownMigration { migration: m() }, "00020f016d"),
            (
                Rejection::StaleDriverEpoch {
                    migration: m(),
                    epoch: 1,
                    current: 2,
                },
                "000210016d0102",
            ),
            (
                Rejection::VShardMigrating {
                    vshard: 5,
                    migration: m(),
                },
                "00021105016d",
            ),
            (
                Rejection::TooManyMigrations { live: 2, max: 2 },
                "0002120202",
            ),
            (
                Rejection::AlreadyOwner {
                    vshard: 5,
                    group: 2,
                },
                "0002130502",
            ),
            (
                Rejection::NotSourceOwner {
                    vshard: 5,
                    group: 1,
                    owner: 2,
                },
                "000214050102",
            ),
            (
                Rejection::MigrationConflict {
                    migration: m(),
                    existing: "e".into(),
                },
                "000215016d0165",
            ),
            (
                Rejection::MigrationAborted {
                    migration: m(),
                    reason: "r".into(),
                },
                "000216016d0172",
            ),
            (
                Rejection::MigrationTransferred {
                    migration: m(),
                    epoch: 2,
                },
                "000217016d02",
            ),
            (
                Rejection::MigrationUndecided { migration: m() },
                "000218016d",
            ),
            (
                Rejection::MigrationFinished { migration: m() },
                "000219016d",
            ),
            (
                Rejection::LeaseNotExpired {
                    migration: m(),
                    expires_ms: 300,
                    now_ms: 299,
                },
                "00021a016dac02ab02",
            ),
            (
                Rejection::WrongMigration {
                    vshard: 5,
                    migration: m(),
                    current: Some("n".into()),
                },
                "00021b05016d01016e",
            ),
            (
                Rejection::WrongState {
                    vshard: 5,
                    found: "f".into(),
                    needs: "n".into(),
                },
                "00021c050166016e",
            ),
            (Rejection::VShardNotEmpty { vshard: 5 }, "00021d05"),
            (
                Rejection::MigrationClosed {
                    vshard: 5,
                    migration: m(),
                },
                "00021e05016d",
            ),
            (
                Rejection::FenceLifted {
                    vshard: 5,
                    fence_id: (2, 1),
                    lifted_up_to: (2, 3),
                },
                "00021f0502010203",
            ),
            (
                Rejection::NewerFence {
                    vshard: 5,
                    held: (3, 0),
                    asked: (2, 1),
                },
                "0002200503000201",
            ),
        ];
        for (rejection, bytes) in rejections {
            golden(Response::from(rejection), bytes);
        }
    }

    /// Migration commands are held to the size limits too.
    #[test]
    fn migration_limits() {
        let long = "x".repeat(MAX_MIGRATION_ID_BYTES + 1);
        let track = Command::data(DataOp::TrackChanges {
            vshard: 1,
            migration: long.clone(),
        });
        assert!(matches!(
            track.check_limits(),
            Err(CommandError::TooLarge {
                what: "migration id",
                ..
            })
        ));
        let finish = Command::metadata(MetadataOp::FinishMigration { migration: long });
        assert!(finish.check_limits().is_err());
        let abort = Command::metadata(MetadataOp::AbortMigration {
            migration: "m".into(),
            by: AbortBy::LeaseExpired,
            reason: "r".repeat(MAX_REASON_BYTES + 1),
            now_ms: 0,
        });
        assert!(matches!(
            abort.check_limits(),
            Err(CommandError::TooLarge {
                what: "abort reason",
                ..
            })
        ));
        let big_key = Command::data(DataOp::IngestChunk {
            vshard: 1,
            migration: "m".into(),
            pairs: vec![(vec![0; MAX_KEY_BYTES + 1], Vec::new())],
        });
        assert!(matches!(
            big_key.check_limits(),
            Err(CommandError::TooLarge { what: "key", .. })
        ));
        let value = vec![0; MAX_VALUE_BYTES];
        let many = (0..9).map(|i| (vec![i], value.clone())).collect();
        let big_chunk = Command::data(DataOp::IngestChunk {
            vshard: 1,
            migration: "m".into(),
            pairs: many,
        });
        assert!(matches!(
            big_chunk.check_limits(),
            Err(CommandError::TooLarge { what: "chunk", .. })
        ));
        let changes = (0..9)
            .map(|i| {
                let change = Change::Put {
                    key: vec![i],
                    value: value.clone(),
                };
                (u64::from(i), change)
            })
            .collect();
        let big_batch = Command::data(DataOp::ApplyChanges {
            vshard: 1,
            migration: "m".into(),
            changes,
        });
        assert!(matches!(
            big_batch.check_limits(),
            Err(CommandError::TooLarge {
                what: "change batch",
                ..
            })
        ));
        let fine = Command::data(DataOp::Fence {
            vshard: 1,
            migration: "wf-1-7".into(),
            fence_id: (1, 0),
            deadline_ms: 0,
        })
        .with_idempotency_key("wf-1-7/CutOver");
        assert_eq!(fine.check_limits(), Ok(()));
    }

    /// Every response and rejection variant keeps its shipped encoding.
    #[test]
    fn golden_responses() {
        golden(Response::V1(ResponseV1::Noop), "0000");
        golden(Response::V1(ResponseV1::Done), "0001");
        let rejections = [
            (Rejection::NotOwner { vshard: 5 }, "00020005"),
            (
                Rejection::Fenced {
                    vshard: 5,
                    migration: "m".into(),
                },
                "00020105016d",
            ),
            (
                Rejection::Moved {
                    vshard: 5,
                    to_group: 2,
                    epoch: 3,
                },
                "000202050203",
            ),
            (
                Rejection::WrongVShard {
                    vshard: 5,
                    expected: 6,
                },
                "0002030506",
            ),
            (Rejection::InvalidVShard { vshard: 1024 }, "0002048008"),
            (
                Rejection::WrongGroupKind {
                    expected: GroupKind::Data,
                },
                "00020501",
            ),
            (Rejection::AlreadyBootstrapped, "000206"),
            (Rejection::NotBootstrapped, "000207"),
            (
                Rejection::NodeExists {
                    id: 1,
                    addr: "a".into(),
                },
                "000208010161",
            ),
            (
                Rejection::AddressInUse {
                    addr: "a".into(),
                    node: 1,
                },
                "000209016101",
            ),
            (Rejection::UnknownNode { id: 1 }, "00020a01"),
            (
                Rejection::NodeHoldsReplicas {
                    id: 1,
                    groups: vec![0, 2],
                },
                "00020b01020002",
            ),
            (Rejection::UnknownGroup { group: 9 }, "00020c09"),
            (Rejection::VShardInUse { vshard: 5 }, "00020d05"),
            (Rejection::Invalid { reason: "r".into() }, "00020e0172"),
        ];
        for (rejection, bytes) in rejections {
            golden(Response::from(rejection), bytes);
        }
    }

    /// Constructors file a key under its own vShard; limits are enforced.
    #[test]
    fn constructors_and_limits() {
        let put = Command::put(b"user:1".to_vec(), b"v".to_vec()).with_idempotency_key("k");
        assert_eq!(put.idempotency_key(), Some("k"));
        let Op::Data(DataOp::Put { vshard, .. }) = put.op() else {
            panic!("put builds a Put: {put:?}");
        };
        assert_eq!(*vshard, vshard_of(b"user:1"));
        assert_eq!(put.check_limits(), Ok(()));
        let big = Command::put(vec![0; MAX_KEY_BYTES + 1], Vec::new());
        assert!(matches!(
            big.check_limits(),
            Err(CommandError::TooLarge { what: "key", .. })
        ));
        let big = Command::put(Vec::new(), vec![0; MAX_VALUE_BYTES + 1]);
        assert!(matches!(
            big.check_limits(),
            Err(CommandError::TooLarge { what: "value", .. })
        ));
        assert!(Rejection::Fenced {
            vshard: 1,
            migration: "m".into()
        }
        .is_retryable());
        assert!(!Rejection::NotOwner { vshard: 1 }.is_retryable());
    }
}
