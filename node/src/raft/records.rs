//! The on-disk encodings of Raft state: log entries, vote, log ids,
//! membership, snapshot metadata and data, applied idempotency keys.
//!
//! shardflow persists its own versioned records (STACK.md, postcard rules),
//! never openraft's serde layout directly: an openraft upgrade that
//! reshapes `Entry` or `Membership` must not change the bytes on disk. Each
//! record is `enum { V1(..) }`, grows only at the end, and is pinned by the
//! golden tests below; conversions to and from openraft types live here.

use std::collections::{BTreeMap, BTreeSet};

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use shardflow_store::raft_store::StateMachineExport;

use super::types::{
    Entry, EntryPayload, LogId, Membership, NodeAddr, SnapshotMeta, StoredMembership, Vote,
};
use crate::command::{Command, Response};

/// `raft_meta` key of the vote.
pub const VOTE_KEY: &str = "vote";
/// `raft_meta` key of the committed log id.
pub const COMMITTED_KEY: &str = "committed";
/// `raft_meta` key of the last purged log id.
pub const LAST_PURGED_KEY: &str = "last_purged";
/// `sm_meta` key of the last applied log id.
pub const LAST_APPLIED_KEY: &str = "last_applied";
/// `sm_meta` key of the last applied membership.
pub const MEMBERSHIP_KEY: &str = "membership";
/// `sm_meta` key of the metadata group's state.
pub const METADATA_KEY: &str = "metadata";
/// `sm_meta` key a data group sets when it takes its bootstrap vShards
/// (present: assigned; the value is not read).
pub const BOOTSTRAP_ASSIGNED_KEY: &str = "bootstrap_assigned";

/// A record that could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[error("{doing} {what}: {reason}")]
pub struct RecordError {
    pub doing: &'static str,
    pub what: &'static str,
    pub reason: String,
}

/// Encodes a record.
pub fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, RecordError> {
    postcard::to_allocvec(value).map_err(|error| RecordError {
        doing: "encoding",
        what,
        reason: error.to_string(),
    })
}

/// Decodes a record read from disk.
pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, RecordError> {
    postcard::from_bytes(bytes).map_err(|error| RecordError {
        doing: "decoding",
        what,
        reason: error.to_string(),
    })
}

/// A log id: who led the term that wrote the entry, and its index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogIdV1 {
    pub term: u64,
    pub node_id: u64,
    pub index: u64,
}

/// A vote.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteV1 {
    pub term: u64,
    pub node_id: u64,
    pub committed: bool,
}

/// A membership: the voter sets (two while in joint consensus) and every
/// node's address, learners included.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipV1 {
    pub configs: Vec<Vec<u64>>,
    pub nodes: Vec<(u64, String)>,
}

/// A membership and the log id of the entry that carried it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMembershipV1 {
    pub log_id: Option<LogIdV1>,
    pub membership: MembershipV1,
}

/// What a log entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PayloadV1 {
    Blank,
    Normal(Command),
    Membership(MembershipV1),
}

/// A log entry on disk (`raft_log`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogRecord {
    V1 { log_id: LogIdV1, payload: PayloadV1 },
}

/// The borrowed twin of [`LogRecord`], for encoding without copying the
/// command; it encodes to exactly the same bytes (tested).
#[derive(Serialize)]
enum LogRecordRef<'a> {
    V1 {
        log_id: LogIdV1,
        payload: PayloadRef<'a>,
    },
}

#[derive(Serialize)]
enum PayloadRef<'a> {
    Blank,
    Normal(&'a Command),
    Membership(MembershipV1),
}

/// The vote on disk (`raft_meta["vote"]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VoteRecord {
    V1(VoteV1),
}

/// An optional log id on disk (committed, last purged, last applied).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogIdRecord {
    V1(Option<LogIdV1>),
}

/// The last applied membership on disk (`sm_meta["membership"]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipRecord {
    V1(StoredMembershipV1),
}

/// A snapshot's metadata on disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotMetaRecord {
    V1 {
        last_log_id: Option<LogIdV1>,
        membership: StoredMembershipV1,
        snapshot_id: String,
    },
}

/// The response recorded for an idempotency key (`sm_applied`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppliedRecord {
    V1 {
        /// The log index that first applied the command (for retention).
        index: u64,
        response: Response,
    },
}

