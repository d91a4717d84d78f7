//! Answers to administration requests: bootstrap the cluster, register or
//! forget a node, and report this node's view. Workflow requests are
//! answered by `workflow_ops`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;

use super::migrate_ops::{self, Migrate};
use super::node::NodeInner;
use super::propose;
use super::workflow_ops::{self, Origin};
use crate::command::{Command, MetadataOp, METADATA_GROUP};
use crate::data::VShardState;
use crate::raft::NodeAddr;
use crate::rpc::{AdminRequest, AdminResponse, LocalGroupStatus, NodeStatus, RoutingTable};
use crate::vshard::VSHARDS;

/// How long an administrative proposal may take.
const ADMIN_DEADLINE: Duration = Duration::from_secs(20);

pub(crate) async fn handle(node: &NodeInner, request: AdminRequest) -> AdminResponse {
    match request {
        AdminRequest::Bootstrap {
            nodes,
            groups,
            replicas,
        } => bootstrap(node, nodes, groups, replicas).await,
        AdminRequest::AddNode { id, addr } => {
            metadata_op(node, MetadataOp::AddNode { id, addr }).await
        }
        AdminRequest::RemoveNode { id } => metadata_op(node, MetadataOp::RemoveNode { id }).await,
        AdminRequest::Status => AdminResponse::Status(status(node).await),
        request @ (AdminRequest::WorkflowList { .. }
        | AdminRequest::WorkflowShow { .. }
        | AdminRequest::WorkflowCancel { .. }
        | AdminRequest::WorkflowResume { .. }) => {
            workflow_ops::handle(node, request, Origin::Admin).await
        }
        AdminRequest::MigrateVShard(request) => {
            migrate_ops::handle(node, Migrate::VShard(request)).await
        }
        AdminRequest::MigrateReplica(request) => {
            migrate_ops::handle(node, Migrate::Replica(request)).await
        }
    }
}

fn rejected(reason: impl Into<String>) -> AdminResponse {
    AdminResponse::Rejected {
        reason: reason.into(),
    }
}

/// The metadata of a new cluster: group 0 on every node, `groups` data
/// groups of `replicas` members placed round-robin, and the 1024 vShards
/// in contiguous, even ranges.
pub(crate) fn plan(
    nodes: &[(u64, String)],
    groups: u64,
    replicas: u64,
) -> Result<MetadataOp, String> {
    let ids: BTreeSet<u64> = nodes.iter().map(|(id, _)| *id).collect();
    let addrs: BTreeSet<&String> = nodes.iter().map(|(_, addr)| addr).collect();
    if nodes.is_empty() || ids.len() != nodes.len() || addrs.len() != nodes.len() {
        return Err("every node needs its own id and address".into());
    }
    if let Some((id, addr)) = nodes
        .iter()
        .find(|(_, a)| a.parse::<std::net::SocketAddr>().is_err())
    {
        return Err(format!(
            "node {id}: {addr:?} is not HOST:PORT with an IP address"
        ));
    }
    if groups == 0 || groups > u64::from(VSHARDS) {
        return Err(format!("--groups must be 1 to {VSHARDS}, not {groups}"));
    }
    if replicas == 0 || replicas > nodes.len() as u64 {
        return Err(format!(
            "--replicas must be 1 to {} (the number of nodes), not {replicas}",
            nodes.len()
        ));
    }
    let ids: Vec<u64> = ids.into_iter().collect();
    let mut group_members = vec![(METADATA_GROUP, ids.clone())];
    for group in 1..=groups {
        let members = (0..replicas)
            .map(|i| ids[((group - 1 + i) % ids.len() as u64) as usize])
            .collect();
        group_members.push((group, members));
    }
    let routing = (0..u64::from(VSHARDS))
        .map(|vshard| 1 + vshard * groups / u64::from(VSHARDS))
        .collect();
    Ok(MetadataOp::Bootstrap {
        nodes: nodes.to_vec(),
        groups: group_members,
        routing,
    })
}

