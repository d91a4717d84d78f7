//! The node runtime: one QUIC endpoint, one openraft `Raft` per group this
//! node holds (group 0, the metadata group, on every node of the metadata
//! group), the request handler, and the reconcile loop that makes the local
//! groups follow the metadata.
//!
//! - `config` — [`NodeConfig`], Raft timings, the storage layout.
//! - `groups` — the local groups: start, look up, stop.
//! - `handler` — the transport [`Handler`](crate::transport::Handler):
//!   role checks, then Raft RPCs, snapshots, proposals, client and admin
//!   requests.
//! - `client_ops`, `admin_ops` — the answers to client and admin requests.
//! - `migrate_ops` — `MigrateVShard` / `MigrateReplica`: checked against
//!   the metadata, then started through the installed launcher.
//! - `workflow_ops` — the answers to workflow requests: from this node's
//!   engine, or forwarded once to the node whose id the workflow id names.
//! - `journal` — the node's workflow journal (`DATA/journal.redb`),
//!   released when the node shuts down.
//! - `propose` — proposing a command to a group through its leader,
//!   wherever it runs.
//! - `reconcile` — the loop that reacts to the metadata: starts the data
//!   groups this node is a member of, initializes them (their lowest member
//!   does, once), and has each leader mark its bootstrap vShards `Owned`;
//!   it stops a data group this node was removed from.
//!
//! The migration service (`crate::migration`) answers
//! `NodeRequestV1::Migration` through the handler, and its reactors run in
//! a sibling loop started by `Node::start`.
//!
//! **Invariants:** a request reaches Raft only after its certificate's role
//! was checked; reads are linearizable (leader + read index); the metadata
//! cache only moves forward (it is replaced by the state of a higher applied
//! index).

pub(crate) mod admin_ops;
mod client_ops;
mod config;
pub(crate) mod groups;
mod handler;
mod journal;
mod migrate_ops;
pub(crate) mod node;
pub(crate) mod propose;
mod reconcile;
mod workflow_ops;

pub use config::{MigrationLimits, MigrationTimings, NodeConfig, RaftTimings, StoreLayout};
pub use journal::JOURNAL_FILE;
pub use node::{Node, NodeError};