/// A snapshot's data: the group's state-machine rows, as stored. Builds
/// write the newest version; installs read every version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotData {
    /// Before migrations: no migration records, no recorded changes.
    V1(SnapshotRowsV1),
    /// With the vShards' migration records and their recorded changes.
    V2(SnapshotRowsV2),
}

/// Every state-machine row of a group, before migrations.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRowsV1 {
    pub meta: Vec<(String, Vec<u8>)>,
    pub vshards: Vec<(u16, Vec<u8>)>,
    pub kv: Vec<(u16, Vec<u8>, Vec<u8>)>,
    pub applied: Vec<(String, Vec<u8>)>,
}

/// Every state-machine row of a group (see `shardflow_store::raft_store`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRowsV2 {
    pub meta: Vec<(String, Vec<u8>)>,
    pub vshards: Vec<(u16, Vec<u8>)>,
    pub kv: Vec<(u16, Vec<u8>, Vec<u8>)>,
    pub applied: Vec<(String, Vec<u8>)>,
    /// `(vshard, migration record)`.
    pub vshard_migrations: Vec<(u16, Vec<u8>)>,
    /// `(vshard, log index, recorded change)`.
    pub changes: Vec<(u16, u64, Vec<u8>)>,
}

impl From<StateMachineExport> for SnapshotRowsV2 {
    fn from(e: StateMachineExport) -> Self {
        Self {
            meta: e.meta,
            vshards: e.vshards,
            kv: e.kv,
            applied: e.applied,
            vshard_migrations: e.vshard_migrations,
            changes: e.changes,
        }
    }
}

impl From<SnapshotRowsV2> for StateMachineExport {
    fn from(r: SnapshotRowsV2) -> Self {
        Self {
            meta: r.meta,
            vshards: r.vshards,
            kv: r.kv,
            applied: r.applied,
            vshard_migrations: r.vshard_migrations,
            changes: r.changes,
        }
    }
}

impl From<SnapshotRowsV1> for SnapshotRowsV2 {
    fn from(r: SnapshotRowsV1) -> Self {
        Self {
            meta: r.meta,
            vshards: r.vshards,
            kv: r.kv,
            applied: r.applied,
            vshard_migrations: Vec::new(),
            changes: Vec::new(),
        }
    }
}

impl SnapshotData {
    /// The rows, whatever the version.
    pub fn into_rows(self) -> SnapshotRowsV2 {
        match self {
            SnapshotData::V1(rows) => rows.into(),
            SnapshotData::V2(rows) => rows,
        }
    }
}

impl From<&LogId> for LogIdV1 {
    fn from(id: &LogId) -> Self {
        Self {
            term: id.leader_id.term,
            node_id: id.leader_id.node_id,
            index: id.index,
        }
    }
}

impl From<LogIdV1> for LogId {
    fn from(id: LogIdV1) -> Self {
        LogId::new(
            openraft::CommittedLeaderId::new(id.term, id.node_id),
            id.index,
        )
    }
}

impl From<&Vote> for VoteV1 {
    fn from(vote: &Vote) -> Self {
        Self {
            term: vote.leader_id.term,
            node_id: vote.leader_id.node_id,
            committed: vote.committed,
        }
    }
}

impl From<VoteV1> for Vote {
    fn from(vote: VoteV1) -> Self {
        match vote.committed {
            true => Vote::new_committed(vote.term, vote.node_id),
            false => Vote::new(vote.term, vote.node_id),
        }
    }
}

impl From<&Membership> for MembershipV1 {
    fn from(membership: &Membership) -> Self {
        Self {
            configs: membership
                .get_joint_config()
                .iter()
                .map(|voters| voters.iter().copied().collect())
                .collect(),
            nodes: membership
                .nodes()
                .map(|(id, node)| (*id, node.addr.clone()))
                .collect(),
        }
    }
}

impl From<MembershipV1> for Membership {
    fn from(membership: MembershipV1) -> Self {
        let configs: Vec<BTreeSet<u64>> = membership
            .configs
            .into_iter()
            .map(|voters| voters.into_iter().collect())
            .collect();
        let nodes: BTreeMap<u64, NodeAddr> = membership
            .nodes
            .into_iter()
            .map(|(id, addr)| (id, NodeAddr { addr }))
            .collect();
        Membership::new(configs, nodes)
    }
}

