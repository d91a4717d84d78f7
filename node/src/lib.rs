//! shardflow-node: a cluster node.
//!
//! Owns the mutual-TLS QUIC transport, the Raft groups (one openraft instance
//! per group, all sharing one endpoint), the metadata and data state machines
//! and the routing table. Built in the node issue; see ARCHITECTURE.md.

pub mod certs;
pub mod client;
pub mod command;
pub mod data;
pub mod metadata;
pub mod migration;
pub mod raft;
pub mod raft_network;
pub mod rpc;
pub mod server;
pub mod transport;
pub mod vshard;
