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
//! **Room for the migration commands (next issue)**, appended at the end of
//! their enums: metadata `LockMigration`, `Transfer`, `AbortMigration` and
//! `BumpDriverEpoch` (each carrying the driver epoch, stale ones refused);
//! data `Ingest` (a chunk into an `Incoming` vShard), `Fence`, `Unfence`,
//! `Activate`, `Ghost`, `DropIncoming` and `DeleteBatch`. The vShard states
//! they move between ([`crate::data::VShardState`]) and the migration
//! registry ([`crate::metadata::MigrationRecord`]) exist already.

use serde::{Deserialize, Serialize};

use crate::vshard::vshard_of;

/// The longest key a proposer may send, in bytes.
pub const MAX_KEY_BYTES: usize = 4 * 1024;
/// The longest value a proposer may send, in bytes.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// The longest idempotency key a proposer may send, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;

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
}

/// Commands of a data group. Append new variants at the end only.
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
    /// Marks vShards `Owned` by this group (at bootstrap).
    AssignVShards { vshards: Vec<u16> },
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
        let too_large = |what, bytes: usize, limit| {
            (bytes > limit).then_some(CommandError::TooLarge { what, bytes, limit })
        };
        let key_len = self.idempotency_key().map_or(0, str::len);
        let checks = [
            too_large("idempotency key", key_len, MAX_IDEMPOTENCY_KEY_BYTES),
            match self.op() {
                Op::Data(DataOp::Put { key, value, .. }) => {
                    too_large("key", key.len(), MAX_KEY_BYTES)
                        .or_else(|| too_large("value", value.len(), MAX_VALUE_BYTES))
                }
                Op::Data(DataOp::Delete { key, .. }) => too_large("key", key.len(), MAX_KEY_BYTES),
                _ => None,
            },
        ];
        checks.into_iter().flatten().next().map_or(Ok(()), Err)
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
