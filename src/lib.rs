//! shardflow: durable, journaled migrations inside a live multi-Raft cluster.
pub use shardflow_workflow as workflow;
