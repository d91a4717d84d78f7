//! Applying one log entry inside the state machine's write transaction:
//! idempotency, dispatch to the pure metadata or data logic, and writing
//! what they decided.
//!
//! **Invariants:**
//! - Deterministic: the response and the writes depend only on the stored
//!   state and the entry, so every replica ends in the same state.
//! - Idempotent: a command whose idempotency key was applied before returns
//!   the recorded response and writes nothing. Only applied commands are
//!   recorded; a rejection leaves no trace (see `crate::command`).
//! - A rejection writes nothing.

use shardflow_store::raft_store::{SmWrite, StateMachineRead};

use super::error::{InGroup, RaftStorageError};
use super::records::{
    decode, encode, AppliedRecord, MembershipRecord, StoredMembershipV1, BOOTSTRAP_ASSIGNED_KEY,
    MEMBERSHIP_KEY, METADATA_KEY,
};
use super::types::{Entry, EntryPayload};
use crate::command::{Command, DataOp, GroupKind, MetadataOp, Op, Rejection, Response, ResponseV1};
use crate::data::{
    self, ChangeRecordRef, DataMutation, DataView, VShardMigration, VShardMigrationRecord,
    VShardRecord, VShardState,
};
use crate::metadata::{self, MetadataRecord, MetadataState};

/// Applies one entry of a group of `kind`; returns its response.
pub(crate) fn apply_entry(
    sm: &mut SmWrite<'_>,
    kind: GroupKind,
    entry: &Entry,
) -> Result<Response, RaftStorageError> {
    match &entry.payload {
        EntryPayload::Blank => Ok(ResponseV1::Noop.into()),
        EntryPayload::Membership(membership) => {
            let record = MembershipRecord::V1(StoredMembershipV1 {
                log_id: Some((&entry.log_id).into()),
                membership: membership.into(),
            });
            let bytes = encode("the membership", &record).in_group(sm.group())?;
            sm.put_meta(MEMBERSHIP_KEY, &bytes)?;
            Ok(ResponseV1::Noop.into())
        }
        EntryPayload::Normal(command) => apply_command(sm, kind, entry.log_id.index, command),
    }
}

fn apply_command(
    sm: &mut SmWrite<'_>,
    kind: GroupKind,
    index: u64,
    command: &Command,
) -> Result<Response, RaftStorageError> {
    let key = command.idempotency_key();
    if let Some(key) = key {
        if let Some(bytes) = sm.applied(key)? {
            let what = "an applied idempotency key";
            let AppliedRecord::V1 { response, .. } = decode(what, &bytes).in_group(sm.group())?;
            return Ok(response);
        }
    }
    let response = match (kind, command.op()) {
        (GroupKind::Metadata, Op::Metadata(op)) => apply_metadata(sm, op)?,
        (GroupKind::Data, Op::Data(op)) => apply_data(sm, index, op)?,
        (_, op) => Rejection::WrongGroupKind {
            expected: op.group_kind(),
        }
        .into(),
    };
    if let (Some(key), true) = (key, response.is_ok()) {
        let record = AppliedRecord::V1 {
            index,
            response: response.clone(),
        };
        let bytes = encode("an applied record", &record).in_group(sm.group())?;
        sm.put_applied(key, &bytes)?;
    }
    Ok(response)
}

/// The metadata group's state as stored (empty before bootstrap).
pub(crate) fn load_metadata<R: StateMachineRead>(
    sm: &R,
) -> Result<MetadataState, RaftStorageError> {
    match sm.meta(METADATA_KEY)? {
        None => Ok(MetadataState::default()),
        Some(bytes) => {
            let record: MetadataRecord =
                decode("the metadata state", &bytes).in_group(sm.group())?;
            Ok(record.into())
        }
    }
}

fn apply_metadata(sm: &mut SmWrite<'_>, op: &MetadataOp) -> Result<Response, RaftStorageError> {
    let mut state = load_metadata(sm)?;
    let response = match metadata::apply(&mut state, op) {
        Ok(response) => response,
        Err(rejection) => return Ok(rejection.into()),
    };
    let record = MetadataRecord::V1(state);
    let bytes = encode("the metadata state", &record).in_group(sm.group())?;
    sm.put_meta(METADATA_KEY, &bytes)?;
    Ok(response.into())
}

