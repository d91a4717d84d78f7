//! Answers to `MigrateVShard` and `MigrateReplica`: the request is checked
//! against this node's metadata (`crate::migration::launcher`), then the
//! installed launcher journals and starts the workflow here. A refusal
//! changes nothing: no journal entry, no command proposed.

use std::sync::Arc;

use shardflow_workflow::WorkflowId;

use super::node::NodeInner;
use super::workflow_ops::{engine_error, gated};
use crate::migration::launcher::{
    check_replica_move, check_vshard_move, MigrationLauncher, ReplicaMove, VShardMove,
};
use crate::rpc::AdminResponse;

/// A migration request.
pub(crate) enum Migrate {
    VShard(VShardMove),
    Replica(ReplicaMove),
}

pub(crate) async fn handle(node: &NodeInner, request: Migrate) -> AdminResponse {
    let launcher: Option<Arc<dyn MigrationLauncher>> = node
        .launcher
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let Some(launcher) = launcher else {
        return AdminResponse::Rejected {
            reason: format!(
                "node {} runs no migration workflows (none were installed)",
                node.id
            ),
        };
    };
    let metadata = match node.refresh_metadata().await {
        Ok(metadata) => metadata,
        Err(error) => {
            return AdminResponse::Retry {
                reason: format!("node {} cannot read its metadata: {error}", node.id),
            }
        }
    };
    let launched = match request {
        Migrate::VShard(request) => {
            let vshard = match check_vshard_move(&metadata, &request, node.limits.max_concurrent) {
                Ok(vshard) => vshard,
                Err(reason) => return AdminResponse::Rejected { reason },
            };
            let (to_group, budget) = (request.to_group, request.pause_budget_ms);
            gated(node, async {
                let id = launcher.move_vshard(vshard, to_group, budget).await?;
                Ok(submitted(node, id))
            })
            .await
        }
        Migrate::Replica(request) => {
            if let Err(reason) = check_replica_move(&metadata, &request) {
                return AdminResponse::Rejected { reason };
            }
            gated(node, async {
                let id = launcher.move_replica(request).await?;
                Ok(submitted(node, id))
            })
            .await
        }
    };
    launched.unwrap_or_else(|error| engine_error(node.id, error))
}

fn submitted(node: &NodeInner, id: WorkflowId) -> AdminResponse {
    tracing::info!(node = node.id, workflow = %id, "migration submitted");
    AdminResponse::Submitted { id }
}
