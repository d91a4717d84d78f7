//! Wires the migration workflows into a node: [`install`] registers
//! MoveVShard and MoveReplica on the node's engine (so its journal's
//! unfinished instances can resume) and installs the launcher that the
//! node's `MigrateVShard` / `MigrateReplica` admin requests start them
//! through. Call it between `Node::start` and `Node::resume_workflows`.
//!
//! The node checks a request against its metadata before the launcher sees
//! it; the launcher only fills in the node's defaults (pause budget, lease,
//! copy rate, concurrency limit) and submits.

use std::sync::Arc;

use async_trait::async_trait;
use shardflow_node::migration::launcher::{MigrationLauncher, ReplicaMove};
use shardflow_node::server::{MigrationLimits, Node};
use shardflow_workflow::{Engine, EngineError, WorkflowId};

use crate::move_replica::{self, MoveReplica, MoveReplicaConfig, MoveReplicaInput};
use crate::move_vshard::{self, MoveVShard, MoveVShardConfig, MoveVShardInput};

/// The migration lock's lease: renewed by the driver while it works, so a
/// driver gone for longer than this lets the metadata group abort.
pub const DEFAULT_LEASE_MS: u64 = 15_000;

/// Registers both workflows on `node` with tunables from its limits, and
/// installs the launcher.
pub fn install(node: &Node) {
    let limits = node.limits().clone();
    let defaults = MoveVShardConfig::default();
    let vshard = MoveVShardConfig {
        max_concurrent: limits.max_concurrent,
        copy_bytes_per_sec: limits.copy_bytes_per_sec,
        ingest_window: (limits.copy_ingest_window)
            .unwrap_or(defaults.ingest_window)
            .max(1),
        // Cleanup deletes the ghost itself once the node's TTL has passed
        // (the reactor does too, if this driver is gone).
        ghost_ttl: Some(node.migration_timings().ghost_ttl),
        ..defaults
    };
    install_with(node, vshard, MoveReplicaConfig::default());
}

/// Like [`install`], with explicit tunables (tests shorten them).
pub fn install_with(node: &Node, vshard: MoveVShardConfig, replica: MoveReplicaConfig) {
    let engine = node.engine();
    move_vshard::register_with(engine, node.migration_api(), vshard);
    move_replica::register_with(engine, node.migration_api(), replica);
    node.install_launcher(Arc::new(Launcher {
        engine: engine.clone(),
        limits: node.limits().clone(),
    }));
}

/// Submits the workflows on one node's engine.
struct Launcher {
    engine: Engine,
    limits: MigrationLimits,
}

#[async_trait]
impl MigrationLauncher for Launcher {
    async fn move_vshard(
        &self,
        vshard: u16,
        to_group: u64,
        pause_budget_ms: Option<u64>,
    ) -> Result<WorkflowId, EngineError> {
        let input = MoveVShardInput {
            vshard,
            to_group,
            pause_budget_ms: pause_budget_ms.unwrap_or(self.limits.default_pause_budget_ms),
            lease_ms: DEFAULT_LEASE_MS,
        };
        self.engine.submit::<MoveVShard>(input).await
    }

    async fn move_replica(&self, request: ReplicaMove) -> Result<WorkflowId, EngineError> {
        let input = MoveReplicaInput {
            group: request.group,
            from_node: request.from_node,
            to_node: request.to_node,
        };
        self.engine.submit::<MoveReplica>(input).await
    }
}