/// The stored state of one vShard.
pub(crate) fn load_vshard<R: StateMachineRead>(
    sm: &R,
    vshard: u16,
) -> Result<Option<VShardState>, RaftStorageError> {
    let Some(bytes) = sm.vshard(vshard)? else {
        return Ok(None);
    };
    let record: VShardRecord = decode("a vShard state", &bytes).in_group(sm.group())?;
    Ok(Some(record.into()))
}

/// The stored migration record of one vShard.
pub(crate) fn load_vshard_migration<R: StateMachineRead>(
    sm: &R,
    vshard: u16,
) -> Result<Option<VShardMigration>, RaftStorageError> {
    let Some(bytes) = sm.vshard_migration(vshard)? else {
        return Ok(None);
    };
    let what = "a vShard's migration record";
    let record: VShardMigrationRecord = decode(what, &bytes).in_group(sm.group())?;
    Ok(Some(record.into()))
}

/// The data logic's view of the stored state machine.
pub(crate) struct StoredView<'r, R>(pub(crate) &'r R);

impl<R: StateMachineRead> DataView for StoredView<'_, R> {
    type Error = RaftStorageError;
    fn vshard_state(&self, vshard: u16) -> Result<Option<VShardState>, RaftStorageError> {
        load_vshard(self.0, vshard)
    }

    fn vshard_migration(&self, vshard: u16) -> Result<Option<VShardMigration>, RaftStorageError> {
        load_vshard_migration(self.0, vshard)
    }

    fn vshard_keys(&self, vshard: u16, limit: usize) -> Result<Vec<Vec<u8>>, RaftStorageError> {
        Ok(self.0.vshard_keys(vshard, limit)?)
    }

    fn bootstrap_assigned(&self) -> Result<bool, RaftStorageError> {
        Ok(self.0.meta(BOOTSTRAP_ASSIGNED_KEY)?.is_some())
    }
}

fn apply_data(sm: &mut SmWrite<'_>, index: u64, op: &DataOp) -> Result<Response, RaftStorageError> {
    let effect = match data::apply(&StoredView(&*sm), index, op)? {
        Ok(effect) => effect,
        Err(rejection) => return Ok(rejection.into()),
    };
    for mutation in effect.mutations {
        write_mutation(sm, mutation)?;
    }
    Ok(effect.response.into())
}

fn write_mutation(
    sm: &mut SmWrite<'_>,
    mutation: DataMutation<'_>,
) -> Result<(), RaftStorageError> {
    match mutation {
        DataMutation::SetVShard { vshard, state } => {
            let bytes = encode("a vShard state", &VShardRecord::V1(state)).in_group(sm.group())?;
            sm.put_vshard(vshard, &bytes)?;
        }
        DataMutation::RemoveVShard { vshard } => sm.remove_vshard(vshard)?,
        DataMutation::SetMigration { vshard, record } => {
            let what = "a vShard's migration record";
            let bytes = encode(what, &VShardMigrationRecord::V1(record)).in_group(sm.group())?;
            sm.put_vshard_migration(vshard, &bytes)?;
        }
        DataMutation::RemoveMigration { vshard } => sm.remove_vshard_migration(vshard)?,
        DataMutation::Put { vshard, key, value } => sm.put_kv(vshard, key, value)?,
        DataMutation::Delete { vshard, key } => {
            sm.delete_kv(vshard, key)?;
        }
        DataMutation::DeleteKeys { vshard, keys } => {
            sm.delete_keys(vshard, &keys)?;
        }
        DataMutation::RecordChange {
            vshard,
            index,
            change,
        } => {
            let bytes =
                encode("a recorded change", &ChangeRecordRef::V1(change)).in_group(sm.group())?;
            sm.put_change(vshard, index, &bytes)?;
        }
        DataMutation::TrimChanges {
            vshard,
            up_to_index,
        } => sm.trim_changes(vshard, up_to_index)?,
        DataMutation::MarkBootstrapAssigned => sm.put_meta(BOOTSTRAP_ASSIGNED_KEY, &[1])?,
    }
    Ok(())
}
