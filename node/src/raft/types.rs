//! shardflow's openraft type configuration and short names for the
//! openraft types it instantiates.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::command::{Command, Response};

openraft::declare_raft_types!(
    /// The openraft types of every shardflow Raft group: node ids are `u64`,
    /// a node is its address, entries carry [`Command`]s and apply to
    /// [`Response`]s, snapshots are in-memory bytes.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = u64,
        Node = NodeAddr,
        SnapshotData = Cursor<Vec<u8>>,
);

/// A Raft member: where to reach it (`host:port`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeAddr {
    pub addr: String,
}

impl NodeAddr {
    pub fn new(addr: impl Into<String>) -> Self {
        Self { addr: addr.into() }
    }
}

impl std::fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.addr)
    }
}

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type EntryPayload = openraft::EntryPayload<TypeConfig>;
pub type Membership = openraft::Membership<NodeId, NodeAddr>;
pub type StoredMembership = openraft::StoredMembership<NodeId, NodeAddr>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeAddr>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
