//! Submitting migrations: [`Client::migrate_vshard`] and
//! [`Client::migrate_replica`] ask any node, which checks the request
//! against its metadata, journals the workflow and drives it. The answer
//! is the workflow id (it names that node); follow it with
//! [`Client::workflow_show`] or [`Client::workflow_watch`].

use shardflow_workflow::WorkflowId;

use crate::rpc::{AdminRequest, AdminResponse, ReplicaMove, VShardMove};

use super::admin::{AdminPlan, Targets};
use super::error::ClientError;
use super::Client;

fn expect_submitted(response: AdminResponse) -> Result<WorkflowId, Box<AdminResponse>> {
    match response {
        AdminResponse::Submitted { id } => Ok(id),
        other => Err(Box::new(other)),
    }
}

impl Client {
    /// Starts moving `vshard` to `to_group` (MoveVShard) with a write-pause
    /// budget of `pause_budget_ms` (`None`: the node's default). Refused,
    /// changing nothing, for a vShard outside `0..1024`, an unknown group,
    /// the group that owns it, a vShard already migrating, or a cluster at
    /// its limit of concurrent migrations.
    pub async fn migrate_vshard(
        &self,
        vshard: u32,
        to_group: u64,
        pause_budget_ms: Option<u64>,
    ) -> Result<WorkflowId, ClientError> {
        let request = AdminRequest::MigrateVShard(VShardMove {
            vshard,
            to_group,
            pause_budget_ms,
        });
        self.submit(request).await
    }

    /// Starts moving `group`'s replica on `from_node` to `to_node`
    /// (MoveReplica). Refused, changing nothing, for an unknown group or
    /// node, a `from_node` without a replica, or a `to_node` with one.
    pub async fn migrate_replica(
        &self,
        group: u64,
        from_node: u64,
        to_node: u64,
    ) -> Result<WorkflowId, ClientError> {
        let request = AdminRequest::MigrateReplica(ReplicaMove {
            group,
            from_node,
            to_node,
        });
        self.submit(request).await
    }

    async fn submit(&self, request: AdminRequest) -> Result<WorkflowId, ClientError> {
        let mut plan = AdminPlan::new(request, Targets::Any(Vec::new()), expect_submitted);
        self.drive(&mut plan, self.budget()).await
    }
}