async fn bootstrap(
    node: &NodeInner,
    nodes: Vec<(u64, String)>,
    groups: u64,
    replicas: u64,
) -> AdminResponse {
    let op = match plan(&nodes, groups, replicas) {
        Ok(op) => op,
        Err(reason) => return rejected(reason),
    };
    if !nodes.iter().any(|(id, _)| *id == node.id) {
        return rejected(format!(
            "the node asked (id {}) is not in the --node list",
            node.id
        ));
    }
    let Some(group0) = node.groups.get(METADATA_GROUP) else {
        return rejected("the metadata group does not run here");
    };
    match group0.raft.is_initialized().await {
        Ok(true) => {
            if node
                .refresh_metadata()
                .await
                .is_ok_and(|m| m.is_bootstrapped())
            {
                return rejected("the cluster is already bootstrapped");
            }
        }
        Ok(false) => {
            let voters: BTreeMap<u64, NodeAddr> = nodes
                .iter()
                .map(|(id, addr)| (*id, NodeAddr { addr: addr.clone() }))
                .collect();
            if let Err(error) = group0.raft.initialize(voters).await {
                return AdminResponse::Retry {
                    reason: format!("initializing the metadata group failed: {error}"),
                };
            }
        }
        Err(error) => return rejected(error.to_string()),
    }
    metadata_op(node, op).await
}

async fn metadata_op(node: &NodeInner, op: MetadataOp) -> AdminResponse {
    let deadline = Instant::now() + ADMIN_DEADLINE;
    match propose::anywhere(node, METADATA_GROUP, Command::metadata(op), deadline).await {
        Ok(response) => match response.rejection() {
            None => AdminResponse::Done,
            Some(rejection) => rejected(rejection.to_string()),
        },
        Err(error) => AdminResponse::Retry {
            reason: format!("the metadata group did not commit in time: {error:?}"),
        },
    }
}

async fn status(node: &NodeInner) -> NodeStatus {
    let metadata = node
        .refresh_metadata()
        .await
        .unwrap_or_else(|_| node.metadata());
    let mut groups = Vec::new();
    for (group, runtime) in node.groups.all() {
        let metrics = runtime.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let owned = match runtime.state_machine.vshard_states().await {
            Ok(states) => states
                .iter()
                .filter(|(_, s)| *s == VShardState::Owned)
                .count() as u32,
            Err(_) => 0,
        };
        groups.push(LocalGroupStatus {
            group,
            leader: metrics.current_leader,
            term: metrics.current_term,
            last_applied: metrics.last_applied.map(|log_id| log_id.index),
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            owned_vshards: owned,
        });
    }
    NodeStatus {
        node: node.id,
        addr: node.addr.to_string(),
        routing: RoutingTable::from(&*metadata),
        groups,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: u64) -> Vec<(u64, String)> {
        (1..=n)
            .map(|id| (id, format!("127.0.0.1:{}", 7000 + id)))
            .collect()
    }

    // Proves the bootstrap plan spreads vShards evenly and replicas round-robin.
    #[test]
    fn plan_spreads_vshards_and_replicas_evenly() {
        let Ok(MetadataOp::Bootstrap {
            groups, routing, ..
        }) = plan(&nodes(3), 4, 2)
        else {
            panic!("plan refused");
        };
        assert_eq!(groups[0], (0, vec![1, 2, 3]));
        assert_eq!(groups[1], (1, vec![1, 2]));
        assert_eq!(groups[4], (4, vec![1, 2]));
        assert_eq!(routing.len(), 1024);
        for group in 1..=4u64 {
            assert_eq!(routing.iter().filter(|g| **g == group).count(), 256);
        }
    }

    // Proves bad plans are refused with a reason.
    #[test]
    fn bad_plans_are_refused() {
        assert!(plan(&nodes(3), 0, 1).is_err());
        assert!(plan(&nodes(3), 2, 4).is_err());
        assert!(plan(&nodes(3), 1025, 1).is_err());
        let mut duplicate = nodes(2);
        duplicate[1].0 = 1;
        assert!(plan(&duplicate, 1, 1).is_err());
        assert!(plan(&[(1, "localhost".into())], 1, 1).is_err());
    }
}