impl From<&StoredMembership> for StoredMembershipV1 {
    fn from(stored: &StoredMembership) -> Self {
        Self {
            log_id: stored.log_id().as_ref().map(LogIdV1::from),
            membership: stored.membership().into(),
        }
    }
}

impl From<StoredMembershipV1> for StoredMembership {
    fn from(stored: StoredMembershipV1) -> Self {
        StoredMembership::new(stored.log_id.map(LogId::from), stored.membership.into())
    }
}

/// Encodes a log entry.
pub fn encode_entry(entry: &Entry) -> Result<Vec<u8>, RecordError> {
    let payload = match &entry.payload {
        EntryPayload::Blank => PayloadRef::Blank,
        EntryPayload::Normal(command) => PayloadRef::Normal(command),
        EntryPayload::Membership(membership) => PayloadRef::Membership(membership.into()),
    };
    let record = LogRecordRef::V1 {
        log_id: (&entry.log_id).into(),
        payload,
    };
    encode("a log entry", &record)
}

/// Decodes a log entry read from disk.
pub fn decode_entry(bytes: &[u8]) -> Result<Entry, RecordError> {
    let LogRecord::V1 { log_id, payload } = decode("a log entry", bytes)?;
    let payload = match payload {
        PayloadV1::Blank => EntryPayload::Blank,
        PayloadV1::Normal(command) => EntryPayload::Normal(command),
        PayloadV1::Membership(membership) => EntryPayload::Membership(membership.into()),
    };
    Ok(Entry {
        log_id: log_id.into(),
        payload,
    })
}

/// Encodes an optional log id.
pub fn encode_log_id(id: Option<&LogId>) -> Result<Vec<u8>, RecordError> {
    encode("a log id", &LogIdRecord::V1(id.map(LogIdV1::from)))
}

/// Decodes an optional log id; a missing row is `None`.
pub fn decode_log_id(bytes: Option<&[u8]>) -> Result<Option<LogId>, RecordError> {
    let Some(bytes) = bytes else {
        return Ok(None);
    };
    let LogIdRecord::V1(id) = decode("a log id", bytes)?;
    Ok(id.map(LogId::from))
}

/// Encodes a snapshot's metadata.
pub fn encode_snapshot_meta(meta: &SnapshotMeta) -> Result<Vec<u8>, RecordError> {
    let record = SnapshotMetaRecord::V1 {
        last_log_id: meta.last_log_id.as_ref().map(LogIdV1::from),
        membership: (&meta.last_membership).into(),
        snapshot_id: meta.snapshot_id.clone(),
    };
    encode("snapshot metadata", &record)
}

