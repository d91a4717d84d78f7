//! Raft storage for shardflow's groups: openraft 0.9 (`storage-v2`) over
//! the byte-level redb store of `shardflow_store::raft_store`.
//!
//! - [`types`]: the openraft type configuration (`NodeId = u64`, `Node =`
//!   [`NodeAddr`], entries carry [`crate::command::Command`]).
//! - [`LogStore`]: one group's log and vote (`RaftLogStorage`).
//! - [`StateMachineStore`]: one group's state machine (`RaftStateMachine`,
//!   snapshots), running the metadata logic on group 0 and the data logic on
//!   the others.
//! - [`records`]: the versioned on-disk encodings of all of it.
//!
//! One `LogStore` and one `StateMachineStore` per group; every group of a
//! node may share one redb database or have its own (the caller decides
//! when it builds the `RaftStore`). This module builds no network and runs
//! no Raft: the node runtime does.
//!
//! **Architecture invariant:** no redb call runs on the async executor;
//! each goes through `spawn_blocking`, and every storage failure comes back
//! to openraft as a `StorageError` (which stops that group), never a panic.

mod apply;
pub mod error;
pub mod log_storage;
pub mod records;
pub mod state_machine;
pub mod types;

pub use error::RaftStorageError;
pub use log_storage::{LogStore, MAX_REPLICATION_BYTES};
pub use state_machine::{
    ChangesError, ChangesPage, DigestAt, ExportChunk, ReadError, SnapshotBuilder, StateMachineStore,
};
pub use types::{NodeAddr, NodeId, TypeConfig};

use shardflow_store::RaftStore;

/// The log and state-machine storage of `group`, in `store`'s database.
pub fn group_storage(store: &RaftStore, group: u64) -> (LogStore, StateMachineStore) {
    let group_store = store.group(group);
    (
        LogStore::new(group_store.clone()),
        StateMachineStore::new(group_store),
    )
}
