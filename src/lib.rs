//! shardflow: durable, journaled migrations inside a live multi-Raft cluster.
//!
//! This facade re-exports the layers (`workflow`, `store`, `node`, `steps`)
//! and holds what a user or operator touches directly: the journal audit
//! ([`audit::replay`], [`audit::verify`]) that works on a stopped node's
//! data directory, and [`embedded::EmbeddedCluster`], a whole cluster inside
//! one process.

pub mod audit;
pub mod bench;
pub mod demo;
pub mod embedded;

pub use shardflow_node as node;
pub use shardflow_steps as steps;
pub use shardflow_store as store;
pub use shardflow_workflow as workflow;