/// Decodes a snapshot's metadata.
pub fn decode_snapshot_meta(bytes: &[u8]) -> Result<SnapshotMeta, RecordError> {
    let SnapshotMetaRecord::V1 {
        last_log_id,
        membership,
        snapshot_id,
    } = decode("snapshot metadata", bytes)?;
    Ok(SnapshotMeta {
        last_log_id: last_log_id.map(LogId::from),
        last_membership: membership.into(),
        snapshot_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{DataOp, ResponseV1};

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn golden<T>(value: T, expected: &str)
    where
        T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let bytes = encode("a golden value", &value).expect("encodes");
        assert_eq!(hex(&bytes), expected, "encoding of {value:?}");
        let decoded: T = decode("a golden value", &bytes).expect("golden bytes decode");
        assert_eq!(decoded, value);
    }

    const LOG_ID: LogIdV1 = LogIdV1 {
        term: 2,
        node_id: 3,
        index: 300,
    };

    fn membership() -> MembershipV1 {
        MembershipV1 {
            configs: vec![vec![1, 2]],
            nodes: vec![(1, "a".into()), (2, "b".into())],
        }
    }

    /// Every log-entry payload keeps its shipped encoding.
    #[test]
    fn golden_log_records() {
        let blank = LogRecord::V1 {
            log_id: LOG_ID,
            payload: PayloadV1::Blank,
        };
        golden(blank, "000203ac0200");
        let command = Command::data(DataOp::Delete {
            vshard: 1,
            key: b"k".to_vec(),
        });
        let normal = LogRecord::V1 {
            log_id: LOG_ID,
            payload: PayloadV1::Normal(command),
        };
        golden(normal, "000203ac02010000010101016b");
        let member = LogRecord::V1 {
            log_id: LOG_ID,
            payload: PayloadV1::Membership(membership()),
        };
        golden(member, "000203ac02020102010202010161020162");
    }

    /// Vote, log ids, membership, snapshot meta and applied records keep
    /// their shipped encodings.
    #[test]
    fn golden_raft_records() {
        golden(
            VoteRecord::V1(VoteV1 {
                term: 5,
                node_id: 1,
                committed: true,
            }),
            "00050101",
        );
        golden(LogIdRecord::V1(None), "0000");
        golden(LogIdRecord::V1(Some(LOG_ID)), "00010203ac02");
        let stored = StoredMembershipV1 {
            log_id: Some(LOG_ID),
            membership: membership(),
        };
        golden(
            MembershipRecord::V1(stored.clone()),
            "00010203ac020102010202010161020162",
        );
        let meta = SnapshotMetaRecord::V1 {
            last_log_id: Some(LOG_ID),
            membership: stored,
            snapshot_id: "s".into(),
        };
        golden(meta, "00010203ac02010203ac0201020102020101610201620173");
        let applied = AppliedRecord::V1 {
            index: 7,
            response: Response::V1(ResponseV1::Done),
        };
        golden(applied, "00070001");
        let rows = SnapshotRowsV1 {
            meta: vec![("m".into(), vec![1])],
            vshards: vec![(2, vec![0])],
            kv: vec![(2, b"k".to_vec(), b"v".to_vec())],
            applied: vec![("i".into(), vec![9])],
        };
        golden(
            SnapshotData::V1(rows.clone()),
            "0001016d0101010201000102016b01760101690109",
        );
        let v2 = SnapshotRowsV2 {
            vshard_migrations: vec![(2, vec![3])],
            changes: vec![(2, 300, vec![4])],
            ..SnapshotRowsV2::from(rows.clone())
        };
        golden(
            SnapshotData::V2(v2.clone()),
            "0101016d0101010201000102016b01760101690109010201030102ac020104",
        );
        let upcast = SnapshotData::V1(rows).into_rows();
        assert_eq!(
            (upcast.vshard_migrations.len(), upcast.changes.len()),
            (0, 0)
        );
        assert_eq!(upcast.kv, v2.kv);
    }

    /// Entries survive the round trip through openraft types, and the
    /// borrowed encoder writes the same bytes as the owned record.
    #[test]
    fn entries_round_trip() {
        let members = Membership::new(
            vec![BTreeSet::from([1, 2]), BTreeSet::from([2, 3])],
            BTreeMap::from([
                (1, NodeAddr::new("a")),
                (2, NodeAddr::new("b")),
                (3, NodeAddr::new("c")),
                (4, NodeAddr::new("learner")),
            ]),
        );
        let payloads = [
            EntryPayload::Blank,
            EntryPayload::Normal(Command::put(b"k".to_vec(), b"v".to_vec())),
            EntryPayload::Membership(members),
        ];
        for payload in payloads {
            let entry = Entry {
                log_id: LOG_ID.into(),
                payload,
            };
            let bytes = encode_entry(&entry).expect("encodes");
            let owned: LogRecord = decode("a log entry", &bytes).expect("decodes");
            assert_eq!(encode("a log entry", &owned).expect("encodes"), bytes);
            let back = decode_entry(&bytes).expect("decodes");
            assert_eq!(format!("{back:?}"), format!("{entry:?}"));
        }
    }

    /// A vote and a stored membership round-trip through openraft types.
    #[test]
    fn vote_and_membership_round_trip() {
        for vote in [Vote::new(3, 1), Vote::new_committed(4, 2)] {
            assert_eq!(Vote::from(VoteV1::from(&vote)), vote);
        }
        let stored = StoredMembership::new(Some(LOG_ID.into()), membership().into());
        let back = StoredMembership::from(StoredMembershipV1::from(&stored));
        assert_eq!(back, stored);
        assert_eq!(decode_log_id(None).expect("a missing row is None"), None);
    }
}
